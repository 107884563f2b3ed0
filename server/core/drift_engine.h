// DriftEngine: every stream's references, sliding windows and alert state, in memory.
//
// The engine is the whole of kldriftd's behaviour without the network: the gRPC service
// (server/service) only converts messages and statuses. It
//   - keeps versioned references per stream (PutReference / GetReference / List / Delete);
//   - applies ingest batches atomically (all streams of a batch or none), de-duplicating resent
//     batches by (client id, sequence number);
//   - keeps each stream's windows as rings of compactly stored sub-buckets (SlidingWindow), and
//     sums a histogram stream's whole counts while no window's head sub-bucket moves, adding the
//     sum to the windows before anything reads them (EngineOptions::coalesce_ingest);
//   - evaluates every window on Evaluate() (the server's tick) with the vector kernels, spread over
//     EngineOptions::eval_threads threads, drives the alert state machines and pushes reports to
//     watchers; with no watcher and no observer to read reports, a tick computes only what the
//     alert state machines need, and nothing for windows whose totals have not changed; an
//     observer alone is sent full reports only of windows whose totals or reference changed since
//     its last report, and alert-only ones (WindowReport::measures_unchanged) of windows whose
//     alert status alone changed; an observer that takes reports on demand
//     (EngineObserver::reports_on_demand) gets only the alert-only ones from a tick, and the full
//     reports of the windows changed since when it asks (RefreshObserver);
//   - answers GetDrift on demand with freshly computed measures.
//
// Thread safety: all methods are safe to call concurrently. Locks: one mutex for the stream set,
// one per stream (windows, references), one per ingest client (sequence numbers), one for the
// watchers. A batch locks its streams in key order, so concurrent batches cannot deadlock. Watch
// callbacks run on the thread calling Evaluate() with no stream lock held (but under the watcher
// lock); they must not block and must not call Watch() or Unwatch(). The observer's
// OnStreamEvaluated runs on Evaluate()'s threads (the calling one and up to eval_threads - 1
// workers, concurrently), with no engine lock held.
#ifndef KLDRIFT_SERVER_CORE_DRIFT_ENGINE_H_
#define KLDRIFT_SERVER_CORE_DRIFT_ENGINE_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/btree_set.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "server/core/alert_state.h"
#include "server/core/clock.h"
#include "server/core/drift_measures.h"
#include "server/core/engine_observer.h"
#include "server/core/incremental_kl.h"
#include "server/core/mutex.h"
#include "server/core/reference.h"
#include "server/core/sliding_window.h"
#include "server/core/state_store.h"
#include "server/core/stream_key.h"
#include "server/kernels/gaussian.h"
#include "server/kernels/paired_logprob.h"

namespace kldrift {

struct EngineOptions {
  // Where state is made durable (not owned; must outlive the engine). Null: memory only.
  StateStore* store = nullptr;
  ReferenceLimits reference_limits;
  // Streams in total (RESOURCE_EXHAUSTED beyond; keeps memory and metric cardinality bounded).
  size_t max_streams = 100000;
  // Streams of one model (RESOURCE_EXHAUSTED beyond, so one tenant cannot take every slot); 0: no
  // limit but max_streams.
  size_t max_streams_per_model = 0;
  // Observations (values, labels, probability vectors, log-prob pairs) per ingest batch.
  size_t max_observations_per_batch = 1 << 20;
  // Event times may be this far in the future (clock skew); later ones are rejected.
  absl::Duration max_future_skew = absl::Minutes(1);
  // How long the last sequence number of an ingest client that has gone quiet is remembered.
  // Resends within it are de-duplicated; it exceeds the default longest window (24h), beyond which
  // a resent batch's event time is too old to be applied anyway. Keeps the client table bounded.
  absl::Duration client_retention = absl::Hours(48);
  // Threads Evaluate() spreads the streams over (the calling thread is one of them, the others
  // live for one tick); 0: one per hardware thread.
  int eval_threads = 1;
  // Told of references, deletions and evaluations (not owned; must outlive the engine). Optional.
  EngineObserver* observer = nullptr;
  // Ingest coalescing: whole counts ingested into a histogram stream while none of its windows'
  // head sub-buckets moves are summed per stream and added to the windows in one go when a head
  // moves or something reads them (a query, the tick), instead of into every window's sub-bucket
  // and totals for each batch. The windows end up bit for bit the same (integer sums are exact;
  // a stream whose windows hold fractions, from probability vectors, is never coalesced); what
  // changes is ingest's memory traffic. false: every batch is added to the windows at once (for
  // the tests that compare the two, and for measuring it).
  bool coalesce_ingest = true;
};

// One stream's data in an ingest batch. Exactly one kind of data is set.
struct StreamData {
  enum class Type { kHistogram, kValues, kLabels, kProbabilities, kGaussian, kLogProbs };
  // Provided, not defaulted: value-initialization (`streams.emplace_back()`, FromProto's) of a
  // class whose default constructor is not user-provided zeroes all ~250 bytes first, a
  // `rep stos` that took two thirds of FromProto's time.
  StreamData() {}
  std::string model_version;
  std::string signal;
  Type type = Type::kHistogram;
  // kHistogram counts, kValues, kProbabilities (flattened): `numbers`, or `lent_numbers` when a
  // caller lends them instead (FromProto lends the request's: copying nothing), which must then
  // stay valid until Ingest returns. Read them with values().
  std::vector<double> numbers;
  absl::Span<const double> lent_numbers;
  std::vector<std::string> labels;
  double gaussian_count = 0;  // kGaussian sufficient statistics.
  std::vector<double> gaussian_sum;
  std::vector<double> gaussian_sum_squares;
  std::vector<double> log_p_current;  // kLogProbs.
  std::vector<double> log_p_reference;
  uint64_t reference_version = 0;  // If non-zero, must match the current version.

  absl::Span<const double> values() const {
    return lent_numbers.empty() ? absl::Span<const double>(numbers) : lent_numbers;
  }
};

struct IngestBatch {
  std::string client_id;
  uint64_t sequence = 0;
  std::string model;
  std::vector<StreamData> streams;
  std::optional<absl::Time> event_time;
};

struct IngestResult {
  // Highest sequence of this client the engine is done with (applied or rejected).
  uint64_t acked_sequence = 0;
  // This batch's outcome; OK for duplicates.
  absl::Status status;
  bool duplicate = false;
};

struct GaussianDriftData {
  kernels::GaussianKlPair kl;
  std::vector<double> current_mean;
  std::vector<double> current_var;
};

// One window's evaluation.
struct WindowReport {
  StreamKey stream;
  absl::Duration window;
  ReferenceKind kind = ReferenceKind::kPreBinned;
  double samples = 0;
  bool enough_samples = false;
  // May raise an alert: enough samples and, for histogram streams, a G-test p-value at most the
  // policy's max_p_value.
  bool eligible = false;
  std::optional<DriftMeasures> histogram;  // Histogram kinds with samples > 0.
  std::optional<GaussianDriftData> gaussian;
  std::optional<kernels::PolicyKlEstimates> policy;
  std::string measure;  // Name of the alerting measure ("k3" for policy streams).
  double measure_value = 0;
  // The policy's thresholds for `measure` (clear: the effective one).
  double warn_threshold = 0;
  double critical_threshold = 0;
  double clear_threshold = 0;
  AlertStatus alert;
  uint64_t reference_version = 0;
  absl::Time evaluated_at;
  // Only in reports to EngineObserver::OnStreamEvaluated: the window's totals and reference are
  // those of the last report the observer was given for it, and only its alert status changed.
  // Such a report carries the alert fields, thresholds, measure_value, enough_samples and eligible
  // (the last three as before); samples, measure, histogram, gaussian and policy are left empty.
  bool measures_unchanged = false;
};

// One stream's whole state, as DriftEngine::ExportModel gives it and ImportModel takes it: every
// reference version and, for the current version's windows, the live sub-buckets and alert state.
struct StreamExport {
  struct Window {
    absl::Duration length;
    std::vector<SlidingWindow::SubBucket> sub_buckets;  // Oldest first.
    AlertStatus alert;
  };
  std::vector<std::shared_ptr<const Reference>> versions;  // Oldest first.
  std::vector<Window> windows;
};

struct WatchFilter {
  std::string model;
  std::string model_version;  // With signal: one stream; both empty: the whole model.
  std::string signal;
  bool state_changes_only = false;
};

class DriftEngine {
 public:
  // `clock` must outlive the engine.
  DriftEngine(EngineOptions options, const Clock* clock);
  ~DriftEngine();

  DriftEngine(const DriftEngine&) = delete;
  DriftEngine& operator=(const DriftEngine&) = delete;

  // Creates or replaces a stream's reference; returns the new version. Windows are kept when the
  // bins are unchanged and reset otherwise; alert state is reset either way.
  absl::StatusOr<std::shared_ptr<const Reference>> PutReference(const ReferenceSpec& spec);

  // Version `version` (0: the latest) of a stream's reference; NOT_FOUND if absent.
  absl::StatusOr<std::shared_ptr<const Reference>> GetReference(const StreamKey& stream,
                                                                uint64_t version) const;

  struct ReferencePage {
    std::vector<std::shared_ptr<const Reference>> references;
    std::string next_page_token;  // Empty on the last page.
  };
  // Latest references in stream order, optionally of one model, and only of models `visible`
  // accepts when given (a caller's scope). page_size 0 means 100.
  absl::StatusOr<ReferencePage> ListReferences(
      const std::string& model, size_t page_size, const std::string& page_token,
      const std::function<bool(const std::string& model)>& visible = nullptr) const;

  // The page token that continues a listing after `stream` (for callers that cut a page short).
  static std::string PageTokenAfter(const StreamKey& stream);

  // Drops a stream: all reference versions, windows, alert state. Returns the versions deleted.
  absl::StatusOr<uint64_t> DeleteReference(const StreamKey& stream);

  // Applies one batch atomically (see IngestBatch), or rejects it whole. Takes the batch: its
  // histograms' arrays become the deltas applied and logged, without a copy (pass an rvalue; an
  // lvalue is copied).
  IngestResult Ingest(IngestBatch batch);

  // Fresh reports for a stream's windows (all, or the one equal to `window`).
  absl::StatusOr<std::vector<WindowReport>> GetDrift(const StreamKey& stream,
                                                     std::optional<absl::Duration> window,
                                                     size_t top_bins) const;

  // KL(current || reference) of a histogram window, from its totals (IncrementalKl, resynced).
  absl::StatusOr<double> IncrementalKlCurrentReference(const StreamKey& stream,
                                                       absl::Duration window) const;

  // Evaluates every window of every stream: advances windows, computes measures, moves alert
  // states (persisting the changes) and notifies watchers. Returns the number of windows evaluated.
  // Calls are serialized (one tick at a time).
  size_t Evaluate();

  // For an observer that takes reports on demand: full reports of every window whose totals or
  // reference changed since the last report it was given, computed now (over eval_threads
  // threads) and handed to OnStreamEvaluated. Returns the number of windows reported. Serialized
  // with Evaluate(). Does nothing without an observer.
  size_t RefreshObserver();

  // Rebuilds every stream, window, client sequence and alert state from options().store. Call once,
  // before serving. Fails (DATA_LOSS, FAILED_PRECONDITION) on records that cannot be read.
  absl::Status Recover();

  // A consistent copy of the store in `directory` (absolute, not existing); returns its size.
  // FAILED_PRECONDITION without a store.
  absl::StatusOr<uint64_t> Backup(const std::string& directory);

  // Every stream of `model` (NOT_FOUND if none), each consistent as of one moment: for handing
  // a model to another replica when shards are added or removed (kldrift admin export).
  absl::StatusOr<std::vector<StreamExport>> ExportModel(const std::string& model) const;

  // Installs `streams` (all of one model, as ExportModel gave them, built with this server's
  // limits) with their versions, windows and alert states, durably when there is a store.
  // FAILED_PRECONDITION if the model already has streams here, unless `replace`, which first
  // deletes every stream of the model, or `append` (a later part of an import sent in parts),
  // which refuses only streams that exist. Sub-buckets outside this server's windows (older than
  // the window's length) are dropped. Returns the streams installed.
  absl::StatusOr<size_t> ImportModel(const std::string& model, std::vector<StreamExport> streams,
                                     bool replace, bool append = false);

  // Writes to the store that failed outside a call that could report them (alert states).
  uint64_t store_errors() const { return store_errors_.load(); }
  // Histograms ingest has coalesced (EngineOptions::coalesce_ingest) rather than added to the
  // windows at once, since the engine started (for tests and diagnostics).
  uint64_t coalesced_histograms() const {
    return coalesced_histograms_.load(std::memory_order_relaxed);
  }

  using WatchCallback = std::function<void(const WindowReport&)>;
  // Registers a watcher; returns its id. The callback runs on the Evaluate() thread.
  uint64_t Watch(WatchFilter filter, WatchCallback callback);
  void Unwatch(uint64_t id);

  size_t stream_count() const;
  // Ingest clients whose sequence numbers are remembered.
  size_t client_count() const;
  // Whether an ingest client's sequence numbers are remembered (it has sent before).
  bool KnowsClient(const std::string& client_id) const;

  const EngineOptions& options() const { return options_; }

 private:
  struct WindowState;
  struct StreamState;
  struct ClientState;

  std::shared_ptr<StreamState> FindStream(const StreamKey& key) const;
  // Every stream, in key order.
  std::vector<std::shared_ptr<StreamState>> AllStreams() const;
  // Calls evaluate(run, stream, scratch) for every stream of `streams` (`scratch`: a vector the
  // calling thread reuses from stream to stream), in runs of consecutive streams
  // claimed by up to eval_threads threads (this one included), asking for each stream's memory a
  // few streams ahead; then run_done(run) on the thread that did the run. Returns the number of
  // runs (run < runs).
  size_t ForEachStreamInRuns(const std::vector<std::shared_ptr<StreamState>>& streams,
                             const std::function<void(size_t, const std::shared_ptr<StreamState>&,
                                                      std::vector<WindowReport>&)>& evaluate,
                             const std::function<void(size_t)>& run_done) const;
  static size_t RunCount(size_t streams);
  // Validates, persists (when there is a store) and applies a batch. `persisted` tells the caller
  // whether the client's sequence was written with it.
  // Histogram counts are moved out of `batch`.
  absl::Status ApplyBatch(IngestBatch& batch, absl::Time now, bool* persisted);

  const EngineOptions options_;
  const Clock* const clock_;
  std::atomic<uint64_t> store_errors_{0};
  std::atomic<uint64_t> coalesced_histograms_{0};
  // Serializes Evaluate() calls. A tick records, per window, the totals its observer was last
  // given (so the next tick skips unchanged windows); overlapping ticks could deliver an older
  // report after a newer one and leave the observer stale. The server has one evaluator thread;
  // this makes other callers (tests, shutdown) safe too. Taken before store_mutex_.
  Mutex evaluate_mutex_ ABSL_ACQUIRED_BEFORE(store_mutex_);
  // Orders the store's writes of snapshots and alert states (Evaluate, shared) after reference
  // changes that drop a stream's windows (PutReference, DeleteReference, exclusive), so a snapshot
  // collected before such a change cannot land after it. Taken before any other engine lock.
  Mutex store_mutex_ ABSL_ACQUIRED_BEFORE(streams_mutex_);
  // The next log sequence number for the store's batch log (see StateStore).
  std::atomic<uint64_t> next_lsn_{1};
  // The log position the store was last truncated to.
  std::atomic<uint64_t> truncated_lsn_{0};

  // Orders streams by their keys; finds them by key too (heterogeneous lookup).
  struct StreamOrder {
    using is_transparent = void;
    bool operator()(const std::shared_ptr<StreamState>& a,
                    const std::shared_ptr<StreamState>& b) const;
    bool operator()(const std::shared_ptr<StreamState>& a, const StreamKey& b) const;
    bool operator()(const StreamKey& a, const std::shared_ptr<StreamState>& b) const;
  };

  mutable Mutex streams_mutex_;
  // Every stream, in key order. A set of the streams themselves (each holds its key), not a map
  // from key to stream: a b-tree node holds about 15 of these 16-byte slots where it held 3 of
  // the (key, stream) pairs of 112 bytes, so walking a model's streams in order (ingest) mostly
  // stays within a node.
  absl::btree_set<std::shared_ptr<StreamState>, StreamOrder> streams_
      ABSL_GUARDED_BY(streams_mutex_);

  mutable Mutex clients_mutex_;
  absl::flat_hash_map<std::string, std::shared_ptr<ClientState>> clients_
      ABSL_GUARDED_BY(clients_mutex_);
  absl::Time last_client_sweep_ ABSL_GUARDED_BY(clients_mutex_) = absl::InfinitePast();

  mutable Mutex watch_mutex_;
  uint64_t next_watch_id_ ABSL_GUARDED_BY(watch_mutex_) = 1;
  std::map<uint64_t, std::pair<WatchFilter, WatchCallback>> watchers_ ABSL_GUARDED_BY(watch_mutex_);
};

}  // namespace kldrift

#endif  // KLDRIFT_SERVER_CORE_DRIFT_ENGINE_H_
