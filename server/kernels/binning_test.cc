#include "server/kernels/binning.h"

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "hwy/tests/hwy_gtest.h"
#include "server/kernels/testing/scalar_oracle.h"

namespace kldrift::kernels {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

class BinningTest : public hwy::TestWithParamTarget {};
HWY_TARGET_INSTANTIATE_TEST_SUITE_P(BinningTest);

std::vector<uint32_t> Bin(const std::vector<double>& edges, const std::vector<double>& values) {
  std::vector<double> padded(SearchEdgesSize(edges.size()));
  PadEdgesForSearch(edges.data(), edges.size(), padded.data());
  std::vector<uint32_t> out(values.size());
  BinIndices(values.data(), values.size(), padded.data(), edges.size(), out.data());
  return out;
}

TEST(BinningLayout, SearchSizes) {
  EXPECT_EQ(SearchEdgesSize(1), 1u);
  EXPECT_EQ(SearchEdgesSize(2), 3u);
  EXPECT_EQ(SearchEdgesSize(3), 3u);
  EXPECT_EQ(SearchEdgesSize(4), 7u);
  EXPECT_EQ(SearchEdgesSize(1000), 1023u);
  EXPECT_EQ(SearchLevels(1023), 10u);
}

TEST_P(BinningTest, HalfOpenBinsUnderflowOverflowAndNaN) {
  const std::vector<double> edges = {0.0, 1.0, 2.5};
  const std::vector<double> values = {-kInf, -1.0,  0.0,  0.5,  1.0, 2.4999,
                                      2.5,   1e300, kInf, kNaN, -0.0};
  const std::vector<uint32_t> want = {0, 0, 1, 1, 2, 2, 3, 3, 3, 4, 1};
  EXPECT_EQ(Bin(edges, values), want);
}

TEST_P(BinningTest, MatchesUpperBoundOracleOnRandomData) {
  std::mt19937_64 rng(3);
  std::normal_distribution<double> normal;
  for (size_t num_edges : {1, 2, 3, 7, 8, 63, 64, 65, 1000, 70000}) {
    std::vector<double> edges(num_edges);
    double edge = -3.0;
    for (double& e : edges) {
      e = edge;
      edge += 6.0 / num_edges * (0.5 + (rng() % 1000) / 1000.0);
    }
    std::vector<double> values(10007);
    for (double& v : values) v = normal(rng) * 2;
    // Exact edge hits and specials, in body and tail positions.
    values[0] = edges[0];
    values[values.size() - 1] = edges.back();
    values[5] = kNaN;
    values[values.size() - 2] = kInf;
    values[values.size() - 3] = std::nextafter(edges[num_edges / 2], -kInf);
    const std::vector<uint32_t> got = Bin(edges, values);
    for (size_t i = 0; i < values.size(); ++i) {
      ASSERT_EQ(got[i], oracle::BinIndex(edges, values[i]))
          << "value " << values[i] << " at " << i << " with " << num_edges << " edges";
    }
  }
}

TEST_P(BinningTest, EveryLengthOfInputIncludingTails) {
  const std::vector<double> edges = {-1, 0, 1};
  for (size_t n = 0; n < 40; ++n) {
    std::vector<double> values(n);
    for (size_t i = 0; i < n; ++i) values[i] = -2.0 + 0.1 * i;
    const std::vector<uint32_t> got = Bin(edges, values);
    for (size_t i = 0; i < n; ++i) {
      ASSERT_EQ(got[i], oracle::BinIndex(edges, values[i])) << n << " " << i;
    }
  }
}

}  // namespace
}  // namespace kldrift::kernels
