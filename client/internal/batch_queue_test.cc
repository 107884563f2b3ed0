#include "client/internal/batch_queue.h"

#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kldrift::client_internal {
namespace {

PendingBatch Batch(uint64_t sequence, uint64_t observations) {
  PendingBatch batch;
  batch.sequence = sequence;
  batch.observations = observations;
  return batch;
}

std::vector<uint64_t> Sequences(const std::vector<PendingBatch>& batches) {
  std::vector<uint64_t> sequences;
  for (const PendingBatch& batch : batches) sequences.push_back(batch.sequence);
  return sequences;
}

TEST(BatchQueueTest, DropsTheOldestBeyondCapacity) {
  BatchQueue queue(2);
  EXPECT_FALSE(queue.Push(Batch(10, 1)).has_value());
  EXPECT_FALSE(queue.Push(Batch(11, 2)).has_value());
  EXPECT_EQ(queue.observations(), 3u);
  std::optional<PendingBatch> dropped = queue.Push(Batch(12, 4));
  ASSERT_TRUE(dropped.has_value());
  EXPECT_EQ(dropped->sequence, 10u);
  EXPECT_EQ(dropped->observations, 1u);
  EXPECT_EQ(queue.size(), 2u);
  EXPECT_EQ(queue.observations(), 6u);
  EXPECT_EQ(queue.oldest()->sequence, 11u);
}

TEST(BatchQueueTest, CumulativeAcksRemoveInOrder) {
  BatchQueue queue(10);
  for (uint64_t s = 1; s <= 5; ++s) queue.Push(Batch(s, s));
  EXPECT_THAT(Sequences(queue.AckThrough(0)), ::testing::IsEmpty());
  EXPECT_THAT(Sequences(queue.AckThrough(3)), ::testing::ElementsAre(1, 2, 3));
  EXPECT_EQ(queue.observations(), 9u);
  // Acks never go backwards; a repeated one is a no-op.
  EXPECT_THAT(Sequences(queue.AckThrough(3)), ::testing::IsEmpty());
  EXPECT_THAT(Sequences(queue.AckThrough(100)), ::testing::ElementsAre(4, 5));
  EXPECT_TRUE(queue.empty());
  EXPECT_EQ(queue.observations(), 0u);
  EXPECT_EQ(queue.oldest(), nullptr);
}

TEST(BatchQueueTest, AckedSequencesMayHaveGapsFromDrops) {
  BatchQueue queue(1);
  queue.Push(Batch(1, 1));
  queue.Push(Batch(2, 1));  // Drops 1.
  EXPECT_THAT(Sequences(queue.AckThrough(2)), ::testing::ElementsAre(2));
}

TEST(BatchQueueTest, FindBySequence) {
  BatchQueue queue(10);
  queue.Push(Batch(5, 1));
  queue.Push(Batch(7, 1));
  ASSERT_NE(queue.Find(7), nullptr);
  EXPECT_EQ(queue.Find(7)->sequence, 7u);
  EXPECT_EQ(queue.Find(6), nullptr);
  EXPECT_EQ(queue.Find(8), nullptr);
}

TEST(BatchQueueTest, EverythingIsRewrittenOnANewConnection) {
  BatchQueue queue(10);
  for (uint64_t s = 1; s <= 3; ++s) queue.Push(Batch(s, 1));
  // Connection 1 carries batches 1 and 2, then fails.
  queue.NextUnwritten(1)->written_on_connection = 1;
  queue.NextUnwritten(1)->written_on_connection = 1;
  EXPECT_EQ(queue.NextUnwritten(1)->sequence, 3u);
  // Connection 2 starts over from the oldest unacknowledged batch, in order.
  std::vector<uint64_t> order;
  while (PendingBatch* batch = queue.NextUnwritten(2)) {
    order.push_back(batch->sequence);
    batch->written_on_connection = 2;
  }
  EXPECT_THAT(order, ::testing::ElementsAre(1, 2, 3));
}

TEST(BatchQueueTest, HasUnwrittenSkipsRejectedBatches) {
  BatchQueue queue(10);
  EXPECT_FALSE(queue.HasUnwritten(1));
  for (uint64_t s = 1; s <= 3; ++s) queue.Push(Batch(s, 1));
  queue.NextUnwritten(1)->written_on_connection = 1;
  EXPECT_TRUE(queue.HasUnwritten(1));
  // Batch 3 was rejected: after batch 2 nothing more is written on this connection.
  queue.Find(3)->rejected = true;
  queue.NextUnwritten(1)->written_on_connection = 1;
  EXPECT_FALSE(queue.HasUnwritten(1));
  // A new connection has batches 1 and 2 to write.
  EXPECT_TRUE(queue.HasUnwritten(2));
}

TEST(ToIngestRequestTest, CarriesIdentityAndEveryDelta) {
  PendingBatch batch = Batch(42, 3);
  StreamDelta delta;
  delta.signal = "score";
  delta.bins = ReferenceBins::Create(2, *BinLayout::Numeric({0, 1}));
  delta.numbers = {0, 3, 0, 0};
  batch.deltas.push_back(delta);
  delta.signal = "latency";
  batch.deltas.push_back(delta);
  batch.event_time = absl::FromUnixMillis(1500);
  v1::IngestRequest request = ToIngestRequest(batch, "pod-1", "fraud", "v1");
  EXPECT_EQ(request.client_id(), "pod-1");
  EXPECT_EQ(request.sequence(), 42u);
  EXPECT_EQ(request.model(), "fraud");
  ASSERT_EQ(request.streams_size(), 2);
  EXPECT_EQ(request.streams(0).signal(), "score");
  EXPECT_EQ(request.streams(1).signal(), "latency");
  EXPECT_EQ(request.streams(1).model_version(), "v1");
  EXPECT_EQ(request.streams(1).reference_version(), 2u);
  EXPECT_EQ(request.event_time().seconds(), 1);
  EXPECT_EQ(request.event_time().nanos(), 500000000);
}

}  // namespace
}  // namespace kldrift::client_internal
