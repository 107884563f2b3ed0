#include "server/storage/rocksdb_store.h"

#include <stdlib.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kldrift/storage/v1/storage.pb.h"
#include "rocksdb/db.h"
#include "rocksdb/write_batch.h"
#include "server/core/clock.h"
#include "server/core/count_scan.h"
#include "server/core/drift_engine.h"
#include "server/core/testing/temp_dir.h"

namespace kldrift {
namespace {

// A view of `record` for WriteBatch, its deltas' views in `deltas` (replaced).
IngestRecordView ViewOf(const IngestRecord& record, std::vector<StreamDeltaView>& deltas) {
  deltas.clear();
  for (const StreamDelta& d : record.deltas) {
    deltas.push_back(StreamDeltaView{d.stream.model, d.stream.model_version, d.stream.signal,
                                     d.values, d.known_counts, d.max_count});
  }
  return IngestRecordView{record.lsn,         record.client_id,  record.sequence,
                          record.received_at, record.event_time, deltas};
}

// An engine's options with `store` (designated initializers would leave GCC warning about every
// other member).
EngineOptions OptionsWithStore(StateStore* store) {
  EngineOptions options;
  options.store = store;
  return options;
}

namespace fs = std::filesystem;
using ::testing::HasSubstr;

ReferenceSpec Numeric(const StreamKey& key, std::vector<double> counts) {
  ReferenceSpec spec;
  spec.stream = key;
  spec.kind = ReferenceKind::kNumeric;
  for (size_t e = 0; e <= counts.size(); ++e) spec.edges.push_back(static_cast<double>(e));
  spec.counts = std::move(counts);
  return spec;
}

StreamData Histogram(const StreamKey& key, std::vector<double> counts) {
  StreamData data;
  data.model_version = key.model_version;
  data.signal = key.signal;
  data.type = StreamData::Type::kHistogram;
  data.numbers = std::move(counts);
  return data;
}

IngestBatch Batch(const std::string& client, uint64_t sequence, const std::string& model,
                  std::vector<StreamData> streams) {
  IngestBatch batch;
  batch.client_id = client;
  batch.sequence = sequence;
  batch.model = model;
  batch.streams = std::move(streams);
  return batch;
}

// A closed store opened with plain RocksDB, to write what another kldriftd build would have. Its
// write-ahead log files are archived, not deleted, as the store's own options have them.
class PlainRocksDb {
 public:
  explicit PlainRocksDb(const std::string& path) {
    EXPECT_TRUE(rocksdb::DB::ListColumnFamilies(rocksdb::DBOptions(), path, &families_).ok());
    std::vector<rocksdb::ColumnFamilyDescriptor> descriptors;
    for (const std::string& name : families_) {
      descriptors.emplace_back(name, rocksdb::ColumnFamilyOptions());
    }
    rocksdb::DBOptions options;
    options.WAL_size_limit_MB = 1 << 30;
    rocksdb::DB* db = nullptr;
    EXPECT_TRUE(rocksdb::DB::Open(options, path, descriptors, &handles_, &db).ok());
    db_.reset(db);
  }
  ~PlainRocksDb() {
    for (auto* handle : handles_) db_->DestroyColumnFamilyHandle(handle);
  }

  rocksdb::DB& db() { return *db_; }
  rocksdb::ColumnFamilyHandle* family(const std::string& name) {
    return handles_.at(std::find(families_.begin(), families_.end(), name) - families_.begin());
  }

 private:
  std::vector<std::string> families_;
  std::vector<rocksdb::ColumnFamilyHandle*> handles_;
  std::unique_ptr<rocksdb::DB> db_;
};

// Rewrites a closed store's format marker (as another kldriftd would have written it).
void SetFormatMarker(const std::string& path, const std::string& format) {
  PlainRocksDb plain(path);
  ASSERT_TRUE(
      plain.db().Put(rocksdb::WriteOptions(), plain.family("meta"), "format_version", format).ok());
}

TEST(RocksDbStoreTest, CreatesAFreshStoreAndReopensIt) {
  TempDir dir("kldrift-store-test");
  FakeClock clock;
  const std::string path = dir.path() + "/data";
  {
    absl::StatusOr<std::unique_ptr<RocksDbStore>> store = RocksDbStore::Open({path, false, &clock});
    ASSERT_TRUE(store.ok()) << store.status();
  }
  absl::StatusOr<std::unique_ptr<RocksDbStore>> again = RocksDbStore::Open({path, true, &clock});
  ASSERT_TRUE(again.ok()) << again.status();
  again->reset();
  absl::StatusOr<std::string> report = RocksDbStore::Describe(path);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_THAT(*report, HasSubstr(RocksDbStore::kFormatVersion));
  EXPECT_THAT(*report, HasSubstr("checksums:  ok"));
}

TEST(RocksDbStoreTest, RefusesFoldersThatAreNotKldriftStores) {
  TempDir dir("kldrift-store-test");
  FakeClock clock;
  // A folder with someone else's files.
  std::ofstream(dir.path() + "/notes.txt") << "hello";
  absl::StatusOr<std::unique_ptr<RocksDbStore>> store =
      RocksDbStore::Open({dir.path(), false, &clock});
  EXPECT_EQ(store.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(store.status().message(), HasSubstr("not a kldrift data folder"));
  EXPECT_TRUE(fs::exists(dir.path() + "/notes.txt"));  // Nothing was reset.

  // Another application's RocksDB database.
  const std::string other = dir.path() + "/other-db";
  {
    rocksdb::Options options;
    options.create_if_missing = true;
    rocksdb::DB* db = nullptr;
    ASSERT_TRUE(rocksdb::DB::Open(options, other, &db).ok());
    ASSERT_TRUE(db->Put(rocksdb::WriteOptions(), "key", "value").ok());
    delete db;
  }
  store = RocksDbStore::Open({other, false, &clock});
  EXPECT_EQ(store.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(store.status().message(), HasSubstr("not a kldrift store"));
  EXPECT_FALSE(RocksDbStore::Describe(other).ok());
}

TEST(RocksDbStoreTest, RefusesAnotherFormatVersion) {
  TempDir dir("kldrift-store-test");
  FakeClock clock;
  const std::string path = dir.path() + "/data";
  ASSERT_TRUE(RocksDbStore::Open({path, false, &clock}).ok());
  SetFormatMarker(path, "kldrift-store-999");  // As a future kldriftd would.
  absl::StatusOr<std::unique_ptr<RocksDbStore>> store = RocksDbStore::Open({path, false, &clock});
  EXPECT_EQ(store.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(store.status().message(), HasSubstr("kldrift-store-999"));
  absl::StatusOr<std::string> report = RocksDbStore::Describe(path);
  EXPECT_FALSE(report.ok());
  EXPECT_THAT(report.status().message(), HasSubstr("NOT readable"));
}

TEST(RocksDbStoreTest, RefusesACorruptedFolderWithoutResettingIt) {
  TempDir dir("kldrift-store-test");
  FakeClock clock;
  const std::string path = dir.path() + "/data";
  {
    absl::StatusOr<std::unique_ptr<RocksDbStore>> store = RocksDbStore::Open({path, true, &clock});
    ASSERT_TRUE(store.ok());
    DriftEngine engine(OptionsWithStore(store->get()), &clock);
    ASSERT_TRUE(engine.PutReference(Numeric({"m", "", "s"}, {5, 5})).ok());
  }
  // Garble the manifest: RocksDB must notice, and kldriftd must refuse rather than start empty.
  std::string manifest;
  for (const auto& entry : fs::directory_iterator(path)) {
    if (entry.path().filename().string().rfind("MANIFEST-", 0) == 0) manifest = entry.path();
  }
  ASSERT_FALSE(manifest.empty());
  const auto size = fs::file_size(manifest);
  {
    std::fstream file(manifest, std::ios::in | std::ios::out | std::ios::binary);
    file.seekp(static_cast<std::streamoff>(size / 2));
    const std::string garbage(64, '\x5a');
    file.write(garbage.data(), static_cast<std::streamsize>(garbage.size()));
  }
  absl::StatusOr<std::unique_ptr<RocksDbStore>> store = RocksDbStore::Open({path, false, &clock});
  ASSERT_FALSE(store.ok());
  EXPECT_THAT(store.status().message(), HasSubstr(path));
  EXPECT_EQ(fs::file_size(manifest), size);  // Left as it was, for an operator to inspect.
}

// Everything the engine holds survives a close and reopen: references and versions, windows to the
// last count, client sequences (a resend is a duplicate) and alert states.
TEST(RocksDbStoreTest, EngineStateRoundTripsThroughTheStore) {
  TempDir dir("kldrift-store-test");
  FakeClock clock;
  const std::string path = dir.path() + "/data";
  const StreamKey score{"fraud", "v1", "score"};
  const StreamKey amount{"fraud", "v1", "amount"};
  const StreamKey latent{"vae", "", "latent"};
  std::vector<std::vector<WindowReport>> before;
  AlertPolicy fast;
  fast.windows = {absl::Minutes(5), absl::Hours(1)};
  fast.for_duration = absl::ZeroDuration();
  fast.min_samples = 10;
  fast.max_p_value = 1;
  {
    absl::StatusOr<std::unique_ptr<RocksDbStore>> store = RocksDbStore::Open({path, false, &clock});
    ASSERT_TRUE(store.ok());
    DriftEngine engine(OptionsWithStore(store->get()), &clock);
    ReferenceSpec spec = Numeric(score, {100, 100, 100});
    spec.policy = fast;
    ASSERT_TRUE(engine.PutReference(spec).ok());
    ASSERT_TRUE(engine.PutReference(spec).ok());  // Version 2, same bins: windows kept.
    ASSERT_TRUE(engine.PutReference(Numeric(amount, {1, 2, 3, 4})).ok());
    ReferenceSpec gauss;
    gauss.stream = latent;
    gauss.kind = ReferenceKind::kGaussian;
    gauss.gaussian = {{0, 0}, {1, 1}};
    ASSERT_TRUE(engine.PutReference(gauss).ok());
    for (uint64_t seq = 1; seq <= 20; ++seq) {
      ASSERT_TRUE(engine
                      .Ingest(Batch("svc", seq, "fraud",
                                    {Histogram(score, {0, 0, 0, 7, 0, 0}),
                                     Histogram(amount, {0, 1, 1, 0, 1, 0, 0})}))
                      .status.ok());
      clock.Advance(absl::Seconds(20));
    }
    StreamData stats;
    stats.signal = "latent";
    stats.type = StreamData::Type::kGaussian;
    stats.gaussian_count = 50;
    stats.gaussian_sum = {10, -5};
    stats.gaussian_sum_squares = {70, 40};
    ASSERT_TRUE(engine.Ingest(Batch("vae-client", 1, "vae", {stats})).status.ok());
    engine.Evaluate();  // Everything drifted: score's windows go straight to firing.
    // Batches after the last evaluation are only in the log: start-up must replay them.
    for (uint64_t seq = 21; seq <= 23; ++seq) {
      ASSERT_TRUE(
          engine.Ingest(Batch("svc", seq, "fraud", {Histogram(amount, {0, 0, 2, 0, 1, 0, 0})}))
              .status.ok());
    }
    // Counts of 64 and more (the largest 64 in one stream, 200 in the other) next to small ones:
    // the log must not take them for single-byte counts.
    ASSERT_TRUE(engine
                    .Ingest(Batch("svc", 24, "fraud",
                                  {Histogram(score, {1, 0, 64, 2, 0, 3}),
                                   Histogram(amount, {0, 64, 200, 0, 1, 63, 0})}))
                    .status.ok());
    for (const StreamKey& key : {score, amount, latent}) {
      before.push_back(*engine.GetDrift(key, std::nullopt, 3));
    }
    ASSERT_EQ(before[0][0].alert.state, AlertState::kFiring);
  }
  absl::StatusOr<std::unique_ptr<RocksDbStore>> store = RocksDbStore::Open({path, false, &clock});
  ASSERT_TRUE(store.ok()) << store.status();
  DriftEngine engine(OptionsWithStore(store->get()), &clock);
  ASSERT_TRUE(engine.Recover().ok());
  EXPECT_EQ(engine.stream_count(), 3u);
  EXPECT_EQ((*engine.GetReference(score, 0))->version, 2u);
  EXPECT_EQ((*engine.GetReference(score, 1))->version, 1u);
  const std::vector<StreamKey> keys = {score, amount, latent};
  for (size_t i = 0; i < keys.size(); ++i) {
    const std::vector<WindowReport> after = *engine.GetDrift(keys[i], std::nullopt, 3);
    ASSERT_EQ(after.size(), before[i].size());
    for (size_t w = 0; w < after.size(); ++w) {
      SCOPED_TRACE(absl::StrCat(keys[i].ToString(), " window ", w));
      EXPECT_EQ(after[w].samples, before[i][w].samples);
      EXPECT_EQ(after[w].measure_value, before[i][w].measure_value);  // Integer counts: exact.
      EXPECT_EQ(after[w].alert.state, before[i][w].alert.state);
      EXPECT_EQ(after[w].alert.since, before[i][w].alert.since);
    }
  }
  // Resending an acknowledged batch is a duplicate after the restart too.
  const IngestResult resend =
      engine.Ingest(Batch("svc", 24, "fraud", {Histogram(score, {0, 0, 0, 7, 0, 0})}));
  EXPECT_TRUE(resend.duplicate);
  EXPECT_EQ(resend.acked_sequence, 24u);
  // Snapshots after the restart, then another restart: still the same windows.
  engine.Evaluate();
  // Deleting a stream deletes it from the store as well.
  ASSERT_TRUE(engine.DeleteReference(amount).ok());
  store->reset();
  absl::StatusOr<std::unique_ptr<RocksDbStore>> reopened =
      RocksDbStore::Open({path, false, &clock});
  ASSERT_TRUE(reopened.ok());
  DriftEngine third(OptionsWithStore(reopened->get()), &clock);
  ASSERT_TRUE(third.Recover().ok());
  EXPECT_EQ(third.stream_count(), 2u);
  EXPECT_EQ(third.GetReference(amount, 0).status().code(), absl::StatusCode::kNotFound);
}

TEST(RocksDbStoreTest, AReferenceAnOlderServerAcceptedWithClearAboveAZeroWarnStillLoads) {
  // Before 2026-11-25 ValidatePolicy let clear_threshold exceed a warn_threshold of 0; such a
  // stored reference must not keep the store from opening: it loads with clear = warn = 0.
  TempDir dir("kldrift-store-test");
  FakeClock clock;
  const std::string path = dir.path() + "/data";
  const StreamKey stream{"m", "", "s"};
  {
    absl::StatusOr<std::unique_ptr<RocksDbStore>> store = RocksDbStore::Open({path, false, &clock});
    ASSERT_TRUE(store.ok());
    ReferenceSpec spec = Numeric(stream, {100, 100, 100});
    spec.policy.warn_threshold = 0;
    spec.policy.clear_threshold = 0;
    absl::StatusOr<std::shared_ptr<const Reference>> valid =
        BuildReference(spec, 1, clock.Now(), ReferenceLimits());
    ASSERT_TRUE(valid.ok()) << valid.status();
    Reference old_server = **valid;
    old_server.policy.clear_threshold = 0.005;  // What the older validation let through.
    ASSERT_FALSE(ValidatePolicy(old_server.policy).ok());
    ASSERT_TRUE((*store)->PutReference(old_server, /*reset_windows=*/true, /*lsn_floor=*/0).ok());
  }
  absl::StatusOr<std::unique_ptr<RocksDbStore>> store = RocksDbStore::Open({path, false, &clock});
  ASSERT_TRUE(store.ok()) << store.status();
  DriftEngine engine(OptionsWithStore(store->get()), &clock);
  ASSERT_TRUE(engine.Recover().ok());
  absl::StatusOr<std::shared_ptr<const Reference>> loaded = engine.GetReference(stream, 0);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ((*loaded)->policy.warn_threshold, 0);
  EXPECT_THAT((*loaded)->policy.clear_threshold, testing::Optional(0.0));
}

// Sub-buckets whose window has passed are removed from disk by compaction.
// Log records and window snapshots keep every value exactly, whichever encoding it takes: single
// bytes (counts below 64), zig-zag varints (other integers below 2^53 in magnitude) or doubles.
TEST(RocksDbStoreTest, ValuesRoundTripAcrossTheirEncodings) {
  TempDir dir("kldrift-store-test");
  FakeClock clock;
  const std::string path = dir.path() + "/data";
  absl::StatusOr<std::unique_ptr<RocksDbStore>> store = RocksDbStore::Open({path, false, &clock});
  ASSERT_TRUE(store.ok()) << store.status();
  std::vector<std::vector<double>> cases = {
      {},
      {0, 1, 2, 62, 63},                      // single bytes
      {0, 63, 64},                            // 64: the first two-byte varint
      {-1, 0, 1},                             // negative
      {127, 128, 16383, 16384, 1e15, -1e15},  // varint lengths
      {9007199254740991.0, -9007199254740991.0},
      {9007199254740992.0},  // 2^53: stored as a double
      {0.5, 1, 2},           // a fraction
      {std::nan(""), 1},     // NaN
      {-0.0, 3},             // -0 reads back as 0 (equal)
      {std::numeric_limits<double>::infinity()},
      std::vector<double>(1000, 63),
      // Counts below 16 are bit-packed, as few bits as the largest needs, any length.
      std::vector<double>(67, 0),  // 1 bit, all zeros
      {1},
      {0, 1, 1, 0, 1, 0, 0, 1, 1},                                 // 1 bit, 9 values: a second byte
      {3, 0, 2, 1, 3, 3, 1},                                       // 2 bits
      {0, 15, 7, 8, 1, 14, 2, 13, 4, 11, 5, 10, 6, 9, 3, 12, 15},  // 4 bits
      {15, 16},                                                    // 16: one byte each
  };
  // Longer than the packer's 64-value chunks, with a partial output byte at the end, and whole
  // chunks.
  for (auto [length, below] :
       {std::pair<int, int>{129, 2}, {203, 4}, {131, 16}, {64, 2}, {64, 4}, {128, 16}}) {
    cases.emplace_back();
    for (int i = 0; i < length; ++i) cases.back().push_back((i * 7 + i / 5) % below);
  }
  IngestRecord record;
  record.lsn = 7;
  record.client_id = "c";
  record.sequence = 1;
  record.received_at = clock.Now();
  record.event_time = clock.Now();
  std::vector<StreamSnapshot> snapshots;
  for (size_t i = 0; i < cases.size(); ++i) {
    // One stream of another model than the record's others; the engine writes one model per
    // record, and says whether the values are counts (checked from the values otherwise).
    const StreamKey key{i == 3 ? "another-model" : "m", i % 2 == 0 ? "" : "v1",
                        absl::StrCat("s", i)};
    const SmallCountScan scan = ScanSmallCounts(cases[i]);
    record.deltas.push_back(StreamDelta{key, cases[i], scan.small_counts && i % 3 == 0, scan.max});
    snapshots.push_back(StreamSnapshot{
        key, 7, {SubBucketDelta{key, absl::Hours(1), absl::FromUnixSeconds(3600), cases[i]}}});
  }
  std::vector<StreamDeltaView> views;
  ASSERT_TRUE((*store)->WriteBatch(ViewOf(record, views)).ok());
  ASSERT_TRUE((*store)->WriteSnapshots(snapshots).ok());

  auto same = [](const std::vector<double>& got, const std::vector<double>& want) {
    if (got.size() != want.size()) return false;
    for (size_t i = 0; i < got.size(); ++i) {
      if (!(got[i] == want[i] || (std::isnan(got[i]) && std::isnan(want[i])))) return false;
    }
    return true;
  };
  std::vector<IngestRecord> records;
  std::vector<SubBucketDelta> sub_buckets;
  StateStore::Visitor visitor;
  visitor.log_record = [&](const IngestRecord& r) { records.push_back(r); };
  visitor.sub_bucket = [&](const SubBucketDelta& b) { sub_buckets.push_back(b); };
  ASSERT_TRUE((*store)->Load(visitor).ok());
  ASSERT_EQ(records.size(), 1u);
  ASSERT_EQ(records[0].deltas.size(), cases.size());
  for (size_t i = 0; i < cases.size(); ++i) {
    EXPECT_EQ(records[0].deltas[i].stream, record.deltas[i].stream);
    EXPECT_TRUE(same(records[0].deltas[i].values, cases[i])) << "log record, case " << i;
  }
  // Empty sub-buckets are not kept (nothing to restore).
  size_t checked = 0;
  for (const SubBucketDelta& b : sub_buckets) {
    const size_t i = std::stoul(b.stream.signal.substr(1));
    EXPECT_EQ(b.stream, record.deltas[i].stream);
    ASSERT_LT(i, cases.size());
    EXPECT_TRUE(same(b.values, cases[i])) << "snapshot, case " << i;
    ++checked;
  }
  EXPECT_GE(checked, cases.size() - 1);
}

TEST(RocksDbStoreTest, ExpiredSubBucketsAreDeletedOnCompaction) {
  TempDir dir("kldrift-store-test");
  FakeClock clock;
  const std::string path = dir.path() + "/data";
  absl::StatusOr<std::unique_ptr<RocksDbStore>> store = RocksDbStore::Open({path, false, &clock});
  ASSERT_TRUE(store.ok());
  DriftEngine engine(OptionsWithStore(store->get()), &clock);
  const StreamKey key{"m", "", "s"};
  ASSERT_TRUE(engine.PutReference(Numeric(key, {1, 1})).ok());
  for (uint64_t seq = 1; seq <= 50; ++seq) {
    ASSERT_TRUE(engine.Ingest(Batch("c", seq, "m", {Histogram(key, {0, 1, 1, 0, 0})})).status.ok());
    engine.Evaluate();  // The tick snapshots the changed sub-buckets and truncates the log.
    clock.Advance(absl::Minutes(10));
  }
  auto count_sub_buckets = [&] {
    size_t n = 0;
    StateStore::Visitor visitor;
    visitor.sub_bucket = [&n](const SubBucketDelta&) { ++n; };
    EXPECT_TRUE((*store)->Load(visitor).ok());
    return n;
  };
  const size_t before = count_sub_buckets();
  EXPECT_GT(before, 30u);          // 50 batches 10 minutes apart: 5m, 1h and 24h sub-buckets.
  clock.Advance(absl::Hours(48));  // Past every window (24h) by more than half of it.
  ASSERT_TRUE((*store)->CompactWindows().ok());
  EXPECT_EQ(count_sub_buckets(), 0u);
}

// ---- The log
// -------------------------------------------------------------------------------------

// A log record of one stream whose values tell its lsn.
IngestRecord LogRecord(uint64_t lsn, absl::Time now) {
  IngestRecord record;
  record.lsn = lsn;
  record.client_id = "c";
  record.sequence = lsn;
  record.received_at = now;
  record.event_time = now;
  record.deltas.push_back(
      StreamDelta{StreamKey{"m", "", "s"}, {static_cast<double>(lsn), 1, 70, 0.5}});
  return record;
}

// The lsns of the log records Load returns, in its order; checks each record's contents.
std::vector<uint64_t> LoggedLsns(RocksDbStore& store) {
  std::vector<uint64_t> lsns;
  StateStore::Visitor visitor;
  visitor.log_record = [&](const IngestRecord& record) {
    lsns.push_back(record.lsn);
    ASSERT_EQ(record.deltas.size(), 1u);
    EXPECT_EQ(record.deltas[0].stream, (StreamKey{"m", "", "s"}));
    EXPECT_EQ(record.deltas[0].values,
              (std::vector<double>{static_cast<double>(record.lsn), 1, 70, 0.5}));
  };
  EXPECT_TRUE(store.Load(visitor).ok());
  return lsns;
}

std::vector<uint64_t> Range(uint64_t first, uint64_t last) {
  std::vector<uint64_t> out;
  for (uint64_t lsn = first; lsn <= last; ++lsn) out.push_back(lsn);
  return out;
}

void WriteRecords(RocksDbStore& store, uint64_t first, uint64_t last, absl::Time now) {
  for (uint64_t lsn = first; lsn <= last; ++lsn) {
    const IngestRecord record = LogRecord(lsn, now);
    std::vector<StreamDeltaView> views;
    ASSERT_TRUE(store.WriteBatch(ViewOf(record, views)).ok());
  }
}

// The files of the batch log in `data_dir`: segments (by name), or free ones.
std::vector<std::string> BatchLogFiles(const std::string& data_dir, bool free_ones) {
  std::vector<std::string> names;
  std::error_code error;
  for (const auto& entry : fs::directory_iterator(data_dir + "/batchlog", error)) {
    const std::string name = entry.path().filename();
    if (entry.path().extension() == ".seg" && (name.rfind("free-", 0) == 0) == free_ones) {
      names.push_back(name);
    }
  }
  std::sort(names.begin(), names.end());
  return names;
}

// The last sequence number the clients family holds for `client` (closed store), 0 if none.
uint64_t StoredClientSequence(const std::string& path, const std::string& client) {
  PlainRocksDb plain(path);
  std::string value;
  if (!plain.db().Get(rocksdb::ReadOptions(), plain.family("clients"), client, &value).ok()) {
    return 0;
  }
  storage::v1::StoredClient stored;
  EXPECT_TRUE(stored.ParseFromString(value));
  return stored.last_sequence();
}

// Log records go to the batch log; TruncateLog frees whole segments, oldest first, and only those
// whose every record was written before the `end` it is given, after writing the sequence numbers
// those records carried to the clients family.
TEST(RocksDbStoreTest, LogRecordsLiveInTheBatchLogAndAreTruncatedByWholeSegments) {
  TempDir dir("kldrift-store-test");
  FakeClock clock;
  const std::string path = dir.path() + "/data";
  RocksDbStoreOptions options{path, false, &clock};
  options.log_segment_bytes = 4096;  // 46 of these records (88 bytes each).
  auto open = [&] {
    absl::StatusOr<std::unique_ptr<RocksDbStore>> store = RocksDbStore::Open(options);
    EXPECT_TRUE(store.ok()) << store.status();
    return store.ok() ? *std::move(store) : nullptr;
  };
  std::unique_ptr<RocksDbStore> store = open();
  ASSERT_NE(store, nullptr);
  WriteRecords(*store, 1, 50, clock.Now());
  const uint64_t end_of_50 = store->LogEnd();
  store.reset();  // A restart goes on where the log ended.
  store = open();
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(store->LogEnd(), end_of_50);
  WriteRecords(*store, 51, 120, clock.Now());
  EXPECT_GT(store->LogEnd(), end_of_50);
  EXPECT_EQ(LoggedLsns(*store), Range(1, 120));
  const size_t segments = BatchLogFiles(path, false).size();
  EXPECT_GE(segments, 3u);
  {
    absl::StatusOr<std::string> report = RocksDbStore::Describe(path);
    ASSERT_TRUE(report.ok()) << report.status();
    EXPECT_THAT(*report, HasSubstr("  log: 0 records"));                // Not in the log family...
    EXPECT_THAT(*report, HasSubstr("batch log: 120 log records"));      // ...but here,
    EXPECT_THAT(*report, HasSubstr("write-ahead log: 0 log records"));  // and not there.
  }
  // The segments wholly before the end of record 50 go; the one holding it stays.
  ASSERT_TRUE(store->TruncateLog(50, end_of_50).ok());
  std::vector<uint64_t> lsns = LoggedLsns(*store);
  ASSERT_FALSE(lsns.empty());
  EXPECT_GT(lsns.front(), 1u);
  EXPECT_LE(lsns.front(), 50u);
  EXPECT_EQ(lsns, Range(lsns.front(), 120));
  EXPECT_LT(BatchLogFiles(path, false).size(), segments);
  EXPECT_FALSE(BatchLogFiles(path, true).empty());  // Kept for reuse.
  // Everything before the end: all but the last segment.
  ASSERT_TRUE(store->TruncateLog(120, store->LogEnd()).ok());
  lsns = LoggedLsns(*store);
  ASSERT_FALSE(lsns.empty());
  EXPECT_GT(lsns.front(), 120u - 50);  // A segment holds fewer than 50.
  EXPECT_EQ(lsns, Range(lsns.front(), 120));
  EXPECT_EQ(BatchLogFiles(path, false).size(), 1u);
  EXPECT_LE(BatchLogFiles(path, true).size(), 4u);
  store.reset();
  // The freed records' sequence numbers were written before they went.
  EXPECT_EQ(StoredClientSequence(path, "c"), 120u);
  store = open();
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(LoggedLsns(*store), lsns);  // Freed segments stay gone after a restart.
  // Records written into reused segment files read back, never what those files held before.
  WriteRecords(*store, 121, 300, clock.Now());
  EXPECT_EQ(LoggedLsns(*store), Range(lsns.front(), 300));
  ASSERT_TRUE(store->TruncateLog(300, store->LogEnd()).ok());
  store.reset();
  store = open();
  ASSERT_NE(store, nullptr);
  lsns = LoggedLsns(*store);
  ASSERT_FALSE(lsns.empty());
  EXPECT_GT(lsns.front(), 300u - 50);
  EXPECT_EQ(lsns, Range(lsns.front(), 300));
  uint64_t client_sequence = 0;
  StateStore::Visitor visitor;
  visitor.client = [&](const std::string& id, uint64_t sequence, absl::Time) {
    EXPECT_EQ(id, "c");
    client_sequence = sequence;
  };
  ASSERT_TRUE(store->Load(visitor).ok());
  EXPECT_EQ(client_sequence, 300u);
  // A backup carries the records the log holds.
  const std::string copy = dir.path() + "/copy";
  ASSERT_TRUE(store->Backup(copy).ok());
  {
    absl::StatusOr<std::unique_ptr<RocksDbStore>> restored =
        RocksDbStore::Open({copy, false, &clock});
    ASSERT_TRUE(restored.ok()) << restored.status();
    EXPECT_EQ(LoggedLsns(**restored), lsns);
    client_sequence = 0;
    ASSERT_TRUE((*restored)->Load(visitor).ok());
    EXPECT_EQ(client_sequence, 300u);
  }
  // And the log goes on after that.
  WriteRecords(*store, 301, 305, clock.Now());
  EXPECT_EQ(LoggedLsns(*store), Range(lsns.front(), 305));
}

// A backup's checkpoint does not hold the write-ahead log: the records it needs are copied into
// its log family, read like a store of the previous format, and truncated from there.
TEST(RocksDbStoreTest, ABackupCarriesItsLogRecordsInTheLogFamily) {
  TempDir dir("kldrift-store-test");
  FakeClock clock;
  const std::string path = dir.path() + "/data";
  const std::string copy = dir.path() + "/backup";
  {
    absl::StatusOr<std::unique_ptr<RocksDbStore>> store = RocksDbStore::Open({path, false, &clock});
    ASSERT_TRUE(store.ok()) << store.status();
    WriteRecords(**store, 1, 30, clock.Now());
    absl::StatusOr<uint64_t> bytes = (*store)->Backup(copy);
    ASSERT_TRUE(bytes.ok()) << bytes.status();
    WriteRecords(**store, 31, 40, clock.Now());  // After the backup: not in it.
    EXPECT_EQ(LoggedLsns(**store), Range(1, 40));
  }
  absl::StatusOr<std::string> report = RocksDbStore::Describe(copy);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_THAT(*report, HasSubstr("  log: 30 records"));
  absl::StatusOr<std::unique_ptr<RocksDbStore>> restored =
      RocksDbStore::Open({copy, false, &clock});
  ASSERT_TRUE(restored.ok()) << restored.status();
  EXPECT_EQ(LoggedLsns(**restored), Range(1, 30));
  WriteRecords(**restored, 31, 35, clock.Now());
  EXPECT_EQ(LoggedLsns(**restored), Range(1, 35));
  // Truncation reaches the log family too.
  ASSERT_TRUE((*restored)->TruncateLog(20, (*restored)->LogEnd()).ok());
  EXPECT_EQ(LoggedLsns(**restored), Range(21, 35));
  ASSERT_TRUE((*restored)->TruncateLog(30, (*restored)->LogEnd()).ok());
  EXPECT_EQ(LoggedLsns(**restored), Range(31, 35));
}

// A store of the first format (log records in the log family) opens, is marked as the current
// format, and keeps its records.
TEST(RocksDbStoreTest, AStoreOfThePreviousFormatIsUpgradedWithItsLog) {
  TempDir dir("kldrift-store-test");
  FakeClock clock;
  const std::string path = dir.path() + "/data";
  const std::string old = dir.path() + "/old";
  {
    absl::StatusOr<std::unique_ptr<RocksDbStore>> store = RocksDbStore::Open({path, false, &clock});
    ASSERT_TRUE(store.ok()) << store.status();
    WriteRecords(**store, 1, 12, clock.Now());
    ASSERT_TRUE((*store)->Backup(old).ok());  // Its records are in the log family.
  }
  SetFormatMarker(old, RocksDbStore::kUpgradedFormatVersions[0]);
  absl::StatusOr<std::string> report = RocksDbStore::Describe(old);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_THAT(*report, HasSubstr("upgraded when this kldriftd opens it"));
  {
    absl::StatusOr<std::unique_ptr<RocksDbStore>> store = RocksDbStore::Open({old, false, &clock});
    ASSERT_TRUE(store.ok()) << store.status();
    EXPECT_EQ(LoggedLsns(**store), Range(1, 12));
    WriteRecords(**store, 13, 14, clock.Now());
    EXPECT_EQ(LoggedLsns(**store), Range(1, 14));
  }
  report = RocksDbStore::Describe(old);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_THAT(*report, HasSubstr(absl::StrCat(RocksDbStore::kFormatVersion,
                                              " (readable by this kldriftd)")));
}

// ---- Records of the stream-keys format (kldrift-store-1 and -2) ---------------------------------

void AppendBigEndianForTest(std::string* out, uint64_t value) {
  for (int shift = 56; shift >= 0; shift -= 8) out->push_back(static_cast<char>(value >> shift));
}

void AppendVarintForTest(std::string* out, uint64_t value) {
  for (; value >= 0x80; value >>= 7) out->push_back(static_cast<char>(value | 0x80));
  out->push_back(static_cast<char>(value));
}

// A record's body as kldriftd wrote it before kldrift-store-3: event time (Unix microseconds,
// big-endian, sign bit flipped), varint count, then per stream: varint length and
// "model\0version\0signal\0", varint length and the values: tag 'V' and one byte 2v per count
// below 64, or tag 'D' and raw doubles.
std::string StreamKeysBody(const IngestRecord& record) {
  std::string out;
  AppendBigEndianForTest(
      &out, static_cast<uint64_t>(absl::ToUnixMicros(record.event_time)) ^ (uint64_t{1} << 63));
  AppendVarintForTest(&out, record.deltas.size());
  for (const StreamDelta& delta : record.deltas) {
    const std::string prefix =
        absl::StrCat(delta.stream.model, std::string(1, '\0'), delta.stream.model_version,
                     std::string(1, '\0'), delta.stream.signal, std::string(1, '\0'));
    AppendVarintForTest(&out, prefix.size());
    out += prefix;
    bool small = true;
    for (double v : delta.values) small &= v >= 0 && v < 64 && v == std::floor(v);
    std::string values(1, small ? 'V' : 'D');
    for (double v : delta.values) {
      if (small) {
        values.push_back(static_cast<char>(static_cast<int>(v) << 1));
      } else {
        values.append(reinterpret_cast<const char*>(&v), sizeof(v));
      }
    }
    AppendVarintForTest(&out, values.size());
    out += values;
  }
  return out;
}

// A kldrift-store-2 folder, written as that build wrote it: records 1-2 in the log family (as in a
// restored backup) and 3-7 in the write-ahead log (PutLogData blobs tagged 'R', each with the
// client's sequence in the same write), all in the stream-keys format. This build reads them all,
// marks the folder as its own format, writes batch log records after them, and truncates both
// kinds.
TEST(RocksDbStoreTest, RecordsOfTheStreamKeysFormatAreStillRead) {
  TempDir dir("kldrift-store-test");
  FakeClock clock;
  const std::string path = dir.path() + "/data";
  {
    absl::StatusOr<std::unique_ptr<RocksDbStore>> store = RocksDbStore::Open({path, false, &clock});
    ASSERT_TRUE(store.ok()) << store.status();
  }
  {
    PlainRocksDb plain(path);
    for (uint64_t lsn = 1; lsn <= 7; ++lsn) {
      const std::string body = StreamKeysBody(LogRecord(lsn, clock.Now()));
      rocksdb::WriteBatch batch;
      if (lsn >= 3) {
        std::string blob(1, 'R');
        AppendBigEndianForTest(&blob, lsn);
        batch.PutLogData(blob + body);
        storage::v1::StoredClient client;
        client.set_last_sequence(lsn);
        batch.Put(plain.family("clients"), "c", client.SerializeAsString());
      } else {
        std::string key;
        AppendBigEndianForTest(&key, lsn);
        batch.Put(plain.family("log"), key, body);
      }
      ASSERT_TRUE(plain.db().Write(rocksdb::WriteOptions(), &batch).ok());
    }
  }
  SetFormatMarker(path, RocksDbStore::kUpgradedFormatVersions[1]);
  absl::StatusOr<std::string> report = RocksDbStore::Describe(path);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_THAT(*report, HasSubstr("kldrift-store-2 (upgraded when this kldriftd opens it)"));
  EXPECT_THAT(*report, HasSubstr("write-ahead log: 5 log records"));
  uint64_t end_of_old_records = 0;
  {
    absl::StatusOr<std::unique_ptr<RocksDbStore>> store = RocksDbStore::Open({path, false, &clock});
    ASSERT_TRUE(store.ok()) << store.status();
    EXPECT_EQ(LoggedLsns(**store), Range(1, 7));  // LoggedLsns checks every record's contents.
    end_of_old_records = (*store)->LogEnd();
    WriteRecords(**store, 8, 10, clock.Now());
    EXPECT_EQ(LoggedLsns(**store), Range(1, 10));
  }
  report = RocksDbStore::Describe(path);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_THAT(*report, HasSubstr(absl::StrCat(RocksDbStore::kFormatVersion,
                                              " (readable by this kldriftd)")));
  absl::StatusOr<std::unique_ptr<RocksDbStore>> store = RocksDbStore::Open({path, false, &clock});
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_EQ(LoggedLsns(**store), Range(1, 10));
  // The log family's records go by lsn, the write-ahead log's with its archived files once the
  // snapshots cover them all (3-7 were archived on the first restart); 8-10 are in the batch log.
  ASSERT_TRUE((*store)->TruncateLog(7, end_of_old_records).ok());
  EXPECT_EQ(LoggedLsns(**store), Range(8, 10));
}

// LogRecord(lsn)'s body in the compact format of kldrift-store-3 (AppendCompactRecord): event
// time, the model once, then the stream's "version \0 signal \0" and its values as raw doubles.
std::string CompactBody(uint64_t lsn, absl::Time now) {
  std::string out;
  AppendBigEndianForTest(&out,
                         static_cast<uint64_t>(absl::ToUnixMicros(now)) ^ (uint64_t{1} << 63));
  out += std::string("\x01m\x01\x03\x00s\x00", 7);  // model "m", 1 stream: "" and "s"
  std::string values(1, 'D');
  for (double v : {static_cast<double>(lsn), 1.0, 70.0, 0.5}) {
    values.append(reinterpret_cast<const char*>(&v), sizeof(v));
  }
  AppendVarintForTest(&out, values.size());
  return out + values;
}

// A kldrift-store-3 folder, written as that build wrote it: compact records 1-5 in the write-ahead
// log (PutLogData blobs tagged 'C', each with the client's sequence in the same write). This build
// reads them, marks the folder as its format, writes records 6-8 to the batch log, and deletes the
// write-ahead log's once a truncation covers them.
TEST(RocksDbStoreTest, AStoreOfTheThirdFormatKeepsItsWriteAheadLogRecords) {
  TempDir dir("kldrift-store-test");
  FakeClock clock;
  const std::string path = dir.path() + "/data";
  {
    absl::StatusOr<std::unique_ptr<RocksDbStore>> store = RocksDbStore::Open({path, false, &clock});
    ASSERT_TRUE(store.ok()) << store.status();
  }
  fs::remove_all(path + "/batchlog");  // kldrift-store-3 had none.
  {
    PlainRocksDb plain(path);
    for (uint64_t lsn = 1; lsn <= 5; ++lsn) {
      std::string blob(1, 'C');
      AppendBigEndianForTest(&blob, lsn);
      rocksdb::WriteBatch batch;
      batch.PutLogData(blob + CompactBody(lsn, clock.Now()));
      storage::v1::StoredClient client;
      client.set_last_sequence(lsn);
      batch.Put(plain.family("clients"), "c", client.SerializeAsString());
      ASSERT_TRUE(plain.db().Write(rocksdb::WriteOptions(), &batch).ok());
    }
  }
  SetFormatMarker(path, "kldrift-store-3");
  absl::StatusOr<std::string> report = RocksDbStore::Describe(path);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_THAT(*report, HasSubstr("kldrift-store-3 (upgraded when this kldriftd opens it)"));
  EXPECT_THAT(*report, HasSubstr("write-ahead log: 5 log records"));
  EXPECT_THAT(*report, HasSubstr("batch log: 0 log records"));
  {
    absl::StatusOr<std::unique_ptr<RocksDbStore>> store = RocksDbStore::Open({path, false, &clock});
    ASSERT_TRUE(store.ok()) << store.status();
    EXPECT_EQ(LoggedLsns(**store), Range(1, 5));
    WriteRecords(**store, 6, 8, clock.Now());
    EXPECT_EQ(LoggedLsns(**store), Range(1, 8));
  }
  report = RocksDbStore::Describe(path);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_THAT(*report, HasSubstr(absl::StrCat(RocksDbStore::kFormatVersion,
                                              " (readable by this kldriftd)")));
  EXPECT_THAT(*report, HasSubstr("batch log: 3 log records"));
  absl::StatusOr<std::unique_ptr<RocksDbStore>> store = RocksDbStore::Open({path, false, &clock});
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_EQ(LoggedLsns(**store), Range(1, 8));
  // Snapshots up to lsn 4 leave the write-ahead log's files alone (record 5 is in them)...
  ASSERT_TRUE((*store)->TruncateLog(4, 0).ok());
  EXPECT_EQ(LoggedLsns(**store), Range(1, 8));
  // ...up to 5 they go; the batch log's records are not before the end given (0).
  ASSERT_TRUE((*store)->TruncateLog(5, 0).ok());
  EXPECT_EQ(LoggedLsns(**store), Range(6, 8));
  store->reset();
  EXPECT_EQ(StoredClientSequence(path, "c"), 8u);
}

// Malformed values in a compact record (written as no kldriftd writes them) make start-up fail
// with DATA_LOSS, and never decode into a huge vector: packed counts of 0 or 3 bits, a count the
// bytes cannot hold, a missing byte.
TEST(RocksDbStoreTest, MalformedPackedValuesAreReportedNotDecoded) {
  const std::vector<std::string> malformed_values = {
      std::string("P\x00\x80\x80\x80\x80\x80\x80\x01", 9),  // 0 bits, 2^42 values
      std::string("P\x03\x08\xff\xff\xff", 6),              // 3 bits
      std::string("P\x01\x80\x80\x04\xff", 6),              // 1 bit, 65536 values in a byte
      std::string("P\x02\x09\xff\xff", 5),                  // 2 bits, 9 values in 2 bytes
  };
  for (const std::string& values : malformed_values) {
    TempDir dir("kldrift-store-test");
    FakeClock clock;
    const std::string path = dir.path() + "/data";
    {
      absl::StatusOr<std::unique_ptr<RocksDbStore>> store =
          RocksDbStore::Open({path, false, &clock});
      ASSERT_TRUE(store.ok()) << store.status();
    }
    {
      PlainRocksDb plain(path);
      std::string blob(1, 'C');
      AppendBigEndianForTest(&blob, 1);  // lsn
      AppendBigEndianForTest(
          &blob, static_cast<uint64_t>(absl::ToUnixMicros(clock.Now())) ^ (uint64_t{1} << 63));
      blob += std::string("\x01m\x01\x03\x00s\x00", 7);  // model "m", 1 stream: "" and "s"
      AppendVarintForTest(&blob, values.size());
      blob += values;
      rocksdb::WriteBatch batch;
      batch.PutLogData(blob);
      storage::v1::StoredClient client;
      client.set_last_sequence(1);
      batch.Put(plain.family("clients"), "c", client.SerializeAsString());
      ASSERT_TRUE(plain.db().Write(rocksdb::WriteOptions(), &batch).ok());
    }
    absl::StatusOr<std::unique_ptr<RocksDbStore>> store = RocksDbStore::Open({path, false, &clock});
    ASSERT_TRUE(store.ok()) << store.status();
    const absl::Status loaded = (*store)->Load(StateStore::Visitor{});
    EXPECT_TRUE(absl::IsDataLoss(loaded)) << loaded;
    EXPECT_THAT(loaded.message(), HasSubstr("unreadable log record 1"));
  }
}

// A batch log record that checks (its CRC32C is right) but is not a kldrift record, or whose body
// does not decode, makes start-up fail with DATA_LOSS naming where it is; --check-data-dir says
// the same.
TEST(RocksDbStoreTest, UnreadableBatchLogRecordsAreReportedNotSkipped) {
  struct Case {
    std::string name;
    std::string blob;
    std::string message;
  };
  std::string bad_body(1, 'B');
  AppendBigEndianForTest(&bad_body, 7);  // lsn
  bad_body += std::string(
      "\x01"
      "c\x07",
      3);  // client "c", sequence 7, then too few bytes
  const std::vector<Case> cases = {
      {"not a kldrift record", "hello", "unreadable record (5 bytes) at batch log position 0"},
      {"a body that does not decode", bad_body, "unreadable log record 7 in the batch log"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    TempDir dir("kldrift-store-test");
    FakeClock clock;
    const std::string path = dir.path() + "/data";
    {
      absl::StatusOr<std::unique_ptr<RocksDbStore>> store =
          RocksDbStore::Open({path, false, &clock});
      ASSERT_TRUE(store.ok()) << store.status();
    }
    {
      BatchLogOptions options;
      options.dir = path + "/batchlog";
      absl::StatusOr<std::unique_ptr<BatchLog>> log = BatchLog::Open(options);
      ASSERT_TRUE(log.ok()) << log.status();
      ASSERT_TRUE((*log)->Append(c.blob).ok());
    }
    absl::StatusOr<std::unique_ptr<RocksDbStore>> store = RocksDbStore::Open({path, false, &clock});
    ASSERT_TRUE(store.ok()) << store.status();
    const absl::Status loaded = (*store)->Load(StateStore::Visitor{});
    EXPECT_TRUE(absl::IsDataLoss(loaded)) << loaded;
    EXPECT_THAT(loaded.message(), HasSubstr(c.message));
    store->reset();
    if (c.blob == "hello") {
      const absl::StatusOr<std::string> report = RocksDbStore::Describe(path);
      EXPECT_TRUE(absl::IsDataLoss(report.status())) << report.status();
      EXPECT_THAT(report.status().message(), HasSubstr(c.message));
    }
  }
}

// Ingest, ticks and restarts against a store whose batch log switches segments every few ticks
// (so segments are freed and reused while ingest goes on), next to an engine without a store that
// gets the same batches at the same times: after every restart, and at the end, the restored
// windows are the memory engine's.
TEST(RocksDbStoreTest, RestartsAmidFrequentLogFileSwitchesRestoreWhatWasAcknowledged) {
  TempDir dir("kldrift-store-test");
  FakeClock clock;
  RocksDbStoreOptions options{dir.path() + "/data", false, &clock};
  options.log_segment_bytes = 4 << 10;
  options.max_live_log_bytes = 4 << 10;  // And RocksDB's write-ahead log switches files often.
  constexpr int kStreams = 12;
  std::vector<StreamKey> keys;
  for (int i = 0; i < kStreams; ++i) keys.push_back({"m", "v1", absl::StrCat("s", i)});
  DriftEngine memory(EngineOptions{}, &clock);
  std::unique_ptr<RocksDbStore> store;
  std::unique_ptr<DriftEngine> engine;
  auto restart = [&] {
    engine.reset();
    store.reset();
    absl::StatusOr<std::unique_ptr<RocksDbStore>> opened = RocksDbStore::Open(options);
    ASSERT_TRUE(opened.ok()) << opened.status();
    store = *std::move(opened);
    engine = std::make_unique<DriftEngine>(OptionsWithStore(store.get()), &clock);
    ASSERT_TRUE(engine->Recover().ok());
  };
  auto expect_same_windows = [&](const std::string& when) {
    for (const StreamKey& key : keys) {
      absl::StatusOr<std::vector<WindowReport>> want = memory.GetDrift(key, std::nullopt, 0);
      absl::StatusOr<std::vector<WindowReport>> got = engine->GetDrift(key, std::nullopt, 0);
      ASSERT_TRUE(want.ok() && got.ok());
      ASSERT_EQ(got->size(), want->size());
      for (size_t w = 0; w < got->size(); ++w) {
        SCOPED_TRACE(absl::StrCat(when, ", ", key.signal, " window ", w));
        EXPECT_EQ((*got)[w].samples, (*want)[w].samples);
        EXPECT_EQ((*got)[w].measure_value, (*want)[w].measure_value);  // Whole counts: exact.
      }
    }
  };
  restart();
  for (const StreamKey& key : keys) {
    const std::vector<double> counts = {5, 5, 5, 5, 5, 5, 5, 5};
    ASSERT_TRUE(memory.PutReference(Numeric(key, counts)).ok());
    ASSERT_TRUE(engine->PutReference(Numeric(key, counts)).ok());
  }
  std::mt19937 rng(20261125);
  std::uniform_int_distribution<int> count(0, 6);
  std::bernoulli_distribution in_batch(0.6);
  uint64_t sequence = 0;
  std::set<std::string> log_files_seen;
  for (int step = 1; step <= 2400; ++step) {
    std::vector<StreamData> data;
    for (const StreamKey& key : keys) {
      if (!in_batch(rng)) continue;
      std::vector<double> counts(11);  // 8 bins, under- and overflow, NaN.
      for (double& c : counts) c = count(rng);
      data.push_back(Histogram(key, counts));
    }
    if (data.empty()) continue;
    const IngestBatch batch = Batch("c", ++sequence, "m", data);
    const IngestResult applied = memory.Ingest(batch);
    ASSERT_TRUE(applied.status.ok()) << applied.status;
    const IngestResult result = engine->Ingest(batch);
    ASSERT_TRUE(result.status.ok()) << result.status;
    ASSERT_FALSE(result.duplicate);
    if (step % 40 == 0) {  // A tick: snapshots, then the log truncated.
      for (const std::string& name : BatchLogFiles(options.path, false)) {
        log_files_seen.insert(name);
      }
      memory.Evaluate();
      engine->Evaluate();
    }
    if (step % 300 == 0) {
      restart();
      expect_same_windows(absl::StrCat("after the restart at step ", step));
    }
    clock.Advance(absl::Milliseconds(700));  // 28 minutes in all: 5m sub-buckets move and expire.
  }
  restart();
  expect_same_windows("at the end");
  // The log was cut into many segments, and the ticks freed the ones they covered.
  EXPECT_GE(log_files_seen.size(), 15u);
  engine->Evaluate();
  EXPECT_LE(BatchLogFiles(options.path, false).size(), 2u);
  EXPECT_LE(BatchLogFiles(options.path, true).size(), 4u);
  std::error_code error;
  EXPECT_TRUE(fs::is_empty(options.path + "/archive", error) ||
              !fs::exists(options.path + "/archive", error));
}

}  // namespace
}  // namespace kldrift
