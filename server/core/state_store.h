// StateStore: where DriftEngine makes its state durable. The engine calls it at every mutation, and
// reads everything back once at start-up (DriftEngine::Recover). server/storage implements it with
// RocksDB; without a store (--storage=memory) the engine keeps state in memory only.
//
// Contract: a method that returns OK has made the change durable to the store's promise (the
// write-ahead log for the default, fsync with --sync). The engine acknowledges an ingest batch only
// after WriteBatch returned OK, and does not apply a batch whose write failed. Ingest writes one
// log record per batch; windows are snapshotted on the evaluation tick, after which the log up to
// the snapshot is truncated (TruncateLog), so start-up replays about one tick of batches per
// stream.
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
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "server/core/alert_state.h"
#include "server/core/reference.h"
#include "server/core/stream_key.h"

namespace kldrift {

// The contents of one sub-bucket of one window (snapshots), or an addition to it.
struct SubBucketDelta {
  StreamKey stream;
  absl::Duration window;
  absl::Time sub_bucket_start;
  std::vector<double> values;
};

// One stream's part of an applied batch.
struct StreamDelta {
  StreamKey stream;
  std::vector<double> values;  // Added to every window that covers the event time.
  // True when the writer knows every value is a whole number in [0, 2^32) (the engine does, from
  // checking the batch), with the largest in `max_count`: a store may then choose its encoding
  // without looking at the values again. False says nothing: the store checks for itself.
  bool known_counts = false;
  double max_count = 0;
};

// Everything an applied ingest batch changes, written atomically as one log record plus the
// client's sequence number. `lsn` orders records; windows are rebuilt by replaying the records
// newer than each stream's snapshot. Load returns records as these; WriteBatch takes a view.
struct IngestRecord {
  uint64_t lsn = 0;
  std::string client_id;
  uint64_t sequence = 0;
  absl::Time received_at;
  absl::Time event_time;
  std::vector<StreamDelta> deltas;
};

// A StreamDelta whose names and values belong to someone else (for WriteBatch: the engine writes
// straight from the batch it was given, copying nothing).
struct StreamDeltaView {
  absl::string_view model;
  absl::string_view model_version;
  absl::string_view signal;
  absl::Span<const double> values;
  bool known_counts = false;  // As StreamDelta's.
  double max_count = 0;
};

// An IngestRecord as WriteBatch takes it; valid while what it points to is.
struct IngestRecordView {
  uint64_t lsn = 0;
  absl::string_view client_id;
  uint64_t sequence = 0;
  absl::Time received_at;
  absl::Time event_time;
  absl::Span<const StreamDeltaView> deltas;
};

// The sub-buckets of a stream that changed since its last snapshot, and the last log record they
// include.
struct StreamSnapshot {
  StreamKey stream;
  uint64_t lsn = 0;
  std::vector<SubBucketDelta> sub_buckets;  // Full contents, not additions.
};

class StateStore {
 public:
  virtual ~StateStore() = default;

  // A new reference version. `reset_windows`: the stream's windows start empty (a new stream, or
  // bins that differ from the previous version's), so its stored windows and alert states are
  // dropped in the same write, and log records up to `lsn_floor` are never replayed into it.
  virtual absl::Status PutReference(const Reference& reference, bool reset_windows,
                                    uint64_t lsn_floor) = 0;
  // Every version, window and alert state of a stream.
  virtual absl::Status DeleteStream(const StreamKey& stream) = 0;
  // An applied ingest batch: one log record and the client's new sequence number.
  virtual absl::Status WriteBatch(const IngestRecordView& record) = 0;
  // A rejected batch still moves the client's sequence number (it is done with).
  virtual absl::Status WriteClientSequence(const std::string& client_id, uint64_t sequence,
                                           absl::Time seen) = 0;
  // Window snapshots: each stream's sub-buckets with its log position, in one write.
  virtual absl::Status WriteSnapshots(const std::vector<StreamSnapshot>& snapshots) = 0;
  // Where the log ends now, for TruncateLog: an opaque position, increasing with every write.
  virtual uint64_t LogEnd() = 0;
  // Log records the snapshots now cover can go: every stream's snapshot holds the records up to
  // lsn `up_to`, and every record the store had written when LogEnd() returned `end` has an lsn
  // up to `up_to` (the caller takes `end` before it takes `up_to`). Records with larger lsns are
  // kept; records up to `up_to` may be kept longer (Load then returns them again, and replay skips
  // them by each stream's snapshot position).
  virtual absl::Status TruncateLog(uint64_t up_to, uint64_t end) = 0;
  // Alert states that changed on an evaluation.
  struct AlertUpdate {
    StreamKey stream;
    absl::Duration window;
    AlertStatus status;
  };
  virtual absl::Status WriteAlerts(const std::vector<AlertUpdate>& updates) = 0;

  // Start-up: everything stored, in this order: references (of a stream in version order),
  // snapshotted sub-buckets, each stream's snapshot log position, log records (each stream's in
  // log order, each record once), clients, alert states.
  struct Visitor {
    std::function<absl::Status(std::shared_ptr<const Reference>)> reference;
    std::function<void(const SubBucketDelta&)> sub_bucket;
    std::function<void(const StreamKey&, uint64_t lsn)> stream_lsn;
    std::function<void(const IngestRecord&)> log_record;
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
