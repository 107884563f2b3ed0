// ScanSmallCounts: one vectorized pass over values that are usually small whole counts (what
// clients ingest: histogram deltas), telling whether they all are and giving their sum and largest
// value. Ingest validates every bin of every batch, and the store encodes them again: a scalar
// integer test per value (a double -> int64 conversion, which no x86 vector unit below AVX-512
// has) was a few percent of the server's CPU. Whole numbers in [0, 2^31) convert to int32, which
// SSE2 and AVX2 do four at a time.
//
// Thread safety: a pure function.
#ifndef KLDRIFT_SERVER_CORE_COUNT_SCAN_H_
#define KLDRIFT_SERVER_CORE_COUNT_SCAN_H_

#include "absl/types/span.h"

namespace kldrift {

struct SmallCountScan {
  // Every value is a whole number in [0, 2^31) (NaN, infinities, fractions, negatives and larger
  // values are not). True for no values; false for 2^22 values or more (not scanned: the caller
  // takes its general path).
  bool small_counts = false;
  // When small_counts: the sum of the values (exact: integers far below 2^53 in total) and the
  // largest (0 for no values).
  double sum = 0;
  double max = 0;
};

SmallCountScan ScanSmallCounts(absl::Span<const double> values);

}  // namespace kldrift

#endif  // KLDRIFT_SERVER_CORE_COUNT_SCAN_H_
