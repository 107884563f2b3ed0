#include "server/kernels/chi_squared.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

namespace kldrift::kernels {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kEpsilon = std::numeric_limits<double>::epsilon();
constexpr double kLog2Pi = 1.8378770664093454835606594728112353;

// From here up, the seven Stirling terms kept give stirlerr(a) to ~3e-17
// absolute; below it the direct form loses nothing, as its logs are small.
constexpr double kStirlingMinA = 10.0;

// exp() below this is 0 even as a subnormal (the least is about e^-744.4).
constexpr double kLogSmallestSubnormal = -745.2;

// Lentz's method swaps exact zeros for this so that it can divide by them.
constexpr double kLentzTiny = std::numeric_limits<double>::min() / kEpsilon;

// Near x = a both expansions need O(sqrt(a)) terms (measured: up to
// 8 sqrt(a) for the series, about sqrt(a) for the fraction), so the cap grows
// with sqrt(a) and is not reached below a ~ 1e14. The ceiling only bounds the
// running time beyond that, where the partial result is the best estimate.
int64_t MaxIterations(double a) {
  constexpr double kBase = 100000.0;
  constexpr double kCeiling = 1e8;
  return static_cast<int64_t>(std::min(kBase + 50.0 * std::sqrt(a), kCeiling));
}

// stirlerr(a) = lgamma(a) - ((a - 1/2) log(a) - a + log(2 pi) / 2), by its
// asymptotic series: subtracting the Stirling terms from lgamma(a) would leave
// the error of lgamma(a) ~ a log(a), ~1e-9 at a ~ 5e5.
// REQUIRES: a >= kStirlingMinA.
double StirlingError(double a) {
  // B_{2k} / (2k (2k - 1)) for k = 1..7.
  constexpr double kS1 = 1.0 / 12.0;
  constexpr double kS2 = 1.0 / 360.0;
  constexpr double kS3 = 1.0 / 1260.0;
  constexpr double kS4 = 1.0 / 1680.0;
  constexpr double kS5 = 1.0 / 1188.0;
  constexpr double kS6 = 691.0 / 360360.0;
  constexpr double kS7 = 1.0 / 156.0;
  const double z = 1.0 / (a * a);
  return (kS1 - (kS2 - (kS3 - (kS4 - (kS5 - (kS6 - kS7 * z) * z) * z) * z) * z) * z) / a;
}

// a (t - log1p(t)) with t = x / a - 1, i.e. x - a - a log(x / a) >= 0 (bd0 in
// Loader's "Fast and accurate computation of binomial probabilities"). Near
// x = a the two terms cancel, and the rounding of x / a alone costs
// a * eps / 2 absolutely (~5e-13 relative in the result at a ~ 1e4), so for x
// within a factor of 3 of a it is summed as a series in v = (a - x) / (a + x),
// whose later terms are at most |v| (1 + v) / 3 <= 1/4 of the leading one.
// REQUIRES: a > 0, x > 0.
double Deviance(double a, double x) {
  const double diff = x - a;
  const double v = -diff / (x + a);
  if (std::fabs(v) < 0.5) {
    // x - a - a log(x / a) = (a - x) v + 2 a sum_{j >= 1} v^(2j+1) / (2j+1),
    // which with v^2 < 1/4 converges in ~26 terms. The sum is kept apart so
    // that only one addition rounds at the full magnitude.
    const double leading = diff * diff / (x + a);
    double power = 2.0 * a * v;
    const double v2 = v * v;
    double correction = 0.0;
    for (int j = 1; j < 64; ++j) {
      power *= v2;
      const double term = power / (2 * j + 1);
      correction += term;
      if (std::fabs(term) <= 0.25 * kEpsilon * std::fabs(correction)) break;
    }
    return leading + correction;
  }
  // Here x - a and a log(x / a) differ by at least 40% of the larger, so this
  // loses about a bit. log(x / a), not log1p(t): for x << a, t rounds to -1.
  return diff - a * std::log(x / a);
}

// log(x^a e^-x / Gamma(a)) for the continued fraction and
// log(x^a e^-x / Gamma(a + 1)) for the series.
struct LogPrefactors {
  double over_gamma_a;
  double over_gamma_a_plus_1;
};

LogPrefactors ComputeLogPrefactors(double a, double x) {
  if (a < kStirlingMinA) {
    // tgamma, not lgamma: glibc's lgamma writes the global signgam, a data
    // race between threads. Gamma(a + 1), in [0.88, 3.7e6] here, stays finite
    // for tiny a, where Gamma(a) ~ 1/a would overflow.
    const double log_gamma_a_plus_1 = std::log(std::tgamma(a + 1.0));
    const double common = a * std::log(x) - x - log_gamma_a_plus_1;
    return {common + std::log(a), common};
  }
  // Saddle-point (Loader) form. As Gamma(a) is
  //   sqrt(2 pi) a^(a - 1/2) e^-a e^stirlerr(a),
  //   log(x^a e^-x / Gamma(a)) = -bd0 + log(a / (2 pi)) / 2 - stirlerr(a),
  // free of the cancellation between terms of size a log(a) that costs the
  // direct form ~1e-9 at a ~ 5e5. The small terms are added first so that the
  // ~700 exponent near underflow is rounded once (each costs ~6e-14 relative).
  const double stirling_error = StirlingError(a);
  const double half_log_a = 0.5 * std::log(a);
  const double deviance = Deviance(a, x);
  return {(half_log_a - 0.5 * kLog2Pi - stirling_error) - deviance,
          (-half_log_a - 0.5 * kLog2Pi - stirling_error) - deviance};
}

// P(a, x) = x^a e^-x / Gamma(a + 1) sum_{n >= 0} x^n / ((a + 1) ... (a + n)).
// For x < a + 1 the terms decrease, and being positive they cannot cancel.
double LowerSeries(double a, double x, double log_prefactor) {
  const int64_t max_iterations = MaxIterations(a);
  double term = 1.0;
  double sum = 1.0;
  for (int64_t n = 1; n <= max_iterations; ++n) {
    term *= x / (a + static_cast<double>(n));
    sum += term;
    if (term <= 0.5 * kEpsilon * sum) break;
  }
  return std::exp(log_prefactor) * sum;
}

// Q(a, x) = x^a e^-x / Gamma(a) times the continued fraction
//   1 / (x + 1 - a - 1 (1 - a) / (x + 3 - a - 2 (2 - a) / (x + 5 - a - ...))),
// by the modified Lentz method. For x >= a + 1 every partial denominator is
// >= 1, which keeps the recurrence stable.
double UpperContinuedFraction(double a, double x, double log_prefactor) {
  const int64_t max_iterations = MaxIterations(a);
  // Denominators from x - a, not by repeated += 2, so each is rounded once.
  const double x_minus_a = x - a;
  double c = 1.0 / kLentzTiny;
  double d = 1.0 / (x_minus_a + 1.0);
  double fraction = d;
  for (int64_t i = 1; i <= max_iterations; ++i) {
    const double di = static_cast<double>(i);
    const double numerator = di * (a - di);
    const double denominator = x_minus_a + (2.0 * di + 1.0);
    d = numerator * d + denominator;
    if (std::fabs(d) < kLentzTiny) d = kLentzTiny;
    c = denominator + numerator / c;
    if (std::fabs(c) < kLentzTiny) c = kLentzTiny;
    d = 1.0 / d;
    const double delta = c * d;
    fraction *= delta;
    if (std::fabs(delta - 1.0) <= kEpsilon) break;
  }
  return std::exp(log_prefactor) * fraction;
}

struct GammaPair {
  double p;
  double q;
};

GammaPair RegularizedGamma(double a, double x) {
  if (std::isnan(a) || std::isnan(x) || a <= 0 || x < 0) return {kNaN, kNaN};
  if (x == 0) return {0.0, 1.0};
  if (x == kInf) return {1.0, 0.0};
  if (a == kInf) return {0.0, 1.0};

  const LogPrefactors log_prefactors = ComputeLogPrefactors(a, x);
  // The series sum is below ~1.3 sqrt(a) + e^2 and the fraction below 1, so
  // past this margin the tail is 0 in double and iterating would be wasted.
  const double underflow_margin = 0.5 * std::log1p(a) + 2.0;

  if (x < a + 1.0) {
    if (log_prefactors.over_gamma_a_plus_1 + underflow_margin < kLogSmallestSubnormal) {
      return {0.0, 1.0};
    }
    const double p = std::clamp(LowerSeries(a, x, log_prefactors.over_gamma_a_plus_1), 0.0, 1.0);
    return {p, 1.0 - p};
  }
  if (log_prefactors.over_gamma_a + underflow_margin < kLogSmallestSubnormal) {
    return {1.0, 0.0};
  }
  const double q = std::clamp(UpperContinuedFraction(a, x, log_prefactors.over_gamma_a), 0.0, 1.0);
  return {1.0 - q, q};
}

}  // namespace

double RegularizedGammaP(double a, double x) { return RegularizedGamma(a, x).p; }

double RegularizedGammaQ(double a, double x) { return RegularizedGamma(a, x).q; }

double ChiSquaredSurvival(double statistic, double degrees_of_freedom) {
  if (std::isnan(degrees_of_freedom) || degrees_of_freedom <= 0 || std::isnan(statistic)) {
    return kNaN;
  }
  if (statistic <= 0) return 1.0;
  if (statistic == kInf) return 0.0;
  return RegularizedGammaQ(0.5 * degrees_of_freedom, 0.5 * statistic);
}

}  // namespace kldrift::kernels
