// The validation catalogue (README "Validation catalogue"): every kind of bad input kldriftd can be
// sent, and what it answers. One test per README row, named as in the README's "test" column;
// tests/e2e/catalogue_readme_check.py checks that the two lists match.
//
// Each row runs against a real kldriftd (tests/e2e/server_process.h) over TLS, with certificates
// generated for the run (tests/e2e/test_certificates.h), and asserts
//   1. the exact status code (the unary status, the stream's final status, or the batch error in
//      the Ingest acks),
//   2. that the message names what to fix (a substring),
//   3. that state is unchanged: every stream's latest reference, GetReference and GetDrift
//   (samples,
//      every measure, top bins, alert state) compare equal before and after; for Ingest, the
//      batches acknowledged earlier are intact and the stream carries on,
//   4. that the server stays healthy: grpc.health.v1 says SERVING and normal calls still work.
// Rows that are accepted on purpose (NaN and +-inf values) assert where the values were counted.
//
// Most rows share one server started with small limits, each on streams of its own (the model is
// the row's name) next to a "canary" stream holding data; rows that need other flags start a server
// of their own. The raw-bytes rows send their bytes twice: straight onto the TLS port (the TLS
// layer must refuse them) and inside a TLS session (the HTTP/2 layer must). Loopback only; every
// wait is bounded by a deadline.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <ostream>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "kldrift/v1/kldrift.grpc.pb.h"
#include "tests/e2e/health.grpc.pb.h"
#include "tests/e2e/server_process.h"
#include "tests/e2e/test_certificates.h"

namespace kldrift {
namespace {

using ::testing::HasSubstr;
using v1::KlDrift;

constexpr absl::Duration kRpcDeadline = absl::Seconds(10);
constexpr absl::Duration kStreamDeadline = absl::Seconds(30);
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

// The shared server's limits, small so that every limit is cheap to reach.
constexpr int kMaxBins = 64;
constexpr int kMaxDimensions = 16;
constexpr int kMaxBatchObservations = 1000;
constexpr int kMaxReceiveMessageBytes = 65536;

std::unique_ptr<grpc::ClientContext> Context(absl::Duration deadline = kRpcDeadline) {
  auto context = std::make_unique<grpc::ClientContext>();
  context->set_deadline(absl::ToChronoTime(absl::Now() + deadline));
  return context;
}

v1::StreamId Stream(const std::string& model, const std::string& signal) {
  v1::StreamId id;
  id.set_model(model);
  id.set_signal(signal);
  return id;
}

google::protobuf::Duration Seconds(int64_t s) {
  google::protobuf::Duration d;
  d.set_seconds(s);
  return d;
}

// The run's certificates: generated before the first test, removed after the last.
class TestPki : public ::testing::Environment {
 public:
  // Null if generation failed (the failure is reported once, in SetUp).
  static const testing::TestCertificates* Get() { return pki_; }

  void SetUp() override {
    char dir_template[] = "/tmp/kldrift-catalogue-pki-XXXXXX";
    ASSERT_NE(mkdtemp(dir_template), nullptr);
    absl::StatusOr<testing::TestCertificates> pki =
        testing::TestCertificates::Generate(dir_template);
    ASSERT_TRUE(pki.ok()) << pki.status();
    pki_ = new testing::TestCertificates(*std::move(pki));
  }
  void TearDown() override {
    if (pki_ == nullptr) return;
    std::error_code ignored;
    std::filesystem::remove_all(pki_->dir, ignored);
    delete pki_;
    pki_ = nullptr;
  }

 private:
  static testing::TestCertificates* pki_;
};
testing::TestCertificates* TestPki::pki_ = nullptr;
::testing::Environment* const kTestPkiEnvironment =
    ::testing::AddGlobalTestEnvironment(new TestPki);

// Every server of the catalogue serves TLS with the run's server certificate.
absl::StatusOr<std::unique_ptr<testing::ServerProcess>> StartServer(
    const std::vector<std::string>& extra_flags) {
  if (TestPki::Get() == nullptr) return absl::FailedPreconditionError("no test certificates");
  std::vector<std::string> flags = TestPki::Get()->ServerFlags();
  flags.insert(flags.end(), {"--eval-interval", "100ms", "--shutdown-grace", "1s"});
  flags.insert(flags.end(), extra_flags.begin(), extra_flags.end());
  return testing::ServerProcess::Start(testing::BinaryPath("KLDRIFTD", "server/kldriftd"), flags);
}

// A TLS channel to `server` that trusts only the run's CA.
std::shared_ptr<grpc::Channel> Channel(const testing::ServerProcess& server) {
  return testing::TlsChannel(server.address(), TestPki::Get()->ca.cert_pem);
}

// ---------------------------------------------------------------------------------------------
// Streams of every kind, and a valid reference and batch for each.

enum class Kind { kNumeric, kCategorical, kPreBinned, kGaussian, kPolicy };

// Windows long enough that nothing expires while the suite runs, and a sample floor no row
// reaches, so alert states never change under a row's feet.
v1::AlertPolicy StablePolicy() {
  v1::AlertPolicy policy;
  *policy.add_windows() = Seconds(3600);
  *policy.add_windows() = Seconds(86400);
  policy.set_min_samples(1e9);
  return policy;
}

v1::PutReferenceRequest ValidReference(const v1::StreamId& stream, Kind kind) {
  v1::PutReferenceRequest request;
  *request.mutable_stream() = stream;
  *request.mutable_policy() = StablePolicy();
  switch (kind) {
    case Kind::kNumeric:
      // Full layout: [< 0, [0, 1), [1, 2), [2, 3), >= 3, NaN].
      for (double e : {0.0, 1.0, 2.0, 3.0}) request.mutable_numeric()->add_edges(e);
      for (double c : {10.0, 20.0, 30.0}) request.mutable_counts()->add_counts(c);
      break;
    case Kind::kCategorical:
      for (const char* c : {"a", "b", "c"}) request.mutable_categorical()->add_categories(c);
      for (double c : {5.0, 5.0, 5.0}) request.mutable_counts()->add_counts(c);
      break;
    case Kind::kPreBinned:
      request.mutable_pre_binned()->set_bins(3);
      for (double c : {1.0, 2.0, 3.0}) request.mutable_counts()->add_counts(c);
      break;
    case Kind::kGaussian:
      for (double m : {0.0, 0.0}) request.mutable_gaussian()->add_mean(m);
      for (double v : {1.0, 1.0}) request.mutable_gaussian()->add_var(v);
      break;
    case Kind::kPolicy:
      request.mutable_paired_log_probs();
      break;
  }
  return request;
}

// Observations in ValidBatch(kind).
double ValidSamples(Kind kind) {
  switch (kind) {
    case Kind::kNumeric:
      return 6;
    case Kind::kCategorical:
      return 4;
    case Kind::kPreBinned:
      return 3;
    case Kind::kGaussian:
      return 4;
    case Kind::kPolicy:
      return 3;
  }
  return 0;
}

v1::IngestRequest ValidBatch(const v1::StreamId& stream, Kind kind, const std::string& client,
                             uint64_t sequence) {
  v1::IngestRequest request;
  request.set_client_id(client);
  request.set_sequence(sequence);
  request.set_model(stream.model());
  v1::StreamBatch* batch = request.add_streams();
  batch->set_model_version(stream.model_version());
  batch->set_signal(stream.signal());
  switch (kind) {
    case Kind::kNumeric:
      for (double c : {0.0, 1.0, 2.0, 3.0, 0.0, 0.0}) batch->mutable_histogram()->add_counts(c);
      break;
    case Kind::kCategorical:
      for (const char* l : {"a", "b", "c", "a"}) batch->mutable_labels()->add_labels(l);
      break;
    case Kind::kPreBinned:
      for (double c : {1.0, 1.0, 1.0}) batch->mutable_histogram()->add_counts(c);
      break;
    case Kind::kGaussian:
      batch->mutable_gaussian()->set_count(4);
      for (double s : {0.4, -0.4}) batch->mutable_gaussian()->add_sum(s);
      for (double s : {4.0, 4.0}) batch->mutable_gaussian()->add_sum_squares(s);
      break;
    case Kind::kPolicy:
      for (double lp : {-1.0, -0.5, -2.0}) batch->mutable_log_probs()->add_log_p_current(lp);
      for (double lp : {-1.2, -0.4, -1.5}) batch->mutable_log_probs()->add_log_p_reference(lp);
      break;
  }
  return request;
}

// ---------------------------------------------------------------------------------------------
// Client-side helpers over one server.

const v1::StreamId& Canary() {
  static const v1::StreamId* const canary = new v1::StreamId(Stream("canary", "score"));
  return *canary;
}

// Samples of the first window of `stream` (-1 if GetDrift fails).
double Samples(KlDrift::Stub& stub, const v1::StreamId& stream) {
  v1::GetDriftRequest request;
  *request.mutable_stream() = stream;
  v1::GetDriftResponse response;
  grpc::Status status = stub.GetDrift(Context().get(), request, &response);
  if (!status.ok() || response.reports_size() == 0) return -1;
  return response.reports(0).samples();
}

// Puts a valid reference of `kind` on `stream`.
void PutValid(KlDrift::Stub& stub, const v1::StreamId& stream, Kind kind) {
  v1::PutReferenceResponse response;
  grpc::Status status = stub.PutReference(Context().get(), ValidReference(stream, kind), &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
}

// One Ingest stream carrying `requests`; waits until `expect_acked` is acknowledged with no errors.
void IngestOk(KlDrift::Stub& stub, const std::vector<v1::IngestRequest>& requests,
              uint64_t expect_acked) {
  auto context = Context(kStreamDeadline);
  auto stream = stub.Ingest(context.get());
  for (const v1::IngestRequest& r : requests) ASSERT_TRUE(stream->Write(r));
  v1::IngestResponse response;
  uint64_t acked = 0;
  while (acked < expect_acked && stream->Read(&response)) {
    EXPECT_EQ(response.errors_size(), 0) << response.ShortDebugString();
    acked = response.acked_sequence();
  }
  EXPECT_EQ(acked, expect_acked);
  stream->WritesDone();
  while (stream->Read(&response)) {
  }
  grpc::Status status = stream->Finish();
  EXPECT_TRUE(status.ok()) << status.error_message();
}

// Everything a client can read: every stream's latest reference, GetReference and every window's
// report (all measures, 100 top bins, alert state), evaluation times left out.
std::string StateOf(KlDrift::Stub& stub) {
  std::string state;
  std::string token;
  do {
    v1::ListReferencesRequest list;
    list.set_page_size(1000);
    list.set_page_token(token);
    v1::ListReferencesResponse page;
    grpc::Status status = stub.ListReferences(Context().get(), list, &page);
    if (!status.ok()) return absl::StrCat("ListReferences failed: ", status.error_message());
    for (const v1::Reference& listed : page.references()) {
      absl::StrAppend(&state, "listed: ", listed.ShortDebugString(), "\n");
      v1::GetReferenceRequest get;
      *get.mutable_stream() = listed.stream();
      v1::Reference ref;
      status = stub.GetReference(Context().get(), get, &ref);
      absl::StrAppend(&state, "  reference: ", status.error_code(), " ", ref.ShortDebugString(),
                      "\n");
      v1::GetDriftRequest drift;
      *drift.mutable_stream() = listed.stream();
      drift.set_top_bins(100);
      v1::GetDriftResponse reports;
      status = stub.GetDrift(Context().get(), drift, &reports);
      absl::StrAppend(&state, "  drift: ", status.error_code(), "\n");
      for (v1::DriftReport& report : *reports.mutable_reports()) {
        report.clear_evaluated_at();
        absl::StrAppend(&state, "    ", report.ShortDebugString(), "\n");
      }
    }
    token = page.next_page_token();
  } while (!token.empty());
  return state;
}

// Health says SERVING, and reads of the canary work.
void ExpectHealthy(const testing::ServerProcess& server) {
  auto health = grpc::health::v1::Health::NewStub(Channel(server));
  grpc::health::v1::HealthCheckRequest request;
  grpc::health::v1::HealthCheckResponse response;
  grpc::Status status = health->Check(Context().get(), request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.status(), grpc::health::v1::HealthCheckResponse::SERVING);
  auto stub = KlDrift::NewStub(Channel(server));
  v1::GetReferenceRequest get;
  *get.mutable_stream() = Canary();
  v1::Reference ref;
  status = stub->GetReference(Context().get(), get, &ref);
  EXPECT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(Samples(*stub, Canary()), ValidSamples(Kind::kNumeric));
}

// A fresh server gets the canary: a numeric stream with one batch in its windows.
void PlantCanary(const testing::ServerProcess& server) {
  auto stub = KlDrift::NewStub(Channel(server));
  ASSERT_NO_FATAL_FAILURE(PutValid(*stub, Canary(), Kind::kNumeric));
  ASSERT_NO_FATAL_FAILURE(
      IngestOk(*stub, {ValidBatch(Canary(), Kind::kNumeric, "canary-loader", 1)}, 1));
}

// The server most rows share: started on first use, stopped after the last test.
class SharedServer : public ::testing::Environment {
 public:
  static testing::ServerProcess* Get() {
    if (server_ == nullptr) {
      absl::StatusOr<std::unique_ptr<testing::ServerProcess>> server = StartServer({
          "--max-bins",
          absl::StrCat(kMaxBins),
          "--max-dimensions",
          absl::StrCat(kMaxDimensions),
          "--max-batch-observations",
          absl::StrCat(kMaxBatchObservations),
          "--max-receive-message-bytes",
          absl::StrCat(kMaxReceiveMessageBytes),
      });
      if (!server.ok()) {
        ADD_FAILURE() << server.status();
        return nullptr;
      }
      server_ = server->release();
      PlantCanary(*server_);
    }
    return server_;
  }
  // A server that crashed or reported a sanitizer error at exit fails the run.
  void TearDown() override {
    if (server_ == nullptr) return;
    const int status = server_->Stop();
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
        << "the shared kldriftd did not exit cleanly (status " << status << ")";
    delete server_;
    server_ = nullptr;
  }

 private:
  static testing::ServerProcess* server_;
};
testing::ServerProcess* SharedServer::server_ = nullptr;
::testing::Environment* const kSharedServerEnvironment =
    ::testing::AddGlobalTestEnvironment(new SharedServer);

// ---------------------------------------------------------------------------------------------
// The table.

// What a unary (or server-streaming) row calls; returns the call's status.
struct CallEnv {
  KlDrift::Stub& stub;
  const testing::ServerProcess& server;
  const v1::StreamId& target;
};

struct Row {
  std::string name;            // The test's name, and the README row's "test" column.
  Kind kind = Kind::kNumeric;  // The kind of the row's target stream.
  // Exactly one of: a change to a valid PutReference of the target; a change to a valid Ingest
  // batch for the target (sent after one acknowledged batch on the same stream); any call.
  std::function<void(v1::PutReferenceRequest&)> put;
  std::function<void(v1::IngestRequest&)> batch;
  std::function<grpc::Status(CallEnv&)> call;
  grpc::StatusCode code = grpc::StatusCode::OK;
  std::string message;             // A substring of the message: what to fix.
  std::vector<std::string> flags;  // Non-empty: a server of its own with these flags.
  bool first_on_stream = false;    // The bad batch opens its Ingest stream (and a second one).
  bool second_stream = false;      // The target's model also has a numeric stream "t".
};

void PrintTo(const Row& row, std::ostream* os) { *os << row.name; }

// With KLDRIFT_CATALOGUE_PRINT set, each row prints what the server answered (to refresh the
// README's table).
void PrintAnswer(const std::string& row, int code, const std::string& message) {
  if (std::getenv("KLDRIFT_CATALOGUE_PRINT") != nullptr) {
    std::fprintf(stderr, "catalogue | %s | %d | %s\n", row.c_str(), code, message.c_str());
  }
}

Row Put(std::string name, Kind kind, std::function<void(v1::PutReferenceRequest&)> change,
        grpc::StatusCode code, std::string message) {
  Row row;
  row.name = std::move(name);
  row.kind = kind;
  row.put = std::move(change);
  row.code = code;
  row.message = std::move(message);
  return row;
}

// The export of the target stream's model, for the ImportModel rows.
grpc::Status ExportTarget(CallEnv& env, v1::ModelExport* out) {
  v1::ExportModelRequest request;
  request.set_model(env.target.model());
  return env.stub.ExportModel(Context().get(), request, out);
}

Row Batch(std::string name, Kind kind, std::function<void(v1::IngestRequest&)> change,
          grpc::StatusCode code, std::string message) {
  Row row;
  row.name = std::move(name);
  row.kind = kind;
  row.batch = std::move(change);
  row.code = code;
  row.message = std::move(message);
  return row;
}

Row Call(std::string name, Kind kind, std::function<grpc::Status(CallEnv&)> call,
         grpc::StatusCode code, std::string message) {
  Row row;
  row.name = std::move(name);
  row.kind = kind;
  row.call = std::move(call);
  row.code = code;
  row.message = std::move(message);
  return row;
}

Row WithFlags(Row row, std::vector<std::string> flags) {
  row.flags = std::move(flags);
  return row;
}

Row FirstOnStream(Row row) {
  row.first_on_stream = true;
  return row;
}

Row WithSecondStream(Row row) {
  row.second_stream = true;
  return row;
}

void SetEdges(v1::PutReferenceRequest& r, const std::vector<double>& edges) {
  r.mutable_numeric()->clear_edges();
  for (double e : edges) r.mutable_numeric()->add_edges(e);
}

void SetCounts(v1::PutReferenceRequest& r, const std::vector<double>& counts) {
  r.mutable_counts()->clear_counts();
  for (double c : counts) r.mutable_counts()->add_counts(c);
}

void SetHistogram(v1::IngestRequest& r, const std::vector<double>& counts) {
  v1::Counts* histogram = r.mutable_streams(0)->mutable_histogram();
  histogram->clear_counts();
  for (double c : counts) histogram->add_counts(c);
}

void SetValues(v1::IngestRequest& r, const std::vector<double>& values) {
  v1::Values* out = r.mutable_streams(0)->mutable_values();
  out->clear_values();
  for (double v : values) out->add_values(v);
}

void SetProbabilities(v1::IngestRequest& r, const std::vector<double>& p) {
  v1::ProbabilityVectors* out = r.mutable_streams(0)->mutable_probabilities();
  out->clear_probabilities();
  for (double v : p) out->add_probabilities(v);
}

void SetLogProbs(v1::IngestRequest& r, const std::vector<double>& current,
                 const std::vector<double>& reference) {
  v1::LogProbPairs* out = r.mutable_streams(0)->mutable_log_probs();
  out->clear_log_p_current();
  out->clear_log_p_reference();
  for (double v : current) out->add_log_p_current(v);
  for (double v : reference) out->add_log_p_reference(v);
}

void SetEventTime(v1::IngestRequest& r, absl::Time t) {
  r.mutable_event_time()->set_seconds(absl::ToUnixSeconds(t));
}

grpc::Status GetDriftWith(CallEnv& env, const std::function<void(v1::GetDriftRequest&)>& change) {
  v1::GetDriftRequest request;
  *request.mutable_stream() = env.target;
  change(request);
  v1::GetDriftResponse response;
  return env.stub.GetDrift(Context().get(), request, &response);
}

grpc::Status Watch(CallEnv& env, const v1::StreamId& stream) {
  v1::WatchDriftRequest request;
  *request.mutable_stream() = stream;
  auto context = Context();
  auto reader = env.stub.WatchDrift(context.get(), request);
  v1::DriftReport report;
  while (reader->Read(&report)) {
  }
  return reader->Finish();
}

const std::string kLongName(129, 'x');

std::vector<Row> CatalogueRows() {
  using Code = grpc::StatusCode;
  const Code kInvalid = Code::INVALID_ARGUMENT;
  const Code kNotFound = Code::NOT_FOUND;
  const Code kPrecondition = Code::FAILED_PRECONDITION;
  const Code kExhausted = Code::RESOURCE_EXHAUSTED;
  using PutRef = v1::PutReferenceRequest;
  using Req = v1::IngestRequest;
  return {
      // ---- PutReference: bins.
      Put(
          "NumericEdgesNotIncreasing", Kind::kNumeric,
          [](PutRef& r) {
            SetEdges(r, {0, 2, 1, 3});
          },
          kInvalid, "strictly increasing"),
      Put(
          "NumericEdgesRepeated", Kind::kNumeric,
          [](PutRef& r) {
            SetEdges(r, {0, 1, 1, 3});
          },
          kInvalid, "is not greater than edges[1]"),
      Put(
          "NumericEdgeNaN", Kind::kNumeric,
          [](PutRef& r) {
            SetEdges(r, {0, kNaN, 2, 3});
          },
          kInvalid, "is not finite"),
      Put(
          "NumericEdgeInfinite", Kind::kNumeric,
          [](PutRef& r) {
            SetEdges(r, {0, 1, 2, kInf});
          },
          kInvalid, "is not finite"),
      Put(
          "NumericOneEdge", Kind::kNumeric, [](PutRef& r) { SetEdges(r, {0}); }, kInvalid,
          "at least 2 bin edges"),
      Put(
          "CategoriesDuplicated", Kind::kCategorical,
          [](PutRef& r) { r.mutable_categorical()->set_categories(2, "a"); }, kInvalid,
          "appears twice"),
      Put(
          "CategoryEmpty", Kind::kCategorical,
          [](PutRef& r) { r.mutable_categorical()->set_categories(1, ""); }, kInvalid,
          "empty string"),
      Put(
          "CategoriesNone", Kind::kCategorical,
          [](PutRef& r) { r.mutable_categorical()->clear_categories(); }, kInvalid,
          "at least one category"),
      Put(
          "PreBinnedZeroBins", Kind::kPreBinned,
          [](PutRef& r) { r.mutable_pre_binned()->set_bins(0); }, kInvalid, "at least one bin"),
      Put(
          "ReferenceWithoutKind", Kind::kNumeric, [](PutRef& r) { r.clear_numeric(); }, kInvalid,
          "has no kind"),
      // ---- PutReference: counts and data.
      Put(
          "ReferenceCountNegative", Kind::kNumeric,
          [](PutRef& r) {
            SetCounts(r, {10, -1, 30});
          },
          kInvalid, "counts are integers >= 0"),
      Put(
          "ReferenceCountNonInteger", Kind::kNumeric,
          [](PutRef& r) {
            SetCounts(r, {10, 2.5, 30});
          },
          kInvalid, "counts are integers >= 0"),
      Put(
          "ReferenceCountNaN", Kind::kNumeric,
          [](PutRef& r) {
            SetCounts(r, {10, kNaN, 30});
          },
          kInvalid, "counts are integers >= 0"),
      Put(
          "ReferenceCountInfinite", Kind::kNumeric,
          [](PutRef& r) {
            SetCounts(r, {10, kInf, 30});
          },
          kInvalid, "counts are integers >= 0"),
      Put(
          "ReferenceWrongNumberOfCounts", Kind::kNumeric,
          [](PutRef& r) {
            SetCounts(r, {10, 20, 30, 40});
          },
          kInvalid, "got 4 counts; expected 3 (one per bin) or 6"),
      Put(
          "ReferenceAllCountsZero", Kind::kNumeric,
          [](PutRef& r) {
            SetCounts(r, {0, 0, 0});
          },
          kInvalid, "every count is 0"),
      Put(
          "ReferenceCountsOverflowDouble", Kind::kNumeric,
          [](PutRef& r) {
            SetCounts(r, {1e308, 1e308, 1e308});
          },
          kInvalid, "more than a double can hold"),
      Put(
          "ReferenceWithoutData", Kind::kNumeric, [](PutRef& r) { r.clear_counts(); }, kInvalid,
          "needs exactly one of counts, values, labels or from_window"),
      Put(
          "RawValuesForCategoricalReference", Kind::kCategorical,
          [](PutRef& r) { r.mutable_values()->add_values(1.0); }, kInvalid,
          "raw values need a numeric reference"),
      Put(
          "LabelsForNumericReference", Kind::kNumeric,
          [](PutRef& r) { r.mutable_labels()->add_labels("a"); }, kInvalid,
          "labels need a categorical reference"),
      Put(
          "FromWindowUnknownStream", Kind::kNumeric,
          [](PutRef& r) {
            *r.mutable_from_window()->mutable_stream() = Stream("no-such-model", "s");
            *r.mutable_from_window()->mutable_window() = Seconds(3600);
          },
          kNotFound, "to take a window from"),
      Put(
          "FromWindowNotInPolicy", Kind::kNumeric,
          [](PutRef& r) { *r.mutable_from_window()->mutable_window() = Seconds(300); }, kNotFound,
          "has no 5m window; its windows are 1h, 24h"),
      Put(
          "FromWindowDifferentBins", Kind::kNumeric,
          [](PutRef& r) {
            SetEdges(r, {0, 10});
            *r.mutable_from_window()->mutable_window() = Seconds(3600);
          },
          kPrecondition, "do not match this reference's bins"),
      // ---- PutReference: Gaussian and paired log-probs.
      Put(
          "GaussianVarianceZero", Kind::kGaussian,
          [](PutRef& r) { r.mutable_gaussian()->set_var(0, 0); }, kInvalid,
          "variances must be finite and > 0"),
      Put(
          "GaussianVarianceNegative", Kind::kGaussian,
          [](PutRef& r) { r.mutable_gaussian()->set_var(1, -1); }, kInvalid,
          "variances must be finite and > 0"),
      Put(
          "GaussianVarianceNaN", Kind::kGaussian,
          [](PutRef& r) { r.mutable_gaussian()->set_var(0, kNaN); }, kInvalid,
          "variances must be finite and > 0"),
      Put(
          "GaussianMeanInfinite", Kind::kGaussian,
          [](PutRef& r) { r.mutable_gaussian()->set_mean(0, -kInf); }, kInvalid,
          "mean[0] is not finite"),
      Put(
          "GaussianVarLengthMismatch", Kind::kGaussian,
          [](PutRef& r) { r.mutable_gaussian()->mutable_var()->RemoveLast(); }, kInvalid,
          "mean has 2 dimensions but var has 1"),
      Put(
          "GaussianNoDimensions", Kind::kGaussian, [](PutRef& r) { r.mutable_gaussian()->Clear(); },
          kInvalid, "at least one dimension"),
      Put(
          "GaussianWithCounts", Kind::kGaussian,
          [](PutRef& r) {
            SetCounts(r, {1, 2});
          },
          kInvalid, "takes its mean and variance"),
      Put(
          "PairedLogProbsWithCounts", Kind::kPolicy,
          [](PutRef& r) {
            SetCounts(r, {1, 2});
          },
          kInvalid, "has no distribution"),
      // ---- PutReference: policy.
      Put(
          "PolicyUnknownMeasure", Kind::kNumeric,
          [](PutRef& r) { r.mutable_policy()->set_measure("kl"); }, kInvalid,
          "unknown measure \"kl\"; use one of"),
      Put(
          "PolicyCriticalBelowWarn", Kind::kNumeric,
          [](PutRef& r) {
            r.mutable_policy()->set_warn_threshold(0.5);
            r.mutable_policy()->set_critical_threshold(0.1);
          },
          kInvalid, "is below warn_threshold"),
      Put(
          "PolicyClearNotBelowWarn", Kind::kNumeric,
          [](PutRef& r) {
            r.mutable_policy()->set_warn_threshold(0.1);
            r.mutable_policy()->set_clear_threshold(0.2);
          },
          kInvalid, "must be below warn_threshold"),
      Put(
          "PolicyAlphaNegative", Kind::kNumeric,
          [](PutRef& r) { r.mutable_policy()->set_alpha(-1); }, kInvalid,
          "it must be a finite number >= 0"),
      Put(
          "PolicyMaxPValueZero", Kind::kNumeric,
          [](PutRef& r) { r.mutable_policy()->set_max_p_value(0); }, kInvalid, "must be in (0, 1]"),
      Put(
          "PolicyWindowNotWholeSeconds", Kind::kNumeric,
          [](PutRef& r) {
            google::protobuf::Duration* w = r.mutable_policy()->add_windows();
            w->set_seconds(60);
            w->set_nanos(500000000);
          },
          kInvalid, "windows are whole seconds > 0"),
      Put(
          "PolicyWindowInvalidDuration", Kind::kNumeric,
          [](PutRef& r) { r.mutable_policy()->mutable_windows(0)->set_nanos(-5); }, kInvalid,
          "policy.windows[0] is not a valid duration"),
      Put(
          "PolicyWindowRepeated", Kind::kNumeric,
          [](PutRef& r) { *r.mutable_policy()->add_windows() = Seconds(3600); }, kInvalid,
          "window 1h is listed twice"),
      Put(
          "PolicySubBucketsOutOfRange", Kind::kNumeric,
          [](PutRef& r) { r.mutable_policy()->set_sub_buckets(1); }, kInvalid,
          "sub_buckets = 1 is outside [2, 120]"),
      Put(
          "PolicyForDurationNegative", Kind::kNumeric,
          [](PutRef& r) { *r.mutable_policy()->mutable_for_duration() = Seconds(-1); }, kInvalid,
          "for_duration must not be negative"),
      // ---- Names (PutReference; the same checks guard every RPC).
      Put(
          "ModelEmpty", Kind::kNumeric, [](PutRef& r) { r.mutable_stream()->set_model(""); },
          kInvalid, "model is empty; give 1-128 characters"),
      Put(
          "SignalEmpty", Kind::kNumeric, [](PutRef& r) { r.mutable_stream()->set_signal(""); },
          kInvalid, "signal is empty; give 1-128 characters"),
      Put(
          "ModelTooLong", Kind::kNumeric,
          [](PutRef& r) { r.mutable_stream()->set_model(kLongName); }, kInvalid,
          "model is 129 characters long; the limit is 128"),
      Put(
          "SignalTooLong", Kind::kNumeric,
          [](PutRef& r) { r.mutable_stream()->set_signal(kLongName); }, kInvalid,
          "signal is 129 characters long; the limit is 128"),
      Put(
          "ModelVersionTooLong", Kind::kNumeric,
          [](PutRef& r) { r.mutable_stream()->set_model_version(kLongName); }, kInvalid,
          "model_version is 129 characters long; the limit is 128"),
      Put(
          "ModelWithSpace", Kind::kNumeric,
          [](PutRef& r) { r.mutable_stream()->set_model("fraud scorer"); }, kInvalid,
          "has the character ' ' at position 5; names use only [A-Za-z0-9._:/-]"),
      Put(
          "SignalNonAscii", Kind::kNumeric,
          [](PutRef& r) {
            r.mutable_stream()->set_signal(
                "d\xc3\xa9"
                "cision");
          },
          kInvalid, "has the character 0xc3 at position 1"),
      Put(
          "ModelVersionControlCharacter", Kind::kNumeric,
          [](PutRef& r) { r.mutable_stream()->set_model_version(std::string("v1\0x", 4)); },
          kInvalid, "has the character 0x0 at position 2"),
      // ---- PutReference: limits.
      Put(
          "TooManyNumericBins", Kind::kNumeric,
          [](PutRef& r) {
            SetEdges(r, {});
            for (int e = 0; e < kMaxBins - 1; ++e) r.mutable_numeric()->add_edges(e);
          },
          kExhausted, "63 edges make 65 bins (with the underflow, overflow and NaN buckets)"),
      Put(
          "TooManyCategories", Kind::kCategorical,
          [](PutRef& r) {
            r.mutable_categorical()->clear_categories();
            for (int c = 0; c < kMaxBins; ++c) {
              r.mutable_categorical()->add_categories(absl::StrCat("c", c));
            }
          },
          kExhausted,
          "64 categories make 65 bins (with the unseen bucket), over the server's limit "
          "of 64 bins per reference (--max-bins)"),
      Put(
          "TooManyPreBinnedBins", Kind::kPreBinned,
          [](PutRef& r) { r.mutable_pre_binned()->set_bins(kMaxBins + 1); }, kExhausted,
          "(--max-bins)"),
      Put(
          "TooManyGaussianDimensions", Kind::kGaussian,
          [](PutRef& r) {
            for (int d = 2; d <= kMaxDimensions; ++d) {
              r.mutable_gaussian()->add_mean(0);
              r.mutable_gaussian()->add_var(1);
            }
          },
          kExhausted, "(--max-dimensions)"),
      WithFlags(Put(
                    "TooManyStreams", Kind::kNumeric,
                    [](PutRef& r) { r.mutable_stream()->set_signal("one-too-many"); }, kExhausted,
                    "maximum of 2 streams (--max-streams)"),
                {"--max-streams", "2"}),
      WithFlags(Put(
                    "TooManyStreamsOfOneModel", Kind::kNumeric,
                    [](PutRef& r) { r.mutable_stream()->set_signal("one-too-many"); }, kExhausted,
                    "streams (--max-streams-per-model)"),
                {"--max-streams-per-model", "1"}),
      Put(
          "OversizedPutReference", Kind::kNumeric,
          [](PutRef& r) {
            r.clear_counts();
            for (int v = 0; v < kMaxReceiveMessageBytes / 8 + 1; ++v) {
              r.mutable_values()->add_values(v % 3);
            }
          },
          kExhausted, "larger than max"),
      // ---- Reads.
      Call(
          "GetReferenceUnknownStream", Kind::kNumeric,
          [](CallEnv& env) {
            v1::GetReferenceRequest request;
            *request.mutable_stream() = Stream(env.target.model(), "no-such-signal");
            v1::Reference ref;
            return env.stub.GetReference(Context().get(), request, &ref);
          },
          kNotFound, "no reference for stream"),
      Call(
          "GetReferenceUnknownVersion", Kind::kNumeric,
          [](CallEnv& env) {
            v1::GetReferenceRequest request;
            *request.mutable_stream() = env.target;
            request.set_version(7);
            v1::Reference ref;
            return env.stub.GetReference(Context().get(), request, &ref);
          },
          kNotFound, "has no version 7; the latest is 1"),
      Call(
          "ListReferencesBadPageToken", Kind::kNumeric,
          [](CallEnv& env) {
            v1::ListReferencesRequest request;
            request.set_page_token("not a token");
            v1::ListReferencesResponse response;
            return env.stub.ListReferences(Context().get(), request, &response);
          },
          kInvalid, "page_token is not one this server issued"),
      Call(
          "ListReferencesIllegalModel", Kind::kNumeric,
          [](CallEnv& env) {
            v1::ListReferencesRequest request;
            request.set_model("fraud*");
            v1::ListReferencesResponse response;
            return env.stub.ListReferences(Context().get(), request, &response);
          },
          kInvalid, "has the character '*'"),
      Call(
          "DeleteReferenceUnknownStream", Kind::kNumeric,
          [](CallEnv& env) {
            v1::DeleteReferenceRequest request;
            *request.mutable_stream() = Stream(env.target.model(), "no-such-signal");
            v1::DeleteReferenceResponse response;
            return env.stub.DeleteReference(Context().get(), request, &response);
          },
          kNotFound, "no reference for stream"),
      Call(
          "GetDriftUnknownStream", Kind::kNumeric,
          [](CallEnv& env) {
            return GetDriftWith(env, [&](v1::GetDriftRequest& r) {
              *r.mutable_stream() = Stream(env.target.model(), "no-such-signal");
            });
          },
          kNotFound, "no reference for stream"),
      Call(
          "GetDriftWindowNotInPolicy", Kind::kNumeric,
          [](CallEnv& env) {
            return GetDriftWith(env,
                                [](v1::GetDriftRequest& r) { *r.mutable_window() = Seconds(300); });
          },
          kNotFound, "has no 5m window; its windows are 1h, 24h"),
      Call(
          "GetDriftInvalidWindow", Kind::kNumeric,
          [](CallEnv& env) {
            return GetDriftWith(env, [](v1::GetDriftRequest& r) {
              r.mutable_window()->set_seconds(1);
              r.mutable_window()->set_nanos(-1);
            });
          },
          kInvalid, "window is not a valid duration"),
      Call(
          "GetDriftShardKeyNamesAnotherModel", Kind::kNumeric,
          [](CallEnv& env) {
            v1::GetDriftRequest request;
            *request.mutable_stream() = env.target;
            auto context = Context();
            context->AddMetadata("x-kldrift-model", "another-model");
            v1::GetDriftResponse response;
            return env.stub.GetDrift(context.get(), request, &response);
          },
          kInvalid, "x-kldrift-model metadata names model \"another-model\" but the request is"),
      Call(
          "GetDriftTooManyTopBins", Kind::kNumeric,
          [](CallEnv& env) {
            return GetDriftWith(env, [](v1::GetDriftRequest& r) { r.set_top_bins(101); });
          },
          kInvalid, "top_bins = 101 exceeds the limit of 100"),
      Call(
          "WatchDriftVersionWithoutSignal", Kind::kNumeric,
          [](CallEnv& env) {
            v1::StreamId stream = Stream(env.target.model(), "");
            stream.set_model_version("v1");
            return Watch(env, stream);
          },
          kInvalid, "model_version without signal"),
      Call(
          "WatchDriftModelEmpty", Kind::kNumeric,
          [](CallEnv& env) { return Watch(env, Stream("", "")); }, kInvalid, "model is empty"),
      Call(
          "BackupRelativePath", Kind::kNumeric,
          [](CallEnv& env) {
            v1::BackupRequest request;
            request.set_directory("backups/today");
            v1::BackupResponse response;
            return env.stub.Backup(Context().get(), request, &response);
          },
          kInvalid, "must be an absolute path"),
      Call(
          "BackupExistingDirectory", Kind::kNumeric,
          [](CallEnv& env) {
            v1::BackupRequest request;
            request.set_directory(env.server.work_dir());
            v1::BackupResponse response;
            return env.stub.Backup(Context().get(), request, &response);
          },
          Code::ALREADY_EXISTS, "already exists; name a new one"),
      Call(
          "ExportModelUnknown", Kind::kNumeric,
          [](CallEnv& env) {
            v1::ExportModelRequest request;
            request.set_model("no-such-model");
            v1::ModelExport response;
            return env.stub.ExportModel(Context().get(), request, &response);
          },
          kNotFound, "model \"no-such-model\" has no streams on this server"),
      Call(
          "ImportModelThatExistsWithoutReplace", Kind::kNumeric,
          [](CallEnv& env) {
            v1::ImportModelRequest request;
            if (grpc::Status s = ExportTarget(env, request.mutable_model_export()); !s.ok()) {
              return s;
            }
            v1::ImportModelResponse response;
            return env.stub.ImportModel(Context().get(), request, &response);
          },
          kPrecondition, "streams on this server; import with replace"),
      Call(
          "ImportModelBadVersion", Kind::kNumeric,
          [](CallEnv& env) {
            v1::ImportModelRequest request;
            request.mutable_model_export()->set_model("imported");
            v1::Reference* version = request.mutable_model_export()->add_streams()->add_versions();
            *version->mutable_stream() = Stream("imported", "s");
            version->set_version(1);
            version->set_kind(v1::REFERENCE_KIND_NUMERIC);
            for (double e : {0.0, 2.0, 1.0}) version->mutable_numeric()->add_edges(e);
            request.set_replace(true);
            v1::ImportModelResponse response;
            return env.stub.ImportModel(Context().get(), request, &response);
          },
          kInvalid, "version 1 of stream imported//s in the export: "),
      Call(
          "ImportModelStreamOfAnotherModel", Kind::kNumeric,
          [](CallEnv& env) {
            v1::ImportModelRequest request;
            if (grpc::Status s = ExportTarget(env, request.mutable_model_export()); !s.ok()) {
              return s;
            }
            request.mutable_model_export()->set_model("renamed");
            v1::ImportModelResponse response;
            return env.stub.ImportModel(Context().get(), request, &response);
          },
          kInvalid, "of the export is not of model \"renamed\""),
      // ---- Ingest: the batch.
      Batch(
          "IngestBeforeReferenceExists", Kind::kNumeric,
          [](Req& r) { r.mutable_streams(0)->set_signal("no-reference-yet"); }, kPrecondition,
          "create one with PutReference"),
      Batch(
          "IngestNoStreams", Kind::kNumeric, [](Req& r) { r.clear_streams(); }, kInvalid,
          "the batch has no streams"),
      Batch(
          "IngestStreamWithoutData", Kind::kNumeric,
          [](Req& r) { r.mutable_streams(0)->clear_data(); }, kInvalid, "carries no data"),
      Batch(
          "IngestSameStreamTwice", Kind::kNumeric,
          [](Req& r) {
            const v1::StreamBatch copy = r.streams(0);
            *r.add_streams() = copy;
          },
          kInvalid, "appears twice in one batch"),
      WithSecondStream(Batch(
          "IngestOneBadStreamSpoilsTheBatch", Kind::kNumeric,
          [](Req& r) {
            // "s" is valid and checked first; "t" is not.
            v1::StreamBatch bad = r.streams(0);
            bad.set_signal("t");
            bad.mutable_histogram()->set_counts(1, -1);
            *r.add_streams() = bad;
          },
          kInvalid, "histogram counts are integers >= 0")),
      Batch(
          "IngestModelEmpty", Kind::kNumeric, [](Req& r) { r.set_model(""); }, kInvalid,
          "model is empty"),
      Batch(
          "IngestSignalIllegal", Kind::kNumeric,
          [](Req& r) { r.mutable_streams(0)->set_signal("score\n"); }, kInvalid,
          "has the character 0xa"),
      Batch(
          "IngestStaleReferenceVersion", Kind::kNumeric,
          [](Req& r) { r.mutable_streams(0)->set_reference_version(7); }, kPrecondition,
          "fetch the new bins"),
      Batch(
          "TooManyObservationsInABatch", Kind::kNumeric,
          [](Req& r) { SetValues(r, std::vector<double>(kMaxBatchObservations + 1, 0.5)); },
          kExhausted, "(--max-batch-observations): split it"),
      // ---- Ingest: client ids and sequence numbers.
      Batch(
          "ClientIdChangedWithinAStream", Kind::kNumeric,
          [](Req& r) { r.set_client_id("someone-else"); }, kInvalid, "open a stream per client id"),
      FirstOnStream(Batch(
          "ClientIdEmpty", Kind::kNumeric, [](Req& r) { r.set_client_id(""); }, kInvalid,
          "client_id is empty")),
      FirstOnStream(Batch(
          "ClientIdIllegal", Kind::kNumeric, [](Req& r) { r.set_client_id("host 1"); }, kInvalid,
          "client_id \"host 1\" has the character ' '")),
      FirstOnStream(Batch(
          "ClientIdTooLong", Kind::kNumeric, [](Req& r) { r.set_client_id(kLongName); }, kInvalid,
          "client_id is 129 characters long; the limit is 128")),
      FirstOnStream(Batch(
          "SequenceZero", Kind::kNumeric, [](Req& r) { r.set_sequence(0); }, kInvalid,
          "sequence numbers start at 1")),
      Batch(
          "SequenceGoingBackwards", Kind::kNumeric, [](Req& r) { r.set_sequence(9); }, kInvalid,
          "sequence 9 after 10 on the same stream; sequence numbers must increase"),
      Batch(
          "SequenceRepeatedWithinAStream", Kind::kNumeric, [](Req& r) { r.set_sequence(10); },
          kInvalid, "sequence 10 after 10 on the same stream"),
      // ---- Ingest: event times.
      Batch(
          "EventTimeInTheFuture", Kind::kNumeric,
          [](Req& r) { SetEventTime(r, absl::Now() + absl::Minutes(5)); }, kInvalid,
          "in the future"),
      Batch(
          "EventTimeFarInTheFuture", Kind::kNumeric,
          [](Req& r) { r.mutable_event_time()->set_seconds(std::numeric_limits<int64_t>::max()); },
          kInvalid, "in the future"),
      Batch(
          "EventTimeOlderThanTheLongestWindow", Kind::kNumeric,
          [](Req& r) { SetEventTime(r, absl::Now() - absl::Hours(25)); }, kInvalid,
          "longest window (24h)"),
      Batch(
          "EventTimeFarInThePast", Kind::kNumeric,
          [](Req& r) { r.mutable_event_time()->set_seconds(std::numeric_limits<int64_t>::min()); },
          kInvalid, "longest window (24h)"),
      Batch(
          "EventTimeNanosOutOfRange", Kind::kNumeric,
          [](Req& r) { r.mutable_event_time()->set_nanos(1000000000); }, kInvalid,
          "event_time.nanos is out of range"),
      // ---- Ingest: histograms, values, labels.
      Batch(
          "HistogramWrongNumberOfBins", Kind::kNumeric,
          [](Req& r) {
            SetHistogram(r, {1, 2, 3});
          },
          kPrecondition, "the histogram has 3 bins but reference version 1 has 6"),
      Batch(
          "HistogramCountNegative", Kind::kNumeric,
          [](Req& r) {
            SetHistogram(r, {0, 1, -2, 3, 0, 0});
          },
          kInvalid, "bin 2 has count -2; histogram counts are integers >= 0"),
      Batch(
          "HistogramCountNonInteger", Kind::kNumeric,
          [](Req& r) {
            SetHistogram(r, {0, 1, 2.5, 3, 0, 0});
          },
          kInvalid, "histogram counts are integers >= 0"),
      Batch(
          "HistogramCountNaN", Kind::kNumeric,
          [](Req& r) {
            SetHistogram(r, {0, 1, 2, 3, 0, kNaN});
          },
          kInvalid, "histogram counts are integers >= 0"),
      Batch(
          "HistogramCountInfinite", Kind::kNumeric,
          [](Req& r) {
            SetHistogram(r, {0, 1, 2, kInf, 0, 0});
          },
          kInvalid, "histogram counts are integers >= 0"),
      Batch(
          "HistogramCountBeyondExactIntegers", Kind::kNumeric,
          [](Req& r) {
            SetHistogram(r, {0, 1, 2, 1e308, 0, 0});
          },
          kInvalid, "at most 2^53"),
      Batch(
          "RawValuesForCategoricalStream", Kind::kCategorical, [](Req& r) { SetValues(r, {1.0}); },
          kPrecondition, "takes a histogram, labels or probability vectors, not raw values"),
      Batch(
          "LabelsForNumericStream", Kind::kNumeric,
          [](Req& r) { r.mutable_streams(0)->mutable_labels()->add_labels("a"); }, kPrecondition,
          "takes a histogram or raw values, not labels"),
      Batch(
          "GaussianStatisticsForNumericStream", Kind::kNumeric,
          [](Req& r) { r.mutable_streams(0)->mutable_gaussian()->set_count(1); }, kPrecondition,
          "not Gaussian statistics"),
      // ---- Ingest: probability vectors.
      Batch(
          "ProbabilitiesNotSummingToOne", Kind::kCategorical,
          [](Req& r) {
            SetProbabilities(r, {0.2, 0.3, 0.4});
          },
          kInvalid, "sums to 0.9; each vector must sum to 1 within 1e-06"),
      Batch(
          "ProbabilitiesJustOutsideTolerance", Kind::kPreBinned,
          [](Req& r) {
            SetProbabilities(r, {0.5, 0.5, 1e-5});
          },
          kInvalid, "must sum to 1 within 1e-06"),
      Batch(
          "ProbabilityOutOfRange", Kind::kCategorical,
          [](Req& r) {
            SetProbabilities(r, {1.5, -0.5, 0});
          },
          kInvalid, "probabilities are in [0, 1]"),
      Batch(
          "ProbabilityNaN", Kind::kCategorical,
          [](Req& r) {
            SetProbabilities(r, {kNaN, 0.5, 0.5});
          },
          kInvalid, "probabilities are in [0, 1]"),
      Batch(
          "ProbabilitiesNotWholeVectors", Kind::kCategorical,
          [](Req& r) {
            SetProbabilities(r, {0.5, 0.5, 0, 1});
          },
          kInvalid, "not a whole number of vectors of 3"),
      // ---- Ingest: Gaussian statistics.
      Batch(
          "GaussianStatisticsWrongDimensions", Kind::kGaussian,
          [](Req& r) { r.mutable_streams(0)->mutable_gaussian()->add_sum(0); }, kPrecondition,
          "the reference has 2 dimensions"),
      Batch(
          "GaussianCountZero", Kind::kGaussian,
          [](Req& r) { r.mutable_streams(0)->mutable_gaussian()->set_count(0); }, kInvalid,
          "Gaussian count 0 must be > 0"),
      Batch(
          "GaussianSumNaN", Kind::kGaussian,
          [](Req& r) { r.mutable_streams(0)->mutable_gaussian()->set_sum(0, kNaN); }, kInvalid,
          "both must be finite, squares >= 0"),
      Batch(
          "GaussianSumOfSquaresNegative", Kind::kGaussian,
          [](Req& r) { r.mutable_streams(0)->mutable_gaussian()->set_sum_squares(1, -4); },
          kInvalid, "both must be finite, squares >= 0"),
      Batch(
          "GaussianStatisticsImpossible", Kind::kGaussian,
          [](Req& r) { r.mutable_streams(0)->mutable_gaussian()->set_sum(0, 10); }, kInvalid,
          "which no real values have (sum^2 <= count * sum of squares)"),
      // ---- Ingest: paired log-probs.
      Batch(
          "LogProbPositive", Kind::kPolicy,
          [](Req& r) {
            SetLogProbs(r, {-1, 0.5}, {-1, -1});
          },
          kInvalid, "log-probabilities are finite and <= 0"),
      Batch(
          "LogProbNaN", Kind::kPolicy,
          [](Req& r) {
            SetLogProbs(r, {-1, -1}, {kNaN, -1});
          },
          kInvalid, "log-probabilities are finite and <= 0"),
      Batch(
          "LogProbsUnpaired", Kind::kPolicy,
          [](Req& r) {
            SetLogProbs(r, {-1, -1}, {-1});
          },
          kInvalid, "pairs need equal, non-zero counts"),
  };
}

// ---------------------------------------------------------------------------------------------
// Running a row.

class CatalogueTest : public ::testing::Test {
 protected:
  // The shared server, or a server of its own (with the canary) if `flags` is non-empty.
  void UseServer(const std::vector<std::string>& flags) {
    if (flags.empty()) {
      server_ = SharedServer::Get();
      ASSERT_NE(server_, nullptr);
    } else {
      absl::StatusOr<std::unique_ptr<testing::ServerProcess>> own = StartServer(flags);
      ASSERT_TRUE(own.ok()) << own.status();
      own_server_ = *std::move(own);
      server_ = own_server_.get();
      ASSERT_NO_FATAL_FAILURE(PlantCanary(*server_));
    }
    stub_ = KlDrift::NewStub(Channel(*server_));
  }

  void TearDown() override {
    stub_.reset();
    if (own_server_ != nullptr) {
      const int status = own_server_->Stop();
      EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
          << "kldriftd did not exit cleanly (status " << status << ")";
    }
  }

  // The target stream of the running test: the model is the test's name.
  static v1::StreamId Target(const std::string& signal = "s") {
    const ::testing::TestInfo* info = ::testing::UnitTest::GetInstance()->current_test_info();
    std::string name = info->name();
    name = name.substr(name.rfind('/') + 1);
    return Stream(name, signal);
  }

  testing::ServerProcess* server_ = nullptr;
  std::unique_ptr<testing::ServerProcess> own_server_;
  std::unique_ptr<KlDrift::Stub> stub_;
};

class CatalogueRowTest : public CatalogueTest, public ::testing::WithParamInterface<Row> {
 protected:
  // A unary or server-streaming call: status and message, nothing changed.
  void RunCall(const Row& row, const v1::StreamId& target) {
    std::function<grpc::Status(CallEnv&)> call = row.call;
    if (row.put) {
      call = [&row](CallEnv& env) {
        v1::PutReferenceRequest request = ValidReference(env.target, row.kind);
        row.put(request);
        v1::PutReferenceResponse response;
        return env.stub.PutReference(Context().get(), request, &response);
      };
    }
    const std::string before = StateOf(*stub_);
    CallEnv env{*stub_, *server_, target};
    const grpc::Status status = call(env);
    PrintAnswer(row.name, status.error_code(), status.error_message());
    EXPECT_EQ(status.error_code(), row.code) << status.error_message();
    EXPECT_THAT(status.error_message(), HasSubstr(row.message));
    EXPECT_EQ(StateOf(*stub_), before);
  }

  // Sends `bad` on `stream` and reads acks until its batch error arrives.
  template <typename Stream>
  void ExpectBatchError(const Row& row, Stream& stream, const v1::IngestRequest& bad) {
    ASSERT_TRUE(stream.Write(bad));
    v1::IngestResponse response;
    while (stream.Read(&response)) {
      for (const v1::BatchError& error : response.errors()) {
        PrintAnswer(row.name, error.code(), error.message());
        EXPECT_EQ(error.sequence(), bad.sequence());
        EXPECT_EQ(error.code(), static_cast<int32_t>(row.code)) << error.message();
        EXPECT_THAT(error.message(), HasSubstr(row.message));
        return;
      }
    }
    ADD_FAILURE() << "the stream ended before the batch error arrived";
  }

  // An Ingest batch: an error in the acks, earlier acknowledged batches intact, and the stream
  // carries on.
  void RunBatch(const Row& row, const v1::StreamId& target) {
    const std::string client = absl::StrCat("client-", row.name);
    v1::IngestRequest bad = ValidBatch(target, row.kind, client, 11);
    row.batch(bad);
    auto context = Context(kStreamDeadline);
    auto stream = stub_->Ingest(context.get());
    v1::IngestResponse response;
    if (!row.first_on_stream) {
      ASSERT_TRUE(stream->Write(ValidBatch(target, row.kind, client, 10)));
      ASSERT_TRUE(stream->Read(&response));
      ASSERT_EQ(response.acked_sequence(), 10u);
      ASSERT_EQ(response.errors_size(), 0) << response.ShortDebugString();
    }
    const std::string before = StateOf(*stub_);
    const double samples_before = Samples(*stub_, target);
    ASSERT_NO_FATAL_FAILURE(ExpectBatchError(row, *stream, bad));
    EXPECT_EQ(StateOf(*stub_), before);

    // The stream carries on: the next batch is applied.
    ASSERT_TRUE(stream->Write(ValidBatch(target, row.kind, client, 12)));
    uint64_t acked = 0;
    while (acked < 12 && stream->Read(&response)) {
      EXPECT_EQ(response.errors_size(), 0) << response.ShortDebugString();
      acked = response.acked_sequence();
    }
    EXPECT_EQ(acked, 12u);
    stream->WritesDone();
    while (stream->Read(&response)) {
    }
    const grpc::Status status = stream->Finish();
    EXPECT_TRUE(status.ok()) << status.error_message();
    EXPECT_EQ(Samples(*stub_, target), samples_before + ValidSamples(row.kind));

    if (row.first_on_stream) {
      // The refused batch left nothing behind: on a new stream it gets the same answer.
      const std::string again = StateOf(*stub_);
      auto second_context = Context(kStreamDeadline);
      auto second = stub_->Ingest(second_context.get());
      ASSERT_NO_FATAL_FAILURE(ExpectBatchError(row, *second, bad));
      second->WritesDone();
      while (second->Read(&response)) {
      }
      EXPECT_TRUE(second->Finish().ok());
      EXPECT_EQ(StateOf(*stub_), again);
    }
  }
};

TEST_P(CatalogueRowTest, Row) {
  const Row& row = GetParam();
  ASSERT_NO_FATAL_FAILURE(UseServer(row.flags));
  // The target: a reference of the row's kind with one acknowledged batch in its windows.
  const v1::StreamId target = Target();
  ASSERT_NO_FATAL_FAILURE(PutValid(*stub_, target, row.kind));
  ASSERT_NO_FATAL_FAILURE(
      IngestOk(*stub_, {ValidBatch(target, row.kind, absl::StrCat("setup-", row.name), 1)}, 1));
  if (row.second_stream) {
    ASSERT_NO_FATAL_FAILURE(PutValid(*stub_, Target("t"), Kind::kNumeric));
  }
  if (row.batch) {
    ASSERT_NO_FATAL_FAILURE(RunBatch(row, target));
  } else {
    ASSERT_NO_FATAL_FAILURE(RunCall(row, target));
  }
  ExpectHealthy(*server_);
}

INSTANTIATE_TEST_SUITE_P(Catalogue, CatalogueRowTest, ::testing::ValuesIn(CatalogueRows()),
                         [](const ::testing::TestParamInfo<Row>& info) { return info.param.name; });

// ---------------------------------------------------------------------------------------------
// Rows that need more than one call.

// Counts of the target's first window, bin by bin (keyed by label), from GetDrift's top bins.
// current_share is smoothed: (count + alpha) / (samples + K * alpha).
std::map<std::string, double> WindowCounts(KlDrift::Stub& stub, const v1::StreamId& stream) {
  v1::GetDriftRequest request;
  *request.mutable_stream() = stream;
  request.set_top_bins(100);
  v1::GetDriftResponse response;
  grpc::Status status = stub.GetDrift(Context().get(), request, &response);
  EXPECT_TRUE(status.ok()) << status.error_message();
  std::map<std::string, double> counts;
  if (response.reports_size() == 0) return counts;
  const v1::DriftReport& report = response.reports(0);
  const v1::HistogramDrift& h = report.histogram();
  const double k = h.top_bins_size();
  for (const v1::BinContribution& bin : h.top_bins()) {
    counts[bin.label()] =
        std::round(bin.current_share() * (report.samples() + k * h.alpha()) - h.alpha());
  }
  return counts;
}

double NanMetric(const testing::ServerProcess& server, const v1::StreamId& stream) {
  absl::StatusOr<std::string> text = testing::HttpGet(server.metrics_port(), "/metrics");
  EXPECT_TRUE(text.ok()) << text.status();
  if (!text.ok()) return kNaN;
  return testing::MetricValue(
      *text, absl::StrCat("kldrift_stream_nan_observations_total{model=\"", stream.model(),
                          "\",model_version=\"", stream.model_version(), "\",signal=\"",
                          stream.signal(), "\"}"));
}

// Raw values with NaN or +-inf are accepted: counted in the NaN, overflow or underflow bucket,
// NaN also in kldrift_stream_nan_observations_total.
void ExpectValuesCounted(KlDrift::Stub& stub, const testing::ServerProcess& server,
                         const v1::StreamId& target, const std::vector<double>& values,
                         const std::string& bucket, double expect_nan) {
  ASSERT_NO_FATAL_FAILURE(PutValid(stub, target, Kind::kNumeric));
  const std::string client = absl::StrCat("client-", target.model());
  ASSERT_NO_FATAL_FAILURE(IngestOk(stub, {ValidBatch(target, Kind::kNumeric, client, 1)}, 1));
  const double nan_before = NanMetric(server, target);
  EXPECT_EQ(nan_before, 0);
  std::map<std::string, double> before = WindowCounts(stub, target);
  EXPECT_EQ(before[bucket], 0);

  v1::IngestRequest request = ValidBatch(target, Kind::kNumeric, client, 2);
  SetValues(request, values);
  ASSERT_NO_FATAL_FAILURE(IngestOk(stub, {request}, 2));

  std::map<std::string, double> after = WindowCounts(stub, target);
  const double special =
      std::count_if(values.begin(), values.end(), [](double v) { return !std::isfinite(v); });
  for (const auto& [label, count] : after) {
    SCOPED_TRACE(label);
    if (label == bucket) {
      EXPECT_EQ(count, before[label] + special);
    } else if (label == "[1, 2)") {
      EXPECT_EQ(count, before[label] + (values.size() - special));  // The finite values: 1.5.
    } else {
      EXPECT_EQ(count, before[label]);
    }
  }
  EXPECT_EQ(Samples(stub, target), ValidSamples(Kind::kNumeric) + values.size());
  EXPECT_EQ(NanMetric(server, target), nan_before + expect_nan);
  ExpectHealthy(server);
}

TEST_F(CatalogueTest, NanValuesCounted) {
  ASSERT_NO_FATAL_FAILURE(UseServer({}));
  ExpectValuesCounted(*stub_, *server_, Target(), {kNaN, 1.5, kNaN, -kNaN}, "NaN", 3);
}

TEST_F(CatalogueTest, PositiveInfinityCounted) {
  ASSERT_NO_FATAL_FAILURE(UseServer({}));
  ExpectValuesCounted(*stub_, *server_, Target(), {kInf, 1.5, kInf}, ">= 3", 0);
}

TEST_F(CatalogueTest, NegativeInfinityCounted) {
  ASSERT_NO_FATAL_FAILURE(UseServer({}));
  ExpectValuesCounted(*stub_, *server_, Target(), {-kInf, 1.5}, "< 0", 0);
}

// A reference built from raw values counts NaN and +-inf in its own buckets too.
TEST_F(CatalogueTest, NanInReferenceValuesCounted) {
  ASSERT_NO_FATAL_FAILURE(UseServer({}));
  v1::PutReferenceRequest request = ValidReference(Target(), Kind::kNumeric);
  request.clear_counts();
  for (double v : {kNaN, -kInf, 0.5, 1.5, 2.5, kInf, kNaN}) request.mutable_values()->add_values(v);
  request.set_view(v1::REFERENCE_VIEW_FULL);
  v1::PutReferenceResponse response;
  grpc::Status status = stub_->PutReference(Context().get(), request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_THAT(response.reference().bin_labels(),
              ::testing::ElementsAre("< 0", "[0, 1)", "[1, 2)", "[2, 3)", ">= 3", "NaN"));
  EXPECT_THAT(response.reference().counts(), ::testing::ElementsAre(1, 1, 1, 1, 1, 2));
  ExpectHealthy(*server_);
}

// A client id reused by a second live stream: the newer one takes over, the older one ends
// ABORTED; batches each acknowledged are intact.
TEST_F(CatalogueTest, ClientIdReusedByTwoLiveStreams) {
  ASSERT_NO_FATAL_FAILURE(UseServer({}));
  const v1::StreamId target = Target();
  ASSERT_NO_FATAL_FAILURE(PutValid(*stub_, target, Kind::kNumeric));
  const std::string client = "twice";
  auto old_context = Context(kStreamDeadline);
  auto old_stream = stub_->Ingest(old_context.get());
  ASSERT_TRUE(old_stream->Write(ValidBatch(target, Kind::kNumeric, client, 1)));
  v1::IngestResponse response;
  ASSERT_TRUE(old_stream->Read(&response));
  ASSERT_EQ(response.acked_sequence(), 1u);

  auto new_context = Context(kStreamDeadline);
  auto new_stream = stub_->Ingest(new_context.get());
  ASSERT_TRUE(new_stream->Write(ValidBatch(target, Kind::kNumeric, client, 2)));
  ASSERT_TRUE(new_stream->Read(&response));
  EXPECT_EQ(response.acked_sequence(), 2u);
  EXPECT_EQ(response.errors_size(), 0);

  // The older stream is finished by the server, whatever it writes.
  while (old_stream->Read(&response)) {
  }
  const grpc::Status old_status = old_stream->Finish();
  EXPECT_EQ(old_status.error_code(), grpc::StatusCode::ABORTED);
  EXPECT_THAT(old_status.error_message(), HasSubstr("a newer Ingest stream with this client id"));

  // The newer one carries on.
  ASSERT_TRUE(new_stream->Write(ValidBatch(target, Kind::kNumeric, client, 3)));
  ASSERT_TRUE(new_stream->Read(&response));
  EXPECT_EQ(response.acked_sequence(), 3u);
  new_stream->WritesDone();
  while (new_stream->Read(&response)) {
  }
  EXPECT_TRUE(new_stream->Finish().ok());
  EXPECT_EQ(Samples(*stub_, target), 3 * ValidSamples(Kind::kNumeric));
  ExpectHealthy(*server_);
}

// A sequence number that goes back across a reconnect is a resend: acknowledged, not applied
// twice, no error.
TEST_F(CatalogueTest, SequenceResentAfterReconnect) {
  ASSERT_NO_FATAL_FAILURE(UseServer({}));
  const v1::StreamId target = Target();
  ASSERT_NO_FATAL_FAILURE(PutValid(*stub_, target, Kind::kNumeric));
  ASSERT_NO_FATAL_FAILURE(IngestOk(*stub_,
                                   {ValidBatch(target, Kind::kNumeric, "resender", 1),
                                    ValidBatch(target, Kind::kNumeric, "resender", 2)},
                                   2));
  const std::string before = StateOf(*stub_);
  ASSERT_NO_FATAL_FAILURE(IngestOk(*stub_, {ValidBatch(target, Kind::kNumeric, "resender", 1)}, 2));
  EXPECT_EQ(StateOf(*stub_), before);
  EXPECT_EQ(Samples(*stub_, target), 2 * ValidSamples(Kind::kNumeric));
  ExpectHealthy(*server_);
}

// An Ingest message over --max-receive-message-bytes ends the stream with RESOURCE_EXHAUSTED;
// the batches acknowledged before it are intact and the client can reconnect.
TEST_F(CatalogueTest, OversizedIngestMessage) {
  ASSERT_NO_FATAL_FAILURE(UseServer({}));
  const v1::StreamId target = Target();
  ASSERT_NO_FATAL_FAILURE(PutValid(*stub_, target, Kind::kNumeric));
  const std::string client = "big-sender";
  auto context = Context(kStreamDeadline);
  auto stream = stub_->Ingest(context.get());
  ASSERT_TRUE(stream->Write(ValidBatch(target, Kind::kNumeric, client, 1)));
  v1::IngestResponse response;
  ASSERT_TRUE(stream->Read(&response));
  ASSERT_EQ(response.acked_sequence(), 1u);
  const std::string before = StateOf(*stub_);

  v1::IngestRequest big = ValidBatch(target, Kind::kNumeric, client, 2);
  SetValues(big, std::vector<double>(kMaxReceiveMessageBytes / 8 + 1, 0.5));
  stream->Write(big);  // May fail once the server has ended the call.
  while (stream->Read(&response)) {
    EXPECT_LT(response.acked_sequence(), 2u);
  }
  const grpc::Status status = stream->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << status.error_message();
  EXPECT_THAT(status.error_message(), HasSubstr("larger than max"));
  EXPECT_EQ(StateOf(*stub_), before);
  EXPECT_EQ(Samples(*stub_, target), ValidSamples(Kind::kNumeric));
  // Reconnected, the client goes on after its last acknowledged batch.
  ASSERT_NO_FATAL_FAILURE(IngestOk(*stub_, {ValidBatch(target, Kind::kNumeric, client, 2)}, 2));
  EXPECT_EQ(Samples(*stub_, target), 2 * ValidSamples(Kind::kNumeric));
  ExpectHealthy(*server_);
}

// Sends `bytes` as one message on an Ingest stream, through gRPC's generic stub (no
// IngestRequest involved), ends the stream's writes and returns how the stream ended. Any
// response to the message fails the test.
grpc::Status IngestRawMessage(const testing::ServerProcess& server, const std::string& bytes) {
  grpc::GenericStub stub(Channel(server));
  grpc::CompletionQueue queue;
  auto context = Context(kStreamDeadline);
  std::unique_ptr<grpc::GenericClientAsyncReaderWriter> call =
      stub.PrepareCall(context.get(), "/kldrift.v1.KlDrift/Ingest", &queue);
  // Each step waits for its own completion: one operation in flight at a time.
  const auto step = [&queue](intptr_t expected_tag) {
    void* tag = nullptr;
    bool ok = false;
    EXPECT_TRUE(queue.Next(&tag, &ok));
    EXPECT_EQ(reinterpret_cast<intptr_t>(tag), expected_tag);
    return ok;
  };
  call->StartCall(reinterpret_cast<void*>(1));
  step(1);
  grpc::Slice slice(bytes);
  grpc::ByteBuffer message(&slice, 1);
  call->Write(message, reinterpret_cast<void*>(2));
  step(2);
  call->WritesDone(reinterpret_cast<void*>(3));
  step(3);
  grpc::ByteBuffer response;
  call->Read(&response, reinterpret_cast<void*>(4));
  EXPECT_FALSE(step(4)) << "an acknowledgement of a message that is not an IngestRequest";
  grpc::Status status;
  call->Finish(&status, reinterpret_cast<void*>(5));
  step(5);
  queue.Shutdown();
  void* tag;
  bool ok;
  while (queue.Next(&tag, &ok)) {
  }
  return status;
}

// An Ingest message protobuf cannot parse as an IngestRequest ends the stream with
// INVALID_ARGUMENT: nothing in it can be acknowledged. Earlier batches are intact.
TEST_F(CatalogueTest, IngestMessageNotAnIngestRequest) {
  ASSERT_NO_FATAL_FAILURE(UseServer({}));
  const v1::StreamId target = Target();
  ASSERT_NO_FATAL_FAILURE(PutValid(*stub_, target, Kind::kNumeric));
  ASSERT_NO_FATAL_FAILURE(
      IngestOk(*stub_, {ValidBatch(target, Kind::kNumeric, "raw-sender", 1)}, 1));
  const std::string before = StateOf(*stub_);
  // A valid batch cut short (its last length runs past the end), and three bytes of nothing.
  const std::string valid = ValidBatch(target, Kind::kNumeric, "raw-sender", 2).SerializeAsString();
  for (const std::string& bytes :
       {valid.substr(0, valid.size() - 3), std::string("\xff\xff\xff")}) {
    const grpc::Status status = IngestRawMessage(*server_, bytes);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << status.error_message();
    EXPECT_THAT(status.error_message(), HasSubstr("not an IngestRequest"));
  }
  EXPECT_EQ(StateOf(*stub_), before);
  EXPECT_EQ(Samples(*stub_, target), ValidSamples(Kind::kNumeric));
  ASSERT_NO_FATAL_FAILURE(
      IngestOk(*stub_, {ValidBatch(target, Kind::kNumeric, "raw-sender", 2)}, 2));
  ExpectHealthy(*server_);
}

// ---------------------------------------------------------------------------------------------
// Raw bytes on the gRPC port, at two layers.

// Where a raw-bytes row puts its bytes: straight onto the TCP connection to the TLS port (the TLS
// layer sees them), or inside a TLS session that negotiated HTTP/2 (the HTTP/2 layer sees them,
// as on a plaintext port).
enum class Layer { kTcp, kTls };

std::string LayerName(Layer layer) {
  return layer == Layer::kTcp ? "on the TCP connection" : "inside TLS";
}

// The first error on OpenSSL's queue, as text.
std::string OpensslError() {
  const unsigned long code = ERR_get_error();
  if (code == 0) return "no OpenSSL error";
  char text[256];
  ERR_error_string_n(code, text, sizeof(text));
  ERR_clear_error();
  return text;
}

// A client connection to 127.0.0.1:`port` that writes bytes as they are, at `layer`. Reads time
// out after 10 s. For kTls the handshake verifies the server against the run's CA and must select
// ALPN "h2". Thread-compatible.
class RawConnection {
 public:
  static absl::StatusOr<std::unique_ptr<RawConnection>> Open(int port, Layer layer) {
    // A write after the server hung up must fail, not kill the test (OpenSSL writes with write()).
    static const bool sigpipe_ignored = [] { return signal(SIGPIPE, SIG_IGN) != SIG_ERR; }();
    if (!sigpipe_ignored) return absl::InternalError("cannot ignore SIGPIPE");
    std::unique_ptr<RawConnection> c(new RawConnection());
    c->fd_ = socket(AF_INET, SOCK_STREAM, 0);
    if (c->fd_ < 0) return absl::InternalError("socket failed");
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(static_cast<uint16_t>(port));
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    timeval timeout{10, 0};
    setsockopt(c->fd_, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
    setsockopt(c->fd_, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
    if (connect(c->fd_, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) {
      return absl::UnavailableError("cannot connect");
    }
    if (layer == Layer::kTls) {
      if (absl::Status s = c->Handshake(); !s.ok()) return s;
    }
    return c;
  }

  ~RawConnection() {
    if (ssl_ != nullptr) SSL_free(ssl_);
    if (ctx_ != nullptr) SSL_CTX_free(ctx_);
    if (fd_ >= 0) close(fd_);
  }

  // Writes `bytes`; stops early if the server has closed the connection (it may, before reading
  // everything).
  void Send(const std::string& bytes) {
    size_t sent = 0;
    while (sent < bytes.size()) {
      const size_t chunk = std::min<size_t>(bytes.size() - sent, 16384);
      const ssize_t n = ssl_ != nullptr
                            ? SSL_write(ssl_, bytes.data() + sent, static_cast<int>(chunk))
                            : send(fd_, bytes.data() + sent, chunk, MSG_NOSIGNAL);
      if (n <= 0) break;
      sent += static_cast<size_t>(n);
    }
    ERR_clear_error();
  }

  // Reads until the server closes the connection (or resets it); what it sent. DEADLINE_EXCEEDED
  // if it kept the connection open for 10 s.
  absl::StatusOr<std::string> ReadUntilClosed() {
    std::string reply;
    char buffer[4096];
    for (;;) {
      if (ssl_ == nullptr) {
        const ssize_t n = recv(fd_, buffer, sizeof(buffer), 0);
        if (n == 0 || (n < 0 && errno == ECONNRESET)) return reply;
        if (n < 0) return absl::DeadlineExceededError("the server kept the connection open");
        reply.append(buffer, static_cast<size_t>(n));
        continue;
      }
      errno = 0;
      const int n = SSL_read(ssl_, buffer, sizeof(buffer));
      if (n > 0) {
        reply.append(buffer, static_cast<size_t>(n));
        continue;
      }
      const int error = SSL_get_error(ssl_, n);
      const bool timed_out =
          error == SSL_ERROR_WANT_READ ||
          (error == SSL_ERROR_SYSCALL && (errno == EAGAIN || errno == EWOULDBLOCK));
      ERR_clear_error();
      if (timed_out) return absl::DeadlineExceededError("the server kept the TLS session open");
      return reply;  // close_notify, end of file, a reset or a fatal alert: closed.
    }
  }

 private:
  RawConnection() = default;

  absl::Status Handshake() {
    ctx_ = SSL_CTX_new(TLS_client_method());
    if (ctx_ == nullptr) return absl::InternalError(OpensslError());
    // The server may end the session without close_notify: that is a close, not an error.
    SSL_CTX_set_options(ctx_, SSL_OP_IGNORE_UNEXPECTED_EOF);
    const std::string& ca = TestPki::Get()->ca.cert_pem;
    BIO* bio = BIO_new_mem_buf(ca.data(), static_cast<int>(ca.size()));
    X509* ca_cert = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr);
    BIO_free(bio);
    if (ca_cert == nullptr) return absl::InternalError("cannot parse the test CA");
    const int added = X509_STORE_add_cert(SSL_CTX_get_cert_store(ctx_), ca_cert);
    X509_free(ca_cert);
    if (added != 1) return absl::InternalError(OpensslError());
    SSL_CTX_set_verify(ctx_, SSL_VERIFY_PEER, nullptr);
    ssl_ = SSL_new(ctx_);
    if (ssl_ == nullptr) return absl::InternalError(OpensslError());
    X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl_), "127.0.0.1");
    static constexpr unsigned char kAlpn[] = {2, 'h', '2'};
    SSL_set_alpn_protos(ssl_, kAlpn, sizeof(kAlpn));
    SSL_set_fd(ssl_, fd_);
    if (SSL_connect(ssl_) != 1) {
      return absl::UnavailableError(absl::StrCat("TLS handshake failed: ", OpensslError()));
    }
    const unsigned char* protocol = nullptr;
    unsigned int length = 0;
    SSL_get0_alpn_selected(ssl_, &protocol, &length);
    if (std::string(reinterpret_cast<const char*>(protocol), length) != "h2") {
      return absl::FailedPreconditionError("the server did not select ALPN h2");
    }
    return absl::OkStatus();
  }

  int fd_ = -1;
  SSL_CTX* ctx_ = nullptr;
  SSL* ssl_ = nullptr;
};

// Writes `bytes` at `layer` of a new connection to the gRPC port. If `wait_for_close`, reads until
// the server closes the connection (bounded by a 10 s receive timeout) and returns what it sent;
// otherwise runs `while_open` and closes.
absl::StatusOr<std::string> SendRaw(int port, Layer layer, const std::string& bytes,
                                    bool wait_for_close,
                                    const std::function<void()>& while_open = nullptr) {
  absl::StatusOr<std::unique_ptr<RawConnection>> connection = RawConnection::Open(port, layer);
  if (!connection.ok()) return connection.status();
  (*connection)->Send(bytes);
  if (wait_for_close) return (*connection)->ReadUntilClosed();
  if (while_open) while_open();
  return std::string();
}

// What the server sent before closing, as the row expects: on the TCP connection, at most a TLS
// alert record (content type 21); inside TLS, HTTP/2 frames that begin with the server's SETTINGS
// (frame type 4 in the fourth byte of the first frame header), as on a plaintext port.
void ExpectReplyOfLayer(Layer layer, const std::string& reply) {
  if (layer == Layer::kTcp) {
    if (!reply.empty()) {
      EXPECT_EQ(static_cast<unsigned char>(reply[0]), 21)
          << "not a TLS alert: " << reply.size() << " bytes";
    }
  } else {
    ASSERT_GE(reply.size(), 9u) << "no HTTP/2 frame from the server";
    EXPECT_EQ(static_cast<unsigned char>(reply[3]), 4) << "the first frame is not SETTINGS";
  }
}

// `bytes` at both layers: the server closes the connection, nothing changed, and it stays
// healthy.
void ExpectGarbageIgnored(KlDrift::Stub& stub, const testing::ServerProcess& server,
                          const std::string& bytes) {
  for (Layer layer : {Layer::kTcp, Layer::kTls}) {
    SCOPED_TRACE(LayerName(layer));
    const std::string before = StateOf(stub);
    absl::StatusOr<std::string> reply =
        SendRaw(server.port(), layer, bytes, /*wait_for_close=*/true);
    ASSERT_TRUE(reply.ok()) << reply.status();
    ExpectReplyOfLayer(layer, *reply);
    EXPECT_EQ(StateOf(stub), before);
    ExpectHealthy(server);
  }
}

TEST_F(CatalogueTest, RandomBytesOnThePort) {
  ASSERT_NO_FATAL_FAILURE(UseServer({}));
  std::mt19937 random(6);
  std::string bytes(16384, '\0');
  for (char& c : bytes) c = static_cast<char>(random());
  ExpectGarbageIgnored(*stub_, *server_, bytes);
}

TEST_F(CatalogueTest, Http1RequestOnThePort) {
  ASSERT_NO_FATAL_FAILURE(UseServer({}));
  ExpectGarbageIgnored(*stub_, *server_,
                       "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
}

// Half a preface: the server waits for the rest without holding up anyone else, and forgets the
// connection when the client hangs up. On the TCP connection the TLS layer gets the same
// treatment: half a ClientHello (a handshake record announcing 512 bytes), then silence.
TEST_F(CatalogueTest, TruncatedHttp2Preface) {
  ASSERT_NO_FATAL_FAILURE(UseServer({}));
  const std::string half_client_hello("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 11);
  for (Layer layer : {Layer::kTcp, Layer::kTls}) {
    SCOPED_TRACE(LayerName(layer));
    const std::string before = StateOf(*stub_);
    absl::StatusOr<std::string> reply =
        SendRaw(server_->port(), layer,
                layer == Layer::kTcp ? half_client_hello : "PRI * HTTP/2.0\r\n\r\nSM",
                /*wait_for_close=*/false, [&] {
                  EXPECT_EQ(StateOf(*stub_), before);
                  ExpectHealthy(*server_);
                });
    EXPECT_TRUE(reply.ok()) << reply.status();
    EXPECT_EQ(StateOf(*stub_), before);
    ExpectHealthy(*server_);
  }
}

// A valid preface followed by bytes that are not HTTP/2 frames (on the TCP connection, all of it
// is just bytes that are not TLS).
TEST_F(CatalogueTest, Http2PrefaceThenGarbage) {
  ASSERT_NO_FATAL_FAILURE(UseServer({}));
  std::string bytes = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
  bytes += std::string("\xff\xff\xff\x09\x00\x00\x00\x00\x01garbage-garbage-garbage", 32);
  ExpectGarbageIgnored(*stub_, *server_, bytes);
}

}  // namespace
}  // namespace kldrift
