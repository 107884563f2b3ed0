// DriftMeasures: every divergence between a current histogram and a reference,
// under the names the CLI and the service share (kl_current_reference, js_bits,
// psi, ...).
//
// Smoothing: a Dirichlet prior of `alpha` pseudo-counts per bin, applied
// identically to both sides, then normalised (the posterior mean). The default
// alpha = 0.5 is the Krichevsky-Trofimov / Jeffreys prior: the minimax choice
// for coding an unknown distribution, small enough that well-populated bins are
// barely moved, and it keeps every divergence finite. alpha = 0 is allowed: a
// bin with current mass and no reference mass then gives +inf (never NaN).
//
// Direction is explicit: P is *current* (production), Q is the *reference*.
//   kl_current_reference  KL(P||Q) in nats: how badly the reference explains
//   production. kl_reference_current  KL(Q||P) in nats. jeffreys, psi KL(P||Q)
//   + KL(Q||P) (PSI is the same quantity in credit-scoring terms). js_bits
//   Jensen-Shannon divergence in bits, in [0, 1]. hellinger Hellinger distance
//   sqrt(1/2 sum (sqrt p - sqrt q)^2), in [0, 1]. total_variation       1/2 sum
//   |p - q|, in [0, 1]. l_inf                 max |p - q| (the TFDV/SageMaker
//   categorical measure). chi2                  Pearson chi-squared divergence
//   sum (p - q)^2 / q; times samples_current it
//                         is Pearson's statistic.
//   g_test_p_value        Pr[chi2(K-1) >= G], G = 2 N_current KL(Phat||Q) with
//   Phat the unsmoothed
//                         current shares: the evidence that production differs
//                         from the reference.
// Divergences are clamped to their mathematical range, so rounding never
// reports KL = -1e-17.
//
// Thread safety: ReferenceProfile is immutable and safe to share; the functions
// are pure.
#ifndef KLDRIFT_SERVER_CORE_DRIFT_MEASURES_H_
#define KLDRIFT_SERVER_CORE_DRIFT_MEASURES_H_

#include <cstddef>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "server/core/bin_layout.h"
#include "server/kernels/divergence.h"

namespace kldrift {

inline constexpr double kDefaultAlpha = 0.5;

// A reference histogram prepared for fast comparison: smoothed shares q and log
// q, computed once.
class ReferenceProfile {
 public:
  // Fails with INVALID_ARGUMENT when counts is empty, has a negative or
  // non-finite entry, sums to zero, or alpha is negative or not finite.
  static absl::StatusOr<ReferenceProfile> Create(std::vector<double> counts, double alpha);

  size_t size() const { return size_; }
  double alpha() const { return alpha_; }
  double samples() const { return samples_; }
  absl::Span<const double> counts() const { return Array(kCounts); }
  absl::Span<const double> shares() const { return Array(kShares); }
  absl::Span<const double> log_shares() const { return Array(kLogShares); }
  // log of the raw counts (-inf where 0), for the G-test.
  absl::Span<const double> log_counts() const { return Array(kLogCounts); }
  // The kernels' view of this profile.
  kernels::ReferenceView View() const {
    return {shares().data(), log_shares().data(), counts().data(), log_counts().data()};
  }

 private:
  // The four arrays of size() values live in one block, in this order (one allocation per profile:
  // a 64-bin reference is 2.1 KB of them).
  enum ArrayIndex { kCounts = 0, kShares = 1, kLogShares = 2, kLogCounts = 3 };
  ReferenceProfile() = default;
  absl::Span<const double> Array(ArrayIndex index) const {
    return absl::MakeConstSpan(values_.data() + index * size_, size_);
  }

  double alpha_ = kDefaultAlpha;
  double samples_ = 0;
  size_t size_ = 0;
  std::vector<double> values_;
};

// One bin's part in the drift: its shares on both sides and its term p log(p/q)
// of KL(P||Q).
struct BinContribution {
  size_t bin = 0;
  std::string label;  // Empty when computed with BinLabels::kIndexOnly.
  double current_share = 0;
  double reference_share = 0;
  double contribution = 0;
};

struct DriftMeasures {
  double kl_current_reference = 0;
  double kl_reference_current = 0;
  double jeffreys = 0;
  double psi = 0;
  double js_bits = 0;
  double hellinger = 0;
  double total_variation = 0;
  double l_inf = 0;
  double chi2 = 0;
  double g_test_p_value = 1;
  double samples_current = 0;
  double samples_reference = 0;
  double alpha = 0;
  // The bins with the largest contribution to KL(P||Q), largest first.
  std::vector<BinContribution> top_bins;
};

// Whether ComputeDriftMeasures names the top bins. kIndexOnly leaves BinContribution::label
// empty, for a caller that keeps the bin index and names it from the layout only when it must
// (the metrics table, at scrape time): a string per bin per report is a malloc and a free.
enum class BinLabels { kNamed, kIndexOnly };

// Checks `current` (K entries, finite, >= 0, not all zero) against `reference`
// and computes every measure plus the `top_k` most contributing bins. `layout`,
// if given, names the bins. Errors: INVALID_ARGUMENT with a message naming the
// offending bin or size.
absl::StatusOr<DriftMeasures> ComputeDriftMeasures(const ReferenceProfile& reference,
                                                   absl::Span<const double> current, size_t top_k,
                                                   const BinLayout* layout = nullptr,
                                                   BinLabels labels = BinLabels::kNamed);

// The two-sample G statistic from kernels::DivergenceSums::homogeneity_terms:
// G = 2 [N_c log(N / N_c) + N_r log(N / N_r) - terms], N = N_c + N_r; clamped at 0.
double HomogeneityGStatistic(double current_total, double reference_total,
                             double homogeneity_terms);

// Pr[chi2(degrees_of_freedom) >= g]; 1 when there are no degrees of freedom.
double GTestPValue(double g, double degrees_of_freedom);

// Decides GTestPValue(g, degrees_of_freedom) <= max_p_value, with the same answer as computing
// the p-value, while computing it only for g near where the p-value crosses max_p_value: per
// (degrees of freedom, bound) it keeps a bracket [below, above] outside which the answer is
// known, found once by bisection. An alert needs only that answer; the incomplete gamma function
// behind the p-value was ~6 % of a tick over 100k streams whose every window needed it.
//
// Why the answer is the same: the p-value falls as g grows, and ChiSquaredSurvival is accurate
// to ~1e-13 relative (kernels/chi_squared.h), so with p(above) <= max_p_value (1 - 1e-6) every
// g >= above computes a p-value below max_p_value, and with p(below) >= max_p_value (1 + 1e-6)
// every g <= below one above it. Bounds below 1e-200 (where the p-value nears underflow) and
// non-finite inputs are always computed.
//
// Thread safety: none (it caches); one per thread. Memory: at most kMaxBrackets brackets.
class GTestDecider {
 public:
  bool PValueAtMost(double g, double degrees_of_freedom, double max_p_value);

 private:
  static constexpr size_t kMaxBrackets = 1024;
  struct Bracket {
    double below;  // g <= below: the p-value is above max_p_value.
    double above;  // g >= above: the p-value is at most max_p_value.
  };
  static Bracket FindBracket(double degrees_of_freedom, double max_p_value);
  absl::flat_hash_map<std::pair<double, double>, Bracket> brackets_;
};

}  // namespace kldrift

#endif  // KLDRIFT_SERVER_CORE_DRIFT_MEASURES_H_
