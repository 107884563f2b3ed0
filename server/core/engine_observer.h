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

#include <cstddef>

#include "absl/time/time.h"
#include "absl/types/span.h"
#include "server/core/reference.h"
#include "server/core/stream_key.h"

namespace kldrift {

struct WindowReport;

class EngineObserver {
 public:
  virtual ~EngineObserver() = default;

  // `reference` became its stream's current version (PutReference, or Recover at start-up).
  virtual void OnReferenceInstalled(const Reference& reference) = 0;
  // The stream and all its versions were deleted.
  virtual void OnStreamDeleted(const StreamKey& stream) = 0;
  // An ingest batch was applied; `samples[i]` observations were added to `streams[i]` (histogram
  // counts, values, labels, probability rows, Gaussian samples or log-prob pairs), `nan_samples[i]`
  // of them NaN (the NaN bucket of numeric streams: a model emitting NaN is itself a signal). Runs
  // on the ingesting thread with no engine lock held.
  virtual void OnBatchApplied(absl::Span<const StreamKey> streams, absl::Span<const double> samples,
                              absl::Span<const double> nan_samples) = 0;
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
