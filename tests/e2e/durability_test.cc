// Durability tests of kldriftd's embedded store, end to end: a real server process killed with
// SIGKILL at random moments while clients stream batches, restarts of a server holding thousands
// of streams, and data folders the server must refuse. Every wait is bounded.
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "kldrift/v1/kldrift.grpc.pb.h"
#include "server/core/testing/temp_dir.h"
#include "tests/e2e/server_process.h"

namespace kldrift {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using v1::KlDrift;

constexpr absl::Duration kRpcDeadline = absl::Seconds(10);

std::string Kldriftd() { return testing::BinaryPath("KLDRIFTD", "server/kldriftd"); }

std::unique_ptr<grpc::ClientContext> Context(
    absl::Duration deadline = testing::TimeScaled(kRpcDeadline)) {
  auto context = std::make_unique<grpc::ClientContext>();
  context->set_deadline(absl::ToChronoTime(absl::Now() + deadline));
  return context;
}

// Starts kldriftd on `data_dir`, which every restart of a test reuses.
absl::StatusOr<std::unique_ptr<testing::ServerProcess>> StartOn(const std::string& data_dir,
                                                                const std::string& eval_interval) {
  return testing::ServerProcess::Start(Kldriftd(), {"--data-dir", data_dir, "--eval-interval",
                                                    eval_interval, "--shutdown-grace", "1s"});
}

// The server's log so far (it is written to the process's work folder).
std::string ServerLog(const testing::ServerProcess& server) {
  std::ifstream in(server.work_dir() + "/kldriftd.log");
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

v1::StreamId Stream(const std::string& model, const std::string& signal) {
  v1::StreamId id;
  id.set_model(model);
  id.set_signal(signal);
  return id;
}

absl::Time TimeOf(const google::protobuf::Timestamp& t) {
  return absl::FromUnixSeconds(t.seconds()) + absl::Nanoseconds(t.nanos());
}

// The store keeps alert times in microseconds, so a restart cannot give back finer ones.
int64_t Micros(const google::protobuf::Timestamp& t) {
  return t.seconds() * 1'000'000 + t.nanos() / 1000;
}

std::string Describe(const v1::DriftReport& r) {
  return absl::StrCat(v1::AlertState_Name(r.alert_state()), "/", v1::Severity_Name(r.severity()),
                      " since ", absl::FormatTime(TimeOf(r.state_since())));
}

absl::StatusOr<v1::GetDriftResponse> GetDrift(KlDrift::Stub* stub, const v1::StreamId& stream) {
  v1::GetDriftRequest request;
  *request.mutable_stream() = stream;
  v1::GetDriftResponse response;
  const grpc::Status status = stub->GetDrift(Context().get(), request, &response);
  if (!status.ok()) {
    return absl::UnavailableError(absl::StrCat("GetDrift(", stream.model(), "/", stream.signal(),
                                               "): ", status.error_message()));
  }
  return response;
}

// ---- CrashTest ---------------------------------------------------------------------------------

constexpr int kCrashModels = 3;
constexpr int kCrashRounds = 24;
constexpr char kDrifted[] = "drifted";
constexpr char kSteady[] = "steady";
// Interior bins of the numeric references (edges 0, 1, 2, 3, 4); a full-layout histogram adds
// underflow, overflow and NaN buckets: [under, b0, b1, b2, b3, over, NaN].
constexpr int kFullBins = 7;
std::vector<double> DriftedReference() { return {4000, 3000, 2000, 1000}; }
std::vector<double> SteadyReference() { return {1000, 2000, 3000, 2000}; }
// What the drifted stream's data looks like: a re-baseline on it clears its alert.
std::vector<double> DriftedShape() { return {0, 0, 1000, 4000}; }

std::string CrashModel(int m) { return absl::StrCat("crash-model-", m); }
std::string CrashClient(int m) { return absl::StrCat("crash-writer-", m); }

// The histogram deltas batch `sequence` of model `m` carries: counts vary with the sequence
// number, so a lost or doubled batch changes the window's total. The drifted stream's data is far
// from its reference; the steady stream's is in exactly its reference's proportions.
std::vector<double> DriftedDelta(int m, uint64_t sequence) {
  const double k = 1 + static_cast<double>((sequence + m) % 4);
  return {0, 0, 0, k, 4 * k, 0, 0};
}
std::vector<double> SteadyDelta(int m, uint64_t sequence) {
  const double j = 1 + static_cast<double>((sequence * 7 + m) % 5);
  return {0, j, 2 * j, 3 * j, 2 * j, 0, 0};
}
double Samples(const std::vector<double>& delta) {
  double total = 0;
  for (double c : delta) total += c;
  return total;
}

v1::IngestRequest CrashBatch(int m, uint64_t sequence) {
  v1::IngestRequest request;
  request.set_client_id(CrashClient(m));
  request.set_sequence(sequence);
  request.set_model(CrashModel(m));
  for (const auto& [signal, delta] : {std::pair{kDrifted, DriftedDelta(m, sequence)},
                                      std::pair{kSteady, SteadyDelta(m, sequence)}}) {
    v1::StreamBatch* batch = request.add_streams();
    batch->set_signal(signal);
    for (double c : delta) batch->mutable_histogram()->add_counts(c);
  }
  return request;
}

// Alerts at once: one 1h window, no for-duration, little evidence needed.
v1::AlertPolicy FastPolicy() {
  v1::AlertPolicy policy;
  policy.add_windows()->set_seconds(3600);
  policy.mutable_for_duration()->set_seconds(0);
  policy.set_min_samples(10);
  policy.set_max_p_value(1);
  policy.set_warn_threshold(0.05);
  policy.set_critical_threshold(0.5);
  return policy;
}

// One model's ingest client, across every round.
struct CrashWriter {
  int model = 0;
  // Highest sequence acknowledged (cumulative), and highest written (Write() was called with it,
  // whether or not it returned true: a failed write may still have reached the server).
  uint64_t acked = 0;
  uint64_t written = 0;
  // Window totals after the first n batches, for each stream (index n).
  std::vector<double> drifted_prefix = {0};
  std::vector<double> steady_prefix = {0};
  // Batch errors the server reported (there should be none).
  std::vector<std::string> errors;
  uint64_t batches_this_round = 0;

  void ExtendPrefixes(uint64_t sequence) {
    while (drifted_prefix.size() <= sequence) {
      const uint64_t s = drifted_prefix.size();
      drifted_prefix.push_back(drifted_prefix.back() + Samples(DriftedDelta(model, s)));
      steady_prefix.push_back(steady_prefix.back() + Samples(SteadyDelta(model, s)));
    }
  }
};

// Streams batches over one Ingest stream until the stream breaks (the server is killed) or the
// deadline passes. Acks are read on a second thread.
void RunCrashWriter(KlDrift::Stub* stub, CrashWriter* w, uint32_t seed) {
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + testing::TimeScaled(absl::Seconds(30))));
  std::unique_ptr<grpc::ClientReaderWriter<v1::IngestRequest, v1::IngestResponse>> stream =
      stub->Ingest(&context);
  absl::Mutex mutex;
  uint64_t acked = w->acked;
  std::vector<std::string> errors;
  std::thread reader([&] {
    v1::IngestResponse response;
    while (stream->Read(&response)) {
      absl::MutexLock lock(&mutex);
      acked = std::max<uint64_t>(acked, response.acked_sequence());
      for (const v1::BatchError& e : response.errors()) {
        errors.push_back(absl::StrCat("sequence ", e.sequence(), ": ", e.message()));
      }
    }
  });
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> pause_us(0, 1500);
  w->batches_this_round = 0;
  while (true) {
    const uint64_t sequence = w->written + 1;
    w->written = sequence;
    w->ExtendPrefixes(sequence);
    if (!stream->Write(CrashBatch(w->model, sequence))) break;
    ++w->batches_this_round;
    absl::SleepFor(absl::Microseconds(pause_us(rng)));
  }
  reader.join();
  stream->Finish();  // UNAVAILABLE: the server was killed.
  absl::MutexLock lock(&mutex);
  w->acked = acked;
  w->errors.insert(w->errors.end(), errors.begin(), errors.end());
}

// Resends batches acked+1 .. written with their original sequence numbers and contents over a
// fresh stream and waits for them to be acknowledged.
void ResendUnacknowledged(KlDrift::Stub* stub, CrashWriter* w) {
  if (w->acked >= w->written) return;
  auto context = Context(testing::TimeScaled(absl::Seconds(20)));
  auto stream = stub->Ingest(context.get());
  for (uint64_t s = w->acked + 1; s <= w->written; ++s) {
    ASSERT_TRUE(stream->Write(CrashBatch(w->model, s))) << "resending sequence " << s;
  }
  ASSERT_TRUE(stream->WritesDone());
  v1::IngestResponse response;
  uint64_t acked = w->acked;
  while (stream->Read(&response)) {
    acked = std::max<uint64_t>(acked, response.acked_sequence());
    for (const v1::BatchError& e : response.errors()) {
      ADD_FAILURE() << "resent sequence " << e.sequence() << " was rejected: " << e.message();
    }
  }
  const grpc::Status status = stream->Finish();
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_EQ(acked, w->written) << "the resent batches were not all acknowledged";
  w->acked = acked;
}

struct CrashStream {
  int model;
  std::string signal;
  // Interior counts of every version, version v at index v - 1.
  std::vector<std::vector<double>> versions;
};

v1::AlertState ExpectedState(const CrashStream& s) {
  // The drifted stream fires until it is re-baselined on its own data's shape.
  return s.signal == kDrifted && s.versions.back() != DriftedShape() ? v1::ALERT_STATE_FIRING
                                                                     : v1::ALERT_STATE_OK;
}

absl::StatusOr<uint64_t> PutCrashReference(KlDrift::Stub* stub, const CrashStream& s,
                                           const std::vector<double>& counts) {
  v1::PutReferenceRequest request;
  *request.mutable_stream() = Stream(CrashModel(s.model), s.signal);
  for (double e : {0.0, 1.0, 2.0, 3.0, 4.0}) request.mutable_numeric()->add_edges(e);
  for (double c : counts) request.mutable_counts()->add_counts(c);
  *request.mutable_policy() = FastPolicy();
  v1::PutReferenceResponse response;
  const grpc::Status status = stub->PutReference(Context().get(), request, &response);
  if (!status.ok()) return absl::UnavailableError(status.error_message());
  return response.version();
}

TEST(CrashTest, KillNineAtRandomMomentsLosesNothingAcknowledged) {
  TempDir data("kldrift-durability");
  ASSERT_FALSE(data.path().empty());
  std::mt19937 rng(20261101);
  std::uniform_int_distribution<int> kill_delay_ms(20, 250);
  const absl::Time test_started = absl::Now();

  std::vector<CrashStream> streams;
  for (int m = 0; m < kCrashModels; ++m) {
    streams.push_back({m, kDrifted, {}});
    streams.push_back({m, kSteady, {}});
  }
  std::vector<CrashWriter> writers(kCrashModels);
  for (int m = 0; m < kCrashModels; ++m) writers[m].model = m;
  // GetDrift of every stream just before the last kill.
  std::vector<v1::DriftReport> before_kill;
  uint64_t killed_with_unacked = 0;
  // Of those: applied before the kill (the resend is a duplicate), and not (the resend applies).
  uint64_t applied_unacked = 0;
  uint64_t unapplied = 0;
  uint64_t total_batches = 0;

  for (int round = 1; round <= kCrashRounds + 1; ++round) {
    SCOPED_TRACE(absl::StrCat("round ", round));
    const bool last = round == kCrashRounds + 1;
    auto started = StartOn(data.path(), "50ms");
    ASSERT_TRUE(started.ok()) << started.status();
    std::unique_ptr<testing::ServerProcess> server = *std::move(started);
    std::unique_ptr<KlDrift::Stub> stub = KlDrift::NewStub(server->Channel());

    if (round == 1) {
      for (CrashStream& s : streams) {
        const std::vector<double> counts =
            s.signal == kDrifted ? DriftedReference() : SteadyReference();
        absl::StatusOr<uint64_t> version = PutCrashReference(stub.get(), s, counts);
        ASSERT_TRUE(version.ok()) << version.status();
        ASSERT_EQ(*version, 1u);
        s.versions.push_back(counts);
      }
    } else {
      // (d) Alert states are those GetDrift reported before the kill.
      for (size_t i = 0; i < streams.size(); ++i) {
        const CrashStream& s = streams[i];
        SCOPED_TRACE(absl::StrCat(CrashModel(s.model), "/", s.signal));
        absl::StatusOr<v1::GetDriftResponse> drift =
            GetDrift(stub.get(), Stream(CrashModel(s.model), s.signal));
        ASSERT_TRUE(drift.ok()) << drift.status();
        ASSERT_EQ(drift->reports_size(), 1);
        const v1::DriftReport& now = drift->reports(0);
        const v1::DriftReport& then = before_kill[i];
        EXPECT_EQ(now.alert_state(), then.alert_state())
            << "after restart: " << Describe(now) << "; before the kill: " << Describe(then);
        EXPECT_EQ(now.severity(), then.severity());
        EXPECT_EQ(Micros(now.state_since()), Micros(then.state_since()))
            << "after restart: " << Describe(now) << "; before the kill: " << Describe(then);
        EXPECT_EQ(now.alert_state(), ExpectedState(s));
      }
      // (a) Each model's windows hold every acknowledged batch, and otherwise a prefix of the
      // written ones: the same prefix for both streams (batches are atomic), no holes.
      for (CrashWriter& w : writers) {
        SCOPED_TRACE(CrashModel(w.model));
        absl::StatusOr<v1::GetDriftResponse> drifted =
            GetDrift(stub.get(), Stream(CrashModel(w.model), kDrifted));
        absl::StatusOr<v1::GetDriftResponse> steady =
            GetDrift(stub.get(), Stream(CrashModel(w.model), kSteady));
        ASSERT_TRUE(drifted.ok()) << drifted.status();
        ASSERT_TRUE(steady.ok()) << steady.status();
        ASSERT_EQ(drifted->reports_size(), 1);
        ASSERT_EQ(steady->reports_size(), 1);
        const double drifted_samples = drifted->reports(0).samples();
        const double steady_samples = steady->reports(0).samples();
        EXPECT_GE(drifted_samples, w.drifted_prefix[w.acked]) << "acknowledged data was lost";
        EXPECT_GE(steady_samples, w.steady_prefix[w.acked]) << "acknowledged data was lost";
        EXPECT_LE(drifted_samples, w.drifted_prefix[w.written]) << "data was counted twice";
        EXPECT_LE(steady_samples, w.steady_prefix[w.written]) << "data was counted twice";
        bool prefix = false;
        for (uint64_t p = w.acked; p <= w.written && !prefix; ++p) {
          prefix = w.drifted_prefix[p] == drifted_samples && w.steady_prefix[p] == steady_samples;
          if (prefix) {
            applied_unacked += p - w.acked;
            unapplied += w.written - p;
          }
        }
        EXPECT_TRUE(prefix) << "samples " << drifted_samples << " / " << steady_samples
                            << " are not the first n batches for any n in [" << w.acked << ", "
                            << w.written << "]";
      }
      // (b) Resending everything unacknowledged makes the windows exact.
      for (CrashWriter& w : writers) {
        SCOPED_TRACE(CrashModel(w.model));
        ASSERT_NO_FATAL_FAILURE(ResendUnacknowledged(stub.get(), &w));
        for (const char* signal : {kDrifted, kSteady}) {
          absl::StatusOr<v1::GetDriftResponse> drift =
              GetDrift(stub.get(), Stream(CrashModel(w.model), signal));
          ASSERT_TRUE(drift.ok()) << drift.status();
          const std::vector<double>& prefix =
              signal == kDrifted ? w.drifted_prefix : w.steady_prefix;
          EXPECT_EQ(drift->reports(0).samples(), prefix[w.written])
              << signal << " after resending sequences up to " << w.written;
        }
      }
      // (c) Every reference version is readable; the latest is current.
      for (const CrashStream& s : streams) {
        SCOPED_TRACE(absl::StrCat(CrashModel(s.model), "/", s.signal));
        for (uint64_t version = 0; version <= s.versions.size(); ++version) {
          v1::GetReferenceRequest get;
          *get.mutable_stream() = Stream(CrashModel(s.model), s.signal);
          get.set_version(version);
          v1::Reference ref;
          const grpc::Status status = stub->GetReference(Context().get(), get, &ref);
          ASSERT_TRUE(status.ok()) << "version " << version << ": " << status.error_message();
          const uint64_t want = version == 0 ? s.versions.size() : version;
          EXPECT_EQ(ref.version(), want);
          const std::vector<double>& counts = s.versions[want - 1];
          ASSERT_EQ(ref.counts_size(), kFullBins);
          EXPECT_THAT(std::vector<double>(ref.counts().begin() + 1, ref.counts().begin() + 5),
                      ::testing::ElementsAreArray(counts))
              << "version " << want;
        }
        absl::StatusOr<v1::GetDriftResponse> drift =
            GetDrift(stub.get(), Stream(CrashModel(s.model), s.signal));
        ASSERT_TRUE(drift.ok()) << drift.status();
        EXPECT_EQ(drift->reports(0).reference_version(), s.versions.size());
      }
      for (const CrashWriter& w : writers) {
        EXPECT_THAT(w.errors, ::testing::IsEmpty()) << CrashModel(w.model);
      }
    }
    if (HasFailure()) {
      server->Stop();
      std::fprintf(stderr, "---- kldriftd log ----\n%s\n", ServerLog(*server).c_str());
      return;
    }
    if (last) {
      const int status = server->Stop();
      EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status;
      break;
    }

    // A new version of one stream's reference, with the same bins, every third round. Round 5
    // re-baselines a firing stream on its data's shape, which clears its alert.
    absl::Time state_changed = absl::InfinitePast();
    if (round % 3 == 2) {
      CrashStream& s = round == 5 ? streams[2 * (kCrashModels - 1)] : streams[(round / 3) % 6];
      const std::vector<double> counts = round == 5 ? DriftedShape() : s.versions.back();
      absl::StatusOr<uint64_t> version = PutCrashReference(stub.get(), s, counts);
      ASSERT_TRUE(version.ok()) << version.status();
      s.versions.push_back(counts);
      ASSERT_EQ(*version, s.versions.size());
      state_changed = absl::Now();
    }

    std::vector<std::thread> threads;
    for (CrashWriter& w : writers) {
      const uint32_t seed = static_cast<uint32_t>(round * 100 + w.model);
      threads.emplace_back([&stub, &w, seed] { RunCrashWriter(stub.get(), &w, seed); });
    }
    absl::SleepFor(absl::Milliseconds(kill_delay_ms(rng)));

    // The alert states must have been reached and persisted (on an evaluation tick) before the
    // kill: wait for them, then give the evaluator a few ticks if anything moved just now.
    const absl::Time states_deadline = absl::Now() + testing::TimeScaled(absl::Seconds(10));
    while (true) {
      bool expected = true;
      for (const CrashStream& s : streams) {
        absl::StatusOr<v1::GetDriftResponse> drift =
            GetDrift(stub.get(), Stream(CrashModel(s.model), s.signal));
        expected &= drift.ok() && drift->reports_size() == 1 &&
                    drift->reports(0).alert_state() == ExpectedState(s);
      }
      if (expected) break;
      state_changed = absl::Now();
      if (absl::Now() > states_deadline) {
        ADD_FAILURE() << "alert states did not reach what the data implies within 10 s";
        break;
      }
      absl::SleepFor(absl::Milliseconds(20));
    }
    const absl::Duration since_change = absl::Now() - state_changed;
    if (since_change < absl::Milliseconds(200)) {
      absl::SleepFor(absl::Milliseconds(200) - since_change);
    }
    before_kill.clear();
    for (const CrashStream& s : streams) {
      absl::StatusOr<v1::GetDriftResponse> drift =
          GetDrift(stub.get(), Stream(CrashModel(s.model), s.signal));
      if (!drift.ok() || drift->reports_size() != 1) {
        ADD_FAILURE() << "GetDrift before the kill: " << drift.status();
        before_kill.emplace_back();
        continue;
      }
      before_kill.push_back(drift->reports(0));
    }
    server->Kill();
    for (std::thread& t : threads) t.join();
    for (const CrashWriter& w : writers) {
      total_batches += w.batches_this_round;
      killed_with_unacked += w.written - w.acked;
    }
    ASSERT_FALSE(HasFailure());
  }
  std::printf(
      "[ crash    ] %d kills in %s: %llu batches written, %llu unacknowledged at a kill (%llu of "
      "them applied, %llu not)\n",
      kCrashRounds, absl::FormatDuration(absl::Now() - test_started).c_str(),
      static_cast<unsigned long long>(total_batches),
      static_cast<unsigned long long>(killed_with_unacked),
      static_cast<unsigned long long>(applied_unacked), static_cast<unsigned long long>(unapplied));
}

// ---- RestartTest -------------------------------------------------------------------------------

constexpr int kRestartModels = 30;
constexpr int kRestartSignals = 100;
constexpr int kRestartBins = 8;
constexpr int kRestartBatches = 3;
constexpr int kThreads = 6;

std::string RestartModel(int m) { return absl::StrCat("fleet-", m); }
std::string RestartSignal(int s) { return absl::StrCat("feature-", s); }

// Runs fn(i) for i in [0, n) on kThreads threads.
template <typename Fn>
void ParallelFor(int n, Fn fn) {
  std::atomic<int> next{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      for (int i = next++; i < n; i = next++) fn(i);
    });
  }
  for (std::thread& t : threads) t.join();
}

std::vector<double> RestartReference(int m, int s) {
  std::vector<double> counts(kRestartBins);
  for (int i = 0; i < kRestartBins; ++i) counts[i] = 100 + ((i * 37 + s * 11 + m * 7) % 50) * 10;
  return counts;
}

// Batch `b` of signal s of model m: integer counts, enough for the default policy's minimum
// (700 for 8 bins) in three batches; every third signal drifts to the last bin.
std::vector<double> RestartDelta(int m, int s, int b) {
  std::vector<double> counts(kRestartBins);
  for (int i = 0; i < kRestartBins; ++i) counts[i] = 10 * ((i * (s + 1) + b * 3 + m) % 13 + 5);
  if (s % 3 == 0) counts[kRestartBins - 1] += 600 + 100 * b;
  return counts;
}

std::string Key(int m, int s) { return absl::StrCat(RestartModel(m), "/", RestartSignal(s)); }

// All of GetDrift's numbers for a stream, and how far two snapshots differ.
struct Comparison {
  uint64_t values = 0;
  uint64_t inexact = 0;
  double max_relative = 0;
  uint64_t since_nanos_differ = 0;
  // What differs beyond tolerance, in the stream being compared.
  std::vector<std::string> differences;

  void Equal(bool same, const std::string& what) {
    if (!same) differences.push_back(what);
  }
  // Exact equality is expected (integer counts); a relative 1e-12 is tolerated and reported.
  void Close(double before, double after, const std::string& what) {
    ++values;
    if (before == after || (std::isnan(before) && std::isnan(after))) return;
    ++inexact;
    const double scale = std::max(std::fabs(before), std::fabs(after));
    const double relative = std::isfinite(scale) ? std::fabs(before - after) / scale : INFINITY;
    max_relative = std::max(max_relative, relative);
    if (relative > 1e-12) {
      differences.push_back(absl::StrCat(what, ": ", before, " before, ", after, " after"));
    }
  }
};

// Compares one stream's reports from before and after the restart (evaluated_at aside).
void CompareReports(const v1::GetDriftResponse& before, const v1::GetDriftResponse& after,
                    Comparison* c) {
  c->Equal(before.reports_size() == after.reports_size(), "number of windows");
  for (int r = 0; r < std::min(before.reports_size(), after.reports_size()); ++r) {
    const v1::DriftReport& a = before.reports(r);
    const v1::DriftReport& b = after.reports(r);
    const std::string& w = a.window_name();
    c->Equal(a.window_name() == b.window_name(), absl::StrCat(w, " window name"));
    c->Equal(a.samples() == b.samples(),
             absl::StrCat(w, " samples: ", a.samples(), " before, ", b.samples(), " after"));
    c->Equal(a.enough_samples() == b.enough_samples(), absl::StrCat(w, " enough_samples"));
    c->Equal(a.measure() == b.measure(), absl::StrCat(w, " measure"));
    c->Equal(a.reference_version() == b.reference_version(), absl::StrCat(w, " reference_version"));
    c->Equal(a.alert_state() == b.alert_state() && a.severity() == b.severity() &&
                 Micros(a.state_since()) == Micros(b.state_since()),
             absl::StrCat(w, " alert: ", Describe(a), " before, ", Describe(b), " after"));
    if (a.state_since().nanos() != b.state_since().nanos()) ++c->since_nanos_differ;
    c->Close(a.measure_value(), b.measure_value(), absl::StrCat(w, " measure_value"));
    c->Equal(a.has_histogram() == b.has_histogram(), absl::StrCat(w, " has_histogram"));
    const v1::HistogramDrift& ha = a.histogram();
    const v1::HistogramDrift& hb = b.histogram();
    c->Close(ha.kl_current_reference(), hb.kl_current_reference(), w + " kl_current_reference");
    c->Close(ha.kl_reference_current(), hb.kl_reference_current(), w + " kl_reference_current");
    c->Close(ha.jeffreys(), hb.jeffreys(), w + " jeffreys");
    c->Close(ha.psi(), hb.psi(), w + " psi");
    c->Close(ha.js_bits(), hb.js_bits(), w + " js_bits");
    c->Close(ha.hellinger(), hb.hellinger(), w + " hellinger");
    c->Close(ha.total_variation(), hb.total_variation(), w + " total_variation");
    c->Close(ha.l_inf(), hb.l_inf(), w + " l_inf");
    c->Close(ha.chi2(), hb.chi2(), w + " chi2");
    c->Close(ha.g_test_p_value(), hb.g_test_p_value(), w + " g_test_p_value");
    c->Equal(ha.top_bins_size() == hb.top_bins_size(), absl::StrCat(w, " top_bins size"));
    for (int i = 0; i < std::min(ha.top_bins_size(), hb.top_bins_size()); ++i) {
      c->Equal(ha.top_bins(i).bin() == hb.top_bins(i).bin(), absl::StrCat(w, " top bin ", i));
      c->Close(ha.top_bins(i).contribution(), hb.top_bins(i).contribution(),
               absl::StrCat(w, " top bin ", i, " contribution"));
    }
  }
}

TEST(RestartTest, ThousandsOfStreamsRestoreEveryWindowExactly) {
  TempDir data("kldrift-durability");
  ASSERT_FALSE(data.path().empty());
  constexpr int kStreams = kRestartModels * kRestartSignals;
  auto started = StartOn(data.path(), "200ms");
  ASSERT_TRUE(started.ok()) << started.status();
  std::unique_ptr<testing::ServerProcess> server = *std::move(started);
  std::unique_ptr<KlDrift::Stub> stub = KlDrift::NewStub(server->Channel());

  // References: even models alert at once, odd ones keep the default policy (5m for-duration, so
  // their drifted windows stay pending).
  const absl::Time put_started = absl::Now();
  std::atomic<int> put_failures{0};
  ParallelFor(kStreams, [&](int i) {
    const int m = i / kRestartSignals;
    const int s = i % kRestartSignals;
    v1::PutReferenceRequest request;
    *request.mutable_stream() = Stream(RestartModel(m), RestartSignal(s));
    request.mutable_pre_binned()->set_bins(kRestartBins);
    for (double c : RestartReference(m, s)) request.mutable_counts()->add_counts(c);
    if (m % 2 == 0) {
      v1::AlertPolicy& policy = *request.mutable_policy();
      policy.mutable_for_duration()->set_seconds(0);
      policy.set_min_samples(10);
      policy.set_max_p_value(1);
    }
    v1::PutReferenceResponse response;
    const grpc::Status status = stub->PutReference(Context().get(), request, &response);
    if (!status.ok() && put_failures++ < 5) {
      ADD_FAILURE() << Key(m, s) << ": " << status.error_message();
    }
  });
  ASSERT_EQ(put_failures.load(), 0);
  const absl::Duration put_took = absl::Now() - put_started;

  // A few batches per model, each with every signal of the model, over one stream per model.
  ParallelFor(kRestartModels, [&](int m) {
    auto context = Context(testing::TimeScaled(absl::Seconds(60)));
    auto stream = stub->Ingest(context.get());
    for (int b = 1; b <= kRestartBatches; ++b) {
      v1::IngestRequest request;
      request.set_client_id(absl::StrCat("fleet-client-", m));
      request.set_sequence(b);
      request.set_model(RestartModel(m));
      for (int s = 0; s < kRestartSignals; ++s) {
        v1::StreamBatch* batch = request.add_streams();
        batch->set_signal(RestartSignal(s));
        for (double c : RestartDelta(m, s, b)) batch->mutable_histogram()->add_counts(c);
      }
      if (!stream->Write(request)) break;
    }
    stream->WritesDone();
    v1::IngestResponse response;
    uint64_t acked = 0;
    while (stream->Read(&response)) {
      acked = std::max<uint64_t>(acked, response.acked_sequence());
      for (const v1::BatchError& e : response.errors()) {
        ADD_FAILURE() << RestartModel(m) << " sequence " << e.sequence() << ": " << e.message();
      }
    }
    const grpc::Status status = stream->Finish();
    EXPECT_TRUE(status.ok()) << status.error_message();
    EXPECT_EQ(acked, static_cast<uint64_t>(kRestartBatches)) << RestartModel(m);
  });
  ASSERT_FALSE(HasFailure());

  // Let the evaluator move (and persist) the alert states of every stream, then take the snapshot.
  ASSERT_TRUE(server->WaitForEvaluations().ok());
  std::vector<v1::GetDriftResponse> before(kStreams);
  std::atomic<int> drift_failures{0};
  auto snapshot = [&](KlDrift::Stub* from, std::vector<v1::GetDriftResponse>* out) {
    ParallelFor(kStreams, [&](int i) {
      absl::StatusOr<v1::GetDriftResponse> drift = GetDrift(
          from, Stream(RestartModel(i / kRestartSignals), RestartSignal(i % kRestartSignals)));
      if (!drift.ok()) {
        if (drift_failures++ < 5) ADD_FAILURE() << drift.status();
        return;
      }
      (*out)[i] = *std::move(drift);
    });
  };
  snapshot(stub.get(), &before);
  ASSERT_EQ(drift_failures.load(), 0);
  int firing = 0, pending = 0;
  for (const v1::GetDriftResponse& r : before) {
    ASSERT_EQ(r.reports_size(), 3);
    for (const v1::DriftReport& report : r.reports()) {
      firing += report.alert_state() == v1::ALERT_STATE_FIRING;
      pending += report.alert_state() == v1::ALERT_STATE_PENDING;
    }
  }
  // Both kinds of policy alerted somewhere, so the comparison covers persisted alert states.
  EXPECT_GT(firing, 0);
  EXPECT_GT(pending, 0);

  const int status = server->Stop();
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status;
  server.reset();

  const absl::Time restart_started = absl::Now();
  started = StartOn(data.path(), "200ms");
  ASSERT_TRUE(started.ok()) << started.status();
  const absl::Duration restart_took = absl::Now() - restart_started;
  server = *std::move(started);
  stub = KlDrift::NewStub(server->Channel());
  std::string restored_line;
  for (const absl::string_view line : absl::StrSplit(ServerLog(*server), '\n')) {
    if (absl::StrContains(line, "restored")) restored_line = std::string(line);
  }
  EXPECT_THAT(restored_line, HasSubstr(absl::StrCat("restored ", kStreams, " streams")));

  std::vector<v1::GetDriftResponse> after(kStreams);
  snapshot(stub.get(), &after);
  ASSERT_EQ(drift_failures.load(), 0);
  Comparison comparison;
  // Stops after a few streams that differ, rather than report thousands.
  int differing_streams = 0;
  for (int i = 0; i < kStreams && differing_streams < 5; ++i) {
    comparison.differences.clear();
    CompareReports(before[i], after[i], &comparison);
    if (!comparison.differences.empty()) {
      ++differing_streams;
      ADD_FAILURE() << Key(i / kRestartSignals, i % kRestartSignals) << " differs after the "
                    << "restart: " << absl::StrJoin(comparison.differences, "; ");
    }
  }
  std::printf(
      "[ restart  ] %d streams (%d firing, %d pending windows); references put in %s; "
      "restart served after %s (%s); %llu values compared, %llu not bit-identical "
      "(max relative difference %g); %llu state_since differ below 1 us\n",
      kStreams, firing, pending, absl::FormatDuration(put_took).c_str(),
      absl::FormatDuration(restart_took).c_str(), restored_line.c_str(),
      static_cast<unsigned long long>(comparison.values),
      static_cast<unsigned long long>(comparison.inexact), comparison.max_relative,
      static_cast<unsigned long long>(comparison.since_nanos_differ));
  const int stopped = server->Stop();
  EXPECT_TRUE(WIFEXITED(stopped) && WEXITSTATUS(stopped) == 0) << "status " << stopped;
}

// ---- Refused folders ---------------------------------------------------------------------------

// Runs `kldriftd --check-data-dir dir`; returns its exit code and output.
std::pair<int, std::string> CheckDataDir(const std::string& dir) {
  const std::string command = absl::StrCat("'", Kldriftd(), "' --check-data-dir '", dir, "' 2>&1");
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return {-1, "popen failed"};
  std::string output;
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof(buffer), pipe)) > 0) output.append(buffer, n);
  const int status = pclose(pipe);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, output};
}

TEST(RestartTest, ForeignAndCorruptedFoldersAreRefusedWithTheDocumentedMessage) {
  // (i) A folder holding someone else's file.
  TempDir foreign("kldrift-durability");
  ASSERT_FALSE(foreign.path().empty());
  std::ofstream(foreign.path() + "/notes.txt") << "not a database\n";
  auto refused = StartOn(foreign.path(), "100ms");
  ASSERT_FALSE(refused.ok()) << "kldriftd served a foreign folder";
  EXPECT_THAT(refused.status().message(), HasSubstr("not a kldrift data folder"));
  EXPECT_THAT(refused.status().message(), HasSubstr(foreign.path()));
  EXPECT_TRUE(fs::exists(foreign.path() + "/notes.txt")) << "the folder was reset";
  EXPECT_EQ(CheckDataDir(foreign.path()).first, 1);

  // (ii) A store whose MANIFEST was garbled in the middle after a clean stop.
  TempDir store("kldrift-durability");
  ASSERT_FALSE(store.path().empty());
  {
    auto started = StartOn(store.path(), "100ms");
    ASSERT_TRUE(started.ok()) << started.status();
    std::unique_ptr<KlDrift::Stub> stub = KlDrift::NewStub((*started)->Channel());
    v1::PutReferenceRequest request;
    *request.mutable_stream() = Stream("m", "s");
    request.mutable_pre_binned()->set_bins(2);
    request.mutable_counts()->add_counts(1);
    request.mutable_counts()->add_counts(2);
    v1::PutReferenceResponse response;
    const grpc::Status put = stub->PutReference(Context().get(), request, &response);
    ASSERT_TRUE(put.ok()) << put.error_message();
    const int status = (*started)->Stop();
    ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status;
  }
  const auto [healthy_code, healthy_report] = CheckDataDir(store.path());
  EXPECT_EQ(healthy_code, 0) << healthy_report;
  std::vector<fs::path> manifests;
  for (const fs::directory_entry& entry : fs::directory_iterator(store.path())) {
    if (entry.path().filename().string().rfind("MANIFEST-", 0) == 0) {
      manifests.push_back(entry.path());
    }
  }
  ASSERT_FALSE(manifests.empty()) << "no MANIFEST-* in " << store.path();
  for (const fs::path& manifest : manifests) {
    std::fstream file(manifest, std::ios::in | std::ios::out | std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
    ASSERT_GT(bytes.size(), 64u) << manifest;
    for (size_t i = bytes.size() / 2 - 8; i < bytes.size() / 2 + 8; ++i) bytes[i] ^= 0x5a;
    file.seekp(0);
    file.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    ASSERT_TRUE(file.good()) << manifest;
  }
  refused = StartOn(store.path(), "100ms");
  ASSERT_FALSE(refused.ok()) << "kldriftd served a store with a garbled MANIFEST";
  EXPECT_THAT(refused.status().message(), HasSubstr(store.path()));
  EXPECT_THAT(refused.status().message(), HasSubstr("is corrupted"));
  EXPECT_THAT(refused.status().message(), HasSubstr("will not reset it"));
  std::printf("[ refused  ] garbled MANIFEST: %s\n",
              std::string(refused.status().message()).c_str());
  const auto [code, report] = CheckDataDir(store.path());
  EXPECT_EQ(code, 1) << report;
}

}  // namespace
}  // namespace kldrift
