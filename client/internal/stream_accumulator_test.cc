#include "client/internal/stream_accumulator.h"

#include <cmath>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kldrift::client_internal {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr size_t kMaxBuffered = 100;

std::shared_ptr<const ReferenceBins> NumericBins(uint64_t version, std::vector<double> edges) {
  return ReferenceBins::Create(version, *BinLayout::Numeric(std::move(edges)));
}

std::shared_ptr<const ReferenceBins> CategoricalBins(uint64_t version,
                                                     std::vector<std::string> categories) {
  return ReferenceBins::Create(version, *BinLayout::Categorical(std::move(categories)));
}

TEST(ReferenceBinsTest, FromNumericProto) {
  v1::Reference reference;
  reference.set_version(3);
  reference.set_kind(v1::REFERENCE_KIND_NUMERIC);
  reference.mutable_numeric()->add_edges(0);
  reference.mutable_numeric()->add_edges(1);
  absl::StatusOr<std::shared_ptr<const ReferenceBins>> bins = ReferenceBins::FromProto(reference);
  ASSERT_TRUE(bins.ok()) << bins.status();
  EXPECT_EQ((*bins)->version(), 3u);
  EXPECT_EQ((*bins)->layout().size(), 4u);  // underflow, [0, 1), overflow, NaN
  EXPECT_EQ((*bins)->probability_width(), 0u);
}

TEST(ReferenceBinsTest, GaussianIsNotBinnedByTheClient) {
  v1::Reference reference;
  reference.set_kind(v1::REFERENCE_KIND_GAUSSIAN);
  absl::StatusOr<std::shared_ptr<const ReferenceBins>> bins = ReferenceBins::FromProto(reference);
  EXPECT_EQ(bins.status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(ReferenceBinsTest, MalformedBinsAreRejected) {
  v1::Reference reference;
  reference.set_kind(v1::REFERENCE_KIND_NUMERIC);
  reference.mutable_numeric()->add_edges(1);
  EXPECT_EQ(ReferenceBins::FromProto(reference).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(ReferenceBinsTest, SameBins) {
  EXPECT_TRUE(NumericBins(1, {0, 1})->SameBins(*NumericBins(2, {0, 1})));
  EXPECT_FALSE(NumericBins(1, {0, 1})->SameBins(*NumericBins(2, {0, 2})));
  EXPECT_FALSE(NumericBins(1, {0, 1})->SameBins(*CategoricalBins(2, {"a", "b"})));
  EXPECT_TRUE(CategoricalBins(1, {"a", "b"})->SameBins(*CategoricalBins(1, {"a", "b"})));
  EXPECT_FALSE(CategoricalBins(1, {"a", "b"})->SameBins(*CategoricalBins(1, {"b", "a"})));
}

TEST(ReferenceBinsTest, ExpandCounts) {
  auto numeric = NumericBins(1, {0, 1, 2});
  EXPECT_THAT(*numeric->ExpandCounts({3, 4}), ElementsAre(0, 3, 4, 0, 0));
  EXPECT_THAT(*numeric->ExpandCounts({1, 3, 4, 5, 6}), ElementsAre(1, 3, 4, 5, 6));
  EXPECT_THAT(std::string(numeric->ExpandCounts({1, 2, 3}).status().message()),
              HasSubstr("give 2"));
  EXPECT_EQ(numeric->ExpandCounts({1.5, 2}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(numeric->ExpandCounts({-1, 2}).status().code(), absl::StatusCode::kInvalidArgument);

  auto categorical = CategoricalBins(1, {"a", "b"});
  EXPECT_THAT(*categorical->ExpandCounts({3, 4}), ElementsAre(3, 4, 0));
  EXPECT_THAT(*categorical->ExpandCounts({3, 4, 5}), ElementsAre(3, 4, 5));

  auto pre_binned = ReferenceBins::Create(1, *BinLayout::PreBinned(2));
  EXPECT_THAT(*pre_binned->ExpandCounts({3, 4}), ElementsAre(3, 4));
  EXPECT_FALSE(pre_binned->ExpandCounts({3}).ok());
}

TEST(StreamAccumulatorTest, BinsNumericValuesWithTheServersLayout) {
  StreamAccumulator stream("score", kMaxBuffered);
  auto bins = NumericBins(7, {0, 1, 2});
  stream.SetBins(bins);
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  for (double v : {-1.0, 0.0, 0.5, 1.0, 2.0, 5.0, nan, inf, -inf}) stream.AddValue(v);
  ASSERT_TRUE(stream.HasDelta());
  std::optional<StreamDelta> delta = stream.TakeDelta();
  ASSERT_TRUE(delta.has_value());
  EXPECT_EQ(delta->signal, "score");
  EXPECT_EQ(delta->bins->version(), 7u);
  EXPECT_EQ(delta->type, StreamDelta::Type::kCounts);
  EXPECT_EQ(delta->observations, 9u);
  // The server's own binning of the same values.
  std::vector<double> expected(bins->layout().size(), 0.0);
  bins->layout().AddValues({-1.0, 0.0, 0.5, 1.0, 2.0, 5.0, nan, inf, -inf},
                           absl::MakeSpan(expected));
  EXPECT_EQ(delta->numbers, expected);
  EXPECT_THAT(delta->numbers, ElementsAre(2, 2, 1, 3, 1));
  EXPECT_FALSE(stream.HasDelta());
  EXPECT_FALSE(stream.TakeDelta().has_value());
}

TEST(StreamAccumulatorTest, ManyValuesAreBinnedInChunks) {
  StreamAccumulator stream("score", kMaxBuffered);
  stream.SetBins(NumericBins(1, {0, 1}));
  for (int i = 0; i < 1000; ++i) stream.AddValue(0.5);
  std::optional<StreamDelta> delta = stream.TakeDelta();
  ASSERT_TRUE(delta.has_value());
  EXPECT_THAT(delta->numbers, ElementsAre(0, 1000, 0, 0));
  EXPECT_EQ(delta->observations, 1000u);
  EXPECT_EQ(stream.dropped_observations(), 0u);  // Binned values are not bounded by max_buffered.
}

TEST(StreamAccumulatorTest, BuffersUntilBinsAreKnown) {
  StreamAccumulator stream("score", kMaxBuffered);
  EXPECT_TRUE(stream.needs_bins());
  stream.AddValue(0.5);
  stream.AddValue(1.5);
  EXPECT_FALSE(stream.HasDelta());
  EXPECT_FALSE(stream.TakeDelta().has_value());
  EXPECT_EQ(stream.waiting_observations(), 2u);
  stream.SetBins(NumericBins(1, {0, 1, 2}));
  EXPECT_FALSE(stream.needs_bins());
  EXPECT_EQ(stream.waiting_observations(), 0u);
  std::optional<StreamDelta> delta = stream.TakeDelta();
  ASSERT_TRUE(delta.has_value());
  EXPECT_THAT(delta->numbers, ElementsAre(0, 1, 1, 0, 0));
}

TEST(StreamAccumulatorTest, BufferIsBoundedAndDropsAreCounted) {
  StreamAccumulator stream("score", /*max_buffered=*/3);
  for (int i = 0; i < 5; ++i) stream.AddValue(i);
  EXPECT_EQ(stream.waiting_observations(), 3u);
  EXPECT_EQ(stream.dropped_observations(), 2u);
  EXPECT_THAT(stream.last_drop_reason(), HasSubstr("waiting for the reference"));
}

TEST(StreamAccumulatorTest, LabelsAndUnseenCategories) {
  StreamAccumulator stream("decision", kMaxBuffered);
  stream.AddLabel("block");  // Buffered.
  stream.SetBins(CategoricalBins(2, {"allow", "block"}));
  stream.AddLabel("allow");
  stream.AddLabel("allow");
  stream.AddLabel("review");  // Unknown: the unseen bucket.
  std::optional<StreamDelta> delta = stream.TakeDelta();
  ASSERT_TRUE(delta.has_value());
  EXPECT_THAT(delta->numbers, ElementsAre(2, 1, 1));
  EXPECT_EQ(delta->observations, 4u);
}

TEST(StreamAccumulatorTest, ObservationsOfTheWrongKindAreDropped) {
  StreamAccumulator stream("decision", kMaxBuffered);
  stream.AddValue(1.0);  // Buffered before the kind is known; dropped once it is.
  stream.SetBins(CategoricalBins(1, {"a"}));
  EXPECT_EQ(stream.dropped_observations(), 1u);
  stream.AddValue(2.0);
  EXPECT_EQ(stream.dropped_observations(), 2u);
  EXPECT_THAT(stream.last_drop_reason(), HasSubstr("takes no numeric values"));

  StreamAccumulator numeric("score", kMaxBuffered);
  numeric.SetBins(NumericBins(1, {0, 1}));
  numeric.AddLabel("a");
  const double probabilities[] = {0.5, 0.5};
  numeric.AddProbabilities(probabilities);
  EXPECT_EQ(numeric.dropped_observations(), 2u);
  EXPECT_FALSE(numeric.HasDelta());
}

TEST(StreamAccumulatorTest, ProbabilityVectorsAreValidatedAndKeptAsVectors) {
  StreamAccumulator stream("class", kMaxBuffered);
  stream.SetBins(CategoricalBins(1, {"cat", "dog"}));
  stream.AddProbabilities(std::vector<double>{0.25, 0.75});
  stream.AddProbabilities(std::vector<double>{1.0, 0.0});
  stream.AddProbabilities(std::vector<double>{0.5, 0.6});         // Sums to 1.1.
  stream.AddProbabilities(std::vector<double>{0.5, 0.25, 0.25});  // Wrong width.
  stream.AddProbabilities(std::vector<double>{-0.5, 1.5});        // Outside [0, 1].
  EXPECT_EQ(stream.dropped_observations(), 3u);
  std::optional<StreamDelta> delta = stream.TakeDelta();
  ASSERT_TRUE(delta.has_value());
  EXPECT_EQ(delta->type, StreamDelta::Type::kProbabilities);
  EXPECT_THAT(delta->numbers, ElementsAre(0.25, 0.75, 1.0, 0.0));
  EXPECT_EQ(delta->observations, 2u);
}

TEST(StreamAccumulatorTest, CountsAndProbabilitiesGoInSeparateDeltas) {
  StreamAccumulator stream("class", kMaxBuffered);
  stream.SetBins(CategoricalBins(1, {"cat", "dog"}));
  stream.AddLabel("cat");
  stream.AddProbabilities(std::vector<double>{0.5, 0.5});
  std::optional<StreamDelta> first = stream.TakeDelta();
  std::optional<StreamDelta> second = stream.TakeDelta();
  ASSERT_TRUE(first.has_value() && second.has_value());
  EXPECT_EQ(first->type, StreamDelta::Type::kCounts);
  EXPECT_EQ(second->type, StreamDelta::Type::kProbabilities);
  EXPECT_FALSE(stream.TakeDelta().has_value());
}

TEST(StreamAccumulatorTest, RequeuedDeltaIsResentWhenBinsAreUnchanged) {
  StreamAccumulator stream("score", kMaxBuffered);
  stream.SetBins(NumericBins(1, {0, 1}));
  stream.AddValue(0.5);
  std::optional<StreamDelta> rejected = stream.TakeDelta();
  ASSERT_TRUE(rejected.has_value());
  stream.AddValue(0.25);  // Recorded meanwhile.
  stream.Requeue(*std::move(rejected));
  EXPECT_TRUE(stream.needs_bins());
  EXPECT_EQ(stream.waiting_observations(), 1u);
  stream.SetBins(NumericBins(2, {0, 1}));  // Re-baselined: same bins, new version.
  std::optional<StreamDelta> delta = stream.TakeDelta();
  ASSERT_TRUE(delta.has_value());
  EXPECT_EQ(delta->bins->version(), 2u);
  EXPECT_THAT(delta->numbers, ElementsAre(0, 2, 0, 0));
  EXPECT_EQ(delta->observations, 2u);
  EXPECT_EQ(delta->rejections, 1);
  EXPECT_EQ(stream.dropped_observations(), 0u);
}

TEST(StreamAccumulatorTest, RequeuedDeltaIsDroppedWhenBinsChanged) {
  StreamAccumulator stream("score", kMaxBuffered);
  stream.SetBins(NumericBins(1, {0, 1}));
  stream.AddValue(0.5);
  std::optional<StreamDelta> rejected = stream.TakeDelta();
  stream.AddValue(0.75);  // Still a raw value: it can be binned against the new bins.
  stream.Requeue(*std::move(rejected));
  stream.SetBins(NumericBins(2, {0, 2}));
  EXPECT_EQ(stream.dropped_observations(), 1u);
  EXPECT_THAT(stream.last_drop_reason(), HasSubstr("bins changed"));
  stream.AddValue(1.5);
  std::optional<StreamDelta> delta = stream.TakeDelta();
  ASSERT_TRUE(delta.has_value());
  EXPECT_EQ(delta->bins->version(), 2u);
  EXPECT_THAT(delta->numbers, ElementsAre(0, 2, 0, 0));
  EXPECT_EQ(delta->rejections, 0);
}

TEST(StreamAccumulatorTest, CountsBinnedAgainstChangedBinsAreDropped) {
  StreamAccumulator stream("decision", kMaxBuffered);
  stream.SetBins(CategoricalBins(1, {"a", "b"}));
  stream.AddLabel("a");
  stream.SetBins(CategoricalBins(2, {"a", "c"}));
  EXPECT_EQ(stream.dropped_observations(), 1u);
  EXPECT_FALSE(stream.HasDelta());
  stream.AddLabel("c");
  std::optional<StreamDelta> delta = stream.TakeDelta();
  ASSERT_TRUE(delta.has_value());
  EXPECT_THAT(delta->numbers, ElementsAre(0, 1, 0));
}

TEST(StreamAccumulatorTest, DeltaRejectedTwiceIsDropped) {
  StreamAccumulator stream("score", kMaxBuffered);
  stream.SetBins(NumericBins(1, {0, 1}));
  stream.AddValue(0.5);
  std::optional<StreamDelta> delta = stream.TakeDelta();
  stream.Requeue(*std::move(delta));
  stream.SetBins(NumericBins(1, {0, 1}));
  delta = stream.TakeDelta();
  ASSERT_TRUE(delta.has_value());
  stream.Requeue(*std::move(delta));
  EXPECT_EQ(stream.dropped_observations(), 1u);
  EXPECT_THAT(stream.last_drop_reason(), HasSubstr("rejected again"));
}

TEST(StreamAccumulatorTest, ClearBinsDropsBinnedDataAndBuffersAnew) {
  StreamAccumulator stream("score", kMaxBuffered);
  stream.SetBins(NumericBins(1, {0, 1}));
  stream.AddLabel("x");  // Dropped: wrong kind.
  stream.AddValue(0.5);  // Buffered for chunked binning, still raw.
  stream.ClearBins("deleted");
  EXPECT_EQ(stream.dropped_observations(), 1u);
  EXPECT_TRUE(stream.needs_bins());
  EXPECT_EQ(stream.waiting_observations(), 1u);
  stream.SetBins(NumericBins(2, {0, 1}));
  std::optional<StreamDelta> delta = stream.TakeDelta();
  ASSERT_TRUE(delta.has_value());
  EXPECT_THAT(delta->numbers, ElementsAre(0, 1, 0, 0));
}

TEST(StreamAccumulatorTest, DropAllCountsEverything) {
  StreamAccumulator stream("score", kMaxBuffered);
  stream.AddValue(1);
  stream.AddLabel("a");
  stream.DropAll("closed");
  EXPECT_EQ(stream.dropped_observations(), 2u);
  EXPECT_EQ(stream.waiting_observations(), 0u);
  EXPECT_EQ(stream.last_drop_reason(), "closed");
}

TEST(ToStreamBatchTest, CountsAndProbabilities) {
  StreamDelta counts;
  counts.signal = "score";
  counts.bins = NumericBins(4, {0, 1});
  counts.numbers = {1, 2, 3, 4};
  v1::StreamBatch batch;
  ToStreamBatch(counts, "v2", &batch);
  EXPECT_EQ(batch.signal(), "score");
  EXPECT_EQ(batch.model_version(), "v2");
  EXPECT_EQ(batch.reference_version(), 4u);
  EXPECT_THAT(batch.histogram().counts(), ElementsAre(1, 2, 3, 4));

  StreamDelta probabilities = counts;
  probabilities.type = StreamDelta::Type::kProbabilities;
  probabilities.numbers = {0.5, 0.5};
  batch.Clear();
  ToStreamBatch(probabilities, "", &batch);
  EXPECT_TRUE(batch.has_probabilities());
  EXPECT_THAT(batch.probabilities().probabilities(), ElementsAre(0.5, 0.5));
}

}  // namespace
}  // namespace kldrift::client_internal
