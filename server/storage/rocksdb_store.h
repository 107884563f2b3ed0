// RocksDbStore: kldriftd's state in an embedded RocksDB under --data-dir (the default storage).
//
// Column families:
//   meta        "format_version" -> kFormatVersion; a folder without it is not ours.
//   references  stream | version            -> StoredReference (every version).
//   log         lsn                          -> one record per applied ingest batch: its event time
//                                               and every stream's delta. Ingest writes only this
//                                               (and the client's sequence): one record per batch.
//   windows     stream | window | start      -> snapshot of a sub-bucket's K values (zig-zag
//                                               varints when they are integers, raw doubles
//                                               otherwise), written on the evaluation tick for the
//                                               sub-buckets that changed; the log up to the
//                                               snapshot is then truncated.
//   meta        "lsn/" stream                -> the last log record a stream's snapshot includes.
//   clients     client id                    -> StoredClient (last applied sequence).
//   alerts      stream | window              -> StoredAlert.
// (stream = model \0 model_version \0 signal \0; window = seconds, start = Unix microseconds, both
// big-endian, the start with its sign bit flipped, so keys sort by time.)
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

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "rocksdb/compaction_filter.h"
#include "rocksdb/db.h"
#include "server/core/clock.h"
#include "server/core/state_store.h"

namespace kldrift {

struct RocksDbStoreOptions {
  std::string path;
  // fsync every write (see the class comment).
  bool sync = false;
  // Used by the retention filter; must outlive the store.
  const Clock* clock = nullptr;
};

class RocksDbStore final : public StateStore {
 public:
  // The on-disk format this build reads and writes.
  static constexpr char kFormatVersion[] = "kldrift-store-1";

  // Opens (or creates, when the folder is missing or empty) the store. Refuses, with a message
  // saying what to do, a folder that is not a kldrift store, one written in another format version,
  // or one RocksDB finds corrupted. Nothing is ever reset.
  static absl::StatusOr<std::unique_ptr<RocksDbStore>> Open(const RocksDbStoreOptions& options);
  ~RocksDbStore() override;

  absl::Status PutReference(const Reference& reference, bool reset_windows,
                            uint64_t lsn_floor) override;
  absl::Status DeleteStream(const StreamKey& stream) override;
  absl::Status WriteBatch(const IngestRecord& record) override;
  absl::Status WriteClientSequence(const std::string& client_id, uint64_t sequence,
                                   absl::Time seen) override;
  absl::Status WriteSnapshots(const std::vector<StreamSnapshot>& snapshots,
                              uint64_t truncate_up_to) override;
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

  RocksDbStoreOptions options_;
  std::unique_ptr<rocksdb::CompactionFilter> retention_;  // Outlives db_ (declared before it).
  std::unique_ptr<rocksdb::DB> db_;
  std::vector<rocksdb::ColumnFamilyHandle*> handles_;  // Owned; destroyed before db_.
  rocksdb::WriteOptions write_options_;
};

}  // namespace kldrift

#endif  // KLDRIFT_SERVER_STORAGE_ROCKSDB_STORE_H_
