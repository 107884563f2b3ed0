// RocksDbStore: kldriftd's state in an embedded RocksDB under --data-dir (the default storage).
//
// Column families:
//   meta        "format_version" -> kFormatVersion; a folder without it is not ours.
//   references  stream | version            -> StoredReference (every version).
//   windows     stream | window | start      -> snapshot of a sub-bucket's K values (bit-packed
//                                               counts below 16, zig-zag varints for other
//                                               integers, raw doubles otherwise), written on the
//                                               evaluation tick for the sub-buckets that changed;
//                                               the log up to the snapshot is then truncated.
//   meta        "lsn/" stream                -> the last log record a stream's snapshot includes.
//   clients     client id                    -> StoredClient (last applied sequence).
//   alerts      stream | window              -> StoredAlert.
//   log         lsn [| format tag]           -> log records of a kldrift-store-1 store, or copied
//                                               into a backup (below); the tag ('C') unless the
//                                               record is of the stream-keys format.
// (stream = model \0 model_version \0 signal \0; window = seconds, start = Unix microseconds, both
// big-endian, the start with its sign bit flipped, so keys sort by time.)
//
// The log: one record per applied ingest batch (its lsn, event time and every stream's delta; the
// model once, then each stream's version, signal and values), written with the client's sequence
// number in one write batch as write-ahead-log-only data (WriteBatch::PutLogData): no memtable
// insert, no flush, no compaction, so a record is written to disk once. RocksDB archives a
// write-ahead log file instead of deleting it once its memtables are flushed, and never deletes an
// archived one; TruncateLog deletes the archived files whose records the snapshots cover. Load
// reads the records back with GetUpdatesSince, and Backup copies the ones its checkpoint needs into
// the copy's log family.
//
// Durability: every write goes through the write-ahead log. By default the log is not fsynced, so
// what returned OK survives a crash of the process (kill -9) but not of the machine; with
// `sync` every write waits for fsync, and RocksDB's group commit shares one fsync among concurrent
// writers, so acknowledged data also survives power loss.
//
// Retention: a compaction filter drops sub-buckets that ended more than half a window before now
// (a sub-bucket is at most half its window long), and the windows family is compacted at least
// hourly, so disk use is bounded by the live sub-buckets plus about an hour of expired ones.
//
// Thread safety: safe for concurrent use (RocksDB is).
#ifndef KLDRIFT_SERVER_STORAGE_ROCKSDB_STORE_H_
#define KLDRIFT_SERVER_STORAGE_ROCKSDB_STORE_H_

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "rocksdb/compaction_filter.h"
#include "rocksdb/db.h"
#include "server/core/clock.h"
#include "server/core/mutex.h"
#include "server/core/state_store.h"

namespace kldrift {

struct RocksDbStoreOptions {
  std::string path;
  // fsync every write (see the class comment).
  bool sync = false;
  // Used by the retention filter; must outlive the store.
  const Clock* clock = nullptr;
  // When the live write-ahead log files pass this size together, RocksDB flushes the memtables
  // that still need them, so they can be archived and then truncated (see the class comment).
  // Tests make it small to switch files often.
  uint64_t max_live_log_bytes = uint64_t{128} << 20;
};

class RocksDbStore final : public StateStore {
 public:
  // The on-disk format this build reads and writes.
  static constexpr char kFormatVersion[] = "kldrift-store-3";
  // Read too, and marked as kFormatVersion on opening (an older kldriftd then refuses the folder):
  // kldrift-store-1 kept its log records in the log family, kldrift-store-2 wrote them to the
  // write-ahead log in the stream-keys format; kldrift-store-3 writes compact records there.
  static constexpr const char* kUpgradedFormatVersions[] = {"kldrift-store-1", "kldrift-store-2"};

  // Opens (or creates, when the folder is missing or empty) the store. Refuses, with a message
  // saying what to do, a folder that is not a kldrift store, one written in another format version,
  // or one RocksDB finds corrupted. Nothing is ever reset.
  static absl::StatusOr<std::unique_ptr<RocksDbStore>> Open(const RocksDbStoreOptions& options);
  ~RocksDbStore() override;

  absl::Status PutReference(const Reference& reference, bool reset_windows,
                            uint64_t lsn_floor) override;
  absl::Status DeleteStream(const StreamKey& stream) override;
  absl::Status WriteBatch(const IngestRecordView& record) override;
  absl::Status WriteClientSequence(const std::string& client_id, uint64_t sequence,
                                   absl::Time seen) override;
  absl::Status WriteSnapshots(const std::vector<StreamSnapshot>& snapshots) override;
  // The last sequence number RocksDB has written.
  uint64_t LogEnd() override;
  absl::Status TruncateLog(uint64_t up_to, uint64_t end) override;
  absl::Status WriteAlerts(const std::vector<AlertUpdate>& updates) override;
  absl::Status Load(const Visitor& visitor) override;

  absl::StatusOr<uint64_t> Backup(const std::string& dir) override;
  // Runs a full compaction of the windows family now (retention; tests).
  absl::Status CompactWindows();
  // Bytes of SST and log files (for metrics and the retention test).
  uint64_t DiskBytes() const;

  // What `kldriftd --check-data-dir` prints: format, record counts, size, checksum verification.
  // Opens the folder read-only.
  static absl::StatusOr<std::string> Describe(const std::string& path);

 private:
  RocksDbStore() = default;
  // Backup: the log records up to the checkpoint in `dir`, written into its log family.
  absl::Status CopyLogInto(const std::string& dir) ABSL_EXCLUSIVE_LOCKS_REQUIRED(wal_files_mutex_);

  RocksDbStoreOptions options_;
  std::unique_ptr<rocksdb::CompactionFilter> retention_;  // Outlives db_ (declared before it).
  std::unique_ptr<rocksdb::DB> db_;
  std::vector<rocksdb::ColumnFamilyHandle*> handles_;  // Owned; destroyed before db_.
  rocksdb::WriteOptions write_options_;
  // Held while write-ahead log files are deleted (TruncateLog) and while Backup copies records out
  // of them.
  Mutex wal_files_mutex_;
  // The largest lsn in the log family (0: none), which TruncateLog then truncates too.
  std::atomic<uint64_t> legacy_log_lsn_{0};
};

}  // namespace kldrift

#endif  // KLDRIFT_SERVER_STORAGE_ROCKSDB_STORE_H_
