// BatchQueue: the ingest batches a Recorder has cut but the server has not yet acknowledged, kept
// in sequence order so they can be resent after a reconnect.
//
// Bounded: pushing beyond the capacity removes the oldest batch and hands it back, so the caller
// can count what it loses. Private to the client library; not a stable API.
//
// Thread safety: thread-compatible (the Recorder guards it with its mutex).
#ifndef KLDRIFT_CLIENT_INTERNAL_BATCH_QUEUE_H_
#define KLDRIFT_CLIENT_INTERNAL_BATCH_QUEUE_H_

#include <cstddef>
#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "client/internal/stream_accumulator.h"
#include "kldrift/v1/kldrift.pb.h"

namespace kldrift::client_internal {

// One IngestRequest's worth of data, with its delivery state.
struct PendingBatch {
  uint64_t sequence = 0;
  std::vector<StreamDelta> deltas;  // At most one per stream.
  uint64_t observations = 0;        // Sum over deltas.
  std::optional<absl::Time> event_time;
  // The connection it was last written on (0: not written yet), and when.
  uint64_t written_on_connection = 0;
  absl::Time written_at = absl::InfinitePast();
  // The server reported an error for it (it is still acknowledged, and removed, by the ack).
  bool rejected = false;
};

// The IngestRequest for `batch`.
v1::IngestRequest ToIngestRequest(const PendingBatch& batch, absl::string_view client_id,
                                  absl::string_view model, absl::string_view model_version);

class BatchQueue {
 public:
  // REQUIRES: capacity >= 1.
  explicit BatchQueue(size_t capacity);

  // Appends `batch` (whose sequence must exceed every queued one). If the queue then holds more
  // than `capacity` batches, the oldest is removed and returned.
  std::optional<PendingBatch> Push(PendingBatch batch);
  // Removes and returns, oldest first, every batch with sequence <= `acked_sequence`.
  std::vector<PendingBatch> AckThrough(uint64_t acked_sequence);
  // The queued batch with `sequence`, or null.
  PendingBatch* Find(uint64_t sequence);
  // The oldest batch not yet written on `connection`, or null. Batches are written in order, so
  // after a reconnect every queued batch is written again, oldest first.
  PendingBatch* NextUnwritten(uint64_t connection);
  // Whether a batch still to be written on `connection` remains (rejected ones are not written).
  bool HasUnwritten(uint64_t connection) const;
  // The oldest queued batch, or null.
  const PendingBatch* oldest() const { return batches_.empty() ? nullptr : &batches_.front(); }

  size_t size() const { return batches_.size(); }
  bool empty() const { return batches_.empty(); }
  size_t capacity() const { return capacity_; }
  uint64_t observations() const { return observations_; }

 private:
  const size_t capacity_;
  std::deque<PendingBatch> batches_;
  uint64_t observations_ = 0;
};

}  // namespace kldrift::client_internal

#endif  // KLDRIFT_CLIENT_INTERNAL_BATCH_QUEUE_H_
