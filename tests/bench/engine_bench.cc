// What DriftEngine costs per stream at scale, with every window full: memory and evaluation time.
//
// For each stream count N (default 10000 and 100000) the program builds an engine without a store
// (--storage=memory) and without an observer, holding N numeric streams of 64 bins (67 buckets with
// underflow, overflow and NaN) under the default policy (windows 5m, 1h, 24h of 12 sub-buckets),
// each with its own reference. A fake clock then fills every sub-bucket of every window: a batch
// per 25 s sub-bucket of the 5m window, per 5 min sub-bucket of the 1h window and per 2 h
// sub-bucket of the 24h window (event times in the past), each as large as the sub-bucket's
// length of a stream carrying 40 observations a second. It prints:
//   bytes/stream (RSS)     resident-set growth from building the engine, over N (/proc/self/statm);
//   bytes/stream (heap)    malloc'd bytes in use (mallinfo2) growth, over N;
//   of which empty         the same right after the references were put, before any data;
//   full tick ms           one Evaluate() with fresh data in every stream (best of --rounds);
//   (cpu ms)               its CPU time over all threads (best of --rounds);
//   steady tick ms         one Evaluate() with nothing new since the last (best of --rounds);
//   ingest us/batch        one single-stream histogram batch applied (mean over 20000).
//
//   engine_bench [--streams 10000,100000] [--rounds 3] [--eval-threads T] [--observer-top-bins B]
//
// --observer-top-bins B adds an observer that takes every report with B top bins (what the
// server's metrics make the engine compute, without the metrics' own cost; the server's default
// is 3). Without it nobody reads the reports, and the engine computes only the alerts' inputs.
//
// Run from a Release build on a quiet machine; figures in README "Benchmarks".
#include <malloc.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "server/core/clock.h"
#include "server/core/drift_engine.h"
#include "server/core/engine_observer.h"

namespace kldrift {
namespace {

constexpr size_t kEdges = 65;          // 64 bins.
constexpr size_t kWidth = kEdges + 2;  // Plus underflow, overflow, NaN (not counted in the window).
constexpr size_t kStreamsPerBatch = 100;  // Streams of one model filled by one batch.
constexpr double kObservationsPerSecond = 40;

[[noreturn]] void Die(const absl::Status& status) {
  std::fprintf(stderr, "engine_bench: %s\n", status.ToString().c_str());
  std::exit(1);
}

double ResidentBytes() {
  long pages_total = 0, pages_resident = 0;
  FILE* f = std::fopen("/proc/self/statm", "r");
  if (f == nullptr || std::fscanf(f, "%ld %ld", &pages_total, &pages_resident) != 2) {
    std::fprintf(stderr, "engine_bench: cannot read /proc/self/statm\n");
    std::exit(1);
  }
  std::fclose(f);
  return static_cast<double>(pages_resident) * static_cast<double>(sysconf(_SC_PAGESIZE));
}

double HeapBytes() { return static_cast<double>(mallinfo2().uordblks); }

// CPU time of every thread of the process, ms: with --eval-threads > 1 on a machine that other
// work shares, wall time shows how busy the machine was and CPU time how much work the tick did.
double ProcessCpuMillis() {
  timespec t{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) * 1e3 + static_cast<double>(t.tv_nsec) / 1e6;
}

double Millis(std::chrono::steady_clock::duration d) {
  return std::chrono::duration<double, std::milli>(d).count();
}

StreamKey Key(size_t stream) {
  return {absl::StrCat("model-", stream / kStreamsPerBatch), "v1",
          absl::StrCat("signal-", stream % kStreamsPerBatch)};
}

// Counts of `total` observations of a normal distribution with `mean` and `sd`, binned on the
// edges 0, 1/64, ..., 1 (underflow, overflow and an empty NaN bucket at the end).
std::vector<double> Counts(double total, double mean, double sd) {
  std::vector<double> counts(kWidth, 0.0);
  auto cdf = [&](double x) { return 0.5 * std::erfc(-(x - mean) / (sd * std::sqrt(2.0))); };
  double previous = 0;
  for (size_t b = 0; b + 1 < kWidth; ++b) {
    const double upper = b + 1 < kWidth - 1 ? cdf(static_cast<double>(b) / (kEdges - 1)) : 1.0;
    counts[b] = std::round(total * (upper - previous));
    previous = upper;
  }
  return counts;
}

// Receives every report and drops it, asking for `top_bins` per window without their labels as
// DriftMetrics does: the engine's side of what the server's metrics cost (the reports must be
// computed in full), without the metrics.
class DiscardingObserver : public EngineObserver {
 public:
  explicit DiscardingObserver(size_t top_bins) : top_bins_(top_bins) {}
  std::shared_ptr<StreamIngestCounters> OnReferenceInstalled(const Reference&) override {
    return nullptr;
  }
  void OnStreamDeleted(const StreamKey&) override {}
  void OnBatchApplied(size_t, double) override {}
  void OnStreamEvaluated(absl::Span<const WindowReport> reports) override {
    windows_.fetch_add(reports.size(), std::memory_order_relaxed);
  }
  void OnEvaluationFinished(size_t, absl::Duration) override {}
  size_t top_bins() const override { return top_bins_; }
  bool wants_bin_labels() const override { return false; }

 private:
  const size_t top_bins_;
  std::atomic<size_t> windows_{0};
};

struct Result {
  size_t streams = 0;
  double rss_per_stream = 0;
  double heap_per_stream = 0;
  double empty_heap_per_stream = 0;  // References and empty windows only.
  double full_tick_ms = 1e300;
  double full_tick_cpu_ms = 1e300;
  double steady_tick_ms = 1e300;
  double ingest_us = 0;
  size_t windows = 0;
};

Result Run(size_t streams, int rounds, int eval_threads, int observer_top_bins) {
  Result result;
  result.streams = streams;
  malloc_trim(0);
  const double rss_before = ResidentBytes();
  const double heap_before = HeapBytes();

  FakeClock clock;
  EngineOptions options;
  options.max_streams = streams;
  options.max_observations_per_batch = size_t{1} << 30;
  if (eval_threads > 0) options.eval_threads = eval_threads;
  std::unique_ptr<DiscardingObserver> observer;
  if (observer_top_bins >= 0) {
    observer = std::make_unique<DiscardingObserver>(static_cast<size_t>(observer_top_bins));
    options.observer = observer.get();
  }
  auto engine = std::make_unique<DriftEngine>(options, &clock);

  std::vector<double> edges(kEdges);
  for (size_t i = 0; i < kEdges; ++i) edges[i] = static_cast<double>(i) / (kEdges - 1);
  std::mt19937_64 rng(42);
  std::uniform_real_distribution<double> jitter(-0.05, 0.05);
  std::vector<double> shift(streams);  // Each stream's current data drifts by its own amount.
  for (size_t s = 0; s < streams; ++s) {
    ReferenceSpec spec;
    spec.stream = Key(s);
    spec.kind = ReferenceKind::kNumeric;
    spec.edges = edges;
    spec.counts = Counts(1e5, 0.5 + jitter(rng), 0.15);
    if (auto ref = engine->PutReference(spec); !ref.ok()) Die(ref.status());
    shift[s] = 2 * jitter(rng);
  }
  result.empty_heap_per_stream = (HeapBytes() - heap_before) / static_cast<double>(streams);

  // Fill: at `now`, one batch per sub-bucket of each window, sized to the sub-bucket's length.
  const absl::Time start = clock.Now();
  const absl::Time now = start + absl::Hours(24) + absl::Seconds(1);
  clock.Set(now);
  struct Fill {
    absl::Duration age;  // Event time = now - age.
    absl::Duration span;
  };
  std::vector<Fill> fills;
  for (int i = 0; i < 12; ++i) fills.push_back({absl::Seconds(25) * i, absl::Seconds(25)});
  for (int i = 1; i < 12; ++i) fills.push_back({absl::Minutes(5) * i, absl::Minutes(5)});
  for (int i = 1; i < 12; ++i) fills.push_back({absl::Hours(2) * i, absl::Hours(2)});
  uint64_t sequence = 0;
  for (const Fill& fill : fills) {
    const double total = kObservationsPerSecond * absl::ToDoubleSeconds(fill.span);
    for (size_t first = 0; first < streams; first += kStreamsPerBatch) {
      IngestBatch batch;
      batch.client_id = "bench";
      batch.sequence = ++sequence;
      batch.model = Key(first).model;
      batch.event_time = now - fill.age;
      for (size_t s = first; s < std::min(streams, first + kStreamsPerBatch); ++s) {
        StreamData data;
        data.model_version = "v1";
        data.signal = Key(s).signal;
        data.numbers = Counts(total, 0.5 + shift[s], 0.15);
        batch.streams.push_back(std::move(data));
      }
      if (IngestResult r = engine->Ingest(std::move(batch)); !r.status.ok()) Die(r.status);
    }
  }
  malloc_trim(0);
  result.rss_per_stream = (ResidentBytes() - rss_before) / static_cast<double>(streams);
  result.heap_per_stream = (HeapBytes() - heap_before) / static_cast<double>(streams);

  // Ticks: the first with every stream holding new data, then one with nothing new; then again
  // after a fresh batch per stream. The clock moves 1 s per tick, crossing no sub-bucket boundary.
  std::vector<StreamData> fresh(streams);
  for (size_t s = 0; s < streams; ++s) {
    fresh[s].model_version = "v1";
    fresh[s].signal = Key(s).signal;
    fresh[s].numbers = Counts(kObservationsPerSecond, 0.5 + shift[s], 0.15);
  }
  for (int round = 0; round < rounds; ++round) {
    if (round > 0) {
      for (size_t first = 0; first < streams; first += kStreamsPerBatch) {
        IngestBatch batch;
        batch.client_id = "bench";
        batch.sequence = ++sequence;
        batch.model = Key(first).model;
        for (size_t s = first; s < std::min(streams, first + kStreamsPerBatch); ++s) {
          batch.streams.push_back(fresh[s]);
        }
        if (IngestResult r = engine->Ingest(std::move(batch)); !r.status.ok()) Die(r.status);
      }
    }
    clock.Advance(absl::Seconds(1));
    const double cpu0 = ProcessCpuMillis();
    auto t0 = std::chrono::steady_clock::now();
    result.windows = engine->Evaluate();
    result.full_tick_ms =
        std::min(result.full_tick_ms, Millis(std::chrono::steady_clock::now() - t0));
    result.full_tick_cpu_ms = std::min(result.full_tick_cpu_ms, ProcessCpuMillis() - cpu0);
    clock.Advance(absl::Seconds(1));
    t0 = std::chrono::steady_clock::now();
    engine->Evaluate();
    result.steady_tick_ms =
        std::min(result.steady_tick_ms, Millis(std::chrono::steady_clock::now() - t0));
  }

  // Ingest: single-stream histogram batches to streams spread over the engine.
  constexpr size_t kBatches = 20000;
  std::vector<IngestBatch> batches(kBatches);
  for (size_t i = 0; i < kBatches; ++i) {
    const size_t s = (i * 7919) % streams;
    batches[i].client_id = "bench";
    batches[i].sequence = ++sequence;
    batches[i].model = Key(s).model;
    batches[i].streams.push_back(fresh[s]);
  }
  const auto t0 = std::chrono::steady_clock::now();
  for (IngestBatch& batch : batches) {  // Moved in, as kldriftd's service does.
    if (IngestResult r = engine->Ingest(std::move(batch)); !r.status.ok()) Die(r.status);
  }
  result.ingest_us = Millis(std::chrono::steady_clock::now() - t0) * 1000 / kBatches;
  return result;
}

}  // namespace
}  // namespace kldrift

int main(int argc, char** argv) {
  std::vector<size_t> counts = {10000, 100000};
  int rounds = 3;
  int eval_threads = 0;
  int observer_top_bins = -1;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--streams") {
      counts.clear();
      for (absl::string_view part : absl::StrSplit(argv[i + 1], ',')) {
        size_t n = 0;
        if (!absl::SimpleAtoi(part, &n) || n == 0) {
          std::fprintf(stderr, "engine_bench: bad --streams\n");
          return 2;
        }
        counts.push_back(n);
      }
    } else if (flag == "--rounds" && absl::SimpleAtoi(argv[i + 1], &rounds) && rounds > 0) {
    } else if (flag == "--eval-threads" && absl::SimpleAtoi(argv[i + 1], &eval_threads)) {
    } else if (flag == "--observer-top-bins" && absl::SimpleAtoi(argv[i + 1], &observer_top_bins)) {
    } else {
      std::fprintf(stderr,
                   "usage: engine_bench [--streams N,M] [--rounds R] [--eval-threads T] "
                   "[--observer-top-bins B]\n");
      return 2;
    }
  }
  std::printf("%9s %9s %18s %18s %16s %14s %10s %16s %16s\n", "streams", "windows",
              "bytes/stream(RSS)", "bytes/stream(heap)", "of which empty", "full tick ms",
              "(cpu ms)", "steady tick ms", "ingest us/batch");
  for (size_t n : counts) {
    const kldrift::Result r = kldrift::Run(n, rounds, eval_threads, observer_top_bins);
    std::printf("%9zu %9zu %18.0f %18.0f %16.0f %14.1f %10.1f %16.1f %16.2f\n", r.streams,
                r.windows, r.rss_per_stream, r.heap_per_stream, r.empty_heap_per_stream,
                r.full_tick_ms, r.full_tick_cpu_ms, r.steady_tick_ms, r.ingest_us);
    std::fflush(stdout);
  }
  return 0;
}
