#include "server/core/alert_state.h"

namespace kldrift {

absl::string_view AlertStateName(AlertState state) {
  switch (state) {
    case AlertState::kOk:
      return "ok";
    case AlertState::kPending:
      return "pending";
    case AlertState::kFiring:
      return "firing";
  }
  return "unknown";
}

absl::string_view SeverityName(Severity severity) {
  switch (severity) {
    case Severity::kNone:
      return "none";
    case Severity::kWarn:
      return "warn";
    case Severity::kCritical:
      return "critical";
  }
  return "unknown";
}

bool AlertStateMachine::Observe(double value, bool eligible, absl::Time now,
                                const AlertPolicy& policy) {
  const AlertStatus before = status_;
  const bool over = eligible && value >= policy.warn_threshold;
  const Severity severity_now =
      value >= policy.critical_threshold ? Severity::kCritical : Severity::kWarn;

  switch (status_.state) {
    case AlertState::kOk:
      if (over) {
        status_.state = AlertState::kPending;
        status_.since = now;
        status_.over_since = now;
        status_.severity = severity_now;
      }
      break;
    case AlertState::kPending:
      if (!over) {
        status_ = AlertStatus{AlertState::kOk, Severity::kNone, now};
      } else {
        status_.severity = severity_now;
      }
      break;
    case AlertState::kFiring:
      // A window short of samples or evidence keeps firing (and restarts the clear timer):
      // silence is reported by the no-data alert, not by clearing.
      if (!eligible) {
        status_.below_clear_since = absl::InfiniteFuture();
        break;
      }
      if (value < policy.EffectiveClearThreshold()) {
        if (status_.below_clear_since == absl::InfiniteFuture()) status_.below_clear_since = now;
        if (now - status_.below_clear_since >= policy.for_duration) {
          status_ = AlertStatus{AlertState::kOk, Severity::kNone, now};
        }
      } else {
        status_.below_clear_since = absl::InfiniteFuture();
        // Between clear and warn the alert keeps firing at warn severity.
        status_.severity = severity_now;
      }
      break;
  }
  if (status_.state == AlertState::kPending && now - status_.over_since >= policy.for_duration) {
    status_.state = AlertState::kFiring;
    status_.since = now;
    status_.below_clear_since = absl::InfiniteFuture();
  }
  return status_.state != before.state || status_.severity != before.severity;
}

}  // namespace kldrift
