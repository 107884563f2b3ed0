// DriftMetrics: kldriftd's Prometheus metrics (prometheus-cpp), fed by the engine and the service.
//
// Series of a stream are added when its reference is installed or its windows are first
// evaluated, and removed when the stream is deleted (or, for a window, when a new reference
// version drops it), so the series count is bounded by the engine's --max-streams. The per-stream
// values are kept in a compact table (under 2 KB per stream with three windows, against ~47 KB as
// one prometheus-cpp Gauge per series) and turned into families or text only when scraped; the
// server-wide metrics are ordinary prometheus-cpp metrics built in the constructor. Values read
// from the server when scraped (stream count, storage bytes, ...) come from a ServerState source,
// and the process_* metrics from /proc/self.
//
// Naming: one family per measure rather than a `measure` label, because the measures have
// different units (nats, bits, unitless distances, a probability) and aggregating across such a
// label would mix them. kldrift_alert_measure_value{measure=...} is the one family that carries the
// measure as a label: it is, by definition, the value the stream's alert policy watches, and it is
// compared with the kldrift_alert_*_threshold families of the same labels.
//
// Thread safety: safe for concurrent calls; the per-stream table is split into shards, each under
// its own mutex (prometheus-cpp families and metrics are themselves thread-safe), so evaluation
// threads and scrapes rarely wait for each other. Scrapes hold a shard shared: Collect() while it
// copies it, WriteExposition() one family at a time and never while the client reads, so an
// evaluation waits at most for the text of one family of one shard. Ingest takes no lock here:
// the engine adds each stream's observations to the StreamIngestCounters this class handed out.
#ifndef KLDRIFT_SERVER_METRICS_DRIFT_METRICS_H_
#define KLDRIFT_SERVER_METRICS_DRIFT_METRICS_H_

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/node_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "prometheus/collectable.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "server/core/alert_policy.h"
#include "server/core/drift_engine.h"
#include "server/core/engine_observer.h"
#include "server/core/mutex.h"
#include "server/core/stream_key.h"

namespace kldrift {

// Server-wide values read at scrape time.
struct ServerState {
  size_t streams = 0;
  size_t max_streams = 0;
  size_t ingest_clients = 0;
  uint64_t storage_bytes = 0;
  uint64_t store_errors = 0;
  uint64_t watch_reports_dropped = 0;
};

// The requests kldriftd times and counts (kldrift_request_duration_seconds,
// kldrift_requests_total): its unary RPCs, and each batch (IngestRequest) of an Ingest stream.
// Numbered from 0 in order (the metrics index by it).
enum class RequestMethod : uint8_t {
  kPutReference,
  kGetReference,
  kListReferences,
  kDeleteReference,
  kGetDrift,
  kBackup,
  kExportModel,
  kImportModel,
  kIngest,
};
inline constexpr size_t kRequestMethodCount = 9;
// The `method` label: the RPC's name ("GetDrift").
absl::string_view RequestMethodName(RequestMethod method);

// Which measure families are exported per window: a bit per Measure (MeasureBit) and one for the
// G-test p-value. The policy's own measure is always in kldrift_alert_measure_value.
inline constexpr uint32_t MeasureBit(Measure measure) { return 1u << static_cast<int>(measure); }
inline constexpr uint32_t kGTestPValueBit = 1u << 16;
inline constexpr uint32_t kAllMeasureFamilies = 0xffffffffu;

// Parses --metrics-measures: "all", "none", or a comma-separated list of measure names
// (kl_current_reference, psi, js_bits, ..., as in alert policies) and g_test_p_value.
// INVALID_ARGUMENT naming the valid names otherwise.
absl::StatusOr<uint32_t> ParseMetricsMeasures(absl::string_view text);

struct MetricsOptions {
  // Top contributing bins exported per histogram window (kldrift_top_bin_kl_contribution_nats).
  size_t top_bins = 3;
  // Measure families exported per window (see MeasureBit); fewer means fewer series per stream.
  uint32_t measures = kAllMeasureFamilies;
  // kldrift_build_info's version label.
  std::string version;
  // kldrift_start_time_seconds.
  absl::Time start_time = absl::Now();
};

class DriftMetrics final : public EngineObserver, public prometheus::Collectable {
 public:
  explicit DriftMetrics(MetricsOptions options = {});
  ~DriftMetrics() override;

  DriftMetrics(const DriftMetrics&) = delete;
  DriftMetrics& operator=(const DriftMetrics&) = delete;

  // EngineObserver.
  std::shared_ptr<StreamIngestCounters> OnReferenceInstalled(const Reference& reference) override;
  void OnStreamDeleted(const StreamKey& stream) override;
  void OnBatchApplied(size_t streams, double observations) override;
  void OnStreamEvaluated(absl::Span<const WindowReport> reports) override;
  void OnEvaluationFinished(size_t windows, absl::Duration duration) override;
  size_t top_bins() const override { return options_.top_bins; }
  // The table keeps bin indices and names them from the layout when scraped.
  bool wants_bin_labels() const override { return false; }
  // True once SetReportSource was called.
  bool reports_on_demand() const override { return report_source_set_.load(); }

  // The service's events.
  void RecordBatchRejected(absl::StatusCode code);
  void RecordDuplicateBatch();
  void RecordAck();
  void RecordIngestStreamOpened();
  // The first batch of an Ingest stream came from a client id the engine already knew.
  void RecordIngestReconnect();
  void RecordIngestStreamClosed();
  void RecordWatchStreamOpened();
  void RecordWatchStreamClosed();
  // A request handled: how long kldriftd worked on it (a unary call from its handler's start until
  // its answer is handed to gRPC; an Ingest batch from its read until its ack is queued) and its
  // status. Waiting for a gRPC thread and the network are not in it: a client's latency minus this
  // is the transport's and the scheduler's share.
  void RecordRequest(RequestMethod method, absl::StatusCode code, absl::Duration handling);

  // Called by Collect() and WriteExposition() at every scrape. Optional.
  void SetServerStateSource(std::function<ServerState()> source);
  // Makes the engine's full reports come on demand (EngineObserver::reports_on_demand): `refresh`
  // is called at the start of every Collect() and WriteExposition(), with no lock of this class
  // held, and must hand the full reports of the windows changed since the last ones to
  // OnStreamEvaluated (DriftEngine::RefreshObserver). A tick then computes only what the alerts
  // need, and the measures of a changed window are computed once per scrape, not once per tick.
  // Optional: without it, every tick sends the full reports of the windows that changed.
  void SetReportSource(std::function<void()> refresh);

  // prometheus::Collectable: every family, with server state refreshed, and the process metrics
  // (process_cpu_seconds_total, process_resident_memory_bytes, ...) read from /proc/self.
  std::vector<prometheus::MetricFamily> Collect() const override;

  // The text exposition of Collect() (Prometheus text format 0.0.4, byte for byte what
  // prometheus::TextSerializer makes of it): what /metrics serves. Handed to `write` a piece at a
  // time, each piece in `buffer` (reused across scrapes by the caller): the per-stream families are
  // written straight from the table in pieces of about 1 MiB, without the MetricFamily objects
  // that Collect() builds for every series. `write` runs without the table's lock held.
  void WriteExposition(std::string& buffer,
                       const std::function<void(absl::string_view)>& write) const;

  // Receives per-stream series (internal; public for the implementation's sinks).
  class SeriesSink;

  // Series of per-stream families currently exported (for tests of the cardinality bound).
  size_t stream_series() const;

  // The `reason` label of kldrift_rejected_batches_total for a status code ("invalid_argument").
  static std::string ReasonLabel(absl::StatusCode code);

 private:
  struct WindowState;
  struct StreamState;
  static constexpr size_t kShards = 64;
  using StreamTable = absl::flat_hash_map<StreamKey, std::unique_ptr<StreamState>>;
  // One shard of the per-stream state (see shards_), with its own lock.
  struct Shard {
    mutable Mutex mutex;
    StreamTable streams ABSL_GUARDED_BY(mutex);
  };
  // REQUIRES: the lock of the shard that holds `stream`.
  void UpdateWindowLocked(const StreamState& stream, WindowState& window,
                          const WindowReport& report);
  // The interned copy of a measure name, for the `measure` label of the alert families.
  const std::string* InternMeasure(absl::string_view name);
  // The shard that holds `key`.
  Shard& ShardOf(const StreamKey& key);
  // Per-stream family number `family` (< kStreamFamilies, in the .cc): whether the options export
  // it, and its series in `shard`, handed to `sink` (REQUIRES: sink.StartFamily(family)).
  bool FamilyExported(size_t family) const;
  void VisitFamilyLocked(size_t family, const Shard& shard, SeriesSink& sink) const
      ABSL_SHARED_LOCKS_REQUIRED(shard.mutex);
  // Reads the ServerState source into the server gauges and counters.
  void RefreshServerState() const;
  // Measure series of one window of a stream of `kind` (what the options export).
  size_t MeasureSeries(ReferenceKind kind) const;

  const MetricsOptions options_;
  // The server-wide metrics: ordinary prometheus-cpp metrics, a handful of series.
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Counter& batches_;
  prometheus::Counter& observations_;
  prometheus::Family<prometheus::Counter>& rejected_batches_;
  prometheus::Counter& duplicate_batches_;
  prometheus::Counter& acks_;
  prometheus::Counter& ingest_streams_opened_;
  prometheus::Counter& ingest_reconnects_;
  prometheus::Gauge& ingest_streams_active_;
  prometheus::Gauge& watch_streams_active_;
  prometheus::Histogram& evaluation_duration_;
  prometheus::Gauge& evaluated_windows_;
  // Read at scrape time from the ServerState source.
  prometheus::Gauge& streams_;
  prometheus::Gauge& streams_limit_;
  prometheus::Gauge& ingest_clients_;
  prometheus::Gauge& storage_bytes_;
  // Counters that follow the server's own totals, advanced at scrape time.
  prometheus::Counter& store_errors_;
  prometheus::Counter& watch_reports_dropped_;
  // By RequestMethod; every method's histogram and OK counter exist from start-up.
  prometheus::Family<prometheus::Histogram>& request_duration_;
  prometheus::Family<prometheus::Counter>& requests_;
  std::array<prometheus::Histogram*, kRequestMethodCount> request_duration_by_method_{};
  std::array<prometheus::Counter*, kRequestMethodCount> requests_ok_{};

  mutable Mutex source_mutex_;
  std::function<ServerState()> source_ ABSL_GUARDED_BY(source_mutex_);
  std::function<void()> report_source_ ABSL_GUARDED_BY(source_mutex_);
  std::atomic<bool> report_source_set_{false};
  // Calls the report source, if any (outside every lock of this class).
  void RefreshReports() const;
  mutable uint64_t seen_store_errors_ ABSL_GUARDED_BY(source_mutex_) = 0;
  mutable uint64_t seen_watch_reports_dropped_ ABSL_GUARDED_BY(source_mutex_) = 0;

  // The per-stream series are not prometheus-cpp metrics (a few hundred bytes each, 65 per
  // stream): their values live here, a few hundred bytes per window, and Collect() builds the
  // families from them. Split by a hash of the key, each shard under its own lock: evaluation
  // threads, ingest and a scrape touch different shards at once, and a scrape writes a family a
  // shard at a time, letting go of the lock in between, in pieces of bounded size. A stream is in
  // one shard for its whole life, so it is never written twice in one family.
  std::array<Shard, kShards> shards_;
  mutable Mutex names_mutex_;  // Taken after a shard's lock.
  absl::node_hash_set<std::string> measure_names_ ABSL_GUARDED_BY(names_mutex_);
  mutable Mutex rejected_mutex_;
  absl::flat_hash_map<absl::StatusCode, prometheus::Counter*> rejected_by_code_
      ABSL_GUARDED_BY(rejected_mutex_);
  // kldrift_requests_total's series of failed requests, added on first use.
  mutable Mutex requests_mutex_;
  absl::flat_hash_map<std::pair<RequestMethod, absl::StatusCode>, prometheus::Counter*>
      request_errors_ ABSL_GUARDED_BY(requests_mutex_);
};

struct MetricsEndpointOptions {
  // HOST:PORT; port 0 picks a free one.
  std::string address;
  // HTTP basic auth, when the user is not empty.
  std::string basic_auth_user;
  std::string basic_auth_password;
};

// Serves `metrics` on http://`address`/metrics (civetweb): DriftMetrics::WriteExposition streamed
// a family at a time (chunked, gzip when accepted), plus the exposer_* metrics prometheus-cpp's
// Exposer used to add. No HTTPS:
// Debian 12's civetweb crashes on the first TLS connection (its OpenSSL loader does not match
// OpenSSL 3); put a TLS-terminating proxy in front (README, "Security").
class MetricsEndpoint {
 public:
  // INVALID_ARGUMENT for an address that is not HOST:PORT; UNAVAILABLE if it cannot listen (port
  // in use, unreadable certificate).
  static absl::StatusOr<std::unique_ptr<MetricsEndpoint>> Start(
      const MetricsEndpointOptions& options, std::shared_ptr<DriftMetrics> metrics);
  static absl::StatusOr<std::unique_ptr<MetricsEndpoint>> Start(
      const std::string& address, std::shared_ptr<DriftMetrics> metrics) {
    return Start(MetricsEndpointOptions{address, "", ""}, std::move(metrics));
  }
  ~MetricsEndpoint();

  // The port bound.
  int port() const { return port_; }

 private:
  MetricsEndpoint() = default;
  struct Impl;
  std::unique_ptr<Impl> impl_;
  int port_ = 0;
};

}  // namespace kldrift

#endif  // KLDRIFT_SERVER_METRICS_DRIFT_METRICS_H_
