#include "server/core/bin_layout.h"

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/kernels/testing/scalar_oracle.h"

namespace kldrift {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// Counts per bucket of `values` binned by `layout` in a single AddValues()
// call.
std::vector<double> Histogram(const BinLayout& layout, const std::vector<double>& values) {
  std::vector<double> counts(layout.size(), 0.0);
  layout.AddValues(values, absl::MakeSpan(counts));
  return counts;
}

// The same histogram built one value at a time with the long-double oracle's
// BinIndex.
std::vector<double> OracleHistogram(const std::vector<double>& edges,
                                    const std::vector<double>& values) {
  std::vector<double> counts(edges.size() + 2, 0.0);
  for (double v : values) counts[kernels::oracle::BinIndex(edges, v)] += 1;
  return counts;
}

// --- Numeric
// -----------------------------------------------------------------------------------

TEST(BinLayoutNumeric, SizeIsEdgesPlusTwo) {
  for (size_t num_edges : {2, 3, 4, 10, 1000}) {
    std::vector<double> edges(num_edges);
    for (size_t i = 0; i < num_edges; ++i) edges[i] = static_cast<double>(i) * 0.25 - 1.0;
    absl::StatusOr<BinLayout> layout = BinLayout::Numeric(edges);
    ASSERT_TRUE(layout.ok()) << layout.status();
    EXPECT_EQ(layout->kind(), BinLayout::Kind::kNumeric);
    EXPECT_EQ(layout->size(), num_edges + 2);
    EXPECT_EQ(layout->edges(), edges);
    EXPECT_TRUE(layout->categories().empty());
  }
}

TEST(BinLayoutNumeric, RejectsFewerThanTwoEdges) {
  for (const std::vector<double>& edges : {std::vector<double>{}, std::vector<double>{1.0}}) {
    absl::StatusOr<BinLayout> layout = BinLayout::Numeric(edges);
    ASSERT_FALSE(layout.ok());
    EXPECT_EQ(layout.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(layout.status().message(),
                AllOf(HasSubstr("at least 2"), HasSubstr(absl::StrCat("got ", edges.size()))));
  }
}

TEST(BinLayoutNumeric, RejectsNonFiniteEdgesNamingPositionAndValue) {
  struct Case {
    std::vector<double> edges;
    std::string position;
    std::string value;
  };
  const std::vector<Case> cases = {
      {{kNaN, 1.0, 2.0}, "edges[0]", "nan"},
      {{0.0, 1.0, kNaN}, "edges[2]", "nan"},
      {{0.0, kInf}, "edges[1]", "inf"},
      {{-kInf, 0.0, 1.0}, "edges[0]", "-inf"},
      {{0.0, 1.0, 2.0, -kInf}, "edges[3]", "-inf"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.position);
    absl::StatusOr<BinLayout> layout = BinLayout::Numeric(c.edges);
    ASSERT_FALSE(layout.ok());
    EXPECT_EQ(layout.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(
        layout.status().message(),
        AllOf(HasSubstr(absl::StrCat(c.position, " = ", c.value)), HasSubstr("not finite")));
  }
}

TEST(BinLayoutNumeric, RejectsEqualOrDecreasingEdgesNamingBoth) {
  struct Case {
    std::vector<double> edges;
    std::string offending;
    std::string previous;
  };
  const std::vector<Case> cases = {
      {{0.0, 1.0, 1.0, 2.0}, "edges[2] = 1", "edges[1] = 1"},
      {{0.0, 2.0, 1.0}, "edges[2] = 1", "edges[1] = 2"},
      {{5.0, -5.0}, "edges[1] = -5", "edges[0] = 5"},
      {{0.0, -0.0}, "edges[1] = -0", "edges[0] = 0"},  // -0 == 0: not strictly increasing.
      {{1.5, 2.5, 3.5, 4.5, 4.25}, "edges[4] = 4.25", "edges[3] = 4.5"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.offending);
    absl::StatusOr<BinLayout> layout = BinLayout::Numeric(c.edges);
    ASSERT_FALSE(layout.ok());
    EXPECT_EQ(layout.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(layout.status().message(), AllOf(HasSubstr(c.offending), HasSubstr(c.previous),
                                                 HasSubstr("strictly increasing")));
  }
}

TEST(BinLayoutNumeric, AcceptsAdjacentDoubles) {
  const double e0 = 1.0;
  const double e1 = std::nextafter(e0, kInf);
  absl::StatusOr<BinLayout> layout = BinLayout::Numeric({e0, e1});
  ASSERT_TRUE(layout.ok()) << layout.status();
  EXPECT_EQ(layout->size(), 4u);
  const std::vector<double> counts = Histogram(*layout, {std::nextafter(e0, -kInf), e0, e1});
  EXPECT_EQ(counts, (std::vector<double>{1, 1, 1, 0}));
}

TEST(BinLayoutNumeric, BinLabels) {
  absl::StatusOr<BinLayout> layout = BinLayout::Numeric({-1.5, 0.0, 2.25});
  ASSERT_TRUE(layout.ok()) << layout.status();
  ASSERT_EQ(layout->size(), 5u);
  EXPECT_EQ(layout->BinLabel(0), "< -1.5");
  EXPECT_EQ(layout->BinLabel(1), "[-1.5, 0)");
  EXPECT_EQ(layout->BinLabel(2), "[0, 2.25)");
  EXPECT_EQ(layout->BinLabel(3), ">= 2.25");
  EXPECT_EQ(layout->BinLabel(4), "NaN");
}

TEST(BinLayoutNumeric, BinLabelsWithTwoEdges) {
  absl::StatusOr<BinLayout> layout = BinLayout::Numeric({0.0, 1.0});
  ASSERT_TRUE(layout.ok()) << layout.status();
  ASSERT_EQ(layout->size(), 4u);
  EXPECT_EQ(layout->BinLabel(0), "< 0");
  EXPECT_EQ(layout->BinLabel(1), "[0, 1)");
  EXPECT_EQ(layout->BinLabel(2), ">= 1");
  EXPECT_EQ(layout->BinLabel(3), "NaN");
}

TEST(BinLayoutNumeric, AddValuesIsHalfOpenWithSpecialValues) {
  absl::StatusOr<BinLayout> layout = BinLayout::Numeric({0.0, 1.0, 2.0});
  ASSERT_TRUE(layout.ok()) << layout.status();
  // Buckets: 0 = (-inf, 0), 1 = [0, 1), 2 = [1, 2), 3 = [2, +inf], 4 = NaN.
  struct Case {
    double value;
    size_t bucket;
  };
  const std::vector<Case> cases = {
      {-kInf, 0},
      {-1e300, 0},
      {std::nextafter(0.0, -kInf), 0},
      {-0.0, 1},  // -0 == 0, so it is in [0, 1).
      {0.0, 1},
      {0.5, 1},
      {std::nextafter(1.0, -kInf), 1},
      {1.0, 2},
      {std::nextafter(2.0, -kInf), 2},
      {2.0, 3},
      {1e300, 3},
      {kInf, 3},
      {kNaN, 4},
      {-kNaN, 4},
  };
  for (const Case& c : cases) {
    std::vector<double> want(layout->size(), 0.0);
    want[c.bucket] = 1;
    EXPECT_EQ(Histogram(*layout, {c.value}), want) << "value " << c.value;
  }
}

TEST(BinLayoutNumeric, ValuesExactlyOnEdgesGoToTheBucketStartingThere) {
  const std::vector<double> edges = {-3.0, -0.125, 0.0, 1e-300, 7.0, 1e10};
  absl::StatusOr<BinLayout> layout = BinLayout::Numeric(edges);
  ASSERT_TRUE(layout.ok()) << layout.status();
  for (size_t i = 0; i < edges.size(); ++i) {
    std::vector<double> want(layout->size(), 0.0);
    want[i + 1] = 1;  // Edge i starts bucket i + 1 (the last edge starts the
                      // overflow bucket).
    EXPECT_EQ(Histogram(*layout, {edges[i]}), want) << "edge " << i;
    EXPECT_EQ(kernels::oracle::BinIndex(edges, edges[i]), i + 1);
  }
}

TEST(BinLayoutNumeric, CountsAccumulateAcrossCalls) {
  absl::StatusOr<BinLayout> layout = BinLayout::Numeric({0.0, 1.0});
  ASSERT_TRUE(layout.ok()) << layout.status();
  std::vector<double> counts = {10, 20, 30, 40};  // Existing counts are added to, not replaced.
  layout->AddValues({-1.0, 0.5}, absl::MakeSpan(counts));
  layout->AddValues({}, absl::MakeSpan(counts));
  layout->AddValues({0.25, 1.0, kNaN, kNaN}, absl::MakeSpan(counts));
  EXPECT_EQ(counts, (std::vector<double>{11, 22, 31, 42}));
}

TEST(BinLayoutNumeric, ManyValuesAcrossChunkBoundaries) {
  const std::vector<double> edges = {-2.0, -1.0, 0.0, 1.0, 2.0};
  absl::StatusOr<BinLayout> layout = BinLayout::Numeric(edges);
  ASSERT_TRUE(layout.ok()) << layout.status();
  std::mt19937_64 rng(511);
  std::uniform_real_distribution<double> uniform(-3.0, 3.0);
  for (size_t n : {0, 1, 511, 512, 513, 1024, 1025, 3 * 512 + 7, 100000}) {
    std::vector<double> values(n);
    for (double& v : values) v = uniform(rng);
    // Specials at the start, end and on both sides of the first chunk boundary.
    for (size_t position : {size_t{0}, size_t{511}, size_t{512}, n - 1}) {
      if (position < n) values[position] = position % 2 == 0 ? kNaN : kInf;
    }
    const std::vector<double> counts = Histogram(*layout, values);
    EXPECT_EQ(counts, OracleHistogram(edges, values)) << "n=" << n;
    double total = 0;
    for (double c : counts) total += c;
    EXPECT_EQ(total, static_cast<double>(n));
  }
}

TEST(BinLayoutNumeric, MatchesOracleBinIndexOnRandomValues) {
  std::mt19937_64 rng(2025);
  std::normal_distribution<double> normal;
  for (size_t num_edges : {2, 3, 4, 7, 8, 9, 15, 16, 17, 31, 100, 1000, 4097}) {
    SCOPED_TRACE(::testing::Message() << "num_edges=" << num_edges);
    std::vector<double> edges(num_edges);
    double edge = -4.0;
    for (double& e : edges) {
      e = edge;
      edge += 8.0 / num_edges * (0.25 + (rng() % 1000) / 1000.0);
    }
    absl::StatusOr<BinLayout> layout = BinLayout::Numeric(edges);
    ASSERT_TRUE(layout.ok()) << layout.status();
    std::vector<double> values(3001);
    for (size_t j = 0; j < values.size(); ++j) {
      switch (rng() % 8) {
        case 0:  // An exact edge.
          values[j] = edges[rng() % num_edges];
          break;
        case 1:  // Just below an edge.
          values[j] = std::nextafter(edges[rng() % num_edges], -kInf);
          break;
        case 2: {
          const double specials[] = {kNaN, kInf, -kInf, -0.0, 0.0};
          values[j] = specials[rng() % 5];
          break;
        }
        default:
          values[j] = normal(rng) * 3;
      }
    }
    // Batched, in chunks, and value by value.
    EXPECT_EQ(Histogram(*layout, values), OracleHistogram(edges, values));
    for (size_t j = 0; j < values.size(); j += 7) {
      const std::vector<double> one = Histogram(*layout, {values[j]});
      const uint32_t want = kernels::oracle::BinIndex(edges, values[j]);
      ASSERT_EQ(one[want], 1.0) << "value " << values[j];
    }
  }
}

// --- Categorical
// -------------------------------------------------------------------------------

TEST(BinLayoutCategorical, SizeLabelsAndCategoryBins) {
  absl::StatusOr<BinLayout> layout = BinLayout::Categorical({"red", "green", "blue"});
  ASSERT_TRUE(layout.ok()) << layout.status();
  EXPECT_EQ(layout->kind(), BinLayout::Kind::kCategorical);
  EXPECT_EQ(layout->size(), 4u);
  EXPECT_EQ(layout->categories(), (std::vector<std::string>{"red", "green", "blue"}));
  EXPECT_TRUE(layout->edges().empty());
  EXPECT_EQ(layout->BinLabel(0), "red");
  EXPECT_EQ(layout->BinLabel(1), "green");
  EXPECT_EQ(layout->BinLabel(2), "blue");
  EXPECT_EQ(layout->BinLabel(3), "<unseen>");
  EXPECT_EQ(layout->BinLabel(3), kUnseenCategoryLabel);

  EXPECT_EQ(layout->CategoryBin("red"), 0u);
  EXPECT_EQ(layout->CategoryBin("green"), 1u);
  EXPECT_EQ(layout->CategoryBin("blue"), 2u);
  // Unknown labels, including near misses, go to the unseen bucket.
  for (const char* unknown : {"purple", "Red", "red ", "", "<unseen>"}) {
    EXPECT_EQ(layout->CategoryBin(unknown), 3u) << unknown;
  }
}

TEST(BinLayoutCategorical, SingleCategory) {
  absl::StatusOr<BinLayout> layout = BinLayout::Categorical({"only"});
  ASSERT_TRUE(layout.ok()) << layout.status();
  EXPECT_EQ(layout->size(), 2u);
  EXPECT_EQ(layout->CategoryBin("only"), 0u);
  EXPECT_EQ(layout->CategoryBin("other"), 1u);
  EXPECT_EQ(layout->BinLabel(1), kUnseenCategoryLabel);
}

TEST(BinLayoutCategorical, ManyCategories) {
  std::vector<std::string> categories;
  for (int i = 0; i < 1000; ++i) categories.push_back(absl::StrCat("c", i));
  absl::StatusOr<BinLayout> layout = BinLayout::Categorical(categories);
  ASSERT_TRUE(layout.ok()) << layout.status();
  EXPECT_EQ(layout->size(), 1001u);
  for (size_t i = 0; i < categories.size(); ++i) {
    ASSERT_EQ(layout->CategoryBin(categories[i]), i);
    ASSERT_EQ(layout->BinLabel(i), categories[i]);
  }
  EXPECT_EQ(layout->CategoryBin("c1000"), 1000u);
}

TEST(BinLayoutCategorical, RejectsEmptyList) {
  absl::StatusOr<BinLayout> layout = BinLayout::Categorical({});
  ASSERT_FALSE(layout.ok());
  EXPECT_EQ(layout.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(layout.status().message(), HasSubstr("at least one category"));
}

TEST(BinLayoutCategorical, RejectsEmptyLabelNamingPosition) {
  for (size_t position : {0, 1, 3}) {
    std::vector<std::string> categories = {"a", "b", "c", "d"};
    categories[position] = "";
    absl::StatusOr<BinLayout> layout = BinLayout::Categorical(categories);
    ASSERT_FALSE(layout.ok());
    EXPECT_EQ(layout.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(layout.status().message(),
                AllOf(HasSubstr(absl::StrCat("category ", position)), HasSubstr("empty")));
  }
}

TEST(BinLayoutCategorical, RejectsDuplicateNamingLabelAndBothPositions) {
  absl::StatusOr<BinLayout> layout = BinLayout::Categorical({"a", "b", "c", "b"});
  ASSERT_FALSE(layout.ok());
  EXPECT_EQ(layout.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(layout.status().message(),
              AllOf(HasSubstr("\"b\""), HasSubstr("positions 1 and 3"), HasSubstr("unique")));

  absl::StatusOr<BinLayout> first = BinLayout::Categorical({"x", "x"});
  ASSERT_FALSE(first.ok());
  EXPECT_EQ(first.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(first.status().message(), AllOf(HasSubstr("\"x\""), HasSubstr("positions 0 and 1")));
}

// --- Pre-binned
// --------------------------------------------------------------------------------

TEST(BinLayoutPreBinned, SizeAndLabels) {
  for (size_t bins : {1, 2, 17, 100000}) {
    absl::StatusOr<BinLayout> layout = BinLayout::PreBinned(bins);
    ASSERT_TRUE(layout.ok()) << layout.status();
    EXPECT_EQ(layout->kind(), BinLayout::Kind::kPreBinned);
    EXPECT_EQ(layout->size(), bins);
    EXPECT_TRUE(layout->edges().empty());
    EXPECT_TRUE(layout->categories().empty());
    EXPECT_EQ(layout->BinLabel(0), "bin 0");
    EXPECT_EQ(layout->BinLabel(bins - 1), absl::StrCat("bin ", bins - 1));
  }
}

TEST(BinLayoutPreBinned, RejectsZeroBins) {
  absl::StatusOr<BinLayout> layout = BinLayout::PreBinned(0);
  ASSERT_FALSE(layout.ok());
  EXPECT_EQ(layout.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(layout.status().message(), HasSubstr("at least one bin"));
}

TEST(BinLayout, CopiesAreIndependentAndEquivalent) {
  absl::StatusOr<BinLayout> layout = BinLayout::Numeric({0.0, 1.0, 2.0});
  ASSERT_TRUE(layout.ok()) << layout.status();
  const BinLayout copy = *layout;
  const std::vector<double> values = {-1, 0, 0.5, 1, 1.5, 2, kNaN};
  EXPECT_EQ(Histogram(copy, values), Histogram(*layout, values));
  absl::StatusOr<BinLayout> categorical = BinLayout::Categorical({"a", "b"});
  ASSERT_TRUE(categorical.ok());
  const BinLayout moved = std::move(*categorical);
  EXPECT_EQ(moved.CategoryBin("b"), 1u);
  EXPECT_EQ(moved.CategoryBin("z"), 2u);
}

// Labels print edges in the shortest form that reads back exactly, so close
// edges stay distinct.
TEST(BinLayoutNumeric, LabelsOfCloseEdgesAreDistinctAndExact) {
  absl::StatusOr<BinLayout> layout = BinLayout::Numeric({1.0000001, 1.0000002, 0.1 + 0.2});
  ASSERT_FALSE(layout.ok());  // 0.3 < 1.0000002: not increasing.
  layout = BinLayout::Numeric({1.0000001, 1.0000002, 2.5});
  ASSERT_TRUE(layout.ok());
  EXPECT_EQ(layout->BinLabel(0), "< 1.0000001");
  EXPECT_EQ(layout->BinLabel(1), "[1.0000001, 1.0000002)");
  EXPECT_EQ(layout->BinLabel(3), ">= 2.5");
  EXPECT_NE(layout->BinLabel(1), layout->BinLabel(2));
}

TEST(BinLayout, EqualLayoutsShareTheirDataAndStayCorrect) {
  absl::StatusOr<BinLayout> a = BinLayout::Numeric({0.0, 0.5, 1.0});
  absl::StatusOr<BinLayout> b = BinLayout::Numeric({0.0, 0.5, 1.0});
  absl::StatusOr<BinLayout> other = BinLayout::Numeric({0.0, 0.5, 2.0});
  absl::StatusOr<BinLayout> negative_zero = BinLayout::Numeric({-0.0, 0.5, 1.0});
  ASSERT_TRUE(a.ok() && b.ok() && other.ok() && negative_zero.ok());
  EXPECT_TRUE(a->SharesDataWith(*b));
  EXPECT_FALSE(a->SharesDataWith(*other));
  EXPECT_FALSE(a->SharesDataWith(*negative_zero));  // Its labels differ: "< -0".
  EXPECT_EQ(negative_zero->BinLabel(0), "< -0");
  EXPECT_EQ(b->BinLabel(0), "< 0");
  const std::vector<double> values = {-1, 0.2, 0.7, 1.5, kNaN};
  EXPECT_EQ(Histogram(*b, values), Histogram(*a, values));
  EXPECT_EQ(Histogram(*other, values), std::vector<double>({1, 1, 2, 0, 1}));

  absl::StatusOr<BinLayout> c1 = BinLayout::Categorical({"ab", "c"});
  absl::StatusOr<BinLayout> c2 = BinLayout::Categorical({"ab", "c"});
  absl::StatusOr<BinLayout> c3 = BinLayout::Categorical({"a", "bc"});
  ASSERT_TRUE(c1.ok() && c2.ok() && c3.ok());
  EXPECT_TRUE(c1->SharesDataWith(*c2));
  EXPECT_FALSE(c1->SharesDataWith(*c3));
  EXPECT_EQ(c3->CategoryBin("bc"), 1u);
  EXPECT_EQ(c3->CategoryBin("ab"), 2u);

  absl::StatusOr<BinLayout> p1 = BinLayout::PreBinned(4);
  absl::StatusOr<BinLayout> p2 = BinLayout::PreBinned(4);
  absl::StatusOr<BinLayout> p3 = BinLayout::PreBinned(5);
  ASSERT_TRUE(p1.ok() && p2.ok() && p3.ok());
  EXPECT_TRUE(p1->SharesDataWith(*p2));
  EXPECT_FALSE(p1->SharesDataWith(*p3));
  EXPECT_EQ(p3->size(), 5u);
}

TEST(BinLayout, LayoutBuiltAfterEveryCopyDiedIsFresh) {
  const std::vector<double> edges = {10.0, 20.0, 30.0, 40.0};
  {
    absl::StatusOr<BinLayout> first = BinLayout::Numeric(edges);
    ASSERT_TRUE(first.ok());
  }
  absl::StatusOr<BinLayout> second = BinLayout::Numeric(edges);
  ASSERT_TRUE(second.ok());
  EXPECT_EQ(second->edges(), edges);
  EXPECT_EQ(second->BinLabel(2), "[20, 30)");
}

TEST(BinLayout, CachedLabelsAreTheLabels) {
  std::vector<double> edges;
  for (int i = 0; i <= 64; ++i) edges.push_back(i / 64.0);
  absl::StatusOr<BinLayout> small = BinLayout::Numeric(edges);
  ASSERT_TRUE(small.ok());
  std::string scratch;
  for (size_t bin = 0; bin < small->size(); ++bin) {
    EXPECT_EQ(small->CachedBinLabel(bin, scratch), small->BinLabel(bin)) << bin;
  }
  EXPECT_TRUE(scratch.empty());  // Interned: labels come from the layout.
  // Too large to intern: formatted on each call, into the scratch string.
  absl::StatusOr<BinLayout> large = BinLayout::PreBinned(BinLayout::kMaxInternedBins + 1);
  ASSERT_TRUE(large.ok());
  EXPECT_EQ(large->CachedBinLabel(4000, scratch), "bin 4000");
  EXPECT_EQ(scratch, "bin 4000");
  absl::StatusOr<BinLayout> categorical = BinLayout::Categorical({"x", "y"});
  ASSERT_TRUE(categorical.ok());
  EXPECT_EQ(categorical->CachedBinLabel(2, scratch), kUnseenCategoryLabel);
}

}  // namespace
}  // namespace kldrift
