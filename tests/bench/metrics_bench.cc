// What Prometheus metrics cost kldriftd, measured against the same engine without them:
//   - Evaluate() over S histogram streams (K bins, 3 windows, every window holding data), with no
//     observer (the baseline) and with DriftMetrics (gauges set, top bins ranked);
//   - one scrape: DriftMetrics::Collect() plus prometheus-cpp's TextSerializer (BM_Scrape, what
//     prometheus-cpp's Exposer did), DriftMetrics::WriteExposition (BM_Exposition, what /metrics
//     does now), and a whole gzip'ed GET /metrics over loopback (BM_HttpScrape);
//   - the heap the metrics hold per stream once every window has been evaluated (BM_Memory: the
//     engine with DriftMetrics minus the same engine without, from mallinfo2's in-use bytes).
//
//   metrics_bench [--benchmark_filter=...]
// Figures in README "Metrics": compare BM_Evaluate's metrics:1 and metrics:2 rows with metrics:0;
// BM_Memory's metrics_bytes_per_stream; BM_Exposition for a scrape. The 100,000-stream rows build
// that many engine streams (a few GB); filter them out on a small machine.
#include <arpa/inet.h>
#include <malloc.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "benchmark/benchmark.h"
#include "prometheus/text_serializer.h"
#include "server/core/clock.h"
#include "server/core/drift_engine.h"
#include "server/metrics/drift_metrics.h"

namespace kldrift {
namespace {

constexpr size_t kBins = 64;

[[noreturn]] void Die(const absl::Status& status) {
  std::fprintf(stderr, "metrics_bench: %s\n", status.ToString().c_str());
  std::exit(1);
}

// An engine with `streams` pre-binned streams, each with one batch of drifted counts in its
// windows.
struct Fixture {
  // metrics: 0 none, 1 DriftMetrics with default options, 2 without top bins, 3 alerting series
  // only (--metrics-measures=none --metrics-top-bins=0).
  Fixture(size_t streams, int with_metrics, int eval_threads = 0) {
    if (with_metrics != 0) {
      MetricsOptions metrics_options;
      if (with_metrics >= 2) metrics_options.top_bins = 0;
      if (with_metrics == 3) metrics_options.measures = 0;
      metrics = std::make_unique<DriftMetrics>(metrics_options);
    }
    EngineOptions options;
    options.observer = metrics.get();
    options.max_streams = streams;
    options.eval_threads = eval_threads;
    engine = std::make_unique<DriftEngine>(options, &clock);
    std::mt19937_64 rng(7);
    std::uniform_real_distribution<double> count(50, 150);
    for (size_t s = 0; s < streams; ++s) {
      ReferenceSpec spec;
      spec.stream = {absl::StrCat("model-", s % kModels), "v1", absl::StrCat("signal-", s)};
      spec.kind = ReferenceKind::kPreBinned;
      spec.bins = kBins;
      spec.counts.emplace();
      for (size_t b = 0; b < kBins; ++b) spec.counts->push_back(std::round(count(rng)));
      if (auto ref = engine->PutReference(spec); !ref.ok()) Die(ref.status());
      IngestBatch batch;
      batch.client_id = "bench";
      batch.sequence = s + 1;
      batch.model = spec.stream.model;
      StreamData data;
      data.model_version = "v1";
      data.signal = spec.stream.signal;
      for (size_t b = 0; b < kBins; ++b)
        data.numbers.push_back(std::round(count(rng)) * (b < 8 ? 3 : 1));
      batch.streams.push_back(std::move(data));
      if (IngestResult r = engine->Ingest(std::move(batch)); !r.status.ok()) Die(r.status);
    }
  }
  // One more observation in bin `tick % kBins` of every stream: every window changes.
  void TouchEveryStream(size_t streams, uint64_t tick) {
    for (size_t model = 0; model < kModels; ++model) {
      IngestBatch batch;
      batch.client_id = "touch";
      batch.sequence = tick * kModels + model + 1;
      batch.model = absl::StrCat("model-", model);
      for (size_t s = model; s < streams; s += kModels) {
        StreamData data;
        data.model_version = "v1";
        data.signal = absl::StrCat("signal-", s);
        data.numbers.assign(kBins, 0.0);
        data.numbers[tick % kBins] = 1;
        batch.streams.push_back(std::move(data));
      }
      if (IngestResult r = engine->Ingest(std::move(batch)); !r.status.ok()) Die(r.status);
    }
  }

  static constexpr size_t kModels = 16;
  FakeClock clock;
  std::unique_ptr<DriftMetrics> metrics;
  std::unique_ptr<DriftEngine> engine;
};

// Heap bytes in use (glibc's allocator), which unlike RSS goes down when memory is freed.
double HeapInUse() { return static_cast<double>(mallinfo2().uordblks); }

void BM_Evaluate(benchmark::State& state) {
  Fixture fixture(static_cast<size_t>(state.range(0)), static_cast<int>(state.range(1)));
  fixture.engine->Evaluate();  // Series are created by the first evaluation: measure later ones.
  size_t windows = 0;
  for (auto _ : state) windows = fixture.engine->Evaluate();
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * windows));
  state.counters["windows"] = static_cast<double>(windows);
  state.SetLabel(state.range(1) == 0   ? "no metrics (baseline)"
                 : state.range(1) == 1 ? "with metrics"
                 : state.range(1) == 2 ? "with metrics, --metrics-top-bins=0"
                                       : "alerting series only");
}
BENCHMARK(BM_Evaluate)
    ->ArgsProduct({{1000, 10000}, {0, 1, 2, 3}})
    ->ArgNames({"streams", "metrics"})
    ->Unit(benchmark::kMillisecond);

// A full tick: every window of every stream changed since the last one (a batch to each stream
// between iterations, not timed). What the server's tick costs at --eval-threads 1 and 2:
//   metrics:0  no observer: the alerts' inputs only (the baseline);
//   metrics:1  DriftMetrics with every tick's reports: every report computed, every series set;
//   metrics:2  DriftMetrics with reports on demand, as kldriftd runs it (SetReportSource): the tick
//              sends alert moves; refresh_ms is the scrape's share, DriftEngine::RefreshObserver
//              computing the changed windows' reports (not in the tick's time).
void BM_FullTick(benchmark::State& state) {
  const size_t streams = static_cast<size_t>(state.range(0));
  const int mode = static_cast<int>(state.range(1));
  Fixture fixture(streams, mode == 0 ? 0 : 1, static_cast<int>(state.range(2)));
  if (mode == 2) {
    fixture.metrics->SetReportSource([&fixture] { fixture.engine->RefreshObserver(); });
  }
  fixture.engine->Evaluate();
  if (mode == 2) fixture.engine->RefreshObserver();
  uint64_t tick = 0;
  size_t windows = 0;
  absl::Duration refresh;
  for (auto _ : state) {
    state.PauseTiming();
    if (mode == 2 && tick > 0) {
      const absl::Time start = absl::Now();
      fixture.engine->RefreshObserver();
      refresh += absl::Now() - start;
    }
    fixture.TouchEveryStream(streams, ++tick);
    state.ResumeTiming();
    windows = fixture.engine->Evaluate();
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * windows));
  state.counters["windows"] = static_cast<double>(windows);
  if (mode == 2 && state.iterations() > 1) {
    state.counters["refresh_ms"] =
        absl::ToDoubleMilliseconds(refresh) / static_cast<double>(state.iterations() - 1);
  }
  state.SetLabel(mode == 0   ? "no observer (alerts only)"
                 : mode == 1 ? "metrics, reports every tick"
                             : "metrics, reports on demand (kldriftd)");
}
BENCHMARK(BM_FullTick)
    ->ArgsProduct({{10000, 100000}, {0, 1, 2}, {1, 2}})
    ->ArgNames({"streams", "metrics", "threads"})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->Iterations(5);

void BM_Scrape(benchmark::State& state) {
  Fixture fixture(static_cast<size_t>(state.range(0)), static_cast<int>(state.range(1)));
  fixture.engine->Evaluate();
  size_t bytes = 0;
  double transient = 0;
  absl::Duration collect, serialize;
  for (auto _ : state) {
    const double heap = HeapInUse();
    const absl::Time start = absl::Now();
    std::vector<prometheus::MetricFamily> families = fixture.metrics->Collect();
    const absl::Time collected = absl::Now();
    std::ostringstream out;
    prometheus::TextSerializer().Serialize(out, families);
    bytes = out.str().size();
    collect += collected - start;
    serialize += absl::Now() - collected;
    transient = HeapInUse() - heap;
  }
  const double iterations = static_cast<double>(state.iterations());
  state.counters["series"] = static_cast<double>(fixture.metrics->stream_series());
  state.counters["bytes"] = static_cast<double>(bytes);
  // Wall time of the two halves (the serializer is prometheus-cpp's, as its Exposer does).
  state.counters["collect_ms"] = absl::ToDoubleMilliseconds(collect) / iterations;
  state.counters["serialize_ms"] = absl::ToDoubleMilliseconds(serialize) / iterations;
  // Heap held at the end of a scrape: every MetricFamily and the text.
  state.counters["transient_MiB"] = transient / (1 << 20);
  state.SetLabel(state.range(1) == 1 ? "Collect + TextSerializer, defaults"
                                     : "Collect + TextSerializer, alerting series only");
}
BENCHMARK(BM_Scrape)
    ->ArgsProduct({{1000, 10000}, {1, 3}})
    ->ArgNames({"streams", "metrics"})
    ->Unit(benchmark::kMillisecond);

// What /metrics does: DriftMetrics::WriteExposition, a family at a time into a reused buffer
// (compression and the socket aside).
void BM_Exposition(benchmark::State& state) {
  Fixture fixture(static_cast<size_t>(state.range(0)), static_cast<int>(state.range(1)));
  fixture.engine->Evaluate();
  std::string buffer;
  size_t bytes = 0;
  size_t largest_piece = 0;
  for (auto _ : state) {
    bytes = 0;
    fixture.metrics->WriteExposition(buffer, [&](absl::string_view piece) {
      bytes += piece.size();
      largest_piece = std::max(largest_piece, piece.size());
    });
  }
  state.counters["series"] = static_cast<double>(fixture.metrics->stream_series());
  state.counters["bytes"] = static_cast<double>(bytes);
  state.counters["largest_piece_MiB"] = static_cast<double>(largest_piece) / (1 << 20);
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * bytes));
  state.SetLabel(state.range(1) == 1 ? "WriteExposition, defaults"
                                     : "WriteExposition, alerting series only");
}
BENCHMARK(BM_Exposition)
    ->ArgsProduct({{1000, 10000, 100000}, {1, 3}})
    ->ArgNames({"streams", "metrics"})
    ->Unit(benchmark::kMillisecond);

// A whole scrape over HTTP, as Prometheus makes it: GET /metrics with Accept-Encoding: gzip from
// the MetricsEndpoint on loopback, the response read to its end (chunked, compressed).
void BM_HttpScrape(benchmark::State& state) {
  Fixture fixture(static_cast<size_t>(state.range(0)), static_cast<int>(state.range(1)));
  fixture.engine->Evaluate();
  std::shared_ptr<DriftMetrics> metrics(fixture.metrics.get(), [](DriftMetrics*) {});
  absl::StatusOr<std::unique_ptr<MetricsEndpoint>> endpoint =
      MetricsEndpoint::Start("127.0.0.1:0", metrics);
  if (!endpoint.ok()) Die(endpoint.status());
  size_t received = 0;
  for (auto _ : state) {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(static_cast<uint16_t>((*endpoint)->port()));
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, reinterpret_cast<const sockaddr*>(&address), sizeof address) != 0) {
      Die(absl::UnavailableError("connect"));
    }
    const std::string request =
        "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept-Encoding: gzip\r\n"
        "Connection: close\r\n\r\n";
    if (send(fd, request.data(), request.size(), 0) != static_cast<ssize_t>(request.size())) {
      Die(absl::UnavailableError("send"));
    }
    received = 0;
    char buffer[1 << 16];
    for (ssize_t n; (n = recv(fd, buffer, sizeof buffer, 0)) > 0;) received += n;
    close(fd);
  }
  state.counters["received_bytes"] = static_cast<double>(received);
  state.counters["series"] = static_cast<double>(fixture.metrics->stream_series());
  state.SetLabel(state.range(1) == 1 ? "GET /metrics, gzip, defaults"
                                     : "GET /metrics, gzip, alerting series only");
}
BENCHMARK(BM_HttpScrape)
    ->ArgsProduct({{1000, 10000, 100000}, {1, 3}})
    ->ArgNames({"streams", "metrics"})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// Heap held after one evaluation by an engine of `streams` streams with `with_metrics` (as in
// Fixture), minus the heap held before it was built.
double FixtureHeap(size_t streams, int with_metrics) {
  malloc_trim(0);
  const double before = HeapInUse();
  Fixture fixture(streams, with_metrics);
  fixture.engine->Evaluate();
  return HeapInUse() - before;
}

void BM_Memory(benchmark::State& state) {
  const size_t streams = static_cast<size_t>(state.range(0));
  const int with_metrics = static_cast<int>(state.range(1));
  double with = 0;
  double without = 0;
  for (auto _ : state) {
    without = FixtureHeap(streams, 0);
    with = FixtureHeap(streams, with_metrics);
  }
  const double n = static_cast<double>(streams);
  state.counters["engine_bytes_per_stream"] = without / n;
  state.counters["metrics_bytes_per_stream"] = (with - without) / n;
  state.counters["metrics_MiB"] = (with - without) / (1 << 20);
  state.SetLabel(with_metrics == 1 ? "defaults" : "--metrics-measures=none --metrics-top-bins=0");
}
BENCHMARK(BM_Memory)
    ->ArgsProduct({{10000, 30000, 100000}, {1, 3}})
    ->ArgNames({"streams", "metrics"})
    ->Iterations(1)
    ->Unit(benchmark::kSecond);

}  // namespace
}  // namespace kldrift

BENCHMARK_MAIN();
