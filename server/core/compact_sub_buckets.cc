#include "server/core/compact_sub_buckets.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <vector>

#include "server/core/cpu_dispatch.h"
#include "server/core/prefetch.h"

namespace kldrift {
namespace {

using Encoding = CompactSubBuckets::Encoding;

// The narrowest encoding that holds every value exactly.
Encoding NarrowestEncoding(absl::Span<const double> values) {
  constexpr double kMaxUint32 = 0xFFFFFFFFu;
  double max = 0;
  for (double v : values) {
    // NaN fails the first test, infinities and values past 2^32 - 1 (which only a double holds
    // anyway) the second; below that, a cast tells integers from fractions (no floor() call).
    if (!(v >= 0) || v > kMaxUint32 || static_cast<double>(static_cast<uint32_t>(v)) != v) {
      return Encoding::kDouble;
    }
    max = std::max(max, v);
  }
  if (max == 0) return Encoding::kEmpty;
  if (max <= 0xFF) return Encoding::kUint8;
  if (max <= 0xFFFF) return Encoding::kUint16;
  if (max <= 0xFFFFFFFFu) return Encoding::kUint32;
  return Encoding::kDouble;
}

template <typename T>
void DecodeAs(const uint8_t* data, absl::Span<double> out) {
  for (size_t i = 0; i < out.size(); ++i) {
    T v;
    std::memcpy(&v, data + i * sizeof(T), sizeof(T));
    out[i] = static_cast<double>(v);
  }
}

template <typename T>
void AccumulateAs(const uint8_t* data, absl::Span<double> sums) {
  for (size_t i = 0; i < sums.size(); ++i) {
    T v;
    std::memcpy(&v, data + i * sizeof(T), sizeof(T));
    sums[i] += static_cast<double>(v);
  }
}

template <typename T>
void EncodeAs(absl::Span<const double> values, uint8_t* data) {
  for (size_t i = 0; i < values.size(); ++i) {
    const T v = static_cast<T>(values[i]);
    std::memcpy(data + i * sizeof(T), &v, sizeof(T));
  }
}

// Calls f(T{}) with the value type T of encoding `e`. REQUIRES: e != kEmpty.
template <typename F>
void WithValueType(Encoding e, F&& f) {
  switch (e) {
    case Encoding::kUint8:
      return f(uint8_t{});
    case Encoding::kUint16:
      return f(uint16_t{});
    case Encoding::kUint32:
      return f(uint32_t{});
    case Encoding::kEmpty:
    case Encoding::kDouble:
      return f(double{});
  }
}

// values += delta in place, when the sums are integers T holds: `delta` is counts (DeltaSummary)
// and the largest value plus the largest count fits T. The slot then keeps its encoding (it never
// narrows) and holds what re-encoding the sums would give. Returns false, changing nothing,
// otherwise. Both loops are branch-free (the compiler vectorizes them).
template <typename T>
inline __attribute__((always_inline)) bool AddCountsInPlace(uint8_t* data, const double* delta,
                                                            size_t width, double max_delta) {
  T max_value = 0;
  for (size_t i = 0; i < width; ++i) {
    T v;
    std::memcpy(&v, data + i * sizeof(T), sizeof(T));
    max_value = std::max(max_value, v);
  }
  if (static_cast<double>(max_value) + max_delta > std::numeric_limits<T>::max()) return false;
  for (size_t i = 0; i < width; ++i) {
    T v;
    std::memcpy(&v, data + i * sizeof(T), sizeof(T));
    v = static_cast<T>(static_cast<double>(v) + delta[i]);
    std::memcpy(data + i * sizeof(T), &v, sizeof(T));
  }
  return true;
}

// AddCountsInPlace for each integer encoding, compiled for AVX2 too (chosen at load time): the
// conversions between narrow integers and doubles are several times the instructions in SSE2.
#define KLDRIFT_ADD_COUNTS(T, name)                                                      \
  KLDRIFT_TARGET_CLONES_AVX2 bool name(uint8_t* data, const double* delta, size_t width, \
                                       double max_delta) {                               \
    return AddCountsInPlace<T>(data, delta, width, max_delta);                           \
  }
KLDRIFT_ADD_COUNTS(uint8_t, AddCountsInPlace8)
KLDRIFT_ADD_COUNTS(uint16_t, AddCountsInPlace16)
KLDRIFT_ADD_COUNTS(uint32_t, AddCountsInPlace32)
#undef KLDRIFT_ADD_COUNTS

// Scratch for Add(): one sub-bucket's values as doubles.
std::vector<double>& Scratch(size_t width) {
  thread_local std::vector<double> scratch;
  scratch.resize(width);
  return scratch;
}

}  // namespace

CompactSubBuckets::CompactSubBuckets(int sub_buckets, size_t width)
    : sub_buckets_(sub_buckets), width_(width) {}

size_t CompactSubBuckets::BytesPerValue(Encoding e) {
  // Indexed by Encoding (Offset() calls this for every slot before the one it wants).
  constexpr uint8_t kBytes[] = {0, sizeof(uint8_t), sizeof(uint16_t), sizeof(uint32_t),
                                sizeof(double)};
  return kBytes[static_cast<uint8_t>(e)];
}

size_t CompactSubBuckets::Offset(int slot) const {
  size_t offset = static_cast<size_t>(sub_buckets_);
  for (int s = 0; s < slot; ++s) offset += BytesPerValue(encoding(s)) * width_;
  return offset;
}

void CompactSubBuckets::Read(int slot, absl::Span<double> out) const {
  const Encoding e = encoding(slot);
  if (e == Encoding::kEmpty) {
    std::fill(out.begin(), out.end(), 0.0);
    return;
  }
  const uint8_t* data = block_.get() + Offset(slot);
  WithValueType(e, [&](auto type) { DecodeAs<decltype(type)>(data, out); });
}

void CompactSubBuckets::AddTo(int slot, absl::Span<double> sums) const {
  const Encoding e = encoding(slot);
  if (e == Encoding::kEmpty) return;  // x + 0.0 == x.
  const uint8_t* data = block_.get() + Offset(slot);
  WithValueType(e, [&](auto type) { AccumulateAs<decltype(type)>(data, sums); });
}

bool CompactSubBuckets::AllZero(int slot) const {
  const Encoding e = encoding(slot);
  if (e == Encoding::kEmpty) return true;
  const size_t bytes = BytesPerValue(e) * width_;
  const uint8_t* data = block_.get() + Offset(slot);
  if (e != Encoding::kDouble) {
    return std::all_of(data, data + bytes, [](uint8_t b) { return b == 0; });
  }
  std::vector<double>& values = Scratch(width_);
  Read(slot, absl::MakeSpan(values));
  return std::all_of(values.begin(), values.end(), [](double v) { return v == 0; });
}

CompactSubBuckets::DeltaSummary CompactSubBuckets::Summarize(absl::Span<const double> delta) {
  constexpr double kMaxUint32 = 0xFFFFFFFFu;
  DeltaSummary summary;
  for (double v : delta) {
    // NaN fails the first test; inside the range the cast is exact for integers (no floor() call).
    if (!(v >= 0 && v <= kMaxUint32) || static_cast<double>(static_cast<uint32_t>(v)) != v) {
      return DeltaSummary{};
    }
    summary.max_count = std::max(summary.max_count, v);
  }
  summary.counts = true;
  return summary;
}

void CompactSubBuckets::Add(int slot, absl::Span<const double> delta) {
  Add(slot, delta, Summarize(delta));
}

void CompactSubBuckets::Add(int slot, absl::Span<const double> delta, const DeltaSummary& summary) {
  const Encoding current = encoding(slot);
  if (summary.counts && current != Encoding::kEmpty && current != Encoding::kDouble) {
    // The common case (counts added to counts that still fit): in place, no decode and re-encode.
    uint8_t* data = block_.get() + Offset(slot);
    const bool added = current == Encoding::kUint8
                           ? AddCountsInPlace8(data, delta.data(), width_, summary.max_count)
                       : current == Encoding::kUint16
                           ? AddCountsInPlace16(data, delta.data(), width_, summary.max_count)
                           : AddCountsInPlace32(data, delta.data(), width_, summary.max_count);
    if (added) return;
  }
  std::vector<double>& values = Scratch(width_);
  Read(slot, absl::MakeSpan(values));
  for (size_t i = 0; i < width_; ++i) values[i] += delta[i];
  // Never narrower than now: a sub-bucket only widens until it is cleared.
  const Encoding e = std::max(encoding(slot), NarrowestEncoding(values));
  Store(slot, e, values);
}

void CompactSubBuckets::PrefetchBlock(size_t max_bytes) const {
  PrefetchRange(block_.get(), std::min(block_bytes_, max_bytes));
}

void CompactSubBuckets::Prefetch(int slot) const {
  if (block_ == nullptr) return;
  // Enough for the windows of typical histograms; the hardware prefetcher carries on from there.
  constexpr size_t kMaxBytes = 32 * kCacheLineBytes;
  // Offset() reads the encodings at the block's start: fetch that line first.
  PrefetchLine(block_.get());
  const size_t offset = Offset(slot);
  const size_t bytes = std::min(BytesPerValue(encoding(slot)) * width_, kMaxBytes);
  const uint8_t* data = block_.get() + offset;
  PrefetchRange(data, bytes, /*for_write=*/true);
}

void CompactSubBuckets::Clear(int slot) { Store(slot, Encoding::kEmpty, {}); }

void CompactSubBuckets::Store(int slot, Encoding e, absl::Span<const double> values) {
  const Encoding old = encoding(slot);
  if (old == Encoding::kEmpty && e == Encoding::kEmpty) return;
  const size_t old_bytes = BytesPerValue(old) * width_;
  const size_t new_bytes = BytesPerValue(e) * width_;
  const size_t offset = Offset(slot);
  if (old != e) {
    const size_t total = (block_bytes_ == 0 ? static_cast<size_t>(sub_buckets_) : block_bytes_) -
                         old_bytes + new_bytes;
    if (total == static_cast<size_t>(sub_buckets_)) {
      block_.reset();  // Every sub-bucket is empty.
      block_bytes_ = 0;
      return;
    }
    std::unique_ptr<uint8_t[]> block(new uint8_t[total]);
    if (block_ == nullptr) {
      std::memset(block.get(), 0, static_cast<size_t>(sub_buckets_));
    } else {
      std::memcpy(block.get(), block_.get(), offset);
      std::memcpy(block.get() + offset + new_bytes, block_.get() + offset + old_bytes,
                  block_bytes_ - offset - old_bytes);
    }
    block[slot] = static_cast<uint8_t>(e);
    block_ = std::move(block);
    block_bytes_ = total;
  }
  if (e == Encoding::kEmpty) return;
  uint8_t* data = block_.get() + offset;
  WithValueType(e, [&](auto type) { EncodeAs<decltype(type)>(values, data); });
}

}  // namespace kldrift
