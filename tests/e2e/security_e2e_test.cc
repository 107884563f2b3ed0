// End-to-end tests of kldriftd's access control against a real server process: TLS and mutual
// TLS with certificates generated here by the openssl tool, bearer tokens on every RPC (and their
// reload on SIGHUP), basic auth on /metrics, the per-model stream limit, and the kldrift CLI over
// TLS with a token. Loopback only; every wait is bounded.
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "client/kldrift_client.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "kldrift/v1/kldrift.grpc.pb.h"
#include "tests/e2e/health.grpc.pb.h"
#include "tests/e2e/server_process.h"

extern char** environ;

namespace kldrift {
namespace {

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
                         absl::Duration timeout = absl::Seconds(60)) {
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

std::unique_ptr<grpc::ClientContext> Context(const std::string& authorization = "",
                                             absl::Duration deadline = kRpcDeadline) {
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
  auto context = Context(authorization, absl::Seconds(30));
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

class SecurityE2eTest : public ::testing::Test {
 protected:
  // A CA, a server certificate for 127.0.0.1 and localhost, a client certificate, and a rogue
  // CA with its own client certificate: generated once for the whole suite.
  static void SetUpTestSuite() {
    char dir_template[] = "/tmp/kldrift-security-e2e-XXXXXX";
    if (mkdtemp(dir_template) == nullptr) {
      *pki_error_ = "mkdtemp failed";
      return;
    }
    *dir_ = dir_template;
    std::ofstream config(Path("openssl.cnf"));
    config << "[req]\n"
              "distinguished_name = dn\n"
              "prompt = no\n"
              "[dn]\n"
              "CN = unused\n"
              "[ca_ext]\n"
              "basicConstraints = critical,CA:TRUE\n"
              "keyUsage = critical,keyCertSign,cRLSign\n"
              "subjectKeyIdentifier = hash\n"
              "[server_ext]\n"
              "basicConstraints = CA:FALSE\n"
              "keyUsage = critical,digitalSignature\n"
              "extendedKeyUsage = serverAuth\n"
              "subjectAltName = IP:127.0.0.1,DNS:localhost\n"
              "authorityKeyIdentifier = keyid\n"
              "[client_ext]\n"
              "basicConstraints = CA:FALSE\n"
              "keyUsage = critical,digitalSignature\n"
              "extendedKeyUsage = clientAuth\n"
              "authorityKeyIdentifier = keyid\n";
    config.close();
    int serial = 1000;
    auto run = [](const std::vector<std::string>& argv) {
      ProcessResult r = RunProcess(argv, *dir_);
      if (r.exit_code != 0 && pki_error_->empty()) {
        *pki_error_ = absl::StrCat(absl::StrJoin(argv, " "), " failed: ", r.err);
      }
    };
    const std::vector<std::string> new_key = {"-newkey", "ec", "-pkeyopt",
                                              "ec_paramgen_curve:prime256v1", "-nodes"};
    auto make_ca = [&](const std::string& name, const std::string& subject) {
      std::vector<std::string> argv = {"openssl",           "req",         "-x509", "-config",
                                       Path("openssl.cnf"), "-extensions", "ca_ext"};
      argv.insert(argv.end(), new_key.begin(), new_key.end());
      argv.insert(argv.end(), {"-keyout", Path(name + ".key"), "-out", Path(name + ".pem"), "-days",
                               "2", "-subj", subject});
      run(argv);
    };
    auto make_leaf = [&](const std::string& name, const std::string& ca, const std::string& subject,
                         const std::string& extensions) {
      std::vector<std::string> argv = {"openssl", "req", "-new", "-config", Path("openssl.cnf")};
      argv.insert(argv.end(), new_key.begin(), new_key.end());
      argv.insert(argv.end(),
                  {"-keyout", Path(name + ".key"), "-out", Path(name + ".csr"), "-subj", subject});
      run(argv);
      run({"openssl", "x509", "-req", "-in", Path(name + ".csr"), "-CA", Path(ca + ".pem"),
           "-CAkey", Path(ca + ".key"), "-set_serial", std::to_string(++serial), "-days", "2",
           "-out", Path(name + ".pem"), "-extfile", Path("openssl.cnf"), "-extensions",
           extensions});
    };
    make_ca("ca", "/CN=kldrift e2e test CA");
    make_leaf("server", "ca", "/CN=localhost", "server_ext");
    make_leaf("client", "ca", "/CN=kldrift e2e client", "client_ext");
    make_ca("rogue-ca", "/CN=kldrift e2e rogue CA");
    make_leaf("rogue-client", "rogue-ca", "/CN=kldrift e2e rogue client", "client_ext");
    // The rogue CA also signs a server certificate for 127.0.0.1 (a man in the middle).
    make_leaf("rogue-server", "rogue-ca", "/CN=localhost", "server_ext");
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

  void StartServer(std::vector<std::string> flags) {
    flags.insert(flags.end(), {"--eval-interval", "100ms", "--shutdown-grace", "1s"});
    absl::StatusOr<std::unique_ptr<testing::ServerProcess>> server =
        testing::ServerProcess::Start(testing::BinaryPath("KLDRIFTD", "server/kldriftd"), flags);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
  }

  static std::vector<std::string> TlsFlags() {
    return {"--tls-cert", Path("server.pem"), "--tls-key", Path("server.key")};
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
    return stub->ListReferences(Context(authorization, absl::Seconds(5)).get(), request, &response);
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

  // Waits (bounded) until the server's log holds `count` lines containing `text`.
  bool WaitForLog(const std::string& text, int count, absl::Duration timeout = absl::Seconds(15)) {
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
  std::string test_dir_;
  std::unique_ptr<testing::ServerProcess> server_;
};

std::string* const SecurityE2eTest::dir_ = new std::string;
std::string* const SecurityE2eTest::pki_error_ = new std::string;

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
  status = grpc::health::v1::Health::NewStub(TlsChannel("ca.pem"))
               ->Check(Context("", absl::Seconds(5)).get(), request, &response);
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
  kBackup
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
                                 Rpc::kWatchDrift,      Rpc::kBackup};
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
      {"reader", Bearer(kReaderToken), {kDenied, kOk, kOk, kDenied, kDenied, kOk, kOk, kDenied}},
      {"writer", Bearer(kWriterToken), {kOk, kOk, kOk, kOk, kOk, kOk, kOk, kDenied}},
      {"admin", Bearer(kAdminToken), {kOk, kOk, kOk, kOk, kOk, kOk, kOk, kOk}},
      {"writer scoped to other-*",
       Bearer(kScopedToken),
       {kDenied, kDenied, kDenied, kDenied, kDenied, kDenied, kDenied, kDenied}},
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
  KlDriftClient client(CreateChannel(options), kRpcDeadline);
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
  auto context = Context(Bearer(kTokenA), absl::Seconds(60));
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
  ASSERT_NO_FATAL_FAILURE(StartServer({"--max-streams-per-model", "2"}));
  auto stub = KlDrift::NewStub(server_->Channel());
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
  ASSERT_NO_FATAL_FAILURE(
      StartServer({"--max-concurrent-streams-per-connection", "2", "--eval-interval", "100ms"}));
  auto stub = KlDrift::NewStub(server_->Channel());
  v1::PutReferenceResponse put;
  ASSERT_TRUE(stub->PutReference(Context().get(), NumericReference("capped", "s"), &put).ok());
  // Two long-lived WatchDrift calls on this connection.
  std::vector<std::unique_ptr<grpc::ClientContext>> watch_contexts;
  std::vector<std::unique_ptr<grpc::ClientReader<v1::DriftReport>>> watches;
  for (int i = 0; i < 2; ++i) {
    watch_contexts.push_back(Context("", absl::Seconds(60)));
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
  auto other = KlDrift::NewStub(
      grpc::CreateCustomChannel(server_->address(), grpc::InsecureChannelCredentials(), separate));
  EXPECT_TRUE(other->GetReference(Context("", absl::Seconds(5)).get(), get, &reference).ok());
  // One watch ends: the first connection has room again.
  watch_contexts[0]->TryCancel();
  v1::DriftReport report;
  while (watches[0]->Read(&report)) {
  }
  watches[0]->Finish();
  EXPECT_TRUE(stub->GetReference(Context("", absl::Seconds(5)).get(), get, &reference).ok());
  watch_contexts[1]->TryCancel();
  while (watches[1]->Read(&report)) {
  }
  watches[1]->Finish();
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
