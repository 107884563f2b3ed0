#include "server/kernels/chi_squared.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "gtest/gtest.h"

namespace kldrift::kernels {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr long double kPi = 3.141592653589793238462643383279502884L;

// Below this the results live among subnormals, where no relative accuracy is
// promised.
constexpr long double kRelativeFloor = 1e-280L;
constexpr double kOracleTolerance = 1e-12;

// Checks |got - want| <= tolerance * want, printing the arguments so that a
// failure can be reproduced from the log alone. Wants below kRelativeFloor only
// need to be matched absolutely.
::testing::AssertionResult RelativelyNear(const char* function, double a, double x, double got,
                                          long double want, double tolerance) {
  const long double error = std::fabs(static_cast<long double>(got) - want);
  const long double allowed = tolerance * std::max(want, kRelativeFloor);
  if (got >= 0 && got <= 1 && error <= allowed) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << function << "(a=" << a << ", x=" << x << "): got " << got << ", want "
         << static_cast<double>(want) << ", relative error "
         << static_cast<double>(error / std::max(want, kRelativeFloor)) << " > " << tolerance;
}

// The oracles below are closed forms for integer and half-integer a, summed in
// long double; all their sums have positive terms, so they are accurate to
// ~1e-17 wherever they are used here.

// Q(n, x) = e^-x sum_{k < n} x^k / k!: the Poisson CDF identity.
long double IntegerQOracle(int n, long double x) {
  long double term = 1;
  long double sum = 1;
  for (int k = 1; k < n; ++k) {
    term *= x / k;
    sum += term;
  }
  return std::exp(-x) * sum;
}

// P(n, x) = e^-x sum_{k >= n} x^k / k!.
long double IntegerPOracle(int n, long double x) {
  long double term = 1;
  for (int k = 1; k <= n; ++k) term *= x / k;
  long double sum = 0;
  for (int k = n;; ++k) {
    sum += term;
    term *= x / (k + 1);
    if (k > x && term < 1e-25L * sum) break;
  }
  return std::exp(-x) * sum;
}

// Q(n + 1/2, x) = erfc(sqrt(x)) + e^-x sum_{k < n} x^(k+1/2) / Gamma(k + 3/2).
long double HalfIntegerQOracle(int n, long double x) {
  long double term = 2 * std::sqrt(x / kPi);  // x^(1/2) / Gamma(3/2).
  long double sum = 0;
  for (int k = 0; k < n; ++k) {
    sum += term;
    term *= x / (k + 1.5L);
  }
  return std::erfc(std::sqrt(x)) + std::exp(-x) * sum;
}

// P(n + 1/2, x) = e^-x sum_{k >= n} x^(k + 1/2) / Gamma(k + 3/2), the tail of
// the series whose full sum is erf(sqrt(x)); summing the tail avoids
// erf(sqrt(x)) - (...) cancelling.
long double HalfIntegerPOracle(int n, long double x) {
  long double term = 2 * std::sqrt(x / kPi);
  for (int k = 0; k < n; ++k) term *= x / (k + 1.5L);
  long double sum = 0;
  for (int k = n;; ++k) {
    sum += term;
    term *= x / (k + 1.5L);
    if (k > x && term < 1e-25L * sum) break;
  }
  return std::exp(-x) * sum;
}

// Points on both sides of the series / continued-fraction switch at x = a + 1,
// in both tails and away from a, limited to x <= 700 so that the oracles' e^-x
// stays far from long double limits.
std::vector<double> OracleGrid(double a) {
  std::vector<double> grid = {1e-8, 1e-4, 0.01, 0.1, 0.5, 1, 2, 5, 10, 30, 50, 100, 200, 400, 650};
  const double sd = std::sqrt(a);
  for (double s : {-6.0, -3.0, -1.0, -0.3, 0.0, 0.3, 1.0, 3.0, 6.0, 10.0, 20.0}) {
    grid.push_back(a + s * sd);
  }
  for (double f : {0.2, 0.5, 0.9, 1.1, 1.5, 2.0, 3.0}) grid.push_back(a * f);
  grid.push_back(a + 1);
  grid.push_back(std::nextafter(a + 1, 0.0));
  grid.push_back(a - 1);
  std::erase_if(grid, [](double x) { return !(x > 0 && x <= 700); });
  return grid;
}

TEST(RegularizedGammaTest, ExponentialCase) {
  for (double x : OracleGrid(1.0)) {
    const long double q = std::exp(-static_cast<long double>(x));
    EXPECT_TRUE(RelativelyNear("Q", 1, x, RegularizedGammaQ(1, x), q, kOracleTolerance));
    EXPECT_TRUE(RelativelyNear("P", 1, x, RegularizedGammaP(1, x),
                               -std::expm1(-static_cast<long double>(x)), kOracleTolerance));
  }
}

TEST(RegularizedGammaTest, HalfCaseIsErfc) {
  for (double x : OracleGrid(0.5)) {
    const long double root = std::sqrt(static_cast<long double>(x));
    EXPECT_TRUE(
        RelativelyNear("Q", 0.5, x, RegularizedGammaQ(0.5, x), std::erfc(root), kOracleTolerance));
    EXPECT_TRUE(
        RelativelyNear("P", 0.5, x, RegularizedGammaP(0.5, x), std::erf(root), kOracleTolerance));
  }
}

TEST(RegularizedGammaTest, IntegerShapesMatchPoissonSums) {
  for (int n : {1, 2, 3, 4, 5, 7, 9, 10, 11, 12, 17, 25, 33, 49, 50}) {
    for (double x : OracleGrid(n)) {
      EXPECT_TRUE(RelativelyNear("Q", n, x, RegularizedGammaQ(n, x), IntegerQOracle(n, x),
                                 kOracleTolerance));
      EXPECT_TRUE(RelativelyNear("P", n, x, RegularizedGammaP(n, x), IntegerPOracle(n, x),
                                 kOracleTolerance));
    }
  }
}

TEST(RegularizedGammaTest, HalfIntegerShapesMatchErfcSums) {
  for (int n : {0, 1, 2, 3, 4, 6, 9, 10, 11, 16, 24, 37, 49}) {
    const double a = n + 0.5;
    for (double x : OracleGrid(a)) {
      EXPECT_TRUE(RelativelyNear("Q", a, x, RegularizedGammaQ(a, x), HalfIntegerQOracle(n, x),
                                 kOracleTolerance));
      EXPECT_TRUE(RelativelyNear("P", a, x, RegularizedGammaP(a, x), HalfIntegerPOracle(n, x),
                                 kOracleTolerance));
    }
  }
}

TEST(RegularizedGammaTest, ContinuousAcrossSeriesFractionSwitch) {
  for (double a : {0.5, 3.0, 9.99, 10.0, 10.01, 1e3, 1e6 + 0.5}) {
    const double above = a + 1;
    const double below = std::nextafter(above, 0.0);
    // One ulp of x moves Q by density * ulp: ~1e-13 relative at a = 1e6.
    const long double la = a;
    const long double density =
        std::exp((la - 1) * std::log(static_cast<long double>(above)) - above - std::lgamma(la));
    const long double shift = density * (static_cast<long double>(above) - below);
    EXPECT_TRUE(RelativelyNear("Q", a, below, RegularizedGammaQ(a, below),
                               RegularizedGammaQ(a, above) + shift, 2e-14));
    EXPECT_TRUE(RelativelyNear("P", a, below, RegularizedGammaP(a, below),
                               RegularizedGammaP(a, above) - shift, 2e-14));
  }
}

// Large shapes, as for K up to 2^20 bins. The oracle there is the recurrence
// Q(a + 1, x) = Q(a, x) + x^a e^-x / Gamma(a + 1), whose last term is evaluated
// independently in long double; it only holds if the prefactor is right to the
// tested accuracy, and near x = a it pairs the continued fraction (for a) with
// the series (for a + 1).
constexpr double kLargeShapes[] = {1e3, 1e3 + 0.5, 1e5, 1e5 + 0.25, 5e5, 524287.5, 1e6};

std::vector<double> NearMode(double a) {
  std::vector<double> grid;
  for (double s = -8; s <= 8; s += 0.25) grid.push_back(a + s * std::sqrt(a));
  for (double d : {-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0}) grid.push_back(a + d);
  std::sort(grid.begin(), grid.end());
  return grid;
}

// Tails out to where the smaller of P and Q nears underflow.
std::vector<double> FarFromMode(double a) {
  std::vector<double> grid;
  for (double s : {-30.0, -20.0, -12.0, 12.0, 20.0, 30.0}) {
    grid.push_back(a + s * std::sqrt(a));
  }
  for (double f : {0.5, 0.8, 0.9, 0.95, 1.05, 1.1, 1.2, 1.5, 2.0}) {
    grid.push_back(a * f);
  }
  std::erase_if(grid, [](double x) { return !(x > 0); });
  return grid;
}

std::vector<double> AllLargeShapePoints(double a) {
  std::vector<double> grid = NearMode(a);
  for (double x : FarFromMode(a)) grid.push_back(x);
  return grid;
}

TEST(RegularizedGammaLargeShapeTest, PAndQSumToOne) {
  for (double a : kLargeShapes) {
    for (double x : NearMode(a)) {
      EXPECT_NEAR(RegularizedGammaP(a, x) + RegularizedGammaQ(a, x), 1.0, 1e-13)
          << "a=" << a << " x=" << x;
    }
  }
}

TEST(RegularizedGammaLargeShapeTest, MonotoneInX) {
  for (double a : kLargeShapes) {
    double previous_p = 0;
    double previous_q = 1;
    for (double x : NearMode(a)) {
      const double p = RegularizedGammaP(a, x);
      const double q = RegularizedGammaQ(a, x);
      EXPECT_GE(p, previous_p) << "a=" << a << " x=" << x;
      EXPECT_LE(q, previous_q) << "a=" << a << " x=" << x;
      previous_p = p;
      previous_q = q;
    }
  }
}

TEST(RegularizedGammaLargeShapeTest, CloseToWilsonHilferty) {
  for (double a : kLargeShapes) {
    // For X ~ Gamma(a), 2X is chi-squared with dof = 2a, and (2X / dof)^(1/3)
    // is nearly normal with mean 1 - 2 / (9 dof) and variance 2 / (9 dof).
    const double variance = 2 / (9 * 2 * a);
    for (double x : NearMode(a)) {
      const double z = (std::cbrt(x / a) - (1 - variance)) / std::sqrt(variance);
      const double approximation = 0.5 * std::erfc(z / std::sqrt(2.0));
      EXPECT_NEAR(RegularizedGammaQ(a, x), approximation, 1e-3) << "a=" << a << " x=" << x;
    }
  }
}

TEST(RegularizedGammaLargeShapeTest, SatisfiesRecurrence) {
  for (double a : kLargeShapes) {
    for (double x : AllLargeShapePoints(a)) {
      const long double la = a;
      const long double lx = x;
      const long double step = std::exp(la * std::log(lx) - lx - std::lgamma(la + 1));
      const long double q = RegularizedGammaQ(a, x);
      const long double p = RegularizedGammaP(a, x);
      EXPECT_TRUE(RelativelyNear("Q", a + 1, x, RegularizedGammaQ(a + 1, x), q + step, 1e-11));
      EXPECT_TRUE(RelativelyNear("P", a + 1, x, RegularizedGammaP(a + 1, x), p - step, 1e-11));
    }
  }
}

// Sum of e^-x x^k / k! over k in [first, last], started at the largest term (k
// nearest x) with its logarithm from lgammal, then by the ratio x / k outwards
// until the terms no longer matter.
long double PoissonRange(long double x, long double first, long double last) {
  const long double peak = std::clamp(std::floor(x), first, last);
  const long double log_peak_term = peak * std::log(x) - x - std::lgamma(peak + 1);
  long double sum = 0;
  long double term = 1;
  for (long double k = peak; k >= first; --k) {
    sum += term;
    term *= k / x;
    if (term < 1e-25L * sum) break;
  }
  term = 1;
  for (long double k = peak + 1; k <= last; ++k) {
    term *= x / k;
    sum += term;
    if (term < 1e-25L * sum) break;
  }
  return std::exp(log_peak_term) * sum;
}

TEST(RegularizedGammaLargeShapeTest, IntegerShapesMatchPoissonSums) {
  for (double a : kLargeShapes) {
    if (a != std::floor(a)) continue;
    // lgammal(a) ~ a log(a) is rounded to ~1e-19 of itself, which makes the
    // oracle itself uncertain by ~1e-12 relative at a = 1e6.
    const double tolerance = a <= 1e3 ? 1e-12 : 1e-11;
    for (double x : AllLargeShapePoints(a)) {
      EXPECT_TRUE(
          RelativelyNear("Q", a, x, RegularizedGammaQ(a, x), PoissonRange(x, 0, a - 1), tolerance));
      EXPECT_TRUE(RelativelyNear("P", a, x, RegularizedGammaP(a, x),
                                 PoissonRange(x, a, std::numeric_limits<long double>::max()),
                                 tolerance));
    }
  }
}

TEST(RegularizedGammaTest, NaNAndInvalidArguments) {
  for (double a : {kNaN, 0.0, -0.0, -1.0, -kInf}) {
    EXPECT_TRUE(std::isnan(RegularizedGammaP(a, 1))) << a;
    EXPECT_TRUE(std::isnan(RegularizedGammaQ(a, 1))) << a;
    EXPECT_TRUE(std::isnan(RegularizedGammaQ(a, 0))) << a;
  }
  for (double x : {kNaN, -1e-300, -1.0, -kInf}) {
    EXPECT_TRUE(std::isnan(RegularizedGammaP(2, x))) << x;
    EXPECT_TRUE(std::isnan(RegularizedGammaQ(2, x))) << x;
  }
}

TEST(RegularizedGammaTest, EndpointsOfX) {
  for (double a : {1e-300, 0.5, 1.0, 10.0, 1e6, 1e300}) {
    EXPECT_EQ(RegularizedGammaP(a, 0), 0) << a;
    EXPECT_EQ(RegularizedGammaQ(a, 0), 1) << a;
    EXPECT_EQ(RegularizedGammaP(a, kInf), 1) << a;
    EXPECT_EQ(RegularizedGammaQ(a, kInf), 0) << a;
  }
}

TEST(RegularizedGammaTest, DeepTailsUnderflowToZero) {
  EXPECT_EQ(RegularizedGammaQ(1, 800), 0);
  EXPECT_EQ(RegularizedGammaQ(0.5, 1e300), 0);
  EXPECT_EQ(RegularizedGammaQ(5e5, 1e6), 0);
  EXPECT_EQ(RegularizedGammaQ(1e6, 1.2e6), 0);
  EXPECT_EQ(RegularizedGammaP(1e6, 8e5), 0);
  EXPECT_EQ(RegularizedGammaP(5e5, 1), 0);
  EXPECT_EQ(RegularizedGammaP(1e6, 1e-300), 0);
  EXPECT_EQ(RegularizedGammaP(50, 1e-300), 0);
  EXPECT_EQ(RegularizedGammaP(1e300, 1), 0);
  EXPECT_EQ(RegularizedGammaQ(1e300, 1), 1);
  EXPECT_EQ(ChiSquaredSurvival(1e300, 1), 0);
  EXPECT_EQ(ChiSquaredSurvival(1e308, 1048575), 0);
}

TEST(RegularizedGammaTest, AlwaysWithinUnitInterval) {
  for (double a : {1e-300, 1e-10, 0.01, 0.5, 1.0, 9.999, 10.0, 77.7, 1e4, 5e5 + 0.5, 1e7}) {
    for (double x : {1e-300, 1e-20, 1e-3, 0.5, 1.0, 10.0, 1e3, 1e5, 5e5, 1e7, 1e9, 1e300}) {
      const double p = RegularizedGammaP(a, x);
      const double q = RegularizedGammaQ(a, x);
      EXPECT_TRUE(p >= 0 && p <= 1) << "a=" << a << " x=" << x << " P=" << p;
      EXPECT_TRUE(q >= 0 && q <= 1) << "a=" << a << " x=" << x << " Q=" << q;
    }
  }
}

TEST(ChiSquaredSurvivalTest, IsUpperGammaAtHalfArguments) {
  for (double dof : {1.0, 2.0, 3.5, 99.0, 1048575.0}) {
    for (double statistic : {0.01, 1.0, dof, 2 * dof, dof + 100}) {
      EXPECT_EQ(ChiSquaredSurvival(statistic, dof), RegularizedGammaQ(dof / 2, statistic / 2))
          << "statistic=" << statistic << " dof=" << dof;
    }
  }
}

TEST(ChiSquaredSurvivalTest, LowDegreesOfFreedomClosedForms) {
  for (double statistic : {1e-6, 0.1, 1.0, 3.84, 10.0, 100.0, 1000.0}) {
    const long double half = statistic / 2.0L;
    EXPECT_TRUE(RelativelyNear("ChiSquaredSurvival dof=2", 2, statistic,
                               ChiSquaredSurvival(statistic, 2), std::exp(-half),
                               kOracleTolerance));
    EXPECT_TRUE(RelativelyNear("ChiSquaredSurvival dof=1", 1, statistic,
                               ChiSquaredSurvival(statistic, 1), std::erfc(std::sqrt(half)),
                               kOracleTolerance));
  }
}

TEST(ChiSquaredSurvivalTest, EdgeCases) {
  for (double statistic : {0.0, -0.0, -1.0, -kInf}) {
    EXPECT_EQ(ChiSquaredSurvival(statistic, 3), 1) << statistic;
  }
  EXPECT_EQ(ChiSquaredSurvival(kInf, 3), 0);
  EXPECT_EQ(ChiSquaredSurvival(kInf, 1048575), 0);
  EXPECT_TRUE(std::isnan(ChiSquaredSurvival(kNaN, 3)));
  for (double dof : {kNaN, 0.0, -0.0, -2.0, -kInf}) {
    EXPECT_TRUE(std::isnan(ChiSquaredSurvival(1, dof))) << dof;
    EXPECT_TRUE(std::isnan(ChiSquaredSurvival(0, dof))) << dof;
    EXPECT_TRUE(std::isnan(ChiSquaredSurvival(kInf, dof))) << dof;
  }
}

}  // namespace
}  // namespace kldrift::kernels
