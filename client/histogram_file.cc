#include "client/histogram_file.h"

#include <cmath>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "google/protobuf/util/json_util.h"
#include "kldrift/v1/histogram_file.pb.h"

namespace kldrift {
namespace {

// 2^53: every integer up to it is exact in a double.
constexpr double kMaxCount = 9007199254740992.0;

absl::Status CheckCount(double count, absl::string_view where) {
  if (!std::isfinite(count) || count < 0 || count != std::floor(count) || count > kMaxCount) {
    return absl::InvalidArgumentError(absl::StrCat(
        where, ": ", count, " is not a valid count; counts are integers from 0 to 2^53"));
  }
  return absl::OkStatus();
}

bool LooksLikeJson(absl::string_view text) {
  const absl::string_view trimmed = absl::StripLeadingAsciiWhitespace(text);
  return !trimmed.empty() && trimmed.front() == '{';
}

// Parses JSON into a proto, turning protobuf's status into ours with a hint about the format.
template <typename Message>
absl::Status ParseJson(absl::string_view text, Message* message, absl::string_view format) {
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = false;
  const auto status =
      google::protobuf::util::JsonStringToMessage(std::string(text), message, options);
  if (!status.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid JSON (expected ", format, "): ", std::string(status.message())));
  }
  return absl::OkStatus();
}

absl::StatusOr<HistogramData> ParseCsv(absl::string_view text) {
  HistogramData data;
  int line_number = 0;
  bool first_content_line = true;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_number;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line.front() == '#') continue;
    // Tolerate a trailing comma ("12,") as spreadsheet exports write it.
    if (line.back() == ',') line.remove_suffix(1);
    double count;
    if (!absl::SimpleAtod(line, &count)) {
      if (first_content_line) {  // A header such as "count".
        first_content_line = false;
        continue;
      }
      return absl::InvalidArgumentError(
          absl::StrCat("line ", line_number, ": \"", line,
                       "\" is not a number; a CSV histogram has one count per line"));
    }
    first_content_line = false;
    if (absl::Status status = CheckCount(count, absl::StrCat("line ", line_number)); !status.ok()) {
      return status;
    }
    data.counts.push_back(count);
  }
  if (data.counts.empty()) {
    return absl::InvalidArgumentError("the file holds no counts");
  }
  return data;
}

}  // namespace

absl::StatusOr<HistogramData> ParseHistogram(absl::string_view text) {
  if (!LooksLikeJson(text)) return ParseCsv(text);
  kldrift::v1::HistogramFile file;
  if (absl::Status status =
          ParseJson(text, &file, R"({"counts": [...], "edges" or "categories": [...]})");
      !status.ok()) {
    return status;
  }
  if (file.counts().empty()) {
    return absl::InvalidArgumentError("\"counts\" is missing or empty");
  }
  if (!file.edges().empty() && !file.categories().empty()) {
    return absl::InvalidArgumentError(
        "the file has both \"edges\" and \"categories\"; a histogram is numeric or categorical");
  }
  HistogramData data;
  for (int i = 0; i < file.counts_size(); ++i) {
    if (absl::Status status = CheckCount(file.counts(i), absl::StrCat("counts[", i, "]"));
        !status.ok()) {
      return status;
    }
  }
  data.counts.assign(file.counts().begin(), file.counts().end());
  data.edges.assign(file.edges().begin(), file.edges().end());
  data.categories.assign(file.categories().begin(), file.categories().end());
  return data;
}

absl::StatusOr<GaussianData> ParseGaussian(absl::string_view text) {
  kldrift::v1::GaussianFile file;
  if (absl::Status status = ParseJson(text, &file, R"({"mean": [...], "var": [...]})");
      !status.ok()) {
    return status;
  }
  if (file.mean().empty()) {
    return absl::InvalidArgumentError("\"mean\" is missing or empty");
  }
  if (file.mean_size() != file.var_size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "\"mean\" has ", file.mean_size(), " dimensions but \"var\" has ", file.var_size()));
  }
  for (int i = 0; i < file.mean_size(); ++i) {
    if (!std::isfinite(file.mean(i))) {
      return absl::InvalidArgumentError(
          absl::StrCat("mean[", i, "] = ", file.mean(i), " is not finite"));
    }
    if (!std::isfinite(file.var(i)) || !(file.var(i) > 0)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "var[", i, "] = ", file.var(i), " is not a variance; variances must be finite and > 0"));
    }
  }
  return GaussianData{{file.mean().begin(), file.mean().end()},
                      {file.var().begin(), file.var().end()}};
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(absl::StrCat("cannot open ", path));
  }
  std::ostringstream contents;
  contents << in.rdbuf();
  return contents.str();
}

namespace {

// Counts for a numeric layout from either the interior bins only or the full layout.
absl::StatusOr<std::vector<double>> ExpandNumericCounts(const std::vector<double>& counts,
                                                        size_t num_edges) {
  if (counts.size() == num_edges + 2) return counts;
  if (counts.size() == num_edges - 1) {
    std::vector<double> full(num_edges + 2, 0.0);
    std::copy(counts.begin(), counts.end(), full.begin() + 1);
    return full;
  }
  return absl::InvalidArgumentError(
      absl::StrCat(num_edges, " edges make ", num_edges - 1, " bins, but there are ", counts.size(),
                   " counts; give ", num_edges - 1, " counts (one per bin) or ", num_edges + 2,
                   " (underflow, the bins, overflow, NaN)"));
}

absl::StatusOr<std::vector<double>> ExpandCategoricalCounts(const std::vector<double>& counts,
                                                            size_t num_categories) {
  if (counts.size() == num_categories + 1) return counts;
  if (counts.size() == num_categories) {
    std::vector<double> full = counts;
    full.push_back(0.0);
    return full;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      num_categories, " categories need ", num_categories, " counts (or ", num_categories + 1,
      " with the unseen-category count last), but there are ", counts.size()));
}

}  // namespace

absl::StatusOr<LaidOutHistogram> LayOutReference(HistogramData data) {
  if (!data.edges.empty()) {
    const size_t num_edges = data.edges.size();
    absl::StatusOr<BinLayout> layout = BinLayout::Numeric(std::move(data.edges));
    if (!layout.ok()) return layout.status();
    absl::StatusOr<std::vector<double>> counts = ExpandNumericCounts(data.counts, num_edges);
    if (!counts.ok()) return counts.status();
    return LaidOutHistogram{*std::move(layout), *std::move(counts)};
  }
  if (!data.categories.empty()) {
    const size_t num_categories = data.categories.size();
    absl::StatusOr<BinLayout> layout = BinLayout::Categorical(std::move(data.categories));
    if (!layout.ok()) return layout.status();
    absl::StatusOr<std::vector<double>> counts =
        ExpandCategoricalCounts(data.counts, num_categories);
    if (!counts.ok()) return counts.status();
    return LaidOutHistogram{*std::move(layout), *std::move(counts)};
  }
  absl::StatusOr<BinLayout> layout = BinLayout::PreBinned(data.counts.size());
  if (!layout.ok()) return layout.status();
  return LaidOutHistogram{*std::move(layout), std::move(data.counts)};
}

absl::StatusOr<std::vector<double>> AlignToReference(const LaidOutHistogram& reference,
                                                     const HistogramData& current) {
  const BinLayout& layout = reference.layout;
  if (!current.edges.empty()) {
    if (layout.kind() != BinLayout::Kind::kNumeric) {
      return absl::InvalidArgumentError(
          "the current histogram has numeric edges but the reference is not numeric");
    }
    if (current.edges.size() != layout.edges().size()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the current histogram has ", current.edges.size(), " edges but the reference has ",
          layout.edges().size(), "; bin both with the reference's frozen edges"));
    }
    for (size_t i = 0; i < current.edges.size(); ++i) {
      if (current.edges[i] != layout.edges()[i]) {
        return absl::InvalidArgumentError(absl::StrCat(
            "edges[", i, "] is ", current.edges[i], " in the current histogram but ",
            layout.edges()[i], " in the reference; bin both with the reference's frozen edges"));
      }
    }
    return ExpandNumericCounts(current.counts, current.edges.size());
  }
  if (!current.categories.empty()) {
    if (layout.kind() != BinLayout::Kind::kCategorical) {
      return absl::InvalidArgumentError(
          "the current histogram has categories but the reference is not categorical");
    }
    if (current.counts.size() != current.categories.size() &&
        current.counts.size() != current.categories.size() + 1) {
      return absl::InvalidArgumentError(absl::StrCat("the current histogram has ",
                                                     current.categories.size(), " categories but ",
                                                     current.counts.size(), " counts"));
    }
    std::vector<double> aligned(layout.size(), 0.0);
    absl::flat_hash_map<absl::string_view, size_t> seen;
    for (size_t i = 0; i < current.categories.size(); ++i) {
      auto [it, inserted] = seen.try_emplace(current.categories[i], i);
      if (!inserted) {
        return absl::InvalidArgumentError(absl::StrCat(
            "category \"", current.categories[i], "\" appears twice in the current histogram",
            " (positions ", it->second, " and ", i, ")"));
      }
      aligned[layout.CategoryBin(current.categories[i])] += current.counts[i];
    }
    if (current.counts.size() == current.categories.size() + 1) {
      aligned.back() += current.counts.back();
    }
    return aligned;
  }
  // Bare counts: positional.
  const size_t k = layout.size();
  if (current.counts.size() == k) return current.counts;
  if (layout.kind() == BinLayout::Kind::kNumeric) {
    return ExpandNumericCounts(current.counts, layout.edges().size());
  }
  if (layout.kind() == BinLayout::Kind::kCategorical) {
    return ExpandCategoricalCounts(current.counts, layout.categories().size());
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "the current histogram has ", current.counts.size(), " bins but the reference has ", k));
}

}  // namespace kldrift
