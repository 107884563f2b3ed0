#include "server/kernels/gaussian.h"

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "hwy/tests/hwy_gtest.h"
#include "server/kernels/testing/scalar_oracle.h"

namespace kldrift::kernels {
namespace {

class GaussianTest : public hwy::TestWithParamTarget {};
HWY_TARGET_INSTANTIATE_TEST_SUITE_P(GaussianTest);

struct Params {
  std::vector<double> mean, var;
};

Params RandomGaussian(size_t d, std::mt19937_64& rng, double var_spread) {
  std::normal_distribution<double> normal;
  Params params{std::vector<double>(d), std::vector<double>(d)};
  for (size_t i = 0; i < d; ++i) {
    params.mean[i] = normal(rng);
    params.var[i] = std::exp(var_spread * normal(rng));
  }
  return params;
}

void ExpectNear(double got, long double want, double rel) {
  EXPECT_LE(std::fabs(got - want), rel * std::fabs(want) + 1e-300L)
      << got << " vs " << (double)want;
}

TEST_P(GaussianTest, MatchesOracleBothDirections) {
  uint64_t seed = 1;
  for (size_t d : {1, 2, 3, 7, 8, 9, 16, 33, 128, 1000}) {
    for (double spread : {0.0, 0.01, 1.0, 3.0}) {
      std::mt19937_64 rng(seed++);
      const Params a = RandomGaussian(d, rng, spread);
      const Params b = RandomGaussian(d, rng, spread);
      const GaussianKlPair got =
          DiagonalGaussianKl(a.mean.data(), a.var.data(), b.mean.data(), b.var.data(), d);
      ExpectNear(got.forward, oracle::GaussianKl(a.mean, a.var, b.mean, b.var), 1e-12);
      ExpectNear(got.reverse, oracle::GaussianKl(b.mean, b.var, a.mean, a.var), 1e-12);
    }
  }
}

// Nearly equal variances and means: the divergence is tiny but must not be lost to cancellation.
TEST_P(GaussianTest, NearlyEqualDistributionsKeepRelativeAccuracy) {
  for (double eps : {1e-2, 1e-4, 1e-6, 1e-8}) {
    const std::vector<double> mean1 = {0.0, 1.0, -2.0}, var1 = {1.0, 2.0, 0.5};
    const std::vector<double> mean2 = {0.0, 1.0, -2.0};
    const std::vector<double> var2 = {1.0 + eps, 2.0 * (1 - eps), 0.5 * (1 + 3 * eps)};
    const GaussianKlPair got =
        DiagonalGaussianKl(mean1.data(), var1.data(), mean2.data(), var2.data(), 3);
    ExpectNear(got.forward, oracle::GaussianKl(mean1, var1, mean2, var2), 1e-9);
    ExpectNear(got.reverse, oracle::GaussianKl(mean2, var2, mean1, var1), 1e-9);
    EXPECT_GT(got.forward, 0.0);
  }
}

TEST_P(GaussianTest, StandardNormalIsTheVaeRegulariser) {
  std::mt19937_64 rng(5);
  for (size_t d : {1, 5, 8, 64, 100}) {
    const Params a = RandomGaussian(d, rng, 1.0);
    const std::vector<double> zeros(d, 0.0), ones(d, 1.0);
    const GaussianKlPair got = DiagonalGaussianKlStandardNormal(a.mean.data(), a.var.data(), d);
    // The familiar VAE form: -1/2 sum(1 + log var - mean^2 - var).
    long double vae = 0;
    for (size_t i = 0; i < d; ++i) {
      vae += 1 + std::log((long double)a.var[i]) - (long double)a.mean[i] * a.mean[i] - a.var[i];
    }
    ExpectNear(got.forward, -vae / 2, 1e-12);
    ExpectNear(got.reverse, oracle::GaussianKl(zeros, ones, a.mean, a.var), 1e-12);
  }
}

// KL(N(m1, v1) || N(m2, v2)) in one dimension with log r = log v1 - log v2, valid however far r
// is from 1 (the oracle's log1p(r - 1) is not once r - 1 rounds to -1, even in long double).
long double FarKl(double m1, double v1, double m2, double v2) {
  const long double r = (long double)v1 / v2;
  const long double mean_diff = (long double)m1 - m2;
  return ((r - 1 - (std::log((long double)v1) - std::log((long double)v2))) +
          mean_diff * mean_diff / v2) /
         2;
}

void ExpectKl(double got, long double want) {
  if (want > std::numeric_limits<double>::max()) {
    EXPECT_EQ(got, std::numeric_limits<double>::infinity()) << (double)want;
  } else {
    ExpectNear(got, want, 1e-12);
  }
}

// Variances whose ratio leaves the double range, or is too small for r - 1 to keep its digits,
// or that are subnormal (1 / var overflows): the right value, or +inf past the double range, never
// NaN (found by tests/fuzz/ingest_fuzzer).
TEST_P(GaussianTest, ExtremeVarianceRatios) {
  const std::vector<double> var1 = {1e-20, 1.0, 1e-310, 3.3e-312, 1e-3, 1e-300, 1e300, 1e-17};
  const std::vector<double> var2 = {1.0, 1e-20, 1e-310, 1.0, 1.0, 1e300, 1e-300, 1.0};
  const std::vector<double> mean = {0.0, 0.5, 0.0, -1.0, 2.0, 0.0, 0.0, 1.0};
  const size_t d = var1.size();
  for (size_t i = 0; i < d; ++i) {
    const double m1 = mean[i], v1 = var1[i], m2 = 0.0, v2 = var2[i];
    const GaussianKlPair got = DiagonalGaussianKl(&m1, &v1, &m2, &v2, 1);
    ExpectKl(got.forward, FarKl(m1, v1, m2, v2));
    ExpectKl(got.reverse, FarKl(m2, v2, m1, v1));
    const GaussianKlPair standard = DiagonalGaussianKlStandardNormal(&m1, &v1, 1);
    ExpectKl(standard.forward, FarKl(m1, v1, 0.0, 1.0));
    ExpectKl(standard.reverse, FarKl(0.0, 1.0, m1, v1));
  }
  // Through the vector loop and the tail: a ratio past the double range makes the sum +inf.
  const std::vector<double> zeros(d, 0.0);
  const GaussianKlPair all =
      DiagonalGaussianKl(zeros.data(), var1.data(), zeros.data(), var2.data(), d);
  EXPECT_EQ(all.forward, std::numeric_limits<double>::infinity());
  EXPECT_EQ(all.reverse, std::numeric_limits<double>::infinity());
}

TEST_P(GaussianTest, IdenticalDistributionsGiveZero) {
  const std::vector<double> mean = {1, 2, 3, 4, 5}, var = {0.1, 1, 10, 100, 1000};
  const GaussianKlPair got =
      DiagonalGaussianKl(mean.data(), var.data(), mean.data(), var.data(), 5);
  EXPECT_EQ(got.forward, 0.0);
  EXPECT_EQ(got.reverse, 0.0);
}

}  // namespace
}  // namespace kldrift::kernels
