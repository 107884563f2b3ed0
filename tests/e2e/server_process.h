// ServerProcess: a real kldriftd child process for end-to-end tests.
//
// Starts the binary with --listen 127.0.0.1:0 (and --metrics-listen 127.0.0.1:0) and port files
// in a fresh temporary folder, waits
// (bounded) until the port file appears, and stops the process with SIGTERM (then SIGKILL after a
// grace period) when destroyed. Loopback only.
//
// Thread safety: thread-compatible.
#ifndef KLDRIFT_TESTS_E2E_SERVER_PROCESS_H_
#define KLDRIFT_TESTS_E2E_SERVER_PROCESS_H_

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"

namespace kldrift::testing {

// `d` times $KLDRIFT_TEST_TIME_SCALE (default 1): the deadlines and waits of end-to-end tests go
// through this, so the same tests run against a server slowed down 5-15x by ThreadSanitizer
// (tests/tsan/run_e2e_under_tsan.sh sets the scale). Durations a test asserts an upper bound on
// (a deadline must expire quickly) stay as they are.
absl::Duration TimeScaled(absl::Duration d);

// GET http://127.0.0.1:`port``path` (HTTP/1.0, 10 s receive timeout); the body of a 200 response.
absl::StatusOr<std::string> HttpGet(int port, const std::string& path);

struct HttpResponse {
  int status_code = 0;
  std::string body;
};
// The same GET with extra header lines (e.g. "Authorization: Basic ..."), whatever the status.
absl::StatusOr<HttpResponse> HttpFetch(int port, const std::string& path,
                                       const std::vector<std::string>& headers = {});

// The value of one series in a Prometheus text exposition ("name" or "name{labels}" exactly as
// kldriftd writes them), or NaN if absent.
double MetricValue(const std::string& exposition, const std::string& series);

class ServerProcess {
 public:
  // Starts `binary` with the given extra flags. Fails if it does not serve within `startup`.
  static absl::StatusOr<std::unique_ptr<ServerProcess>> Start(
      const std::string& binary, const std::vector<std::string>& extra_flags,
      absl::Duration startup = absl::Seconds(20));
  ~ServerProcess();

  int port() const { return port_; }
  // The metrics endpoint's port (0 if the test passed its own --metrics-listen).
  int metrics_port() const { return metrics_port_; }

  // Waits (bounded by `timeout`) until the server has finished `ticks` more evaluations than when
  // called, read from kldrift_evaluation_duration_seconds_count. Two ticks guarantee that one whole
  // evaluation started after the call: everything applied before it has been evaluated.
  absl::Status WaitForEvaluations(int ticks = 2, absl::Duration timeout = absl::Seconds(60)) const;
  std::string address() const;
  std::shared_ptr<grpc::Channel> Channel() const;
  const std::string& work_dir() const { return work_dir_; }
  // The child's pid (e.g. to send it SIGHUP); -1 once stopped.
  pid_t pid() const { return pid_; }
  // Everything the server has written to stdout and stderr so far.
  std::string ReadLog() const;

  // Sends SIGTERM and waits (bounded) for exit; returns the exit status as from waitpid, or -1
  // if it had to be killed. Later calls return the same status.
  int Stop(absl::Duration grace = absl::Seconds(15));
  // SIGKILL, no shutdown.
  void Kill();

 private:
  ServerProcess() = default;

  pid_t pid_ = -1;
  int exit_status_ = 0;  // From waitpid, once the process has been reaped; -1 if killed.
  int port_ = 0;
  int metrics_port_ = 0;
  std::string work_dir_;
};

// Path of a binary built next to the tests: from the environment variable `env_var` (set by CTest),
// else `fallback`.
std::string BinaryPath(const char* env_var, const std::string& fallback);

}  // namespace kldrift::testing

#endif  // KLDRIFT_TESTS_E2E_SERVER_PROCESS_H_
