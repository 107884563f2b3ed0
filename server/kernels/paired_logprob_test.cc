#include "server/kernels/paired_logprob.h"

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "hwy/tests/hwy_gtest.h"
#include "server/kernels/testing/scalar_oracle.h"

namespace kldrift::kernels {
namespace {

class PairedLogProbTest : public hwy::TestWithParamTarget {};
HWY_TARGET_INSTANTIATE_TEST_SUITE_P(PairedLogProbTest);

void ExpectNear(double got, long double want, double rel, double abs = 0) {
  EXPECT_LE(std::fabs(got - want), rel * std::fabs(want) + abs) << got << " vs " << (double)want;
}

// Token log-probs of a policy and a slightly shifted reference, as a PPO step would see them.
void MakeBatch(size_t n, double shift, std::mt19937_64& rng, std::vector<double>& log_p_current,
               std::vector<double>& log_p_reference) {
  std::uniform_real_distribution<double> unit(1e-6, 1.0);
  std::normal_distribution<double> noise(0.0, shift);
  log_p_current.resize(n);
  log_p_reference.resize(n);
  for (size_t i = 0; i < n; ++i) {
    log_p_current[i] = std::log(unit(rng));
    log_p_reference[i] = std::min(0.0, log_p_current[i] + noise(rng));
  }
}

TEST_P(PairedLogProbTest, MatchesOracle) {
  uint64_t seed = 1;
  for (size_t n : {2, 3, 7, 8, 9, 100, 1001, 100000}) {
    for (double shift : {1e-4, 0.05, 0.5, 3.0}) {
      std::mt19937_64 rng(seed++);
      std::vector<double> cur, ref;
      MakeBatch(n, shift, rng, cur, ref);
      const PolicyKlEstimates got = EstimatePolicyKl(cur.data(), ref.data(), n);
      const oracle::PolicyEstimates want = oracle::PolicyKl(cur, ref);
      SCOPED_TRACE(::testing::Message() << "n=" << n << " shift=" << shift);
      EXPECT_EQ(got.samples, n);
      // k1's mean is a sum of mixed signs; judge it against the typical term size.
      ExpectNear(got.k1.mean, want.k1.mean, 1e-12, 1e-13 * shift);
      ExpectNear(got.k1.standard_error, want.k1.standard_error, 1e-10);
      ExpectNear(got.k2.mean, want.k2.mean, 1e-12);
      ExpectNear(got.k2.standard_error, want.k2.standard_error, 1e-10);
      ExpectNear(got.k3.mean, want.k3.mean, 1e-12);
      ExpectNear(got.k3.standard_error, want.k3.standard_error, 1e-10);
      EXPECT_GE(got.k3.mean, 0.0);

      const PolicyKlSums sums = SumPolicyKl(cur.data(), ref.data(), n);
      EXPECT_EQ(sums.samples, static_cast<double>(n));
      ExpectNear(sums.k3 / n, want.k3.mean, 1e-12);
      ExpectNear(sums.k2 / n, want.k2.mean, 1e-12);
    }
  }
}

TEST_P(PairedLogProbTest, IdenticalPoliciesGiveZeroAndEveryK3IsNonNegative) {
  const std::vector<double> lp = {-0.1, -2.0, -0.7, -5.0, -0.01};
  const PolicyKlEstimates same = EstimatePolicyKl(lp.data(), lp.data(), lp.size());
  EXPECT_EQ(same.k1.mean, 0.0);
  EXPECT_EQ(same.k3.mean, 0.0);
  EXPECT_EQ(same.k3.standard_error, 0.0);
  // Tiny log-ratios go through the series branch: k3 ~ (log r)^2 / 2 > 0, not rounded to <= 0.
  const std::vector<double> ref = {-0.1 + 1e-9, -2.0 - 1e-9, -0.7, -5.0 + 1e-12, -0.01};
  const PolicyKlSums sums = SumPolicyKl(lp.data(), ref.data(), lp.size());
  EXPECT_GT(sums.k3, 0.0);
  ExpectNear(sums.k3, oracle::PolicyKl(lp, ref).k3.mean * 5, 1e-9);
}

TEST_P(PairedLogProbTest, SingleSampleHasInfiniteStandardError) {
  const double cur = -1.0, ref = -2.0;
  const PolicyKlEstimates got = EstimatePolicyKl(&cur, &ref, 1);
  EXPECT_DOUBLE_EQ(got.k1.mean, 1.0);
  EXPECT_EQ(got.k1.standard_error, std::numeric_limits<double>::infinity());
}

TEST_P(PairedLogProbTest, HugeLogRatioOverflowsToInfinityNotNaN) {
  const std::vector<double> cur = {-800.0, -1.0}, ref = {0.0, -1.0};
  const PolicyKlSums sums = SumPolicyKl(cur.data(), ref.data(), 2);
  EXPECT_EQ(sums.k3, std::numeric_limits<double>::infinity());
  EXPECT_DOUBLE_EQ(sums.k1, -800.0);
}

}  // namespace
}  // namespace kldrift::kernels
