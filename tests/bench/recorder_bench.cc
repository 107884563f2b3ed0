// Client-side binning through the Recorder, per value and per span, against the bare binning kernel
// in the same binary (issue 7's target: at least 50M values/s per core).
//
//   recorder_bench [--benchmark_min_time=0.5]
//
// Each benchmark bins the same N(0, 1) values (64 KiB of them, reused) into a numeric reference of
// K buckets in the full layout (K - 3 interior bins between -3 and 3), one thread:
//   BM_RecordPerValue   Recorder::Record(signal, value) for each value: a lock and a hash lookup
//                       per value;
//   BM_RecordSpan       Recorder::Record(signal, span) over spans of 1,000 values;
//   BM_BinLayoutAddValues  BinLayout::AddValues (the kernel plus the counting), no Recorder;
//   BM_BinIndicesKernel    kernels::BinIndices alone: the baseline.
// items_per_second is values per second on one core. The Recorder talks to an in-process fake
// server on a loopback port that serves the reference and acknowledges every batch; its background
// thread sends a batch once per second.
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/types/span.h"
#include "benchmark/benchmark.h"
#include "client/kldrift_client.h"
#include "grpcpp/grpcpp.h"
#include "server/core/bin_layout.h"
#include "server/kernels/binning.h"

namespace kldrift {
namespace {

constexpr size_t kValues = 1 << 16;
constexpr size_t kSpan = 1000;
constexpr char kSignal[] = "score";

std::vector<double> Edges(int buckets) {
  const int count = buckets - 2;
  std::vector<double> edges(count);
  for (int i = 0; i < count; ++i) edges[i] = -3.0 + 6.0 * i / (count - 1);
  return edges;
}

const std::vector<double>& Values() {
  static const auto* values = [] {
    auto* v = new std::vector<double>(kValues);
    std::mt19937_64 random(5);
    std::normal_distribution<double> normal;
    for (double& x : *v) x = normal(random);
    return v;
  }();
  return *values;
}

// Serves one numeric reference and acknowledges every Ingest batch.
class FakeServer final : public v1::KlDrift::Service {
 public:
  explicit FakeServer(int buckets) : edges_(Edges(buckets)) {}

  grpc::Status GetReference(grpc::ServerContext*, const v1::GetReferenceRequest* request,
                            v1::Reference* response) override {
    *response->mutable_stream() = request->stream();
    response->set_version(1);
    response->set_kind(v1::REFERENCE_KIND_NUMERIC);
    response->mutable_numeric()->mutable_edges()->Assign(edges_.begin(), edges_.end());
    return grpc::Status::OK;
  }

  grpc::Status Ingest(
      grpc::ServerContext*,
      grpc::ServerReaderWriter<v1::IngestResponse, v1::IngestRequest>* stream) override {
    v1::IngestRequest request;
    while (stream->Read(&request)) {
      v1::IngestResponse response;
      response.set_acked_sequence(request.sequence());
      if (!stream->Write(response)) break;
    }
    return grpc::Status::OK;
  }

 private:
  const std::vector<double> edges_;
};

// A fake server and a Recorder whose stream already has its bins.
class RecorderFixture {
 public:
  explicit RecorderFixture(int buckets) : service_(buckets) {
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(&service_);
    server_ = builder.BuildAndStart();
    ChannelOptions channel;
    channel.target = absl::StrCat("127.0.0.1:", port);
    RecorderOptions options;
    options.model = "bench";
    options.client_id = "recorder-bench";
    recorder_ = *Recorder::Create(CreateChannel(channel), options);
    // The first value makes the Recorder fetch the bins; Flush returns once it has them.
    recorder_->Record(kSignal, 0.0);
    const absl::Time deadline = absl::Now() + absl::Seconds(10);
    while (!recorder_->Flush(absl::Seconds(1)).ok() && absl::Now() < deadline) {
    }
  }
  ~RecorderFixture() {
    recorder_->Close(absl::Seconds(5)).IgnoreError();
    server_->Shutdown(absl::ToChronoTime(absl::Now()));
  }

  Recorder& recorder() { return *recorder_; }
  // Whether every value recorded was binned and none dropped.
  bool Healthy() const {
    const RecorderStats stats = recorder_->Stats();
    return stats.observations_dropped == 0 && stats.observations_waiting == 0;
  }

 private:
  FakeServer service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<Recorder> recorder_;
};

void BucketSizes(benchmark::internal::Benchmark* b) { b->Arg(16)->Arg(64)->Arg(1024); }

void BM_RecordPerValue(benchmark::State& state) {
  RecorderFixture fixture(static_cast<int>(state.range(0)));
  const std::vector<double>& values = Values();
  size_t offset = 0;
  for (auto _ : state) {
    for (size_t i = 0; i < kSpan; ++i) fixture.recorder().Record(kSignal, values[offset + i]);
    offset = (offset + kSpan) % (kValues - kSpan);
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * kSpan));
  if (!fixture.Healthy()) state.SkipWithError("the Recorder dropped or held back values");
}
BENCHMARK(BM_RecordPerValue)->Apply(BucketSizes);

void BM_RecordSpan(benchmark::State& state) {
  RecorderFixture fixture(static_cast<int>(state.range(0)));
  const absl::Span<const double> values = Values();
  size_t offset = 0;
  for (auto _ : state) {
    fixture.recorder().Record(kSignal, values.subspan(offset, kSpan));
    offset = (offset + kSpan) % (kValues - kSpan);
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * kSpan));
  if (!fixture.Healthy()) state.SkipWithError("the Recorder dropped or held back values");
}
BENCHMARK(BM_RecordSpan)->Apply(BucketSizes);

void BM_BinLayoutAddValues(benchmark::State& state) {
  const BinLayout layout = *BinLayout::Numeric(Edges(static_cast<int>(state.range(0))));
  const absl::Span<const double> values = Values();
  std::vector<double> counts(layout.size());
  size_t offset = 0;
  for (auto _ : state) {
    layout.AddValues(values.subspan(offset, kSpan), absl::MakeSpan(counts));
    offset = (offset + kSpan) % (kValues - kSpan);
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * kSpan));
}
BENCHMARK(BM_BinLayoutAddValues)->Apply(BucketSizes);

void BM_BinIndicesKernel(benchmark::State& state) {
  const std::vector<double> edges = Edges(static_cast<int>(state.range(0)));
  std::vector<double> padded(kernels::SearchEdgesSize(edges.size()));
  kernels::PadEdgesForSearch(edges.data(), edges.size(), padded.data());
  const std::vector<double>& values = Values();
  std::vector<uint32_t> indices(kSpan);
  size_t offset = 0;
  for (auto _ : state) {
    kernels::BinIndices(values.data() + offset, kSpan, padded.data(), edges.size(), indices.data());
    offset = (offset + kSpan) % (kValues - kSpan);
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * kSpan));
}
BENCHMARK(BM_BinIndicesKernel)->Apply(BucketSizes);

}  // namespace
}  // namespace kldrift

BENCHMARK_MAIN();
