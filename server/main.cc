// kldriftd: the kldrift drift-monitoring server.
//
//   kldriftd --listen 127.0.0.1:50051 --eval-interval 10s
//
// Flags may be written with dashes or underscores (--eval-interval or --eval_interval).
// On SIGTERM or SIGINT it stops accepting calls, ends watch streams, lets in-flight calls finish
// (up to --shutdown-grace), runs a final evaluation and exits 0.
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <memory>
#include <string>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "server/allocator.h"
#include "server/config.h"
#include "server/core/clock.h"
#include "server/core/drift_engine.h"
#include "server/metrics/drift_metrics.h"
#include "server/service/auth.h"
#include "server/service/kldrift_service.h"
#include "server/storage/rocksdb_store.h"

namespace {
const kldrift::ServerConfig kDefaults;
}  // namespace

ABSL_FLAG(std::string, listen, kDefaults.listen,
          "gRPC address host:port; port 0 picks a free port (see --port_file)");
ABSL_FLAG(std::string, port_file, "",
          "if set, write the bound gRPC port to this file once serving");
ABSL_FLAG(std::string, storage, kDefaults.storage,
          "rocksdb (embedded store under --data_dir) or memory (state lost on exit)");
ABSL_FLAG(std::string, data_dir, kDefaults.data_dir, "folder of the embedded store");
ABSL_FLAG(bool, sync, kDefaults.sync,
          "fsync before acknowledging each batch: acknowledged data survives power loss, not only "
          "a crash of kldriftd");
ABSL_FLAG(std::string, check_data_dir, "",
          "report on the data folder at this path (format, records, checksums) and exit: 0 if "
          "kldriftd can serve it, 1 otherwise");
ABSL_FLAG(absl::Duration, eval_interval, kDefaults.eval_interval,
          "how often every window is evaluated and alert states move (10ms-1h)");
ABSL_FLAG(int32_t, eval_threads, kDefaults.eval_threads,
          "threads an evaluation tick spreads the streams over (0: one per hardware thread)");
ABSL_FLAG(int32_t, eval_nice, kDefaults.eval_nice,
          "added to the evaluation threads' nice value, so that ingest and queries preempt a tick "
          "(0-19; 0: the same priority)");
ABSL_FLAG(absl::Duration, shutdown_grace, kDefaults.shutdown_grace,
          "on SIGTERM, how long in-flight calls may take before they are cancelled");
ABSL_FLAG(uint64_t, max_streams, kDefaults.max_streams,
          "most streams (model, version, signal) the server keeps; RESOURCE_EXHAUSTED beyond");
ABSL_FLAG(uint64_t, max_bins, kDefaults.max_bins, "most bins in one reference");
ABSL_FLAG(uint64_t, max_dimensions, kDefaults.max_dimensions,
          "most dimensions of a Gaussian reference");
ABSL_FLAG(uint64_t, max_batch_observations, kDefaults.max_batch_observations,
          "most observations (values, labels, vectors, pairs) in one ingest batch");
ABSL_FLAG(uint64_t, max_receive_message_bytes, kDefaults.max_receive_message_bytes,
          "largest gRPC message accepted, in bytes");

ABSL_FLAG(std::string, metrics_listen, kDefaults.metrics_listen,
          "Prometheus endpoint host:port, served at /metrics; port 0 picks a free port (see "
          "--metrics_port_file); none disables it");
ABSL_FLAG(std::string, metrics_port_file, "",
          "if set, write the bound metrics port to this file once serving");
ABSL_FLAG(uint64_t, metrics_top_bins, kDefaults.metrics_top_bins,
          "bins exported per histogram window in kldrift_top_bin_kl_contribution_nats (0-20)");
ABSL_FLAG(std::string, tls_cert, "", "PEM certificate chain: serve gRPC over TLS (with --tls_key)");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls_cert");
ABSL_FLAG(std::string, tls_client_ca, "",
          "PEM CA bundle: require and verify client certificates (mutual TLS)");
ABSL_FLAG(std::string, auth_tokens, "",
          "file of '<token> <reader|writer|admin> <model-pattern>[,...]' lines: every call needs "
          "'authorization: Bearer <token>'; re-read on SIGHUP");
ABSL_FLAG(std::string, metrics_basic_auth, "",
          "file with one 'user:password' line: /metrics requires HTTP basic auth");
ABSL_FLAG(uint64_t, max_streams_per_model, kDefaults.max_streams_per_model,
          "most streams of one model; RESOURCE_EXHAUSTED beyond (0: only --max_streams)");
ABSL_FLAG(uint64_t, max_concurrent_streams_per_connection,
          kDefaults.max_concurrent_streams_per_connection,
          "most concurrent calls on one client connection (further calls wait)");
ABSL_FLAG(uint64_t, grpc_memory_limit, kDefaults.grpc_memory_limit,
          "bytes gRPC may use for buffers; slow clients are throttled within it");
ABSL_FLAG(std::string, metrics_measures, kDefaults.metrics_measures,
          "measure families exported per window: all, none, or a list such as "
          "kl_current_reference,psi,g_test_p_value (fewer series per stream; the alerting "
          "measure is always in kldrift_alert_measure_value)");

namespace kldrift {
namespace {
// Bytes of the files under `dir` (0 if it cannot be read).
uint64_t FolderBytes(const std::string& dir) {
  std::error_code error;
  uint64_t bytes = 0;
  for (auto it = std::filesystem::recursive_directory_iterator(dir, error);
       !error && it != std::filesystem::recursive_directory_iterator(); it.increment(error)) {
    if (it->is_regular_file(error)) bytes += it->file_size(error);
  }
  return bytes;
}

// absl flag names are identifiers; accept the dashed spelling users type (--eval-interval).
void NormalizeFlagNames(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--", 2) != 0) continue;
    for (char* c = argv[i] + 2; *c != '\0' && *c != '='; ++c) {
      if (*c == '-') *c = '_';
    }
  }
}

ServerConfig ConfigFromFlags() {
  ServerConfig c;
  c.listen = absl::GetFlag(FLAGS_listen);
  c.port_file = absl::GetFlag(FLAGS_port_file);
  c.storage = absl::GetFlag(FLAGS_storage);
  c.data_dir = absl::GetFlag(FLAGS_data_dir);
  c.sync = absl::GetFlag(FLAGS_sync);
  c.eval_interval = absl::GetFlag(FLAGS_eval_interval);
  c.eval_threads = absl::GetFlag(FLAGS_eval_threads);
  c.eval_nice = absl::GetFlag(FLAGS_eval_nice);
  c.shutdown_grace = absl::GetFlag(FLAGS_shutdown_grace);
  c.max_streams = absl::GetFlag(FLAGS_max_streams);
  c.max_bins = absl::GetFlag(FLAGS_max_bins);
  c.max_dimensions = absl::GetFlag(FLAGS_max_dimensions);
  c.max_batch_observations = absl::GetFlag(FLAGS_max_batch_observations);
  c.max_receive_message_bytes = absl::GetFlag(FLAGS_max_receive_message_bytes);
  c.metrics_listen = absl::GetFlag(FLAGS_metrics_listen);
  c.metrics_port_file = absl::GetFlag(FLAGS_metrics_port_file);
  c.metrics_top_bins = absl::GetFlag(FLAGS_metrics_top_bins);
  c.metrics_measures = absl::GetFlag(FLAGS_metrics_measures);
  c.tls_cert = absl::GetFlag(FLAGS_tls_cert);
  c.tls_key = absl::GetFlag(FLAGS_tls_key);
  c.tls_client_ca = absl::GetFlag(FLAGS_tls_client_ca);
  c.auth_tokens = absl::GetFlag(FLAGS_auth_tokens);
  c.metrics_basic_auth = absl::GetFlag(FLAGS_metrics_basic_auth);
  c.max_streams_per_model = absl::GetFlag(FLAGS_max_streams_per_model);
  c.max_concurrent_streams_per_connection =
      absl::GetFlag(FLAGS_max_concurrent_streams_per_connection);
  c.grpc_memory_limit = absl::GetFlag(FLAGS_grpc_memory_limit);
  return c;
}

// The whole of a small file (certificates, keys, passwords); NOT_FOUND etc. naming the flag.
absl::StatusOr<std::string> ReadSmallFile(const std::string& flag, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(
        absl::StrCat("cannot read ", flag, " ", path, ": ", std::strerror(errno)));
  }
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (text.empty()) return absl::InvalidArgumentError(absl::StrCat(flag, " ", path, " is empty"));
  return text;
}

// The gRPC port's credentials: TLS (mutual with a client CA) or insecure.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> ServerCredentials(
    const ServerConfig& config) {
  if (config.tls_cert.empty()) return grpc::InsecureServerCredentials();
  absl::StatusOr<std::string> cert = ReadSmallFile("--tls-cert", config.tls_cert);
  if (!cert.ok()) return cert.status();
  absl::StatusOr<std::string> key = ReadSmallFile("--tls-key", config.tls_key);
  if (!key.ok()) return key.status();
  grpc::SslServerCredentialsOptions options;
  options.pem_key_cert_pairs.push_back({*key, *cert});
  if (!config.tls_client_ca.empty()) {
    absl::StatusOr<std::string> ca = ReadSmallFile("--tls-client-ca", config.tls_client_ca);
    if (!ca.ok()) return ca.status();
    options.pem_root_certs = *ca;
    options.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  return grpc::SslServerCredentials(options);
}

// Writes the port next to the final name and renames, so readers never see a partial file.
bool WritePortFile(const std::string& path, int port) {
  const std::string temp = path + ".tmp";
  {
    std::ofstream out(temp, std::ios::trunc);
    out << port << "\n";
    if (!out) return false;
  }
  return std::rename(temp.c_str(), path.c_str()) == 0;
}

int Run(const ServerConfig& config, const char* allocator) {
  // Signals are taken by sigwait on the main thread; every thread started below inherits the mask.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGHUP);  // Reloads --auth-tokens.
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  std::unique_ptr<TokenAuthorizer> authorizer;
  if (!config.auth_tokens.empty()) {
    absl::StatusOr<std::unique_ptr<TokenAuthorizer>> created =
        TokenAuthorizer::Create(config.auth_tokens);
    if (!created.ok()) {
      std::cerr << "kldriftd: " << created.status().message() << "\n";
      return 1;
    }
    authorizer = *std::move(created);
  }
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> credentials = ServerCredentials(config);
  if (!credentials.ok()) {
    std::cerr << "kldriftd: " << credentials.status().message() << "\n";
    return 1;
  }

  RealClock clock;
  std::unique_ptr<RocksDbStore> store;
  if (config.storage == "rocksdb") {
    absl::StatusOr<std::unique_ptr<RocksDbStore>> opened =
        RocksDbStore::Open({config.data_dir, config.sync, &clock});
    if (!opened.ok()) {
      std::cerr << "kldriftd: " << opened.status().message() << "\n";
      return 1;
    }
    store = *std::move(opened);
  }
  MetricsOptions metrics_options;
  metrics_options.top_bins = config.metrics_top_bins;
  absl::StatusOr<uint32_t> measures = ParseMetricsMeasures(config.metrics_measures);
  if (!measures.ok()) {
    std::cerr << "kldriftd: " << measures.status().message() << "\n";
    return 1;
  }
  metrics_options.measures = *measures;
  metrics_options.version = KLDRIFT_VERSION;
  auto metrics = std::make_shared<DriftMetrics>(metrics_options);
  EngineOptions options;
  options.store = store.get();
  options.observer = metrics.get();
  options.max_streams = config.max_streams;
  options.max_streams_per_model = config.max_streams_per_model;
  options.reference_limits.max_bins = config.max_bins;
  options.reference_limits.max_dimensions = config.max_dimensions;
  options.max_observations_per_batch = config.max_batch_observations;
  options.eval_threads = config.eval_threads;
  DriftEngine engine(options, &clock);
  const absl::Time recovery_started = absl::Now();
  if (absl::Status recovered = engine.Recover(); !recovered.ok()) {
    std::cerr << "kldriftd: cannot restore state from " << config.data_dir << ": "
              << recovered.message() << "\n";
    return 1;
  }
  if (store != nullptr) {
    std::cerr << "kldriftd: restored " << engine.stream_count() << " streams from "
              << config.data_dir << " in " << absl::FormatDuration(absl::Now() - recovery_started)
              << std::endl;
  }
  ServiceOptions service_options;
  service_options.metrics = metrics.get();
  service_options.authorizer = authorizer.get();
  KlDriftService service(&engine, service_options);
  metrics->SetServerStateSource([&engine, &service, &config] {
    ServerState state;
    state.streams = engine.stream_count();
    state.max_streams = config.max_streams;
    state.ingest_clients = engine.client_count();
    state.storage_bytes = config.storage == "rocksdb" ? FolderBytes(config.data_dir) : 0;
    state.store_errors = engine.store_errors();
    state.watch_reports_dropped = service.dropped_watch_reports();
    return state;
  });
  // The measures of changed windows are computed when /metrics is read, once per change, rather
  // than on every tick: a tick computes what the alerts need (README "kldriftd").
  metrics->SetReportSource([&engine] { engine.RefreshObserver(); });
  std::unique_ptr<MetricsEndpoint> metrics_endpoint;
  if (config.metrics_listen != "none") {
    MetricsEndpointOptions endpoint_options;
    endpoint_options.address = config.metrics_listen;
    if (!config.metrics_basic_auth.empty()) {
      absl::StatusOr<std::string> line =
          ReadSmallFile("--metrics-basic-auth", config.metrics_basic_auth);
      if (!line.ok()) {
        std::cerr << "kldriftd: " << line.status().message() << "\n";
        return 1;
      }
      const std::string credentials_line(absl::StripAsciiWhitespace(*line));
      const size_t colon = credentials_line.find(':');
      if (colon == std::string::npos || colon == 0) {
        std::cerr << "kldriftd: --metrics-basic-auth " << config.metrics_basic_auth
                  << " must hold one line user:password\n";
        return 1;
      }
      endpoint_options.basic_auth_user = credentials_line.substr(0, colon);
      endpoint_options.basic_auth_password = credentials_line.substr(colon + 1);
    }
    absl::StatusOr<std::unique_ptr<MetricsEndpoint>> started =
        MetricsEndpoint::Start(endpoint_options, metrics);
    if (!started.ok()) {
      std::cerr << "kldriftd: " << started.status().message() << "\n";
      return 1;
    }
    metrics_endpoint = *std::move(started);
    if (!config.metrics_port_file.empty() &&
        !WritePortFile(config.metrics_port_file, metrics_endpoint->port())) {
      std::cerr << "kldriftd: cannot write --metrics_port_file " << config.metrics_port_file
                << "\n";
      return 1;
    }
  }

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(config.listen, *credentials, &port);
  builder.SetMaxReceiveMessageSize(static_cast<int>(config.max_receive_message_bytes));
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS,
                             static_cast<int>(config.max_concurrent_streams_per_connection));
  grpc::ResourceQuota quota("kldriftd");
  quota.Resize(config.grpc_memory_limit);
  builder.SetResourceQuota(quota);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    std::cerr << "kldriftd: cannot listen on " << config.listen
              << " (address in use, or not an address of this machine?)\n";
    return 1;
  }
  if (!config.port_file.empty() && !WritePortFile(config.port_file, port)) {
    std::cerr << "kldriftd: cannot write --port_file " << config.port_file << "\n";
    return 1;
  }
  const std::string host = config.listen.substr(0, config.listen.rfind(':'));
  std::cerr << "kldriftd: serving on " << host << ":" << port << " (storage=" << config.storage
            << (config.sync ? ", sync" : "")
            << ", eval-interval=" << absl::FormatDuration(config.eval_interval)
            << (config.tls_cert.empty()        ? ", plaintext"
                : config.tls_client_ca.empty() ? ", TLS"
                                               : ", mutual TLS")
            << (authorizer != nullptr ? absl::StrCat(", ", authorizer->token_count(), " tokens")
                                      : std::string(", no auth"))
            << ", " << allocator << ")";
  if (metrics_endpoint != nullptr) {
    const std::string metrics_host =
        config.metrics_listen.substr(0, config.metrics_listen.rfind(':'));
    std::cerr << "; metrics on http://" << metrics_host << ":" << metrics_endpoint->port()
              << "/metrics";
  }
  std::cerr << std::endl;

  absl::Notification stop_evaluating;
  std::thread evaluator([&] {
    // Linux's nice is per thread, and the threads a tick starts inherit it.
    const pid_t tid = static_cast<pid_t>(syscall(SYS_gettid));
    errno = 0;
    const int nice = getpriority(PRIO_PROCESS, static_cast<id_t>(tid));
    if (config.eval_nice > 0 && errno == 0 &&
        setpriority(PRIO_PROCESS, static_cast<id_t>(tid), std::min(19, nice + config.eval_nice)) !=
            0) {
      std::cerr << "kldriftd: cannot lower the evaluation thread's priority: "
                << std::strerror(errno) << std::endl;
    }
    while (!stop_evaluating.WaitForNotificationWithTimeout(config.eval_interval)) {
      engine.Evaluate();
    }
  });

  int signal_number = 0;
  while (sigwait(&stop_signals, &signal_number) == 0 && signal_number == SIGHUP) {
    if (authorizer == nullptr) {
      std::cerr << "kldriftd: SIGHUP: no --auth-tokens to reload" << std::endl;
      continue;
    }
    // Open streams keep going; each call and batch is checked against the table in force.
    if (absl::Status s = authorizer->Reload(); s.ok()) {
      std::cerr << "kldriftd: SIGHUP: reloaded " << authorizer->token_count() << " tokens from "
                << config.auth_tokens << std::endl;
    } else {
      std::cerr << "kldriftd: SIGHUP: kept the previous tokens: " << s.message() << std::endl;
    }
  }
  std::cerr << "kldriftd: " << strsignal(signal_number) << ", shutting down" << std::endl;
  server->GetHealthCheckService()->SetServingStatus(false);
  service.BeginShutdown();
  const absl::Time shutdown_started = absl::Now();
  server->Shutdown(absl::ToChronoTime(absl::Now() + config.shutdown_grace));
  std::cerr << "kldriftd: calls drained in " << absl::FormatDuration(absl::Now() - shutdown_started)
            << std::endl;
  stop_evaluating.Notify();
  evaluator.join();
  engine.Evaluate();  // Final evaluation, so the last state reflects every applied batch.
  std::cerr << "kldriftd: stopped" << std::endl;
  return 0;
}

}  // namespace
}  // namespace kldrift

int main(int argc, char** argv) {
  const char* const allocator = kldrift::ConfigureAllocator();
  // Without tcmalloc (sanitizer builds, KLDRIFT_TCMALLOC=OFF): glibc gives each thread that
  // allocates its own arena, up to 8 per core; kldriftd's gRPC and evaluation threads then hold
  // hundreds of MB of half-used arenas at 100k streams (RSS 1.51 GB with the default, 1.29 GB with
  // 2). MALLOC_ARENA_MAX in the environment still decides. (tcmalloc ignores mallopt.)
  if (std::getenv("MALLOC_ARENA_MAX") == nullptr) mallopt(M_ARENA_MAX, 2);
  // Debian's Abseil checks every absl::Mutex acquisition (gRPC's locks) against a lock-order graph,
  // ~2% of the server's CPU under ingest (perf: GraphCycles::GetId). kldriftd's own locks are
  // checked by the sanitizer builds (ThreadSanitizer's deadlock detector) instead.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  kldrift::NormalizeFlagNames(argc, argv);
  absl::SetProgramUsageMessage(
      "kldrift drift-monitoring server.\n\n  kldriftd --listen 127.0.0.1:50051 --eval-interval 10s"
      "\n\nFlags may be written with dashes or underscores.");
  absl::ParseCommandLine(argc, argv);
  if (const std::string dir = absl::GetFlag(FLAGS_check_data_dir); !dir.empty()) {
    absl::StatusOr<std::string> report = kldrift::RocksDbStore::Describe(dir);
    std::cout << (report.ok() ? *report : std::string(report.status().message())) << "\n";
    return report.ok() ? 0 : 1;
  }
  const kldrift::ServerConfig config = kldrift::ConfigFromFlags();
  if (absl::Status status = kldrift::ValidateConfig(config); !status.ok()) {
    std::cerr << "kldriftd: " << status.message() << "\n";
    return 2;
  }
  return kldrift::Run(config, allocator);
}
