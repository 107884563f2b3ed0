// ServerConfig: every kldriftd setting in one place, with defaults that work, filled from flags in
// main.cc and validated at start-up with messages that say what to change.
//
// Thread safety: a value type.
#ifndef KLDRIFT_SERVER_CONFIG_H_
#define KLDRIFT_SERVER_CONFIG_H_

#include <cstddef>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace kldrift {

struct ServerConfig {
  // host:port for gRPC; port 0 picks a free port (see port_file).
  std::string listen = "127.0.0.1:50051";
  // Where kldriftd writes the port it bound, once it is serving (for tests and scripts).
  std::string port_file;
  // "rocksdb" (the embedded store under data_dir) or "memory" (this process only: tests and
  // benchmarks).
  std::string storage = "rocksdb";
  std::string data_dir = "./kldrift-data";
  // fsync every acknowledged batch (survives power loss; see server/storage/rocksdb_store.h).
  bool sync = false;
  absl::Duration eval_interval = absl::Seconds(10);
  // Threads an evaluation tick spreads the streams over; 0: one per hardware thread.
  int eval_threads = 0;
  // Added to the evaluation threads' nice value, so that ingest and queries preempt a tick (which
  // is background work) rather than wait behind it. 0: the same priority.
  int eval_nice = 10;
  absl::Duration shutdown_grace = absl::Seconds(5);
  size_t max_streams = 100000;
  size_t max_bins = size_t{1} << 20;
  size_t max_dimensions = 65536;
  size_t max_batch_observations = size_t{1} << 20;
  // Largest gRPC message accepted, bytes.
  size_t max_receive_message_bytes = 16 << 20;
  // host:port of the Prometheus endpoint (/metrics); port 0 picks a free port; "none" disables.
  std::string metrics_listen = "127.0.0.1:9464";
  // Where kldriftd writes the metrics port it bound (for tests and scripts).
  std::string metrics_port_file;
  // Top contributing bins exported per histogram window (0 to 20).
  size_t metrics_top_bins = 3;
  // Measure families exported per window: all, none, or a list (see ParseMetricsMeasures).
  std::string metrics_measures = "all";
  // TLS on the gRPC port: PEM certificate chain and private key (both or neither).
  std::string tls_cert;
  std::string tls_key;
  // Mutual TLS: clients must present a certificate signed by this PEM CA bundle.
  std::string tls_client_ca;
  // Token → role and models (server/service/auth.h); reloaded on SIGHUP. Empty: no token checks.
  std::string auth_tokens;
  // Basic auth on /metrics: a file with one "user:password" line. Empty: none.
  std::string metrics_basic_auth;
  // Streams per model (RESOURCE_EXHAUSTED beyond); 0: only max_streams applies.
  size_t max_streams_per_model = 10000;
  // Concurrent gRPC streams (calls) per client connection.
  size_t max_concurrent_streams_per_connection = 100;
  // Memory gRPC may use for its buffers, bytes (slow readers are throttled, not buffered without
  // bound).
  size_t grpc_memory_limit = size_t{1} << 30;
};

// INVALID_ARGUMENT naming the flag and the accepted values.
absl::Status ValidateConfig(const ServerConfig& config);

}  // namespace kldrift

#endif  // KLDRIFT_SERVER_CONFIG_H_
