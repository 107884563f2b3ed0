// CompactSubBuckets: a window's ring of sub-buckets (fixed-width vectors of doubles), each kept in
// the narrowest encoding that holds its values exactly, all in one heap block.
//
// Histogram sub-buckets hold non-negative integer counts that are mostly small: a 25 s sub-bucket
// of a stream seeing 40 observations a second has bins of tens, a 2 h one of tens of thousands.
// Each sub-bucket has its own encoding, chosen from its values:
//   kEmpty   every value is zero; no storage at all (a sub-bucket nothing was added to);
//   kUint8, kUint16, kUint32   every value an integer in the encoding's range;
//   kDouble  anything else (fractional counts from probability vectors, Gaussian sums, counts of
//            2^32 and more), stored as the doubles themselves.
// Values are added in double arithmetic exactly as a plain double vector would add them and then
// re-encoded, widening the sub-bucket when they no longer fit (never narrowing until Clear). An
// integer encoding is exact by construction and a double holds what the double vector would, so
// Read() returns bit for bit what a ring of doubles would hold.
//
// Memory: one block of sub_buckets tier bytes plus each sub-bucket's values at its encoding's
// width, e.g. 67 * (12 * 1 + 12 * 2) bytes for a ring of six uint8 and six uint16 sub-buckets of 67
// bins, where doubles take 67 * 12 * 8.
//
// Thread safety: thread-compatible.
#ifndef KLDRIFT_SERVER_CORE_COMPACT_SUB_BUCKETS_H_
#define KLDRIFT_SERVER_CORE_COMPACT_SUB_BUCKETS_H_

#include <cstddef>
#include <cstdint>
#include <memory>

#include "absl/types/span.h"

namespace kldrift {

class CompactSubBuckets {
 public:
  enum class Encoding : uint8_t { kEmpty = 0, kUint8 = 1, kUint16 = 2, kUint32 = 3, kDouble = 4 };

  // REQUIRES: sub_buckets >= 1, width >= 1.
  CompactSubBuckets(int sub_buckets, size_t width);
  CompactSubBuckets(CompactSubBuckets&&) noexcept = default;
  CompactSubBuckets& operator=(CompactSubBuckets&&) noexcept = default;

  int sub_buckets() const { return sub_buckets_; }
  size_t width() const { return width_; }

  // values(slot) += delta, in double arithmetic. REQUIRES: delta.size() == width(), slot in range.
  void Add(int slot, absl::Span<const double> delta);

  // What Add() learns from scanning a delta, for a caller adding one delta to several rings (a
  // window's sub-bucket and totals, a stream's windows) to compute once.
  struct DeltaSummary {
    // Every value is an integer in [0, 2^32): added to integer sub-buckets in place when they hold
    // the sums (the common case), rather than decoded, added and re-encoded.
    bool counts = false;
    double max_count = 0;  // The largest value, when `counts`.
  };
  static DeltaSummary Summarize(absl::Span<const double> delta);
  // Add(slot, delta). REQUIRES: summary == Summarize(delta).
  void Add(int slot, absl::Span<const double> delta, const DeltaSummary& summary);
  // Writes slot's values to `out`. REQUIRES: out.size() == width().
  void Read(int slot, absl::Span<double> out) const;
  // sums += values(slot), in double arithmetic. REQUIRES: sums.size() == width().
  void AddTo(int slot, absl::Span<double> sums) const;
  // Whether every value of `slot` is zero.
  bool AllZero(int slot) const;
  // Zeroes `slot` and releases its storage.
  void Clear(int slot);
  // A hint: asks the CPU to bring slot's values (and the encodings before them) into cache.
  void Prefetch(int slot) const;
  // A hint: asks the CPU to bring the first `max_bytes` of the block into cache, without reading
  // it (Prefetch reads the encodings to find a slot, and so waits for them).
  void PrefetchBlock(size_t max_bytes) const;

  Encoding encoding(int slot) const {
    return block_ == nullptr ? Encoding::kEmpty : static_cast<Encoding>(block_[slot]);
  }
  // Bytes of the heap block (0 while every sub-bucket is empty).
  size_t heap_bytes() const { return block_bytes_; }

 private:
  static size_t BytesPerValue(Encoding e);
  size_t Offset(int slot) const;
  // Re-encodes `slot` as `encoding` with `values`, moving the other sub-buckets as needed.
  void Store(int slot, Encoding encoding, absl::Span<const double> values);

  int sub_buckets_;
  size_t width_;
  // sub_buckets_ encoding bytes, then each sub-bucket's values in slot order; null when all empty.
  std::unique_ptr<uint8_t[]> block_;
  size_t block_bytes_ = 0;
};

}  // namespace kldrift

#endif  // KLDRIFT_SERVER_CORE_COMPACT_SUB_BUCKETS_H_
