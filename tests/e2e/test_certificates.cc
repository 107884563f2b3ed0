#include "tests/e2e/test_certificates.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

extern char** environ;

namespace kldrift::testing {
namespace {

constexpr char kOpensslConfig[] =
    "[req]\n"
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

std::string ReadWholeFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// Runs openssl with `args` (PATH searched), stdout and stderr to `log`; fails with its stderr.
absl::Status RunOpenssl(const std::vector<std::string>& args, const std::string& log) {
  std::vector<std::string> argv = {"openssl"};
  argv.insert(argv.end(), args.begin(), args.end());
  std::vector<char*> pointers;
  for (std::string& a : argv) pointers.push_back(a.data());
  pointers.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, log.c_str(),
                                   O_WRONLY | O_CREAT | O_TRUNC, 0600);
  posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
  pid_t pid = 0;
  const int spawned = posix_spawnp(&pid, "openssl", &actions, nullptr, pointers.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (spawned != 0) {
    return absl::InternalError(absl::StrCat("cannot start openssl (error ", spawned, ")"));
  }
  int status = 0;
  if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return absl::InternalError(
        absl::StrCat(absl::StrJoin(argv, " "), " failed: ", ReadWholeFile(log)));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<TestCertificates> TestCertificates::Generate(const std::string& dir) {
  std::error_code error;
  std::filesystem::create_directories(dir, error);
  if (error) return absl::InternalError(absl::StrCat("cannot create ", dir, ": ", error.message()));
  TestCertificates pki;
  pki.dir = dir;
  const std::string config = pki.Path("openssl.cnf");
  {
    std::ofstream out(config);
    out << kOpensslConfig;
    if (!out.good()) return absl::InternalError(absl::StrCat("cannot write ", config));
  }
  const std::string log = pki.Path("openssl.log");
  const std::vector<std::string> new_key = {"-newkey", "ec", "-pkeyopt",
                                            "ec_paramgen_curve:prime256v1", "-nodes"};
  int serial = 1000;
  // Reads <name>.pem and <name>.key, which openssl has just written, into `files`.
  auto finish = [&](const std::string& name, CertificateFiles& files) -> absl::Status {
    files.cert_path = pki.Path(name + ".pem");
    files.key_path = pki.Path(name + ".key");
    files.cert_pem = ReadWholeFile(files.cert_path);
    files.key_pem = ReadWholeFile(files.key_path);
    if (files.cert_pem.empty() || files.key_pem.empty()) {
      return absl::InternalError(absl::StrCat("openssl left ", name, " empty"));
    }
    return absl::OkStatus();
  };
  auto make_ca = [&](const std::string& name, const std::string& subject,
                     CertificateFiles& files) -> absl::Status {
    std::vector<std::string> args = {"req", "-x509", "-config", config, "-extensions", "ca_ext"};
    args.insert(args.end(), new_key.begin(), new_key.end());
    args.insert(args.end(), {"-keyout", pki.Path(name + ".key"), "-out", pki.Path(name + ".pem"),
                             "-days", "2", "-subj", subject});
    if (absl::Status s = RunOpenssl(args, log); !s.ok()) return s;
    return finish(name, files);
  };
  auto make_leaf = [&](const std::string& name, const CertificateFiles& ca,
                       const std::string& subject, const std::string& extensions,
                       CertificateFiles& files) -> absl::Status {
    std::vector<std::string> args = {"req", "-new", "-config", config};
    args.insert(args.end(), new_key.begin(), new_key.end());
    args.insert(args.end(), {"-keyout", pki.Path(name + ".key"), "-out", pki.Path(name + ".csr"),
                             "-subj", subject});
    if (absl::Status s = RunOpenssl(args, log); !s.ok()) return s;
    if (absl::Status s = RunOpenssl(
            {"x509", "-req", "-in", pki.Path(name + ".csr"), "-CA", ca.cert_path, "-CAkey",
             ca.key_path, "-set_serial", std::to_string(++serial), "-days", "2", "-out",
             pki.Path(name + ".pem"), "-extfile", config, "-extensions", extensions},
            log);
        !s.ok()) {
      return s;
    }
    return finish(name, files);
  };
  // In order, stopping at the first failure: each leaf needs its CA.
  const std::vector<std::function<absl::Status()>> steps = {
      [&] { return make_ca("ca", "/CN=kldrift e2e test CA", pki.ca); },
      [&] { return make_leaf("server", pki.ca, "/CN=localhost", "server_ext", pki.server); },
      [&] {
        return make_leaf("client", pki.ca, "/CN=kldrift e2e client", "client_ext", pki.client);
      },
      [&] { return make_ca("rogue-ca", "/CN=kldrift e2e rogue CA", pki.rogue_ca); },
      [&] {
        return make_leaf("rogue-client", pki.rogue_ca, "/CN=kldrift e2e rogue client", "client_ext",
                         pki.rogue_client);
      },
      // The rogue CA also signs a server certificate for 127.0.0.1 (a man in the middle).
      [&] {
        return make_leaf("rogue-server", pki.rogue_ca, "/CN=localhost", "server_ext",
                         pki.rogue_server);
      },
  };
  for (const auto& step : steps) {
    if (absl::Status s = step(); !s.ok()) return s;
  }
  return pki;
}

std::vector<std::string> TestCertificates::ServerFlags() const {
  return {"--tls-cert", server.cert_path, "--tls-key", server.key_path};
}

std::shared_ptr<grpc::Channel> TlsChannel(const std::string& address, const std::string& ca_pem,
                                          const grpc::ChannelArguments& args) {
  grpc::SslCredentialsOptions options;
  options.pem_root_certs = ca_pem;
  return grpc::CreateCustomChannel(address, grpc::SslCredentials(options), args);
}

}  // namespace kldrift::testing
