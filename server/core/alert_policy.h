// AlertPolicy: how a stream's windows are kept, which measure is watched, and when it alerts.
//
// Every field has a default that works; ResolvePolicy() fills the ones left unset and
// ValidatePolicy() explains what is wrong with a bad one. Defaults:
//   windows 5m, 1h, 24h (each a ring of 12 sub-buckets); alpha 0.5; measure kl_current_reference;
//   warn 0.05 and critical 0.125 (the small-shift equivalents in KL of the classic PSI rule of
//   thumb 0.1 / 0.25, since PSI ~ 2 KL for small shifts); clear at 0.8 * warn; for 5m; min_samples:
//   enough that the plug-in KL bias (K - 1) / (2N) is a tenth of the warn threshold, and at least
//   100; max_p_value 0.01.
//
// Thread safety: a value type.
#ifndef KLDRIFT_SERVER_CORE_ALERT_POLICY_H_
#define KLDRIFT_SERVER_CORE_ALERT_POLICY_H_

#include <cstddef>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "server/core/drift_measures.h"

namespace kldrift {

// The measures a policy can alert on (the scalar fields of DriftMeasures).
enum class Measure {
  kKlCurrentReference,
  kKlReferenceCurrent,
  kJeffreys,
  kPsi,
  kJsBits,
  kHellinger,
  kTotalVariation,
  kLInf,
  kChi2,
};

absl::string_view MeasureName(Measure measure);
// INVALID_ARGUMENT listing the valid names if `name` is not one.
absl::StatusOr<Measure> ParseMeasure(absl::string_view name);
double MeasureValue(const DriftMeasures& measures, Measure measure);

inline constexpr int kDefaultSubBuckets = 12;
inline constexpr int kMinSubBuckets = 2;
inline constexpr int kMaxSubBuckets = 120;
inline constexpr size_t kMaxWindows = 8;

// The windows a policy has unless it names its own: 5m, 1h and 24h. A function, defined out of
// line, rather than an initializer list in AlertPolicy: GCC 12 inlines such a list into the
// constructors of the structs that hold a policy and reports it "may be used uninitialized".
std::vector<absl::Duration> DefaultAlertWindows();

struct AlertPolicy {
  std::vector<absl::Duration> windows = DefaultAlertWindows();
  double alpha = kDefaultAlpha;
  Measure measure = Measure::kKlCurrentReference;
  double warn_threshold = 0.05;
  double critical_threshold = 0.125;
  std::optional<double> clear_threshold;  // Unset: 0.8 * warn_threshold.
  absl::Duration for_duration = absl::Minutes(5);
  std::optional<double> min_samples;  // Unset: derived from the bin count, see above.
  double max_p_value = 0.01;
  int sub_buckets = kDefaultSubBuckets;

  double EffectiveClearThreshold() const;
  // The min_samples in force for a stream with `bins` bins.
  double EffectiveMinSamples(size_t bins) const;
  absl::Duration LongestWindow() const;
};

// INVALID_ARGUMENT with an actionable message for: no or too many windows, a window that is not
// positive or not a whole number of seconds, duplicate windows, sub_buckets out of [2, 120], a
// window shorter than one second per sub-bucket, negative or non-finite alpha or thresholds,
// critical < warn, clear >= warn, negative for_duration or min_samples, max_p_value outside (0, 1].
absl::Status ValidatePolicy(const AlertPolicy& policy);

// "5m", "1h", "24h", "90s": the shortest exact form, as windows are written in flags and labels.
std::string FormatWindow(absl::Duration window);
// Parses "5m", "1h", "24h", "90s", "1h30m", "2d"; INVALID_ARGUMENT otherwise.
absl::StatusOr<absl::Duration> ParseWindow(absl::string_view text);
// Parses a comma-separated list of windows, e.g. "5m,1h,24h".
absl::StatusOr<std::vector<absl::Duration>> ParseWindowList(absl::string_view text);

}  // namespace kldrift

#endif  // KLDRIFT_SERVER_CORE_ALERT_POLICY_H_
