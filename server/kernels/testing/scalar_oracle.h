// Long-double scalar reference implementations of every kernel, written for clarity rather than
// speed, straight from the textbook definitions. Tests compare the vector kernels against these.
//
// Thread safety: pure functions.
#ifndef KLDRIFT_SERVER_KERNELS_TESTING_SCALAR_ORACLE_H_
#define KLDRIFT_SERVER_KERNELS_TESTING_SCALAR_ORACLE_H_

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

namespace kldrift::kernels::oracle {

using Real = long double;

inline constexpr Real kInf = std::numeric_limits<Real>::infinity();

// Smoothed shares (c_i + alpha) / (N + K alpha).
inline std::vector<Real> Shares(const std::vector<double>& counts, double alpha) {
  Real total = 0;
  for (double c : counts) total += c;
  const Real denominator = total + static_cast<Real>(counts.size()) * alpha;
  std::vector<Real> shares(counts.size());
  for (size_t i = 0; i < counts.size(); ++i) shares[i] = (counts[i] + Real{alpha}) / denominator;
  return shares;
}

// sum a log(a / b), with 0 log(0/x) = 0 and a > 0 = b giving +inf.
inline Real Kl(const std::vector<Real>& a, const std::vector<Real>& b) {
  Real sum = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i] == 0) continue;
    if (b[i] == 0) return kInf;
    sum += a[i] * std::log(a[i] / b[i]);
  }
  return sum;
}

struct Measures {
  Real kl_pq, kl_qp, js_bits, hellinger, total_variation, l_inf, chi2;
  // Two-sample G-test of homogeneity on the raw counts (2 x K table): statistic, degrees of
  // freedom (occupied bins - 1) and the textbook sum of |terms| as its rounding scale.
  Real g_statistic, g_degrees_of_freedom, g_scale;
  // Sum of |terms| of KL(P||Q) and KL(Q||P): the scale against which rounding is judged when the
  // divergence itself is tiny (the condition number of the sum).
  Real kl_pq_scale, kl_qp_scale;
};

inline Measures AllMeasures(const std::vector<double>& current,
                            const std::vector<double>& reference, double alpha) {
  const std::vector<Real> p = Shares(current, alpha);
  const std::vector<Real> q = Shares(reference, alpha);
  Measures m{};
  m.kl_pq = Kl(p, q);
  m.kl_qp = Kl(q, p);
  std::vector<Real> mid(p.size());
  Real js = 0, hell = 0, tv = 0, linf = 0, chi2 = 0;
  for (size_t i = 0; i < p.size(); ++i) {
    mid[i] = (p[i] + q[i]) / 2;
    const Real root_diff = std::sqrt(p[i]) - std::sqrt(q[i]);
    hell += root_diff * root_diff;
    const Real diff = std::fabs(p[i] - q[i]);
    tv += diff;
    linf = std::max(linf, diff);
    if (diff != 0) chi2 += q[i] == 0 ? kInf : diff * diff / q[i];
    if (p[i] > 0)
      m.kl_pq_scale += std::fabs(p[i] * std::log(p[i])) + std::fabs(p[i] * std::log(q[i]));
    if (q[i] > 0)
      m.kl_qp_scale += std::fabs(q[i] * std::log(q[i])) + std::fabs(q[i] * std::log(p[i]));
  }
  js = (Kl(p, mid) + Kl(q, mid)) / 2 / std::log(Real{2});
  m.js_bits = js;
  m.hellinger = std::sqrt(hell / 2);
  m.total_variation = tv / 2;
  m.l_inf = linf;
  m.chi2 = chi2;
  Real n_c = 0, n_r = 0;
  for (size_t i = 0; i < current.size(); ++i) {
    n_c += current[i];
    n_r += reference[i];
  }
  const Real n = n_c + n_r;
  Real g = 0, occupied = 0;
  for (size_t i = 0; i < current.size(); ++i) {
    const Real column = Real{current[i]} + reference[i];
    if (column == 0) continue;
    ++occupied;
    // Observed against expected under "both rows share one distribution".
    const Real expected_c = column * n_c / n, expected_r = column * n_r / n;
    if (current[i] > 0) {
      g += current[i] * std::log(current[i] / expected_c);
      m.g_scale += std::fabs(current[i] * std::log(current[i] / expected_c));
    }
    if (reference[i] > 0) {
      g += reference[i] * std::log(reference[i] / expected_r);
      m.g_scale += std::fabs(reference[i] * std::log(reference[i] / expected_r));
    }
  }
  m.g_statistic = 2 * g;
  m.g_scale *= 2;
  m.g_degrees_of_freedom = occupied - 1;
  return m;
}

inline Real GaussianKl(const std::vector<double>& m1, const std::vector<double>& v1,
                       const std::vector<double>& m2, const std::vector<double>& v2) {
  Real sum = 0;
  for (size_t i = 0; i < m1.size(); ++i) {
    const Real ratio = Real{v1[i]} / Real{v2[i]};
    const Real mean_diff = Real{m1[i]} - Real{m2[i]};
    // log1p keeps this accurate enough in long double for nearly equal variances.
    sum += (ratio - 1 - std::log1p(ratio - 1)) + mean_diff * mean_diff / v2[i];
  }
  return sum / 2;
}

struct Estimator {
  Real mean, standard_error;
};
struct PolicyEstimates {
  Estimator k1, k2, k3;
};

inline PolicyEstimates PolicyKl(const std::vector<double>& log_p_current,
                                const std::vector<double>& log_p_reference) {
  const size_t n = log_p_current.size();
  std::vector<Real> k1(n), k2(n), k3(n);
  for (size_t i = 0; i < n; ++i) {
    const Real log_r = Real{log_p_reference[i]} - Real{log_p_current[i]};
    k1[i] = -log_r;
    k2[i] = log_r * log_r / 2;
    k3[i] = std::expm1(log_r) - log_r;
  }
  auto summarize = [n](const std::vector<Real>& k) {
    Real mean = 0;
    for (Real x : k) mean += x;
    mean /= n;
    Real squares = 0;
    for (Real x : k) squares += (x - mean) * (x - mean);
    const Real se = n < 2 ? kInf : std::sqrt(squares / (n - 1) / n);
    return Estimator{mean, se};
  };
  return PolicyEstimates{summarize(k1), summarize(k2), summarize(k3)};
}

// Bucket of x in the numeric layout described in binning.h.
inline uint32_t BinIndex(const std::vector<double>& edges, double x) {
  if (std::isnan(x)) return static_cast<uint32_t>(edges.size() + 1);
  return static_cast<uint32_t>(std::upper_bound(edges.begin(), edges.end(), x) - edges.begin());
}

}  // namespace kldrift::kernels::oracle

#endif  // KLDRIFT_SERVER_KERNELS_TESTING_SCALAR_ORACLE_H_
