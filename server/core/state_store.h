// StateStore: where DriftEngine makes its state durable. The engine calls it at every mutation, and
// reads everything back once at start-up (DriftEngine::Recover). server/storage implements it with
// RocksDB; without a store (--storage=memory) the engine keeps state in memory only.
//
// Contract: a method that returns OK has made the change durable to the store's promise (the
// write-ahead log for the default, fsync with --sync). The engine acknowledges an ingest batch only
// after WriteBatch returned OK, and does not apply a batch whose write failed.
//
// Thread safety: implementations are safe for concurrent calls.
#ifndef KLDRIFT_SERVER_CORE_STATE_STORE_H_
#define KLDRIFT_SERVER_CORE_STATE_STORE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/core/alert_state.h"
#include "server/core/reference.h"
#include "server/core/stream_key.h"

namespace kldrift {

// Additions to one sub-bucket of one window.
struct SubBucketDelta {
  StreamKey stream;
  absl::Duration window;
  absl::Time sub_bucket_start;
  std::vector<double> values;
};

// Everything an applied ingest batch changes, written atomically.
struct IngestRecord {
  std::string client_id;
  uint64_t sequence = 0;
  absl::Time received_at;
  std::vector<SubBucketDelta> deltas;
};

class StateStore {
 public:
  virtual ~StateStore() = default;

  // A new reference version. `reset_windows`: its bins differ from the previous version's, so
  // the stream's stored windows (and alert states) are dropped in the same write.
  virtual absl::Status PutReference(const Reference& reference, bool reset_windows) = 0;
  // Every version, window and alert state of a stream.
  virtual absl::Status DeleteStream(const StreamKey& stream) = 0;
  // An applied ingest batch: its window deltas and the client's new sequence number.
  virtual absl::Status WriteBatch(const IngestRecord& record) = 0;
  // A rejected batch still moves the client's sequence number (it is done with).
  virtual absl::Status WriteClientSequence(const std::string& client_id, uint64_t sequence,
                                           absl::Time seen) = 0;
  // Alert states that changed on an evaluation.
  struct AlertUpdate {
    StreamKey stream;
    absl::Duration window;
    AlertStatus status;
  };
  virtual absl::Status WriteAlerts(const std::vector<AlertUpdate>& updates) = 0;

  // Start-up: everything stored, streamed to the callbacks in key order (references of a stream
  // in version order).
  struct Visitor {
    std::function<absl::Status(std::shared_ptr<const Reference>)> reference;
    std::function<void(const SubBucketDelta&)> sub_bucket;
    std::function<void(const std::string& client_id, uint64_t sequence, absl::Time seen)> client;
    std::function<void(const StreamKey&, absl::Duration window, const AlertStatus&)> alert;
  };
  virtual absl::Status Load(const Visitor& visitor) = 0;

  // A consistent copy of the store in `dir` (which must not exist) that can be opened as a store.
  // Returns the copy's size in bytes.
  virtual absl::StatusOr<uint64_t> Backup(const std::string& dir) = 0;
};

}  // namespace kldrift

#endif  // KLDRIFT_SERVER_CORE_STATE_STORE_H_
