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

// From here up the Stirling series for stirlerr(a) is accurate to ~3e-17
// absolute with the terms we keep; below it lgamma-style evaluation loses
// nothing, since the logs involved are small.
constexpr double kStirlingMinA = 10.0;

// exp() of anything below this is 0 even in subnormals (log of the smallest
// subnormal is -744.4).
constexpr double kLogSmallestSubnormal = -745.2;

// Lentz's method replaces exact zeros in the recurrence with this so it can
// divide by them.
constexpr double kLentzTiny = std::numeric_limits<double>::min() / kEpsilon;

// Both expansions need O(sqrt(a)) terms when x is near a (measured: <= 8
// sqrt(a) for the series, ~sqrt(a) for the fraction), so the cap scales with
// sqrt(a), and is never reached below a ~ 1e14. The ceiling only bounds the
// running time beyond that; there the partial result is returned as the best
// estimate available.
int64_t MaxIterations(double a) {
  constexpr double kBase = 100000.0;
  constexpr double kCeiling = 1e8;
  return static_cast<int64_t>(std::min(kBase + 50.0 * std::sqrt(a), kCeiling));
}

// stirlerr(a) = lgamma(a) - ((a - 1/2) log(a) - a + log(2 pi) / 2), by its
// asymptotic series. Subtracting the Stirling terms from lgamma(a) would lose
// about log10(a log a) digits, which for a ~ 5e5 leaves the prefactor with only
// ~1e-9 relative accuracy. REQUIRES: a >= kStirlingMinA.
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
  return (kS1 -
          (kS2 - (kS3 - (kS4 - (kS5 - (kS6 - kS7 * z) * z) * z) * z) * z) * z) /
         a;
}

// a * (t - log1p(t)) with t = x / a - 1, i.e. x - a - a log(x / a) >= 0 ("bd0"
// in Loader's binomial-density paper). Near x = a the two terms cancel, and
// even a 1-ulp error in x / a costs a * eps / 2 absolute, ~5e-13 of relative
// accuracy in the result at a ~ 1e4. So within a factor of 3 of a it is summed
// as a series in v = (a - x) / (a + x) instead, whose leading term is exact up
// to rounding and whose later terms are at most |v| (1 + v) / 3 <= 1/4 of it.
// REQUIRES: a > 0, x > 0.
double Deviance(double a, double x) {
  const double diff = x - a;
  const double v = -diff / (x + a);
  if (std::fabs(v) < 0.5) {
    // x - a - a log(x / a) = (a - x) v + 2 a sum_{j >= 1} v^(2j+1) / (2j+1);
    // with v^2 < 1/4 the sum has converged to double precision within ~26
    // terms. The correction is summed on its own so that only one addition
    // rounds at the full magnitude.
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
  // Here x - a and a log(x / a) differ by at least 40% of the larger, so the
  // direct form loses about a bit; log(x / a) rather than log1p(t) keeps x << a
  // accurate where t would round to -1.
  return diff - a * std::log(x / a);
}

// Logs of the prefactors x^a e^-x / Gamma(a) (for the continued fraction) and
// x^a e^-x / Gamma(a + 1) (for the series).
struct LogPrefactors {
  double over_gamma_a;
  double over_gamma_a_plus_1;
};

LogPrefactors ComputeLogPrefactors(double a, double x) {
  if (a < kStirlingMinA) {
    // tgamma rather than lgamma: glibc's lgamma writes the global signgam, a
    // data race between threads. Gamma(a + 1) is in [0.88, 3.7e6] here and
    // keeps tiny a finite, where Gamma(a) is ~1/a and would overflow.
    const double log_gamma_a_plus_1 = std::log(std::tgamma(a + 1.0));
    const double common = a * std::log(x) - x - log_gamma_a_plus_1;
    return {common + std::log(a), common};
  }
  // Saddle-point (Loader) form: with Gamma(a) = sqrt(2 pi) a^(a - 1/2) e^-a
  // e^stirlerr(a), log(x^a e^-x / Gamma(a)) = -a (t - log1p(t)) + log(a / (2
  // pi)) / 2 - stirlerr(a). Evaluating a log(x) - x - lgamma(a) instead
  // subtracts numbers of size ~a log(a) and would keep only ~1e-10 relative
  // accuracy at a ~ 5e5. The small terms are combined first so the large -a (t
  // - log1p(t)) meets a single rounding: near underflow each rounding of a ~700
  // exponent costs ~6e-14 relative in the result.
  const double stirling_error = StirlingError(a);
  const double half_log_a = 0.5 * std::log(a);
  const double deviance = Deviance(a, x);
  return {(half_log_a - 0.5 * kLog2Pi - stirling_error) - deviance,
          (-half_log_a - 0.5 * kLog2Pi - stirling_error) - deviance};
}

// P(a, x) = x^a e^-x / Gamma(a + 1) * sum_{n >= 0} x^n / ((a + 1) ... (a + n)).
// For x < a + 1 every term ratio x / (a + n) is below 1, so the terms decrease
// and the sum is free of cancellation.
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

// Q(a, x) = x^a e^-x / Gamma(a) * 1 / (x + 1 - a - 1 (1 - a) / (x + 3 - a - 2
// (2 - a) / (x + 5 - a
// - ...))), evaluated by the modified Lentz method. For x >= a + 1 all partial
// denominators are
// >= 1, which keeps the recurrence stable.
double UpperContinuedFraction(double a, double x, double log_prefactor) {
  const int64_t max_iterations = MaxIterations(a);
  // Built from x - a rather than by repeated += 2 so each denominator carries a
  // single rounding.
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
  // The series sum is at most ~1.3 sqrt(a) + 1 and the continued fraction at
  // most 1, so a prefactor this small makes the tail 0 in double; skipping the
  // iteration also skips its cost.
  const double underflow_margin = 0.5 * std::log1p(a) + 2.0;

  if (x < a + 1.0) {
    if (log_prefactors.over_gamma_a_plus_1 + underflow_margin <
        kLogSmallestSubnormal) {
      return {0.0, 1.0};
    }
    const double p = std::clamp(
        LowerSeries(a, x, log_prefactors.over_gamma_a_plus_1), 0.0, 1.0);
    return {p, 1.0 - p};
  }
  if (log_prefactors.over_gamma_a + underflow_margin < kLogSmallestSubnormal)
    return {1.0, 0.0};
  const double q = std::clamp(
      UpperContinuedFraction(a, x, log_prefactors.over_gamma_a), 0.0, 1.0);
  return {1.0 - q, q};
}

}  // namespace

double RegularizedGammaP(double a, double x) {
  return RegularizedGamma(a, x).p;
}

double RegularizedGammaQ(double a, double x) {
  return RegularizedGamma(a, x).q;
}

double ChiSquaredSurvival(double statistic, double degrees_of_freedom) {
  if (std::isnan(degrees_of_freedom) || degrees_of_freedom <= 0 ||
      std::isnan(statistic)) {
    return kNaN;
  }
  if (statistic <= 0) return 1.0;
  if (statistic == kInf) return 0.0;
  return RegularizedGammaQ(0.5 * degrees_of_freedom, 0.5 * statistic);
}

}  // namespace kldrift::kernels
