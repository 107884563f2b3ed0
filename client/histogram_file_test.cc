#include "client/histogram_file.h"

#include <cstdio>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/core/bin_layout.h"

namespace kldrift {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

// Expects `result` to be INVALID_ARGUMENT with every one of `fragments` in its
// message.
template <typename T>
void ExpectInvalid(const absl::StatusOr<T>& result, const std::vector<std::string>& fragments) {
  ASSERT_FALSE(result.ok()) << "expected an error containing " << fragments.front();
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument) << result.status();
  for (const std::string& fragment : fragments) {
    EXPECT_THAT(std::string(result.status().message()), HasSubstr(fragment));
  }
}

HistogramData Numeric(std::vector<double> counts, std::vector<double> edges) {
  HistogramData data;
  data.counts = std::move(counts);
  data.edges = std::move(edges);
  return data;
}

HistogramData Categorical(std::vector<double> counts, std::vector<std::string> categories) {
  HistogramData data;
  data.counts = std::move(counts);
  data.categories = std::move(categories);
  return data;
}

HistogramData Bare(std::vector<double> counts) {
  HistogramData data;
  data.counts = std::move(counts);
  return data;
}

// --------------------------------------------------------------------------
// ParseHistogram: JSON.

TEST(ParseHistogramJsonTest, Edges) {
  absl::StatusOr<HistogramData> data =
      ParseHistogram(R"({"counts": [3, 10, 7], "edges": [0.0, 0.5, 1.0, 1.5]})");
  ASSERT_TRUE(data.ok()) << data.status();
  EXPECT_THAT(data->counts, ElementsAre(3, 10, 7));
  EXPECT_THAT(data->edges, ElementsAre(0.0, 0.5, 1.0, 1.5));
  EXPECT_THAT(data->categories, IsEmpty());
}

TEST(ParseHistogramJsonTest, Categories) {
  absl::StatusOr<HistogramData> data =
      ParseHistogram("  \n{\"counts\": [5, 2], \"categories\": [\"cat\", \"dog\"]}\n");
  ASSERT_TRUE(data.ok()) << data.status();
  EXPECT_THAT(data->counts, ElementsAre(5, 2));
  EXPECT_THAT(data->categories, ElementsAre("cat", "dog"));
  EXPECT_THAT(data->edges, IsEmpty());
}

TEST(ParseHistogramJsonTest, BareCounts) {
  absl::StatusOr<HistogramData> data = ParseHistogram(R"({"counts": [1, 2, 0, 3]})");
  ASSERT_TRUE(data.ok()) << data.status();
  EXPECT_THAT(data->counts, ElementsAre(1, 2, 0, 3));
  EXPECT_THAT(data->edges, IsEmpty());
  EXPECT_THAT(data->categories, IsEmpty());
}

TEST(ParseHistogramJsonTest, LargestExactCountIsAccepted) {
  absl::StatusOr<HistogramData> data = ParseHistogram(R"({"counts": [9007199254740992, 0]})");
  ASSERT_TRUE(data.ok()) << data.status();
  EXPECT_EQ(data->counts[0], 9007199254740992.0);
}

TEST(ParseHistogramJsonTest, NegativeCountNamesIndex) {
  ExpectInvalid(ParseHistogram(R"({"counts": [1, 2, -3]})"), {"counts[2]", "-3"});
}

TEST(ParseHistogramJsonTest, FractionalCountNamesIndex) {
  ExpectInvalid(ParseHistogram(R"({"counts": [1.5, 2]})"), {"counts[0]", "1.5"});
}

TEST(ParseHistogramJsonTest, CountAboveTwoToThe53NamesIndex) {
  // 2^53 + 2 is the next double after 2^53 (2^53 + 1 would round to 2^53).
  ExpectInvalid(ParseHistogram(R"({"counts": [1, 9007199254740994]})"), {"counts[1]", "2^53"});
  ExpectInvalid(ParseHistogram(R"({"counts": [1e300]})"), {"counts[0]"});
}

TEST(ParseHistogramJsonTest, NonFiniteStringsNameIndex) {
  ExpectInvalid(ParseHistogram(R"({"counts": [1, "NaN"]})"), {"counts[1]"});
  ExpectInvalid(ParseHistogram(R"({"counts": [1, 2, "Infinity"]})"), {"counts[2]"});
  ExpectInvalid(ParseHistogram(R"({"counts": ["-Infinity"]})"), {"counts[0]"});
}

TEST(ParseHistogramJsonTest, MissingOrEmptyCounts) {
  ExpectInvalid(ParseHistogram("{}"), {"\"counts\" is missing or empty"});
  ExpectInvalid(ParseHistogram(R"({"counts": []})"), {"\"counts\" is missing or empty"});
  ExpectInvalid(ParseHistogram(R"({"edges": [0, 1]})"), {"\"counts\""});
}

TEST(ParseHistogramJsonTest, BothEdgesAndCategories) {
  ExpectInvalid(ParseHistogram(R"({"counts": [1], "edges": [0, 1], "categories": ["a"]})"),
                {"both \"edges\" and \"categories\""});
}

TEST(ParseHistogramJsonTest, UnknownField) {
  ExpectInvalid(ParseHistogram(R"({"counts": [1, 2], "bins": [0, 1, 2]})"),
                {"invalid JSON", "bins"});
}

TEST(ParseHistogramJsonTest, MalformedJson) {
  ExpectInvalid(ParseHistogram(R"({"counts": [1, 2)"), {"invalid JSON"});
  ExpectInvalid(ParseHistogram(R"({"counts": [1, 2]} trailing)"), {"invalid JSON"});
  ExpectInvalid(ParseHistogram(R"({"counts": "three"})"), {"invalid JSON"});
}

// --------------------------------------------------------------------------
// ParseHistogram: CSV.

TEST(ParseHistogramCsvTest, PlainLines) {
  absl::StatusOr<HistogramData> data = ParseHistogram("4\n0\n6\n");
  ASSERT_TRUE(data.ok()) << data.status();
  EXPECT_THAT(data->counts, ElementsAre(4, 0, 6));
  EXPECT_THAT(data->edges, IsEmpty());
  EXPECT_THAT(data->categories, IsEmpty());
}

TEST(ParseHistogramCsvTest, HeaderCommentsAndBlankLines) {
  absl::StatusOr<HistogramData> data =
      ParseHistogram("# exported by a tool\n\ncount\n  1  \n\n# middle comment\n2\n\n");
  ASSERT_TRUE(data.ok()) << data.status();
  EXPECT_THAT(data->counts, ElementsAre(1, 2));
}

TEST(ParseHistogramCsvTest, TrailingCommaAndCrlf) {
  absl::StatusOr<HistogramData> data = ParseHistogram("count,\r\n12,\r\n3\r\n0,\r\n");
  ASSERT_TRUE(data.ok()) << data.status();
  EXPECT_THAT(data->counts, ElementsAre(12, 3, 0));
}

TEST(ParseHistogramCsvTest, NoTrailingNewline) {
  absl::StatusOr<HistogramData> data = ParseHistogram("7\n8");
  ASSERT_TRUE(data.ok()) << data.status();
  EXPECT_THAT(data->counts, ElementsAre(7, 8));
}

TEST(ParseHistogramCsvTest, NegativeCountNamesLine) {
  ExpectInvalid(ParseHistogram("count\n1\n-2\n"), {"line 3", "-2"});
}

TEST(ParseHistogramCsvTest, FractionalCountNamesLine) {
  ExpectInvalid(ParseHistogram("1\n2\n0.25\n"), {"line 3", "0.25"});
}

TEST(ParseHistogramCsvTest, CountAboveTwoToThe53NamesLine) {
  ExpectInvalid(ParseHistogram("1\n1e16\n"), {"line 2", "2^53"});
  ASSERT_TRUE(ParseHistogram("9007199254740992\n").ok());
}

TEST(ParseHistogramCsvTest, NonFiniteNamesLine) {
  ExpectInvalid(ParseHistogram("1\nNaN\n"), {"line 2"});
  ExpectInvalid(ParseHistogram("1\n2\nInfinity\n"), {"line 3"});
  ExpectInvalid(ParseHistogram("1\ninf\n"), {"line 2"});
}

TEST(ParseHistogramCsvTest, NonNumericLineAfterDataNamesLine) {
  ExpectInvalid(ParseHistogram("count\n1\n\nabc\n"), {"line 4", "abc", "not a number"});
  // A second header-like line is not a header.
  ExpectInvalid(ParseHistogram("a\nb\n1\n"), {"line 2", "\"b\""});
}

TEST(ParseHistogramCsvTest, CommentedLineNumbersStillCount) {
  ExpectInvalid(ParseHistogram("# c\n# c\n1\n-1\n"), {"line 4"});
}

TEST(ParseHistogramCsvTest, EmptyFile) {
  ExpectInvalid(ParseHistogram(""), {"no counts"});
  ExpectInvalid(ParseHistogram("\n\n  \n"), {"no counts"});
  ExpectInvalid(ParseHistogram("# only a comment\n"), {"no counts"});
  ExpectInvalid(ParseHistogram("count\n"), {"no counts"});
}

// --------------------------------------------------------------------------
// ParseGaussian.

TEST(ParseGaussianTest, Valid) {
  absl::StatusOr<GaussianData> data = ParseGaussian(R"({"mean": [0.1, -0.3], "var": [1.2, 0.8]})");
  ASSERT_TRUE(data.ok()) << data.status();
  EXPECT_THAT(data->mean, ElementsAre(0.1, -0.3));
  EXPECT_THAT(data->var, ElementsAre(1.2, 0.8));
}

TEST(ParseGaussianTest, DimensionMismatch) {
  ExpectInvalid(ParseGaussian(R"({"mean": [0, 1], "var": [1]})"),
                {"\"mean\" has 2 dimensions", "\"var\" has 1"});
}

TEST(ParseGaussianTest, MissingMean) {
  ExpectInvalid(ParseGaussian(R"({"var": [1]})"), {"\"mean\" is missing or empty"});
}

TEST(ParseGaussianTest, NonPositiveVariance) {
  ExpectInvalid(ParseGaussian(R"({"mean": [0, 0], "var": [1, 0]})"), {"var[1]"});
  ExpectInvalid(ParseGaussian(R"({"mean": [0], "var": [-2]})"), {"var[0]"});
}

TEST(ParseGaussianTest, NonFinite) {
  ExpectInvalid(ParseGaussian(R"({"mean": [0, "NaN"], "var": [1, 1]})"), {"mean[1]", "not finite"});
  ExpectInvalid(ParseGaussian(R"({"mean": ["Infinity"], "var": [1]})"), {"mean[0]"});
  ExpectInvalid(ParseGaussian(R"({"mean": [0], "var": ["Infinity"]})"), {"var[0]"});
  ExpectInvalid(ParseGaussian(R"({"mean": [0], "var": ["NaN"]})"), {"var[0]"});
}

TEST(ParseGaussianTest, MalformedAndUnknownField) {
  ExpectInvalid(ParseGaussian(R"({"mean": [0], "var": [1)"), {"invalid JSON"});
  ExpectInvalid(ParseGaussian(R"({"mean": [0], "var": [1], "cov": [1]})"), {"invalid JSON", "cov"});
}

// --------------------------------------------------------------------------
// ReadFile.

TEST(ReadFileTest, MissingFileIsNotFound) {
  const std::string path = testing::TempDir() + "/kldrift_no_such_file.json";
  std::remove(path.c_str());
  absl::StatusOr<std::string> text = ReadFile(path);
  ASSERT_FALSE(text.ok());
  EXPECT_EQ(text.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(text.status().message()), HasSubstr(path));
}

TEST(ReadFileTest, ReadsWholeFileBytes) {
  const std::string path = testing::TempDir() + "/kldrift_read_file_test.csv";
  const std::string contents("count\r\n1\r\n\0x\n", 13);
  {
    std::ofstream out(path, std::ios::binary);
    out << contents;
  }
  absl::StatusOr<std::string> text = ReadFile(path);
  std::remove(path.c_str());
  ASSERT_TRUE(text.ok()) << text.status();
  EXPECT_EQ(*text, contents);
}

// --------------------------------------------------------------------------
// LayOutReference.

TEST(LayOutReferenceTest, InteriorNumericCountsExpandWithZeroAutomaticBuckets) {
  absl::StatusOr<LaidOutHistogram> laid = LayOutReference(Numeric({3, 10, 7}, {0, 0.5, 1, 1.5}));
  ASSERT_TRUE(laid.ok()) << laid.status();
  EXPECT_EQ(laid->layout.kind(), BinLayout::Kind::kNumeric);
  EXPECT_EQ(laid->layout.size(), 6u);
  EXPECT_THAT(laid->layout.edges(), ElementsAre(0, 0.5, 1, 1.5));
  // underflow, three interior bins, overflow, NaN.
  EXPECT_THAT(laid->counts, ElementsAre(0, 3, 10, 7, 0, 0));
}

TEST(LayOutReferenceTest, FullNumericCountsAreKept) {
  absl::StatusOr<LaidOutHistogram> laid = LayOutReference(Numeric({1, 2, 3, 4, 5}, {0, 1, 2}));
  ASSERT_TRUE(laid.ok()) << laid.status();
  EXPECT_EQ(laid->layout.size(), 5u);
  EXPECT_THAT(laid->counts, ElementsAre(1, 2, 3, 4, 5));
}

TEST(LayOutReferenceTest, OtherNumericCountLengthsFail) {
  // 3 edges: 2 interior bins or 5 in the full layout.
  for (std::vector<double> counts :
       std::vector<std::vector<double>>{{1}, {1, 2, 3}, {1, 2, 3, 4}, {1, 2, 3, 4, 5, 6}}) {
    SCOPED_TRACE(counts.size());
    ExpectInvalid(LayOutReference(Numeric(counts, {0, 1, 2})),
                  {"3 edges make 2 bins", absl::StrCat("there are ", counts.size(), " counts")});
  }
}

TEST(LayOutReferenceTest, CategoricalCountsWithAndWithoutUnseen) {
  absl::StatusOr<LaidOutHistogram> laid = LayOutReference(Categorical({5, 2}, {"cat", "dog"}));
  ASSERT_TRUE(laid.ok()) << laid.status();
  EXPECT_EQ(laid->layout.kind(), BinLayout::Kind::kCategorical);
  EXPECT_EQ(laid->layout.size(), 3u);
  EXPECT_THAT(laid->counts, ElementsAre(5, 2, 0));

  laid = LayOutReference(Categorical({5, 2, 9}, {"cat", "dog"}));
  ASSERT_TRUE(laid.ok()) << laid.status();
  EXPECT_THAT(laid->counts, ElementsAre(5, 2, 9));
}

TEST(LayOutReferenceTest, OtherCategoricalCountLengthsFail) {
  ExpectInvalid(LayOutReference(Categorical({5}, {"cat", "dog"})), {"2 categories", "there are 1"});
  ExpectInvalid(LayOutReference(Categorical({5, 2, 1, 1}, {"cat", "dog"})),
                {"2 categories", "there are 4"});
}

TEST(LayOutReferenceTest, BareCountsArePreBinned) {
  absl::StatusOr<LaidOutHistogram> laid = LayOutReference(Bare({1, 0, 4}));
  ASSERT_TRUE(laid.ok()) << laid.status();
  EXPECT_EQ(laid->layout.kind(), BinLayout::Kind::kPreBinned);
  EXPECT_EQ(laid->layout.size(), 3u);
  EXPECT_THAT(laid->counts, ElementsAre(1, 0, 4));
}

TEST(LayOutReferenceTest, BadEdgesPropagateBinLayoutErrors) {
  ExpectInvalid(LayOutReference(Numeric({1, 2}, {0, 1, 1})), {"edges[2]", "strictly increasing"});
  ExpectInvalid(LayOutReference(Numeric({1, 2}, {0, 2, 1})), {"edges[2]", "strictly increasing"});
  ExpectInvalid(LayOutReference(Numeric({1}, {0})), {"at least 2 bin edges"});
}

TEST(LayOutReferenceTest, BadCategoriesPropagateBinLayoutErrors) {
  ExpectInvalid(LayOutReference(Categorical({1, 2}, {"a", "a"})), {"\"a\" appears twice"});
  ExpectInvalid(LayOutReference(Categorical({1, 2}, {"a", ""})), {"category 1", "empty"});
}

// --------------------------------------------------------------------------
// AlignToReference.

LaidOutHistogram NumericReference() {
  absl::StatusOr<LaidOutHistogram> laid = LayOutReference(Numeric({3, 10, 7}, {0, 0.5, 1, 1.5}));
  EXPECT_TRUE(laid.ok()) << laid.status();
  return *std::move(laid);
}

LaidOutHistogram CategoricalReference() {
  absl::StatusOr<LaidOutHistogram> laid =
      LayOutReference(Categorical({5, 2, 1}, {"cat", "dog", "eel"}));
  EXPECT_TRUE(laid.ok()) << laid.status();
  return *std::move(laid);
}

LaidOutHistogram PreBinnedReference() {
  absl::StatusOr<LaidOutHistogram> laid = LayOutReference(Bare({1, 2, 3}));
  EXPECT_TRUE(laid.ok()) << laid.status();
  return *std::move(laid);
}

TEST(AlignToReferenceTest, IdenticalEdges) {
  const LaidOutHistogram reference = NumericReference();
  absl::StatusOr<std::vector<double>> aligned =
      AlignToReference(reference, Numeric({1, 2, 3}, {0, 0.5, 1, 1.5}));
  ASSERT_TRUE(aligned.ok()) << aligned.status();
  EXPECT_THAT(*aligned, ElementsAre(0, 1, 2, 3, 0, 0));

  aligned = AlignToReference(reference, Numeric({4, 1, 2, 3, 5, 6}, {0, 0.5, 1, 1.5}));
  ASSERT_TRUE(aligned.ok()) << aligned.status();
  EXPECT_THAT(*aligned, ElementsAre(4, 1, 2, 3, 5, 6));
}

TEST(AlignToReferenceTest, DifferentEdgeValueNamesIndex) {
  ExpectInvalid(AlignToReference(NumericReference(), Numeric({1, 2, 3}, {0, 0.5, 1.25, 1.5})),
                {"edges[2]", "1.25", "frozen edges"});
}

TEST(AlignToReferenceTest, DifferentEdgeCount) {
  ExpectInvalid(AlignToReference(NumericReference(), Numeric({1, 2}, {0, 0.5, 1})),
                {"3 edges", "reference has 4"});
}

TEST(AlignToReferenceTest, WrongCountLengthWithMatchingEdges) {
  ExpectInvalid(AlignToReference(NumericReference(), Numeric({1, 2}, {0, 0.5, 1, 1.5})),
                {"there are 2 counts"});
}

TEST(AlignToReferenceTest, CategoriesMatchedByLabelInAnyOrder) {
  absl::StatusOr<std::vector<double>> aligned =
      AlignToReference(CategoricalReference(), Categorical({7, 4, 1}, {"eel", "cat", "dog"}));
  ASSERT_TRUE(aligned.ok()) << aligned.status();
  // Reference order: cat, dog, eel, <unseen>.
  EXPECT_THAT(*aligned, ElementsAre(4, 1, 7, 0));
}

TEST(AlignToReferenceTest, UnknownLabelsGoToUnseenBucket) {
  absl::StatusOr<std::vector<double>> aligned =
      AlignToReference(CategoricalReference(), Categorical({3, 6, 2}, {"dog", "yak", "ant"}));
  ASSERT_TRUE(aligned.ok()) << aligned.status();
  EXPECT_THAT(*aligned, ElementsAre(0, 3, 0, 8));
}

TEST(AlignToReferenceTest, ExplicitUnseenCountIsAdded) {
  absl::StatusOr<std::vector<double>> aligned =
      AlignToReference(CategoricalReference(), Categorical({3, 6, 10}, {"dog", "yak"}));
  ASSERT_TRUE(aligned.ok()) << aligned.status();
  EXPECT_THAT(*aligned, ElementsAre(0, 3, 0, 16));
}

TEST(AlignToReferenceTest, DuplicateLabelFails) {
  ExpectInvalid(
      AlignToReference(CategoricalReference(), Categorical({1, 2, 3}, {"cat", "dog", "cat"})),
      {"\"cat\" appears twice", "positions 0 and 2"});
}

TEST(AlignToReferenceTest, CategoricalCountLengthMismatch) {
  ExpectInvalid(AlignToReference(CategoricalReference(), Categorical({1}, {"cat", "dog"})),
                {"2 categories but 1 counts"});
  ExpectInvalid(AlignToReference(CategoricalReference(), Categorical({1, 2, 3, 4}, {"cat", "dog"})),
                {"2 categories but 4 counts"});
}

TEST(AlignToReferenceTest, BareCountsAgainstNumericReference) {
  const LaidOutHistogram reference = NumericReference();
  absl::StatusOr<std::vector<double>> aligned = AlignToReference(reference, Bare({1, 2, 3}));
  ASSERT_TRUE(aligned.ok()) << aligned.status();
  EXPECT_THAT(*aligned, ElementsAre(0, 1, 2, 3, 0, 0));

  aligned = AlignToReference(reference, Bare({9, 1, 2, 3, 8, 7}));
  ASSERT_TRUE(aligned.ok()) << aligned.status();
  EXPECT_THAT(*aligned, ElementsAre(9, 1, 2, 3, 8, 7));

  ExpectInvalid(AlignToReference(reference, Bare({1, 2, 3, 4})), {"there are 4 counts"});
}

TEST(AlignToReferenceTest, BareCountsAgainstCategoricalReference) {
  const LaidOutHistogram reference = CategoricalReference();
  absl::StatusOr<std::vector<double>> aligned = AlignToReference(reference, Bare({1, 2, 3}));
  ASSERT_TRUE(aligned.ok()) << aligned.status();
  EXPECT_THAT(*aligned, ElementsAre(1, 2, 3, 0));

  aligned = AlignToReference(reference, Bare({1, 2, 3, 4}));
  ASSERT_TRUE(aligned.ok()) << aligned.status();
  EXPECT_THAT(*aligned, ElementsAre(1, 2, 3, 4));

  ExpectInvalid(AlignToReference(reference, Bare({1, 2})), {"there are 2"});
}

TEST(AlignToReferenceTest, BareCountsAgainstPreBinnedReference) {
  const LaidOutHistogram reference = PreBinnedReference();
  absl::StatusOr<std::vector<double>> aligned = AlignToReference(reference, Bare({4, 5, 6}));
  ASSERT_TRUE(aligned.ok()) << aligned.status();
  EXPECT_THAT(*aligned, ElementsAre(4, 5, 6));

  ExpectInvalid(AlignToReference(reference, Bare({4, 5})), {"2 bins", "reference has 3"});
}

TEST(AlignToReferenceTest, MismatchedKindsFail) {
  ExpectInvalid(AlignToReference(CategoricalReference(), Numeric({1, 2, 3}, {0, 0.5, 1, 1.5})),
                {"numeric edges", "not numeric"});
  ExpectInvalid(AlignToReference(PreBinnedReference(), Numeric({1, 2, 3}, {0, 0.5, 1, 1.5})),
                {"numeric edges", "not numeric"});
  ExpectInvalid(AlignToReference(NumericReference(), Categorical({1, 2, 3}, {"a", "b", "c"})),
                {"categories", "not categorical"});
  ExpectInvalid(AlignToReference(PreBinnedReference(), Categorical({1, 2, 3}, {"a", "b", "c"})),
                {"categories", "not categorical"});
}

}  // namespace
}  // namespace kldrift
