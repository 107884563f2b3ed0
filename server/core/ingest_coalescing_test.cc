// Ingest coalescing (EngineOptions::coalesce_ingest): an engine that sums a stream's whole counts
// while no window's head sub-bucket moves must be indistinguishable from one that adds every batch
// to the windows at once: the same reports, window contents, snapshots and exports, bit for bit,
// whatever mix of batches, late data, fractions, queries, ticks, reference changes and deletions
// it is given. Each test drives two engines through the same calls and compares them, and checks
// that the coalescing engine did coalesce (otherwise the comparison would prove nothing).
#include <iterator>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "server/core/clock.h"
#include "server/core/drift_engine.h"
#include "server/core/mutex.h"
#include "server/core/state_store.h"
#include "server/core/testing/engine_inputs.h"
#include "server/core/testing/report_compare.h"

namespace kldrift {
namespace {

using test_inputs::Categorical;
using test_inputs::Hist;
using test_inputs::Labels;
using test_inputs::MakeBatch;
using test_inputs::PreBinned;
using test_inputs::Probabilities;

// Keeps the last snapshot of every sub-bucket written, and counts what was written.
class SnapshotStore final : public StateStore {
 public:
  using Key = std::tuple<std::string, absl::Duration, absl::Time>;  // Signal, window, start.

  absl::Status PutReference(const Reference&, bool, uint64_t) override { return absl::OkStatus(); }
  absl::Status DeleteStream(const StreamKey& stream) override {
    MutexLock lock(&mutex_);
    for (auto it = sub_buckets_.begin(); it != sub_buckets_.end();) {
      it = std::get<0>(it->first) == stream.signal ? sub_buckets_.erase(it) : std::next(it);
    }
    return absl::OkStatus();
  }
  absl::Status WriteBatch(const IngestRecordView&) override { return absl::OkStatus(); }
  absl::Status WriteClientSequence(const std::string&, uint64_t, absl::Time) override {
    return absl::OkStatus();
  }
  uint64_t LogEnd() override { return 0; }
  absl::Status TruncateLog(uint64_t, uint64_t) override { return absl::OkStatus(); }
  absl::Status WriteSnapshots(const std::vector<StreamSnapshot>& snapshots) override {
    MutexLock lock(&mutex_);
    for (const StreamSnapshot& s : snapshots) {
      for (const SubBucketDelta& b : s.sub_buckets) {
        sub_buckets_[{b.stream.signal, b.window, b.sub_bucket_start}] = b.values;
        ++written_;
      }
    }
    return absl::OkStatus();
  }
  absl::Status WriteAlerts(const std::vector<AlertUpdate>&) override { return absl::OkStatus(); }
  absl::Status Load(const Visitor&) override { return absl::OkStatus(); }
  absl::StatusOr<uint64_t> Backup(const std::string&) override {
    return absl::UnimplementedError("not in this test");
  }

  std::map<Key, std::vector<double>> sub_buckets() const {
    MutexLock lock(&mutex_);
    return sub_buckets_;
  }
  size_t written() const {
    MutexLock lock(&mutex_);
    return written_;
  }

 private:
  mutable Mutex mutex_;
  std::map<Key, std::vector<double>> sub_buckets_;
  size_t written_ = 0;
};

// Two engines on one clock, one coalescing and one not, each with its own store; every call goes
// to both, and results are compared as they come.
class TwinEngines {
 public:
  TwinEngines() {
    for (int i = 0; i < 2; ++i) {
      EngineOptions options;
      options.store = &stores_[i];
      options.coalesce_ingest = i == 0;
      engines_[i] = std::make_unique<DriftEngine>(options, &clock_);
    }
  }

  FakeClock& clock() { return clock_; }
  DriftEngine& coalescing() { return *engines_[0]; }

  void Put(const ReferenceSpec& spec) {
    for (auto& engine : engines_) {
      absl::StatusOr<std::shared_ptr<const Reference>> put = engine->PutReference(spec);
      ASSERT_TRUE(put.ok()) << put.status();
    }
  }
  void Delete(const StreamKey& key) {
    for (auto& engine : engines_) ASSERT_TRUE(engine->DeleteReference(key).ok());
  }

  // Sends a batch to both; they must agree on its outcome.
  void Send(const std::string& model, const std::vector<StreamData>& streams,
            std::optional<absl::Time> event_time = std::nullopt) {
    ++sequence_;
    absl::Status first;
    for (int i = 0; i < 2; ++i) {
      const IngestResult r =
          engines_[i]->Ingest(MakeBatch("c", sequence_, model, streams, event_time));
      if (i == 0) {
        first = r.status;
      } else {
        EXPECT_EQ(r.status, first);
      }
    }
  }

  // Every window's report of `key`, from both: the same to the last bit.
  void ExpectSameDrift(const StreamKey& key) {
    absl::StatusOr<std::vector<WindowReport>> a = engines_[0]->GetDrift(key, std::nullopt, 3);
    absl::StatusOr<std::vector<WindowReport>> b = engines_[1]->GetDrift(key, std::nullopt, 3);
    ASSERT_EQ(a.ok(), b.ok());
    if (!a.ok()) return;
    ASSERT_EQ(a->size(), b->size());
    for (size_t w = 0; w < a->size(); ++w) {
      SCOPED_TRACE(absl::StrCat(key.ToString(), " window ", w));
      test_inputs::ExpectSameReport((*a)[w], (*b)[w]);
    }
  }

  // The samples in `window` of `key`, as both engines report them (-1 if they cannot).
  double Samples(const StreamKey& key, absl::Duration window) {
    ExpectSameDrift(key);
    absl::StatusOr<std::vector<WindowReport>> r = engines_[0]->GetDrift(key, window, 0);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() && r->size() == 1 ? (*r)[0].samples : -1;
  }

  // A tick on both: the same number of windows evaluated, and the same snapshots written.
  void Tick() {
    EXPECT_EQ(engines_[0]->Evaluate(), engines_[1]->Evaluate());
    EXPECT_EQ(stores_[0].sub_buckets(), stores_[1].sub_buckets());
  }

  // The whole state of `model`: every live sub-bucket of every window, bit for bit.
  void ExpectSameExport(const std::string& model) {
    absl::StatusOr<std::vector<StreamExport>> a = engines_[0]->ExportModel(model);
    absl::StatusOr<std::vector<StreamExport>> b = engines_[1]->ExportModel(model);
    ASSERT_EQ(a.ok(), b.ok());
    if (!a.ok()) return;
    ASSERT_EQ(a->size(), b->size());
    for (size_t s = 0; s < a->size(); ++s) {
      ASSERT_EQ((*a)[s].windows.size(), (*b)[s].windows.size());
      for (size_t w = 0; w < (*a)[s].windows.size(); ++w) {
        const auto& x = (*a)[s].windows[w].sub_buckets;
        const auto& y = (*b)[s].windows[w].sub_buckets;
        ASSERT_EQ(x.size(), y.size());
        for (size_t i = 0; i < x.size(); ++i) {
          EXPECT_EQ(x[i].start, y[i].start);
          EXPECT_EQ(x[i].values, y[i].values)
              << "stream " << s << " window " << w << " bucket " << i;
        }
      }
    }
  }

  const SnapshotStore& coalescing_store() const { return stores_[0]; }

 private:
  FakeClock clock_{absl::FromUnixSeconds(1'800'000'000)};
  SnapshotStore stores_[2];
  std::unique_ptr<DriftEngine> engines_[2];
  uint64_t sequence_ = 0;
};

StreamKey Key(int s) { return {"m", "v1", absl::StrCat("s", s)}; }

TEST(IngestCoalescingTest, CoalescesInTheHeadAndAnswersQueriesWithEverything) {
  TwinEngines twins;
  twins.Put(PreBinned(Key(0), {10, 20, 30, 40}));
  for (int i = 0; i < 5; ++i) twins.Send("m", {Hist(Key(0), {1, 2, 3, 4})});
  EXPECT_EQ(twins.coalescing().coalesced_histograms(), 5u);
  // A query sees every batch acknowledged so far.
  EXPECT_EQ(twins.Samples(Key(0), absl::Minutes(5)), 50);
  twins.ExpectSameDrift(Key(0));
  twins.Send("m", {Hist(Key(0), {0, 0, 0, 7})});
  twins.ExpectSameDrift(Key(0));
  twins.ExpectSameExport("m");
  // And so does a tick's snapshot.
  twins.Tick();
  EXPECT_GT(twins.coalescing_store().written(), 0u);
  twins.ExpectSameExport("m");
}

TEST(IngestCoalescingTest, HeadsMovingFoldIntoTheSubBucketTheDataBelongedTo) {
  TwinEngines twins;
  twins.Put(PreBinned(Key(0), {10, 20, 30, 40}));
  twins.Send("m", {Hist(Key(0), {1, 0, 0, 0})});
  twins.clock().Advance(absl::Seconds(30));  // Past the 5m window's 25 s sub-bucket.
  twins.Send("m", {Hist(Key(0), {0, 1, 0, 0})});
  twins.clock().Advance(absl::Minutes(6));  // The first sub-bucket leaves the 5m window.
  twins.Send("m", {Hist(Key(0), {0, 0, 1, 0})});
  EXPECT_EQ(twins.coalescing().coalesced_histograms(), 3u);
  EXPECT_EQ(twins.Samples(Key(0), absl::Minutes(5)), 1);  // Only the last batch.
  EXPECT_EQ(twins.Samples(Key(0), absl::Hours(1)), 3);    // All three.
  EXPECT_EQ(twins.Samples(Key(0), absl::Hours(24)), 3);
  twins.ExpectSameExport("m");
  twins.Tick();
}

TEST(IngestCoalescingTest, LateDataAndFractionsGoStraightToTheWindowsInOrder) {
  TwinEngines twins;
  twins.Put(PreBinned(Key(0), {10, 20, 30, 40}));
  twins.Put(Categorical(Key(1), {"x", "y"}, {50, 50}));  // Buckets x, y, unseen.
  const absl::Time start = twins.clock().Now();
  twins.clock().Advance(absl::Minutes(3));
  twins.Send("m", {Hist(Key(0), {1, 1, 1, 1}), Labels(Key(1), {"x", "y", "y"})});
  // Late: a sub-bucket behind the head of the 5m window (not coalesced).
  twins.Send("m", {Hist(Key(0), {2, 0, 0, 0})}, start + absl::Seconds(10));
  EXPECT_EQ(twins.coalescing().coalesced_histograms(), 2u);
  twins.Send("m", {Hist(Key(0), {0, 3, 0, 0})});
  EXPECT_EQ(twins.coalescing().coalesced_histograms(), 3u);
  twins.ExpectSameExport("m");
  // Fractions in the categorical stream's windows: from now on its counts are added at once, in
  // the order they came (x + (a + b) and (x + a) + b can differ once x has a fraction).
  twins.Send("m", {Probabilities(Key(1), {0.1, 0.9, 0.3, 0.7})});
  for (int i = 0; i < 4; ++i) twins.Send("m", {Labels(Key(1), {"x", "y", "zzz"})});
  EXPECT_EQ(twins.coalescing().coalesced_histograms(), 3u);
  twins.ExpectSameDrift(Key(1));
  twins.ExpectSameExport("m");
  // Until its windows are replaced (new bins): then counts coalesce again.
  twins.Put(Categorical(Key(1), {"x", "y", "z"}, {50, 50, 50}));
  twins.Send("m", {Labels(Key(1), {"x", "z"})});
  EXPECT_EQ(twins.coalescing().coalesced_histograms(), 4u);
  twins.ExpectSameDrift(Key(1));
  twins.ExpectSameExport("m");
  twins.Tick();
}

TEST(IngestCoalescingTest, SumsNearTheLimitsStayExact) {
  TwinEngines twins;
  twins.Put(PreBinned(Key(0), {10, 20, 30, 40}));
  const double big = 2147483647.0;  // 2^31 - 1: the largest count coalesced.
  for (int i = 0; i < 5; ++i) twins.Send("m", {Hist(Key(0), {big, 1, 0, big})});
  EXPECT_EQ(twins.coalescing().coalesced_histograms(), 5u);
  // 2^31 and more go to the windows at once, after what was pending.
  twins.Send("m", {Hist(Key(0), {2147483648.0, 0, 0, 0})});
  twins.Send("m", {Hist(Key(0), {9007199254740992.0 / 4, 0, 0, 1})});
  EXPECT_EQ(twins.coalescing().coalesced_histograms(), 5u);
  twins.Send("m", {Hist(Key(0), {1, 1, 1, 1})});
  const double expected =
      5 * (2 * big + 1) + 2147483648.0 + (9007199254740992.0 / 4 + 1) + 4;  // Exact in double.
  EXPECT_EQ(twins.Samples(Key(0), absl::Minutes(5)), expected);
  twins.ExpectSameExport("m");
  twins.Tick();
}

TEST(IngestCoalescingTest, PendingCountsDoNotOutliveTheirWindows) {
  TwinEngines twins;
  twins.Put(PreBinned(Key(0), {10, 20, 30, 40}));
  twins.Send("m", {Hist(Key(0), {5, 5, 5, 5})});
  // New bins: new, empty windows.
  twins.Put(PreBinned(Key(0), {10, 20, 30, 40, 50}));
  EXPECT_EQ(twins.Samples(Key(0), absl::Minutes(5)), 0);
  twins.Send("m", {Hist(Key(0), {1, 1, 1, 1, 1})});
  // Deleted and created again: empty again.
  twins.Delete(Key(0));
  twins.Put(PreBinned(Key(0), {10, 20, 30, 40, 50}));
  EXPECT_EQ(twins.Samples(Key(0), absl::Minutes(5)), 0);
  // Same bins, new policy thresholds: the windows (and what was pending in them) are kept.
  twins.Send("m", {Hist(Key(0), {2, 2, 2, 2, 2})});
  ReferenceSpec same_bins = PreBinned(Key(0), {10, 20, 30, 40, 50});
  same_bins.policy.warn_threshold = 0.07;
  twins.Put(same_bins);
  EXPECT_EQ(twins.Samples(Key(0), absl::Minutes(5)), 10);
  EXPECT_EQ(twins.coalescing().coalesced_histograms(), 3u);
  twins.ExpectSameExport("m");
  twins.Tick();
}

// Random traffic: batches over several streams with counts of every size, late and future-ish
// event times, fractions, clock steps within and across sub-buckets and whole windows, queries and
// ticks in between. The two engines must agree after every step.
TEST(IngestCoalescingTest, RandomTrafficLeavesBothEnginesTheSame) {
  TwinEngines twins;
  constexpr int kStreams = 4;
  constexpr int kBins = 6;
  for (int s = 0; s < kStreams - 1; ++s) {
    twins.Put(PreBinned(Key(s), std::vector<double>(kBins, 10.0 + s)));
  }
  twins.Put(Categorical(Key(kStreams - 1), {"a", "b", "c"}, {10, 10, 10}));
  std::mt19937_64 rng(20261125);
  auto uniform = [&](int n) { return static_cast<int>(rng() % n); };
  for (int step = 0; step < 3000; ++step) {
    SCOPED_TRACE(absl::StrCat("step ", step));
    const int op = uniform(100);
    if (op < 70) {
      std::vector<StreamData> streams;
      for (int s = 0; s < kStreams; ++s) {
        if (uniform(2) == 0) continue;
        if (s == kStreams - 1) {
          if (uniform(40) == 0) {
            streams.push_back(Probabilities(Key(s), {0.25, 0.5, 0.25}));
          } else {
            streams.push_back(Labels(Key(s), {"a", "b", "b", "d"}));
          }
          continue;
        }
        // Mostly small counts, some large, some at the largest coalesced (2^31 - 1); stream 2
        // also gets counts of 2^32 and more (added at once, and no coalescing after them).
        std::vector<double> counts(kBins);
        for (double& c : counts) {
          const int size = uniform(1000);
          c = size < 900             ? uniform(5)
              : size < 970           ? uniform(1 << 20)
              : size < 990 || s != 2 ? 2147483647.0 - uniform(3)
                                     : 4294967296.0 + uniform(1000);
        }
        streams.push_back(Hist(Key(s), counts));
      }
      if (streams.empty()) continue;
      std::optional<absl::Time> event_time;
      const int when = uniform(10);
      if (when == 0) event_time = twins.clock().Now() - absl::Seconds(uniform(7200));
      if (when == 1) event_time = twins.clock().Now() - absl::Seconds(uniform(20));
      twins.Send("m", streams, event_time);
    } else if (op < 85) {
      const int step_kind = uniform(20);
      twins.clock().Advance(step_kind == 0   ? absl::Minutes(uniform(400))
                            : step_kind == 1 ? absl::Hours(25)
                                             : absl::Seconds(uniform(30)));
    } else if (op < 95) {
      twins.ExpectSameDrift(Key(uniform(kStreams)));
    } else {
      twins.Tick();
    }
    if (HasFailure()) return;
  }
  twins.ExpectSameExport("m");
  twins.Tick();
  EXPECT_GT(twins.coalescing().coalesced_histograms(), 1000u);
}

}  // namespace
}  // namespace kldrift
