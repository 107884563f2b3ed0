// BinLayout: the frozen buckets a reference defines, so that every observation
// lands somewhere.
//
// Bins are fixed when a reference is registered and never recomputed per
// comparison (recomputing bins per comparison, as several Python drift tools
// do, makes two reports incomparable).
//   numeric      E strictly increasing finite edges -> K = E + 2 buckets:
//                [underflow, [e0,e1), ..., [e(E-2),e(E-1)), overflow, NaN] (see
//                kernels/binning.h)
//   categorical  C distinct labels -> K = C + 1 buckets: the labels in order,
//   then "unseen" pre-binned   K buckets whose meaning the client defines ("bin
//   0" ... "bin K-1")
//
// Layouts are interned: building one equal to a layout that is alive (same kind and edges,
// categories or size, up to kMaxInternedBins buckets) shares its data, so a fleet of streams
// binned alike holds its edges, category index and bin labels once. A BinLayout is a handle to
// that immutable data, cheap to copy.
//
// Thread safety: immutable after construction; safe to share between threads (the intern table
// and the lazily formatted labels are synchronised internally).
//
// Example:
//   absl::StatusOr<BinLayout> layout = BinLayout::Numeric({0.0, 0.5, 1.0});
//   std::vector<double> counts(layout->size());
//   layout->AddValues(values, absl::MakeSpan(counts));
#ifndef KLDRIFT_SERVER_CORE_BIN_LAYOUT_H_
#define KLDRIFT_SERVER_CORE_BIN_LAYOUT_H_

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/call_once.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace kldrift {

// Label of the bucket that collects categories absent from the reference.
inline constexpr absl::string_view kUnseenCategoryLabel = "<unseen>";

class BinLayout {
 public:
  enum class Kind { kNumeric, kCategorical, kPreBinned };

  // Fails with INVALID_ARGUMENT unless there are >= 2 finite, strictly
  // increasing edges.
  static absl::StatusOr<BinLayout> Numeric(std::vector<double> edges);
  // Fails with INVALID_ARGUMENT on no labels, an empty label or a duplicate.
  static absl::StatusOr<BinLayout> Categorical(std::vector<std::string> categories);
  // Fails with INVALID_ARGUMENT when bins == 0.
  static absl::StatusOr<BinLayout> PreBinned(size_t bins);

  Kind kind() const { return data_->kind; }
  // K: the number of buckets, including the automatic underflow/overflow/NaN or
  // unseen ones.
  size_t size() const { return data_->size; }
  const std::vector<double>& edges() const { return data_->edges; }
  const std::vector<std::string>& categories() const { return data_->categories; }

  // A human-readable name for bucket `bin`, e.g. "[0.5, 1)", "< 0", ">= 1",
  // "NaN", "cat", "bin 3". REQUIRES: bin < size().
  std::string BinLabel(size_t bin) const;
  // BinLabel(bin), formatted once per interned layout and kept (valid as long as any copy of this
  // layout lives); layouts too large to intern format it into `scratch`. REQUIRES: bin < size().
  absl::string_view CachedBinLabel(size_t bin, std::string& scratch) const;

  // Numeric layouts: adds 1 to counts[bucket of v] for every v in values (NaN
  // and +-inf included). REQUIRES: kind() == kNumeric, counts.size() == size().
  void AddValues(absl::Span<const double> values, absl::Span<double> counts) const;

  // Categorical layouts: the bucket of `label`, or the unseen bucket for an
  // unknown label. REQUIRES: kind() == kCategorical.
  size_t CategoryBin(absl::string_view label) const;

  // Whether two layouts share their data (both interned and equal).
  bool SharesDataWith(const BinLayout& other) const { return data_ == other.data_; }

  // Layouts of up to this many buckets are interned (and their labels cached once formatted).
  static constexpr size_t kMaxInternedBins = 4096;

 private:
  // What a layout is; immutable once interned but for the labels, formatted on first use.
  struct Data {
    Kind kind = Kind::kPreBinned;
    size_t size = 0;
    std::vector<double> edges;
    // edges padded with NaN for kernels::BinIndices; empty up to kPadOnEachCallEdges edges.
    std::vector<double> search_edges;
    std::vector<std::string> categories;
    absl::flat_hash_map<std::string, size_t> category_bins;
    bool interned = false;
    mutable absl::once_flag labels_once;
    mutable std::vector<std::string> labels;  // BinLabel of every bucket, once formatted.
  };
  // Layouts of up to this many edges pad them for kernels::BinIndices on each AddValues call (a
  // few dozen nanoseconds) rather than keep a padded copy of up to twice their size.
  static constexpr size_t kPadOnEachCallEdges = 4096;

  explicit BinLayout(std::shared_ptr<const Data> data) : data_(std::move(data)) {}
  // The interned data equal to `data` if such is alive, else `data` (entered when small enough).
  static std::shared_ptr<const Data> Intern(std::unique_ptr<Data> data);

  std::shared_ptr<const Data> data_;
};

}  // namespace kldrift

#endif  // KLDRIFT_SERVER_CORE_BIN_LAYOUT_H_
