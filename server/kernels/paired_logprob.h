// KL estimators from paired log-probabilities: policy drift (PPO/RLHF), shadow models.
//
// Each sample x was drawn from the *current* policy, and carries log p_current(x) and
// log p_reference(x). With log r = log p_reference(x) - log p_current(x), Schulman's estimators of
// KL(current || reference) are
//   k1 = -log r                (unbiased, high variance, can be negative)
//   k2 = (log r)^2 / 2         (biased, low variance)
//   k3 = (r - 1) - log r       (unbiased, never negative)
// The batch mean of each, and its standard error (sample standard deviation / sqrt(n)), are
// returned. Means and variances use two passes over the data, so the variance does not cancel.
//
// Thread safety: pure functions over caller-owned memory; no allocation.
#ifndef KLDRIFT_SERVER_KERNELS_PAIRED_LOGPROB_H_
#define KLDRIFT_SERVER_KERNELS_PAIRED_LOGPROB_H_

#include <cstddef>

namespace kldrift::kernels {

struct EstimatorSummary {
  double mean = 0;
  double standard_error = 0;  // +inf when n < 2 (no spread can be measured).
};

struct PolicyKlEstimates {
  size_t samples = 0;
  EstimatorSummary k1, k2, k3;
};

// REQUIRES: n > 0; log-probs finite and <= 0.
PolicyKlEstimates EstimatePolicyKl(const double* log_p_current, const double* log_p_reference,
                                   size_t n);

// Running sums over per-sample estimator values, for windows that add batches over time:
// sum and sum of squares of k1, k2, k3 (the mean and standard error follow from them).
struct PolicyKlSums {
  double samples = 0;
  double k1 = 0, k1_sq = 0;
  double k2 = 0, k2_sq = 0;
  double k3 = 0, k3_sq = 0;
};
PolicyKlSums SumPolicyKl(const double* log_p_current, const double* log_p_reference, size_t n);

}  // namespace kldrift::kernels

#endif  // KLDRIFT_SERVER_KERNELS_PAIRED_LOGPROB_H_
