#include "client/cli/compare_command.h"

#include <cmath>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "client/cli/command_line.h"
#include "client/cli/json_writer.h"
#include "client/histogram_file.h"
#include "server/core/drift_measures.h"
#include "server/kernels/gaussian.h"

namespace kldrift::cli {
namespace {

constexpr int kExitOk = 0;
constexpr int kExitUsage = 2;
constexpr long kDefaultTop = 5;

const std::vector<FlagSpec>& CompareFlags() {
  static const auto* specs = new std::vector<FlagSpec>{
      {"reference", false, "reference histogram file (JSON or CSV); with --gaussian, optional"},
      {"current", false, "current histogram file (JSON or CSV)"},
      {"alpha", false, "Dirichlet smoothing: pseudo-counts added to every bin (default 0.5)"},
      {"top", false, "how many bins to list by contribution to KL (default 5)"},
      {"json", true, "print JSON instead of a table"},
      {"gaussian", true,
       "files are diagonal Gaussians {\"mean\": [...], \"var\": [...]}; "
       "without --reference the reference is N(0, I)"},
      {"help", true, "show this help"},
  };
  return *specs;
}

std::string Usage() {
  return absl::StrCat(
      "usage: kldrift compare --reference REF --current CUR [--alpha A] [--top K] [--json]\n"
      "       kldrift compare --gaussian --current CUR [--reference REF] [--json]\n\n"
      "Compares a current histogram with a reference and prints every divergence.\n"
      "Files: JSON {\"counts\": [...], \"edges\": [...]} or {\"counts\": [...], \"categories\":"
      " [...]},\nor CSV with one count per line. Exit codes: 0 ok, 2 bad usage or input.\n\n",
      FlagHelp(CompareFlags()));
}

// Reads and parses one file, prefixing errors with its path.
template <typename Parse>
auto LoadFile(const std::string& path, Parse parse) -> decltype(parse(absl::string_view())) {
  absl::StatusOr<std::string> text = ReadFile(path);
  if (!text.ok()) return text.status();
  auto parsed = parse(*text);
  if (!parsed.ok()) {
    return absl::Status(parsed.status().code(),
                        absl::StrCat(path, ": ", parsed.status().message()));
  }
  return parsed;
}

std::string Number(double value) {
  if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
  return absl::StrFormat("%.6g", value);
}

void PrintMeasuresTable(const DriftMeasures& m, size_t bins, std::ostream& out) {
  out << absl::StrFormat("samples: current %s, reference %s   bins: %d   alpha: %s\n\n",
                         Number(m.samples_current), Number(m.samples_reference), bins,
                         Number(m.alpha));
  const std::pair<const char*, std::pair<double, const char*>> rows[] = {
      {"kl_current_reference", {m.kl_current_reference, "KL(current || reference), nats"}},
      {"kl_reference_current", {m.kl_reference_current, "KL(reference || current), nats"}},
      {"jeffreys", {m.jeffreys, "sum of both KL directions, nats"}},
      {"psi", {m.psi, "population stability index (= jeffreys)"}},
      {"js_bits", {m.js_bits, "Jensen-Shannon divergence, bits, in [0, 1]"}},
      {"hellinger", {m.hellinger, "Hellinger distance, in [0, 1]"}},
      {"total_variation", {m.total_variation, "total variation distance, in [0, 1]"}},
      {"l_inf", {m.l_inf, "largest change of a bin's share"}},
      {"chi2", {m.chi2, "Pearson chi-squared divergence"}},
      {"g_test_p_value", {m.g_test_p_value, "G-test p-value (small = significant drift)"}},
  };
  for (const auto& [name, value] : rows) {
    out << absl::StrFormat("  %-22s %12s   %s\n", name, Number(value.first), value.second);
  }
  if (!m.top_bins.empty()) {
    out << "\ntop bins by contribution to KL(current || reference):\n";
    out << absl::StrFormat("  %6s  %-24s %12s %12s %14s\n", "bin", "label", "current", "reference",
                           "contribution");
    for (const BinContribution& bin : m.top_bins) {
      out << absl::StrFormat("  %6d  %-24s %12s %12s %14s\n", bin.bin, bin.label,
                             Number(bin.current_share), Number(bin.reference_share),
                             Number(bin.contribution));
    }
  }
}

void PrintMeasuresJson(const DriftMeasures& m, std::ostream& out) {
  JsonWriter json;
  json.BeginObject();
  const std::pair<const char*, double> fields[] = {
      {"kl_current_reference", m.kl_current_reference},
      {"kl_reference_current", m.kl_reference_current},
      {"jeffreys", m.jeffreys},
      {"psi", m.psi},
      {"js_bits", m.js_bits},
      {"hellinger", m.hellinger},
      {"total_variation", m.total_variation},
      {"l_inf", m.l_inf},
      {"chi2", m.chi2},
      {"g_test_p_value", m.g_test_p_value},
      {"samples_current", m.samples_current},
      {"samples_reference", m.samples_reference},
      {"alpha", m.alpha},
  };
  for (const auto& [name, value] : fields) {
    json.Key(name);
    json.Number(value);
  }
  json.Key("top_bins");
  json.BeginArray();
  for (const BinContribution& bin : m.top_bins) {
    json.BeginObject();
    json.Key("bin");
    json.Integer(static_cast<long long>(bin.bin));
    json.Key("label");
    json.String(bin.label);
    json.Key("current_share");
    json.Number(bin.current_share);
    json.Key("reference_share");
    json.Number(bin.reference_share);
    json.Key("contribution");
    json.Number(bin.contribution);
    json.EndObject();
  }
  json.EndArray();
  json.EndObject();
  out << json.Finish();
}

absl::Status CompareHistograms(const ParsedFlags& flags, std::ostream& out) {
  if (!flags.Has("reference") || !flags.Has("current")) {
    return absl::InvalidArgumentError("--reference and --current are both required");
  }
  absl::StatusOr<double> alpha = flags.GetDouble("alpha", kDefaultAlpha);
  if (!alpha.ok()) return alpha.status();
  // Checked here so the error names the flag, not the reference file.
  if (!std::isfinite(*alpha) || *alpha < 0) {
    return absl::InvalidArgumentError(absl::StrCat("--alpha=", *flags.Get("alpha"),
                                                   " is invalid: it must be a finite number >= 0"));
  }
  absl::StatusOr<long> top = flags.GetInt("top", kDefaultTop);
  if (!top.ok()) return top.status();
  if (*top < 0) return absl::InvalidArgumentError("--top must be >= 0");

  const std::string reference_path = *flags.Get("reference");
  const std::string current_path = *flags.Get("current");
  absl::StatusOr<HistogramData> reference_data = LoadFile(reference_path, ParseHistogram);
  if (!reference_data.ok()) return reference_data.status();
  absl::StatusOr<HistogramData> current_data = LoadFile(current_path, ParseHistogram);
  if (!current_data.ok()) return current_data.status();

  absl::StatusOr<LaidOutHistogram> reference = LayOutReference(*std::move(reference_data));
  if (!reference.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(reference_path, ": ", reference.status().message()));
  }
  absl::StatusOr<std::vector<double>> current = AlignToReference(*reference, *current_data);
  if (!current.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(current_path, ": ", current.status().message()));
  }
  absl::StatusOr<ReferenceProfile> profile = ReferenceProfile::Create(reference->counts, *alpha);
  if (!profile.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(reference_path, ": ", profile.status().message()));
  }
  absl::StatusOr<DriftMeasures> measures =
      ComputeDriftMeasures(*profile, *current, static_cast<size_t>(*top), &reference->layout);
  if (!measures.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(current_path, ": ", measures.status().message()));
  }
  if (flags.Has("json")) {
    PrintMeasuresJson(*measures, out);
  } else {
    out << "kldrift compare: " << current_path << " (current) vs " << reference_path
        << " (reference)\n";
    PrintMeasuresTable(*measures, reference->layout.size(), out);
  }
  return absl::OkStatus();
}

absl::Status CompareGaussians(const ParsedFlags& flags, std::ostream& out) {
  if (!flags.Has("current")) return absl::InvalidArgumentError("--current is required");
  if (flags.Has("alpha") || flags.Has("top")) {
    return absl::InvalidArgumentError("--alpha and --top apply to histograms, not --gaussian");
  }
  const std::string current_path = *flags.Get("current");
  absl::StatusOr<GaussianData> current = LoadFile(current_path, ParseGaussian);
  if (!current.ok()) return current.status();
  const size_t dims = current->mean.size();
  kernels::GaussianKlPair kl;
  std::string reference_name = "N(0, I)";
  if (flags.Has("reference")) {
    reference_name = *flags.Get("reference");
    absl::StatusOr<GaussianData> reference = LoadFile(reference_name, ParseGaussian);
    if (!reference.ok()) return reference.status();
    if (reference->mean.size() != dims) {
      return absl::InvalidArgumentError(absl::StrCat(current_path, " has ", dims,
                                                     " dimensions but ", reference_name, " has ",
                                                     reference->mean.size()));
    }
    kl = kernels::DiagonalGaussianKl(current->mean.data(), current->var.data(),
                                     reference->mean.data(), reference->var.data(), dims);
  } else {
    kl = kernels::DiagonalGaussianKlStandardNormal(current->mean.data(), current->var.data(), dims);
  }
  if (flags.Has("json")) {
    JsonWriter json;
    json.BeginObject();
    json.Key("kl_current_reference");
    json.Number(kl.forward);
    json.Key("kl_reference_current");
    json.Number(kl.reverse);
    json.Key("jeffreys");
    json.Number(kl.forward + kl.reverse);
    json.Key("dimensions");
    json.Integer(static_cast<long long>(dims));
    json.Key("reference");
    json.String(flags.Has("reference") ? "file" : "standard_normal");
    json.EndObject();
    out << json.Finish();
  } else {
    out << "kldrift compare --gaussian: " << current_path << " (current) vs " << reference_name
        << " (reference), " << dims << " dimensions\n\n";
    out << absl::StrFormat("  %-22s %12s   %s\n", "kl_current_reference", Number(kl.forward),
                           "KL(current || reference), nats");
    out << absl::StrFormat("  %-22s %12s   %s\n", "kl_reference_current", Number(kl.reverse),
                           "KL(reference || current), nats");
    out << absl::StrFormat("  %-22s %12s   %s\n", "jeffreys", Number(kl.forward + kl.reverse),
                           "sum of both directions, nats");
  }
  return absl::OkStatus();
}

}  // namespace

int RunCompare(const std::vector<std::string>& args, std::ostream& out, std::ostream& err) {
  absl::StatusOr<ParsedFlags> flags = ParseFlags("kldrift compare", CompareFlags(), args);
  if (!flags.ok()) {
    err << "kldrift compare: " << flags.status().message() << "\n";
    return kExitUsage;
  }
  if (flags->Has("help")) {
    out << Usage();
    return kExitOk;
  }
  const absl::Status status =
      flags->Has("gaussian") ? CompareGaussians(*flags, out) : CompareHistograms(*flags, out);
  if (!status.ok()) {
    err << "kldrift compare: " << status.message() << "\n";
    if (absl::IsInvalidArgument(status) && !flags->Has("current")) err << "\n" << Usage();
    return kExitUsage;
  }
  return kExitOk;
}

}  // namespace kldrift::cli
