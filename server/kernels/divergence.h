// Vectorized divergence kernels over histograms of K bins (Google Highway, runtime dispatch).
//
// These are the math core of kldrift: plain pointer-and-count functions over caller-owned memory.
// They never allocate, never fail and know nothing of gRPC or of how histograms are stored;
// argument checking happens in server/core (see drift_measures.h). All sums accumulate in double.
//
// Notation used throughout: P is the *current* distribution (production), Q the *reference*.
// Shares are smoothed with a Dirichlet prior of `alpha` pseudo-counts per bin:
//   p_i = (current_i + alpha) * p_scale,   p_scale = 1 / (N_current + K * alpha).
// The reference arrives pre-smoothed as q_i and log q_i (log q_i = -inf where q_i = 0), computed
// once per reference by SmoothedShares(), so KL(P||Q) costs one vector log per bin.
//
// Zero conventions: 0 * log(0 / x) = 0. A bin with p_i > 0 = q_i makes KL(P||Q) and chi2 +inf (and
// symmetrically for KL(Q||P)); results are never NaN for valid inputs.
//
// Thread safety: all functions are pure; concurrent calls on shared read-only inputs are safe.
//
// Example:
//   std::vector<double> q(k), log_q(k);
//   SmoothedShares(ref_counts, k, alpha, 1.0 / (ref_total + k * alpha), q.data(), log_q.data());
//   double kl = KlCurrentReference(cur_counts, k, alpha, 1.0 / (cur_total + k * alpha),
//                                  log_q.data());
#ifndef KLDRIFT_SERVER_KERNELS_DIVERGENCE_H_
#define KLDRIFT_SERVER_KERNELS_DIVERGENCE_H_

#include <cstddef>

namespace kldrift::kernels {

// Sum of a count vector, and whether every entry is finite and >= 0.
struct CountSummary {
  double total = 0;
  bool all_finite_non_negative = true;
};
CountSummary SummarizeCounts(const double* counts, size_t k);

// shares[i] = (counts[i] + alpha) * scale; log_shares[i] = log(shares[i]), or -inf where the share
// is 0. REQUIRES: counts finite and >= 0, alpha >= 0, scale > 0.
void SmoothedShares(const double* counts, size_t k, double alpha, double scale, double* shares,
                    double* log_shares);

// KL(P||Q) = sum_i p_i (log p_i - log q_i) in nats, one vector log per bin.
double KlCurrentReference(const double* current, size_t k, double alpha, double p_scale,
                          const double* log_q);

// contributions[i] = p_i log(p_i / q_i): the per-bin terms of KL(P||Q), which sum to it.
void KlContributions(const double* current, size_t k, double alpha, double p_scale,
                     const double* log_q, double* contributions);

// Every sum the drift report needs, in a single pass over the bins.
struct DivergenceSums {
  double kl_pq = 0;         // sum p log(p/q): KL(current || reference), nats.
  double kl_qp = 0;         // sum q log(q/p): KL(reference || current), nats.
  double js_nats = 0;       // 1/2 sum [p log(p/m) + q log(q/m)], m = (p + q) / 2.
  double sq_root_diff = 0;  // sum (sqrt p - sqrt q)^2 = 2 * Hellinger^2.
  double abs_diff = 0;      // sum |p - q| = 2 * total variation.
  double max_abs_diff = 0;  // max |p - q| = L-infinity distance.
  double chi2 = 0;          // sum (p - q)^2 / q: Pearson chi-squared divergence.
  // For the two-sample G-test of homogeneity on the raw counts c (current) and r (reference):
  // sum c log((c + r) / c) + r log((c + r) / r), terms with a zero count omitted, and the number
  // of bins where c + r > 0. See kldrift::HomogeneityGStatistic.
  double homogeneity_terms = 0;
  double occupied_bins = 0;
};

// The reference as ComputeDivergenceSums reads it: smoothed shares for the divergences, raw counts
// for the G-test. All arrays have K entries.
struct ReferenceView {
  const double* shares;      // q, from SmoothedShares().
  const double* log_shares;  // log q (-inf where q = 0).
  const double* counts;      // r, the raw reference counts.
  const double* log_counts;  // log r (-inf where r = 0).
};

// When `kl_terms` is not null it receives K values: the per-bin terms of KL(P||Q), bit for bit
// what KlContributions writes (so a report's top bins cost no second pass over the bins).
// REQUIRES: current finite and >= 0 with current_total > 0.
DivergenceSums ComputeDivergenceSums(const double* current, size_t k, double alpha,
                                     double current_total, const ReferenceView& reference,
                                     double* kl_terms = nullptr);

// The G-test's sums alone (DivergenceSums::homogeneity_terms and occupied_bins, bit for bit), for
// callers that need the evidence but not the divergences: two logs per bin instead of four.
struct HomogeneityTerms {
  double homogeneity_terms = 0;
  double occupied_bins = 0;
};
// REQUIRES: current finite and >= 0.
HomogeneityTerms HomogeneitySums(const double* current, size_t k, const ReferenceView& reference);

}  // namespace kldrift::kernels

#endif  // KLDRIFT_SERVER_KERNELS_DIVERGENCE_H_
