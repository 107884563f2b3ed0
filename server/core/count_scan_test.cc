#include "server/core/count_scan.h"

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "hwy/targets.h"

namespace kldrift {
namespace {

// The definition, one value at a time in long double.
SmallCountScan Oracle(const std::vector<double>& values) {
  SmallCountScan scan;
  long double sum = 0;
  long double max = 0;
  for (double v : values) {
    if (!(v >= 0 && v < 2147483648.0 && std::floor(v) == v)) return SmallCountScan{};
    sum += v;
    max = std::max<long double>(max, v);
  }
  scan.small_counts = true;
  scan.sum = static_cast<double>(sum);
  scan.max = static_cast<double>(max);
  return scan;
}

// On every vector target Highway built and this CPU runs (ScanSmallCounts dispatches at run time).
void ExpectSameScan(const std::vector<double>& values) {
  const SmallCountScan want = Oracle(values);
  for (int64_t target : hwy::SupportedAndGeneratedTargets()) {
    SCOPED_TRACE(hwy::TargetName(target));
    hwy::SetSupportedTargetsForTest(target);
    const SmallCountScan got = ScanSmallCounts(values);
    hwy::SetSupportedTargetsForTest(0);
    ASSERT_EQ(got.small_counts, want.small_counts) << ::testing::PrintToString(values);
    if (want.small_counts) {
      EXPECT_EQ(got.sum, want.sum);
      EXPECT_EQ(got.max, want.max);
      EXPECT_FALSE(std::signbit(got.sum));  // A zero is +0.
      EXPECT_FALSE(std::signbit(got.max));
    }
  }
}

TEST(CountScanTest, EdgeValuesAtEveryPositionOfEveryLength) {
  const double kEdges[] = {0.0,
                           -0.0,
                           1.0,
                           63.0,
                           64.0,
                           2147483647.0,  // 2^31 - 1: the largest small count
                           2147483648.0,  // 2^31
                           4294967296.0,
                           -1.0,
                           0.5,
                           1.5,
                           2147483646.5,
                           std::numeric_limits<double>::denorm_min(),
                           std::nextafter(1.0, 2.0),
                           std::nan(""),
                           std::numeric_limits<double>::infinity(),
                           -std::numeric_limits<double>::infinity(),
                           1e300,
                           -2147483648.0};
  // Lengths around the vector widths (2, 4, 8 doubles) and their tails.
  for (size_t n = 1; n <= 19; ++n) {
    for (size_t at = 0; at < n; ++at) {
      for (double edge : kEdges) {
        std::vector<double> values(n, 3.0);
        values[at] = edge;
        ExpectSameScan(values);
      }
    }
  }
}

TEST(CountScanTest, RandomCountsMatchTheOracle) {
  std::mt19937_64 rng(20261124);
  std::uniform_int_distribution<int> length(0, 300);
  std::uniform_int_distribution<int64_t> count(0, (int64_t{1} << 31) - 1);
  std::uniform_int_distribution<int> small(0, 5);
  for (int round = 0; round < 2000; ++round) {
    std::vector<double> values(length(rng));
    for (double& v : values) {
      v = round % 2 == 0 ? static_cast<double>(small(rng)) : static_cast<double>(count(rng));
    }
    ExpectSameScan(values);
  }
}

TEST(CountScanTest, NoValuesAreSmallCountsSummingToZero) {
  const SmallCountScan scan = ScanSmallCounts({});
  EXPECT_TRUE(scan.small_counts);
  EXPECT_EQ(scan.sum, 0);
  EXPECT_EQ(scan.max, 0);
}

TEST(CountScanTest, TooManyValuesAreLeftToTheGeneralPath) {
  const std::vector<double> values(size_t{1} << 22, 1.0);
  EXPECT_FALSE(ScanSmallCounts(values).small_counts);
  const std::vector<double> fewer((size_t{1} << 22) - 1, 1.0);
  const SmallCountScan scan = ScanSmallCounts(fewer);
  EXPECT_TRUE(scan.small_counts);
  EXPECT_EQ(scan.sum, static_cast<double>(fewer.size()));
}

}  // namespace
}  // namespace kldrift
