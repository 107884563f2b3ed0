#include "client/cli/drift_command.h"

#include <limits>
#include <memory>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "server/core/alert_policy.h"
#include "server/core/stream_key.h"

namespace kldrift::cli {
namespace {

constexpr char kDriftCommand[] = "kldrift drift";
constexpr char kWatchCommand[] = "kldrift watch";
// The server's own limit on top bins per report.
constexpr long kMaxTopBins = 100;

std::string DriftUsage() {
  return absl::StrCat(
      "usage: kldrift [--server ADDR] [--timeout D] drift --model M [--model-version V] "
      "--signal S\n"
      "           [--window W] [--top K] [--json]\n\n"
      "Prints a stream's drift reports: every window as a table, or as JSON (an array of one\n"
      "object per window; a single object with --window).\n\n",
      FlagHelp(DriftFlags()));
}

std::string WatchUsage() {
  return absl::StrCat(
      "usage: kldrift [--server ADDR] watch --model M [--model-version V --signal S]\n"
      "           [--changes-only] [--count N] [--duration D]\n\n"
      "Prints every drift report the server pushes, one JSON object per line (the keys of\n"
      "'kldrift drift --json'), for one stream or every stream of a model. Runs until --count\n"
      "reports or --duration have passed, or until interrupted; --timeout does not bound it.\n\n",
      FlagHelp(WatchFlags()));
}

void WriteEstimate(const char* name, const v1::Estimate& estimate, JsonWriter& json) {
  json.Key(name);
  json.BeginObject();
  json.Key("mean");
  json.Number(estimate.mean());
  json.Key("standard_error");
  json.Number(estimate.standard_error());
  json.EndObject();
}

std::string WindowName(const v1::DriftReport& report) {
  if (!report.window_name().empty()) return report.window_name();
  return FormatWindow(FromProto(report.window()));
}

}  // namespace

const std::vector<FlagSpec>& DriftFlags() {
  static const auto* specs = new std::vector<FlagSpec>{
      {"model", false, "model name (required)"},
      {"model-version", false, "model version (default: none)"},
      {"signal", false, "signal name (required)"},
      {"window", false, "only this window, e.g. 5m (one of the stream's policy windows)"},
      {"top", false, "top contributing bins per window (server default 5, at most 100)"},
      {"json", true, "print JSON instead of a table"},
      {"help", true, "show this help"},
  };
  return *specs;
}

const std::vector<FlagSpec>& WatchFlags() {
  static const auto* specs = new std::vector<FlagSpec>{
      {"model", false, "model name (required)"},
      {"model-version", false, "model version (needs --signal)"},
      {"signal", false, "one stream's signal (default: every stream of the model)"},
      {"changes-only", true, "only reports whose alert state changed"},
      {"count", false, "stop after this many reports"},
      {"duration", false, "stop after this long, e.g. 30s or 5m"},
      {"help", true, "show this help"},
  };
  return *specs;
}

absl::StatusOr<v1::GetDriftRequest> BuildGetDriftRequest(const ParsedFlags& flags) {
  v1::GetDriftRequest request;
  absl::StatusOr<v1::StreamId> stream = StreamFromFlags(flags);
  if (!stream.ok()) return stream.status();
  *request.mutable_stream() = *std::move(stream);
  if (flags.Has("window")) {
    absl::StatusOr<absl::Duration> window = ParseWindow(*flags.Get("window"));
    if (!window.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("--window: ", window.status().message()));
    }
    ToProto(*window, request.mutable_window());
  }
  absl::StatusOr<long> top = flags.GetInt("top", 0);
  if (!top.ok()) return top.status();
  if (flags.Has("top") && (*top < 1 || *top > kMaxTopBins)) {
    return absl::InvalidArgumentError(absl::StrCat("--top must be 1-", kMaxTopBins));
  }
  request.set_top_bins(static_cast<uint32_t>(*top));
  return request;
}

absl::StatusOr<v1::WatchDriftRequest> BuildWatchDriftRequest(const ParsedFlags& flags) {
  v1::WatchDriftRequest request;
  if (!flags.Has("model")) return absl::InvalidArgumentError("--model is required");
  v1::StreamId* stream = request.mutable_stream();
  stream->set_model(*flags.Get("model"));
  if (flags.Has("signal")) {
    absl::StatusOr<v1::StreamId> one = StreamFromFlags(flags);
    if (!one.ok()) return one.status();
    *stream = *std::move(one);
  } else if (flags.Has("model-version")) {
    return absl::InvalidArgumentError(
        "--model-version needs --signal: watch one stream, or every stream of a model");
  } else if (absl::Status status = ValidateName("model", stream->model(), false); !status.ok()) {
    return status;
  }
  request.set_state_changes_only(flags.Has("changes-only"));
  return request;
}

std::string AlertStateName(v1::AlertState state) {
  switch (state) {
    case v1::ALERT_STATE_OK:
      return "ok";
    case v1::ALERT_STATE_PENDING:
      return "pending";
    case v1::ALERT_STATE_FIRING:
      return "firing";
    default:
      return "unknown";
  }
}

std::string SeverityName(v1::Severity severity) {
  switch (severity) {
    case v1::SEVERITY_NONE:
      return "none";
    case v1::SEVERITY_WARN:
      return "warn";
    case v1::SEVERITY_CRITICAL:
      return "critical";
    default:
      return "unknown";
  }
}

void WriteDriftReportJson(const v1::DriftReport& report, JsonWriter& json) {
  json.BeginObject();
  json.Key("model");
  json.String(report.stream().model());
  json.Key("model_version");
  json.String(report.stream().model_version());
  json.Key("signal");
  json.String(report.stream().signal());
  json.Key("window");
  json.String(WindowName(report));
  json.Key("samples");
  json.Number(report.samples());
  json.Key("enough_samples");
  json.Bool(report.enough_samples());
  json.Key("alert_state");
  json.String(AlertStateName(report.alert_state()));
  json.Key("severity");
  json.String(SeverityName(report.severity()));
  json.Key("state_since");
  json.String(FormatTimestamp(report.state_since()));
  json.Key("reference_version");
  json.Integer(static_cast<long long>(report.reference_version()));
  json.Key("measure");
  json.String(report.measure());
  json.Key("measure_value");
  json.Number(report.measure_value());
  json.Key("evaluated_at");
  json.String(FormatTimestamp(report.evaluated_at()));
  if (report.has_histogram()) {
    const v1::HistogramDrift& h = report.histogram();
    const std::pair<const char*, double> measures[] = {
        {"kl_current_reference", h.kl_current_reference()},
        {"kl_reference_current", h.kl_reference_current()},
        {"jeffreys", h.jeffreys()},
        {"psi", h.psi()},
        {"js_bits", h.js_bits()},
        {"hellinger", h.hellinger()},
        {"total_variation", h.total_variation()},
        {"l_inf", h.l_inf()},
        {"chi2", h.chi2()},
        {"g_test_p_value", h.g_test_p_value()},
        {"alpha", h.alpha()},
    };
    for (const auto& [name, value] : measures) {
      json.Key(name);
      json.Number(value);
    }
    json.Key("top_bins");
    json.BeginArray();
    for (const v1::BinContribution& bin : h.top_bins()) {
      json.BeginObject();
      json.Key("bin");
      json.Integer(static_cast<long long>(bin.bin()));
      json.Key("label");
      json.String(bin.label());
      json.Key("current_share");
      json.Number(bin.current_share());
      json.Key("reference_share");
      json.Number(bin.reference_share());
      json.Key("contribution");
      json.Number(bin.contribution());
      json.EndObject();
    }
    json.EndArray();
  } else if (report.has_gaussian()) {
    const v1::GaussianDrift& g = report.gaussian();
    json.Key("kl_current_reference");
    json.Number(g.kl_current_reference());
    json.Key("kl_reference_current");
    json.Number(g.kl_reference_current());
    json.Key("current_mean");
    json.BeginArray();
    for (double mean : g.current_mean()) json.Number(mean);
    json.EndArray();
    json.Key("current_var");
    json.BeginArray();
    for (double var : g.current_var()) json.Number(var);
    json.EndArray();
  } else if (report.has_policy()) {
    WriteEstimate("k1", report.policy().k1(), json);
    WriteEstimate("k2", report.policy().k2(), json);
    WriteEstimate("k3", report.policy().k3(), json);
  }
  json.EndObject();
}

std::string FormatDriftReports(const std::vector<v1::DriftReport>& reports) {
  if (reports.empty()) return "no windows\n";
  const v1::DriftReport& first = reports.front();
  std::string text =
      absl::StrFormat("%s  reference version %d, alerting on %s\n\n", StreamName(first.stream()),
                      first.reference_version(), first.measure());
  absl::StrAppendFormat(&text, "%-8s %11s  %-8s %-9s %11s %11s %11s %11s %11s %11s\n", "WINDOW",
                        "SAMPLES", "STATE", "SEVERITY", "VALUE", "KL(C||R)", "KL(R||C)", "PSI",
                        "JS_BITS", "P_VALUE");
  bool few_samples = false;
  for (const v1::DriftReport& report : reports) {
    std::string kl_cr = "-", kl_rc = "-", psi = "-", js = "-", p_value = "-";
    if (report.has_histogram()) {
      kl_cr = FormatNumber(report.histogram().kl_current_reference());
      kl_rc = FormatNumber(report.histogram().kl_reference_current());
      psi = FormatNumber(report.histogram().psi());
      js = FormatNumber(report.histogram().js_bits());
      p_value = FormatNumber(report.histogram().g_test_p_value());
    } else if (report.has_gaussian()) {
      kl_cr = FormatNumber(report.gaussian().kl_current_reference());
      kl_rc = FormatNumber(report.gaussian().kl_reference_current());
    }
    std::string samples = FormatNumber(report.samples());
    if (!report.enough_samples()) {
      samples += "*";
      few_samples = true;
    }
    absl::StrAppendFormat(&text, "%-8s %11s  %-8s %-9s %11s %11s %11s %11s %11s %11s\n",
                          WindowName(report), samples, AlertStateName(report.alert_state()),
                          SeverityName(report.severity()), FormatNumber(report.measure_value()),
                          kl_cr, kl_rc, psi, js, p_value);
  }
  if (few_samples)
    text += "* fewer samples than the policy's min_samples: the window cannot alert\n";
  for (const v1::DriftReport& report : reports) {
    if (report.has_policy()) {
      const v1::PolicyDrift& p = report.policy();
      absl::StrAppendFormat(
          &text, "\n%s: KL estimates k1 %s (se %s), k2 %s (se %s), k3 %s (se %s)\n",
          WindowName(report), FormatNumber(p.k1().mean()), FormatNumber(p.k1().standard_error()),
          FormatNumber(p.k2().mean()), FormatNumber(p.k2().standard_error()),
          FormatNumber(p.k3().mean()), FormatNumber(p.k3().standard_error()));
    }
    if (!report.has_histogram() || report.histogram().top_bins().empty()) continue;
    absl::StrAppendFormat(&text, "\n%s: top bins by contribution to KL(current || reference)\n",
                          WindowName(report));
    absl::StrAppendFormat(&text, "  %6s  %-24s %12s %12s %14s\n", "bin", "label", "current",
                          "reference", "contribution");
    for (const v1::BinContribution& bin : report.histogram().top_bins()) {
      absl::StrAppendFormat(&text, "  %6d  %-24s %12s %12s %14s\n", bin.bin(), bin.label(),
                            FormatNumber(bin.current_share()), FormatNumber(bin.reference_share()),
                            FormatNumber(bin.contribution()));
    }
  }
  return text;
}

int RunDrift(const std::vector<std::string>& args, const GlobalOptions& options, std::ostream& out,
             std::ostream& err) {
  absl::StatusOr<ParsedFlags> flags = ParseFlags(kDriftCommand, DriftFlags(), args);
  if (!flags.ok()) return ReportUsageError(kDriftCommand, flags.status(), err);
  if (flags->Has("help")) {
    out << DriftUsage();
    return kExitOk;
  }
  absl::StatusOr<v1::GetDriftRequest> request = BuildGetDriftRequest(*flags);
  if (!request.ok()) return ReportUsageError(kDriftCommand, request.status(), err);
  absl::StatusOr<v1::GetDriftResponse> response = MakeClient(options).GetDrift(*request);
  if (!response.ok()) return ReportServerError(response.status(), err);
  const std::vector<v1::DriftReport> reports(response->reports().begin(),
                                             response->reports().end());
  if (!flags->Has("json")) {
    out << FormatDriftReports(reports);
    return kExitOk;
  }
  JsonWriter json;
  if (request->has_window()) {
    if (reports.size() != 1) {
      return ReportServerError(
          absl::InternalError(
              absl::StrCat("asked for one window, the server sent ", reports.size(), " reports")),
          err);
    }
    WriteDriftReportJson(reports.front(), json);
  } else {
    json.BeginArray();
    for (const v1::DriftReport& report : reports) WriteDriftReportJson(report, json);
    json.EndArray();
  }
  out << json.Finish();
  return kExitOk;
}

int RunWatch(const std::vector<std::string>& args, const GlobalOptions& options, std::ostream& out,
             std::ostream& err) {
  absl::StatusOr<ParsedFlags> flags = ParseFlags(kWatchCommand, WatchFlags(), args);
  if (!flags.ok()) return ReportUsageError(kWatchCommand, flags.status(), err);
  if (flags->Has("help")) {
    out << WatchUsage();
    return kExitOk;
  }
  absl::StatusOr<v1::WatchDriftRequest> request = BuildWatchDriftRequest(*flags);
  if (!request.ok()) return ReportUsageError(kWatchCommand, request.status(), err);
  absl::StatusOr<long> count = flags->GetInt("count", std::numeric_limits<long>::max());
  if (!count.ok()) return ReportUsageError(kWatchCommand, count.status(), err);
  if (*count < 1) {
    return ReportUsageError(kWatchCommand, absl::InvalidArgumentError("--count must be >= 1"), err);
  }
  absl::Duration duration = absl::InfiniteDuration();
  if (flags->Has("duration") && (!absl::ParseDuration(*flags->Get("duration"), &duration) ||
                                 duration <= absl::ZeroDuration())) {
    return ReportUsageError(
        kWatchCommand,
        absl::InvalidArgumentError(absl::StrCat("--duration=", *flags->Get("duration"),
                                                " is not a positive duration such as 30s or 5m")),
        err);
  }

  KlDriftClient client = MakeClient(options);
  grpc::ClientContext context;
  if (duration != absl::InfiniteDuration()) SetDeadline(&context, duration);
  SetShardKey(&context, request->stream().model());
  std::unique_ptr<grpc::ClientReader<v1::DriftReport>> reader =
      client.stub()->WatchDrift(&context, *request);
  v1::DriftReport report;
  long received = 0;
  while (received < *count && reader->Read(&report)) {
    JsonWriter json;
    WriteDriftReportJson(report, json);
    out << json.Finish() << std::flush;
    ++received;
  }
  if (received >= *count) {
    context.TryCancel();  // Enough reports: end the stream without waiting for the next one.
    reader->Finish();     // CANCELLED, as asked.
    return kExitOk;
  }
  const absl::Status status = FromGrpcStatus(reader->Finish());
  // Reaching --duration is the normal end of a bounded watch.
  if (status.ok() || (status.code() == absl::StatusCode::kDeadlineExceeded &&
                      duration != absl::InfiniteDuration())) {
    return kExitOk;
  }
  return ReportServerError(status, err);
}

}  // namespace kldrift::cli
