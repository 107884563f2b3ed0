#include "client/cli/simulate_command.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <random>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"

namespace kldrift::cli {
namespace {

constexpr char kCommand[] = "kldrift simulate";
constexpr char kClientIdPrefix[] = "kldrift-simulate";
// Default bins of a created reference: -4 to 4 in steps of 0.5 (16 bins plus the tails).
constexpr double kDefaultFirstEdge = -4;
constexpr double kDefaultLastEdge = 4;
constexpr double kDefaultEdgeStep = 0.5;
// Observations the created reference stands for.
constexpr double kReferenceSamples = 100000;
// Bounds that keep a demo a demo.
constexpr double kMaxRatePerSecond = 1e6;
constexpr absl::Duration kMaxDuration = absl::Hours(24);
// How often values are recorded, and progress printed.
constexpr absl::Duration kTick = absl::Milliseconds(20);
constexpr absl::Duration kProgressInterval = absl::Seconds(5);

std::string Usage() {
  return absl::StrCat(
      "usage: kldrift [--server ADDR] [--timeout D] simulate --model M [--model-version V] "
      "--signal S\n"
      "           [--shift X] [--rate N/s] [--duration D] [--edges e1,e2,...] [--seed N]\n\n"
      "Streams synthetic predictions drawn from N(shift, 1) through the client library's\n"
      "Recorder, for demos and dashboards. If the stream has no reference, a standard-normal\n"
      "numeric reference is created first (over --edges, default -4 to 4 in steps of 0.5).\n\n",
      FlagHelp(SimulateFlags()));
}

double StandardNormalCdf(double x) { return 0.5 * std::erfc(-x / std::sqrt(2.0)); }

std::vector<double> DefaultEdges() {
  std::vector<double> edges;
  const int steps =
      static_cast<int>(std::lround((kDefaultLastEdge - kDefaultFirstEdge) / kDefaultEdgeStep));
  for (int i = 0; i <= steps; ++i) edges.push_back(kDefaultFirstEdge + i * kDefaultEdgeStep);
  return edges;
}

void PrintStats(absl::string_view when, const RecorderStats& stats, std::ostream& out) {
  out << absl::StrFormat(
             "%s: recorded %d, acknowledged %d, dropped %d, waiting %d; batches sent %d, "
             "resent %d, rejected %d; reconnects %d",
             when, stats.observations_recorded, stats.observations_acked,
             stats.observations_dropped, stats.observations_waiting, stats.batches_sent,
             stats.batches_resent, stats.batch_errors, stats.reconnects)
      << "\n"
      << std::flush;
}

}  // namespace

const std::vector<FlagSpec>& SimulateFlags() {
  static const auto* specs = new std::vector<FlagSpec>{
      {"model", false, "model name (required)"},
      {"model-version", false, "model version (default: none)"},
      {"signal", false, "signal name (required)"},
      {"shift", false, "mean of the simulated predictions (default 0: no drift)"},
      {"rate", false, "predictions per second, e.g. 100/s (default 100/s)"},
      {"duration", false, "how long to run, e.g. 30s, 5m (default 30s, at most 24h)"},
      {"edges", false, "bins of the reference if one is created (default -4,-3.5,...,4)"},
      {"seed", false, "random seed (default: random)"},
      {"help", true, "show this help"},
  };
  return *specs;
}

absl::StatusOr<SimulateOptions> ParseSimulateOptions(const ParsedFlags& flags) {
  SimulateOptions options;
  absl::StatusOr<v1::StreamId> stream = StreamFromFlags(flags);
  if (!stream.ok()) return stream.status();
  options.stream = *std::move(stream);
  absl::StatusOr<double> shift = flags.GetDouble("shift", 0);
  if (!shift.ok()) return shift.status();
  if (!std::isfinite(*shift)) return absl::InvalidArgumentError("--shift must be finite");
  options.shift = *shift;
  if (flags.Has("rate")) {
    absl::string_view rate = *flags.Get("rate");
    absl::ConsumeSuffix(&rate, "/s");
    if (!absl::SimpleAtod(rate, &options.rate_per_second) ||
        !(options.rate_per_second > 0 && options.rate_per_second <= kMaxRatePerSecond)) {
      return absl::InvalidArgumentError(absl::StrCat("--rate=", *flags.Get("rate"),
                                                     " is not a rate such as 100/s (at most ",
                                                     kMaxRatePerSecond, "/s)"));
    }
  }
  if (flags.Has("duration")) {
    if (!absl::ParseDuration(*flags.Get("duration"), &options.duration) ||
        options.duration <= absl::ZeroDuration() || options.duration > kMaxDuration) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--duration=", *flags.Get("duration"), " is not a duration such as 30s or 5m (at most ",
          absl::FormatDuration(kMaxDuration), ")"));
    }
  }
  options.edges_given = flags.Has("edges");
  if (options.edges_given) {
    absl::StatusOr<std::vector<double>> edges = ParseNumberList("edges", *flags.Get("edges"));
    if (!edges.ok()) return edges.status();
    options.edges = *std::move(edges);
  } else {
    options.edges = DefaultEdges();
  }
  absl::StatusOr<long> seed = flags.GetInt("seed", 0);
  if (!seed.ok()) return seed.status();
  options.seed = flags.Has("seed") ? static_cast<uint64_t>(*seed) : std::random_device()();
  return options;
}

v1::PutReferenceRequest StandardNormalReference(const v1::StreamId& stream,
                                                const std::vector<double>& edges) {
  v1::PutReferenceRequest request;
  *request.mutable_stream() = stream;
  request.mutable_numeric()->mutable_edges()->Assign(edges.begin(), edges.end());
  // The full layout: [underflow, bins..., overflow, NaN].
  auto* counts = request.mutable_counts()->mutable_counts();
  double previous = 0;
  for (double edge : edges) {
    const double cdf = StandardNormalCdf(edge);
    counts->Add(std::round((cdf - previous) * kReferenceSamples));
    previous = cdf;
  }
  counts->Add(std::round((1 - previous) * kReferenceSamples));
  counts->Add(0);
  return request;
}

int RunSimulate(const std::vector<std::string>& args, const GlobalOptions& options,
                std::ostream& out, std::ostream& err) {
  absl::StatusOr<ParsedFlags> flags = ParseFlags(kCommand, SimulateFlags(), args);
  if (!flags.ok()) return ReportUsageError(kCommand, flags.status(), err);
  if (flags->Has("help")) {
    out << Usage();
    return kExitOk;
  }
  absl::StatusOr<SimulateOptions> simulate = ParseSimulateOptions(*flags);
  if (!simulate.ok()) return ReportUsageError(kCommand, simulate.status(), err);

  const ChannelOptions channel_options = options.Channel();
  std::shared_ptr<grpc::Channel> channel = CreateChannel(channel_options);
  KlDriftClient client(channel, options.timeout);
  const std::string name = StreamName(simulate->stream);
  absl::StatusOr<v1::Reference> reference = client.GetReference(simulate->stream);
  if (reference.ok()) {
    if (reference->kind() != v1::REFERENCE_KIND_NUMERIC) {
      return ReportUsageError(
          kCommand,
          absl::InvalidArgumentError(absl::StrCat(
              name, " has a non-numeric reference; simulate streams numeric predictions")),
          err);
    }
    if (simulate->edges_given)
      err << kCommand << ": --edges ignored: " << name << " already has a reference\n";
    out << "using reference version " << reference->version() << " of " << name << "\n";
  } else if (reference.status().code() == absl::StatusCode::kNotFound) {
    absl::StatusOr<v1::PutReferenceResponse> created =
        client.PutReference(StandardNormalReference(simulate->stream, simulate->edges));
    if (!created.ok()) return ReportServerError(created.status(), err);
    out << "created reference version " << created->version() << " of " << name << ": N(0, 1) over "
        << simulate->edges.size() << " edges\n";
  } else {
    return ReportServerError(reference.status(), err);
  }

  RecorderOptions recorder_options;
  recorder_options.model = simulate->stream.model();
  recorder_options.model_version = simulate->stream.model_version();
  recorder_options.client_id = ProcessClientId(kClientIdPrefix);
  recorder_options.rpc_deadline = options.timeout;
  absl::StatusOr<std::unique_ptr<Recorder>> recorder =
      Recorder::Create(channel, std::move(recorder_options));
  if (!recorder.ok()) return ReportUsageError(kCommand, recorder.status(), err);

  out << absl::StrFormat("streaming N(%g, 1) into %s at %g/s for %s\n", simulate->shift, name,
                         simulate->rate_per_second, absl::FormatDuration(simulate->duration))
      << std::flush;
  std::mt19937_64 random(simulate->seed);
  std::normal_distribution<double> normal(simulate->shift, 1.0);
  const absl::Time start = absl::Now();
  const absl::Time end = start + simulate->duration;
  absl::Time next_progress = start + kProgressInterval;
  uint64_t recorded = 0;
  for (absl::Time now = start; now < end; now = absl::Now()) {
    const auto due =
        static_cast<uint64_t>(absl::ToDoubleSeconds(now - start) * simulate->rate_per_second);
    for (; recorded < due; ++recorded)
      (*recorder)->Record(simulate->stream.signal(), normal(random));
    if (now >= next_progress) {
      PrintStats(absl::FormatDuration(absl::Trunc(now - start, absl::Seconds(1))),
                 (*recorder)->Stats(), out);
      next_progress += kProgressInterval;
    }
    absl::SleepFor(std::min(kTick, end - now));
  }
  const auto total =
      static_cast<uint64_t>(absl::ToDoubleSeconds(simulate->duration) * simulate->rate_per_second);
  for (; recorded < total; ++recorded)
    (*recorder)->Record(simulate->stream.signal(), normal(random));
  const absl::Status status = (*recorder)->Close(options.timeout);
  PrintStats("done", (*recorder)->Stats(), out);
  if (!status.ok()) return ReportServerError(status, err);
  return kExitOk;
}

}  // namespace kldrift::cli
