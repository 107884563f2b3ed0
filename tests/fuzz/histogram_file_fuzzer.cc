// libFuzzer harness over the CLI's file parsers: histogram files (JSON and CSV) and Gaussian files
// for `kldrift compare` (client/histogram_file.h), and the --values-file / --labels-file lists of
// `kldrift ingest` and `kldrift reference put` (ReadItems, ParseValues in
// client/cli/server_command.h).
//
// The input is file contents. Up to its first NUL byte it is the reference file and after it the
// current file; without a NUL byte the same text is both (the seeds in
// tests/fuzz/corpus/histogram_file are plain files). Each text goes through every parser in
// memory, the pair through what `kldrift compare` does with it (lay out the reference, align the
// current histogram, compute every measure), and then through `kldrift compare` itself
// (RunCompare, reading two per-process temporary files) in histogram and in --gaussian mode.
// Besides the sanitizers, the harness checks:
//   - errors are INVALID_ARGUMENT with a message; RunCompare exits 0 with output or 2 with a
//     message, and agrees with the in-memory pipeline on which inputs are good;
//   - parsed counts are integers in [0, 2^53]; a parsed histogram written back as JSON with the
//     CLI's JsonWriter parses to the same histogram (escaping, number formatting);
//   - measures are in their ranges (no NaN); --json output is valid JSON.
#include <unistd.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "client/cli/compare_command.h"
#include "client/cli/json_writer.h"
#include "client/cli/server_command.h"
#include "client/histogram_file.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/stubs/logging.h"
#include "google/protobuf/util/json_util.h"
#include "server/core/drift_measures.h"
#include "server/kernels/gaussian.h"

namespace kldrift {
namespace {

// 2^53, the largest count a file may hold.
constexpr double kMaxCount = 9007199254740992.0;

// The per-process directory holding the two files RunCompare reads.
std::filesystem::path* temp_dir = nullptr;

[[noreturn]] void Fail(const std::string& what) {
  std::fprintf(stderr, "histogram_file_fuzzer: invariant violated: %s\n", what.c_str());
  std::fflush(stderr);
  std::abort();
}

#define FUZZ_CHECK(condition, ...)                                                  \
  do {                                                                              \
    if (!(condition)) ::kldrift::Fail(absl::StrCat(#condition, ": ", __VA_ARGS__)); \
  } while (0)

bool SameDouble(double a, double b) { return a == b || (std::isnan(a) && std::isnan(b)); }

void CheckError(const absl::Status& status, absl::string_view where) {
  FUZZ_CHECK(status.code() == absl::StatusCode::kInvalidArgument, where, ": ", status.ToString());
  FUZZ_CHECK(!status.message().empty(), where, ": an error without a message");
}

void CheckHistogram(const HistogramData& data) {
  FUZZ_CHECK(!data.counts.empty(), "a histogram without counts");
  FUZZ_CHECK(data.edges.empty() || data.categories.empty(), "both edges and categories");
  for (double c : data.counts) {
    FUZZ_CHECK(c >= 0 && c <= kMaxCount && c == std::floor(c), "count ", c, " was accepted");
  }
}

// The histogram written as JSON with the CLI's writer, and parsed again, is the same histogram.
void CheckJsonRoundTrip(const HistogramData& data) {
  cli::JsonWriter json;
  json.BeginObject();
  json.Key("counts");
  json.BeginArray();
  for (double c : data.counts) json.Number(c);
  json.EndArray();
  if (!data.edges.empty()) {
    json.Key("edges");
    json.BeginArray();
    for (double e : data.edges) json.Number(e);
    json.EndArray();
  }
  if (!data.categories.empty()) {
    json.Key("categories");
    json.BeginArray();
    for (const std::string& c : data.categories) json.String(c);
    json.EndArray();
  }
  json.EndObject();
  const std::string text = json.Finish();
  absl::StatusOr<HistogramData> back = ParseHistogram(text);
  FUZZ_CHECK(back.ok(), "JsonWriter's rewrite does not parse: ", back.status().ToString(), "\n",
             text);
  FUZZ_CHECK(back->counts == data.counts, "counts changed in a JSON round trip:\n", text);
  FUZZ_CHECK(back->categories == data.categories, "categories changed in a JSON round trip:\n",
             text);
  FUZZ_CHECK(back->edges.size() == data.edges.size(), "edges changed in a JSON round trip");
  for (size_t i = 0; i < data.edges.size(); ++i) {
    FUZZ_CHECK(SameDouble(back->edges[i], data.edges[i]), "edge ", i, " changed: ", data.edges[i],
               " -> ", back->edges[i]);
  }
}

void CheckUnit(double value, absl::string_view name) {
  FUZZ_CHECK(value >= 0 && value <= 1, name, " = ", value, " is outside [0, 1]");
}

void CheckDivergence(double value, absl::string_view name) {
  FUZZ_CHECK(value >= 0, name, " = ", value, " is negative or NaN");  // +inf allowed.
}

void CheckMeasures(const DriftMeasures& m, size_t bins, size_t top) {
  CheckDivergence(m.kl_current_reference, "kl_current_reference");
  CheckDivergence(m.kl_reference_current, "kl_reference_current");
  CheckDivergence(m.jeffreys, "jeffreys");
  CheckDivergence(m.psi, "psi");
  CheckDivergence(m.chi2, "chi2");
  CheckUnit(m.js_bits, "js_bits");
  CheckUnit(m.hellinger, "hellinger");
  CheckUnit(m.total_variation, "total_variation");
  CheckUnit(m.l_inf, "l_inf");
  CheckUnit(m.g_test_p_value, "g_test_p_value");
  FUZZ_CHECK(m.top_bins.size() <= top, m.top_bins.size(), " top bins");
  for (const BinContribution& bin : m.top_bins) {
    FUZZ_CHECK(bin.bin < bins, "top bin ", bin.bin, " of ", bins);
    FUZZ_CHECK(!std::isnan(bin.contribution), "top bin ", bin.bin, " contribution NaN");
  }
}

// What `kldrift compare` does with two parsed histograms; true if it succeeds.
bool ComparePipeline(const absl::StatusOr<HistogramData>& reference_data,
                     const absl::StatusOr<HistogramData>& current_data, double alpha, size_t top) {
  if (!reference_data.ok() || !current_data.ok()) return false;
  absl::StatusOr<LaidOutHistogram> reference = LayOutReference(*reference_data);
  if (!reference.ok()) {
    CheckError(reference.status(), "LayOutReference");
    return false;
  }
  FUZZ_CHECK(reference->counts.size() == reference->layout.size(), "laid out ",
             reference->counts.size(), " counts in ", reference->layout.size(), " bins");
  for (size_t bin = 0; bin < reference->layout.size(); ++bin) {
    FUZZ_CHECK(!reference->layout.BinLabel(bin).empty(), "bin ", bin, " has no label");
  }
  absl::StatusOr<std::vector<double>> current = AlignToReference(*reference, *current_data);
  if (!current.ok()) {
    CheckError(current.status(), "AlignToReference");
    return false;
  }
  FUZZ_CHECK(current->size() == reference->layout.size(), "aligned ", current->size(),
             " counts to ", reference->layout.size(), " bins");
  absl::StatusOr<ReferenceProfile> profile = ReferenceProfile::Create(reference->counts, alpha);
  if (!profile.ok()) {
    CheckError(profile.status(), "ReferenceProfile::Create");
    return false;
  }
  absl::StatusOr<DriftMeasures> measures =
      ComputeDriftMeasures(*profile, *current, top, &reference->layout);
  if (!measures.ok()) {
    CheckError(measures.status(), "ComputeDriftMeasures");
    return false;
  }
  CheckMeasures(*measures, reference->layout.size(), top);
  return true;
}

// What `kldrift compare --gaussian` computes; true if it succeeds.
bool GaussianPipeline(const absl::StatusOr<GaussianData>& reference,
                      const absl::StatusOr<GaussianData>& current, bool with_reference) {
  if (!current.ok()) return false;
  if (with_reference && (!reference.ok() || reference->mean.size() != current->mean.size())) {
    return false;
  }
  const size_t dims = current->mean.size();
  const kernels::GaussianKlPair kl =
      with_reference
          ? kernels::DiagonalGaussianKl(current->mean.data(), current->var.data(),
                                        reference->mean.data(), reference->var.data(), dims)
          : kernels::DiagonalGaussianKlStandardNormal(current->mean.data(), current->var.data(),
                                                      dims);
  CheckDivergence(kl.forward, "gaussian kl_current_reference");
  CheckDivergence(kl.reverse, "gaussian kl_reference_current");
  return true;
}

void CheckGaussian(const GaussianData& g) {
  FUZZ_CHECK(!g.mean.empty() && g.mean.size() == g.var.size(), "dimensions");
  for (size_t i = 0; i < g.mean.size(); ++i) {
    FUZZ_CHECK(std::isfinite(g.mean[i]), "mean ", i);
    FUZZ_CHECK(std::isfinite(g.var[i]) && g.var[i] > 0, "var ", i);
  }
}

// The value and label lists of `kldrift ingest --values-file/--labels-file -`.
void CheckItems(const std::string& text) {
  std::istringstream in(text);
  absl::StatusOr<std::vector<std::string>> items = cli::ReadItems("-", in);
  FUZZ_CHECK(items.ok(), "ReadItems of a string: ", items.status().ToString());
  for (const std::string& item : *items) {
    FUZZ_CHECK(!item.empty(), "an empty item");
    FUZZ_CHECK(item.find('\n') == std::string::npos, "an item spanning lines");
    FUZZ_CHECK(item.front() != ' ' && item.back() != ' ', "an untrimmed item");
  }
  absl::StatusOr<std::vector<double>> values = cli::ParseValues("-", *items);
  if (!values.ok()) {
    CheckError(values.status(), "ParseValues");
    return;
  }
  FUZZ_CHECK(values->size() == items->size(), "ParseValues lost items");
}

void WriteFile(const std::filesystem::path& path, absl::string_view text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(text.data(), static_cast<std::streamsize>(text.size()));
  FUZZ_CHECK(out.good(), "cannot write ", path.string());
}

// Runs `kldrift compare` and checks its exit code against `expect_ok`.
void RunCompare(const std::vector<std::string>& args, bool expect_ok, bool json) {
  std::ostringstream out;
  std::ostringstream err;
  const int code = cli::RunCompare(args, out, err);
  const std::string command = absl::StrCat("kldrift compare ", absl::StrJoin(args, " "));
  FUZZ_CHECK(code == 0 || code == 2, command, " exited ", code);
  if (code != 0) {
    FUZZ_CHECK(!err.str().empty(), command, " failed silently");
  }
  FUZZ_CHECK((code == 0) == expect_ok, command, " exited ", code, " but the in-memory pipeline ",
             expect_ok ? "succeeded" : "failed", ": ", err.str());
  if (code != 0) return;
  FUZZ_CHECK(!out.str().empty(), command, " printed nothing");
  if (json) {
    google::protobuf::Struct parsed;
    const auto status = google::protobuf::util::JsonStringToMessage(out.str(), &parsed);
    FUZZ_CHECK(status.ok(), command, " printed invalid JSON (", status.ToString(), "):\n",
               out.str());
    FUZZ_CHECK(parsed.fields().contains("kl_current_reference"), command, ": ", out.str());
  }
}

void FuzzOne(absl::string_view input) {
  const size_t split = input.find('\0');
  const bool pair = split != absl::string_view::npos;
  const std::string reference_text(pair ? input.substr(0, split) : input);
  const std::string current_text(pair ? input.substr(split + 1) : input);

  absl::StatusOr<HistogramData> reference = ParseHistogram(reference_text);
  absl::StatusOr<HistogramData> current =
      pair ? ParseHistogram(current_text) : absl::StatusOr<HistogramData>(reference);
  for (const auto* parsed : {&reference, &current}) {
    if (parsed->ok()) {
      CheckHistogram(**parsed);
      CheckJsonRoundTrip(**parsed);
    } else {
      CheckError(parsed->status(), "ParseHistogram");
    }
  }
  absl::StatusOr<GaussianData> gaussian_reference = ParseGaussian(reference_text);
  absl::StatusOr<GaussianData> gaussian_current =
      pair ? ParseGaussian(current_text) : absl::StatusOr<GaussianData>(gaussian_reference);
  for (const auto* parsed : {&gaussian_reference, &gaussian_current}) {
    if (parsed->ok()) {
      CheckGaussian(**parsed);
    } else {
      CheckError(parsed->status(), "ParseGaussian");
    }
  }
  CheckItems(reference_text);
  if (pair) CheckItems(current_text);

  // Options for the whole-command runs, from the input's size so that they vary reproducibly.
  const bool json = input.size() % 2 == 1;
  const double alpha = input.size() % 3 == 0 ? 0.0 : kDefaultAlpha;
  const size_t top = input.size() % 5;
  const bool ok = ComparePipeline(reference, current, alpha, top);
  ComparePipeline(reference, current, alpha == 0 ? kDefaultAlpha : 0.0, 3);

  const std::string reference_path = (*temp_dir / "reference").string();
  const std::string current_path = (*temp_dir / "current").string();
  WriteFile(reference_path, reference_text);
  WriteFile(current_path, current_text);
  std::vector<std::string> args = {"--reference", reference_path,   "--current",
                                   current_path,  "--alpha",        alpha == 0 ? "0" : "0.5",
                                   "--top",       absl::StrCat(top)};
  if (json) args.push_back("--json");
  RunCompare(args, ok, json);

  const bool with_reference = pair;
  std::vector<std::string> gaussian_args = {"--gaussian", "--current", current_path};
  if (with_reference) {
    gaussian_args.push_back("--reference");
    gaussian_args.push_back(reference_path);
  }
  if (json) gaussian_args.push_back("--json");
  RunCompare(gaussian_args, GaussianPipeline(gaussian_reference, gaussian_current, with_reference),
             json);
}

void RemoveTempDir() {
  if (temp_dir == nullptr) return;
  std::error_code ignored;
  std::filesystem::remove_all(*temp_dir, ignored);
}

}  // namespace
}  // namespace kldrift

extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) {
  google::protobuf::SetLogHandler(nullptr);
  const char* tmp = std::getenv("TMPDIR");
  std::string pattern =
      absl::StrCat(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp", "/histogram_file_fuzzer.XXXXXX");
  if (mkdtemp(pattern.data()) == nullptr) {
    std::perror("histogram_file_fuzzer: mkdtemp");
    std::abort();
  }
  kldrift::temp_dir = new std::filesystem::path(pattern);
  std::atexit(kldrift::RemoveTempDir);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  kldrift::FuzzOne(absl::string_view(reinterpret_cast<const char*>(data), size));
  return 0;
}
