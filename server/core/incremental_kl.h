// IncrementalKl: KL(current || reference) kept up to date as individual bins
// change, O(1) to read.
//
// With c'_i = c_i + alpha, N' = sum c'_i and the reference's cached log q_i,
//   KL(P||Q) = sum p_i (log p_i - log q_i) = (S_cc - S_cq) / N' - log N',
//   S_cc = sum c'_i log c'_i,   S_cq = sum c'_i log q_i.
// Each Add() updates both sums in O(1) (one log), with Neumaier-compensated
// accumulation so that long runs of updates do not drift; Resync() recomputes
// them exactly from the counts with the vector kernels. (DriftEngine no longer
// keeps one per window: K doubles and two logs per changed bin bought an O(1)
// read nothing needed, since a tick computes the measures from the totals anyway;
// it builds one on demand for IncrementalKlCurrentReference.) Bins with current
// mass but no reference mass (possible only with alpha = 0) are counted apart and
// make the result +inf.
//
// Thread safety: thread-compatible. Callers serialise access (the service holds
// a per-stream lock).
#ifndef KLDRIFT_SERVER_CORE_INCREMENTAL_KL_H_
#define KLDRIFT_SERVER_CORE_INCREMENTAL_KL_H_

#include <cstddef>
#include <memory>
#include <vector>

#include "absl/types/span.h"
#include "server/core/drift_measures.h"

namespace kldrift {

// A sum with Neumaier's compensation term: error independent of the number of
// additions.
class CompensatedSum {
 public:
  void Add(double x);
  double value() const { return sum_ + compensation_; }
  void Reset(double value = 0) {
    sum_ = value;
    compensation_ = 0;
  }

 private:
  double sum_ = 0;
  double compensation_ = 0;
};

class IncrementalKl {
 public:
  // Starts from an all-zero current histogram over the reference's bins.
  explicit IncrementalKl(std::shared_ptr<const ReferenceProfile> reference);

  // Adds `delta` (may be negative) to bin `bin`. A result within 1e-9 below
  // zero (rounding of fractional counts) is clamped to 0. REQUIRES: bin <
  // size(); counts()[bin] + delta >= -1e-9.
  void Add(size_t bin, double delta);

  // KL(current || reference) in nats; 0 when the current histogram is empty.
  double KlCurrentReference() const;

  // Recomputes the running sums exactly from the counts.
  void Resync();

  size_t size() const { return counts_.size(); }
  double samples() const { return samples_.value(); }
  absl::Span<const double> counts() const { return counts_; }
  const ReferenceProfile& reference() const { return *reference_; }

 private:
  // c' log c' and c' log q for one bin's count c (c' = c + alpha); 0 when c' ==
  // 0.
  double EntropyTerm(double count) const;
  double CrossTerm(size_t bin, double count) const;
  bool Impossible(size_t bin, double count) const;

  std::shared_ptr<const ReferenceProfile> reference_;
  std::vector<double> counts_;
  CompensatedSum samples_;
  CompensatedSum sum_c_log_c_;
  CompensatedSum sum_c_log_q_;
  size_t impossible_bins_ = 0;  // Bins with c > 0 where q = 0.
  size_t nonzero_bins_ = 0;     // Bins with c != 0; 0 means the histogram is empty.
  // The running sums of the empty histogram, restored exactly whenever it
  // empties again: rounded fractional updates need not cancel, and a residue of
  // 1e-17 samples would otherwise give KL = -log(1e-17) for an empty histogram.
  CompensatedSum empty_sum_c_log_c_;
  CompensatedSum empty_sum_c_log_q_;
};

}  // namespace kldrift

#endif  // KLDRIFT_SERVER_CORE_INCREMENTAL_KL_H_
