// The Recorder against a real kldriftd process (loopback, port picked by the kernel): what it
// records is what the server's windows count, through re-baselined and re-binned references.
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/kldrift_client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/e2e/server_process.h"

namespace kldrift {
namespace {

using ::testing::HasSubstr;

// Scaled for runs against a ThreadSanitizer-built server (see testing::TimeScaled).
const absl::Duration kTimeout = testing::TimeScaled(absl::Seconds(20));

class RecorderE2eTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<testing::ServerProcess>> server =
        testing::ServerProcess::Start(testing::BinaryPath("KLDRIFTD", "server/kldriftd"),
                                      {"--storage=memory", "--eval-interval", "200ms"});
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    ChannelOptions options;
    options.target = server_->address();
    channel_ = CreateChannel(options);
    client_ = std::make_unique<KlDriftClient>(channel_, kTimeout);
  }

  void TearDown() override {
    // Drop the connection first: kldriftd waits out its shutdown grace for open connections.
    client_.reset();
    channel_.reset();
    if (server_ != nullptr) {
      EXPECT_EQ(server_->Stop(), 0);
    }
  }

  uint64_t PutNumeric(const std::string& signal, const std::vector<double>& edges) {
    v1::PutReferenceRequest request;
    request.mutable_stream()->set_model("e2e");
    request.mutable_stream()->set_signal(signal);
    request.mutable_numeric()->mutable_edges()->Assign(edges.begin(), edges.end());
    for (size_t i = 0; i + 1 < edges.size(); ++i) request.mutable_counts()->add_counts(10);
    absl::StatusOr<v1::PutReferenceResponse> response = client_->PutReference(request);
    EXPECT_TRUE(response.ok()) << response.status();
    return response.ok() ? response->version() : 0;
  }

  // Samples in the stream's 5m window.
  double Samples(const std::string& signal) {
    v1::GetDriftRequest request;
    request.mutable_stream()->set_model("e2e");
    request.mutable_stream()->set_signal(signal);
    request.mutable_window()->set_seconds(300);
    absl::StatusOr<v1::GetDriftResponse> response = client_->GetDrift(request);
    EXPECT_TRUE(response.ok()) << response.status();
    if (!response.ok() || response->reports_size() != 1) {
      return -1;
    }
    return response->reports(0).samples();
  }

  std::unique_ptr<Recorder> MakeRecorder() {
    RecorderOptions options;
    options.model = "e2e";
    options.client_id = "recorder-e2e";
    options.flush_interval = absl::Milliseconds(100);
    absl::StatusOr<std::unique_ptr<Recorder>> recorder = Recorder::Create(channel_, options);
    EXPECT_TRUE(recorder.ok()) << recorder.status();
    return recorder.ok() ? *std::move(recorder) : nullptr;
  }

  std::unique_ptr<testing::ServerProcess> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<KlDriftClient> client_;
};

TEST_F(RecorderE2eTest, EveryRecordedObservationIsCountedOnce) {
  PutNumeric("score", {0, 1, 2});
  v1::PutReferenceRequest labels;
  labels.mutable_stream()->set_model("e2e");
  labels.mutable_stream()->set_signal("decision");
  labels.mutable_categorical()->add_categories("allow");
  labels.mutable_categorical()->add_categories("block");
  labels.mutable_counts()->add_counts(5);
  labels.mutable_counts()->add_counts(5);
  ASSERT_TRUE(client_->PutReference(labels).ok());

  std::unique_ptr<Recorder> recorder = MakeRecorder();
  constexpr int kValues = 3000;
  for (int i = 0; i < kValues; ++i) {
    recorder->Record("score", (i % 7) * 0.4 - 0.5);  // Some in every bucket but NaN.
    if (i % 3 == 0) recorder->RecordLabel("decision", i % 2 == 0 ? "allow" : "review");
  }
  ASSERT_TRUE(recorder->Flush(kTimeout).ok()) << recorder->Stats().last_error;
  EXPECT_EQ(Samples("score"), kValues);
  EXPECT_EQ(Samples("decision"), kValues / 3);
  RecorderStats stats = recorder->Stats();
  EXPECT_EQ(stats.observations_acked, kValues + kValues / 3);
  EXPECT_EQ(stats.observations_dropped, 0u);
  EXPECT_EQ(stats.batch_errors, 0u);
  EXPECT_TRUE(recorder->Close(kTimeout).ok());
}

TEST_F(RecorderE2eTest, ABacklogIsSentMarkedAndAcknowledgedInFewResponses) {
  constexpr int kSignals = 10;
  for (int i = 0; i < kSignals; ++i) PutNumeric(absl::StrCat("s", i), {0, 1, 2});
  RecorderOptions options;
  options.model = "e2e";
  options.client_id = "recorder-backlog";
  options.flush_interval = absl::Hours(1);  // Only Flush cuts batches.
  options.max_batch_numbers = 1;            // One stream per batch: a flush cuts ten.
  absl::StatusOr<std::unique_ptr<Recorder>> recorder = Recorder::Create(channel_, options);
  ASSERT_TRUE(recorder.ok()) << recorder.status();
  for (int i = 0; i < kSignals; ++i) (*recorder)->Record(absl::StrCat("s", i), 0.5);
  ASSERT_TRUE((*recorder)->Flush(kTimeout).ok()) << (*recorder)->Stats().last_error;
  const RecorderStats stats = (*recorder)->Stats();
  EXPECT_EQ(stats.batches_sent, static_cast<uint64_t>(kSignals));
  EXPECT_EQ(stats.batches_acked, static_cast<uint64_t>(kSignals));
  for (int i = 0; i < kSignals; ++i) EXPECT_EQ(Samples(absl::StrCat("s", i)), 1);
  // Written back to back, each with another queued behind it but the last: the server answers
  // at the eighth batch and at the tenth, two responses instead of ten.
  ASSERT_GT(server_->metrics_port(), 0);
  absl::StatusOr<std::string> text = testing::HttpGet(server_->metrics_port(), "/metrics");
  ASSERT_TRUE(text.ok()) << text.status();
  EXPECT_EQ(testing::MetricValue(*text, "kldrift_ingest_acks_total"), 2);
  EXPECT_TRUE((*recorder)->Close(kTimeout).ok());
}

TEST_F(RecorderE2eTest, ProbabilityVectorsBecomeASoftHistogram) {
  v1::PutReferenceRequest request;
  request.mutable_stream()->set_model("e2e");
  request.mutable_stream()->set_signal("class");
  request.mutable_categorical()->add_categories("cat");
  request.mutable_categorical()->add_categories("dog");
  request.mutable_counts()->add_counts(5);
  request.mutable_counts()->add_counts(5);
  ASSERT_TRUE(client_->PutReference(request).ok());
  std::unique_ptr<Recorder> recorder = MakeRecorder();
  for (int i = 0; i < 10; ++i) {
    recorder->RecordProbabilities("class", std::vector<double>{0.25, 0.75});
  }
  ASSERT_TRUE(recorder->Flush(kTimeout).ok()) << recorder->Stats().last_error;
  EXPECT_DOUBLE_EQ(Samples("class"), 10);
}

TEST_F(RecorderE2eTest, ReBaselinedReferenceLosesNothing) {
  PutNumeric("score", {0, 1, 2});
  std::unique_ptr<Recorder> recorder = MakeRecorder();
  recorder->Record("score", 0.5);
  ASSERT_TRUE(recorder->Flush(kTimeout).ok());
  // Same bins, new version: the next batch is rejected, the Recorder fetches version 2 and resends.
  EXPECT_EQ(PutNumeric("score", {0, 1, 2}), 2u);
  for (int i = 0; i < 10; ++i) recorder->Record("score", 1.5);
  absl::Status status = recorder->Flush(kTimeout);
  EXPECT_TRUE(status.ok()) << status;
  // Windows are kept across a re-baseline with the same bins.
  EXPECT_EQ(Samples("score"), 11);
  RecorderStats stats = recorder->Stats();
  EXPECT_EQ(stats.observations_acked, 11u);
  EXPECT_EQ(stats.observations_dropped, 0u);
}

TEST_F(RecorderE2eTest, ReBinnedReferenceDropsVisiblyThenRecovers) {
  PutNumeric("score", {0, 1, 2});
  std::unique_ptr<Recorder> recorder = MakeRecorder();
  recorder->Record("score", 0.5);
  ASSERT_TRUE(recorder->Flush(kTimeout).ok());
  PutNumeric("score", {0, 2, 4});  // Different bins: counts binned against {0, 1, 2} cannot go.
  recorder->Record("score", 0.5);
  absl::Status status = recorder->Flush(kTimeout);
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss) << status;
  EXPECT_THAT(status.message(), HasSubstr("bins changed"));
  recorder->Record("score", 3);
  ASSERT_TRUE(recorder->Flush(kTimeout).ok()) << recorder->Stats().last_error;
  EXPECT_EQ(Samples("score"), 1);  // New bins reset the windows.
  RecorderStats stats = recorder->Stats();
  EXPECT_EQ(stats.observations_recorded, 3u);
  EXPECT_EQ(stats.observations_acked, 2u);
  EXPECT_EQ(stats.observations_dropped, 1u);
}

TEST_F(RecorderE2eTest, DeletedReferenceIsReportedNotHidden) {
  PutNumeric("score", {0, 1});
  std::unique_ptr<Recorder> recorder = MakeRecorder();
  recorder->Record("score", 0.5);
  ASSERT_TRUE(recorder->Flush(kTimeout).ok());
  v1::StreamId stream;
  stream.set_model("e2e");
  stream.set_signal("score");
  ASSERT_TRUE(client_->DeleteReference(stream).ok());
  recorder->Record("score", 0.5);
  absl::Status status = recorder->Flush(kTimeout);
  EXPECT_FALSE(status.ok());
  RecorderStats stats = recorder->Stats();
  EXPECT_EQ(stats.observations_acked, 1u);
  EXPECT_EQ(stats.observations_dropped, 1u);
  EXPECT_GE(stats.batch_errors, 1u);
}

TEST_F(RecorderE2eTest, ServerShutdownIsSurvivedByCloseWithinItsTimeout) {
  PutNumeric("score", {0, 1});
  std::unique_ptr<Recorder> recorder = MakeRecorder();
  recorder->Record("score", 0.5);
  ASSERT_TRUE(recorder->Flush(kTimeout).ok());
  EXPECT_EQ(server_->Stop(), 0);
  server_.reset();
  recorder->Record("score", 0.5);
  const absl::Time start = absl::Now();
  absl::Status status = recorder->Close(absl::Milliseconds(500));
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  EXPECT_FALSE(status.ok());
  RecorderStats stats = recorder->Stats();
  EXPECT_EQ(stats.observations_recorded, stats.observations_acked + stats.observations_dropped);
}

}  // namespace
}  // namespace kldrift
