// Ingest throughput of a real kldriftd with each storage mode, measured in the same run with the
// same load, and start-up time with many streams.
//
//   storage_bench --kldriftd build/release/server/kldriftd [--streams 64] [--bins 64]
//                 [--clients 2] [--seconds 5] [--startup-streams 100000]
//
// For each mode (--storage=memory, rocksdb, rocksdb --sync) a fresh server on a loopback port takes
// pre-binned references for `streams` streams spread over `clients` models; each client thread
// keeps one Ingest stream busy with batches carrying a K-bin histogram delta for each of its
// streams (up to 64 batches in flight), for `seconds`. Reported: acknowledged batches/s and
// histogram bins/s, and each mode's ratio to memory. Then, with RocksDB, it creates
// `startup-streams` streams with one batch each, restarts the server, and reports how long the
// restart took until the port was served. Loopback only; every loop is bounded.
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "grpcpp/grpcpp.h"
#include "kldrift/v1/kldrift.grpc.pb.h"
#include "tests/e2e/server_process.h"

namespace kldrift {
namespace {

using v1::KlDrift;

struct Config {
  std::string kldriftd = "server/kldriftd";
  int streams = 64;
  int bins = 64;
  int clients = 2;
  double seconds = 5;
  int startup_streams = 100000;
};

struct Result {
  double batches_per_second = 0;
  double bins_per_second = 0;
  uint64_t batches = 0;
};

std::string Model(int client) { return absl::StrCat("bench-model-", client); }

void PutReferences(KlDrift::Stub* stub, int models, int streams_per_model, int bins) {
  for (int m = 0; m < models; ++m) {
    for (int s = 0; s < streams_per_model; ++s) {
      v1::PutReferenceRequest request;
      request.mutable_stream()->set_model(Model(m));
      request.mutable_stream()->set_signal(absl::StrCat("signal-", s));
      request.mutable_pre_binned()->set_bins(bins);
      for (int b = 0; b < bins; ++b) request.mutable_counts()->add_counts(100 + b);
      v1::PutReferenceResponse response;
      grpc::ClientContext context;
      context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
      grpc::Status status = stub->PutReference(&context, request, &response);
      if (!status.ok()) {
        std::fprintf(stderr, "PutReference failed: %s\n", status.error_message().c_str());
        std::exit(1);
      }
    }
  }
}

// One client: keeps up to kInFlight batches unacknowledged on one Ingest stream until `deadline`.
uint64_t RunClient(KlDrift::Stub* stub, int client, int streams, int bins, absl::Time deadline) {
  constexpr uint64_t kInFlight = 64;
  v1::IngestRequest request;
  request.set_client_id(
      absl::StrCat("bench-client-", client, "-", absl::ToUnixMicros(absl::Now())));
  request.set_model(Model(client));
  for (int s = 0; s < streams; ++s) {
    v1::StreamBatch* batch = request.add_streams();
    batch->set_signal(absl::StrCat("signal-", s));
    for (int b = 0; b < bins; ++b) batch->mutable_histogram()->add_counts(1 + (b + s) % 3);
  }
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(deadline + absl::Seconds(30)));
  auto stream = stub->Ingest(&context);
  std::atomic<uint64_t> acked{0};
  std::thread reader([&] {
    v1::IngestResponse response;
    while (stream->Read(&response)) {
      if (response.errors_size() > 0) {
        std::fprintf(stderr, "batch error: %s\n", response.errors(0).message().c_str());
        std::exit(1);
      }
      acked.store(response.acked_sequence());
    }
  });
  uint64_t sent = 0;
  while (absl::Now() < deadline) {
    if (sent - acked.load() >= kInFlight) {
      std::this_thread::yield();
      continue;
    }
    request.set_sequence(++sent);
    if (!stream->Write(request)) break;
  }
  stream->WritesDone();
  reader.join();
  stream->Finish();
  return acked.load();
}

Result Measure(const Config& config, const std::vector<std::string>& flags) {
  auto server = testing::ServerProcess::Start(config.kldriftd, flags);
  if (!server.ok()) {
    std::fprintf(stderr, "cannot start kldriftd: %s\n",
                 std::string(server.status().message()).c_str());
    std::exit(1);
  }
  auto stub = KlDrift::NewStub((*server)->Channel());
  const int per_client = config.streams / config.clients;
  PutReferences(stub.get(), config.clients, per_client, config.bins);
  const absl::Time start = absl::Now();
  const absl::Time deadline = start + absl::Seconds(config.seconds);
  std::vector<std::thread> threads;
  std::vector<uint64_t> acked(config.clients);
  for (int c = 0; c < config.clients; ++c) {
    threads.emplace_back(
        [&, c] { acked[c] = RunClient(stub.get(), c, per_client, config.bins, deadline); });
  }
  for (std::thread& t : threads) t.join();
  const double elapsed = absl::ToDoubleSeconds(absl::Now() - start);
  Result result;
  for (uint64_t a : acked) result.batches += a;
  result.batches_per_second = result.batches / elapsed;
  result.bins_per_second = result.batches_per_second * per_client * config.bins;
  return result;
}

void MeasureStartup(const Config& config) {
  if (config.startup_streams <= 0) return;
  char dir_template[] = "/tmp/kldrift-startup-XXXXXX";
  const std::string dir = mkdtemp(dir_template);
  const std::vector<std::string> flags = {"--data-dir", dir + "/data", "--max-streams",
                                          absl::StrCat(config.startup_streams + 10)};
  const int models = 100;
  const int per_model = config.startup_streams / models;
  {
    auto server = testing::ServerProcess::Start(config.kldriftd, flags);
    if (!server.ok()) std::exit(1);
    auto stub = KlDrift::NewStub((*server)->Channel());
    const absl::Time start = absl::Now();
    PutReferences(stub.get(), models, per_model, config.bins);
    // One batch per stream, one Ingest call per model.
    for (int m = 0; m < models; ++m) {
      grpc::ClientContext context;
      context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
      auto stream = stub->Ingest(&context);
      v1::IngestRequest request;
      request.set_client_id(absl::StrCat("startup-", m));
      request.set_sequence(1);
      request.set_model(Model(m));
      for (int s = 0; s < per_model; ++s) {
        v1::StreamBatch* batch = request.add_streams();
        batch->set_signal(absl::StrCat("signal-", s));
        for (int b = 0; b < config.bins; ++b) batch->mutable_histogram()->add_counts(1);
      }
      stream->Write(request);
      v1::IngestResponse response;
      stream->Read(&response);
      stream->WritesDone();
      stream->Finish();
    }
    std::printf("created %d streams (%d bins, one batch each) in %.1f s\n", models * per_model,
                config.bins, absl::ToDoubleSeconds(absl::Now() - start));
    (*server)->Stop();
  }
  const absl::Time restart = absl::Now();
  auto server = testing::ServerProcess::Start(config.kldriftd, flags, absl::Seconds(300));
  if (!server.ok()) std::exit(1);
  std::printf("restart with %d streams: serving after %.2f s (RocksDB open + recovery + listen)\n",
              models * per_model, absl::ToDoubleSeconds(absl::Now() - restart));
  std::string log;
  std::ifstream in((*server)->work_dir() + "/kldriftd.log");
  std::getline(in, log);
  std::printf("  server: %s\n", log.c_str());
  (*server)->Stop();
  std::string command = "rm -rf " + dir;
  std::system(command.c_str());
}

}  // namespace
}  // namespace kldrift

int main(int argc, char** argv) {
  kldrift::Config config;
  if (const char* env = std::getenv("KLDRIFTD")) config.kldriftd = env;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    const std::string value = argv[i + 1];
    if (flag == "--kldriftd")
      config.kldriftd = value;
    else if (flag == "--streams")
      config.streams = std::atoi(value.c_str());
    else if (flag == "--bins")
      config.bins = std::atoi(value.c_str());
    else if (flag == "--clients")
      config.clients = std::atoi(value.c_str());
    else if (flag == "--seconds")
      config.seconds = std::atof(value.c_str());
    else if (flag == "--startup-streams")
      config.startup_streams = std::atoi(value.c_str());
    else {
      std::fprintf(stderr, "unknown flag %s\n", flag.c_str());
      return 2;
    }
  }
  std::printf("storage_bench: %d streams x %d bins over %d clients, %.0f s per mode, loopback\n\n",
              config.streams, config.bins, config.clients, config.seconds);
  const std::vector<std::pair<std::string, std::vector<std::string>>> modes = {
      {"memory", {"--storage=memory"}},
      {"rocksdb", {}},
      {"rocksdb --sync", {"--sync"}},
  };
  std::vector<kldrift::Result> results;
  for (const auto& [name, flags] : modes) {
    results.push_back(kldrift::Measure(config, flags));
    std::printf("%-16s %10.0f batches/s %12.3g bins/s   %8.1f%% of memory\n", name.c_str(),
                results.back().batches_per_second, results.back().bins_per_second,
                100.0 * results.back().batches_per_second / results.front().batches_per_second);
  }
  const double ratio = results[1].batches_per_second / results[0].batches_per_second;
  std::printf("\ntarget (storage issue): default durability >= 70%% of in-memory: %s (%.0f%%)\n\n",
              ratio >= 0.7 ? "MET" : "MISSED", 100 * ratio);
  kldrift::MeasureStartup(config);
  return 0;
}
