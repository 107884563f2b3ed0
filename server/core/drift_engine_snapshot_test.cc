// How Evaluate() hands window snapshots to the store: one write per run of streams (so a tick over
// many streams never holds all of them at once), each stream's sub-buckets with its log position,
// and the log truncated only after every run's write succeeded. The store here records the calls
// and can be told to fail one: the engine's side of the protocol, which a real RocksDB store cannot
// be made to fail on cue. Restart and recovery over RocksDB are tested in
// server/storage/rocksdb_store_test.cc and tests/e2e/durability_test.cc.
#include <algorithm>
#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "server/core/clock.h"
#include "server/core/drift_engine.h"
#include "server/core/mutex.h"
#include "server/core/state_store.h"
#include "server/core/testing/engine_inputs.h"

namespace kldrift {
namespace {

using test_inputs::Hist;
using test_inputs::MakeBatch;

// More than two runs of the engine's 256 streams.
constexpr size_t kStreams = 700;

StreamKey Key(size_t s) { return {"m", "v1", absl::StrCat("s", s)}; }

// Records WriteSnapshots and TruncateLog calls; fails the call numbered `fail_call` (1-based, 0:
// none).
class RecordingStore final : public StateStore {
 public:
  struct SnapshotCall {
    std::set<std::string> signals;  // The streams snapshotted.
    size_t sub_buckets = 0;
    uint64_t truncate_up_to = 0;
    bool failed = false;
  };

  absl::Status PutReference(const Reference&, bool, uint64_t) override { return absl::OkStatus(); }
  absl::Status DeleteStream(const StreamKey&) override { return absl::OkStatus(); }
  absl::Status WriteBatch(const IngestRecordView&) override { return absl::OkStatus(); }
  absl::Status WriteClientSequence(const std::string&, uint64_t, absl::Time) override {
    return absl::OkStatus();
  }
  absl::Status WriteSnapshots(const std::vector<StreamSnapshot>& snapshots) override {
    SnapshotCall call;
    for (const StreamSnapshot& s : snapshots) {
      call.signals.insert(s.stream.signal);
      call.sub_buckets += s.sub_buckets.size();
    }
    return Record(std::move(call));
  }
  uint64_t LogEnd() override { return 0; }
  // Recorded as a call with no streams.
  absl::Status TruncateLog(uint64_t up_to, uint64_t) override {
    SnapshotCall call;
    call.truncate_up_to = up_to;
    return Record(std::move(call));
  }
  absl::Status WriteAlerts(const std::vector<AlertUpdate>&) override { return absl::OkStatus(); }
  absl::Status Load(const Visitor&) override { return absl::OkStatus(); }
  absl::StatusOr<uint64_t> Backup(const std::string&) override {
    return absl::UnimplementedError("not in this test");
  }

  absl::Status Record(SnapshotCall call) {
    MutexLock lock(&mutex_);
    call.failed = ++calls_made_ == fail_call_;
    calls_.push_back(call);
    return call.failed ? absl::UnavailableError("injected") : absl::OkStatus();
  }

  void FailCall(size_t n) {
    MutexLock lock(&mutex_);
    fail_call_ = calls_made_ + n;
  }
  std::vector<SnapshotCall> TakeCalls() {
    MutexLock lock(&mutex_);
    return std::exchange(calls_, {});
  }

 private:
  Mutex mutex_;
  size_t calls_made_ = 0;
  size_t fail_call_ = 0;
  std::vector<SnapshotCall> calls_;
};

class SnapshotTest : public ::testing::TestWithParam<int> {
 protected:
  void SetUp() override {
    EngineOptions options;
    options.store = &store_;
    options.eval_threads = GetParam();
    engine_ = std::make_unique<DriftEngine>(options, &clock_);
    for (size_t s = 0; s < kStreams; ++s) {
      ASSERT_TRUE(engine_->PutReference(test_inputs::PreBinned(Key(s), {5, 5, 5, 5})).ok());
    }
  }

  // Data for every stream, in batches of 50 streams (a batch holds its streams' locks at once,
  // and ThreadSanitizer's deadlock detector stops at 64 held locks).
  void IngestAll() {
    constexpr size_t kBatchStreams = 50;
    for (size_t first = 0; first < kStreams; first += kBatchStreams) {
      std::vector<StreamData> data;
      for (size_t s = first; s < std::min(kStreams, first + kBatchStreams); ++s) {
        data.push_back(Hist(Key(s), {1, 2, 3, 4}));
      }
      const IngestResult r = engine_->Ingest(MakeBatch("c", ++sequence_, "m", std::move(data)));
      ASSERT_TRUE(r.status.ok()) << r.status;
    }
  }

  FakeClock clock_;
  RecordingStore store_;
  std::unique_ptr<DriftEngine> engine_;
  uint64_t sequence_ = 0;
};

TEST_P(SnapshotTest, RunsAreWrittenSeparatelyAndTheLogTruncatedLast) {
  IngestAll();
  engine_->Evaluate();
  std::vector<RecordingStore::SnapshotCall> calls = store_.TakeCalls();
  ASSERT_GE(calls.size(), 4u) << "700 streams are three runs, plus the truncation";
  std::set<std::string> snapshotted;
  for (size_t i = 0; i + 1 < calls.size(); ++i) {
    EXPECT_EQ(calls[i].truncate_up_to, 0u) << "call " << i << " truncated before the last write";
    EXPECT_LE(calls[i].signals.size(), 256u);
    // One sub-bucket of each of the three default windows per stream.
    EXPECT_EQ(calls[i].sub_buckets, 3 * calls[i].signals.size());
    for (const std::string& signal : calls[i].signals) {
      EXPECT_TRUE(snapshotted.insert(signal).second) << signal << " written twice";
    }
  }
  EXPECT_EQ(snapshotted.size(), kStreams);
  EXPECT_TRUE(calls.back().signals.empty());
  EXPECT_GT(calls.back().truncate_up_to, 0u);
  EXPECT_EQ(engine_->store_errors(), 0u);

  // Nothing new: nothing to write, and the log is truncated already.
  engine_->Evaluate();
  EXPECT_TRUE(store_.TakeCalls().empty());
}

TEST_P(SnapshotTest, AFailedRunKeepsTheLogAndIsWrittenInFullNextTick) {
  IngestAll();
  engine_->Evaluate();
  store_.TakeCalls();

  IngestAll();
  store_.FailCall(2);  // The second run's write fails.
  engine_->Evaluate();
  std::vector<RecordingStore::SnapshotCall> calls = store_.TakeCalls();
  std::set<std::string> failed;
  for (const RecordingStore::SnapshotCall& call : calls) {
    EXPECT_EQ(call.truncate_up_to, 0u) << "the log was truncated although a run was not written";
    if (call.failed) failed = call.signals;
  }
  ASSERT_FALSE(failed.empty());
  EXPECT_EQ(engine_->store_errors(), 1u);

  // The next tick writes those streams in full though nothing new came, then truncates.
  engine_->Evaluate();
  calls = store_.TakeCalls();
  ASSERT_GE(calls.size(), 2u);
  std::set<std::string> rewritten;
  for (size_t i = 0; i + 1 < calls.size(); ++i) {
    EXPECT_FALSE(calls[i].failed);
    EXPECT_EQ(calls[i].truncate_up_to, 0u);
    rewritten.insert(calls[i].signals.begin(), calls[i].signals.end());
  }
  EXPECT_EQ(rewritten, failed);
  EXPECT_GT(calls.back().truncate_up_to, 0u);
  EXPECT_TRUE(calls.back().signals.empty());
}

INSTANTIATE_TEST_SUITE_P(EvalThreads, SnapshotTest, ::testing::Values(1, 2));

}  // namespace
}  // namespace kldrift
