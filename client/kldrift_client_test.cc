// Recorder and KlDriftClient against an in-process fake kldriftd (no real server needed): the fake
// keeps references, applies batches with the server's de-duplication and version rules, and can
// be told to break streams or reject batches.
#include "client/kldrift_client.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/core/mutex.h"

namespace kldrift {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr absl::Duration kFlushTimeout = absl::Seconds(10);

class FakeKlDrift final : public v1::KlDrift::Service {
 public:
  // Sets (or replaces) the reference of `signal`; the version increases.
  void SetNumericReference(const std::string& signal, std::vector<double> edges) {
    MutexLock lock(&mutex_);
    v1::Reference& reference = references_[signal];
    reference.set_version(reference.version() + 1);
    reference.set_kind(v1::REFERENCE_KIND_NUMERIC);
    reference.mutable_numeric()->mutable_edges()->Assign(edges.begin(), edges.end());
    reference.mutable_stream()->set_signal(signal);
  }
  void SetCategoricalReference(const std::string& signal, std::vector<std::string> categories) {
    MutexLock lock(&mutex_);
    v1::Reference& reference = references_[signal];
    reference.set_version(reference.version() + 1);
    reference.set_kind(v1::REFERENCE_KIND_CATEGORICAL);
    reference.mutable_categorical()->mutable_categories()->Assign(categories.begin(),
                                                                  categories.end());
    reference.mutable_stream()->set_signal(signal);
  }

  // The next `count` Ingest streams fail (UNAVAILABLE) after reading one batch, before applying it.
  void BreakNextStreams(int count) {
    MutexLock lock(&mutex_);
    streams_to_break_ = count;
  }
  // The next `count` Ingest streams apply one batch, then fail (UNAVAILABLE) without acknowledging.
  void LoseAckOnNextStreams(int count) {
    MutexLock lock(&mutex_);
    streams_to_lose_ack_ = count;
  }
  // Every Ingest stream fails at once (open ones on their next batch).
  void FailAllStreams(bool fail) {
    MutexLock lock(&mutex_);
    fail_all_streams_ = fail;
  }

  // Applied counts per signal (histograms summed; probability vectors summed entry-wise).
  std::vector<double> Applied(const std::string& signal) {
    MutexLock lock(&mutex_);
    return applied_[signal];
  }
  std::vector<v1::IngestRequest> Received() {
    MutexLock lock(&mutex_);
    return received_;
  }
  int ingest_streams() {
    MutexLock lock(&mutex_);
    return ingest_streams_;
  }

  grpc::Status GetReference(grpc::ServerContext*, const v1::GetReferenceRequest* request,
                            v1::Reference* response) override {
    MutexLock lock(&mutex_);
    auto it = references_.find(request->stream().signal());
    if (it == references_.end()) {
      return grpc::Status(grpc::StatusCode::NOT_FOUND,
                          absl::StrCat("no reference for stream ", request->stream().signal()));
    }
    *response = it->second;
    return grpc::Status::OK;
  }

  grpc::Status Ingest(
      grpc::ServerContext*,
      grpc::ServerReaderWriter<v1::IngestResponse, v1::IngestRequest>* stream) override {
    bool break_this_stream = false;
    bool lose_ack = false;
    {
      MutexLock lock(&mutex_);
      ++ingest_streams_;
      if (fail_all_streams_) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "down");
      if (streams_to_break_ > 0) {
        --streams_to_break_;
        break_this_stream = true;
      } else if (streams_to_lose_ack_ > 0) {
        --streams_to_lose_ack_;
        lose_ack = true;
      }
    }
    v1::IngestRequest request;
    while (stream->Read(&request)) {
      if (break_this_stream) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "broken");
      v1::IngestResponse response;
      {
        MutexLock lock(&mutex_);
        if (fail_all_streams_) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "down");
        received_.push_back(request);
        uint64_t& last = last_sequence_[request.client_id()];
        if (request.sequence() > last) {
          last = request.sequence();
          if (absl::Status status = ApplyLocked(request); !status.ok()) {
            v1::BatchError* error = response.add_errors();
            error->set_sequence(request.sequence());
            error->set_code(static_cast<int32_t>(status.code()));
            error->set_message(std::string(status.message()));
          }
        }
        response.set_acked_sequence(last);
      }
      if (lose_ack) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "ack lost");
      if (!stream->Write(response)) break;
    }
    return grpc::Status::OK;
  }

 private:
  // All streams of the batch or none, as the real engine.
  absl::Status ApplyLocked(const v1::IngestRequest& request) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
    for (const v1::StreamBatch& batch : request.streams()) {
      auto it = references_.find(batch.signal());
      if (it == references_.end()) {
        return absl::FailedPreconditionError(absl::StrCat("no reference for ", batch.signal()));
      }
      if (batch.reference_version() != it->second.version()) {
        return absl::FailedPreconditionError(absl::StrCat(
            "stream ", batch.signal(), " was binned against version ", batch.reference_version(),
            " but the current version is ", it->second.version()));
      }
    }
    for (const v1::StreamBatch& batch : request.streams()) {
      std::vector<double>& applied = applied_[batch.signal()];
      const auto& numbers = batch.has_histogram() ? batch.histogram().counts()
                                                  : batch.probabilities().probabilities();
      const int width = batch.has_histogram()
                            ? numbers.size()
                            : references_[batch.signal()].categorical().categories_size();
      if (applied.empty()) applied.resize(width, 0.0);
      for (int i = 0; i < numbers.size(); ++i) applied[i % width] += numbers[i];
    }
    return absl::OkStatus();
  }

  Mutex mutex_;
  std::map<std::string, v1::Reference> references_ ABSL_GUARDED_BY(mutex_);
  std::map<std::string, uint64_t> last_sequence_ ABSL_GUARDED_BY(mutex_);
  std::map<std::string, std::vector<double>> applied_ ABSL_GUARDED_BY(mutex_);
  std::vector<v1::IngestRequest> received_ ABSL_GUARDED_BY(mutex_);
  int streams_to_break_ ABSL_GUARDED_BY(mutex_) = 0;
  int streams_to_lose_ack_ ABSL_GUARDED_BY(mutex_) = 0;
  bool fail_all_streams_ ABSL_GUARDED_BY(mutex_) = false;
  int ingest_streams_ ABSL_GUARDED_BY(mutex_) = 0;
};

class RecorderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    builder.RegisterService(&fake_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    ASSERT_NE(port_, 0);
    ChannelOptions channel;
    channel.target = absl::StrCat("127.0.0.1:", port_);
    channel_ = CreateChannel(channel);
  }
  void TearDown() override { server_->Shutdown(absl::ToChronoTime(absl::Now())); }

  RecorderOptions Options() {
    RecorderOptions options;
    options.model = "fraud";
    options.client_id = "test-client";
    // Long enough that only Flush sends, unless a test wants the interval.
    options.flush_interval = absl::Seconds(60);
    options.initial_backoff = absl::Milliseconds(10);
    options.max_backoff = absl::Milliseconds(50);
    options.reference_retry_interval = absl::Milliseconds(50);
    return options;
  }

  std::unique_ptr<Recorder> MakeRecorder(RecorderOptions options) {
    absl::StatusOr<std::unique_ptr<Recorder>> recorder = Recorder::Create(channel_, options);
    EXPECT_TRUE(recorder.ok()) << recorder.status();
    return recorder.ok() ? *std::move(recorder) : nullptr;
  }

  // Every observation is acknowledged, dropped, waiting or in a pending batch.
  static void ExpectAccounted(const RecorderStats& stats) {
    EXPECT_GE(stats.observations_recorded,
              stats.observations_acked + stats.observations_dropped + stats.observations_waiting);
  }

  FakeKlDrift fake_;
  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
};

TEST_F(RecorderTest, CreateValidatesOptions) {
  RecorderOptions options = Options();
  options.client_id = "";
  EXPECT_EQ(Recorder::Create(channel_, options).status().code(),
            absl::StatusCode::kInvalidArgument);
  options = Options();
  options.model = "bad name";
  EXPECT_EQ(Recorder::Create(channel_, options).status().code(),
            absl::StatusCode::kInvalidArgument);
  options = Options();
  options.max_pending_batches = 0;
  EXPECT_EQ(Recorder::Create(channel_, options).status().code(),
            absl::StatusCode::kInvalidArgument);
  options = Options();
  options.flush_interval = absl::ZeroDuration();
  EXPECT_EQ(Recorder::Create(channel_, options).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(RecorderTest, BinsLocallyAndSendsOneBatchForAllStreams) {
  fake_.SetNumericReference("score", {0, 1, 2});
  fake_.SetCategoricalReference("decision", {"allow", "block"});
  std::unique_ptr<Recorder> recorder = MakeRecorder(Options());
  for (double v : {-1.0, 0.5, 0.7, 1.5, 9.0}) recorder->Record("score", v);
  recorder->RecordLabel("decision", "allow");
  recorder->RecordLabel("decision", "review");
  ASSERT_TRUE(recorder->Flush(kFlushTimeout).ok());

  EXPECT_THAT(fake_.Applied("score"), ElementsAre(1, 2, 1, 1, 0));
  EXPECT_THAT(fake_.Applied("decision"), ElementsAre(1, 0, 1));
  std::vector<v1::IngestRequest> received = fake_.Received();
  ASSERT_EQ(received.size(), 1u);
  EXPECT_EQ(received[0].streams_size(), 2);
  EXPECT_EQ(received[0].client_id(), "test-client");
  EXPECT_EQ(received[0].model(), "fraud");
  EXPECT_TRUE(received[0].has_event_time());
  for (const v1::StreamBatch& batch : received[0].streams()) {
    EXPECT_EQ(batch.reference_version(), 1u);
  }

  RecorderStats stats = recorder->Stats();
  EXPECT_EQ(stats.observations_recorded, 7u);
  EXPECT_EQ(stats.observations_acked, 7u);
  EXPECT_EQ(stats.observations_dropped, 0u);
  EXPECT_EQ(stats.batches_sent, 1u);
  EXPECT_EQ(stats.batches_acked, 1u);
  EXPECT_EQ(stats.reference_fetches, 2u);
  EXPECT_EQ(stats.pending_batches, 0u);
  EXPECT_TRUE(recorder->Close(kFlushTimeout).ok());
}

TEST_F(RecorderTest, SequenceNumbersIncreaseOverOneLongLivedStream) {
  fake_.SetNumericReference("score", {0, 1});
  RecorderOptions options = Options();
  options.first_sequence = 100;
  std::unique_ptr<Recorder> recorder = MakeRecorder(options);
  for (int i = 0; i < 3; ++i) {
    recorder->Record("score", 0.5);
    ASSERT_TRUE(recorder->Flush(kFlushTimeout).ok());
  }
  std::vector<v1::IngestRequest> received = fake_.Received();
  ASSERT_EQ(received.size(), 3u);
  EXPECT_EQ(received[0].sequence(), 100u);
  EXPECT_EQ(received[1].sequence(), 101u);
  EXPECT_EQ(received[2].sequence(), 102u);
  EXPECT_EQ(fake_.ingest_streams(), 1);
  EXPECT_EQ(recorder->Stats().reconnects, 0u);
}

TEST_F(RecorderTest, FlushIntervalSendsWithoutFlush) {
  fake_.SetNumericReference("score", {0, 1});
  RecorderOptions options = Options();
  options.flush_interval = absl::Milliseconds(20);
  std::unique_ptr<Recorder> recorder = MakeRecorder(options);
  recorder->Record("score", 0.5);
  const absl::Time deadline = absl::Now() + kFlushTimeout;
  while (recorder->Stats().observations_acked < 1 && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  EXPECT_EQ(recorder->Stats().observations_acked, 1u);
}

TEST_F(RecorderTest, ReconnectsAndResendsUnacknowledgedBatchesInOrder) {
  fake_.SetNumericReference("score", {0, 1});
  std::unique_ptr<Recorder> recorder = MakeRecorder(Options());
  fake_.BreakNextStreams(2);
  recorder->Record("score", 0.5);
  recorder->Record("score", 0.5);
  ASSERT_TRUE(recorder->Flush(kFlushTimeout).ok());
  EXPECT_THAT(fake_.Applied("score"), ElementsAre(0, 2, 0, 0));
  RecorderStats stats = recorder->Stats();
  EXPECT_EQ(stats.reconnects, 2u);
  EXPECT_EQ(stats.batches_sent, 1u);
  EXPECT_EQ(stats.batches_resent, 2u);
  EXPECT_EQ(stats.observations_acked, 2u);
  EXPECT_EQ(stats.observations_dropped, 0u);
}

TEST_F(RecorderTest, BatchAppliedButNotAcknowledgedIsNotAppliedTwice) {
  fake_.SetNumericReference("score", {0, 1});
  std::unique_ptr<Recorder> recorder = MakeRecorder(Options());
  // The first stream applies the batch and fails before acknowledging it; the resend on the next
  // stream is recognised as a duplicate.
  fake_.LoseAckOnNextStreams(1);
  recorder->Record("score", 0.5);
  ASSERT_TRUE(recorder->Flush(kFlushTimeout).ok()) << recorder->Stats().last_error;
  EXPECT_THAT(fake_.Applied("score"), ElementsAre(0, 1, 0, 0));
  EXPECT_EQ(fake_.Received().size(), 2u);
  RecorderStats stats = recorder->Stats();
  EXPECT_EQ(stats.reconnects, 1u);
  EXPECT_EQ(stats.batches_resent, 1u);
  EXPECT_EQ(stats.observations_acked, 1u);
}

TEST_F(RecorderTest, ChangedVersionWithSameBinsIsRefetchedAndResent) {
  fake_.SetNumericReference("score", {0, 1});
  std::unique_ptr<Recorder> recorder = MakeRecorder(Options());
  recorder->Record("score", 0.5);
  ASSERT_TRUE(recorder->Flush(kFlushTimeout).ok());
  fake_.SetNumericReference("score", {0, 1});  // Version 2, same bins (re-baselined).
  recorder->Record("score", 0.5);
  absl::Status status = recorder->Flush(kFlushTimeout);
  EXPECT_TRUE(status.ok()) << status;
  EXPECT_THAT(fake_.Applied("score"), ElementsAre(0, 2, 0, 0));
  RecorderStats stats = recorder->Stats();
  EXPECT_EQ(stats.batch_errors, 1u);
  EXPECT_EQ(stats.observations_acked, 2u);
  EXPECT_EQ(stats.observations_dropped, 0u);
  EXPECT_EQ(fake_.Received().back().streams(0).reference_version(), 2u);
}

TEST_F(RecorderTest, ChangedBinsDropTheRejectedDeltaVisibly) {
  fake_.SetNumericReference("score", {0, 1});
  std::unique_ptr<Recorder> recorder = MakeRecorder(Options());
  recorder->Record("score", 0.5);
  ASSERT_TRUE(recorder->Flush(kFlushTimeout).ok());
  fake_.SetNumericReference("score", {0, 2});
  recorder->Record("score", 0.5);
  absl::Status status = recorder->Flush(kFlushTimeout);
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss) << status;
  EXPECT_THAT(status.message(), HasSubstr("bins changed"));
  RecorderStats stats = recorder->Stats();
  EXPECT_EQ(stats.observations_dropped, 1u);
  // New observations are binned against the new bins.
  recorder->Record("score", 1.5);
  ASSERT_TRUE(recorder->Flush(kFlushTimeout).ok());
  EXPECT_EQ(fake_.Received().back().streams(0).reference_version(), 2u);
  ExpectAccounted(recorder->Stats());
}

TEST_F(RecorderTest, ObservationsWaitForAMissingReference) {
  std::unique_ptr<Recorder> recorder = MakeRecorder(Options());
  recorder->Record("score", 0.5);
  absl::Status status = recorder->Flush(kFlushTimeout);
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound) << status;
  EXPECT_THAT(status.message(), HasSubstr("1 observations wait for its reference"));
  EXPECT_EQ(recorder->Stats().observations_waiting, 1u);
  // Once the reference exists, the buffered observation is binned and sent.
  fake_.SetNumericReference("score", {0, 1});
  status = recorder->Flush(kFlushTimeout);
  EXPECT_TRUE(status.ok()) << status;
  EXPECT_THAT(fake_.Applied("score"), ElementsAre(0, 1, 0, 0));
  EXPECT_EQ(recorder->Stats().observations_waiting, 0u);
}

TEST_F(RecorderTest, BoundedResendQueueCountsWhatItDrops) {
  fake_.SetNumericReference("score", {0, 1});
  RecorderOptions options = Options();
  options.max_pending_batches = 2;
  std::unique_ptr<Recorder> recorder = MakeRecorder(options);
  fake_.FailAllStreams(true);
  for (int i = 0; i < 5; ++i) {
    recorder->Record("score", 0.5);
    EXPECT_EQ(recorder->Flush(absl::Milliseconds(50)).code(), absl::StatusCode::kDeadlineExceeded);
  }
  RecorderStats stats = recorder->Stats();
  EXPECT_EQ(stats.pending_batches, 2u);
  EXPECT_EQ(stats.batches_dropped, 3u);
  EXPECT_EQ(stats.observations_dropped, 3u);
  EXPECT_THAT(stats.last_error, ::testing::Not(::testing::IsEmpty()));
  // The server comes back: the two queued batches are delivered.
  fake_.FailAllStreams(false);
  absl::Status status = recorder->Flush(kFlushTimeout);
  EXPECT_EQ(status.code(), absl::StatusCode::kOk) << status;
  EXPECT_THAT(fake_.Applied("score"), ElementsAre(0, 2, 0, 0));
  stats = recorder->Stats();
  EXPECT_EQ(stats.observations_acked, 2u);
  EXPECT_EQ(stats.observations_recorded, stats.observations_acked + stats.observations_dropped);
  EXPECT_GE(stats.reconnects, 1u);
}

TEST_F(RecorderTest, ProbabilityVectorsAreSentAsVectors) {
  fake_.SetCategoricalReference("class", {"cat", "dog"});
  std::unique_ptr<Recorder> recorder = MakeRecorder(Options());
  recorder->RecordProbabilities("class", std::vector<double>{0.25, 0.75});
  recorder->RecordProbabilities("class", std::vector<double>{0.5, 0.5});
  recorder->RecordProbabilities("class", std::vector<double>{0.5, 0.7});  // Invalid: dropped.
  absl::Status status = recorder->Flush(kFlushTimeout);
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(fake_.Applied("class"), ElementsAre(0.75, 1.25));
  EXPECT_TRUE(fake_.Received()[0].streams(0).has_probabilities());
  RecorderStats stats = recorder->Stats();
  EXPECT_EQ(stats.observations_acked, 2u);
  EXPECT_EQ(stats.observations_dropped, 1u);
}

TEST_F(RecorderTest, InvalidSignalsAndTooManyStreamsAreDropped) {
  fake_.SetNumericReference("a", {0, 1});
  RecorderOptions options = Options();
  options.max_streams = 1;
  std::unique_ptr<Recorder> recorder = MakeRecorder(options);
  recorder->Record("a", 0.5);
  recorder->Record("b", 0.5);
  recorder->Record("not valid!", 0.5);
  RecorderStats stats = recorder->Stats();
  EXPECT_EQ(stats.observations_recorded, 3u);
  EXPECT_EQ(stats.observations_dropped, 2u);
}

TEST_F(RecorderTest, CloseSendsWhatIsLeftAndLaterRecordsAreDropped) {
  fake_.SetNumericReference("score", {0, 1});
  std::unique_ptr<Recorder> recorder = MakeRecorder(Options());
  recorder->Record("score", 0.5);
  EXPECT_TRUE(recorder->Close(kFlushTimeout).ok());
  EXPECT_THAT(fake_.Applied("score"), ElementsAre(0, 1, 0, 0));
  recorder->Record("score", 0.5);
  RecorderStats stats = recorder->Stats();
  EXPECT_EQ(stats.observations_acked, 1u);
  EXPECT_EQ(stats.observations_dropped, 1u);
  EXPECT_EQ(recorder->Flush(kFlushTimeout).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(recorder->Close(kFlushTimeout).ok());  // Again: same status.
}

TEST_F(RecorderTest, CloseIsBoundedWhenTheServerIsDown) {
  fake_.SetNumericReference("score", {0, 1});
  std::unique_ptr<Recorder> recorder = MakeRecorder(Options());
  recorder->Record("score", 0.5);
  ASSERT_TRUE(recorder->Flush(kFlushTimeout).ok());
  fake_.FailAllStreams(true);
  recorder->Record("score", 0.5);
  const absl::Time start = absl::Now();
  absl::Status status = recorder->Close(absl::Milliseconds(200));
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss) << status;
  RecorderStats stats = recorder->Stats();
  EXPECT_EQ(stats.observations_acked, 1u);
  EXPECT_EQ(stats.observations_dropped, 1u);
}

TEST_F(RecorderTest, ConcurrentRecordersOfManyThreads) {
  fake_.SetNumericReference("score", {0, 1});
  RecorderOptions options = Options();
  options.flush_interval = absl::Milliseconds(5);
  std::unique_ptr<Recorder> recorder = MakeRecorder(options);
  constexpr int kThreads = 4;
  constexpr int kPerThread = 5000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < kPerThread; ++i) recorder->Record("score", 0.5);
    });
  }
  for (std::thread& thread : threads) thread.join();
  ASSERT_TRUE(recorder->Flush(kFlushTimeout).ok());
  EXPECT_THAT(fake_.Applied("score"), ElementsAre(0, kThreads * kPerThread, 0, 0));
  EXPECT_EQ(recorder->Stats().observations_acked, static_cast<uint64_t>(kThreads * kPerThread));
}

TEST_F(RecorderTest, KlDriftClientIngestOnceReportsBatchErrors) {
  fake_.SetNumericReference("score", {0, 1});
  KlDriftClient client(channel_, absl::Seconds(10));
  v1::IngestRequest request;
  request.set_client_id("once");
  request.set_sequence(1);
  request.set_model("fraud");
  v1::StreamBatch* batch = request.add_streams();
  batch->set_signal("score");
  batch->set_reference_version(1);
  for (double count : {0.0, 3.0, 0.0, 0.0}) batch->mutable_histogram()->add_counts(count);
  EXPECT_TRUE(client.IngestOnce(request).ok());
  request.set_sequence(2);
  batch->set_reference_version(7);
  absl::Status status = client.IngestOnce(request);
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(status.message(), HasSubstr("version 7"));
  EXPECT_EQ(client.GetReference(v1::StreamId()).status().code(), absl::StatusCode::kNotFound);
}

// --- Record(signal, span): the batched numeric path ---

// The bucket of `value` in the full layout [underflow, bins..., overflow, NaN], found the slow way.
size_t OracleBucket(const std::vector<double>& edges, double value) {
  if (std::isnan(value)) return edges.size() + 1;
  return static_cast<size_t>(std::upper_bound(edges.begin(), edges.end(), value) - edges.begin());
}

TEST_F(RecorderTest, BatchedRecordCountsEqualScalarRecordAndAnOracle) {
  const std::vector<double> edges = {-2, -1, -0.5, 0, 0.25, 0.5, 1, 3};
  fake_.SetNumericReference("batched", edges);
  fake_.SetNumericReference("scalar", edges);
  std::unique_ptr<Recorder> recorder = MakeRecorder(Options());
  std::mt19937_64 random(7);
  std::normal_distribution<double> normal(0, 1.5);
  std::vector<double> values;
  for (int i = 0; i < 5000; ++i) values.push_back(normal(random));
  // Edges themselves, the tails and NaN, spread through the input.
  for (double special : {-2.0, 0.0, 3.0, std::numeric_limits<double>::quiet_NaN(),
                         std::numeric_limits<double>::infinity(),
                         -std::numeric_limits<double>::infinity(), 1e300, -1e300}) {
    values.insert(values.begin() + static_cast<long>(random() % values.size()), special);
  }
  std::vector<double> oracle(edges.size() + 2, 0.0);
  for (double v : values) oracle[OracleBucket(edges, v)] += 1;
  // Spans of uneven lengths, across the accumulator's binning chunks.
  size_t start = 0;
  for (size_t length : {1, 7, 255, 256, 257, 1000}) {
    recorder->Record("batched", absl::MakeConstSpan(values).subspan(start, length));
    start += length;
  }
  recorder->Record("batched", absl::MakeConstSpan(values).subspan(start));
  for (double v : values) recorder->Record("scalar", v);
  ASSERT_TRUE(recorder->Flush(kFlushTimeout).ok());

  EXPECT_EQ(fake_.Applied("batched"), oracle);
  EXPECT_EQ(fake_.Applied("scalar"), oracle);
  RecorderStats stats = recorder->Stats();
  EXPECT_EQ(stats.observations_recorded, 2 * values.size());
  EXPECT_EQ(stats.observations_acked, 2 * values.size());
  EXPECT_EQ(stats.observations_dropped, 0u);
}

TEST_F(RecorderTest, BatchedRecordCountsNanAndInfinitiesInTheirBuckets) {
  fake_.SetNumericReference("score", {0, 1});
  std::unique_ptr<Recorder> recorder = MakeRecorder(Options());
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  const std::vector<double> values = {nan, inf, -inf, 0.5, nan, 1.0, -0.0};
  recorder->Record("score", absl::MakeConstSpan(values));
  ASSERT_TRUE(recorder->Flush(kFlushTimeout).ok());
  // [underflow, [0, 1), overflow, NaN]: -inf; 0.5 and -0.0; +inf and 1.0; two NaN.
  EXPECT_THAT(fake_.Applied("score"), ElementsAre(1, 2, 2, 2));
}

TEST_F(RecorderTest, BatchedRecordOfAnEmptySpanDoesNothing) {
  fake_.SetNumericReference("score", {0, 1});
  std::unique_ptr<Recorder> recorder = MakeRecorder(Options());
  recorder->Record("score", absl::Span<const double>());
  recorder->Record("not valid!", absl::Span<const double>());
  EXPECT_TRUE(recorder->Flush(kFlushTimeout).ok());
  RecorderStats stats = recorder->Stats();
  EXPECT_EQ(stats.observations_recorded, 0u);
  EXPECT_EQ(stats.observations_dropped, 0u);
  EXPECT_EQ(stats.reference_fetches, 0u);  // No stream was created.
  EXPECT_EQ(stats.batches_sent, 0u);
  EXPECT_TRUE(fake_.Received().empty());
}

TEST_F(RecorderTest, BatchedRecordOfUnknownSignalsBehavesAsScalarRecord) {
  fake_.SetNumericReference("a", {0, 1});
  RecorderOptions options = Options();
  options.max_streams = 2;
  std::unique_ptr<Recorder> batched = MakeRecorder(options);
  options.client_id = "scalar-client";
  std::unique_ptr<Recorder> scalar = MakeRecorder(options);
  const std::vector<double> values = {0.5, -1, 2};
  // "a" has a reference; "waiting" has none yet; "not valid!" is no name; "c" is one stream too
  // many.
  for (const char* signal : {"a", "waiting", "not valid!", "c"}) {
    batched->Record(signal, absl::MakeConstSpan(values));
    for (double v : values) scalar->Record(signal, v);
  }
  for (Recorder* recorder : {batched.get(), scalar.get()}) {
    EXPECT_EQ(recorder->Stats().observations_dropped, 6u);  // Dropped as they were recorded.
    EXPECT_EQ(recorder->Flush(kFlushTimeout).code(), absl::StatusCode::kNotFound);
    RecorderStats stats = recorder->Stats();
    EXPECT_EQ(stats.observations_recorded, 12u);
    EXPECT_EQ(stats.observations_acked, 3u);
    EXPECT_EQ(stats.observations_waiting, 3u);
    EXPECT_EQ(stats.observations_dropped, 6u);
  }
  EXPECT_THAT(fake_.Applied("a"), ElementsAre(2, 2, 2, 0));
}

}  // namespace
}  // namespace kldrift
