#include "server/config.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace kldrift {

absl::Status ValidateConfig(const ServerConfig& c) {
  if (c.listen.empty() || !absl::StrContains(c.listen, ':')) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--listen=", c.listen, " is not host:port (e.g. 127.0.0.1:50051, [::1]:0, 0.0.0.0:50051)"));
  }
  if (c.storage != "rocksdb" && c.storage != "memory") {
    return absl::InvalidArgumentError(
        absl::StrCat("--storage=", c.storage, " is not one of rocksdb, memory"));
  }
  if (c.storage == "rocksdb" && c.data_dir.empty()) {
    return absl::InvalidArgumentError("--data-dir is empty; --storage=rocksdb needs a folder");
  }
  if (c.storage == "memory" && c.sync) {
    return absl::InvalidArgumentError("--sync needs --storage=rocksdb");
  }
  if (c.eval_interval < absl::Milliseconds(10) || c.eval_interval > absl::Hours(1)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--eval-interval=", absl::FormatDuration(c.eval_interval), " is outside [10ms, 1h]"));
  }
  if (c.eval_nice < 0 || c.eval_nice > 19) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--eval-nice=", c.eval_nice, " is outside [0, 19] (0: the same priority as requests)"));
  }
  if (c.eval_threads < 0 || c.eval_threads > 256) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--eval-threads=", c.eval_threads, " is outside [0, 256] (0: one per hardware thread)"));
  }
  if (c.shutdown_grace < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("--shutdown-grace must not be negative");
  }
  if (c.max_streams == 0) return absl::InvalidArgumentError("--max-streams must be > 0");
  if (c.max_bins < 1) return absl::InvalidArgumentError("--max-bins must be > 0");
  if (c.max_dimensions < 1) return absl::InvalidArgumentError("--max-dimensions must be > 0");
  if (c.max_batch_observations < 1) {
    return absl::InvalidArgumentError("--max-batch-observations must be > 0");
  }
  if (c.max_receive_message_bytes < 1024 || c.max_receive_message_bytes > (size_t{1} << 30)) {
    return absl::InvalidArgumentError("--max-receive-message-bytes must be in [1 KiB, 1 GiB]");
  }
  if (c.metrics_listen != "none" &&
      (c.metrics_listen.empty() || !absl::StrContains(c.metrics_listen, ':'))) {
    return absl::InvalidArgumentError(
        absl::StrCat("--metrics-listen=", c.metrics_listen,
                     " is not host:port (e.g. 127.0.0.1:9464, 0.0.0.0:9464) or none"));
  }
  if (c.metrics_listen == "none" && !c.metrics_port_file.empty()) {
    return absl::InvalidArgumentError("--metrics-port-file needs --metrics-listen");
  }
  if (c.tls_cert.empty() != c.tls_key.empty()) {
    return absl::InvalidArgumentError("--tls-cert and --tls-key go together: give both or neither");
  }
  if (!c.tls_client_ca.empty() && c.tls_cert.empty()) {
    return absl::InvalidArgumentError(
        "--tls-client-ca (mutual TLS) needs the server's own --tls-cert and --tls-key");
  }
  if (!c.metrics_basic_auth.empty() && c.metrics_listen == "none") {
    return absl::InvalidArgumentError("--metrics-basic-auth needs --metrics-listen");
  }
  if (c.max_concurrent_streams_per_connection < 1) {
    return absl::InvalidArgumentError("--max-concurrent-streams-per-connection must be > 0");
  }
  if (c.grpc_memory_limit < (size_t{16} << 20)) {
    return absl::InvalidArgumentError("--grpc-memory-limit must be at least 16 MiB");
  }
  if (c.metrics_top_bins > 20) {
    return absl::InvalidArgumentError(
        absl::StrCat("--metrics-top-bins=", c.metrics_top_bins,
                     " is over 20; each rank is a series per window"));
  }
  return absl::OkStatus();
}

}  // namespace kldrift
