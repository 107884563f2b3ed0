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
//   log         lsn | format tag             -> log records copied into a backup (below), or of a
//                                               kldrift-store-1 store (no tag).
// (stream = model \0 model_version \0 signal \0; window = seconds, start = Unix microseconds, both
// big-endian, the start with its sign bit flipped, so keys sort by time.)
//
// The log: one record per applied ingest batch (its lsn, the client's id and sequence number, the
// event time and every stream's delta; the model once, then each stream's version, signal and
// values) in a BatchLog of its own under DATA_DIR/batchlog (batch_log.h): memory-mapped segment
// files, recycled once truncated, with a hardware CRC32C per record. RocksDB's write-ahead log
// carried these records before kldrift-store-4; it cost a `write` system call, a software CRC32C
// and a write group per batch. A client's sequence number travels in its records; the store keeps
// the latest of each client in memory and writes them to the clients family before TruncateLog
// frees the records that carry them. Load reads the records back, and Backup copies them into the
// copy's log family.
//
// Durability: a record is in the page cache when WriteBatch returns, like RocksDB's unsynced
// write-ahead log: what returned OK survives a crash of the process (kill -9) but not of the
// machine. With `sync`, every write waits for fdatasync (the log's concurrent writers share one,
// and RocksDB's group commit shares its own), so acknowledged data also survives power loss.
//
// Earlier formats: kldrift-store-2 and -3 stores kept their records in RocksDB's write-ahead log,
// archived rather than deleted (a size limit no store reaches); Load still reads them there, and
// TruncateLog deletes the archived files once the snapshots cover them. The options keep archiving
// on, so RocksDB never deletes a file before that.
//
// Retention: a compaction filter drops sub-buckets that ended more than half a window before now
// (a sub-bucket is at most half its window long), and the windows family is compacted at least
// hourly, so disk use is bounded by the live sub-buckets plus about an hour of expired ones.
//
// Thread safety: safe for concurrent use (RocksDB and BatchLog are).
#ifndef KLDRIFT_SERVER_STORAGE_ROCKSDB_STORE_H_
#define KLDRIFT_SERVER_STORAGE_ROCKSDB_STORE_H_

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "rocksdb/compaction_filter.h"
#include "rocksdb/db.h"
#include "server/core/clock.h"
#include "server/core/mutex.h"
#include "server/core/state_store.h"
#include "server/storage/batch_log.h"

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
  // The size of the batch log's segment files (BatchLogOptions::segment_bytes). Tests make it
  // small to switch segments often.
  uint64_t log_segment_bytes = uint64_t{16} << 20;
};

class RocksDbStore final : public StateStore {
 public:
  // The on-disk format this build reads and writes.
  static constexpr char kFormatVersion[] = "kldrift-store-4";
  // Read too, and marked as kFormatVersion on opening (an older kldriftd then refuses the folder):
  // kldrift-store-1 kept its log records in the log family, kldrift-store-2 wrote them to the
  // write-ahead log in the stream-keys format, kldrift-store-3 compact records there;
  // kldrift-store-4 writes them to its own BatchLog.
  static constexpr const char* kUpgradedFormatVersions[] = {"kldrift-store-1", "kldrift-store-2",
                                                            "kldrift-store-3"};

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
  // The batch log's end (BatchLog::End).
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
  absl::Status CopyLogInto(const std::string& dir) ABSL_EXCLUSIVE_LOCKS_REQUIRED(log_files_mutex_);

  RocksDbStoreOptions options_;
  std::unique_ptr<rocksdb::CompactionFilter> retention_;  // Outlives db_ (declared before it).
  std::unique_ptr<rocksdb::DB> db_;
  std::vector<rocksdb::ColumnFamilyHandle*> handles_;  // Owned; destroyed before db_.
  rocksdb::WriteOptions write_options_;
  std::unique_ptr<BatchLog> log_;
  // Held while TruncateLog frees log records and while Backup checkpoints and copies them.
  Mutex log_files_mutex_;
  // The largest lsn in the log family (0: none), which TruncateLog then truncates too.
  std::atomic<uint64_t> legacy_log_lsn_{0};
  // The largest lsn of a record in RocksDB's write-ahead log (an earlier format's; 0: none).
  // TruncateLog deletes archived write-ahead log files once its `up_to` reaches it.
  std::atomic<uint64_t> legacy_wal_lsn_{0};
  // Each client's last sequence number and when it was seen, as the records carry them; written
  // to the clients family by TruncateLog (`dirty`: not yet).
  struct ClientSequence {
    uint64_t sequence = 0;
    absl::Time seen;
    bool dirty = false;
  };
  ExclusiveMutex clients_mutex_;
  absl::flat_hash_map<std::string, ClientSequence> clients_ ABSL_GUARDED_BY(clients_mutex_);
};

}  // namespace kldrift

#endif  // KLDRIFT_SERVER_STORAGE_ROCKSDB_STORE_H_
