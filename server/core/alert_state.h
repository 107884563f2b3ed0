// AlertStateMachine: ok -> pending -> firing -> ok, per stream and window, with severities.
//
//   ok       -> pending  when the measure reaches warn_threshold on an eligible evaluation
//                        (enough samples, and a G-test p-value at most max_p_value);
//   pending  -> firing   once it has stayed there for for_duration (at once when for_duration is
//   0); pending  -> ok       as soon as an evaluation is not over the threshold; firing   -> ok
//   once the measure has stayed below clear_threshold (< warn, the
//                        hysteresis) for for_duration. A window that is merely short of samples
//                        keeps firing: silence is reported by the no-data alert, not by clearing.
// Severity is critical at or over critical_threshold, else warn, while pending or firing.
//
// Thread safety: thread-compatible; the engine holds the stream's lock.
#ifndef KLDRIFT_SERVER_CORE_ALERT_STATE_H_
#define KLDRIFT_SERVER_CORE_ALERT_STATE_H_

#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "server/core/alert_policy.h"

namespace kldrift {

enum class AlertState { kOk = 0, kPending = 1, kFiring = 2 };
enum class Severity { kNone = 0, kWarn = 1, kCritical = 2 };

absl::string_view AlertStateName(AlertState state);
absl::string_view SeverityName(Severity severity);

struct AlertStatus {
  AlertState state = AlertState::kOk;
  Severity severity = Severity::kNone;
  absl::Time since = absl::InfinitePast();  // When `state` was entered.
  // Bookkeeping for the transitions that wait for for_duration.
  absl::Time over_since = absl::InfinitePast();
  absl::Time below_clear_since = absl::InfiniteFuture();

  bool operator==(const AlertStatus&) const = default;
};

class AlertStateMachine {
 public:
  // Feeds one evaluation. `eligible`: enough samples and evidence to alert. Returns true when the
  // state or the severity changed.
  bool Observe(double value, bool eligible, absl::Time now, const AlertPolicy& policy);

  const AlertStatus& status() const { return status_; }
  // Restores a persisted status (storage).
  void Restore(const AlertStatus& status) { status_ = status; }

 private:
  AlertStatus status_;
};

}  // namespace kldrift

#endif  // KLDRIFT_SERVER_CORE_ALERT_STATE_H_
