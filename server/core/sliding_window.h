// SlidingWindow: the last `length` of a stream's data, as a ring of sub-buckets of fixed-width
// vectors of doubles, each stored compactly (CompactSubBuckets).
//
// One class serves every stream kind because each keeps additive sufficient statistics:
// histogram counts (width K), Gaussian statistics (count, sums, sums of squares: width 1 + 2D) and
// policy estimator sums (width 7). Time is cut into sub-buckets of `length / sub_buckets`; the
// window holds the sub-bucket containing "now" and the sub_buckets - 1 before it, so it covers
// between (sub_buckets - 1) and sub_buckets sub-bucket lengths and slides one sub-bucket at a time.
// Totals are kept up to date on every Add and recomputed from the ring when sub-buckets expire,
// so integer counts stay exact however long the window runs.
//
// Memory: the totals and each sub-bucket at their encodings' widths (nothing for an empty one, a
// byte a bin for counts below 256), e.g. 67 * 4 + 67 * 12 * 2 B = 1.8 KiB for K = 67, totals below
// 2^32 and sub-buckets below 65536, where doubles took 13 * 67 * 8 B = 6.8 KiB.
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
#include "server/core/compact_sub_buckets.h"

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
  // The same, for a caller adding one delta to several windows. REQUIRES: summary ==
  // CompactSubBuckets::Summarize(delta).
  void Add(absl::Time event_time, absl::Span<const double> delta,
           const CompactSubBuckets::DeltaSummary& summary);
  // Asks the CPU to bring into cache what Add(event_time, ...) will touch (a hint; no effect on
  // the window). Lets a caller about to add to many windows overlap their cache misses.
  void PrefetchForAdd(absl::Time event_time) const;
  // Asks for the first line of the window's blocks: what PrefetchForAdd and Add read first.
  void PrefetchBlockStarts() const {
    totals_.PrefetchBlock(64);
    ring_.PrefetchBlock(64);
  }
  // A hint before an evaluation: asks the CPU to bring the totals and the ring's sub-bucket
  // encodings into cache (what advancing the window and reading its totals touch first).
  void PrefetchForEvaluate() const {
    totals_.PrefetchBlock(1024);
    ring_.PrefetchBlock(64);
  }

  // Sum of every live sub-bucket.
  std::vector<double> totals() const;
  // Writes totals() to `out` without allocating. REQUIRES: out.size() == width().
  void ReadTotals(absl::Span<double> out) const { totals_.Read(0, out); }
  // Whether every total is an integer below 2^32 (so any summation order gives the exact sum).
  bool totals_are_integers() const {
    return totals_.encoding(0) != CompactSubBuckets::Encoding::kDouble;
  }
  // Changes whenever totals() may have changed (an Add, or a sub-bucket with data expiring), so a
  // caller can tell that what it derived from the totals is still current.
  uint64_t generation() const { return generation_; }
  size_t width() const { return totals_.width(); }
  absl::Duration length() const { return length_; }
  absl::Duration sub_bucket_length() const { return step_; }
  int sub_buckets() const { return sub_buckets_; }

  // The live sub-buckets, oldest first, with their start times (for persistence and tests).
  struct SubBucket {
    absl::Time start;
    std::vector<double> values;
  };
  std::vector<SubBucket> LiveSubBuckets() const;

  // Index of the sub-bucket containing `t` (floor(t / sub_bucket_length) since the Unix epoch).
  int64_t SubBucketIndex(absl::Time t) const;
  // The values of the sub-bucket containing `t`. REQUIRES: Covers(t).
  std::vector<double> SubBucketValues(absl::Time t) const;
  // [head_start(), head_end()): the sub-bucket of "now" as of the last Advance(), when its bounds
  // are exact (whole-nanosecond sub-bucket lengths); otherwise both are InfinitePast(), an empty
  // range. Advance(t) for any t before head_end() changes nothing.
  absl::Time head_start() const { return head_start_; }
  absl::Time head_end() const { return head_end_; }
  // Start time of the sub-bucket containing `t` (how storage names sub-buckets).
  absl::Time SubBucketStart(absl::Time t) const {
    if (InHead(t)) return head_start_;
    return absl::UnixEpoch() + step_ * SubBucketIndex(t);
  }

 private:
  // SubBucketIndex's arithmetic, without its shortcuts.
  int64_t DivideTime(absl::Time t) const;
  int Slot(int64_t index) const {
    return static_cast<int>(((index % sub_buckets_) + sub_buckets_) % sub_buckets_);
  }
  void RecomputeTotals();
  // Makes `head` the sub-bucket of "now".
  void SetHead(int64_t head);
  // Whether `t` is in sub-bucket head_ (where ingest nearly always lands), known without a
  // division.
  bool InHead(absl::Time t) const { return t >= head_start_ && t < head_end_; }

  absl::Duration length_;
  absl::Duration step_;
  int sub_buckets_;
  int64_t step_nanos_;        // step_ in nanoseconds; 0 if not whole.
  int64_t head_ = INT64_MIN;  // Sub-bucket index of "now"; INT64_MIN before the first Advance().
  // [start, end) of sub-bucket head_ when step_nanos_ > 0 (so exact); else empty.
  absl::Time head_start_ = absl::InfinitePast();
  absl::Time head_end_ = absl::InfinitePast();
  CompactSubBuckets ring_;    // Slot = index mod sub_buckets_.
  CompactSubBuckets totals_;  // One "sub-bucket": the totals, as compact as the counts allow.
  uint64_t generation_ = 0;
};

}  // namespace kldrift

#endif  // KLDRIFT_SERVER_CORE_SLIDING_WINDOW_H_
