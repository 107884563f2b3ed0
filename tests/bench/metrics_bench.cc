// What Prometheus metrics cost kldriftd, measured against the same engine without them:
//   - Evaluate() over S histogram streams (K bins, 3 windows, every window holding data), with no
//     observer (the baseline) and with DriftMetrics (gauges set, top bins ranked);
//   - one scrape: DriftMetrics::Collect() plus the text exposition Prometheus reads.
//
//   metrics_bench [--benchmark_filter=...]
// Figures in README "Metrics": compare BM_Evaluate's metrics:1 and metrics:2 rows with metrics:0.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <sstream>
#include <string>
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
  Fixture(size_t streams, int with_metrics) {
    if (with_metrics != 0) {
      MetricsOptions metrics_options;
      if (with_metrics >= 2) metrics_options.top_bins = 0;
      if (with_metrics == 3) metrics_options.measures = 0;
      metrics = std::make_unique<DriftMetrics>(metrics_options);
    }
    EngineOptions options;
    options.observer = metrics.get();
    options.max_streams = streams;
    engine = std::make_unique<DriftEngine>(options, &clock);
    std::mt19937_64 rng(7);
    std::uniform_real_distribution<double> count(50, 150);
    for (size_t s = 0; s < streams; ++s) {
      ReferenceSpec spec;
      spec.stream = {absl::StrCat("model-", s % 16), "v1", absl::StrCat("signal-", s)};
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
      if (IngestResult r = engine->Ingest(batch); !r.status.ok()) Die(r.status);
    }
  }
  FakeClock clock;
  std::unique_ptr<DriftMetrics> metrics;
  std::unique_ptr<DriftEngine> engine;
};

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

void BM_Scrape(benchmark::State& state) {
  Fixture fixture(static_cast<size_t>(state.range(0)), static_cast<int>(state.range(1)));
  fixture.engine->Evaluate();
  size_t bytes = 0;
  for (auto _ : state) {
    std::vector<prometheus::MetricFamily> families = fixture.metrics->Collect();
    std::ostringstream out;
    prometheus::TextSerializer().Serialize(out, families);
    bytes = out.str().size();
  }
  state.counters["series"] = static_cast<double>(fixture.metrics->stream_series());
  state.counters["bytes"] = static_cast<double>(bytes);
  state.SetLabel(state.range(1) == 1 ? "defaults" : "--metrics-measures=none --metrics-top-bins=0");
}
BENCHMARK(BM_Scrape)
    ->ArgsProduct({{1000, 10000}, {1, 3}})
    ->ArgNames({"streams", "metrics"})
    ->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace kldrift

BENCHMARK_MAIN();
