#include "server/core/drift_measures.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <numeric>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "server/kernels/chi_squared.h"
#include "server/kernels/divergence.h"

namespace kldrift {
namespace {

absl::Status ValidateAlpha(double alpha) {
  if (!std::isfinite(alpha) || alpha < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("alpha = ", alpha,
                     " is invalid: the smoothing prior must be a finite number "
                     "of pseudo-counts >= 0 "
                     "(default 0.5)"));
  }
  return absl::OkStatus();
}

// Names the first bad entry, so a user can find it in a large file.
absl::Status DescribeBadCount(absl::string_view which, absl::Span<const double> counts) {
  for (size_t i = 0; i < counts.size(); ++i) {
    if (!(counts[i] >= 0) || !std::isfinite(counts[i])) {
      return absl::InvalidArgumentError(absl::StrCat(which, " count for bin ", i, " is ", counts[i],
                                                     "; counts must be finite and >= 0"));
    }
  }
  return absl::InternalError("count summary flagged a bad count that was not found");
}

// Sets `order` to the `n` (<= contributions.size()) bins with the largest contributions, largest
// first; ties keep the lower bin first, so output is deterministic.
void RankTopBins(absl::Span<const double> contributions, size_t n, std::vector<size_t>& order) {
  auto before = [&](size_t a, size_t b) {
    return contributions[a] != contributions[b] ? contributions[a] > contributions[b] : a < b;
  };
  // A report asks for a few: keeping them sorted costs one comparison for most bins, where
  // partial_sort's heap costs several and the index vector a write per bin.
  constexpr size_t kInsertionMaxBins = 16;
  if (n > kInsertionMaxBins) {
    order.resize(contributions.size());
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + n, order.end(), before);
    order.resize(n);
    return;
  }
  // A lower bound for the n-th largest contribution, so that most bins are passed over by one
  // well-predicted comparison (the insertion below mispredicts a branch per bin it keeps): the
  // n-th largest of the maxima of kColumns interleaved columns, n distinct bins at least as large.
  // The column maxima vectorize. NaN (never produced) is not below it and goes to the insertion.
  constexpr size_t kColumns = 8;
  double threshold = -std::numeric_limits<double>::infinity();
  if (n <= kColumns && n <= contributions.size()) {
    double column_max[kColumns];
    std::fill(column_max, column_max + kColumns, -std::numeric_limits<double>::infinity());
    const double* c = contributions.data();
    const size_t k = contributions.size();
    size_t bin = 0;
    for (; bin + kColumns <= k; bin += kColumns) {
      for (size_t j = 0; j < kColumns; ++j) {
        column_max[j] = c[bin + j] > column_max[j] ? c[bin + j] : column_max[j];
      }
    }
    for (size_t j = 0; bin + j < k; ++j) {
      column_max[j] = c[bin + j] > column_max[j] ? c[bin + j] : column_max[j];
    }
    std::nth_element(column_max, column_max + (n - 1), column_max + kColumns,
                     std::greater<double>());
    threshold = column_max[n - 1];
  }
  order.clear();
  for (size_t bin = 0; bin < contributions.size(); ++bin) {
    if (contributions[bin] < threshold) continue;
    // Bins come in increasing order, so a bin ranks before a kept one only if it contributes more.
    if (order.size() == n && !before(bin, order.back())) continue;
    if (order.size() < n) order.push_back(bin);
    size_t j = order.size() - 1;
    for (; j > 0 && before(bin, order[j - 1]); --j) order[j] = order[j - 1];
    order[j] = bin;
  }
}

double Clamp(double value, double low, double high) {
  // std::clamp would turn +inf into `high` for bounded measures, which is
  // intended; NaN cannot occur for valid inputs.
  return std::min(std::max(value, low), high);
}

}  // namespace

absl::StatusOr<ReferenceProfile> ReferenceProfile::Create(std::vector<double> counts,
                                                          double alpha) {
  if (absl::Status status = ValidateAlpha(alpha); !status.ok()) return status;
  if (counts.empty()) {
    return absl::InvalidArgumentError("the reference histogram has no bins");
  }
  const kernels::CountSummary summary = kernels::SummarizeCounts(counts.data(), counts.size());
  if (!summary.all_finite_non_negative) return DescribeBadCount("reference", counts);
  if (summary.total == 0) {
    return absl::InvalidArgumentError(
        "the reference histogram is empty (every count is 0); a reference "
        "needs observations");
  }
  if (!std::isfinite(summary.total)) {
    return absl::InvalidArgumentError(
        "the reference counts add up to more than a double can hold; scale "
        "them down");
  }
  ReferenceProfile profile;
  const size_t k = counts.size();
  profile.alpha_ = alpha;
  profile.samples_ = summary.total;
  profile.size_ = k;
  profile.values_.resize(4 * k);
  double* values = profile.values_.data();
  std::copy(counts.begin(), counts.end(), values + kCounts * k);
  kernels::SmoothedShares(counts.data(), k, alpha,
                          1.0 / (summary.total + static_cast<double>(k) * alpha),
                          values + kShares * k, values + kLogShares * k);
  // log r for the G-test: the same kernel with alpha = 0 and scale 1 (shares = counts, written
  // over the copy of the counts with the same values).
  kernels::SmoothedShares(counts.data(), k, 0.0, 1.0, values + kCounts * k,
                          values + kLogCounts * k);
  return profile;
}

double HomogeneityGStatistic(double current_total, double reference_total,
                             double homogeneity_terms) {
  // N_c log(N / N_c) = N_c log1p(N_r / N_c): no cancellation for very unequal totals.
  const double pooled = current_total * std::log1p(reference_total / current_total) +
                        reference_total * std::log1p(current_total / reference_total);
  return std::max(0.0, 2.0 * (pooled - homogeneity_terms));
}

double GTestPValue(double g, double degrees_of_freedom) {
  if (degrees_of_freedom < 1) return 1.0;  // At most one occupied bin: nothing to compare.
  return kernels::ChiSquaredSurvival(std::max(g, 0.0), degrees_of_freedom);
}

bool GTestDecider::PValueAtMost(double g, double degrees_of_freedom, double max_p_value) {
  const auto compute = [&] { return GTestPValue(g, degrees_of_freedom) <= max_p_value; };
  if (!(degrees_of_freedom >= 1) || !std::isfinite(degrees_of_freedom) || !std::isfinite(g) ||
      !(max_p_value >= 1e-200 && max_p_value < 1)) {
    return compute();
  }
  const std::pair<double, double> key{degrees_of_freedom, max_p_value};
  auto it = brackets_.find(key);
  if (it == brackets_.end()) {
    if (brackets_.size() >= kMaxBrackets) brackets_.clear();
    it = brackets_.emplace(key, FindBracket(degrees_of_freedom, max_p_value)).first;
  }
  if (g >= it->second.above) return true;
  if (g <= it->second.below) return false;
  return compute();
}

GTestDecider::Bracket GTestDecider::FindBracket(double degrees_of_freedom, double max_p_value) {
  constexpr double kMargin = 1e-6;  // Far above the p-value's ~1e-13 relative error.
  constexpr double kInf = std::numeric_limits<double>::infinity();
  const auto p = [&](double g) { return GTestPValue(g, degrees_of_freedom); };
  // `above`: p(above) <= max_p_value (1 - kMargin). Doubling from the mean, then halving the gap.
  const double low_target = max_p_value * (1 - kMargin);
  double hi = std::max(1.0, degrees_of_freedom);
  bool found = false;
  for (int i = 0; i < 2000 && !found; ++i) {
    found = p(hi) <= low_target;
    if (!found) hi *= 2;
  }
  if (!found) return Bracket{-kInf, kInf};  // Never decided without computing.
  double lo = 0;                            // p(0) = 1 > low_target.
  for (int i = 0; i < 100 && hi - lo > 1e-9 * hi; ++i) {
    const double mid = lo + (hi - lo) / 2;
    (p(mid) <= low_target ? hi : lo) = mid;
  }
  const double above = hi;
  // `below`: p(below) >= max_p_value (1 + kMargin), below `above`.
  const double high_target = max_p_value * (1 + kMargin);
  if (!(high_target < 1)) return Bracket{-kInf, above};
  lo = 0;
  hi = above;  // p(above) < high_target.
  for (int i = 0; i < 100 && hi - lo > 1e-9 * hi; ++i) {
    const double mid = lo + (hi - lo) / 2;
    (p(mid) >= high_target ? lo : hi) = mid;
  }
  return Bracket{lo, above};
}

absl::StatusOr<DriftMeasures> ComputeDriftMeasures(const ReferenceProfile& reference,
                                                   absl::Span<const double> current, size_t top_k,
                                                   const BinLayout* layout, BinLabels labels) {
  const size_t k = reference.size();
  if (current.size() != k) {
    return absl::InvalidArgumentError(absl::StrCat("the current histogram has ", current.size(),
                                                   " bins but the reference has ", k,
                                                   "; both must use the reference's bins"));
  }
  if (layout != nullptr && layout->size() != k) {
    return absl::InvalidArgumentError(
        absl::StrCat("the bin layout has ", layout->size(), " bins but the reference has ", k));
  }
  const kernels::CountSummary summary = kernels::SummarizeCounts(current.data(), k);
  if (!summary.all_finite_non_negative) return DescribeBadCount("current", current);
  if (summary.total == 0) {
    return absl::InvalidArgumentError(
        "the current histogram is empty (every count is 0); there is nothing "
        "to compare yet");
  }
  if (!std::isfinite(summary.total)) {
    return absl::InvalidArgumentError(
        "the current counts add up to more than a double can hold; scale them "
        "down");
  }
  const double alpha = reference.alpha();
  // Scratch reused by every call on this thread: a tick ranks the bins of every window. The
  // per-bin KL terms come out of the same pass as the sums.
  thread_local std::vector<double> contributions;
  thread_local std::vector<size_t> order;
  if (top_k > 0) contributions.resize(k);
  const kernels::DivergenceSums sums =
      kernels::ComputeDivergenceSums(current.data(), k, alpha, summary.total, reference.View(),
                                     top_k > 0 ? contributions.data() : nullptr);

  DriftMeasures m;
  m.kl_current_reference = std::max(sums.kl_pq, 0.0);
  m.kl_reference_current = std::max(sums.kl_qp, 0.0);
  m.jeffreys = m.kl_current_reference + m.kl_reference_current;
  m.psi = m.jeffreys;
  m.js_bits = Clamp(sums.js_nats / std::log(2.0), 0.0, 1.0);
  m.hellinger = Clamp(std::sqrt(std::max(sums.sq_root_diff, 0.0) / 2), 0.0, 1.0);
  m.total_variation = Clamp(sums.abs_diff / 2, 0.0, 1.0);
  m.l_inf = Clamp(sums.max_abs_diff, 0.0, 1.0);
  m.chi2 = std::max(sums.chi2, 0.0);
  m.g_test_p_value =
      GTestPValue(HomogeneityGStatistic(summary.total, reference.samples(), sums.homogeneity_terms),
                  sums.occupied_bins - 1);
  m.samples_current = summary.total;
  m.samples_reference = reference.samples();
  m.alpha = alpha;

  if (top_k > 0) {
    const double p_scale = 1.0 / (summary.total + static_cast<double>(k) * alpha);
    const size_t n = std::min(top_k, k);
    RankTopBins(absl::MakeConstSpan(contributions.data(), k), n, order);
    m.top_bins.reserve(n);
    std::string scratch;
    for (size_t j = 0; j < n; ++j) {
      const size_t bin = order[j];
      BinContribution c;
      c.bin = bin;
      if (labels == BinLabels::kNamed) {
        // Interned layouts format their labels once, not per report.
        c.label = layout != nullptr ? std::string(layout->CachedBinLabel(bin, scratch))
                                    : absl::StrCat("bin ", bin);
      }
      c.current_share = (current[bin] + alpha) * p_scale;
      c.reference_share = reference.shares()[bin];
      c.contribution = contributions[bin];
      m.top_bins.push_back(std::move(c));
    }
  }
  return m;
}

}  // namespace kldrift
