// EngineObserver: what DriftEngine tells the outside world as it works, for metrics.
//
// The engine calls an observer (EngineOptions::observer) when a stream's reference is installed or
// the stream is deleted, after each stream is evaluated, and when an evaluation tick ends. The core
// knows nothing of Prometheus: server/metrics implements this interface.
//
// Thread safety: implementations must be safe for concurrent calls. OnReferenceInstalled and
// OnStreamDeleted run with engine locks held (so they are ordered with the change they report);
// OnStreamEvaluated and OnEvaluationFinished run on the Evaluate() thread with no engine lock held,
// so a report may arrive after the OnStreamDeleted of its stream or after a newer version was
// installed: implementations ignore reports of streams or windows they no longer know. No method
// may call back into the engine.
#ifndef KLDRIFT_SERVER_CORE_ENGINE_OBSERVER_H_
#define KLDRIFT_SERVER_CORE_ENGINE_OBSERVER_H_

#include <atomic>
#include <cstddef>
#include <memory>

#include "absl/time/time.h"
#include "absl/types/span.h"
#include "server/core/reference.h"
#include "server/core/stream_key.h"

namespace kldrift {

struct WindowReport;

// The observations ingested into one stream (histogram counts, values, labels, probability rows,
// Gaussian samples or log-prob pairs), and of them NaN (the NaN bucket of numeric streams: a model
// emitting NaN is itself a signal). The engine adds to them as it applies each batch, under the
// stream's lock and without a lookup (a hash lookup per stream per batch was a tenth of ingest's
// cost); an observer reads them whenever it likes.
//
// Thread safety: one writer at a time (the engine, under the stream's lock), any number of
// readers: relaxed atomics, so a reader sees each value whole, if not the latest.
struct StreamIngestCounters {
  std::atomic<double> observations{0};
  std::atomic<double> nan_observations{0};

  // REQUIRES: the caller is the only writer (holds the stream's engine lock).
  void Add(double samples, double nan_samples) {
    observations.store(observations.load(std::memory_order_relaxed) + samples,
                       std::memory_order_relaxed);
    if (nan_samples > 0) {
      nan_observations.store(nan_observations.load(std::memory_order_relaxed) + nan_samples,
                             std::memory_order_relaxed);
    }
  }
};

class EngineObserver {
 public:
  virtual ~EngineObserver() = default;

  // `reference` became its stream's current version (PutReference, Recover at start-up, or an
  // imported model). Returns the counters the engine adds the stream's ingested observations to
  // from now on, or null to have them not counted per stream; an observer returns the same
  // counters for every version of a stream until OnStreamDeleted.
  virtual std::shared_ptr<StreamIngestCounters> OnReferenceInstalled(
      const Reference& reference) = 0;
  // The stream and all its versions were deleted.
  virtual void OnStreamDeleted(const StreamKey& stream) = 0;
  // An ingest batch of `streams` streams was applied, adding `observations` observations in all
  // (each stream's went to its StreamIngestCounters). Runs on the ingesting thread with no engine
  // lock held.
  virtual void OnBatchApplied(size_t streams, double observations) = 0;
  // Reports of the windows of one stream that changed in one evaluation: a full report of each
  // window whose totals or reference changed since the last report this observer was given for it
  // (and of every window while the engine has watchers), and an alert-only report
  // (WindowReport::measures_unchanged) of each other window whose alert status changed. Not called
  // for a stream where nothing changed: the observer keeps what it was last told. With
  // reports_on_demand, a tick sends the alert-only reports (also of windows whose measures the
  // observer has not been given since they changed) and RefreshObserver the full ones.
  virtual void OnStreamEvaluated(absl::Span<const WindowReport> reports) = 0;
  // One evaluation of every stream ended; it took `duration` (monotonic) over `windows` windows.
  virtual void OnEvaluationFinished(size_t windows, absl::Duration duration) = 0;
  // How many top contributing bins the reports passed to OnStreamEvaluated should carry.
  virtual size_t top_bins() const = 0;
  // Whether those bins need their labels (BinContribution::label); an observer that names them
  // itself from the reference's layout answers false, and the labels may then arrive empty
  // (they still arrive named while the engine has watchers).
  virtual bool wants_bin_labels() const { return true; }
  // Whether full reports are computed only when the observer asks (DriftEngine::RefreshObserver),
  // e.g. when a scrape reads them, rather than on every tick: a tick then sends only alert-only
  // reports, and computes only what the alerts need. Asked at every tick.
  virtual bool reports_on_demand() const { return false; }
};

}  // namespace kldrift

#endif  // KLDRIFT_SERVER_CORE_ENGINE_OBSERVER_H_
