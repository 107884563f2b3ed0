// Reference: one immutable, versioned reference distribution of a stream, and how to build it.
//
// Histogram kinds (numeric, categorical, pre-binned) carry a frozen BinLayout, counts in that
// layout and a ReferenceProfile (q, log q). Gaussian references carry per-dimension mean and
// variance. Paired-log-prob references carry nothing but their policy: production sends both
// policies' log-probs. Every reference has a fully resolved AlertPolicy.
//
// Thread safety: Reference is immutable once built and shared as shared_ptr<const Reference>.
#ifndef KLDRIFT_SERVER_CORE_REFERENCE_H_
#define KLDRIFT_SERVER_CORE_REFERENCE_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "server/core/alert_policy.h"
#include "server/core/bin_layout.h"
#include "server/core/drift_measures.h"
#include "server/core/stream_key.h"

namespace kldrift {

enum class ReferenceKind { kNumeric, kCategorical, kPreBinned, kGaussian, kPairedLogProbs };

absl::string_view ReferenceKindName(ReferenceKind kind);

struct GaussianParams {
  std::vector<double> mean;
  std::vector<double> var;
};

// Where a re-baselined reference takes its counts from.
struct WindowSource {
  std::optional<StreamKey> stream;  // Unset: the stream being written.
  absl::Duration window;
};

// What PutReference is given, before validation.
struct ReferenceSpec {
  StreamKey stream;
  ReferenceKind kind = ReferenceKind::kPreBinned;
  std::vector<double> edges;            // kNumeric
  std::vector<std::string> categories;  // kCategorical
  size_t bins = 0;                      // kPreBinned
  GaussianParams gaussian;              // kGaussian
  // Histogram data, exactly one of these for histogram kinds:
  std::optional<std::vector<double>> counts;
  std::optional<std::vector<double>> values;
  std::optional<std::vector<std::string>> labels;
  std::optional<WindowSource> from_window;
  AlertPolicy policy;
};

// Limits on what a reference may hold (server flags; see kldriftd --help).
struct ReferenceLimits {
  size_t max_bins = size_t{1} << 20;
  size_t max_dimensions = 65536;
};

struct Reference {
  StreamKey stream;
  uint64_t version = 0;
  ReferenceKind kind = ReferenceKind::kPreBinned;
  std::optional<BinLayout> layout;  // Histogram kinds; shared with every equal layout (interned).
  std::shared_ptr<const ReferenceProfile> profile;  // Histogram kinds.
  // Histogram kinds: the counts in the full layout, those of `profile` (one copy per reference).
  absl::Span<const double> counts;
  GaussianParams gaussian;  // kGaussian.
  AlertPolicy policy;
  absl::Time created_at;

  bool is_histogram() const { return layout.has_value(); }
  // Width of the vectors a window of this stream keeps (see SlidingWindow).
  size_t window_width() const;
  // Whether windows kept for `other` can be kept for this reference (same kind and bins).
  bool SameBins(const Reference& other) const;
};

// Width of Gaussian window vectors (count, sums, sums of squares) and policy window vectors.
inline constexpr size_t kPolicyWindowWidth = 7;

// Validates `spec` and builds version `version`. `window_counts` supplies the counts when
// spec.from_window is set (the caller reads them from the source window). Errors:
// INVALID_ARGUMENT naming the field at fault; RESOURCE_EXHAUSTED past `limits`.
absl::StatusOr<std::shared_ptr<const Reference>> BuildReference(
    const ReferenceSpec& spec, uint64_t version, absl::Time now, const ReferenceLimits& limits,
    const std::vector<double>* window_counts = nullptr);

// The layout a histogram spec describes (kind + edges/categories/bins), validated.
absl::StatusOr<BinLayout> LayoutForSpec(const ReferenceSpec& spec, const ReferenceLimits& limits);

}  // namespace kldrift

#endif  // KLDRIFT_SERVER_CORE_REFERENCE_H_
