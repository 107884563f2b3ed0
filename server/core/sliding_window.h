// SlidingWindow: the last `length` of a stream's data, as a ring of sub-buckets of fixed-width
// vectors of doubles.
//
// One class serves every stream kind because each keeps additive sufficient statistics:
// histogram counts (width K), Gaussian statistics (count, sums, sums of squares: width 1 + 2D) and
// policy estimator sums (width 7). Time is cut into sub-buckets of `length / sub_buckets`; the
// window holds the sub-bucket containing "now" and the sub_buckets - 1 before it, so it covers
// between (sub_buckets - 1) and sub_buckets sub-bucket lengths and slides one sub-bucket at a time.
// Totals are kept up to date on every Add and recomputed from the ring when sub-buckets expire,
// so integer counts stay exact however long the window runs.
//
// Memory: (sub_buckets + 1) * width doubles, e.g. 13 * 64 * 8 B = 6.5 KiB for K = 64.
//
// Thread safety: thread-compatible; the engine holds the stream's lock.
#ifndef KLDRIFT_SERVER_CORE_SLIDING_WINDOW_H_
#define KLDRIFT_SERVER_CORE_SLIDING_WINDOW_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <vector>

#include "absl/time/time.h"
#include "absl/types/span.h"

namespace kldrift {

class SlidingWindow {
 public:
  // REQUIRES: length > 0, sub_buckets >= 2, width >= 1, length divisible into whole nanoseconds.
  SlidingWindow(absl::Duration length, int sub_buckets, size_t width);

  // Called with each expired sub-bucket's contents, before it is cleared (used to keep derived
  // state such as IncrementalKl in step).
  using ExpireCallback = std::function<void(absl::Span<const double> expired)>;

  // Moves the window's end to `now`, expiring sub-buckets that fall out of it.
  void Advance(absl::Time now, const ExpireCallback& on_expire = nullptr);

  // Whether an observation at `event_time` falls inside the window ending at the last Advance().
  bool Covers(absl::Time event_time) const;

  // Adds `delta` to the sub-bucket of `event_time`. REQUIRES: Covers(event_time) and
  // delta.size() == width(). Call Advance() first so "now" is current.
  void Add(absl::Time event_time, absl::Span<const double> delta);

  // Sum of every live sub-bucket.
  absl::Span<const double> totals() const { return totals_; }
  size_t width() const { return totals_.size(); }
  absl::Duration length() const { return length_; }
  absl::Duration sub_bucket_length() const { return step_; }
  int sub_buckets() const { return sub_buckets_; }

  // The live sub-buckets, oldest first, with their start times (for persistence and tests).
  struct SubBucket {
    absl::Time start;
    absl::Span<const double> values;
  };
  std::vector<SubBucket> LiveSubBuckets() const;

  // Index of the sub-bucket containing `t` (floor(t / sub_bucket_length) since the Unix epoch).
  int64_t SubBucketIndex(absl::Time t) const;
  // The values of the sub-bucket containing `t`. REQUIRES: Covers(t).
  absl::Span<const double> SubBucketValues(absl::Time t) const {
    const int64_t slot = ((SubBucketIndex(t) % sub_buckets_) + sub_buckets_) % sub_buckets_;
    return absl::MakeConstSpan(ring_).subspan(static_cast<size_t>(slot) * width(), width());
  }
  // Start time of the sub-bucket containing `t` (how storage names sub-buckets).
  absl::Time SubBucketStart(absl::Time t) const {
    return absl::UnixEpoch() + step_ * SubBucketIndex(t);
  }

 private:
  absl::Span<double> Slot(int64_t index);
  void RecomputeTotals();

  absl::Duration length_;
  absl::Duration step_;
  int sub_buckets_;
  int64_t head_ = INT64_MIN;  // Sub-bucket index of "now"; INT64_MIN before the first Advance().
  std::vector<double> ring_;  // sub_buckets_ * width, slot = index mod sub_buckets_.
  std::vector<double> totals_;
};

}  // namespace kldrift

#endif  // KLDRIFT_SERVER_CORE_SLIDING_WINDOW_H_
