// Evaluate()'s shortcuts give what a full evaluation gives: the alert-only tick (no watcher, no
// observer), which skips windows whose totals did not change and computes only what the alert
// needs, and the tick spread over several threads.
#include <cstdint>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "server/core/clock.h"
#include "server/core/drift_engine.h"
#include "server/core/engine_observer.h"
#include "server/core/mutex.h"
#include "server/core/testing/engine_inputs.h"
#include "server/core/testing/report_compare.h"

namespace kldrift {
namespace {

using test_inputs::GaussianStats;
using test_inputs::Hist;
using test_inputs::LogProbs;
using test_inputs::MakeBatch;

constexpr size_t kStreams = 40;
constexpr size_t kBins = 8;

StreamKey Key(size_t s) { return {"m", "v1", absl::StrCat("s", s)}; }

// One engine fed a scripted scenario; `watch` registers a watcher (which forces full reports).
struct Subject {
  Subject(const FakeClock* clock, int eval_threads, bool watch) {
    EngineOptions options;
    options.eval_threads = eval_threads;
    engine = std::make_unique<DriftEngine>(options, clock);
    if (watch) {
      engine->Watch({"m", "", "", false}, [this](const WindowReport& r) { seen.push_back(r); });
    }
  }
  std::unique_ptr<DriftEngine> engine;
  std::vector<WindowReport> seen;
  uint64_t sequence = 0;
};

// Histogram streams with every alerting measure, some with a zero `for`, plus a Gaussian and a
// policy stream; data whose drift wanders across the thresholds, sent to a random subset of
// streams per tick (sometimes none), with time crossing sub-bucket boundaries and `for` durations.
class TickScenario {
 public:
  explicit TickScenario(std::vector<Subject*> subjects) : subjects_(std::move(subjects)) {
    const Measure measures[] = {Measure::kKlCurrentReference, Measure::kPsi, Measure::kJsBits,
                                Measure::kHellinger, Measure::kChi2};
    for (size_t s = 0; s < kStreams; ++s) {
      AlertPolicy policy;
      policy.measure = measures[s % 5];
      policy.warn_threshold = policy.measure == Measure::kChi2 ? 0.1 : 0.02;
      policy.critical_threshold = 2 * policy.warn_threshold;
      policy.min_samples = 50;
      if (s % 3 == 0) policy.for_duration = absl::ZeroDuration();
      std::vector<double> counts(kBins);
      for (size_t b = 0; b < kBins; ++b) counts[b] = 100 + 10 * static_cast<double>((b + s) % 5);
      ForEach([&](DriftEngine& e) {
        ASSERT_TRUE(e.PutReference(test_inputs::PreBinned(Key(s), counts, policy)).ok());
      });
    }
    ForEach([&](DriftEngine& e) {
      ASSERT_TRUE(e.PutReference(test_inputs::Gaussian(Key(kStreams), {0, 1}, {1, 2})).ok());
      ASSERT_TRUE(e.PutReference(test_inputs::PolicyRef(Key(kStreams + 1))).ok());
    });
  }

  // Sends this tick's data and moves the clock.
  void Step(FakeClock& clock) {
    std::uniform_int_distribution<int> coin(0, 3);
    std::uniform_real_distribution<double> unit(0, 1);
    std::vector<StreamData> data;
    if (coin(rng_) != 0) {
      for (size_t s = 0; s < kStreams; ++s) {
        if (coin(rng_) == 0) continue;
        const double tilt = unit(rng_) < 0.5 ? 0 : unit(rng_);
        std::vector<double> counts(kBins);
        for (size_t b = 0; b < kBins; ++b) {
          counts[b] = std::floor(10 * (1 + tilt * static_cast<double>(b)) * unit(rng_));
        }
        data.push_back(Hist(Key(s), counts));
      }
      data.push_back(GaussianStats(Key(kStreams), 10, {unit(rng_) * 10, 10}, {40, 60}));
      data.push_back(LogProbs(Key(kStreams + 1), {-0.1 - unit(rng_), -2}, {-0.3, -1.5}));
    }
    if (!data.empty()) {
      for (Subject* subject : subjects_) {
        const IngestResult r =
            subject->engine->Ingest(MakeBatch("c", ++subject->sequence, "m", data, std::nullopt));
        ASSERT_TRUE(r.status.ok()) << r.status;
      }
    }
    clock.Advance(absl::Seconds(coin(rng_) == 0 ? 90 : 7));
  }

  void ForEach(const std::function<void(DriftEngine&)>& f) {
    for (Subject* subject : subjects_) f(*subject->engine);
  }

 private:
  std::vector<Subject*> subjects_;
  std::mt19937_64 rng_{11};
};

std::vector<AlertStatus> Alerts(DriftEngine& engine) {
  std::vector<AlertStatus> alerts;
  for (size_t s = 0; s < kStreams + 2; ++s) {
    absl::StatusOr<std::vector<WindowReport>> reports = engine.GetDrift(Key(s), std::nullopt, 0);
    EXPECT_TRUE(reports.ok()) << reports.status();
    if (!reports.ok()) continue;
    for (const WindowReport& r : *reports) alerts.push_back(r.alert);
  }
  return alerts;
}

size_t CountNotOk(const std::vector<AlertStatus>& alerts) {
  size_t n = 0;
  for (const AlertStatus& a : alerts) n += a.state != AlertState::kOk;
  return n;
}

TEST(DriftEngineTickTest, AlertOnlyTickMovesAlertsLikeAFullEvaluation) {
  FakeClock clock;
  Subject full(&clock, 1, /*watch=*/true);
  Subject alert_only(&clock, 1, /*watch=*/false);
  TickScenario scenario({&full, &alert_only});
  size_t ever_not_ok = 0;
  for (int tick = 0; tick < 300; ++tick) {
    scenario.Step(clock);
    EXPECT_EQ(full.engine->Evaluate(), alert_only.engine->Evaluate());
    if (tick % 5 == 0) alert_only.engine->Evaluate();  // Nothing new: the cached inputs again.
    const std::vector<AlertStatus> expected = Alerts(*full.engine);
    ASSERT_EQ(Alerts(*alert_only.engine), expected) << "tick " << tick;
    ever_not_ok += CountNotOk(expected);
  }
  EXPECT_GT(ever_not_ok, 0u);  // The scenario does raise alerts.
}

TEST(DriftEngineTickTest, ThreadsGiveTheSameReportsInTheSameOrder) {
  FakeClock clock;
  Subject one(&clock, 1, /*watch=*/true);
  Subject three(&clock, 3, /*watch=*/true);
  Subject alert_only(&clock, 3, /*watch=*/false);
  TickScenario scenario({&one, &three, &alert_only});
  for (int tick = 0; tick < 100; ++tick) {
    scenario.Step(clock);
    EXPECT_EQ(one.engine->Evaluate(), three.engine->Evaluate());
    alert_only.engine->Evaluate();
    ASSERT_EQ(one.seen.size(), three.seen.size());
    for (size_t i = 0; i < one.seen.size(); ++i) {
      SCOPED_TRACE(absl::StrCat("tick ", tick, " report ", i));
      test_inputs::ExpectSameReport(one.seen[i], three.seen[i]);
    }
    one.seen.clear();
    three.seen.clear();
    ASSERT_EQ(Alerts(*alert_only.engine), Alerts(*one.engine)) << "tick " << tick;
  }
}

// Keeps, per window, what a metrics observer keeps: the alert of the last report and the
// measures of the last full one.
class KeepingObserver : public EngineObserver {
 public:
  explicit KeepingObserver(bool on_demand) : on_demand_(on_demand) {}
  struct Kept {
    AlertStatus alert;
    bool measured = false;
    double samples = -1;
    double value = -1;
    double js_bits = -1;
    size_t top_bin = 0;
  };
  std::shared_ptr<StreamIngestCounters> OnReferenceInstalled(const Reference&) override {
    return nullptr;
  }
  void OnStreamDeleted(const StreamKey&) override {}
  void OnBatchApplied(size_t, double) override {}
  void OnStreamEvaluated(absl::Span<const WindowReport> reports) override {
    MutexLock lock(&mutex_);
    for (const WindowReport& r : reports) {
      Kept& k = kept_[{r.stream.signal, absl::ToInt64Seconds(r.window)}];
      k.alert = r.alert;
      if (r.measures_unchanged) continue;
      ++full_reports_;
      k.measured = true;
      k.samples = r.samples;
      k.value = r.measure_value;
      // As the metrics do, a report without measures (an empty window) clears them.
      k.js_bits = r.histogram ? r.histogram->js_bits : -1;
      k.top_bin = r.histogram && !r.histogram->top_bins.empty() ? r.histogram->top_bins[0].bin : 0;
    }
  }
  void OnEvaluationFinished(size_t, absl::Duration) override {}
  size_t top_bins() const override { return 3; }
  bool wants_bin_labels() const override { return false; }
  bool reports_on_demand() const override { return on_demand_; }

  std::map<std::pair<std::string, int64_t>, Kept> kept() {
    MutexLock lock(&mutex_);
    return kept_;
  }
  size_t TakeFullReports() {
    MutexLock lock(&mutex_);
    return std::exchange(full_reports_, 0);
  }

 private:
  const bool on_demand_;
  Mutex mutex_;
  std::map<std::pair<std::string, int64_t>, Kept> kept_ ABSL_GUARDED_BY(mutex_);
  size_t full_reports_ ABSL_GUARDED_BY(mutex_) = 0;
};

TEST(DriftEngineTickTest, OnDemandObserverKeepsWhatAPerTickObserverKeeps) {
  FakeClock clock;
  KeepingObserver per_tick_observer(/*on_demand=*/false);
  KeepingObserver on_demand_observer(/*on_demand=*/true);
  auto subject = [&clock](KeepingObserver* observer, int threads) {
    Subject s(&clock, threads, /*watch=*/false);
    EngineOptions options;
    options.eval_threads = threads;
    options.observer = observer;
    s.engine = std::make_unique<DriftEngine>(options, &clock);
    return s;
  };
  Subject per_tick = subject(&per_tick_observer, 1);
  Subject on_demand = subject(&on_demand_observer, 2);
  TickScenario scenario({&per_tick, &on_demand});
  size_t refreshed = 0;
  for (int tick = 0; tick < 200; ++tick) {
    scenario.Step(clock);
    EXPECT_EQ(per_tick.engine->Evaluate(), on_demand.engine->Evaluate());
    EXPECT_EQ(on_demand_observer.TakeFullReports(), 0u) << "a tick computed reports on demand";
    ASSERT_EQ(Alerts(*on_demand.engine), Alerts(*per_tick.engine)) << "tick " << tick;
    if (tick % 3 != 0) continue;
    const size_t reported = on_demand.engine->RefreshObserver();
    EXPECT_EQ(on_demand_observer.TakeFullReports(), reported);
    refreshed += reported;
    EXPECT_EQ(on_demand.engine->RefreshObserver(), 0u) << "nothing changed since the last ask";
    EXPECT_EQ(per_tick.engine->RefreshObserver(), 0u) << "a per-tick observer is always current";
    const auto got = on_demand_observer.kept();
    const auto want = per_tick_observer.kept();
    ASSERT_EQ(got.size(), want.size()) << "tick " << tick;
    for (const auto& [window, kept] : want) {
      SCOPED_TRACE(::testing::Message()
                   << "tick " << tick << " stream " << window.first << " window " << window.second);
      ASSERT_TRUE(got.count(window));
      const KeepingObserver::Kept& g = got.at(window);
      EXPECT_EQ(g.alert, kept.alert);
      EXPECT_EQ(g.measured, kept.measured);
      EXPECT_EQ(g.samples, kept.samples);
      EXPECT_EQ(g.value, kept.value);
      EXPECT_EQ(g.js_bits, kept.js_bits);
      EXPECT_EQ(g.top_bin, kept.top_bin);
    }
    if (::testing::Test::HasFailure()) return;
  }
  EXPECT_GT(refreshed, 0u);
  EXPECT_GT(per_tick_observer.TakeFullReports(), refreshed) << "on demand computed fewer";
}

}  // namespace
}  // namespace kldrift
