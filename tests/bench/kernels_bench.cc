// Google Benchmark for every kernel, with the scalar std::log loop as the in-binary baseline.
//
// Items processed are bins (or values / dimensions / samples), so items_per_second is bins/s on
// one core. When KLDRIFT_BENCH_DATA names a folder holding counts_K.f64 and reference_K.f64 (raw
// little-endian doubles, written by run_kernel_bench.py), those exact inputs are used, so NumPy and
// SciPy are timed on the same data; otherwise the same kind of data is generated here.
#include <benchmark/benchmark.h>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "server/core/bin_layout.h"
#include "server/core/drift_measures.h"
#include "server/core/incremental_kl.h"
#include "server/kernels/binning.h"
#include "server/kernels/divergence.h"
#include "server/kernels/gaussian.h"
#include "server/kernels/paired_logprob.h"

namespace kldrift {
namespace {

constexpr double kAlpha = 0.5;

std::vector<double> LoadOrGenerate(const std::string& name, size_t k, uint64_t seed) {
  if (const char* dir = std::getenv("KLDRIFT_BENCH_DATA")) {
    std::ifstream in(std::string(dir) + "/" + name + "_" + std::to_string(k) + ".f64",
                     std::ios::binary);
    if (in) {
      std::vector<double> data(k);
      in.read(reinterpret_cast<char*>(data.data()), static_cast<std::streamsize>(k * 8));
      if (in.gcount() == static_cast<std::streamsize>(k * 8)) return data;
    }
  }
  std::mt19937_64 rng(seed + k);
  std::uniform_int_distribution<int> count(0, 1000);
  std::vector<double> data(k);
  for (double& c : data) c = count(rng);
  return data;
}

// Inputs for one K, built once and shared by every benchmark of that size.
struct HistogramPair {
  std::vector<double> current, reference, q, log_q, log_reference, unit;
  double current_total = 0, p_scale = 0;
};

const HistogramPair& Pair(size_t k) {
  static auto* cache = new std::map<size_t, HistogramPair>();
  auto it = cache->find(k);
  if (it != cache->end()) return it->second;
  HistogramPair pair;
  pair.current = LoadOrGenerate("counts", k, 1);
  pair.reference = LoadOrGenerate("reference", k, 2);
  double ref_total = 0;
  for (double c : pair.reference) ref_total += c;
  for (double c : pair.current) pair.current_total += c;
  pair.q.resize(k);
  pair.log_q.resize(k);
  kernels::SmoothedShares(pair.reference.data(), k, kAlpha, 1.0 / (ref_total + k * kAlpha),
                          pair.q.data(), pair.log_q.data());
  pair.p_scale = 1.0 / (pair.current_total + k * kAlpha);
  pair.log_reference.resize(k);
  pair.unit.resize(k);
  kernels::SmoothedShares(pair.reference.data(), k, 0.0, 1.0, pair.unit.data(),
                          pair.log_reference.data());
  return cache->emplace(k, std::move(pair)).first->second;
}

void BinSizes(benchmark::internal::Benchmark* b) {
  for (int64_t k : {16, 64, 256, 1024, 65536, 1048576}) b->Arg(k);
}

// KL(P||Q) against a cached reference profile: one vector log per bin.
void BM_KlCachedReference(benchmark::State& state) {
  const size_t k = static_cast<size_t>(state.range(0));
  const HistogramPair& h = Pair(k);
  for (auto _ : state) {
    benchmark::DoNotOptimize(
        kernels::KlCurrentReference(h.current.data(), k, kAlpha, h.p_scale, h.log_q.data()));
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * k));
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * k * 2 * sizeof(double)));
}
BENCHMARK(BM_KlCachedReference)->Apply(BinSizes);

// The baseline: the same sum written as a plain loop over std::log.
void BM_KlScalarStdLog(benchmark::State& state) {
  const size_t k = static_cast<size_t>(state.range(0));
  const HistogramPair& h = Pair(k);
  for (auto _ : state) {
    double sum = 0;
    for (size_t i = 0; i < k; ++i) {
      const double p = (h.current[i] + kAlpha) * h.p_scale;
      sum += p * (std::log(p) - h.log_q[i]);
    }
    benchmark::DoNotOptimize(sum);
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * k));
}
BENCHMARK(BM_KlScalarStdLog)->Apply(BinSizes);

// Every measure of a drift report in one fused pass (three logs, two square roots per bin).
void BM_DivergenceSums(benchmark::State& state) {
  const size_t k = static_cast<size_t>(state.range(0));
  const HistogramPair& h = Pair(k);
  for (auto _ : state) {
    benchmark::DoNotOptimize(kernels::ComputeDivergenceSums(
        h.current.data(), k, kAlpha, h.current_total,
        {h.q.data(), h.log_q.data(), h.reference.data(), h.log_reference.data()}));
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * k));
}
BENCHMARK(BM_DivergenceSums)->Apply(BinSizes);

// The whole validated report: checks, fused sums, G-test p-value, contributions and top-5 bins.
void BM_ComputeDriftMeasures(benchmark::State& state) {
  const size_t k = static_cast<size_t>(state.range(0));
  const HistogramPair& h = Pair(k);
  const ReferenceProfile profile = *ReferenceProfile::Create(h.reference, kAlpha);
  for (auto _ : state) {
    benchmark::DoNotOptimize(ComputeDriftMeasures(profile, h.current, 5));
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * k));
}
BENCHMARK(BM_ComputeDriftMeasures)->Apply(BinSizes);

void BM_KlContributions(benchmark::State& state) {
  const size_t k = static_cast<size_t>(state.range(0));
  const HistogramPair& h = Pair(k);
  std::vector<double> out(k);
  for (auto _ : state) {
    kernels::KlContributions(h.current.data(), k, kAlpha, h.p_scale, h.log_q.data(), out.data());
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * k));
}
BENCHMARK(BM_KlContributions)->Apply(BinSizes);

// O(1) read of KL after a single-bin update.
void BM_IncrementalKlAddAndRead(benchmark::State& state) {
  const size_t k = static_cast<size_t>(state.range(0));
  const HistogramPair& h = Pair(k);
  auto profile =
      std::make_shared<const ReferenceProfile>(*ReferenceProfile::Create(h.reference, kAlpha));
  IncrementalKl kl(profile);
  size_t bin = 0;
  for (auto _ : state) {
    kl.Add(bin, 1.0);
    benchmark::DoNotOptimize(kl.KlCurrentReference());
    bin = bin + 1 == k ? 0 : bin + 1;
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()));
}
BENCHMARK(BM_IncrementalKlAddAndRead)->Arg(64)->Arg(65536);

void BM_GaussianKl(benchmark::State& state) {
  const size_t d = static_cast<size_t>(state.range(0));
  std::mt19937_64 rng(3);
  std::normal_distribution<double> normal;
  std::vector<double> m1(d), v1(d), m2(d), v2(d);
  for (size_t i = 0; i < d; ++i) {
    m1[i] = normal(rng), m2[i] = normal(rng);
    v1[i] = std::exp(normal(rng)), v2[i] = std::exp(normal(rng));
  }
  for (auto _ : state) {
    benchmark::DoNotOptimize(
        kernels::DiagonalGaussianKl(m1.data(), v1.data(), m2.data(), v2.data(), d));
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * d));
}
BENCHMARK(BM_GaussianKl)->Arg(16)->Arg(768)->Arg(65536);

void BM_PolicyKl(benchmark::State& state) {
  const size_t n = static_cast<size_t>(state.range(0));
  std::mt19937_64 rng(4);
  std::uniform_real_distribution<double> unit(1e-6, 1.0);
  std::normal_distribution<double> noise(0.0, 0.1);
  std::vector<double> cur(n), ref(n);
  for (size_t i = 0; i < n; ++i) {
    cur[i] = std::log(unit(rng));
    ref[i] = std::min(0.0, cur[i] + noise(rng));
  }
  for (auto _ : state) {
    benchmark::DoNotOptimize(kernels::EstimatePolicyKl(cur.data(), ref.data(), n));
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * n));
}
BENCHMARK(BM_PolicyKl)->Arg(1024)->Arg(65536);

// Raw values into 64 frozen bins: the client-side Recorder's hot path.
void BM_BinValues(benchmark::State& state) {
  const size_t edges_count = static_cast<size_t>(state.range(0));
  std::vector<double> edges(edges_count);
  for (size_t i = 0; i < edges_count; ++i) edges[i] = -3.0 + 6.0 * i / (edges_count - 1);
  const BinLayout layout = *BinLayout::Numeric(edges);
  std::mt19937_64 rng(5);
  std::normal_distribution<double> normal;
  std::vector<double> values(1 << 16);
  for (double& v : values) v = normal(rng);
  std::vector<double> counts(layout.size());
  for (auto _ : state) {
    layout.AddValues(values, absl::MakeSpan(counts));
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * values.size()));
}
BENCHMARK(BM_BinValues)->Arg(65)->Arg(1025);

}  // namespace
}  // namespace kldrift

BENCHMARK_MAIN();
