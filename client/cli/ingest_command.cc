#include "client/cli/ingest_command.h"

#include <limits>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "server/core/stream_key.h"

namespace kldrift::cli {
namespace {

using client_internal::ReferenceBins;
using client_internal::StreamAccumulator;
using client_internal::StreamDelta;

constexpr char kCommand[] = "kldrift ingest";
constexpr char kClientIdPrefix[] = "kldrift-cli";

std::string Usage() {
  return absl::StrCat(
      "usage: kldrift [--server ADDR] [--timeout D] ingest --model M [--model-version V] "
      "--signal S\n"
      "           (--values-file F | --labels-file F | --counts c1,c2,...)\n\n"
      "Sends one batch of production data and waits for the server to acknowledge it.\n"
      "Values (numeric streams) and labels (categorical streams) are binned locally with the\n"
      "stream's reference bins; --counts is a histogram in those bins (one per bin between the\n"
      "edges, one per category, or the full layout). Files hold one item per line; '-' reads\n"
      "stdin. Exit codes: 0 applied, 1 server error or batch rejected, 2 bad usage or input.\n\n",
      FlagHelp(IngestFlags()));
}

}  // namespace

const std::vector<FlagSpec>& IngestFlags() {
  static const auto* specs = new std::vector<FlagSpec>{
      {"model", false, "model name (required)"},
      {"model-version", false, "model version (default: none)"},
      {"signal", false, "signal name (required)"},
      {"values-file", false, "numeric values, one per line; '-' reads stdin"},
      {"labels-file", false, "category labels, one per line; '-' reads stdin"},
      {"counts", false, "a histogram c1,c2,... in the reference's bins"},
      {"client-id", false, "ingest client id (default kldrift-cli.<host>.<pid>)"},
      {"help", true, "show this help"},
  };
  return *specs;
}

absl::StatusOr<IngestData> ReadIngestData(const ParsedFlags& flags, std::istream& in) {
  const int given = flags.Has("values-file") + flags.Has("labels-file") + flags.Has("counts");
  if (given != 1) {
    return absl::InvalidArgumentError(
        "give exactly one of --values-file, --labels-file and --counts");
  }
  IngestData data;
  if (flags.Has("counts")) {
    absl::StatusOr<std::vector<double>> counts = ParseNumberList("counts", *flags.Get("counts"));
    if (!counts.ok()) return counts.status();
    data.counts = *std::move(counts);
    return data;
  }
  const bool values = flags.Has("values-file");
  const std::string path = *flags.Get(values ? "values-file" : "labels-file");
  absl::StatusOr<std::vector<std::string>> items = ReadItems(path, in);
  if (!items.ok()) return absl::InvalidArgumentError(items.status().message());
  if (items->empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path == "-" ? "stdin" : path, " holds no ", values ? "values" : "labels"));
  }
  if (values) {
    absl::StatusOr<std::vector<double>> parsed = ParseValues(path, *items);
    if (!parsed.ok()) return parsed.status();
    data.values = *std::move(parsed);
  } else {
    data.labels = *std::move(items);
  }
  return data;
}

absl::StatusOr<StreamDelta> BinIngestData(const IngestData& data,
                                          std::shared_ptr<const ReferenceBins> bins,
                                          const std::string& signal) {
  if (data.counts.has_value()) {
    absl::StatusOr<std::vector<double>> counts = bins->ExpandCounts(*data.counts);
    if (!counts.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("--counts: ", counts.status().message()));
    }
    StreamDelta delta;
    delta.signal = signal;
    delta.bins = std::move(bins);
    delta.numbers = *std::move(counts);
    double total = 0;
    for (double count : delta.numbers) total += count;
    delta.observations = static_cast<uint64_t>(total);
    return delta;
  }
  const BinLayout::Kind kind = bins->layout().kind();
  if (data.values.has_value() && kind != BinLayout::Kind::kNumeric) {
    return absl::InvalidArgumentError(
        absl::StrCat("stream ", signal, " has a ",
                     kind == BinLayout::Kind::kCategorical ? "categorical" : "pre-binned",
                     " reference: send --labels-file or --counts, not --values-file"));
  }
  if (data.labels.has_value() && kind != BinLayout::Kind::kCategorical) {
    return absl::InvalidArgumentError(absl::StrCat(
        "stream ", signal, " has a ", kind == BinLayout::Kind::kNumeric ? "numeric" : "pre-binned",
        " reference: send --values-file or --counts, not --labels-file"));
  }
  // The Recorder's own accumulator, so the CLI bins exactly as a model service does.
  StreamAccumulator accumulator(signal, std::numeric_limits<size_t>::max());
  accumulator.SetBins(std::move(bins));
  if (data.values.has_value()) {
    for (double value : *data.values) accumulator.AddValue(value);
  } else if (data.labels.has_value()) {
    for (const std::string& label : *data.labels) accumulator.AddLabel(label);
  }
  if (accumulator.dropped_observations() > 0) {
    return absl::InvalidArgumentError(accumulator.last_drop_reason());
  }
  std::optional<StreamDelta> delta = accumulator.TakeDelta();
  if (!delta.has_value()) return absl::InvalidArgumentError("no data to send");
  return *std::move(delta);
}

int RunIngest(const std::vector<std::string>& args, const GlobalOptions& options, std::ostream& out,
              std::ostream& err, std::istream& in) {
  absl::StatusOr<ParsedFlags> flags = ParseFlags(kCommand, IngestFlags(), args);
  if (!flags.ok()) return ReportUsageError(kCommand, flags.status(), err);
  if (flags->Has("help")) {
    out << Usage();
    return kExitOk;
  }
  absl::StatusOr<v1::StreamId> stream = StreamFromFlags(*flags);
  if (!stream.ok()) return ReportUsageError(kCommand, stream.status(), err);
  const std::string client_id = flags->Get("client-id").value_or(ProcessClientId(kClientIdPrefix));
  if (absl::Status status = ValidateName("--client-id", client_id, false); !status.ok()) {
    return ReportUsageError(kCommand, status, err);
  }
  // Input problems are reported before the server is contacted.
  absl::StatusOr<IngestData> data = ReadIngestData(*flags, in);
  if (!data.ok()) return ReportUsageError(kCommand, data.status(), err);

  KlDriftClient client = MakeClient(options);
  absl::StatusOr<v1::Reference> reference = client.GetReference(*stream);
  if (!reference.ok()) return ReportServerError(reference.status(), err);
  absl::StatusOr<std::shared_ptr<const ReferenceBins>> bins = ReferenceBins::FromProto(*reference);
  if (!bins.ok()) return ReportUsageError(kCommand, bins.status(), err);
  absl::StatusOr<StreamDelta> delta = BinIngestData(*data, *bins, stream->signal());
  if (!delta.ok()) return ReportUsageError(kCommand, delta.status(), err);

  v1::IngestRequest request;
  request.set_client_id(client_id);
  // Microseconds since the epoch: above any sequence an earlier run with this client id used.
  request.set_sequence(static_cast<uint64_t>(absl::ToUnixMicros(absl::Now())));
  request.set_model(stream->model());
  client_internal::ToStreamBatch(*delta, stream->model_version(), request.add_streams());
  if (absl::Status status = client.IngestOnce(request); !status.ok()) {
    return ReportServerError(status, err);
  }
  out << "ingested " << delta->observations << " observations into " << StreamName(*stream)
      << " (reference version " << delta->bins->version() << ")\n";
  return kExitOk;
}

}  // namespace kldrift::cli
