// TestCertificates: a throw-away PKI for end-to-end tests over real TLS, made with the openssl
// command-line tool, and TLS channels that trust it.
//
//   absl::StatusOr<TestCertificates> pki = TestCertificates::Generate("/tmp/my-test-pki");
//   StartServer(pki->ServerFlags());
//   auto stub = v1::KlDrift::NewStub(TlsChannel(server.address(), pki->ca.cert_pem));
//
// Every certificate is an EC P-256 key valid for two days. The server certificate is valid for
// IP:127.0.0.1 and DNS:localhost, so clients verify it against a loopback address.
//
// Thread safety: Generate may run while other threads (gRPC's) are alive: it starts openssl with
// posix_spawn, not fork. The result is a value type.
#ifndef KLDRIFT_TESTS_E2E_TEST_CERTIFICATES_H_
#define KLDRIFT_TESTS_E2E_TEST_CERTIFICATES_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "grpcpp/grpcpp.h"

namespace kldrift::testing {

// One certificate and its private key: where they are and what they hold (PEM).
struct CertificateFiles {
  std::string cert_path;
  std::string key_path;
  std::string cert_pem;
  std::string key_pem;
};

struct TestCertificates {
  // Writes the PKI into `dir` (created if missing; the caller removes it). The files are named
  // <name>.pem and <name>.key after the fields below ("ca", "server", "client", "rogue-ca",
  // "rogue-client", "rogue-server"). Fails with the openssl command and its stderr.
  static absl::StatusOr<TestCertificates> Generate(const std::string& dir);

  // --tls-cert and --tls-key of the server certificate, for kldriftd.
  std::vector<std::string> ServerFlags() const;
  // `file` in `dir`.
  std::string Path(const std::string& file) const { return dir + "/" + file; }

  std::string dir;
  CertificateFiles ca;      // The test CA: clients trust it, it signs the two below.
  CertificateFiles server;  // Server auth, for 127.0.0.1 and localhost.
  CertificateFiles client;  // Client auth (mutual TLS).
  // Another CA with a client and a server certificate of its own: a stranger, a man in the middle.
  CertificateFiles rogue_ca;
  CertificateFiles rogue_client;
  CertificateFiles rogue_server;
};

// A TLS channel to `address` (e.g. "127.0.0.1:1234") trusting only the PEM roots `ca_pem`, with
// gRPC's own credentials (not kldrift's client library). `args` may force a separate connection.
std::shared_ptr<grpc::Channel> TlsChannel(const std::string& address, const std::string& ca_pem,
                                          const grpc::ChannelArguments& args = {});

}  // namespace kldrift::testing

#endif  // KLDRIFT_TESTS_E2E_TEST_CERTIFICATES_H_
