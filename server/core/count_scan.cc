#include "server/core/count_scan.h"

#include <cstddef>
#include <cstdint>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "server/core/count_scan.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
// Must come after foreach_target.h.
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace kldrift {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// In double lanes throughout: a value is a small count when it lies in [0, 2^31) and truncating it
// changes nothing. Lane sums stay exact (whole numbers, and the caller keeps n below 2^22, so every
// partial sum is below 2^53).
SmallCountScan ScanImpl(const double* HWY_RESTRICT values, size_t n) {
  constexpr double kLimit = 2147483648.0;  // 2^31
  const hn::ScalableTag<double> d;
  const size_t lanes = hn::Lanes(d);
  const auto zero = hn::Zero(d);
  const auto limit = hn::Set(d, kLimit);
  const auto half = hn::Set(d, 0.5);  // Stands in for what is out of range: it truncates to 0.
  // All ones in a lane while every value there was whole. (Not Ne(whole, v): on some targets
  // Highway's Ne is an ordered comparison, false against NaN.)
  auto all_whole = hn::VecFromMask(d, hn::Eq(zero, zero));
  auto sum = hn::Zero(d);
  auto max = hn::Zero(d);
  size_t i = 0;
  for (; i + lanes <= n; i += lanes) {
    const auto v = hn::LoadU(d, values + i);
    const auto in_range = hn::And(hn::Ge(v, zero), hn::Lt(v, limit));  // False for NaN.
    const auto whole = hn::Trunc(hn::IfThenElse(in_range, v, half));
    all_whole = hn::And(all_whole, hn::VecFromMask(d, hn::Eq(whole, v)));
    sum = hn::Add(sum, whole);
    max = hn::Max(max, whole);
  }
  bool small = hn::AllTrue(d, hn::MaskFromVec(all_whole));
  double total = hn::GetLane(hn::SumOfLanes(d, sum));
  double largest = hn::GetLane(hn::MaxOfLanes(d, max));
  for (; i < n; ++i) {
    const double v = values[i];
    const double whole = v >= 0 && v < kLimit ? static_cast<double>(static_cast<int32_t>(v)) : 0.5;
    small &= whole == v;
    total += whole;
    largest = whole > largest ? whole : largest;
  }
  SmallCountScan scan;
  scan.small_counts = small;
  if (small) {
    // + 0.0 is not enough to drop a -0.0 the lanes may have kept (x86's max of two zeros returns
    // either): a zero is written as +0.
    scan.sum = total == 0 ? 0.0 : total;
    scan.max = largest == 0 ? 0.0 : largest;
  }
  return scan;
}

}  // namespace HWY_NAMESPACE
}  // namespace kldrift
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace kldrift {

HWY_EXPORT(ScanImpl);

SmallCountScan ScanSmallCounts(absl::Span<const double> values) {
  // Past 2^22 values the sum could pass 2^53 and round: not scanned here.
  if (values.size() >= (size_t{1} << 22)) return SmallCountScan{};
  return HWY_DYNAMIC_DISPATCH(ScanImpl)(values.data(), values.size());
}

}  // namespace kldrift
#endif  // HWY_ONCE
