#include "tests/e2e/server_process.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace kldrift::testing {

absl::Duration TimeScaled(absl::Duration d) {
  static const double scale = [] {
    const char* value = std::getenv("KLDRIFT_TEST_TIME_SCALE");
    double parsed = 1;
    if (value != nullptr && absl::SimpleAtod(value, &parsed) && parsed >= 1) return parsed;
    return 1.0;
  }();
  return d * scale;
}

std::string BinaryPath(const char* env_var, const std::string& fallback) {
  const char* value = std::getenv(env_var);
  return value != nullptr && *value != '\0' ? value : fallback;
}

absl::StatusOr<HttpResponse> HttpFetch(int port, const std::string& path,
                                       const std::vector<std::string>& headers) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return absl::InternalError("socket failed");
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  timeval timeout{10, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  if (connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) {
    close(fd);
    return absl::UnavailableError(absl::StrCat("cannot connect to 127.0.0.1:", port));
  }
  std::string request = absl::StrCat("GET ", path, " HTTP/1.0\r\nHost: 127.0.0.1\r\n");
  for (const std::string& header : headers) absl::StrAppend(&request, header, "\r\n");
  absl::StrAppend(&request, "Connection: close\r\n\r\n");
  if (send(fd, request.data(), request.size(), 0) != static_cast<ssize_t>(request.size())) {
    close(fd);
    return absl::UnavailableError("send failed");
  }
  std::string response;
  char buffer[65536];
  for (ssize_t n; (n = recv(fd, buffer, sizeof(buffer), 0)) > 0;) response.append(buffer, n);
  close(fd);
  // "HTTP/1.x NNN reason"
  HttpResponse result;
  if (response.rfind("HTTP/1.", 0) != 0 || response.size() < 12 ||
      !absl::SimpleAtoi(response.substr(9, 3), &result.status_code)) {
    return absl::UnavailableError(absl::StrCat("GET ", path, ": ", response.substr(0, 80)));
  }
  const size_t body = response.find("\r\n\r\n");
  if (body != std::string::npos) result.body = response.substr(body + 4);
  return result;
}

absl::StatusOr<std::string> HttpGet(int port, const std::string& path) {
  absl::StatusOr<HttpResponse> response = HttpFetch(port, path);
  if (!response.ok()) return response.status();
  if (response->status_code != 200) {
    return absl::UnavailableError(absl::StrCat("GET ", path, ": HTTP ", response->status_code));
  }
  return std::move(response->body);
}

double MetricValue(const std::string& exposition, const std::string& series) {
  const std::string key = "\n" + series + " ";
  const std::string text = "\n" + exposition;
  const size_t at = text.find(key);
  if (at == std::string::npos) return std::nan("");
  return std::strtod(text.c_str() + at + key.size(), nullptr);
}

absl::Status ServerProcess::WaitForEvaluations(int ticks, absl::Duration timeout) const {
  if (metrics_port_ == 0) return absl::FailedPreconditionError("no metrics port");
  const std::string series = "kldrift_evaluation_duration_seconds_count";
  double start = -1;
  const absl::Time deadline = absl::Now() + TimeScaled(timeout);
  while (absl::Now() < deadline) {
    absl::StatusOr<std::string> text = HttpGet(metrics_port_, "/metrics");
    if (text.ok()) {
      const double count = MetricValue(*text, series);
      if (start < 0 && count >= 0) start = count;
      if (start >= 0 && count >= start + ticks) return absl::OkStatus();
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  return absl::DeadlineExceededError(absl::StrCat(
      "the server did not finish ", ticks, " evaluations in ", absl::FormatDuration(timeout)));
}

absl::StatusOr<std::unique_ptr<ServerProcess>> ServerProcess::Start(
    const std::string& binary, const std::vector<std::string>& extra_flags,
    absl::Duration startup) {
  std::unique_ptr<ServerProcess> process(new ServerProcess());
  char dir_template[] = "/tmp/kldrift-e2e-XXXXXX";
  if (mkdtemp(dir_template) == nullptr) return absl::InternalError("mkdtemp failed");
  process->work_dir_ = dir_template;
  const std::string port_file = process->work_dir_ + "/port";
  const std::string metrics_port_file = process->work_dir_ + "/metrics-port";
  const std::string log_file = process->work_dir_ + "/kldriftd.log";

  std::vector<std::string> args = {binary, "--listen", "127.0.0.1:0", "--port-file", port_file};
  // Each server gets its own data folder unless the test names one (or runs in memory).
  const bool names_storage =
      std::any_of(extra_flags.begin(), extra_flags.end(), [](const std::string& f) {
        return f.rfind("--data-dir", 0) == 0 || f.rfind("--storage", 0) == 0;
      });
  if (!names_storage) {
    args.push_back("--data-dir");
    args.push_back(process->work_dir_ + "/data");
  }
  // Metrics on a free port too, so servers can run side by side (unless the test chooses).
  const bool names_metrics =
      std::any_of(extra_flags.begin(), extra_flags.end(),
                  [](const std::string& f) { return f.rfind("--metrics-listen", 0) == 0; });
  if (!names_metrics) {
    args.insert(args.end(),
                {"--metrics-listen", "127.0.0.1:0", "--metrics-port-file", metrics_port_file});
  }
  args.insert(args.end(), extra_flags.begin(), extra_flags.end());
  const pid_t pid = fork();
  if (pid < 0) return absl::InternalError("fork failed");
  if (pid == 0) {
    // Child: log to a file in the work folder, then exec.
    FILE* log = std::fopen(log_file.c_str(), "w");
    if (log != nullptr) {
      dup2(fileno(log), STDERR_FILENO);
      dup2(fileno(log), STDOUT_FILENO);
    }
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  process->pid_ = pid;
  const absl::Time deadline = absl::Now() + TimeScaled(startup);
  while (absl::Now() < deadline) {
    std::ifstream in(port_file);
    int port = 0;
    if (in >> port && port > 0) {
      process->port_ = port;
      // Written before the gRPC port (kldriftd starts its metrics endpoint first).
      std::ifstream metrics_in(metrics_port_file);
      int metrics_port = 0;
      if (metrics_in >> metrics_port) process->metrics_port_ = metrics_port;
      return process;
    }
    int status = 0;
    if (waitpid(pid, &status, WNOHANG) == pid) {
      process->pid_ = -1;
      std::ifstream log(log_file);
      std::string text((std::istreambuf_iterator<char>(log)), std::istreambuf_iterator<char>());
      return absl::InternalError(absl::StrCat("kldriftd exited during start-up: ", text));
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  return absl::DeadlineExceededError("kldriftd did not write its port file in time");
}

ServerProcess::~ServerProcess() {
  const int status = pid_ > 0 ? Stop() : 0;
  const bool clean_exit = WIFEXITED(status) && WEXITSTATUS(status) == 0;
  if (!clean_exit || std::getenv("KLDRIFT_E2E_SHOW_LOG") != nullptr) {
    // The server crashed or hung: its log is the first thing anyone debugging will want.
    std::ifstream log(work_dir_ + "/kldriftd.log");
    std::string text((std::istreambuf_iterator<char>(log)), std::istreambuf_iterator<char>());
    std::fprintf(stderr, "---- kldriftd log (%s) ----\n%s---- end of log ----\n",
                 clean_exit ? "clean exit" : "did not exit cleanly", text.c_str());
  }
  std::error_code ignored;
  std::filesystem::remove_all(work_dir_, ignored);
}

std::string ServerProcess::ReadLog() const {
  std::ifstream log(work_dir_ + "/kldriftd.log");
  return std::string((std::istreambuf_iterator<char>(log)), std::istreambuf_iterator<char>());
}

std::string ServerProcess::address() const { return absl::StrCat("127.0.0.1:", port_); }

std::shared_ptr<grpc::Channel> ServerProcess::Channel() const {
  return grpc::CreateChannel(address(), grpc::InsecureChannelCredentials());
}

int ServerProcess::Stop(absl::Duration grace) {
  if (pid_ <= 0) return exit_status_;
  kill(pid_, SIGTERM);
  const absl::Time deadline = absl::Now() + TimeScaled(grace);
  int status = 0;
  while (absl::Now() < deadline) {
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      exit_status_ = status;
      return status;
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  kill(pid_, SIGKILL);
  waitpid(pid_, &status, 0);
  pid_ = -1;
  exit_status_ = -1;
  return -1;
}

void ServerProcess::Kill() {
  if (pid_ <= 0) return;
  kill(pid_, SIGKILL);
  int status = 0;
  waitpid(pid_, &status, 0);
  pid_ = -1;
}

}  // namespace kldrift::testing
