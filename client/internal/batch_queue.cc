#include "client/internal/batch_queue.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <utility>

namespace kldrift::client_internal {

v1::IngestRequest ToIngestRequest(const PendingBatch& batch, absl::string_view client_id,
                                  absl::string_view model, absl::string_view model_version) {
  v1::IngestRequest request;
  request.set_client_id(std::string(client_id));
  request.set_sequence(batch.sequence);
  request.set_model(std::string(model));
  for (const StreamDelta& delta : batch.deltas) {
    ToStreamBatch(delta, model_version, request.add_streams());
  }
  if (batch.event_time.has_value()) {
    const absl::Time time = *batch.event_time;
    const int64_t seconds = absl::ToUnixSeconds(time);
    request.mutable_event_time()->set_seconds(seconds);
    request.mutable_event_time()->set_nanos(
        static_cast<int32_t>(absl::ToInt64Nanoseconds(time - absl::FromUnixSeconds(seconds))));
  }
  return request;
}

namespace {

// An impossible internal state: fail loudly rather than resend batches out of order.
void Require(bool condition, const char* what) {
  if (condition) return;
  std::fprintf(stderr, "kldrift::client_internal::BatchQueue: %s\n", what);
  std::abort();
}

}  // namespace

BatchQueue::BatchQueue(size_t capacity) : capacity_(capacity) {
  Require(capacity >= 1, "capacity must be at least 1");
}

std::optional<PendingBatch> BatchQueue::Push(PendingBatch batch) {
  Require(batches_.empty() || batch.sequence > batches_.back().sequence,
          "batch sequence numbers must increase");
  observations_ += batch.observations;
  batches_.push_back(std::move(batch));
  if (batches_.size() <= capacity_) return std::nullopt;
  PendingBatch dropped = std::move(batches_.front());
  batches_.pop_front();
  observations_ -= dropped.observations;
  return dropped;
}

std::vector<PendingBatch> BatchQueue::AckThrough(uint64_t acked_sequence) {
  std::vector<PendingBatch> acked;
  while (!batches_.empty() && batches_.front().sequence <= acked_sequence) {
    observations_ -= batches_.front().observations;
    acked.push_back(std::move(batches_.front()));
    batches_.pop_front();
  }
  return acked;
}

PendingBatch* BatchQueue::Find(uint64_t sequence) {
  for (PendingBatch& batch : batches_) {
    if (batch.sequence == sequence) return &batch;
    if (batch.sequence > sequence) break;
  }
  return nullptr;
}

PendingBatch* BatchQueue::NextUnwritten(uint64_t connection) {
  for (PendingBatch& batch : batches_) {
    if (batch.written_on_connection != connection) return &batch;
  }
  return nullptr;
}

bool BatchQueue::HasUnwritten(uint64_t connection) const {
  return std::any_of(batches_.begin(), batches_.end(), [&](const PendingBatch& batch) {
    return batch.written_on_connection != connection && !batch.rejected;
  });
}

}  // namespace kldrift::client_internal
