// End-to-end tests of kldriftd: a real server process on a loopback port chosen by the kernel,
// real gRPC, the generated stubs. Every wait is bounded.
#include <stdlib.h>
#include <sys/resource.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "client/kldrift_client.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "kldrift/v1/kldrift.grpc.pb.h"
#include "server/kernels/testing/scalar_oracle.h"
#include "tests/e2e/health.grpc.pb.h"
#include "tests/e2e/server_process.h"

namespace kldrift {
namespace {

using ::testing::HasSubstr;
using v1::KlDrift;

constexpr absl::Duration kRpcDeadline = absl::Seconds(10);

std::unique_ptr<grpc::ClientContext> Context(
    absl::Duration deadline = testing::TimeScaled(kRpcDeadline)) {
  auto context = std::make_unique<grpc::ClientContext>();
  context->set_deadline(absl::ToChronoTime(absl::Now() + deadline));
  return context;
}

v1::StreamId Stream(const std::string& model, const std::string& signal,
                    const std::string& version = "") {
  v1::StreamId id;
  id.set_model(model);
  id.set_model_version(version);
  id.set_signal(signal);
  return id;
}

google::protobuf::Duration Seconds(int64_t s) {
  google::protobuf::Duration d;
  d.set_seconds(s);
  return d;
}

class ServiceE2eTest : public ::testing::Test {
 protected:
  // A short grace: gRPC waits for connected clients (even idle ones) until it expires.
  void SetUp() override { StartServer({"--eval-interval", "100ms", "--shutdown-grace", "1s"}); }

  void StartServer(const std::vector<std::string>& flags) {
    absl::StatusOr<std::unique_ptr<testing::ServerProcess>> server =
        testing::ServerProcess::Start(testing::BinaryPath("KLDRIFTD", "server/kldriftd"), flags);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    stub_ = KlDrift::NewStub(server_->Channel());
  }

  // A numeric reference over edges 0, 1, ..., bins with the given interior counts.
  uint64_t PutNumeric(const v1::StreamId& stream, const std::vector<double>& counts,
                      const v1::AlertPolicy& policy = {}) {
    v1::PutReferenceRequest request;
    *request.mutable_stream() = stream;
    for (size_t e = 0; e <= counts.size(); ++e) request.mutable_numeric()->add_edges(e);
    for (double c : counts) request.mutable_counts()->add_counts(c);
    *request.mutable_policy() = policy;
    v1::PutReferenceResponse response;
    grpc::Status status = stub_->PutReference(Context().get(), request, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return response.version();
  }

  // One Ingest stream: sends each request and reads the acks until `expect_acked` is acked.
  std::vector<v1::IngestResponse> IngestAll(const std::vector<v1::IngestRequest>& requests,
                                            uint64_t expect_acked) {
    auto context = Context(testing::TimeScaled(absl::Seconds(30)));
    auto stream = stub_->Ingest(context.get());
    for (const v1::IngestRequest& r : requests) EXPECT_TRUE(stream->Write(r));
    std::vector<v1::IngestResponse> responses;
    v1::IngestResponse response;
    while (stream->Read(&response)) {
      responses.push_back(response);
      if (response.acked_sequence() >= expect_acked) break;
    }
    stream->WritesDone();
    while (stream->Read(&response)) responses.push_back(response);
    EXPECT_TRUE(stream->Finish().ok());
    return responses;
  }

  v1::GetDriftResponse Drift(const v1::StreamId& stream, int64_t window_seconds = 0) {
    v1::GetDriftRequest request;
    *request.mutable_stream() = stream;
    if (window_seconds > 0) *request.mutable_window() = Seconds(window_seconds);
    v1::GetDriftResponse response;
    grpc::Status status = stub_->GetDrift(Context().get(), request, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return response;
  }

  std::unique_ptr<testing::ServerProcess> server_;
  std::unique_ptr<KlDrift::Stub> stub_;
};

v1::IngestRequest HistogramBatch(const std::string& client, uint64_t sequence,
                                 const std::string& model, const std::string& signal,
                                 const std::vector<double>& full_counts) {
  v1::IngestRequest request;
  request.set_client_id(client);
  request.set_sequence(sequence);
  request.set_model(model);
  v1::StreamBatch* batch = request.add_streams();
  batch->set_signal(signal);
  for (double c : full_counts) batch->mutable_histogram()->add_counts(c);
  return request;
}

TEST_F(ServiceE2eTest, HealthServiceReportsServing) {
  auto health = grpc::health::v1::Health::NewStub(server_->Channel());
  grpc::health::v1::HealthCheckRequest request;
  grpc::health::v1::HealthCheckResponse response;
  ASSERT_TRUE(health->Check(Context().get(), request, &response).ok());
  EXPECT_EQ(response.status(), grpc::health::v1::HealthCheckResponse::SERVING);
}

TEST_F(ServiceE2eTest, ReferencesOfEveryKindAreVersionedAndListed) {
  // Numeric from counts, twice: versions 1 and 2, both readable.
  const v1::StreamId score = Stream("fraud-scorer", "score", "2026-11-01");
  EXPECT_EQ(PutNumeric(score, {10, 20, 30}), 1u);
  EXPECT_EQ(PutNumeric(score, {30, 20, 10}), 2u);
  v1::GetReferenceRequest get;
  *get.mutable_stream() = score;
  get.set_version(1);
  v1::Reference ref;
  ASSERT_TRUE(stub_->GetReference(Context().get(), get, &ref).ok());
  EXPECT_EQ(ref.version(), 1u);
  EXPECT_EQ(ref.kind(), v1::REFERENCE_KIND_NUMERIC);
  // Full layout: underflow, 3 bins, overflow, NaN.
  ASSERT_EQ(ref.counts_size(), 6);
  EXPECT_EQ(ref.counts(1), 10);
  EXPECT_EQ(ref.bin_labels(0), "< 0");
  EXPECT_EQ(ref.bin_labels(1), "[0, 1)");
  EXPECT_EQ(ref.bin_labels(5), "NaN");
  EXPECT_EQ(ref.policy().windows_size(), 3);  // Defaults filled in: 5m, 1h, 24h.

  // Numeric from raw values binned by the server (NaN lands in the NaN bucket).
  v1::PutReferenceRequest values;
  *values.mutable_stream() = Stream("fraud-scorer", "amount");
  for (double e : {0.0, 10.0, 100.0}) values.mutable_numeric()->add_edges(e);
  for (double v : {-1.0, 5.0, 50.0, 500.0, std::nan("")}) values.mutable_values()->add_values(v);
  values.set_view(v1::REFERENCE_VIEW_FULL);
  v1::PutReferenceResponse put;
  ASSERT_TRUE(stub_->PutReference(Context().get(), values, &put).ok());
  EXPECT_THAT(put.reference().counts(), ::testing::ElementsAre(1, 1, 1, 1, 1));

  // Categorical from labels, with an unseen bucket.
  v1::PutReferenceRequest labels;
  *labels.mutable_stream() = Stream("fraud-scorer", "decision");
  for (const char* c : {"approve", "review", "decline"})
    labels.mutable_categorical()->add_categories(c);
  for (const char* l : {"approve", "approve", "review", "other"})
    labels.mutable_labels()->add_labels(l);
  labels.set_view(v1::REFERENCE_VIEW_FULL);
  ASSERT_TRUE(stub_->PutReference(Context().get(), labels, &put).ok());
  EXPECT_THAT(put.reference().counts(), ::testing::ElementsAre(2, 1, 0, 1));
  EXPECT_EQ(put.reference().bin_labels(3), "<unseen>");

  // Pre-binned, Gaussian and paired log-probs.
  v1::PutReferenceRequest pre;
  *pre.mutable_stream() = Stream("ranker", "bucket");
  pre.mutable_pre_binned()->set_bins(4);
  for (double c : {1, 2, 3, 4}) pre.mutable_counts()->add_counts(c);
  ASSERT_TRUE(stub_->PutReference(Context().get(), pre, &put).ok());
  v1::PutReferenceRequest gauss;
  *gauss.mutable_stream() = Stream("vae", "latent");
  for (double m : {0.0, 0.0}) gauss.mutable_gaussian()->add_mean(m);
  for (double v : {1.0, 1.0}) gauss.mutable_gaussian()->add_var(v);
  ASSERT_TRUE(stub_->PutReference(Context().get(), gauss, &put).ok());
  EXPECT_EQ(put.reference().kind(), v1::REFERENCE_KIND_GAUSSIAN);
  v1::PutReferenceRequest policy;
  *policy.mutable_stream() = Stream("llm", "tokens");
  policy.mutable_paired_log_probs();
  ASSERT_TRUE(stub_->PutReference(Context().get(), policy, &put).ok());

  // List: every stream once, at its latest version, paginated two at a time.
  std::vector<std::string> listed;
  std::string token;
  do {
    v1::ListReferencesRequest list;
    list.set_page_size(2);
    list.set_page_token(token);
    v1::ListReferencesResponse page;
    ASSERT_TRUE(stub_->ListReferences(Context().get(), list, &page).ok());
    EXPECT_LE(page.references_size(), 2);
    for (const v1::Reference& r : page.references()) {
      listed.push_back(
          absl::StrCat(r.stream().model(), "/", r.stream().signal(), "@", r.version()));
    }
    token = page.next_page_token();
  } while (!token.empty());
  EXPECT_THAT(listed, ::testing::ElementsAre("fraud-scorer/amount@1", "fraud-scorer/decision@1",
                                             "fraud-scorer/score@2", "llm/tokens@1",
                                             "ranker/bucket@1", "vae/latent@1"));
  v1::ListReferencesRequest by_model;
  by_model.set_model("ranker");
  v1::ListReferencesResponse only;
  ASSERT_TRUE(stub_->ListReferences(Context().get(), by_model, &only).ok());
  ASSERT_EQ(only.references_size(), 1);
  EXPECT_EQ(only.references(0).stream().signal(), "bucket");
}

// A reference's per-bin data can be tens of MB. PutReference echoes only its metadata unless
// asked (so a stored put never fails on the caller's receive limit and gets retried as a new
// version), listing pages end at ~4 MiB, and the client library accepts large FULL answers.
TEST_F(ServiceE2eTest, LargeReferencesAnswerWithinReceiveLimits) {
  // FULL views of ~5.9 MB ("huge") and ~2.9 MB ("wide"): past gRPC's default 4 MiB, and two
  // past it together.
  auto put_pre_binned = [&](const v1::StreamId& stream, int bins) {
    v1::PutReferenceRequest request;
    *request.mutable_stream() = stream;
    request.mutable_pre_binned()->set_bins(bins);
    for (int i = 0; i < bins; ++i) request.mutable_counts()->add_counts(1 + i % 7);
    v1::PutReferenceResponse put;
    grpc::Status status = stub_->PutReference(Context().get(), request, &put);
    ASSERT_TRUE(status.ok()) << status.error_message();
    EXPECT_EQ(put.version(), 1u);
    EXPECT_EQ(put.reference().size(), static_cast<uint32_t>(bins));
    EXPECT_EQ(put.reference().counts_size(), 0);
    EXPECT_EQ(put.reference().bin_labels_size(), 0);
    EXPECT_EQ(put.reference().policy().windows_size(), 3);
    EXPECT_LT(put.ByteSizeLong(), 1024u);
  };
  constexpr int kHugeBins = 300000;
  constexpr int kWideBins = 150000;
  ASSERT_NO_FATAL_FAILURE(put_pre_binned(Stream("huge", "a"), kHugeBins));
  const std::vector<std::string> signals = {"a", "b", "c"};
  for (const std::string& signal : signals) {
    ASSERT_NO_FATAL_FAILURE(put_pre_binned(Stream("wide", signal), kWideBins));
  }

  // A plain stub keeps gRPC's 4 MiB receive limit: FULL is refused on the client side, BASIC is
  // not; the client library takes FULL.
  v1::GetReferenceRequest get;
  *get.mutable_stream() = Stream("huge", "a");
  v1::Reference reference;
  EXPECT_EQ(stub_->GetReference(Context().get(), get, &reference).error_code(),
            grpc::StatusCode::RESOURCE_EXHAUSTED);
  get.set_view(v1::REFERENCE_VIEW_BASIC);
  ASSERT_TRUE(stub_->GetReference(Context().get(), get, &reference).ok());
  EXPECT_EQ(reference.size(), static_cast<uint32_t>(kHugeBins));
  EXPECT_EQ(reference.counts_size(), 0);
  ChannelOptions options;
  options.target = server_->address();
  KlDriftClient client(CreateChannel(options), testing::TimeScaled(kRpcDeadline));
  absl::StatusOr<v1::Reference> full = client.GetReference(Stream("huge", "a"));
  ASSERT_TRUE(full.ok()) << full.status();
  ASSERT_EQ(full->counts_size(), kHugeBins);
  EXPECT_EQ(full->counts(kHugeBins - 1), 1 + (kHugeBins - 1) % 7);
  EXPECT_EQ(full->bin_labels_size(), kHugeBins);

  // Listing: BASIC fits one page; FULL pages stop before 4 MiB, so each holds one "wide"
  // reference and fits the plain stub's limit; paging returns every reference once.
  v1::ListReferencesRequest list;
  list.set_model("wide");
  list.set_view(v1::REFERENCE_VIEW_BASIC);
  v1::ListReferencesResponse page;
  ASSERT_TRUE(stub_->ListReferences(Context().get(), list, &page).ok());
  EXPECT_EQ(page.references_size(), 3);
  EXPECT_TRUE(page.next_page_token().empty());
  std::vector<std::string> listed;
  list.set_view(v1::REFERENCE_VIEW_FULL);
  do {
    page.Clear();
    grpc::Status status = stub_->ListReferences(Context().get(), list, &page);
    ASSERT_TRUE(status.ok()) << status.error_message();
    ASSERT_EQ(page.references_size(), 1);
    EXPECT_EQ(page.references(0).counts_size(), kWideBins);
    listed.push_back(page.references(0).stream().signal());
    list.set_page_token(page.next_page_token());
  } while (!page.next_page_token().empty() && listed.size() < 10);
  EXPECT_EQ(listed, signals);
  // The client library pages through everything, the one larger than 4 MiB included.
  absl::StatusOr<std::vector<v1::Reference>> all = client.ListReferences("");
  ASSERT_TRUE(all.ok()) << all.status();
  ASSERT_EQ(all->size(), 4u);
  EXPECT_EQ((*all)[0].counts_size(), kHugeBins);
}

// Sharding: the x-kldrift-model header is the shard key. A call (or an Ingest batch) whose header
// names another model than the request is refused, since a proxy would have routed it by the
// header; calls without it, or about no single model, pass.
TEST_F(ServiceE2eTest, ShardKeyMetadataMustNameTheRequestsModel) {
  PutNumeric(Stream("m1", "s"), {1, 1, 1});
  PutNumeric(Stream("m2", "s"), {1, 1, 1});
  auto with_key = [](const std::string& model) {
    auto context = Context();
    context->AddMetadata("x-kldrift-model", model);
    return context;
  };
  v1::GetDriftRequest drift;
  *drift.mutable_stream() = Stream("m1", "s");
  v1::GetDriftResponse response;
  EXPECT_TRUE(stub_->GetDrift(with_key("m1").get(), drift, &response).ok());
  grpc::Status refused = stub_->GetDrift(with_key("m2").get(), drift, &response);
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(refused.error_message(),
              HasSubstr("x-kldrift-model metadata names model \"m2\" but the request is for "
                        "model \"m1\""));
  v1::ListReferencesResponse list;
  EXPECT_TRUE(stub_->ListReferences(with_key("m2").get(), {}, &list).ok());
  EXPECT_EQ(list.references_size(), 2);

  // One Ingest stream, keyed m1: its m2 batch is refused alone; m1's batches are applied.
  auto context = with_key("m1");
  auto stream = stub_->Ingest(context.get());
  ASSERT_TRUE(stream->Write(HistogramBatch("sharded", 1, "m1", "s", {0, 2, 0, 0, 0, 0})));
  ASSERT_TRUE(stream->Write(HistogramBatch("sharded", 2, "m2", "s", {0, 0, 3, 0, 0, 0})));
  ASSERT_TRUE(stream->Write(HistogramBatch("sharded", 3, "m1", "s", {0, 0, 0, 5, 0, 0})));
  std::vector<v1::BatchError> errors;
  v1::IngestResponse ack;
  while (stream->Read(&ack)) {
    for (const v1::BatchError& e : ack.errors()) errors.push_back(e);
    if (ack.acked_sequence() >= 3) break;
  }
  stream->WritesDone();
  while (stream->Read(&ack)) {
  }
  EXPECT_TRUE(stream->Finish().ok());
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors[0].sequence(), 2u);
  EXPECT_EQ(errors[0].code(), static_cast<int>(grpc::StatusCode::INVALID_ARGUMENT));
  EXPECT_THAT(errors[0].message(), HasSubstr("names model \"m1\" but the request is for model"));
  EXPECT_EQ(Drift(Stream("m1", "s")).reports(0).samples(), 7);
  EXPECT_EQ(Drift(Stream("m2", "s")).reports(0).samples(), 0);
}

// Sharding hand-over: a model exported from one server and imported into another keeps every
// reference version, its windows (GetDrift equal) and its alert states, durably; an import onto a
// model that exists there needs replace; other models are untouched.
TEST_F(ServiceE2eTest, ExportImportHandsAModelToAnotherServer) {
  v1::AlertPolicy policy;
  policy.set_warn_threshold(0.01);
  policy.set_critical_threshold(0.05);
  policy.set_min_samples(10);
  policy.set_max_p_value(1);
  *policy.mutable_for_duration() = Seconds(0);
  PutNumeric(Stream("handed", "a"), {5, 5, 5, 5});
  PutNumeric(Stream("handed", "a"), {1, 1, 1, 1}, policy);  // Version 2, same bins: windows kept.
  PutNumeric(Stream("handed", "b"), {3, 3, 3});
  PutNumeric(Stream("stays", "c"), {1, 1});
  IngestAll({HistogramBatch("hand-over", 1, "handed", "a", {0, 40, 0, 0, 2, 0, 1}),
             HistogramBatch("hand-over", 2, "handed", "b", {0, 1, 2, 3, 0, 0})},
            2);
  ASSERT_TRUE(server_->WaitForEvaluations().ok());  // Alert state of a: critical, firing.
  const v1::GetDriftResponse before_a = Drift(Stream("handed", "a"));
  const v1::GetDriftResponse before_b = Drift(Stream("handed", "b"));
  ASSERT_EQ(before_a.reports(0).alert_state(), v1::ALERT_STATE_FIRING);

  ChannelOptions options;
  options.target = server_->address();
  KlDriftClient from(CreateChannel(options), testing::TimeScaled(kRpcDeadline));
  absl::StatusOr<v1::ModelExport> exported = from.ExportModel("handed");
  ASSERT_TRUE(exported.ok()) << exported.status();
  ASSERT_EQ(exported->streams_size(), 2);
  EXPECT_EQ(exported->streams(0).versions_size(), 2);
  EXPECT_EQ(from.ExportModel("no-such-model").status().code(), absl::StatusCode::kNotFound);

  char data_dir[] = "/tmp/kldrift-import-XXXXXX";
  ASSERT_NE(mkdtemp(data_dir), nullptr);
  const std::vector<std::string> flags = {"--data-dir",       std::string(data_dir) + "/data",
                                          "--eval-interval",  "100ms",
                                          "--shutdown-grace", "1s"};
  absl::StatusOr<std::unique_ptr<testing::ServerProcess>> other =
      testing::ServerProcess::Start(testing::BinaryPath("KLDRIFTD", "server/kldriftd"), flags);
  ASSERT_TRUE(other.ok()) << other.status();
  options.target = (*other)->address();
  {
    KlDriftClient to(CreateChannel(options), testing::TimeScaled(kRpcDeadline));
    ASSERT_TRUE(to.PutReference([] {
                    v1::PutReferenceRequest r;
                    *r.mutable_stream() = Stream("handed", "old");
                    r.mutable_pre_binned()->set_bins(2);
                    r.mutable_counts()->add_counts(1);
                    r.mutable_counts()->add_counts(1);
                    return r;
                  }())
                    .ok());
    const absl::StatusOr<uint32_t> refused = to.ImportModel(*exported, /*replace=*/false);
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(refused.status().message(), HasSubstr("already has 1 streams"));
    absl::StatusOr<uint32_t> imported = to.ImportModel(*exported, /*replace=*/true);
    ASSERT_TRUE(imported.ok()) << imported.status();
    EXPECT_EQ(*imported, 2u);
    // Replace dropped the stream the export does not have.
    EXPECT_EQ(to.GetReference(Stream("handed", "old")).status().code(),
              absl::StatusCode::kNotFound);
  }
  // Survives a restart of the importing server (the import is durable).
  (*other).reset();
  other = testing::ServerProcess::Start(testing::BinaryPath("KLDRIFTD", "server/kldriftd"), flags);
  ASSERT_TRUE(other.ok()) << other.status();
  options.target = (*other)->address();
  KlDriftClient to(CreateChannel(options), testing::TimeScaled(kRpcDeadline));
  absl::StatusOr<v1::Reference> first = to.GetReference(Stream("handed", "a"), 1);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_THAT(first->counts(), ::testing::ElementsAre(0, 5, 5, 5, 5, 0, 0));
  for (const auto& [stream, before] :
       {std::pair{Stream("handed", "a"), before_a}, std::pair{Stream("handed", "b"), before_b}}) {
    v1::GetDriftRequest request;
    *request.mutable_stream() = stream;
    absl::StatusOr<v1::GetDriftResponse> after = to.GetDrift(request);
    ASSERT_TRUE(after.ok()) << after.status();
    ASSERT_EQ(after->reports_size(), before.reports_size());
    for (int w = 0; w < before.reports_size(); ++w) {
      const v1::DriftReport& x = before.reports(w);
      const v1::DriftReport& y = after->reports(w);
      EXPECT_EQ(y.samples(), x.samples()) << stream.signal() << " window " << w;
      EXPECT_EQ(y.reference_version(), x.reference_version());
      EXPECT_DOUBLE_EQ(y.histogram().kl_current_reference(), x.histogram().kl_current_reference());
      EXPECT_EQ(y.alert_state(), x.alert_state());
      EXPECT_EQ(y.state_since().seconds(), x.state_since().seconds());
      EXPECT_EQ(y.severity(), x.severity());
    }
  }
  EXPECT_EQ(to.GetReference(Stream("stays", "c")).status().code(), absl::StatusCode::kNotFound);
  (*other).reset();
  std::filesystem::remove_all(data_dir);
}

// A model larger than one request may carry: the client library sends the import in parts under
// the server's receive limit, and every stream arrives.
TEST_F(ServiceE2eTest, LargeModelImportIsSentInParts) {
  constexpr int kStreams = 250;
  constexpr int kBins = 1000;  // ~46 KB a stream in the export: ~11 MB in all.
  ChannelOptions options;
  options.target = server_->address();
  KlDriftClient from(CreateChannel(options), testing::TimeScaled(kRpcDeadline));
  v1::IngestRequest batch;
  batch.set_client_id("wide-loader");
  batch.set_sequence(1);
  batch.set_model("wide-model");
  for (int i = 0; i < kStreams; ++i) {
    v1::PutReferenceRequest request;
    *request.mutable_stream() = Stream("wide-model", absl::StrCat("s", i));
    request.mutable_pre_binned()->set_bins(kBins);
    for (int b = 0; b < kBins; ++b) request.mutable_counts()->add_counts(1 + (b + i) % 5);
    ASSERT_TRUE(from.PutReference(request).ok());
    v1::StreamBatch* stream = batch.add_streams();
    stream->set_signal(absl::StrCat("s", i));
    for (int b = 0; b < kBins; ++b) stream->mutable_histogram()->add_counts((b * i) % 3);
  }
  ASSERT_TRUE(from.IngestOnce(batch).ok());
  absl::StatusOr<v1::ModelExport> exported = from.ExportModel("wide-model");
  ASSERT_TRUE(exported.ok()) << exported.status();
  ASSERT_GT(exported->ByteSizeLong(), size_t{8} << 20);  // More than one part.

  absl::StatusOr<std::unique_ptr<testing::ServerProcess>> other = testing::ServerProcess::Start(
      testing::BinaryPath("KLDRIFTD", "server/kldriftd"),
      {"--storage=memory", "--max-receive-message-bytes", "10485760"});
  ASSERT_TRUE(other.ok()) << other.status();
  options.target = (*other)->address();
  KlDriftClient to(CreateChannel(options), testing::TimeScaled(kRpcDeadline));
  absl::StatusOr<uint32_t> imported = to.ImportModel(*exported, /*replace=*/false);
  ASSERT_TRUE(imported.ok()) << imported.status();
  EXPECT_EQ(*imported, static_cast<uint32_t>(kStreams));
  for (int i : {0, kStreams / 2, kStreams - 1}) {
    v1::GetDriftRequest request;
    *request.mutable_stream() = Stream("wide-model", absl::StrCat("s", i));
    absl::StatusOr<v1::GetDriftResponse> a = from.GetDrift(request);
    absl::StatusOr<v1::GetDriftResponse> b = to.GetDrift(request);
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_EQ(b->reports(0).samples(), a->reports(0).samples());
    EXPECT_EQ(b->reports(0).measure_value(), a->reports(0).measure_value());
  }
}

TEST_F(ServiceE2eTest, BadInputGetsPreciseStatusAndLeavesStateAlone) {
  v1::PutReferenceRequest bad;
  *bad.mutable_stream() = Stream("bad model", "s");
  bad.mutable_pre_binned()->set_bins(2);
  bad.mutable_counts()->add_counts(1);
  bad.mutable_counts()->add_counts(1);
  v1::PutReferenceResponse put;
  grpc::Status status = stub_->PutReference(Context().get(), bad, &put);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("model"));

  v1::PutReferenceRequest edges;
  *edges.mutable_stream() = Stream("m", "s");
  for (double e : {0.0, 2.0, 1.0}) edges.mutable_numeric()->add_edges(e);
  edges.mutable_counts()->add_counts(1);
  status = stub_->PutReference(Context().get(), edges, &put);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("strictly increasing"));

  v1::GetReferenceRequest get;
  *get.mutable_stream() = Stream("m", "s");
  v1::Reference ref;
  EXPECT_EQ(stub_->GetReference(Context().get(), get, &ref).error_code(),
            grpc::StatusCode::NOT_FOUND);

  // Ingest before a reference exists: the batch error says FAILED_PRECONDITION, and it is acked.
  auto responses = IngestAll({HistogramBatch("c1", 1, "m", "s", {1, 2})}, 1);
  ASSERT_FALSE(responses.empty());
  EXPECT_EQ(responses.back().acked_sequence(), 1u);
  ASSERT_EQ(responses.front().errors_size(), 1);
  EXPECT_EQ(responses.front().errors(0).code(), grpc::StatusCode::FAILED_PRECONDITION);
}

TEST_F(ServiceE2eTest, ConcurrentClientsAndGetDriftMatchesTheOracle) {
  const v1::StreamId stream = Stream("fraud-scorer", "score");
  const std::vector<double> reference = {100, 300, 400, 150, 50};
  PutNumeric(stream, reference);
  constexpr int kClients = 4;
  constexpr int kBatches = 50;
  // Full layout: underflow, 5 bins, overflow, NaN. Each client shifts mass to the right.
  std::vector<std::thread> clients;
  for (int c = 0; c < kClients; ++c) {
    clients.emplace_back([&, c] {
      std::vector<v1::IngestRequest> requests;
      for (int b = 1; b <= kBatches; ++b) {
        requests.push_back(HistogramBatch(absl::StrCat("client-", c), b, "fraud-scorer", "score",
                                          {0, 1, 2, 3, 4, double(c + 1), 0, 1}));
      }
      IngestAll(requests, kBatches);
    });
  }
  for (std::thread& t : clients) t.join();

  std::vector<double> current(8, 0.0);
  for (int c = 0; c < kClients; ++c) {
    const std::vector<double> delta = {0, 1, 2, 3, 4, double(c + 1), 0, 1};
    for (size_t i = 0; i < 8; ++i) current[i] += kBatches * delta[i];
  }
  std::vector<double> reference_full = {0, 100, 300, 400, 150, 50, 0, 0};
  const auto want = kernels::oracle::AllMeasures(current, reference_full, 0.5);
  const v1::GetDriftResponse drift = Drift(stream);
  ASSERT_EQ(drift.reports_size(), 3);
  for (const v1::DriftReport& report : drift.reports()) {
    SCOPED_TRACE(report.window_name());
    // Each batch holds 1 + 2 + 3 + 4 + (c + 1) + 1 = 12 + c observations.
    EXPECT_EQ(report.samples(), kBatches * (12 * kClients + (0 + 1 + 2 + 3)));
    ASSERT_TRUE(report.has_histogram());
    const v1::HistogramDrift& h = report.histogram();
    EXPECT_NEAR(h.kl_current_reference(), static_cast<double>(want.kl_pq), 1e-9 * want.kl_pq);
    EXPECT_NEAR(h.kl_reference_current(), static_cast<double>(want.kl_qp), 1e-9 * want.kl_qp);
    EXPECT_NEAR(h.js_bits(), static_cast<double>(want.js_bits), 1e-9 * want.js_bits);
    EXPECT_NEAR(h.hellinger(), static_cast<double>(want.hellinger), 1e-9 * want.hellinger);
    EXPECT_NEAR(h.total_variation(), static_cast<double>(want.total_variation), 1e-9);
    EXPECT_NEAR(h.chi2(), static_cast<double>(want.chi2), 1e-9 * want.chi2);
    EXPECT_DOUBLE_EQ(h.psi(), h.kl_current_reference() + h.kl_reference_current());
    EXPECT_EQ(report.reference_version(), 1u);
    EXPECT_EQ(h.top_bins_size(), 5);
  }
}

TEST_F(ServiceE2eTest, ResendAfterReconnectIsAppliedOnce) {
  const v1::StreamId stream = Stream("m", "s");
  PutNumeric(stream, {5, 5});
  std::vector<v1::IngestRequest> first;
  for (uint64_t s = 1; s <= 5; ++s)
    first.push_back(HistogramBatch("svc-a", s, "m", "s", {0, 1, 1, 0, 0}));
  EXPECT_EQ(IngestAll(first, 5).back().acked_sequence(), 5u);
  // A reconnecting client that missed acks 3..5 resends them, then continues with 6 and 7.
  std::vector<v1::IngestRequest> second;
  for (uint64_t s = 3; s <= 7; ++s)
    second.push_back(HistogramBatch("svc-a", s, "m", "s", {0, 1, 1, 0, 0}));
  const auto responses = IngestAll(second, 7);
  EXPECT_EQ(responses.back().acked_sequence(), 7u);
  for (const auto& r : responses) EXPECT_EQ(r.errors_size(), 0);
  EXPECT_EQ(Drift(stream).reports(0).samples(), 7 * 2);
}

TEST_F(ServiceE2eTest, AcksOfBatchesMarkedMoreFollowsAreHeldAndMerged) {
  constexpr uint64_t kMaxHeldAcks = 8;  // IngestRequest.more_follows: "at most 8 batches".
  const v1::StreamId stream = Stream("m", "s");
  PutNumeric(stream, {5, 5});
  // 20 batches written back to back, each but the last saying another follows: the first ack
  // waits for the eighth batch, and none acknowledges more than eight batches after the last.
  std::vector<v1::IngestRequest> burst;
  for (uint64_t s = 1; s <= 20; ++s) {
    burst.push_back(HistogramBatch("svc-h", s, "m", "s", {0, 1, 1, 0, 0}));
    burst.back().set_more_follows(s < 20);
  }
  const std::vector<v1::IngestResponse> responses = IngestAll(burst, 20);
  ASSERT_FALSE(responses.empty());
  EXPECT_EQ(responses.front().acked_sequence(), kMaxHeldAcks);
  EXPECT_EQ(responses.back().acked_sequence(), 20u);
  uint64_t previous = 0;
  for (const v1::IngestResponse& r : responses) {
    EXPECT_EQ(r.errors_size(), 0);
    EXPECT_GT(r.acked_sequence(), previous);
    EXPECT_LE(r.acked_sequence(), previous + kMaxHeldAcks);
    previous = r.acked_sequence();
  }
  EXPECT_LE(responses.size(), 3u);
  EXPECT_EQ(Drift(stream).reports(0).samples(), 20 * 2);

  // A held ack is sent when the client ends the stream instead of sending what it promised.
  {
    auto context = Context();
    auto ingest = stub_->Ingest(context.get());
    v1::IngestRequest request = HistogramBatch("svc-e", 1, "m", "s", {0, 1, 1, 0, 0});
    request.set_more_follows(true);
    ASSERT_TRUE(ingest->Write(request));
    ingest->WritesDone();
    v1::IngestResponse response;
    ASSERT_TRUE(ingest->Read(&response));
    EXPECT_EQ(response.acked_sequence(), 1u);
    EXPECT_FALSE(ingest->Read(&response));
    EXPECT_TRUE(ingest->Finish().ok());
  }

  // A rejected batch is reported at once, with the acks held before it, although it says more
  // follows; the stream stays open and goes on holding.
  {
    auto context = Context();
    auto ingest = stub_->Ingest(context.get());
    v1::IngestRequest request = HistogramBatch("svc-r", 1, "m", "s", {0, 1, 1, 0, 0});
    request.set_more_follows(true);
    ASSERT_TRUE(ingest->Write(request));
    request = HistogramBatch("svc-r", 2, "m", "no-such-signal", {1});
    request.set_more_follows(true);
    ASSERT_TRUE(ingest->Write(request));
    v1::IngestResponse response;
    ASSERT_TRUE(ingest->Read(&response));
    EXPECT_EQ(response.acked_sequence(), 2u);
    ASSERT_EQ(response.errors_size(), 1);
    EXPECT_EQ(response.errors(0).sequence(), 2u);
    EXPECT_EQ(response.errors(0).code(), static_cast<int>(grpc::StatusCode::FAILED_PRECONDITION));
    request = HistogramBatch("svc-r", 3, "m", "s", {0, 1, 1, 0, 0});
    request.set_more_follows(true);
    ASSERT_TRUE(ingest->Write(request));
    request = HistogramBatch("svc-r", 4, "m", "s", {0, 1, 1, 0, 0});
    ASSERT_TRUE(ingest->Write(request));
    ASSERT_TRUE(ingest->Read(&response));
    EXPECT_EQ(response.acked_sequence(), 4u);
    EXPECT_EQ(response.errors_size(), 0);
    ingest->WritesDone();
    EXPECT_FALSE(ingest->Read(&response));
    EXPECT_TRUE(ingest->Finish().ok());
  }
  EXPECT_EQ(Drift(stream).reports(0).samples(), (20 + 1 + 3) * 2);
}

TEST_F(ServiceE2eTest, MetricsCountBatchesRejectionsDuplicatesAndReconnects) {
  const v1::StreamId stream = Stream("m", "s");
  PutNumeric(stream, {5, 5});
  std::vector<v1::IngestRequest> first;
  for (uint64_t s = 1; s <= 4; ++s)
    first.push_back(HistogramBatch("svc-m", s, "m", "s", {0, 1, 2, 0, 0}));
  // No reference for this signal: FAILED_PRECONDITION, reported in the acks.
  first.push_back(HistogramBatch("svc-m", 5, "m", "unknown", {1}));
  const auto responses = IngestAll(first, 5);
  ASSERT_FALSE(responses.empty());
  // The client reconnects and resends 3..5, then sends 6: three duplicates, one new batch.
  std::vector<v1::IngestRequest> second;
  for (uint64_t s = 3; s <= 4; ++s)
    second.push_back(HistogramBatch("svc-m", s, "m", "s", {0, 1, 2, 0, 0}));
  second.push_back(HistogramBatch("svc-m", 6, "m", "s", {0, 1, 2, 0, 0}));
  IngestAll(second, 6);

  ASSERT_GT(server_->metrics_port(), 0);
  absl::StatusOr<std::string> text = testing::HttpGet(server_->metrics_port(), "/metrics");
  ASSERT_TRUE(text.ok()) << text.status();
  EXPECT_EQ(testing::MetricValue(*text, "kldrift_ingested_batches_total"), 5);
  EXPECT_EQ(testing::MetricValue(*text, "kldrift_ingested_observations_total"), 5 * 3);
  EXPECT_EQ(
      testing::MetricValue(
          *text,
          R"(kldrift_stream_ingested_observations_total{model="m",model_version="",signal="s"})"),
      5 * 3);
  EXPECT_EQ(testing::MetricValue(*text,
                                 R"(kldrift_rejected_batches_total{reason="failed_precondition"})"),
            1);
  EXPECT_EQ(
      testing::MetricValue(*text, R"(kldrift_rejected_batches_total{reason="invalid_argument"})"),
      0);
  EXPECT_EQ(testing::MetricValue(*text, "kldrift_duplicate_batches_total"), 2);
  EXPECT_EQ(testing::MetricValue(*text, "kldrift_ingest_streams_opened_total"), 2);
  EXPECT_EQ(testing::MetricValue(*text, "kldrift_ingest_reconnects_total"), 1);
  EXPECT_GE(testing::MetricValue(*text, "kldrift_ingest_acks_total"), 2);
  EXPECT_EQ(testing::MetricValue(*text, "kldrift_streams"), 1);
  EXPECT_GT(testing::MetricValue(*text, "kldrift_storage_bytes"), 0);
  EXPECT_EQ(testing::MetricValue(
                *text, R"(kldrift_reference_version{model="m",model_version="",signal="s"})"),
            1);
}

TEST_F(ServiceE2eTest, MetricsTimeAndCountEveryRequestByMethodAndCode) {
  const v1::StreamId stream = Stream("timed", "s");
  PutNumeric(stream, {5, 5});
  IngestAll({HistogramBatch("svc-t", 1, "timed", "s", {0, 1, 2, 0, 0}),
             HistogramBatch("svc-t", 2, "timed", "s", {1, 1, 0, 0, 0}),
             // No reference for this signal: FAILED_PRECONDITION, in the acks.
             HistogramBatch("svc-t", 3, "timed", "unknown", {1})},
            3);
  Drift(stream);
  Drift(stream);
  v1::GetDriftRequest missing;
  *missing.mutable_stream() = Stream("timed", "missing");
  v1::GetDriftResponse response;
  EXPECT_EQ(stub_->GetDrift(Context().get(), missing, &response).error_code(),
            grpc::StatusCode::NOT_FOUND);

  // Each call is counted before its answer is sent, so one scrape now sees them all.
  ASSERT_GT(server_->metrics_port(), 0);
  absl::StatusOr<std::string> text = testing::HttpGet(server_->metrics_port(), "/metrics");
  ASSERT_TRUE(text.ok()) << text.status();
  EXPECT_EQ(
      testing::MetricValue(*text, R"(kldrift_requests_total{code="ok",method="PutReference"})"), 1);
  EXPECT_EQ(testing::MetricValue(*text, R"(kldrift_requests_total{code="ok",method="GetDrift"})"),
            2);
  EXPECT_EQ(
      testing::MetricValue(*text, R"(kldrift_requests_total{code="not_found",method="GetDrift"})"),
      1);
  EXPECT_EQ(testing::MetricValue(*text, R"(kldrift_requests_total{code="ok",method="Ingest"})"), 2);
  EXPECT_EQ(testing::MetricValue(
                *text, R"(kldrift_requests_total{code="failed_precondition",method="Ingest"})"),
            1);
  EXPECT_EQ(testing::MetricValue(*text, R"(kldrift_requests_total{code="ok",method="Backup"})"), 0);
  EXPECT_EQ(
      testing::MetricValue(*text, R"(kldrift_request_duration_seconds_count{method="GetDrift"})"),
      3);
  EXPECT_EQ(
      testing::MetricValue(*text, R"(kldrift_request_duration_seconds_count{method="Ingest"})"), 3);
  EXPECT_EQ(testing::MetricValue(
                *text, R"(kldrift_request_duration_seconds_bucket{method="GetDrift",le="+Inf"})"),
            3);
  // Real time was spent, and less than the test took.
  const double get_drift_seconds =
      testing::MetricValue(*text, R"(kldrift_request_duration_seconds_sum{method="GetDrift"})");
  EXPECT_GT(get_drift_seconds, 0);
  EXPECT_LT(get_drift_seconds, 60);
}

TEST_F(ServiceE2eTest, WatchDriftSeesPendingFiringAndOk) {
  const v1::StreamId stream = Stream("watched", "score");
  v1::AlertPolicy policy;
  *policy.add_windows() = Seconds(2);
  policy.set_sub_buckets(2);
  policy.set_warn_threshold(0.2);
  policy.set_critical_threshold(0.5);
  policy.set_min_samples(10);
  policy.set_max_p_value(1);
  google::protobuf::Duration for_duration;
  for_duration.set_nanos(300'000'000);
  *policy.mutable_for_duration() = for_duration;
  PutNumeric(stream, {100, 100});

  // Re-put with the short-window policy.
  PutNumeric(stream, {100, 100}, policy);

  v1::WatchDriftRequest watch;
  *watch.mutable_stream() = stream;
  watch.set_state_changes_only(true);
  auto context = Context(testing::TimeScaled(absl::Seconds(30)));
  auto reader = stub_->WatchDrift(context.get(), watch);

  uint64_t sequence = 0;
  auto send = [&](const std::vector<double>& counts) {
    ++sequence;
    IngestAll({HistogramBatch("watch-client", sequence, "watched", "score", counts)}, sequence);
  };
  // Everything in the second bin: far from the reference.
  send({0, 0, 500, 0, 0});
  std::vector<v1::AlertState> seen;
  v1::DriftReport report;
  const absl::Time deadline = absl::Now() + testing::TimeScaled(absl::Seconds(20));
  bool sent_recovery = false;
  while (absl::Now() < deadline && reader->Read(&report)) {
    seen.push_back(report.alert_state());
    if (report.alert_state() == v1::ALERT_STATE_FIRING && !sent_recovery) {
      EXPECT_EQ(report.severity(), v1::SEVERITY_CRITICAL);
      // Let the drifted data expire from the 2 s window, then send data shaped like the reference.
      absl::SleepFor(absl::Milliseconds(2200));
      send({0, 250, 250, 0, 0});
      sent_recovery = true;
    }
    if (report.alert_state() == v1::ALERT_STATE_OK && sent_recovery) break;
  }
  context->TryCancel();
  EXPECT_THAT(seen, ::testing::ElementsAre(v1::ALERT_STATE_PENDING, v1::ALERT_STATE_FIRING,
                                           v1::ALERT_STATE_OK));
}

TEST_F(ServiceE2eTest, DeleteReferenceRemovesEverything) {
  const v1::StreamId stream = Stream("m", "gone");
  PutNumeric(stream, {1, 1});
  PutNumeric(stream, {2, 1});
  IngestAll({HistogramBatch("c", 1, "m", "gone", {0, 1, 1, 0, 0})}, 1);
  v1::DeleteReferenceRequest del;
  *del.mutable_stream() = stream;
  v1::DeleteReferenceResponse deleted;
  ASSERT_TRUE(stub_->DeleteReference(Context().get(), del, &deleted).ok());
  EXPECT_EQ(deleted.versions_deleted(), 2u);
  v1::GetReferenceRequest get;
  *get.mutable_stream() = stream;
  v1::Reference ref;
  EXPECT_EQ(stub_->GetReference(Context().get(), get, &ref).error_code(),
            grpc::StatusCode::NOT_FOUND);
  v1::GetDriftRequest drift;
  *drift.mutable_stream() = stream;
  v1::GetDriftResponse reports;
  EXPECT_EQ(stub_->GetDrift(Context().get(), drift, &reports).error_code(),
            grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(stub_->DeleteReference(Context().get(), del, &deleted).error_code(),
            grpc::StatusCode::NOT_FOUND);
  const auto responses = IngestAll({HistogramBatch("c", 2, "m", "gone", {0, 1, 1, 0, 0})}, 2);
  ASSERT_EQ(responses.front().errors_size(), 1);
  EXPECT_EQ(responses.front().errors(0).code(), grpc::StatusCode::FAILED_PRECONDITION);
}

TEST_F(ServiceE2eTest, SigtermEndsWatchStreamsAndExitsCleanly) {
  const v1::StreamId stream = Stream("m", "s");
  PutNumeric(stream, {1, 1});
  v1::WatchDriftRequest watch;
  *watch.mutable_stream() = stream;
  auto context = Context(testing::TimeScaled(absl::Seconds(30)));
  auto reader = stub_->WatchDrift(context.get(), watch);
  v1::DriftReport report;
  ASSERT_TRUE(reader->Read(&report));  // Every evaluation is reported (not changes only).
  const int status = server_->Stop();
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
  while (reader->Read(&report)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::UNAVAILABLE);
}

// Online backup: a checkpoint another kldriftd can serve, with the same references and windows.
TEST_F(ServiceE2eTest, BackupIsADataFolderAnotherServerRestores) {
  const v1::StreamId stream = Stream("m", "backed-up");
  PutNumeric(stream, {3, 4, 5});
  IngestAll({HistogramBatch("c", 1, "m", "backed-up", {0, 1, 2, 3, 0, 0})}, 1);
  const std::string directory = server_->work_dir() + "/backup-1";

  v1::BackupRequest request;
  request.set_directory(directory);
  v1::BackupResponse response;
  grpc::Status status = stub_->Backup(Context().get(), request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_GT(response.bytes(), 0u);
  // The same directory again, and a relative path, are refused precisely.
  EXPECT_EQ(stub_->Backup(Context().get(), request, &response).error_code(),
            grpc::StatusCode::ALREADY_EXISTS);
  request.set_directory("relative/dir");
  EXPECT_EQ(stub_->Backup(Context().get(), request, &response).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);

  const v1::GetDriftResponse original = Drift(stream);
  absl::StatusOr<std::unique_ptr<testing::ServerProcess>> restored =
      testing::ServerProcess::Start(testing::BinaryPath("KLDRIFTD", "server/kldriftd"),
                                    {"--data-dir", directory, "--shutdown-grace", "1s"});
  ASSERT_TRUE(restored.ok()) << restored.status();
  auto restored_stub = KlDrift::NewStub((*restored)->Channel());
  v1::GetDriftRequest get;
  *get.mutable_stream() = stream;
  v1::GetDriftResponse copy;
  ASSERT_TRUE(restored_stub->GetDrift(Context().get(), get, &copy).ok());
  ASSERT_EQ(copy.reports_size(), original.reports_size());
  for (int i = 0; i < copy.reports_size(); ++i) {
    EXPECT_EQ(copy.reports(i).samples(), original.reports(i).samples());
    EXPECT_EQ(copy.reports(i).histogram().kl_current_reference(),
              original.reports(i).histogram().kl_current_reference());
  }
}

TEST_F(ServiceE2eTest, BackupOfAMemoryServerIsAPreconditionFailure) {
  absl::StatusOr<std::unique_ptr<testing::ServerProcess>> memory = testing::ServerProcess::Start(
      testing::BinaryPath("KLDRIFTD", "server/kldriftd"), {"--storage=memory"});
  ASSERT_TRUE(memory.ok()) << memory.status();
  v1::BackupRequest request;
  request.set_directory((*memory)->work_dir() + "/backup");
  v1::BackupResponse response;
  grpc::Status status =
      KlDrift::NewStub((*memory)->Channel())->Backup(Context().get(), request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(status.error_message(), HasSubstr("--storage=memory"));
}

// The nice value of each of the process's threads, from /proc/PID/task/TID/stat (field 19).
std::vector<int> ThreadNiceValues(pid_t pid) {
  std::vector<int> nice;
  for (const auto& task :
       std::filesystem::directory_iterator(absl::StrCat("/proc/", pid, "/task"))) {
    std::ifstream in(task.path() / "stat");
    std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    // The command name (field 2) is in parentheses and may hold spaces: count from after it.
    const size_t close = stat.rfind(')');
    if (close == std::string::npos) continue;
    std::istringstream fields(stat.substr(close + 2));
    std::string field;
    for (int i = 3; i <= 19 && fields >> field; ++i) {
      if (i == 19) nice.push_back(std::stoi(field));
    }
  }
  return nice;
}

TEST(ServerFlagsTest, EvalNiceLowersTheEvaluationThreadOnly) {
  const int own_nice = getpriority(PRIO_PROCESS, 0);
  absl::StatusOr<std::unique_ptr<testing::ServerProcess>> server = testing::ServerProcess::Start(
      testing::BinaryPath("KLDRIFTD", "server/kldriftd"),
      {"--storage=memory", "--eval-nice", "7", "--eval-threads", "1", "--eval-interval", "100ms"});
  ASSERT_TRUE(server.ok()) << server.status();
  ASSERT_TRUE((*server)->WaitForEvaluations(1).ok());
  const std::vector<int> nice = ThreadNiceValues((*server)->pid());
  ASSERT_FALSE(nice.empty());
  const int lowered = std::min(19, own_nice + 7);
  EXPECT_EQ(std::count(nice.begin(), nice.end(), lowered), 1) << "one evaluator thread";
  EXPECT_EQ(std::count(nice.begin(), nice.end(), own_nice), static_cast<long>(nice.size()) - 1)
      << "every other thread (gRPC, metrics, main) keeps the server's priority";

  absl::StatusOr<std::unique_ptr<testing::ServerProcess>> refused =
      testing::ServerProcess::Start(testing::BinaryPath("KLDRIFTD", "server/kldriftd"),
                                    {"--storage=memory", "--eval-nice", "20"});
  ASSERT_FALSE(refused.ok());
  EXPECT_THAT(refused.status().message(), HasSubstr("--eval-nice=20 is outside [0, 19]"));
}

}  // namespace
}  // namespace kldrift
