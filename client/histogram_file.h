// Reading histogram and Gaussian files for `kldrift compare`, and lining a current histogram up
// with a reference's frozen bins.
//
// Formats (detected from the content, not the file name):
//   JSON  {"counts": [...], "edges": [...]} | {"counts": [...], "categories": [...]} |
//         {"counts": [...]}  (see proto/kldrift/v1/histogram_file.proto for every rule)
//   CSV   one count per line; blank lines and lines starting with '#' are ignored, and a first
//         line that is not a number is taken as a header.
// Counts are non-negative integers up to 2^53 (the largest range a double holds exactly).
//
// Thread safety: pure functions.
#ifndef KLDRIFT_CLIENT_HISTOGRAM_FILE_H_
#define KLDRIFT_CLIENT_HISTOGRAM_FILE_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "server/core/bin_layout.h"

namespace kldrift {

// A histogram as written in a file, before it is laid out.
struct HistogramData {
  std::vector<double> counts;
  std::vector<double> edges;            // Numeric bins, if given.
  std::vector<std::string> categories;  // Categorical bins, if given.
};

// A reference histogram in its full bin layout (automatic buckets included).
struct LaidOutHistogram {
  BinLayout layout;
  std::vector<double> counts;  // layout.size() entries.
};

struct GaussianData {
  std::vector<double> mean;
  std::vector<double> var;
};

// Parses the text of a histogram file (JSON or CSV). Errors: INVALID_ARGUMENT naming the line,
// field or index at fault.
absl::StatusOr<HistogramData> ParseHistogram(absl::string_view text);

// Parses the text of a Gaussian file {"mean": [...], "var": [...]}.
absl::StatusOr<GaussianData> ParseGaussian(absl::string_view text);

// Reads a whole file; NOT_FOUND if it cannot be opened.
absl::StatusOr<std::string> ReadFile(const std::string& path);

// Builds the reference's frozen layout from its file data and expands its counts to that layout.
absl::StatusOr<LaidOutHistogram> LayOutReference(HistogramData data);

// Expresses `current` in the reference's layout:
//   - bare counts are positional: the reference's interior bin count, or its full layout size;
//   - numeric current files must use exactly the reference's edges;
//   - categorical current files are matched by label, and labels the reference does not know are
//     counted in its unseen bucket.
absl::StatusOr<std::vector<double>> AlignToReference(const LaidOutHistogram& reference,
                                                     const HistogramData& current);

}  // namespace kldrift

#endif  // KLDRIFT_CLIENT_HISTOGRAM_FILE_H_
