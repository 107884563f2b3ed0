// What kldriftd spends per histogram bin on ingest, without the network: the pieces of the path a
// batch takes after gRPC has parsed it (issue 7).
//
//   BM_CompactSubBucketsAdd   one sub-bucket add of K counts (1..3 each), the window's inner step
//                             (...Summarized: with the delta scanned once beforehand, as ingest
//                             does for a stream's windows);
//   BM_IngestApply            a batch of 100 pre-binned histograms of 64 bins (what `kldrift
//                             bench` sends) from its bytes, as kldriftd's Ingest takes it:
//                             decoded (decoder 1: IngestDecoder, kldriftd's path; decoder 0:
//                             parsed into a protobuf arena and FromProto, the path of what the
//                             decoder declines, and kldriftd's for every batch before
//                             2026-11-26 16:30 UTC), then DriftEngine::Ingest; over
//                             models x 100 streams; store 0: no store (--storage=memory), 1:
//                             RocksDB in a temporary folder (default durability: WAL, no fsync);
//                             coalesce 1: ingest coalescing (EngineOptions::coalesce_ingest,
//                             kldriftd's default), whose adds to the windows wait for the next
//                             query or tick: an untimed tick every 10,000 batches here, by when
//                             each stream has had 100 batches at 10,000 streams (1,000 at 1,000),
//                             so one add to the windows per 100 (1,000) batches is not timed;
//                             coalesce 0: every batch added to the windows as it comes, in the
//                             same run (the baseline).
//
// Items are bins. Run from a Release build on a quiet machine:
//   build/release/tests/bench/ingest_bench --benchmark_min_time=2
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "benchmark/benchmark.h"
#include "google/protobuf/arena.h"
#include "kldrift/v1/kldrift.pb.h"
#include "server/core/clock.h"
#include "server/core/compact_sub_buckets.h"
#include "server/core/drift_engine.h"
#include "server/service/ingest_decoder.h"
#include "server/service/proto_conversion.h"
#include "server/storage/rocksdb_store.h"

namespace kldrift {
namespace {

constexpr int kBins = 64;
constexpr int kSignalsPerModel = 100;  // One batch carries every signal of a model.

double Count(int signal, int bin) { return 1 + (signal + bin) % 3; }

void BM_CompactSubBucketsAdd(benchmark::State& state) {
  const size_t width = static_cast<size_t>(state.range(0));
  CompactSubBuckets ring(12, width);
  std::vector<double> delta(width);
  for (size_t i = 0; i < width; ++i) delta[i] = Count(0, static_cast<int>(i));
  int slot = 0;
  for (auto _ : state) {
    ring.Add(slot, delta);
    slot = (slot + 1) % 12;
    // Keep the counts below 2^16 so every iteration takes the same path.
    if (slot == 0 && ring.encoding(0) == CompactSubBuckets::Encoding::kUint32) {
      for (int s = 0; s < 12; ++s) ring.Clear(s);
    }
  }
  state.SetItemsProcessed(state.iterations() * static_cast<int64_t>(width));
}
BENCHMARK(BM_CompactSubBucketsAdd)->Range(16, 1024);

// The same with the delta summarized once (what the engine does for a stream's windows).
void BM_CompactSubBucketsAddSummarized(benchmark::State& state) {
  const size_t width = static_cast<size_t>(state.range(0));
  CompactSubBuckets ring(12, width);
  std::vector<double> delta(width);
  for (size_t i = 0; i < width; ++i) delta[i] = Count(0, static_cast<int>(i));
  const CompactSubBuckets::DeltaSummary summary = CompactSubBuckets::Summarize(delta);
  int slot = 0;
  for (auto _ : state) {
    ring.Add(slot, delta, summary);
    slot = (slot + 1) % 12;
    if (slot == 0 && ring.encoding(0) == CompactSubBuckets::Encoding::kUint32) {
      for (int s = 0; s < 12; ++s) ring.Clear(s);
    }
  }
  state.SetItemsProcessed(state.iterations() * static_cast<int64_t>(width));
}
BENCHMARK(BM_CompactSubBucketsAddSummarized)->Range(16, 1024);

v1::IngestRequest Batch(int model, uint64_t sequence) {
  v1::IngestRequest request;
  request.set_client_id("bench");
  request.set_sequence(sequence);
  request.set_model(absl::StrCat("model-", model));
  // In key order (by signal name), as the Recorder and `kldrift bench` send them: kldriftd then
  // does not sort the batch.
  std::vector<int> signals(kSignalsPerModel);
  std::iota(signals.begin(), signals.end(), 0);
  std::sort(signals.begin(), signals.end(),
            [](int a, int b) { return absl::StrCat("signal-", a) < absl::StrCat("signal-", b); });
  for (int s : signals) {
    v1::StreamBatch* stream = request.add_streams();
    stream->set_model_version("v1");
    stream->set_signal(absl::StrCat("signal-", s));
    for (int b = 0; b < kBins; ++b) stream->mutable_histogram()->add_counts(Count(s, b));
  }
  return request;
}

void BM_IngestApply(benchmark::State& state) {
  const bool with_store = state.range(0) != 0;
  const int models = static_cast<int>(state.range(1));
  const bool coalesce = state.range(2) != 0;
  const bool use_decoder = state.range(3) != 0;
  RealClock clock;
  std::unique_ptr<RocksDbStore> store;
  std::string dir;
  if (with_store) {
    dir = absl::StrCat(std::filesystem::temp_directory_path().string(), "/ingest_bench.", getpid());
    std::filesystem::remove_all(dir);
    auto opened = RocksDbStore::Open(RocksDbStoreOptions{dir, false, &clock});
    if (!opened.ok()) {
      state.SkipWithError(opened.status().ToString().c_str());
      return;
    }
    store = *std::move(opened);
  }
  EngineOptions options;
  options.store = store.get();
  options.coalesce_ingest = coalesce;
  DriftEngine engine(options, &clock);
  for (int m = 0; m < models; ++m) {
    for (int s = 0; s < kSignalsPerModel; ++s) {
      ReferenceSpec spec;
      spec.stream = StreamKey{absl::StrCat("model-", m), "v1", absl::StrCat("signal-", s)};
      spec.kind = ReferenceKind::kPreBinned;
      spec.bins = kBins;
      spec.counts = std::vector<double>(kBins, 100.0);
      if (auto ref = engine.PutReference(spec); !ref.ok()) {
        state.SkipWithError(ref.status().ToString().c_str());
        return;
      }
    }
  }
  // Each model's batch as bytes, parsed every time as gRPC would: a batch's numbers are then read
  // from memory as fresh as the service's (a parsed message kept per model would be cold).
  std::vector<std::string> requests;
  for (int m = 0; m < models; ++m) requests.push_back(Batch(m, 0).SerializeAsString());
  google::protobuf::Arena arena(IngestArenaOptions());  // As kldriftd's Ingest reads a batch.
  IngestDecoder decoder;
  uint64_t sequence = 0;
  for (auto _ : state) {
    const std::string& bytes = requests[sequence % models];
    IngestBatch batch;
    if (use_decoder) {
      bool more_follows;
      if (!decoder.Decode({absl::string_view(bytes)}, &batch, &more_follows)) {
        state.SkipWithError("the decoder declined a batch");
        break;
      }
    } else {
      arena.Reset();
      auto* request = google::protobuf::Arena::CreateMessage<v1::IngestRequest>(&arena);
      if (!request->ParseFromString(bytes)) {
        state.SkipWithError("cannot parse a batch");
        break;
      }
      batch = *FromProto(*request);
    }
    batch.sequence = ++sequence;
    const IngestResult result = engine.Ingest(std::move(batch));
    if (!result.status.ok()) {
      state.SkipWithError(result.status.ToString().c_str());
      break;
    }
    // A tick now and then keeps the store's log short, as the server's would.
    if (sequence % 10000 == 0) {
      state.PauseTiming();
      engine.Evaluate();
      state.ResumeTiming();
    }
  }
  state.SetItemsProcessed(state.iterations() * kSignalsPerModel * kBins);
  store.reset();
  if (!dir.empty()) std::filesystem::remove_all(dir);
}
// {store, models, coalesce, decoder}: 1,000 streams (in cache) and 10,000 (service_bench's load:
// mostly cache misses).
BENCHMARK(BM_IngestApply)
    ->ArgsProduct({{0, 1}, {10, 100}, {0, 1}, {0, 1}})
    ->ArgNames({"store", "models", "coalesce", "decoder"})
    ->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace kldrift

BENCHMARK_MAIN();
