#include "server/core/count_scan.h"

#include <cstddef>
#include <cstdint>

#include "server/core/cpu_dispatch.h"

namespace kldrift {
namespace {

// Compiled for AVX2 too, chosen at load time. Branch-free, so the compiler vectorizes it.
KLDRIFT_TARGET_CLONES_AVX2 SmallCountScan Scan(const double* values, size_t n) {
  constexpr double kLimit = 2147483648.0;  // 2^31
  // Past 2^22 values the int64 sum could pass 2^53 and the double of it round: not scanned here.
  if (n >= (size_t{1} << 22)) return SmallCountScan{};
  bool small = true;
  int64_t sum = 0;
  int32_t max = 0;
  for (size_t i = 0; i < n; ++i) {
    const double v = values[i];
    // Outside [0, 2^31) (NaN included) 0.5 stands in: its conversion, 0, equals no such value.
    const double in_range = ((v >= 0) & (v < kLimit)) ? v : 0.5;
    const int32_t whole = static_cast<int32_t>(in_range);
    small &= static_cast<double>(whole) == v;
    sum += whole;
    max = whole > max ? whole : max;
  }
  SmallCountScan scan;
  scan.small_counts = small;
  if (small) {
    scan.sum = static_cast<double>(sum);
    scan.max = static_cast<double>(max);
  }
  return scan;
}

}  // namespace

SmallCountScan ScanSmallCounts(absl::Span<const double> values) {
  return Scan(values.data(), values.size());
}

}  // namespace kldrift
