#include "server/kernels/gaussian.h"

#include <cmath>
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

TEST_P(GaussianTest, IdenticalDistributionsGiveZero) {
  const std::vector<double> mean = {1, 2, 3, 4, 5}, var = {0.1, 1, 10, 100, 1000};
  const GaussianKlPair got =
      DiagonalGaussianKl(mean.data(), var.data(), mean.data(), var.data(), 5);
  EXPECT_EQ(got.forward, 0.0);
  EXPECT_EQ(got.reverse, 0.0);
}

}  // namespace
}  // namespace kldrift::kernels
