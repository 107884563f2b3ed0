// End-to-end tests of kldriftd's access control and limits against a real server process over
// TLS: TLS and mutual TLS with certificates generated here by the openssl tool
// (tests/e2e/test_certificates.h), bearer tokens on every RPC (and their reload on SIGHUP), basic
// auth on /metrics, the per-model stream and per-connection call limits, deadlines, clients that
// stall an Ingest or WatchDrift stream, --grpc-memory-limit, and the kldrift CLI over TLS with a
// token. Loopback only; every wait is bounded.
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "client/kldrift_client.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "kldrift/v1/kldrift.grpc.pb.h"
#include "tests/e2e/health.grpc.pb.h"
#include "tests/e2e/server_process.h"
#include "tests/e2e/test_certificates.h"

extern char** environ;

namespace kldrift {
namespace {

using ::testing::AnyOf;
using ::testing::Eq;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::UnorderedElementsAre;
using v1::KlDrift;

constexpr absl::Duration kRpcDeadline = absl::Seconds(10);

// The tokens of the tests' token files. None may ever show up in a status, a log line or a metric.
constexpr char kAdminToken[] = "e2e-admin-token-4b1d0c9e7f2a";
constexpr char kWriterToken[] = "e2e-writer-token-9c3e5d7f1a2b";
constexpr char kReaderToken[] = "e2e-reader-token-7a1b2c3d4e5f";
constexpr char kScopedToken[] = "e2e-scoped-writer-token-0f1e2d";  // writer on other-* only.
constexpr char kFraudReaderToken[] = "e2e-fraud-reader-token-31415926";
constexpr char kFraudWriterToken[] = "e2e-fraud-writer-token-27182818";
constexpr char kUnknownToken[] = "e2e-unknown-token-5e6f7a8b9c0d";
constexpr char kTokenA[] = "e2e-reload-token-A-81f3c2d94e07";
constexpr char kTokenB[] = "e2e-reload-token-B-5a90d7e1b36c";
constexpr char kTokenC[] = "e2e-reload-token-C-c47e2b18f95d";

const std::vector<std::string>& AllTokens() {
  static const auto* const tokens = new std::vector<std::string>{
      kAdminToken,       kWriterToken,  kReaderToken, kScopedToken, kFraudReaderToken,
      kFraudWriterToken, kUnknownToken, kTokenA,      kTokenB,      kTokenC};
  return *tokens;
}

// Fails the test if `text` holds any token or a recognisable piece of one.
void ExpectNoToken(const std::string& text, const std::string& what) {
  for (const std::string& token : AllTokens()) {
    EXPECT_THAT(text, Not(HasSubstr(token))) << what;
    EXPECT_THAT(text, Not(HasSubstr(token.substr(token.size() - 10)))) << what;
  }
}

std::string Bearer(const std::string& token) { return absl::StrCat("Bearer ", token); }

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// Replaces `path` atomically (a temporary file renamed over it), as an operator's tooling would.
void WriteFile(const std::string& path, const std::string& text) {
  const std::string temp = path + ".tmp";
  {
    std::ofstream out(temp, std::ios::binary | std::ios::trunc);
    out << text;
    ASSERT_TRUE(out.good()) << temp;
  }
  ASSERT_EQ(std::rename(temp.c_str(), path.c_str()), 0) << path;
}

struct ProcessResult {
  int exit_code = -1;  // -1: killed after the timeout, or could not run.
  std::string out;
  std::string err;
};

// Runs `argv` (PATH searched) with this process's environment minus $KLDRIFT_TOKEN, plus `env`
// ("NAME=value"), stdin from /dev/null; kills it after `timeout`.
ProcessResult RunProcess(const std::vector<std::string>& argv, const std::string& scratch_dir,
                         const std::vector<std::string>& env = {},
                         absl::Duration timeout = testing::TimeScaled(absl::Seconds(60))) {
  ProcessResult result;
  static int counter = 0;
  const std::string out_path = absl::StrCat(scratch_dir, "/process-", ++counter, ".out");
  const std::string err_path = absl::StrCat(scratch_dir, "/process-", counter, ".err");
  // Everything the child needs is prepared before fork: the test process has gRPC threads.
  std::vector<std::string> environment;
  for (char** e = environ; *e != nullptr; ++e) {
    if (!absl::StartsWith(*e, "KLDRIFT_TOKEN=")) environment.push_back(*e);
  }
  environment.insert(environment.end(), env.begin(), env.end());
  std::vector<char*> args;
  std::vector<std::string> argv_copy = argv;
  for (std::string& a : argv_copy) args.push_back(a.data());
  args.push_back(nullptr);
  std::vector<char*> envp;
  for (std::string& e : environment) envp.push_back(e.data());
  envp.push_back(nullptr);
  const int out_fd = open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  const int err_fd = open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  const int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (out_fd < 0 || err_fd < 0 || null_fd < 0) {
    ADD_FAILURE() << "cannot open the output files in " << scratch_dir;
    return result;
  }
  const pid_t pid = fork();
  if (pid == 0) {
    dup2(null_fd, STDIN_FILENO);
    dup2(out_fd, STDOUT_FILENO);
    dup2(err_fd, STDERR_FILENO);
    execvpe(args[0], args.data(), envp.data());
    _exit(127);
  }
  close(out_fd);
  close(err_fd);
  close(null_fd);
  if (pid < 0) {
    ADD_FAILURE() << "fork failed";
    return result;
  }
  const absl::Time deadline = absl::Now() + timeout;
  int status = 0;
  bool exited = false;
  while (absl::Now() < deadline) {
    if (waitpid(pid, &status, WNOHANG) == pid) {
      exited = true;
      break;
    }
    absl::SleepFor(absl::Milliseconds(10));
  }
  if (!exited) {
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    ADD_FAILURE() << argv[0] << " did not finish within " << absl::FormatDuration(timeout);
  } else if (WIFEXITED(status)) {
    result.exit_code = WEXITSTATUS(status);
  }
  result.out = ReadFile(out_path);
  result.err = ReadFile(err_path);
  return result;
}

std::unique_ptr<grpc::ClientContext> Context(
    const std::string& authorization = "",
    absl::Duration deadline = testing::TimeScaled(kRpcDeadline)) {
  auto context = std::make_unique<grpc::ClientContext>();
  context->set_deadline(absl::ToChronoTime(absl::Now() + deadline));
  if (!authorization.empty()) context->AddMetadata("authorization", authorization);
  return context;
}

v1::StreamId Stream(const std::string& model, const std::string& signal) {
  v1::StreamId id;
  id.set_model(model);
  id.set_signal(signal);
  return id;
}

// A numeric reference over edges 0, 1, 2, 3: three bins, six in the full layout (underflow,
// 3 bins, overflow, NaN).
v1::PutReferenceRequest NumericReference(const std::string& model, const std::string& signal) {
  v1::PutReferenceRequest request;
  *request.mutable_stream() = Stream(model, signal);
  for (double e : {0.0, 1.0, 2.0, 3.0}) request.mutable_numeric()->add_edges(e);
  for (double c : {100.0, 200.0, 100.0}) request.mutable_counts()->add_counts(c);
  return request;
}

v1::IngestRequest Batch(const std::string& client, uint64_t sequence, const std::string& model,
                        const std::string& signal, const std::vector<double>& full_counts) {
  v1::IngestRequest request;
  request.set_client_id(client);
  request.set_sequence(sequence);
  request.set_model(model);
  v1::StreamBatch* batch = request.add_streams();
  batch->set_signal(signal);
  for (double c : full_counts) batch->mutable_histogram()->add_counts(c);
  return request;
}

struct IngestOutcome {
  grpc::Status finish;  // The stream's final status.
  uint64_t acked = 0;   // Highest acknowledged sequence.
  std::vector<v1::BatchError> errors;
};

// One Ingest stream: sends every batch, reads acks until the last one is acknowledged or the
// server ends the stream, then closes it.
IngestOutcome IngestAll(KlDrift::Stub* stub, const std::string& authorization,
                        const std::vector<v1::IngestRequest>& batches) {
  IngestOutcome outcome;
  auto context = Context(authorization, testing::TimeScaled(absl::Seconds(30)));
  auto stream = stub->Ingest(context.get());
  for (const v1::IngestRequest& batch : batches) {
    if (!stream->Write(batch)) break;  // The server has ended the stream.
  }
  const uint64_t last = batches.empty() ? 0 : batches.back().sequence();
  v1::IngestResponse response;
  while (outcome.acked < last && stream->Read(&response)) {
    outcome.acked = std::max(outcome.acked, response.acked_sequence());
    outcome.errors.insert(outcome.errors.end(), response.errors().begin(), response.errors().end());
  }
  stream->WritesDone();
  while (stream->Read(&response)) {
    outcome.acked = std::max(outcome.acked, response.acked_sequence());
    outcome.errors.insert(outcome.errors.end(), response.errors().begin(), response.errors().end());
  }
  outcome.finish = stream->Finish();
  return outcome;
}

// Sums of the full-layout counts of `batches`.
double TotalCount(const std::vector<std::vector<double>>& batches) {
  double total = 0;
  for (const auto& b : batches) {
    for (double c : b) total += c;
  }
  return total;
}

// The resident set of process `pid` in bytes (VmRSS in /proc/<pid>/status), or -1.
int64_t ResidentBytes(pid_t pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(in, line)) {
    if (!absl::StartsWith(line, "VmRSS:")) continue;
    absl::string_view value = absl::StripAsciiWhitespace(absl::string_view(line).substr(6));
    int64_t kib = 0;
    if (absl::ConsumeSuffix(&value, "kB") &&
        absl::SimpleAtoi(absl::StripAsciiWhitespace(value), &kib)) {
      return kib * 1024;
    }
  }
  return -1;
}

constexpr int64_t kMiB = int64_t{1} << 20;

// Built with a sanitizer (kldriftd is built with the same flags as the tests)?
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool kSanitized = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
constexpr bool kSanitized = true;
#else
constexpr bool kSanitized = false;
#endif
#else
constexpr bool kSanitized = false;
#endif

// How much a server's resident memory may grow while a test pushes it: generous, far below what
// buffering everything a stalled client is sent would take. A sanitized server keeps freed memory
// aside (ASan's quarantine holds up to 256 MiB) and maps shadow memory for it, so its resident
// memory grows with allocation churn: it gets another 512 MiB.
constexpr int64_t kMaxRssGrowth = (300 + (kSanitized ? 512 : 0)) * kMiB;

class SecurityE2eTest : public ::testing::Test {
 protected:
  // A CA, a server certificate for 127.0.0.1 and localhost, a client certificate, and a rogue
  // CA with its own client and server certificates (tests/e2e/test_certificates.h): generated once
  // for the whole suite.
  static void SetUpTestSuite() {
    char dir_template[] = "/tmp/kldrift-security-e2e-XXXXXX";
    if (mkdtemp(dir_template) == nullptr) {
      *pki_error_ = "mkdtemp failed";
      return;
    }
    *dir_ = dir_template;
    absl::StatusOr<testing::TestCertificates> pki = testing::TestCertificates::Generate(*dir_);
    if (!pki.ok()) {
      *pki_error_ = std::string(pki.status().message());
      return;
    }
    *pki_ = *std::move(pki);
  }

  static void TearDownTestSuite() {
    if (!dir_->empty() && std::getenv("KLDRIFT_E2E_KEEP_PKI") == nullptr) {
      std::error_code ignored;
      std::filesystem::remove_all(*dir_, ignored);
    }
  }

  static std::string Path(const std::string& name) { return *dir_ + "/" + name; }

  void SetUp() override {
    ASSERT_TRUE(pki_error_->empty()) << *pki_error_;
    for (const char* name : {"ca.pem", "server.pem", "server.key", "client.pem", "client.key",
                             "rogue-ca.pem", "rogue-client.pem", "rogue-client.key"}) {
      ASSERT_FALSE(ReadFile(Path(name)).empty()) << name;
    }
    // Files of this test (token files, backups) go in a folder of its own.
    test_dir_ = Path(::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(test_dir_);
  }

  void TearDown() override {
    // Every server of these tests must survive what they sent it and shut down cleanly.
    if (server_ != nullptr) {
      EXPECT_EQ(server_->Stop(), 0) << server_->ReadLog();
    }
  }

  // Starts kldriftd with `flags` after the suite's defaults (a flag given twice: the last wins).
  void StartServer(const std::vector<std::string>& extra_flags) {
    std::vector<std::string> flags = {"--eval-interval", "100ms", "--shutdown-grace", "1s"};
    flags.insert(flags.end(), extra_flags.begin(), extra_flags.end());
    absl::StatusOr<std::unique_ptr<testing::ServerProcess>> server =
        testing::ServerProcess::Start(testing::BinaryPath("KLDRIFTD", "server/kldriftd"), flags);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
  }

  static std::vector<std::string> TlsFlags() { return pki_->ServerFlags(); }
  // TlsFlags() and `extra`.
  static std::vector<std::string> TlsFlags(const std::vector<std::string>& extra) {
    std::vector<std::string> flags = TlsFlags();
    flags.insert(flags.end(), extra.begin(), extra.end());
    return flags;
  }
  static std::vector<std::string> MutualTlsFlags() {
    std::vector<std::string> flags = TlsFlags();
    flags.insert(flags.end(), {"--tls-client-ca", Path("ca.pem")});
    return flags;
  }

  // A TLS channel through the client library, trusting `roots` (a file in the PKI folder) and
  // presenting `cert` + `key` if given.
  std::shared_ptr<grpc::Channel> TlsChannel(const std::string& roots = "ca.pem",
                                            const std::string& cert = "",
                                            const std::string& key = "",
                                            const std::string& token = "") const {
    ChannelOptions options;
    options.target = server_->address();
    options.use_tls = true;
    options.tls_root_certs = ReadFile(Path(roots));
    if (!cert.empty()) {
      options.tls_client_cert = ReadFile(Path(cert));
      options.tls_client_key = ReadFile(Path(key));
    }
    options.token = token;
    return CreateChannel(options);
  }

  // ListReferences on `channel`: the call's status.
  static grpc::Status List(const std::shared_ptr<grpc::Channel>& channel,
                           const std::string& authorization = "") {
    auto stub = KlDrift::NewStub(channel);
    v1::ListReferencesRequest request;
    v1::ListReferencesResponse response;
    return stub->ListReferences(Context(authorization, testing::TimeScaled(absl::Seconds(5))).get(),
                                request, &response);
  }

  // The standard token file of this suite.
  std::string WriteStandardTokens() {
    const std::string path = test_dir_ + "/tokens";
    WriteFile(path, absl::StrCat("# kldriftd e2e tokens\n", kAdminToken, " admin *\n", kWriterToken,
                                 " writer *\n", kReaderToken, " reader *\n", kScopedToken,
                                 " writer other-*\n", kFraudReaderToken, " reader fraud-*\n",
                                 kFraudWriterToken, " writer fraud-*\n"));
    return path;
  }

  // Samples in the stream's largest window as the admin sees them, or -1 if GetDrift fails.
  double Samples(KlDrift::Stub* stub, const v1::StreamId& stream) {
    v1::GetDriftRequest request;
    *request.mutable_stream() = stream;
    v1::GetDriftResponse response;
    grpc::Status status = stub->GetDrift(Context(Bearer(kAdminToken)).get(), request, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    if (!status.ok()) return -1;
    double samples = 0;
    for (const v1::DriftReport& report : response.reports()) {
      samples = std::max(samples, report.samples());
    }
    return samples;
  }

  // A TLS channel of gRPC's own credentials on a connection of its own (`n` tells them apart):
  // another client.
  std::shared_ptr<grpc::Channel> SeparateTlsChannel(int n) const {
    grpc::ChannelArguments args;
    args.SetInt("kldrift.test.connection", n);
    return testing::TlsChannel(server_->address(), pki_->ca.cert_pem, args);
  }

  // One series of the server's /metrics, or NaN if absent or unreadable.
  double Metric(const std::string& series) const {
    absl::StatusOr<std::string> text = testing::HttpGet(server_->metrics_port(), "/metrics");
    return text.ok() ? testing::MetricValue(*text, series) : std::nan("");
  }

  // Waits (bounded) until `series` equals `value`.
  bool WaitForMetric(const std::string& series, double value,
                     absl::Duration timeout = testing::TimeScaled(absl::Seconds(15))) const {
    const absl::Time deadline = absl::Now() + timeout;
    while (absl::Now() < deadline) {
      if (Metric(series) == value) return true;
      absl::SleepFor(absl::Milliseconds(20));
    }
    return false;
  }

  // grpc.health.v1 says SERVING to a new client (a connection of its own).
  void ExpectServing() const {
    grpc::health::v1::HealthCheckRequest request;
    grpc::health::v1::HealthCheckResponse response;
    const grpc::Status status = grpc::health::v1::Health::NewStub(SeparateTlsChannel(-1))
                                    ->Check(Context().get(), request, &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
    EXPECT_EQ(response.status(), grpc::health::v1::HealthCheckResponse::SERVING);
  }

  // Waits (bounded) until the server's log holds `count` lines containing `text`.
  bool WaitForLog(const std::string& text, int count,
                  absl::Duration timeout = testing::TimeScaled(absl::Seconds(15))) {
    const absl::Time deadline = absl::Now() + timeout;
    while (absl::Now() < deadline) {
      const std::string log = server_->ReadLog();
      int found = 0;
      for (size_t at = log.find(text); at != std::string::npos; at = log.find(text, at + 1)) {
        ++found;
      }
      if (found >= count) return true;
      absl::SleepFor(absl::Milliseconds(20));
    }
    return false;
  }

  static std::string* const dir_;
  static std::string* const pki_error_;
  static testing::TestCertificates* const pki_;
  std::string test_dir_;
  std::unique_ptr<testing::ServerProcess> server_;
};

std::string* const SecurityE2eTest::dir_ = new std::string;
std::string* const SecurityE2eTest::pki_error_ = new std::string;
testing::TestCertificates* const SecurityE2eTest::pki_ = new testing::TestCertificates;

// --- TLS -----------------------------------------------------------------------------------------

TEST_F(SecurityE2eTest, TlsServerAcceptsOnlyClientsThatTrustItsCa) {
  ASSERT_NO_FATAL_FAILURE(StartServer(TlsFlags()));
  EXPECT_THAT(server_->ReadLog(), HasSubstr(", TLS,"));

  // The right CA: calls work, and data round-trips.
  std::shared_ptr<grpc::Channel> good = TlsChannel("ca.pem");
  auto stub = KlDrift::NewStub(good);
  v1::PutReferenceResponse put;
  ASSERT_TRUE(
      stub->PutReference(Context().get(), NumericReference("tls-model", "score"), &put).ok());
  v1::ListReferencesResponse list;
  grpc::Status status = stub->ListReferences(Context().get(), {}, &list);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_EQ(list.references_size(), 1);
  EXPECT_EQ(list.references(0).stream().model(), "tls-model");

  // A plaintext client cannot talk to the TLS port.
  status = List(server_->Channel());
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();

  // A TLS client that trusts another CA refuses the server's certificate.
  status = List(TlsChannel("rogue-ca.pem"));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();

  // The good channel is unaffected by the failed handshakes.
  EXPECT_TRUE(stub->ListReferences(Context().get(), {}, &list).ok());
}

TEST_F(SecurityE2eTest, TlsClientRefusesAServerWithACertificateFromAnotherCa) {
  // A server presenting a certificate of the rogue CA (valid for 127.0.0.1): the client that
  // trusts only the real CA must not talk to it.
  ASSERT_NO_FATAL_FAILURE(
      StartServer({"--tls-cert", Path("rogue-server.pem"), "--tls-key", Path("rogue-server.key")}));
  grpc::Status status = List(TlsChannel("ca.pem"));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
  EXPECT_TRUE(List(TlsChannel("rogue-ca.pem")).ok());
}

TEST_F(SecurityE2eTest, MutualTlsRequiresAClientCertificateFromTheCa) {
  ASSERT_NO_FATAL_FAILURE(StartServer(MutualTlsFlags()));
  EXPECT_THAT(server_->ReadLog(), HasSubstr("mutual TLS"));

  // A certificate signed by the CA: works.
  std::shared_ptr<grpc::Channel> good = TlsChannel("ca.pem", "client.pem", "client.key");
  grpc::Status status = List(good);
  EXPECT_TRUE(status.ok()) << status.error_message();
  auto stub = KlDrift::NewStub(good);
  v1::PutReferenceResponse put;
  EXPECT_TRUE(
      stub->PutReference(Context().get(), NumericReference("mtls-model", "score"), &put).ok());

  // No client certificate: refused during the handshake.
  status = List(TlsChannel("ca.pem"));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();

  // A certificate signed by another CA: refused.
  status = List(TlsChannel("ca.pem", "rogue-client.pem", "rogue-client.key"));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();

  // Plaintext: refused.
  status = List(server_->Channel());
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();

  // The health service is on the same port, behind the same handshake.
  grpc::health::v1::HealthCheckRequest request;
  grpc::health::v1::HealthCheckResponse response;
  status = grpc::health::v1::Health::NewStub(good)->Check(Context().get(), request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.status(), grpc::health::v1::HealthCheckResponse::SERVING);
  status =
      grpc::health::v1::Health::NewStub(TlsChannel("ca.pem"))
          ->Check(Context("", testing::TimeScaled(absl::Seconds(5))).get(), request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();

  // The accepted client's data is there.
  v1::ListReferencesResponse list;
  ASSERT_TRUE(stub->ListReferences(Context().get(), {}, &list).ok());
  ASSERT_EQ(list.references_size(), 1);
  EXPECT_EQ(list.references(0).stream().model(), "mtls-model");
}

// --- Tokens --------------------------------------------------------------------------------------

enum class Rpc {
  kPutReference,
  kGetReference,
  kListReferences,
  kDeleteReference,
  kIngest,
  kGetDrift,
  kWatchDrift,
  kBackup,
  kExportModel,
  kImportModel
};

const char* RpcName(Rpc rpc) {
  switch (rpc) {
    case Rpc::kPutReference:
      return "PutReference";
    case Rpc::kGetReference:
      return "GetReference";
    case Rpc::kListReferences:
      return "ListReferences";
    case Rpc::kDeleteReference:
      return "DeleteReference";
    case Rpc::kIngest:
      return "Ingest";
    case Rpc::kGetDrift:
      return "GetDrift";
    case Rpc::kWatchDrift:
      return "WatchDrift";
    case Rpc::kBackup:
      return "Backup";
    case Rpc::kExportModel:
      return "ExportModel";
    case Rpc::kImportModel:
      return "ImportModel";
  }
  return "?";
}

TEST_F(SecurityE2eTest, EveryRpcChecksTheTokenRoleAndModel) {
  std::vector<std::string> flags = TlsFlags();
  flags.insert(flags.end(), {"--auth-tokens", WriteStandardTokens()});
  ASSERT_NO_FATAL_FAILURE(StartServer(flags));
  EXPECT_THAT(server_->ReadLog(), HasSubstr("6 tokens"));
  auto stub = KlDrift::NewStub(TlsChannel());
  const std::string model = "fraud-scorer";
  const v1::StreamId stream = Stream(model, "score");
  const std::vector<double> batch_counts = {0, 1, 2, 3, 0, 0};
  int call_number = 0;
  std::vector<std::string> messages;  // Every status and batch error message seen.

  // Performs `rpc` with `authorization` against `stream`; the code of the call (for Ingest, the
  // stream's status, else the batch's error code, else OK).
  auto call = [&](Rpc rpc, const std::string& authorization) -> grpc::StatusCode {
    ++call_number;
    grpc::Status status;
    switch (rpc) {
      case Rpc::kPutReference: {
        v1::PutReferenceResponse response;
        status = stub->PutReference(Context(authorization).get(), NumericReference(model, "score"),
                                    &response);
        break;
      }
      case Rpc::kGetReference: {
        v1::GetReferenceRequest request;
        *request.mutable_stream() = stream;
        v1::Reference response;
        status = stub->GetReference(Context(authorization).get(), request, &response);
        break;
      }
      case Rpc::kListReferences: {
        v1::ListReferencesRequest request;
        request.set_model(model);
        v1::ListReferencesResponse response;
        status = stub->ListReferences(Context(authorization).get(), request, &response);
        if (status.ok()) {
          EXPECT_EQ(response.references_size(), 1);
        }
        break;
      }
      case Rpc::kDeleteReference: {
        v1::DeleteReferenceRequest request;
        *request.mutable_stream() = stream;
        v1::DeleteReferenceResponse response;
        status = stub->DeleteReference(Context(authorization).get(), request, &response);
        if (status.ok()) {
          EXPECT_GE(response.versions_deleted(), 1u);
        }
        break;
      }
      case Rpc::kIngest: {
        IngestOutcome outcome = IngestAll(
            stub.get(), authorization,
            {Batch(absl::StrCat("table-", call_number), 1, model, "score", batch_counts)});
        status = outcome.finish;
        if (status.ok() && !outcome.errors.empty()) {
          status = grpc::Status(static_cast<grpc::StatusCode>(outcome.errors[0].code()),
                                outcome.errors[0].message());
        }
        if (status.ok()) {
          EXPECT_EQ(outcome.acked, 1u);
        }
        break;
      }
      case Rpc::kGetDrift: {
        v1::GetDriftRequest request;
        *request.mutable_stream() = stream;
        v1::GetDriftResponse response;
        status = stub->GetDrift(Context(authorization).get(), request, &response);
        if (status.ok()) {
          EXPECT_GT(response.reports_size(), 0);
        }
        break;
      }
      case Rpc::kWatchDrift: {
        v1::WatchDriftRequest request;
        *request.mutable_stream() = stream;
        auto context = Context(authorization);
        auto reader = stub->WatchDrift(context.get(), request);
        v1::DriftReport report;
        if (reader->Read(&report)) {
          // A report arrived: the watch was accepted.
          EXPECT_EQ(report.stream().model(), model);
          context->TryCancel();
          reader->Finish();
        } else {
          status = reader->Finish();
          if (status.ok()) status = grpc::Status(grpc::StatusCode::UNKNOWN, "ended with no report");
        }
        break;
      }
      case Rpc::kBackup: {
        v1::BackupRequest request;
        request.set_directory(absl::StrCat(test_dir_, "/backup-", call_number));
        v1::BackupResponse response;
        status = stub->Backup(Context(authorization).get(), request, &response);
        if (status.ok()) {
          EXPECT_TRUE(std::filesystem::exists(request.directory()));
          EXPECT_GT(response.bytes(), 0u);
        }
        break;
      }
      case Rpc::kExportModel: {
        v1::ExportModelRequest request;
        request.set_model(model);
        v1::ModelExport response;
        status = stub->ExportModel(Context(authorization).get(), request, &response);
        if (status.ok()) {
          EXPECT_EQ(response.streams_size(), 1);
        }
        break;
      }
      case Rpc::kImportModel: {
        // The model's own state, taken with the admin token, put back in place.
        v1::ExportModelRequest export_request;
        export_request.set_model(model);
        v1::ImportModelRequest request;
        EXPECT_TRUE(stub->ExportModel(Context(Bearer(kAdminToken)).get(), export_request,
                                      request.mutable_model_export())
                        .ok());
        request.set_replace(true);
        v1::ImportModelResponse response;
        status = stub->ImportModel(Context(authorization).get(), request, &response);
        if (status.ok()) {
          EXPECT_EQ(response.streams(), 1u);
        }
        break;
      }
    }
    if (!status.ok()) messages.push_back(status.error_message());
    return status.error_code();
  };

  using grpc::StatusCode;
  constexpr StatusCode kOk = StatusCode::OK;
  constexpr StatusCode kUnauth = StatusCode::UNAUTHENTICATED;
  constexpr StatusCode kDenied = StatusCode::PERMISSION_DENIED;
  const std::vector<Rpc> rpcs = {Rpc::kPutReference,    Rpc::kGetReference, Rpc::kListReferences,
                                 Rpc::kDeleteReference, Rpc::kIngest,       Rpc::kGetDrift,
                                 Rpc::kWatchDrift,      Rpc::kBackup,       Rpc::kExportModel,
                                 Rpc::kImportModel};
  struct Caller {
    std::string name;
    std::string authorization;
    // Expected codes, in the order of `rpcs`.
    std::vector<StatusCode> expected;
  };
  const std::vector<StatusCode> all_unauthenticated(rpcs.size(), kUnauth);
  const std::vector<Caller> callers = {
      {"no token", "", all_unauthenticated},
      {"unknown token", Bearer(kUnknownToken), all_unauthenticated},
      {"token without Bearer", kAdminToken, all_unauthenticated},
      {"reader",
       Bearer(kReaderToken),
       {kDenied, kOk, kOk, kDenied, kDenied, kOk, kOk, kDenied, kDenied, kDenied}},
      {"writer",
       Bearer(kWriterToken),
       {kOk, kOk, kOk, kOk, kOk, kOk, kOk, kDenied, kDenied, kDenied}},
      {"admin", Bearer(kAdminToken), {kOk, kOk, kOk, kOk, kOk, kOk, kOk, kOk, kOk, kOk}},
      {"writer scoped to other-*",
       Bearer(kScopedToken),
       {kDenied, kDenied, kDenied, kDenied, kDenied, kDenied, kDenied, kDenied, kDenied, kDenied}},
  };

  auto admin_put = [&] {
    v1::PutReferenceResponse response;
    grpc::Status status = stub->PutReference(Context(Bearer(kAdminToken)).get(),
                                             NumericReference(model, "score"), &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
  };
  // The stream's latest version (0 if none) and samples, read with the admin token.
  auto state = [&]() -> std::pair<uint64_t, double> {
    v1::GetReferenceRequest request;
    *request.mutable_stream() = stream;
    v1::Reference reference;
    if (!stub->GetReference(Context(Bearer(kAdminToken)).get(), request, &reference).ok()) {
      return {0, 0};
    }
    return {reference.version(), Samples(stub.get(), stream)};
  };

  for (const Caller& caller : callers) {
    for (size_t r = 0; r < rpcs.size(); ++r) {
      SCOPED_TRACE(absl::StrCat(caller.name, " calls ", RpcName(rpcs[r])));
      admin_put();  // The stream exists before every call (a previous call may have deleted it).
      const std::pair<uint64_t, double> before = state();
      const StatusCode code = call(rpcs[r], caller.authorization);
      EXPECT_EQ(code, caller.expected[r]);
      const std::pair<uint64_t, double> after = state();
      if (code != kOk) {
        EXPECT_EQ(after, before);  // A refused call changed nothing.
      } else if (rpcs[r] == Rpc::kPutReference) {
        EXPECT_EQ(after.first, before.first + 1);
      } else if (rpcs[r] == Rpc::kDeleteReference) {
        EXPECT_EQ(after.first, 0u);
      } else if (rpcs[r] == Rpc::kIngest) {
        EXPECT_EQ(after.second, before.second + TotalCount({batch_counts}));
      } else {
        EXPECT_EQ(after, before);
      }
    }
  }
  // Nothing the server said or logged names a token; nor do the metrics.
  ASSERT_FALSE(messages.empty());
  for (const std::string& message : messages) ExpectNoToken(message, "status message: " + message);
  EXPECT_THAT(messages, ::testing::Contains(HasSubstr("authorization: Bearer <token>")));
  EXPECT_THAT(messages, ::testing::Contains(HasSubstr("unknown or revoked token")));
  EXPECT_THAT(messages, ::testing::Contains(HasSubstr("needs the admin role")));
  ExpectNoToken(server_->ReadLog(), "server log");
  absl::StatusOr<std::string> metrics = testing::HttpGet(server_->metrics_port(), "/metrics");
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  ExpectNoToken(*metrics, "metrics");
}

TEST_F(SecurityE2eTest, TheClientLibrarySendsItsToken) {
  std::vector<std::string> flags = TlsFlags();
  flags.insert(flags.end(), {"--auth-tokens", WriteStandardTokens()});
  ASSERT_NO_FATAL_FAILURE(StartServer(flags));
  // ChannelOptions::token, not per-call metadata.
  EXPECT_TRUE(List(TlsChannel("ca.pem", "", "", kReaderToken)).ok());
  EXPECT_EQ(List(TlsChannel("ca.pem", "", "", kUnknownToken)).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(List(TlsChannel("ca.pem")).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  // KlDriftClient over such a channel.
  ChannelOptions options;
  options.target = server_->address();
  options.use_tls = true;
  options.tls_root_certs = ReadFile(Path("ca.pem"));
  options.token = kFraudWriterToken;
  KlDriftClient client(CreateChannel(options), testing::TimeScaled(kRpcDeadline));
  EXPECT_TRUE(client.PutReference(NumericReference("fraud-a", "score")).ok());
  absl::StatusOr<v1::PutReferenceResponse> denied =
      client.PutReference(NumericReference("payments", "score"));
  EXPECT_EQ(denied.status().code(), absl::StatusCode::kPermissionDenied);
}

TEST_F(SecurityE2eTest, ListReferencesShowsOnlyTheModelsOfTheTokensScope) {
  std::vector<std::string> flags = TlsFlags();
  flags.insert(flags.end(), {"--auth-tokens", WriteStandardTokens()});
  ASSERT_NO_FATAL_FAILURE(StartServer(flags));
  auto stub = KlDrift::NewStub(TlsChannel());
  for (const std::string model : {"fraud-scorer", "fraud-ranker", "payments", "other-x"}) {
    for (const std::string signal : {"a", "b"}) {
      v1::PutReferenceResponse response;
      ASSERT_TRUE(stub->PutReference(Context(Bearer(kAdminToken)).get(),
                                     NumericReference(model, signal), &response)
                      .ok());
    }
  }
  // Every page, collected as "model/signal".
  auto list_all = [&](const std::string& token, const std::string& model,
                      uint32_t page_size) -> absl::StatusOr<std::vector<std::string>> {
    std::vector<std::string> listed;
    std::string page_token;
    for (int pages = 0; pages < 100; ++pages) {
      v1::ListReferencesRequest request;
      request.set_model(model);
      request.set_page_size(page_size);
      request.set_page_token(page_token);
      v1::ListReferencesResponse response;
      grpc::Status status = stub->ListReferences(Context(Bearer(token)).get(), request, &response);
      if (!status.ok()) {
        return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                            status.error_message());
      }
      for (const v1::Reference& r : response.references()) {
        listed.push_back(absl::StrCat(r.stream().model(), "/", r.stream().signal()));
      }
      page_token = response.next_page_token();
      if (page_token.empty()) return listed;
    }
    return absl::InternalError("too many pages");
  };
  for (uint32_t page_size : {0u, 1u, 3u}) {
    SCOPED_TRACE(absl::StrCat("page size ", page_size));
    absl::StatusOr<std::vector<std::string>> all = list_all(kAdminToken, "", page_size);
    ASSERT_TRUE(all.ok()) << all.status();
    EXPECT_EQ(all->size(), 8u);
    absl::StatusOr<std::vector<std::string>> fraud = list_all(kFraudReaderToken, "", page_size);
    ASSERT_TRUE(fraud.ok()) << fraud.status();
    EXPECT_THAT(*fraud, UnorderedElementsAre("fraud-ranker/a", "fraud-ranker/b", "fraud-scorer/a",
                                             "fraud-scorer/b"));
    absl::StatusOr<std::vector<std::string>> other = list_all(kScopedToken, "", page_size);
    ASSERT_TRUE(other.ok()) << other.status();
    EXPECT_THAT(*other, UnorderedElementsAre("other-x/a", "other-x/b"));
  }
  // With a model filter: the token's own models, or PERMISSION_DENIED.
  absl::StatusOr<std::vector<std::string>> one = list_all(kFraudReaderToken, "fraud-ranker", 0);
  ASSERT_TRUE(one.ok()) << one.status();
  EXPECT_THAT(*one, UnorderedElementsAre("fraud-ranker/a", "fraud-ranker/b"));
  EXPECT_EQ(list_all(kFraudReaderToken, "payments", 0).status().code(),
            absl::StatusCode::kPermissionDenied);
}

// --- Ingest --------------------------------------------------------------------------------------

TEST_F(SecurityE2eTest, IngestWithoutATokenEndsAtOnceAndAppliesNothing) {
  std::vector<std::string> flags = TlsFlags();
  flags.insert(flags.end(), {"--auth-tokens", WriteStandardTokens()});
  ASSERT_NO_FATAL_FAILURE(StartServer(flags));
  auto stub = KlDrift::NewStub(TlsChannel());
  const v1::StreamId stream = Stream("fraud-scorer", "score");
  v1::PutReferenceResponse put;
  ASSERT_TRUE(stub->PutReference(Context(Bearer(kAdminToken)).get(),
                                 NumericReference("fraud-scorer", "score"), &put)
                  .ok());
  for (const std::string& authorization : {std::string(), Bearer(kUnknownToken)}) {
    SCOPED_TRACE(authorization.empty() ? "no token" : "unknown token");
    IngestOutcome outcome =
        IngestAll(stub.get(), authorization,
                  {Batch("anonymous", 1, "fraud-scorer", "score", {0, 5, 5, 5, 0, 0}),
                   Batch("anonymous", 2, "fraud-scorer", "score", {0, 5, 5, 5, 0, 0})});
    EXPECT_EQ(outcome.finish.error_code(), grpc::StatusCode::UNAUTHENTICATED)
        << outcome.finish.error_message();
    EXPECT_EQ(outcome.acked, 0u);
    EXPECT_TRUE(outcome.errors.empty());
    ExpectNoToken(outcome.finish.error_message(), "ingest status");
  }
  EXPECT_EQ(Samples(stub.get(), stream), 0);
  // The same batches with a token are applied (the client id is not poisoned).
  IngestOutcome outcome =
      IngestAll(stub.get(), Bearer(kWriterToken),
                {Batch("anonymous", 1, "fraud-scorer", "score", {0, 5, 5, 5, 0, 0}),
                 Batch("anonymous", 2, "fraud-scorer", "score", {0, 5, 5, 5, 0, 0})});
  EXPECT_TRUE(outcome.finish.ok()) << outcome.finish.error_message();
  EXPECT_EQ(outcome.acked, 2u);
  EXPECT_EQ(Samples(stub.get(), stream), 30);
}

TEST_F(SecurityE2eTest, IngestBatchOutsideTheTokensScopeIsRefusedAndTheOthersApplied) {
  std::vector<std::string> flags = TlsFlags();
  flags.insert(flags.end(), {"--auth-tokens", WriteStandardTokens()});
  ASSERT_NO_FATAL_FAILURE(StartServer(flags));
  auto stub = KlDrift::NewStub(TlsChannel());
  for (const std::string model : {"fraud-scorer", "payments"}) {
    v1::PutReferenceResponse put;
    ASSERT_TRUE(stub->PutReference(Context(Bearer(kAdminToken)).get(),
                                   NumericReference(model, "score"), &put)
                    .ok());
  }
  const std::vector<std::vector<double>> counts = {
      {0, 1, 2, 3, 0, 0}, {0, 10, 10, 10, 0, 0}, {1, 4, 4, 4, 1, 1}, {0, 0, 7, 0, 0, 0}};
  // fraud-writer may write fraud-*: batches 1, 3 and 4 are for fraud-scorer, 2 for payments.
  IngestOutcome outcome = IngestAll(stub.get(), Bearer(kFraudWriterToken),
                                    {Batch("scoped", 1, "fraud-scorer", "score", counts[0]),
                                     Batch("scoped", 2, "payments", "score", counts[1]),
                                     Batch("scoped", 3, "fraud-scorer", "score", counts[2]),
                                     Batch("scoped", 4, "fraud-scorer", "score", counts[3])});
  EXPECT_TRUE(outcome.finish.ok()) << outcome.finish.error_message();
  EXPECT_EQ(outcome.acked, 4u);  // The refused batch is acknowledged as done.
  ASSERT_EQ(outcome.errors.size(), 1u);
  EXPECT_EQ(outcome.errors[0].sequence(), 2u);
  EXPECT_EQ(outcome.errors[0].code(), static_cast<int>(grpc::StatusCode::PERMISSION_DENIED));
  EXPECT_THAT(outcome.errors[0].message(), HasSubstr("payments"));
  ExpectNoToken(outcome.errors[0].message(), "batch error");
  EXPECT_EQ(Samples(stub.get(), Stream("fraud-scorer", "score")),
            TotalCount({counts[0], counts[2], counts[3]}));
  EXPECT_EQ(Samples(stub.get(), Stream("payments", "score")), 0);
}

// --- SIGHUP --------------------------------------------------------------------------------------

TEST_F(SecurityE2eTest, SighupReloadsTokensWithoutDroppingStreams) {
  const std::string tokens = test_dir_ + "/tokens";
  WriteFile(tokens, absl::StrCat(kAdminToken, " admin *\n", kTokenA, " writer *\n"));
  std::vector<std::string> flags = TlsFlags();
  flags.insert(flags.end(), {"--auth-tokens", tokens});
  ASSERT_NO_FATAL_FAILURE(StartServer(flags));
  auto stub = KlDrift::NewStub(TlsChannel());
  const v1::StreamId stream = Stream("reloaded", "score");
  v1::PutReferenceResponse put;
  ASSERT_TRUE(stub->PutReference(Context(Bearer(kAdminToken)).get(),
                                 NumericReference("reloaded", "score"), &put)
                  .ok());
  auto get_reference = [&](const std::string& token) {
    v1::GetReferenceRequest request;
    *request.mutable_stream() = stream;
    v1::Reference reference;
    return stub->GetReference(Context(Bearer(token)).get(), request, &reference).error_code();
  };
  EXPECT_EQ(get_reference(kTokenB), grpc::StatusCode::UNAUTHENTICATED);

  // An Ingest stream with token A; batch 1 acknowledged.
  const std::vector<std::vector<double>> counts = {
      {0, 1, 2, 3, 0, 0}, {0, 4, 5, 6, 0, 0}, {0, 100, 100, 100, 0, 0}};
  auto context = Context(Bearer(kTokenA), testing::TimeScaled(absl::Seconds(60)));
  auto ingest = stub->Ingest(context.get());
  v1::IngestResponse response;
  auto send_and_wait_ack = [&](uint64_t sequence) {
    ASSERT_TRUE(
        ingest->Write(Batch("long-lived", sequence, "reloaded", "score", counts[sequence - 1])));
    uint64_t acked = 0;
    while (acked < sequence && ingest->Read(&response)) {
      EXPECT_EQ(response.errors_size(), 0);
      acked = std::max(acked, response.acked_sequence());
    }
    ASSERT_EQ(acked, sequence);
  };
  send_and_wait_ack(1);

  // Token B added: B works at once, and A's open stream carries on.
  WriteFile(tokens, absl::StrCat(kAdminToken, " admin *\n", kTokenA, " writer *\n", kTokenB,
                                 " reader *\n"));
  ASSERT_EQ(kill(server_->pid(), SIGHUP), 0);
  ASSERT_TRUE(WaitForLog("SIGHUP: reloaded 3 tokens", 1)) << server_->ReadLog();
  EXPECT_EQ(get_reference(kTokenB), grpc::StatusCode::OK);
  EXPECT_EQ(get_reference(kTokenA), grpc::StatusCode::OK);
  send_and_wait_ack(2);
  EXPECT_EQ(Samples(stub.get(), stream), TotalCount({counts[0], counts[1]}));

  // Token A revoked: the next batch on its open stream ends the stream, unacknowledged.
  WriteFile(tokens, absl::StrCat(kAdminToken, " admin *\n", kTokenB, " reader *\n"));
  ASSERT_EQ(kill(server_->pid(), SIGHUP), 0);
  ASSERT_TRUE(WaitForLog("SIGHUP: reloaded 2 tokens", 1)) << server_->ReadLog();
  ingest->Write(Batch("long-lived", 3, "reloaded", "score", counts[2]));  // May fail: ended.
  uint64_t acked_after = 0;
  int errors_after = 0;
  while (ingest->Read(&response)) {
    acked_after = std::max(acked_after, response.acked_sequence());
    errors_after += response.errors_size();
  }
  const grpc::Status ended = ingest->Finish();
  EXPECT_EQ(ended.error_code(), grpc::StatusCode::UNAUTHENTICATED) << ended.error_message();
  ExpectNoToken(ended.error_message(), "revoked stream status");
  EXPECT_LT(acked_after, 3u);
  EXPECT_EQ(errors_after, 0);
  // Batches 1 and 2 are intact; 3 was not applied.
  EXPECT_EQ(Samples(stub.get(), stream), TotalCount({counts[0], counts[1]}));
  // A new stream with A is refused at once; B (a reader) still reads.
  IngestOutcome refused = IngestAll(stub.get(), Bearer(kTokenA),
                                    {Batch("long-lived", 3, "reloaded", "score", counts[2])});
  EXPECT_EQ(refused.finish.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(get_reference(kTokenA), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(get_reference(kTokenB), grpc::StatusCode::OK);

  // A broken file (a good new token C before a bad line naming a role that does not exist) is
  // refused as a whole: the previous table stays.
  WriteFile(tokens, absl::StrCat(kAdminToken, " admin *\n", kTokenC, " admin *\n", kTokenB,
                                 " superuser *\n"));
  ASSERT_EQ(kill(server_->pid(), SIGHUP), 0);
  ASSERT_TRUE(WaitForLog("SIGHUP: kept the previous tokens", 1)) << server_->ReadLog();
  EXPECT_THAT(server_->ReadLog(), HasSubstr("line 3"));
  EXPECT_EQ(get_reference(kTokenB), grpc::StatusCode::OK);
  EXPECT_EQ(get_reference(kTokenC), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(get_reference(kAdminToken), grpc::StatusCode::OK);
  // A missing file too.
  ASSERT_TRUE(std::filesystem::remove(tokens));
  ASSERT_EQ(kill(server_->pid(), SIGHUP), 0);
  ASSERT_TRUE(WaitForLog("SIGHUP: kept the previous tokens", 2)) << server_->ReadLog();
  EXPECT_EQ(get_reference(kTokenB), grpc::StatusCode::OK);

  // The server is still healthy, and nothing it logged names a token.
  grpc::health::v1::HealthCheckRequest request;
  grpc::health::v1::HealthCheckResponse health;
  ASSERT_TRUE(grpc::health::v1::Health::NewStub(TlsChannel())
                  ->Check(Context().get(), request, &health)
                  .ok());
  EXPECT_EQ(health.status(), grpc::health::v1::HealthCheckResponse::SERVING);
  ExpectNoToken(server_->ReadLog(), "server log");
}

// --- Metrics -------------------------------------------------------------------------------------

TEST_F(SecurityE2eTest, MetricsRequireBasicAuth) {
  const std::string password_file = test_dir_ + "/metrics-auth";
  WriteFile(password_file, "prometheus:Corr3ct-horse-battery\n");
  ASSERT_NO_FATAL_FAILURE(StartServer({"--metrics-basic-auth", password_file}));
  ASSERT_GT(server_->metrics_port(), 0);
  auto basic = [](const std::string& credentials) {
    return absl::StrCat("Authorization: Basic ", absl::Base64Escape(credentials));
  };
  auto fetch = [&](const std::vector<std::string>& headers) {
    absl::StatusOr<testing::HttpResponse> response =
        testing::HttpFetch(server_->metrics_port(), "/metrics", headers);
    EXPECT_TRUE(response.ok()) << response.status();
    return response.ok() ? *response : testing::HttpResponse{};
  };
  EXPECT_EQ(fetch({}).status_code, 401);
  EXPECT_EQ(fetch({basic("prometheus:wrong-password")}).status_code, 401);
  EXPECT_EQ(fetch({basic("someone:Corr3ct-horse-battery")}).status_code, 401);
  EXPECT_EQ(fetch({basic("prometheus:Corr3ct-horse-batter")}).status_code, 401);  // A prefix.
  EXPECT_EQ(fetch({basic("prometheus")}).status_code, 401);
  EXPECT_EQ(fetch({"Authorization: Basic !!not-base64!!"}).status_code, 401);
  EXPECT_EQ(fetch({"Authorization: Bearer Corr3ct-horse-battery"}).status_code, 401);
  const testing::HttpResponse denied = fetch({});
  EXPECT_THAT(denied.body, Not(HasSubstr("kldrift_")));

  const testing::HttpResponse ok = fetch({basic("prometheus:Corr3ct-horse-battery")});
  EXPECT_EQ(ok.status_code, 200);
  EXPECT_THAT(ok.body, HasSubstr("kldrift_"));
  // The plain helper (no credentials) reports the refusal.
  EXPECT_FALSE(testing::HttpGet(server_->metrics_port(), "/metrics").ok());
  EXPECT_THAT(server_->ReadLog(), Not(HasSubstr("Corr3ct-horse-battery")));
}

// --- Limits --------------------------------------------------------------------------------------

TEST_F(SecurityE2eTest, MaxStreamsPerModel) {
  ASSERT_NO_FATAL_FAILURE(StartServer(TlsFlags({"--max-streams-per-model", "2"})));
  auto stub = KlDrift::NewStub(TlsChannel());
  auto put = [&](const std::string& model, const std::string& signal) {
    v1::PutReferenceResponse response;
    return stub->PutReference(Context().get(), NumericReference(model, signal), &response);
  };
  ASSERT_TRUE(put("capped", "a").ok());
  ASSERT_TRUE(put("capped", "b").ok());
  grpc::Status third = put("capped", "c");
  EXPECT_EQ(third.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(third.error_message(), HasSubstr("--max-streams-per-model"));
  EXPECT_THAT(third.error_message(), HasSubstr("capped"));
  // A new version of an existing stream is not a new stream; other models are not affected.
  EXPECT_TRUE(put("capped", "a").ok());
  EXPECT_TRUE(put("uncapped", "a").ok());
  EXPECT_TRUE(put("uncapped", "b").ok());
  // The refused stream does not exist; deleting one frees a place.
  v1::GetReferenceRequest get;
  *get.mutable_stream() = Stream("capped", "c");
  v1::Reference reference;
  EXPECT_EQ(stub->GetReference(Context().get(), get, &reference).error_code(),
            grpc::StatusCode::NOT_FOUND);
  v1::DeleteReferenceRequest remove;
  *remove.mutable_stream() = Stream("capped", "b");
  v1::DeleteReferenceResponse removed;
  ASSERT_TRUE(stub->DeleteReference(Context().get(), remove, &removed).ok());
  EXPECT_TRUE(put("capped", "c").ok());
  EXPECT_EQ(put("capped", "d").error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
}

// Two open calls fill a connection at --max-concurrent-streams-per-connection 2: a third call on
// it waits (here until its deadline), while another connection is served; once one call ends, the
// waiting connection is served again.
TEST_F(SecurityE2eTest, ConcurrentCallsPerConnectionAreCapped) {
  ASSERT_NO_FATAL_FAILURE(StartServer(TlsFlags({"--max-concurrent-streams-per-connection", "2"})));
  auto stub = KlDrift::NewStub(TlsChannel());
  v1::PutReferenceResponse put;
  ASSERT_TRUE(stub->PutReference(Context().get(), NumericReference("capped", "s"), &put).ok());
  // Two long-lived WatchDrift calls on this connection.
  std::vector<std::unique_ptr<grpc::ClientContext>> watch_contexts;
  std::vector<std::unique_ptr<grpc::ClientReader<v1::DriftReport>>> watches;
  for (int i = 0; i < 2; ++i) {
    watch_contexts.push_back(Context("", testing::TimeScaled(absl::Seconds(60))));
    v1::WatchDriftRequest request;
    request.mutable_stream()->set_model("capped");
    watches.push_back(stub->WatchDrift(watch_contexts.back().get(), request));
    v1::DriftReport report;
    ASSERT_TRUE(watches.back()->Read(&report));  // Open and served.
  }
  v1::GetReferenceRequest get;
  *get.mutable_stream() = Stream("capped", "s");
  v1::Reference reference;
  grpc::Status third =
      stub->GetReference(Context("", absl::Milliseconds(1500)).get(), get, &reference);
  EXPECT_EQ(third.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << third.error_message();
  // Another connection is not held up.
  grpc::ChannelArguments separate;
  separate.SetInt("kldrift.test.separate-connection", 1);
  auto other =
      KlDrift::NewStub(testing::TlsChannel(server_->address(), pki_->ca.cert_pem, separate));
  EXPECT_TRUE(
      other->GetReference(Context("", testing::TimeScaled(absl::Seconds(5))).get(), get, &reference)
          .ok());
  // One watch ends: the first connection has room again.
  watch_contexts[0]->TryCancel();
  v1::DriftReport report;
  while (watches[0]->Read(&report)) {
  }
  watches[0]->Finish();
  EXPECT_TRUE(
      stub->GetReference(Context("", testing::TimeScaled(absl::Seconds(5))).get(), get, &reference)
          .ok());
  watch_contexts[1]->TryCancel();
  while (watches[1]->Read(&report)) {
  }
  watches[1]->Finish();
}

// --- Deadlines and slow clients ------------------------------------------------------------------

// A call whose deadline has passed before it starts gets DEADLINE_EXCEEDED and changes nothing;
// calls with deadlines of a few milliseconds end OK or DEADLINE_EXCEEDED, never otherwise; a
// stream whose deadline passes while it is open on the server ends with DEADLINE_EXCEEDED on time,
// keeps what it had applied, and the server lets go of it.
TEST_F(SecurityE2eTest, DeadlinesAreHonoured) {
  ASSERT_NO_FATAL_FAILURE(StartServer(TlsFlags()));
  auto stub = KlDrift::NewStub(TlsChannel());
  const v1::StreamId stream = Stream("deadlines", "score");
  v1::PutReferenceResponse put;
  ASSERT_TRUE(
      stub->PutReference(Context().get(), NumericReference("deadlines", "score"), &put).ok());
  const std::vector<double> counts = {0, 1, 2, 3, 0, 0};
  using grpc::StatusCode;

  // Already expired: every RPC, unary or streaming.
  const absl::Duration expired = -absl::Seconds(1);
  EXPECT_EQ(
      stub->PutReference(Context("", expired).get(), NumericReference("deadlines", "late"), &put)
          .error_code(),
      StatusCode::DEADLINE_EXCEEDED);
  v1::GetReferenceRequest get;
  *get.mutable_stream() = stream;
  v1::Reference reference;
  EXPECT_EQ(stub->GetReference(Context("", expired).get(), get, &reference).error_code(),
            StatusCode::DEADLINE_EXCEEDED);
  v1::ListReferencesResponse list;
  EXPECT_EQ(stub->ListReferences(Context("", expired).get(), {}, &list).error_code(),
            StatusCode::DEADLINE_EXCEEDED);
  v1::GetDriftRequest drift;
  *drift.mutable_stream() = stream;
  v1::GetDriftResponse reports;
  EXPECT_EQ(stub->GetDrift(Context("", expired).get(), drift, &reports).error_code(),
            StatusCode::DEADLINE_EXCEEDED);
  {
    auto context = Context("", expired);
    auto ingest = stub->Ingest(context.get());
    ingest->Write(Batch("deadline-client", 1, "deadlines", "score", counts));  // May fail.
    v1::IngestResponse response;
    EXPECT_FALSE(ingest->Read(&response));
    EXPECT_EQ(ingest->Finish().error_code(), StatusCode::DEADLINE_EXCEEDED);
  }
  {
    auto context = Context("", expired);
    v1::WatchDriftRequest request;
    *request.mutable_stream() = stream;
    auto watch = stub->WatchDrift(context.get(), request);
    v1::DriftReport report;
    EXPECT_FALSE(watch->Read(&report));
    EXPECT_EQ(watch->Finish().error_code(), StatusCode::DEADLINE_EXCEEDED);
  }
  // Nothing was applied: no "late" stream, no samples.
  v1::GetReferenceRequest get_late;
  *get_late.mutable_stream() = Stream("deadlines", "late");
  EXPECT_EQ(stub->GetReference(Context().get(), get_late, &reference).error_code(),
            StatusCode::NOT_FOUND);
  EXPECT_EQ(Samples(stub.get(), stream), 0);

  // Deadlines from 5 ms ago to 20 ms from now: OK or DEADLINE_EXCEEDED, nothing else (a loopback
  // call may well finish within a millisecond); those already past always expire.
  int expired_calls = 0;
  for (absl::Duration deadline :
       {absl::Milliseconds(-5), absl::ZeroDuration(), absl::Microseconds(1),
        absl::Microseconds(100), absl::Milliseconds(1), absl::Milliseconds(5),
        absl::Milliseconds(20)}) {
    for (int i = 0; i < 10; ++i) {
      const grpc::Status status = stub->GetDrift(Context("", deadline).get(), drift, &reports);
      EXPECT_THAT(status.error_code(), AnyOf(Eq(StatusCode::OK), Eq(StatusCode::DEADLINE_EXCEEDED)))
          << absl::FormatDuration(deadline) << ": " << status.error_message();
      if (status.error_code() == StatusCode::DEADLINE_EXCEEDED) ++expired_calls;
    }
  }
  EXPECT_GE(expired_calls, 10);

  // Open on the server when the deadline passes: an Ingest stream gone idle after one
  // acknowledged batch, and a WatchDrift (which never ends on its own).
  const absl::Duration short_deadline = absl::Milliseconds(1500);
  {
    const absl::Time started = absl::Now();
    auto context = Context("", short_deadline);
    auto ingest = stub->Ingest(context.get());
    ASSERT_TRUE(ingest->Write(Batch("deadline-client", 1, "deadlines", "score", counts)));
    v1::IngestResponse response;
    ASSERT_TRUE(ingest->Read(&response));
    EXPECT_EQ(response.acked_sequence(), 1u);
    EXPECT_TRUE(WaitForMetric("kldrift_ingest_streams_active", 1));  // Open on the server.
    while (ingest->Read(&response)) {
    }
    EXPECT_EQ(ingest->Finish().error_code(), StatusCode::DEADLINE_EXCEEDED);
    EXPECT_GE(absl::Now() - started, absl::Seconds(1));
    EXPECT_LT(absl::Now() - started, short_deadline + absl::Seconds(5));
  }
  {
    const absl::Time started = absl::Now();
    auto context = Context("", short_deadline);
    v1::WatchDriftRequest request;
    *request.mutable_stream() = stream;
    auto watch = stub->WatchDrift(context.get(), request);
    v1::DriftReport report;
    ASSERT_TRUE(watch->Read(&report));
    EXPECT_EQ(report.stream().model(), "deadlines");
    EXPECT_TRUE(WaitForMetric("kldrift_watch_streams_active", 1));
    while (watch->Read(&report)) {
    }
    EXPECT_EQ(watch->Finish().error_code(), StatusCode::DEADLINE_EXCEEDED);
    EXPECT_GE(absl::Now() - started, absl::Seconds(1));
    EXPECT_LT(absl::Now() - started, short_deadline + absl::Seconds(5));
  }
  // The server let go of both calls.
  EXPECT_TRUE(WaitForMetric("kldrift_ingest_streams_active", 0));
  EXPECT_TRUE(WaitForMetric("kldrift_watch_streams_active", 0));
  // The batch applied before the deadline is there once; the client resends it (a duplicate,
  // acknowledged and not applied again) and carries on.
  EXPECT_EQ(Samples(stub.get(), stream), TotalCount({counts}));
  IngestOutcome next = IngestAll(stub.get(), "",
                                 {Batch("deadline-client", 1, "deadlines", "score", counts),
                                  Batch("deadline-client", 2, "deadlines", "score", counts)});
  EXPECT_TRUE(next.finish.ok()) << next.finish.error_message();
  EXPECT_EQ(next.acked, 2u);
  EXPECT_TRUE(next.errors.empty());
  EXPECT_EQ(Samples(stub.get(), stream), TotalCount({counts, counts}));
  ExpectServing();
}

// A client that writes Ingest batches and never reads the acks cannot make the server buffer
// without bound: the server holds one merged ack (and stops reading once 256 batch errors wait to
// be written), so its memory stays flat while the client stalls, and it serves everyone else
// meanwhile. (gRPC's client transport takes several MB of acks before it pushes back, so at this
// size the server never has to pause.) When the client reads at last, the acks are cumulative,
// each rejected batch is reported once, and every valid batch was applied exactly once.
TEST_F(SecurityE2eTest, StalledIngestClientCannotMakeTheServerBuffer) {
  ASSERT_NO_FATAL_FAILURE(StartServer(TlsFlags()));
  auto stub = KlDrift::NewStub(TlsChannel());
  for (const std::string model : {"stalled", "other"}) {
    v1::PutReferenceResponse put;
    ASSERT_TRUE(stub->PutReference(Context().get(), NumericReference(model, "score"), &put).ok());
  }
  const int64_t rss_start = ResidentBytes(server_->pid());
  ASSERT_GT(rss_start, 0);

  // 2,000 valid batches, and 1,000 (every third) with five counts for the six-bin layout: each of
  // those gets FAILED_PRECONDITION in the acks.
  constexpr uint64_t kBatches = 3000;
  const std::vector<double> good = {0, 1, 1, 1, 0, 0};
  const std::vector<double> bad = {1, 1, 1, 1, 1};
  std::vector<v1::IngestRequest> batches;
  std::set<uint64_t> bad_sequences;
  for (uint64_t sequence = 1; sequence <= kBatches; ++sequence) {
    const bool is_bad = sequence % 3 == 0;
    batches.push_back(Batch("stalled-client", sequence, "stalled", "score", is_bad ? bad : good));
    if (is_bad) bad_sequences.insert(sequence);
  }
  auto context = Context("", testing::TimeScaled(absl::Seconds(120)));
  auto ingest = stub->Ingest(context.get());
  std::atomic<uint64_t> written{0};
  std::atomic<bool> writer_done{false};
  std::thread writer([&] {
    for (const v1::IngestRequest& batch : batches) {
      if (!ingest->Write(batch)) break;
      written.fetch_add(1);
    }
    ingest->WritesDone();
    writer_done.store(true);
  });

  // Not reading: wait (bounded) until the writer is done or has made no progress for 2 s.
  int64_t rss_peak = rss_start;
  uint64_t last_written = 0;
  absl::Time last_progress = absl::Now();
  const absl::Time stall_deadline = absl::Now() + testing::TimeScaled(absl::Seconds(20));
  while (!writer_done.load() && absl::Now() < stall_deadline &&
         absl::Now() - last_progress < absl::Seconds(2)) {
    absl::SleepFor(absl::Milliseconds(100));
    rss_peak = std::max(rss_peak, ResidentBytes(server_->pid()));
    if (written.load() != last_written) {
      last_written = written.load();
      last_progress = absl::Now();
    }
  }
  const uint64_t written_while_stalled = written.load();
  // Other clients are served meanwhile.
  auto other = KlDrift::NewStub(SeparateTlsChannel(1));
  IngestOutcome outcome =
      IngestAll(other.get(), "", {Batch("other-client", 1, "other", "score", good)});
  EXPECT_TRUE(outcome.finish.ok()) << outcome.finish.error_message();
  EXPECT_EQ(outcome.acked, 1u);
  EXPECT_EQ(Samples(other.get(), Stream("other", "score")), TotalCount({good}));
  ExpectServing();
  rss_peak = std::max(rss_peak, ResidentBytes(server_->pid()));
  EXPECT_LT(rss_peak - rss_start, kMaxRssGrowth);
  std::fprintf(stderr,
               "stalled Ingest: %llu of %llu batches written before the client read; RSS "
               "%lld MiB at start, %lld MiB at most\n",
               static_cast<unsigned long long>(written_while_stalled),
               static_cast<unsigned long long>(kBatches), static_cast<long long>(rss_start / kMiB),
               static_cast<long long>(rss_peak / kMiB));

  // The client reads at last: cumulative acks, each bad batch's error once.
  uint64_t acked = 0;
  std::map<uint64_t, int> errors;
  v1::IngestResponse response;
  auto take = [&] {
    EXPECT_GE(response.acked_sequence(), acked);  // Cumulative: never goes back.
    acked = std::max(acked, response.acked_sequence());
    for (const v1::BatchError& error : response.errors()) {
      ++errors[error.sequence()];
      EXPECT_LE(error.sequence(), response.acked_sequence());
      EXPECT_EQ(error.code(), static_cast<int>(grpc::StatusCode::FAILED_PRECONDITION));
    }
  };
  while (acked < kBatches && ingest->Read(&response)) take();
  // The writer got through once the server read again (else the call is cancelled: bounded).
  for (const absl::Time deadline = absl::Now() + testing::TimeScaled(absl::Seconds(60));
       !writer_done.load() && absl::Now() < deadline;) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  if (!writer_done.load()) context->TryCancel();
  writer.join();
  while (ingest->Read(&response)) take();
  const grpc::Status finish = ingest->Finish();
  EXPECT_TRUE(finish.ok()) << finish.error_message();
  EXPECT_EQ(written.load(), kBatches);
  EXPECT_EQ(acked, kBatches);
  EXPECT_EQ(errors.size(), bad_sequences.size());
  for (const auto& [sequence, count] : errors) {
    EXPECT_TRUE(bad_sequences.contains(sequence)) << sequence;
    EXPECT_EQ(count, 1) << sequence;
  }
  EXPECT_EQ(Samples(stub.get(), Stream("stalled", "score")),
            static_cast<double>(kBatches - bad_sequences.size()) * TotalCount({good}));
  EXPECT_EQ(Metric("kldrift_duplicate_batches_total"), 0);
  EXPECT_LT(ResidentBytes(server_->pid()) - rss_start, kMaxRssGrowth);
  ExpectServing();
}

// A WatchDrift client that stops reading while the server produces reports far faster than the
// connection takes them (200 streams, three windows each, every 20 ms, to four watchers): the
// server drops reports (kldrift_watch_reports_dropped_total), its memory stays bounded, and the
// watchers are still served once they read again.
TEST_F(SecurityE2eTest, StalledWatchClientHasReportsDroppedNotBuffered) {
  ASSERT_NO_FATAL_FAILURE(StartServer(TlsFlags({"--eval-interval", "20ms"})));
  auto stub = KlDrift::NewStub(TlsChannel());
  constexpr int kStreams = 200;
  for (int i = 0; i < kStreams; ++i) {
    v1::PutReferenceResponse put;
    ASSERT_TRUE(
        stub->PutReference(Context().get(), NumericReference("watched", absl::StrCat("s", i)), &put)
            .ok());
  }
  const int64_t rss_start = ResidentBytes(server_->pid());
  ASSERT_GT(rss_start, 0);
  EXPECT_EQ(Metric("kldrift_watch_reports_dropped_total"), 0);

  constexpr int kWatchers = 4;
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
  std::vector<std::unique_ptr<grpc::ClientReader<v1::DriftReport>>> watchers;
  for (int i = 0; i < kWatchers; ++i) {
    contexts.push_back(Context("", testing::TimeScaled(absl::Seconds(60))));
    v1::WatchDriftRequest request;
    request.mutable_stream()->set_model("watched");
    watchers.push_back(stub->WatchDrift(contexts.back().get(), request));
  }
  // Never reading: the server drops reports (bounded wait, at least 3 s of stall).
  const absl::Time started = absl::Now();
  int64_t rss_peak = rss_start;
  double dropped = 0;
  while (absl::Now() < started + testing::TimeScaled(absl::Seconds(30))) {
    absl::SleepFor(absl::Milliseconds(200));
    rss_peak = std::max(rss_peak, ResidentBytes(server_->pid()));
    dropped = Metric("kldrift_watch_reports_dropped_total");
    if (dropped > 0 && absl::Now() >= started + absl::Seconds(3)) break;
  }
  EXPECT_GT(dropped, 0);
  // ... and goes on dropping rather than queueing.
  double dropped_later = dropped;
  for (const absl::Time deadline = absl::Now() + testing::TimeScaled(absl::Seconds(10));
       dropped_later <= dropped && absl::Now() < deadline;) {
    absl::SleepFor(absl::Milliseconds(100));
    rss_peak = std::max(rss_peak, ResidentBytes(server_->pid()));
    dropped_later = Metric("kldrift_watch_reports_dropped_total");
  }
  EXPECT_GT(dropped_later, dropped);
  EXPECT_LT(rss_peak - rss_start, kMaxRssGrowth);
  std::fprintf(stderr,
               "stalled WatchDrift: %.0f reports dropped; RSS %lld MiB at start, %lld MiB "
               "at most\n",
               dropped_later, static_cast<long long>(rss_start / kMiB),
               static_cast<long long>(rss_peak / kMiB));
  EXPECT_EQ(Metric("kldrift_watch_streams_active"), kWatchers);
  // Everyone else is served.
  ExpectServing();
  auto other = KlDrift::NewStub(SeparateTlsChannel(1));
  v1::GetDriftRequest drift;
  *drift.mutable_stream() = Stream("watched", "s0");
  v1::GetDriftResponse reports;
  EXPECT_TRUE(other->GetDrift(Context().get(), drift, &reports).ok());
  // The watchers were not dropped: reading, they get reports; then they hang up.
  for (int i = 0; i < kWatchers; ++i) {
    v1::DriftReport report;
    ASSERT_TRUE(watchers[i]->Read(&report)) << "watcher " << i;
    EXPECT_EQ(report.stream().model(), "watched");
    contexts[i]->TryCancel();
    while (watchers[i]->Read(&report)) {
    }
    EXPECT_EQ(watchers[i]->Finish().error_code(), grpc::StatusCode::CANCELLED);
  }
  EXPECT_TRUE(WaitForMetric("kldrift_watch_streams_active", 0));
  ExpectServing();
}

// --grpc-memory-limit at its minimum (16 MiB) against a burst of 4 MB messages from eight clients
// at once, far more than 16 MiB in all: a call may be refused with RESOURCE_EXHAUSTED (gRPC
// cancels calls to free memory), the server stays up and healthy, and serves normally afterwards.
// The messages carry raw values, so they are large on the wire while the state they leave is small.
//
// gRPC also frees memory by closing connections with no call open (GOAWAY "Buffers full"); a call
// that starts on one at that moment fails UNAVAILABLE ("GOAWAY received", "Broken pipe") before the
// server has seen it, and is too large for gRPC to retry by itself. Clients retry UNAVAILABLE: such
// calls are retried after the burst and must succeed. No call ends any other way.
TEST_F(SecurityE2eTest, GrpcMemoryLimitHoldsAgainstABurstOfLargeMessages) {
  ASSERT_NO_FATAL_FAILURE(StartServer(
      TlsFlags({"--grpc-memory-limit", "16777216", "--max-receive-message-bytes", "8388608"})));
  auto stub = KlDrift::NewStub(TlsChannel());
  constexpr int kValues = 500000;  // 4 MB of doubles.
  auto big_reference = [&](const std::string& signal) {
    v1::PutReferenceRequest request = NumericReference("burst", signal);
    request.mutable_values()->mutable_values()->Resize(kValues, 1.5);  // Replaces the counts.
    return request;
  };
  auto big_batch = [&](const std::string& client) {
    v1::IngestRequest request = Batch(client, 1, "burst", "ingest", {});
    request.mutable_streams(0)->mutable_values()->mutable_values()->Resize(kValues, 2.5);
    return request;
  };
  ASSERT_GT(big_reference("x").ByteSizeLong(), 4000000u);
  ASSERT_GT(big_batch("x").ByteSizeLong(), 4000000u);
  v1::PutReferenceResponse put;
  grpc::Status status =
      stub->PutReference(Context().get(), NumericReference("burst", "ingest"), &put);
  ASSERT_TRUE(status.ok()) << status.error_message();
  const int64_t rss_start = ResidentBytes(server_->pid());
  ASSERT_GT(rss_start, 0);

  // Eight clients at once, each on a connection of its own: even ones put references, odd ones
  // ingest; three calls each.
  constexpr int kClients = 8;
  constexpr int kRounds = 3;
  struct Call {
    grpc::Status status;
    bool ingest = false;
    uint64_t acked = 0;
  };
  auto run_call = [&](KlDrift::Stub* client, int c, int round) {
    Call call;
    if (c % 2 == 0) {
      v1::PutReferenceResponse response;
      call.status = client->PutReference(Context("", testing::TimeScaled(absl::Seconds(60))).get(),
                                         big_reference(absl::StrCat("put-", c)), &response);
    } else {
      call.ingest = true;
      IngestOutcome outcome =
          IngestAll(client, "", {big_batch(absl::StrCat("burst-", c, "-", round))});
      call.status = outcome.finish;
      call.acked = outcome.acked;
      if (call.status.ok() && !outcome.errors.empty()) {
        call.status = grpc::Status(static_cast<grpc::StatusCode>(outcome.errors[0].code()),
                                   outcome.errors[0].message());
      }
    }
    return call;
  };
  std::vector<std::vector<Call>> calls(kClients);
  std::vector<std::thread> clients;
  for (int c = 0; c < kClients; ++c) {
    clients.emplace_back([&, c] {
      auto client = KlDrift::NewStub(SeparateTlsChannel(100 + c));
      for (int round = 0; round < kRounds; ++round) {
        calls[c].push_back(run_call(client.get(), c, round));
      }
    });
  }
  for (std::thread& client : clients) client.join();
  const int64_t rss_after = ResidentBytes(server_->pid());

  int ok = 0;
  int exhausted = 0;
  int retried = 0;
  uint64_t ingested = 0;  // Batches acknowledged.
  int ingest_calls = 0;
  for (int c = 0; c < kClients; ++c) {
    for (int round = 0; round < kRounds; ++round) {
      Call call = calls[c][round];
      if (call.status.error_code() == grpc::StatusCode::UNAVAILABLE) {
        // The connection was closed under it: nothing acknowledged. Retried, it goes through.
        EXPECT_EQ(call.acked, 0u) << call.status.error_message();
        ++retried;
        call = run_call(KlDrift::NewStub(SeparateTlsChannel(1000 + c)).get(), c, round);
        EXPECT_TRUE(call.status.ok()) << "retry: " << call.status.error_message();
      }
      EXPECT_THAT(call.status.error_code(),
                  AnyOf(Eq(grpc::StatusCode::OK), Eq(grpc::StatusCode::RESOURCE_EXHAUSTED)))
          << (call.ingest ? "Ingest: " : "PutReference: ") << call.status.error_message();
      if (call.status.ok()) ++ok;
      if (call.status.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) ++exhausted;
      if (call.ingest) {
        ++ingest_calls;
        ingested += call.acked;
      }
    }
  }
  std::fprintf(
      stderr,
      "memory-limit burst: %d OK, %d RESOURCE_EXHAUSTED, %d retried after UNAVAILABLE; RSS "
      "%lld MiB, then %lld MiB\n",
      ok, exhausted, retried, static_cast<long long>(rss_start / kMiB),
      static_cast<long long>(rss_after / kMiB));
  EXPECT_EQ(ok + exhausted, kClients * kRounds);
  EXPECT_LT(rss_after - rss_start, kMaxRssGrowth);
  // The same process is up and healthy, and every acknowledged batch is in the window (one not
  // acknowledged may or may not have been applied).
  ASSERT_EQ(kill(server_->pid(), 0), 0);
  ExpectServing();
  const double samples = Samples(stub.get(), Stream("burst", "ingest"));
  EXPECT_GE(samples, static_cast<double>(ingested) * kValues);
  EXPECT_LE(samples, static_cast<double>(ingest_calls) * kValues);
  // A normal call works after the burst.
  status = stub->PutReference(Context().get(), NumericReference("after-burst", "score"), &put);
  EXPECT_TRUE(status.ok()) << status.error_message();
  IngestOutcome after = IngestAll(
      stub.get(), "", {Batch("after-burst", 1, "after-burst", "score", {0, 1, 2, 3, 0, 0})});
  EXPECT_TRUE(after.finish.ok()) << after.finish.error_message();
  EXPECT_EQ(after.acked, 1u);
  EXPECT_EQ(Samples(stub.get(), Stream("after-burst", "score")), 6);
}

TEST_F(SecurityE2eTest, GrpcMemoryLimitBelow16MiBIsRefusedAtStartUp) {
  absl::StatusOr<std::unique_ptr<testing::ServerProcess>> refused =
      testing::ServerProcess::Start(testing::BinaryPath("KLDRIFTD", "server/kldriftd"),
                                    TlsFlags({"--grpc-memory-limit", "16777215"}));
  ASSERT_FALSE(refused.ok());
  EXPECT_THAT(refused.status().message(), HasSubstr("--grpc-memory-limit"));
  EXPECT_THAT(refused.status().message(), HasSubstr("16 MiB"));
  // 16 MiB itself is accepted.
  ASSERT_NO_FATAL_FAILURE(StartServer(TlsFlags({"--grpc-memory-limit", "16777216"})));
  EXPECT_TRUE(List(TlsChannel()).ok());
}

// --- CLI -----------------------------------------------------------------------------------------

TEST_F(SecurityE2eTest, CliOverMutualTlsWithAToken) {
  std::vector<std::string> flags = MutualTlsFlags();
  flags.insert(flags.end(), {"--auth-tokens", WriteStandardTokens()});
  ASSERT_NO_FATAL_FAILURE(StartServer(flags));
  const std::string cli = testing::BinaryPath("KLDRIFT_CLI", "client/cli/kldrift");
  const std::string writer_token_file = test_dir_ + "/writer.token";
  const std::string reader_token_file = test_dir_ + "/reader.token";
  WriteFile(writer_token_file, absl::StrCat(kWriterToken, "\n"));
  WriteFile(reader_token_file, absl::StrCat(kReaderToken, "\n"));
  auto kldrift = [&](const std::string& token_file, std::vector<std::string> command,
                     const std::vector<std::string>& env = {}) {
    std::vector<std::string> argv = {cli,
                                     "--server",
                                     server_->address(),
                                     "--timeout",
                                     "10s",
                                     "--tls-ca",
                                     Path("ca.pem"),
                                     "--tls-cert",
                                     Path("client.pem"),
                                     "--tls-key",
                                     Path("client.key")};
    if (!token_file.empty()) argv.insert(argv.end(), {"--token-file", token_file});
    argv.insert(argv.end(), command.begin(), command.end());
    return RunProcess(argv, test_dir_, env);
  };
  const std::vector<std::string> put = {"reference", "put",     "--model", "cli-model", "--signal",
                                        "score",     "--edges", "0,1,2,3", "--counts",  "10,20,30"};
  ProcessResult r = kldrift(writer_token_file, put);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  r = kldrift(writer_token_file,
              {"ingest", "--model", "cli-model", "--signal", "score", "--counts", "0,5,5,5,0,0"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  r = kldrift(reader_token_file,
              {"drift", "--model", "cli-model", "--signal", "score", "--window", "5m", "--json"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("\"samples\": 15"));

  // The token from $KLDRIFT_TOKEN.
  r = kldrift("", {"reference", "get", "--model", "cli-model", "--signal", "score"},
              {absl::StrCat("KLDRIFT_TOKEN=", kReaderToken)});
  EXPECT_EQ(r.exit_code, 0) << r.err;

  // No token: exit 1, UNAUTHENTICATED. A reader cannot write: PERMISSION_DENIED.
  r = kldrift("", put);
  EXPECT_EQ(r.exit_code, 1) << r.out;
  EXPECT_THAT(r.err, HasSubstr("UNAUTHENTICATED"));
  r = kldrift("", {"drift", "--model", "cli-model", "--signal", "score"});
  EXPECT_EQ(r.exit_code, 1) << r.out;
  EXPECT_THAT(r.err, HasSubstr("UNAUTHENTICATED"));
  r = kldrift(reader_token_file, put);
  EXPECT_EQ(r.exit_code, 1) << r.out;
  EXPECT_THAT(r.err, HasSubstr("PERMISSION_DENIED"));
  ExpectNoToken(r.err, "CLI stderr");

  // Without the client certificate the handshake fails, token or not.
  r = RunProcess(
      {cli, "--server", server_->address(), "--timeout", "5s", "--tls-ca", Path("ca.pem"),
       "--token-file", writer_token_file, "drift", "--model", "cli-model", "--signal", "score"},
      test_dir_);
  EXPECT_EQ(r.exit_code, 1) << r.out;
  EXPECT_THAT(r.err, HasSubstr("UNAVAILABLE"));
  ExpectNoToken(server_->ReadLog(), "server log");
}

// Ingest client ids (and their de-duplication sequence numbers) belong to the token: a writer
// scoped to other-* that sends a batch under another tenant's client id with a huge sequence
// number must not make the victim's later batches look like duplicates (they would be acknowledged
// and silently not applied), nor take over the victim's live stream.
TEST_F(SecurityE2eTest, ClientIdsOfAnotherTenantCannotBeHijacked) {
  std::vector<std::string> flags = TlsFlags();
  flags.insert(flags.end(), {"--auth-tokens", WriteStandardTokens()});
  ASSERT_NO_FATAL_FAILURE(StartServer(flags));
  auto stub = KlDrift::NewStub(TlsChannel());
  for (const std::string model : {"fraud-scorer", "other-a"}) {
    v1::PutReferenceResponse put;
    ASSERT_TRUE(stub->PutReference(Context(Bearer(kAdminToken)).get(),
                                   NumericReference(model, "score"), &put)
                    .ok());
  }
  const std::vector<double> counts = {0, 1, 1, 1, 0, 0};
  IngestOutcome victim = IngestAll(stub.get(), Bearer(kFraudWriterToken),
                                   {Batch("fraud-pod-1", 1, "fraud-scorer", "score", counts)});
  ASSERT_EQ(victim.acked, 1u);
  // Another tenant, allowed only on other-*, reuses the victim's client id.
  IngestOutcome attacker = IngestAll(stub.get(), Bearer(kScopedToken),
                                     {Batch("fraud-pod-1", 1000000, "other-a", "score", counts)});
  EXPECT_TRUE(attacker.finish.ok());
  victim = IngestAll(stub.get(), Bearer(kFraudWriterToken),
                     {Batch("fraud-pod-1", 2, "fraud-scorer", "score", counts)});
  EXPECT_EQ(victim.acked, 2u);
  EXPECT_EQ(Samples(stub.get(), Stream("fraud-scorer", "score")), TotalCount({counts, counts}));
}

// ListReferences with a scoped token: the page token is the last key of the page the caller may
// see, never a stream of a model outside the scope (it would hand over its model, version and
// signal names).
TEST_F(SecurityE2eTest, PageTokensDoNotNameModelsOutsideTheScope) {
  std::vector<std::string> flags = TlsFlags();
  flags.insert(flags.end(), {"--auth-tokens", WriteStandardTokens()});
  ASSERT_NO_FATAL_FAILURE(StartServer(flags));
  auto stub = KlDrift::NewStub(TlsChannel());
  for (const std::string model : {"fraud-scorer", "secret-model", "zzz-last"}) {
    v1::PutReferenceResponse put;
    ASSERT_TRUE(stub->PutReference(Context(Bearer(kAdminToken)).get(),
                                   NumericReference(model, "hidden-signal"), &put)
                    .ok());
  }
  std::vector<std::string> listed;
  std::string page_token;
  for (int pages = 0; pages < 10; ++pages) {
    v1::ListReferencesRequest request;
    request.set_page_size(1);
    request.set_page_token(page_token);
    v1::ListReferencesResponse response;
    ASSERT_TRUE(
        stub->ListReferences(Context(Bearer(kFraudReaderToken)).get(), request, &response).ok());
    for (const v1::Reference& r : response.references()) listed.push_back(r.stream().model());
    page_token = response.next_page_token();
    std::string decoded;
    absl::WebSafeBase64Unescape(page_token, &decoded);
    EXPECT_THAT(decoded, Not(HasSubstr("secret-model")));
    if (page_token.empty()) break;
  }
  EXPECT_THAT(listed, ::testing::ElementsAre("fraud-scorer"));
}

}  // namespace
}  // namespace kldrift
