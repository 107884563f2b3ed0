// ScanSmallCounts: one vectorized pass over values that are usually small whole counts (what
// clients ingest: histogram deltas), telling whether they all are and giving their sum and largest
// value. Ingest validates every bin of every batch, and the store encodes them again. Highway, in
// double lanes (a value is a small count when it lies in [0, 2^31) and truncating it changes
// nothing), dispatched at run time to the best target the CPU has. An earlier scalar-looking loop
// written for the compiler to vectorize was not vectorized by GCC 12 (branches on the comparisons):
// its share of ingest_bench BM_IngestApply (100 histograms of 67 bins) went from 10 to 3 %.
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
