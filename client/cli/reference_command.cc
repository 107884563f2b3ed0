#include "client/cli/reference_command.h"

#include <cmath>
#include <limits>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "server/core/alert_policy.h"
#include "server/core/stream_key.h"

namespace kldrift::cli {
namespace {

constexpr char kCommand[] = "kldrift reference";

const FlagSpec kModelFlag = {"model", false, "model name (required)"};
const FlagSpec kModelVersionFlag = {"model-version", false, "model version (default: none)"};
const FlagSpec kSignalFlag = {"signal", false, "signal name (required)"};
const FlagSpec kJsonFlag = {"json", true, "print JSON instead of text"};
const FlagSpec kHelpFlag = {"help", true, "show this help"};

const std::vector<FlagSpec>& GetFlags() {
  static const auto* specs = new std::vector<FlagSpec>{
      kModelFlag,  kModelVersionFlag,
      kSignalFlag, {"version", false, "reference version (default: the latest)"},
      kJsonFlag,   kHelpFlag,
  };
  return *specs;
}

const std::vector<FlagSpec>& ListFlags() {
  static const auto* specs = new std::vector<FlagSpec>{
      {"model", false, "only this model's streams (default: all)"},
      kJsonFlag,
      kHelpFlag,
  };
  return *specs;
}

const std::vector<FlagSpec>& DeleteFlags() {
  static const auto* specs =
      new std::vector<FlagSpec>{kModelFlag, kModelVersionFlag, kSignalFlag, kHelpFlag};
  return *specs;
}

std::string Usage() {
  return absl::StrCat(
      "usage: kldrift [--server ADDR] [--timeout D] reference <subcommand> [flags]\n\n"
      "subcommands:\n"
      "  put      create or replace a stream's reference; prints the new version\n"
      "  get      show one version of a stream's reference\n"
      "  list     list the latest reference of every stream\n"
      "  delete   delete every version of a stream's reference\n\n"
      "'kldrift reference <subcommand> --help' describes its flags.\n");
}

std::string PutUsage() {
  return absl::StrCat(
      "usage: kldrift reference put --model M [--model-version V] --signal S\n"
      "           (--edges e1,e2,... | --categories a,b,... | --bins K)\n"
      "           (--counts c1,c2,... | --values-file F)\n"
      "           [--alpha A] [--windows 5m,1h] [--warn X] [--critical Y] [--measure NAME] "
      "[--for D]\n\n"
      "Creates or replaces a stream's reference and prints its new version number.\n"
      "--counts: one per bin between the edges (or the full layout with underflow, overflow and\n"
      "NaN), one per category (optionally followed by the unseen count), or K for --bins.\n"
      "--values-file: one value per line (numeric) or one label per line (categorical); '-' "
      "reads stdin.\n\n",
      FlagHelp(PutReferenceFlags()));
}

std::string GetUsage() {
  return absl::StrCat(
      "usage: kldrift reference get --model M [--model-version V] --signal S [--version N] "
      "[--json]\n\n",
      FlagHelp(GetFlags()));
}

std::string ListUsage() {
  return absl::StrCat("usage: kldrift reference list [--model M] [--json]\n\n",
                      FlagHelp(ListFlags()));
}

std::string DeleteUsage() {
  return absl::StrCat(
      "usage: kldrift reference delete --model M [--model-version V] --signal S\n\n"
      "Deletes every version of the stream's reference, with its windows and alert state.\n\n",
      FlagHelp(DeleteFlags()));
}

// Applies the alerting flags of `reference put` to `policy`.
absl::Status FillPolicy(const ParsedFlags& flags, v1::AlertPolicy* policy) {
  if (flags.Has("alpha")) {
    absl::StatusOr<double> alpha = flags.GetDouble("alpha", 0);
    if (!alpha.ok()) return alpha.status();
    policy->set_alpha(*alpha);
  }
  if (flags.Has("windows")) {
    absl::StatusOr<std::vector<absl::Duration>> windows = ParseWindowList(*flags.Get("windows"));
    if (!windows.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("--windows: ", windows.status().message()));
    }
    for (absl::Duration window : *windows) ToProto(window, policy->add_windows());
  }
  if (flags.Has("warn")) {
    absl::StatusOr<double> warn = flags.GetDouble("warn", 0);
    if (!warn.ok()) return warn.status();
    policy->set_warn_threshold(*warn);
  }
  if (flags.Has("critical")) {
    absl::StatusOr<double> critical = flags.GetDouble("critical", 0);
    if (!critical.ok()) return critical.status();
    policy->set_critical_threshold(*critical);
  }
  if (flags.Has("measure")) {
    absl::StatusOr<Measure> measure = ParseMeasure(*flags.Get("measure"));
    if (!measure.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("--measure: ", measure.status().message()));
    }
    policy->set_measure(std::string(MeasureName(*measure)));
  }
  if (flags.Has("for")) {
    absl::Duration for_duration;
    if (!absl::ParseDuration(*flags.Get("for"), &for_duration) ||
        for_duration < absl::ZeroDuration() || for_duration == absl::InfiniteDuration()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--for=", *flags.Get("for"), " is not a duration >= 0 such as 0s or 5m"));
    }
    ToProto(for_duration, policy->mutable_for_duration());
  }
  return absl::OkStatus();
}

void WritePolicyJson(const v1::AlertPolicy& policy, JsonWriter& json) {
  json.BeginObject();
  json.Key("windows");
  json.BeginArray();
  for (const google::protobuf::Duration& window : policy.windows()) {
    json.String(FormatWindow(FromProto(window)));
  }
  json.EndArray();
  json.Key("alpha");
  json.Number(policy.alpha());
  json.Key("measure");
  json.String(policy.measure());
  json.Key("warn_threshold");
  json.Number(policy.warn_threshold());
  json.Key("critical_threshold");
  json.Number(policy.critical_threshold());
  json.Key("clear_threshold");
  json.Number(policy.clear_threshold());
  json.Key("for");
  json.String(FormatWindow(FromProto(policy.for_duration())));
  if (policy.has_min_samples()) {
    json.Key("min_samples");
    json.Number(policy.min_samples());
  }
  json.Key("max_p_value");
  json.Number(policy.max_p_value());
  json.Key("sub_buckets");
  json.Integer(policy.sub_buckets());
  json.EndObject();
}

std::string WindowList(const v1::AlertPolicy& policy) {
  std::vector<std::string> windows;
  for (const google::protobuf::Duration& window : policy.windows()) {
    windows.push_back(FormatWindow(FromProto(window)));
  }
  return absl::StrJoin(windows, ",");
}

// Bins of a histogram reference: edges, categories or a count.
std::string BinsSummary(const v1::Reference& reference) {
  switch (reference.kind()) {
    case v1::REFERENCE_KIND_NUMERIC:
      return absl::StrCat(reference.numeric().edges_size(), " edges");
    case v1::REFERENCE_KIND_CATEGORICAL:
      return absl::StrCat(reference.categorical().categories_size(), " categories");
    case v1::REFERENCE_KIND_PRE_BINNED:
      return absl::StrCat(reference.pre_binned().bins(), " bins");
    case v1::REFERENCE_KIND_GAUSSIAN:
      return absl::StrCat(reference.gaussian().mean_size(), " dimensions");
    default:
      return "-";
  }
}

int RunPut(const ParsedFlags& flags, const GlobalOptions& options, std::ostream& out,
           std::ostream& err, std::istream& in) {
  absl::StatusOr<v1::PutReferenceRequest> request = BuildPutReferenceRequest(flags, in);
  if (!request.ok()) return ReportUsageError("kldrift reference put", request.status(), err);
  absl::StatusOr<v1::PutReferenceResponse> response = MakeClient(options).PutReference(*request);
  if (!response.ok()) return ReportServerError(response.status(), err);
  out << response->version() << "\n";
  return kExitOk;
}

int RunGet(const ParsedFlags& flags, const GlobalOptions& options, std::ostream& out,
           std::ostream& err) {
  absl::StatusOr<v1::StreamId> stream = StreamFromFlags(flags);
  if (!stream.ok()) return ReportUsageError("kldrift reference get", stream.status(), err);
  absl::StatusOr<long> version = flags.GetInt("version", 0);
  if (!version.ok()) return ReportUsageError("kldrift reference get", version.status(), err);
  if (*version < 0) {
    return ReportUsageError("kldrift reference get",
                            absl::InvalidArgumentError("--version must be >= 1"), err);
  }
  absl::StatusOr<v1::Reference> reference =
      MakeClient(options).GetReference(*stream, static_cast<uint64_t>(*version));
  if (!reference.ok()) return ReportServerError(reference.status(), err);
  if (flags.Has("json")) {
    JsonWriter json;
    WriteReferenceJson(*reference, json);
    out << json.Finish();
  } else {
    out << FormatReference(*reference);
  }
  return kExitOk;
}

int RunList(const ParsedFlags& flags, const GlobalOptions& options, std::ostream& out,
            std::ostream& err) {
  const std::string model = flags.Get("model").value_or("");
  if (!model.empty()) {
    if (absl::Status status = ValidateName("model", model, false); !status.ok()) {
      return ReportUsageError("kldrift reference list", status, err);
    }
  }
  absl::StatusOr<std::vector<v1::Reference>> references = MakeClient(options).ListReferences(model);
  if (!references.ok()) return ReportServerError(references.status(), err);
  if (flags.Has("json")) {
    JsonWriter json;
    json.BeginArray();
    for (const v1::Reference& reference : *references) WriteReferenceJson(reference, json);
    json.EndArray();
    out << json.Finish();
  } else {
    out << FormatReferenceList(*references);
  }
  return kExitOk;
}

int RunDelete(const ParsedFlags& flags, const GlobalOptions& options, std::ostream& out,
              std::ostream& err) {
  absl::StatusOr<v1::StreamId> stream = StreamFromFlags(flags);
  if (!stream.ok()) return ReportUsageError("kldrift reference delete", stream.status(), err);
  absl::StatusOr<uint64_t> deleted = MakeClient(options).DeleteReference(*stream);
  if (!deleted.ok()) return ReportServerError(deleted.status(), err);
  out << "deleted " << *deleted << (*deleted == 1 ? " version" : " versions") << " of "
      << StreamName(*stream) << "\n";
  return kExitOk;
}

}  // namespace

const std::vector<FlagSpec>& PutReferenceFlags() {
  static const auto* specs = new std::vector<FlagSpec>{
      kModelFlag,
      kModelVersionFlag,
      kSignalFlag,
      {"edges", false, "numeric bins: strictly increasing edges e1,e2,..."},
      {"categories", false, "categorical bins: labels a,b,..."},
      {"bins", false, "pre-binned: the number of bins K"},
      {"counts", false, "the reference histogram c1,c2,..."},
      {"values-file", false, "raw values (or labels), one per line; '-' reads stdin"},
      {"alpha", false, "Dirichlet smoothing pseudo-counts per bin (server default 0.5)"},
      {"windows", false, "sliding windows, e.g. 5m,1h,24h (the server default)"},
      {"warn", false, "warn threshold on the measure (server default 0.05)"},
      {"critical", false, "critical threshold (server default 0.125, or 2.5 x --warn)"},
      {"measure", false, "measure to alert on (default kl_current_reference)"},
      {"for", false, "how long over a threshold before firing, e.g. 0s (server default 5m)"},
      kHelpFlag,
  };
  return *specs;
}

absl::StatusOr<v1::PutReferenceRequest> BuildPutReferenceRequest(const ParsedFlags& flags,
                                                                 std::istream& in) {
  v1::PutReferenceRequest request;
  absl::StatusOr<v1::StreamId> stream = StreamFromFlags(flags);
  if (!stream.ok()) return stream.status();
  *request.mutable_stream() = *std::move(stream);

  const int kinds = flags.Has("edges") + flags.Has("categories") + flags.Has("bins");
  if (kinds != 1) {
    return absl::InvalidArgumentError(
        "give exactly one of --edges (numeric), --categories (categorical) and --bins "
        "(pre-binned)");
  }
  const int sources = flags.Has("counts") + flags.Has("values-file");
  if (sources != 1) {
    return absl::InvalidArgumentError("give exactly one of --counts and --values-file");
  }
  if (flags.Has("edges")) {
    absl::StatusOr<std::vector<double>> edges = ParseNumberList("edges", *flags.Get("edges"));
    if (!edges.ok()) return edges.status();
    request.mutable_numeric()->mutable_edges()->Assign(edges->begin(), edges->end());
  } else if (flags.Has("categories")) {
    absl::StatusOr<std::vector<std::string>> categories =
        ParseLabelList("categories", *flags.Get("categories"));
    if (!categories.ok()) return categories.status();
    for (std::string& category : *categories) {
      request.mutable_categorical()->add_categories(std::move(category));
    }
  } else {
    absl::StatusOr<long> bins = flags.GetInt("bins", 0);
    if (!bins.ok()) return bins.status();
    if (*bins < 1 || *bins > std::numeric_limits<uint32_t>::max()) {
      return absl::InvalidArgumentError("--bins must be a whole number >= 1");
    }
    request.mutable_pre_binned()->set_bins(static_cast<uint32_t>(*bins));
  }

  if (flags.Has("counts")) {
    absl::StatusOr<std::vector<double>> counts = ParseNumberList("counts", *flags.Get("counts"));
    if (!counts.ok()) return counts.status();
    for (double count : *counts) {
      if (!std::isfinite(count) || count < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("--counts: ", count, " is not a count (finite and >= 0)"));
      }
    }
    request.mutable_counts()->mutable_counts()->Assign(counts->begin(), counts->end());
  } else {
    if (flags.Has("bins")) {
      return absl::InvalidArgumentError(
          "--bins takes --counts (one count per bin), not --values-file");
    }
    const std::string path = *flags.Get("values-file");
    absl::StatusOr<std::vector<std::string>> items = ReadItems(path, in);
    if (!items.ok()) return absl::InvalidArgumentError(items.status().message());
    if (flags.Has("edges")) {
      absl::StatusOr<std::vector<double>> values = ParseValues(path, *items);
      if (!values.ok()) return values.status();
      request.mutable_values()->mutable_values()->Assign(values->begin(), values->end());
    } else {
      for (std::string& label : *items) request.mutable_labels()->add_labels(std::move(label));
    }
  }
  if (absl::Status status = FillPolicy(flags, request.mutable_policy()); !status.ok()) {
    return status;
  }
  return request;
}

std::string KindName(v1::ReferenceKind kind) {
  std::string name = v1::ReferenceKind_Name(kind);
  constexpr absl::string_view kPrefix = "REFERENCE_KIND_";
  if (absl::StartsWith(name, kPrefix)) name = name.substr(kPrefix.size());
  return absl::AsciiStrToLower(name);
}

void WriteReferenceJson(const v1::Reference& reference, JsonWriter& json) {
  json.BeginObject();
  json.Key("model");
  json.String(reference.stream().model());
  json.Key("model_version");
  json.String(reference.stream().model_version());
  json.Key("signal");
  json.String(reference.stream().signal());
  json.Key("version");
  json.Integer(static_cast<long long>(reference.version()));
  json.Key("kind");
  json.String(KindName(reference.kind()));
  switch (reference.kind()) {
    case v1::REFERENCE_KIND_NUMERIC:
      json.Key("edges");
      json.BeginArray();
      for (double edge : reference.numeric().edges()) json.Number(edge);
      json.EndArray();
      break;
    case v1::REFERENCE_KIND_CATEGORICAL:
      json.Key("categories");
      json.BeginArray();
      for (const std::string& category : reference.categorical().categories()) {
        json.String(category);
      }
      json.EndArray();
      break;
    case v1::REFERENCE_KIND_PRE_BINNED:
      json.Key("bins");
      json.Integer(reference.pre_binned().bins());
      break;
    case v1::REFERENCE_KIND_GAUSSIAN:
      json.Key("mean");
      json.BeginArray();
      for (double mean : reference.gaussian().mean()) json.Number(mean);
      json.EndArray();
      json.Key("var");
      json.BeginArray();
      for (double var : reference.gaussian().var()) json.Number(var);
      json.EndArray();
      break;
    default:
      break;
  }
  if (reference.counts_size() > 0) {
    json.Key("counts");
    json.BeginArray();
    for (double count : reference.counts()) json.Number(count);
    json.EndArray();
    json.Key("bin_labels");
    json.BeginArray();
    for (const std::string& label : reference.bin_labels()) json.String(label);
    json.EndArray();
  }
  json.Key("policy");
  WritePolicyJson(reference.policy(), json);
  json.Key("created_at");
  json.String(FormatTimestamp(reference.created_at()));
  json.EndObject();
}

std::string FormatReference(const v1::Reference& reference) {
  const v1::AlertPolicy& policy = reference.policy();
  std::string text = absl::StrFormat("stream    %s\nversion   %d (%s, %s, created %s)\n",
                                     StreamName(reference.stream()), reference.version(),
                                     KindName(reference.kind()), BinsSummary(reference),
                                     FormatTimestamp(reference.created_at()));
  absl::StrAppendFormat(&text, "windows   %s (%d sub-buckets each)\n", WindowList(policy),
                        policy.sub_buckets());
  absl::StrAppendFormat(&text,
                        "alerting  %s: warn %s, critical %s, clear %s, for %s, min_samples %s, "
                        "max_p_value %s, alpha %s\n",
                        policy.measure(), FormatNumber(policy.warn_threshold()),
                        FormatNumber(policy.critical_threshold()),
                        FormatNumber(policy.clear_threshold()),
                        FormatWindow(FromProto(policy.for_duration())),
                        policy.has_min_samples() ? FormatNumber(policy.min_samples()) : "auto",
                        FormatNumber(policy.max_p_value()), FormatNumber(policy.alpha()));
  if (reference.counts_size() > 0) {
    double total = 0;
    for (double count : reference.counts()) total += count;
    absl::StrAppendFormat(&text, "\n  %6s  %-24s %12s %10s\n", "bin", "label", "count", "share");
    for (int i = 0; i < reference.counts_size(); ++i) {
      const std::string label = i < reference.bin_labels_size() ? reference.bin_labels(i) : "";
      absl::StrAppendFormat(&text, "  %6d  %-24s %12s %10s\n", i, label,
                            FormatNumber(reference.counts(i)),
                            FormatNumber(total > 0 ? reference.counts(i) / total : 0));
    }
  } else if (reference.kind() == v1::REFERENCE_KIND_GAUSSIAN) {
    absl::StrAppendFormat(&text, "\n  %6s %12s %12s\n", "dim", "mean", "var");
    for (int i = 0; i < reference.gaussian().mean_size(); ++i) {
      absl::StrAppendFormat(
          &text, "  %6d %12s %12s\n", i, FormatNumber(reference.gaussian().mean(i)),
          FormatNumber(i < reference.gaussian().var_size() ? reference.gaussian().var(i)
                                                           : std::nan("")));
    }
  }
  return text;
}

std::string FormatReferenceList(const std::vector<v1::Reference>& references) {
  if (references.empty()) return "no references\n";
  std::string text = absl::StrFormat("%-40s %8s  %-16s %-16s %-10s %s\n", "STREAM", "VERSION",
                                     "KIND", "BINS", "WINDOWS", "CREATED");
  for (const v1::Reference& reference : references) {
    absl::StrAppendFormat(&text, "%-40s %8d  %-16s %-16s %-10s %s\n",
                          StreamName(reference.stream()), reference.version(),
                          KindName(reference.kind()), BinsSummary(reference),
                          WindowList(reference.policy()), FormatTimestamp(reference.created_at()));
  }
  return text;
}

int RunReference(const std::vector<std::string>& args, const GlobalOptions& options,
                 std::ostream& out, std::ostream& err, std::istream& in) {
  if (args.empty()) {
    err << Usage();
    return kExitUsage;
  }
  const std::string subcommand = args.front();
  const std::vector<std::string> rest(args.begin() + 1, args.end());
  if (subcommand == "--help" || subcommand == "-h" || subcommand == "help") {
    out << Usage();
    return kExitOk;
  }
  struct Subcommand {
    const char* name;
    const std::vector<FlagSpec>& flags;
    std::string usage;
  };
  const Subcommand subcommands[] = {
      {"put", PutReferenceFlags(), PutUsage()},
      {"get", GetFlags(), GetUsage()},
      {"list", ListFlags(), ListUsage()},
      {"delete", DeleteFlags(), DeleteUsage()},
  };
  for (const Subcommand& candidate : subcommands) {
    if (subcommand != candidate.name) continue;
    const std::string command = absl::StrCat(kCommand, " ", candidate.name);
    absl::StatusOr<ParsedFlags> flags = ParseFlags(command, candidate.flags, rest);
    if (!flags.ok()) return ReportUsageError(command, flags.status(), err);
    if (flags->Has("help")) {
      out << candidate.usage;
      return kExitOk;
    }
    if (subcommand == "put") return RunPut(*flags, options, out, err, in);
    if (subcommand == "get") return RunGet(*flags, options, out, err);
    if (subcommand == "list") return RunList(*flags, options, out, err);
    return RunDelete(*flags, options, out, err);
  }
  err << kCommand << ": unknown subcommand \"" << subcommand << "\"\n\n" << Usage();
  return kExitUsage;
}

}  // namespace kldrift::cli
