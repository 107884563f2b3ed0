#include "server/core/alert_policy.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace kldrift {
namespace {

constexpr std::pair<Measure, absl::string_view> kMeasureNames[] = {
    {Measure::kKlCurrentReference, "kl_current_reference"},
    {Measure::kKlReferenceCurrent, "kl_reference_current"},
    {Measure::kJeffreys, "jeffreys"},
    {Measure::kPsi, "psi"},
    {Measure::kJsBits, "js_bits"},
    {Measure::kHellinger, "hellinger"},
    {Measure::kTotalVariation, "total_variation"},
    {Measure::kLInf, "l_inf"},
    {Measure::kChi2, "chi2"},
};

absl::Status CheckNonNegative(absl::string_view what, double value) {
  if (!std::isfinite(value) || value < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " = ", value, " is invalid; it must be a finite number >= 0"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::string_view MeasureName(Measure measure) {
  for (const auto& [m, name] : kMeasureNames) {
    if (m == measure) return name;
  }
  return "unknown";
}

absl::StatusOr<Measure> ParseMeasure(absl::string_view name) {
  std::vector<absl::string_view> names;
  for (const auto& [m, candidate] : kMeasureNames) {
    if (candidate == name) return m;
    names.push_back(candidate);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown measure \"", name, "\"; use one of: ", absl::StrJoin(names, ", ")));
}

double MeasureValue(const DriftMeasures& m, Measure measure) {
  switch (measure) {
    case Measure::kKlCurrentReference:
      return m.kl_current_reference;
    case Measure::kKlReferenceCurrent:
      return m.kl_reference_current;
    case Measure::kJeffreys:
      return m.jeffreys;
    case Measure::kPsi:
      return m.psi;
    case Measure::kJsBits:
      return m.js_bits;
    case Measure::kHellinger:
      return m.hellinger;
    case Measure::kTotalVariation:
      return m.total_variation;
    case Measure::kLInf:
      return m.l_inf;
    case Measure::kChi2:
      return m.chi2;
  }
  return 0;
}

std::vector<absl::Duration> DefaultAlertWindows() {
  return {absl::Minutes(5), absl::Hours(1), absl::Hours(24)};
}

double AlertPolicy::EffectiveClearThreshold() const {
  return clear_threshold.value_or(0.8 * warn_threshold);
}

double AlertPolicy::EffectiveMinSamples(size_t bins) const {
  if (min_samples) return *min_samples;
  // Bias (K - 1) / (2N) <= warn / 10  <=>  N >= 5 (K - 1) / warn.
  const double k = bins > 1 ? static_cast<double>(bins - 1) : 1.0;
  const double for_bias = warn_threshold > 0 ? std::ceil(5.0 * k / warn_threshold) : 100.0;
  return std::max(100.0, for_bias);
}

absl::Duration AlertPolicy::LongestWindow() const {
  absl::Duration longest = absl::ZeroDuration();
  for (absl::Duration w : windows) longest = std::max(longest, w);
  return longest;
}

absl::Status ValidatePolicy(const AlertPolicy& p) {
  if (p.windows.empty()) {
    return absl::InvalidArgumentError("a policy needs at least one window, e.g. 5m,1h,24h");
  }
  if (p.windows.size() > kMaxWindows) {
    return absl::InvalidArgumentError(
        absl::StrCat("a policy has at most ", kMaxWindows, " windows; got ", p.windows.size()));
  }
  if (p.sub_buckets < kMinSubBuckets || p.sub_buckets > kMaxSubBuckets) {
    return absl::InvalidArgumentError(absl::StrCat("sub_buckets = ", p.sub_buckets, " is outside [",
                                                   kMinSubBuckets, ", ", kMaxSubBuckets, "]"));
  }
  std::set<absl::Duration> seen;
  for (absl::Duration w : p.windows) {
    if (w <= absl::ZeroDuration() || w % absl::Seconds(1) != absl::ZeroDuration()) {
      return absl::InvalidArgumentError(absl::StrCat("window ", absl::FormatDuration(w),
                                                     " is invalid; windows are whole seconds > 0"));
    }
    if (w < absl::Seconds(p.sub_buckets)) {
      return absl::InvalidArgumentError(absl::StrCat("window ", FormatWindow(w),
                                                     " is shorter than one second per sub-bucket (",
                                                     p.sub_buckets, " sub-buckets)"));
    }
    if (!seen.insert(w).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("window ", FormatWindow(w), " is listed twice"));
    }
  }
  if (absl::Status s = CheckNonNegative("alpha", p.alpha); !s.ok()) return s;
  if (absl::Status s = CheckNonNegative("warn_threshold", p.warn_threshold); !s.ok()) return s;
  if (absl::Status s = CheckNonNegative("critical_threshold", p.critical_threshold); !s.ok()) {
    return s;
  }
  if (p.critical_threshold < p.warn_threshold) {
    return absl::InvalidArgumentError(
        absl::StrCat("critical_threshold = ", p.critical_threshold,
                     " is below warn_threshold = ", p.warn_threshold));
  }
  if (p.clear_threshold) {
    if (absl::Status s = CheckNonNegative("clear_threshold", *p.clear_threshold); !s.ok()) {
      return s;
    }
    // Below warn, so that a firing warning has a band to clear in; with warn_threshold = 0 (every
    // value warns) there is no band, and clear can only be 0 too.
    if (*p.clear_threshold > p.warn_threshold ||
        (*p.clear_threshold == p.warn_threshold && p.warn_threshold > 0)) {
      return absl::InvalidArgumentError(
          absl::StrCat("clear_threshold = ", *p.clear_threshold, " must be below warn_threshold = ",
                       p.warn_threshold + 0.0,  // + 0.0: -0 prints as 0.
                       " (the gap is the hysteresis that stops alerts flapping)"));
    }
  }
  if (p.for_duration < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("for_duration must not be negative");
  }
  if (p.min_samples) {
    if (absl::Status s = CheckNonNegative("min_samples", *p.min_samples); !s.ok()) return s;
  }
  if (!(p.max_p_value > 0 && p.max_p_value <= 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_p_value = ", p.max_p_value, " must be in (0, 1]; 1 disables the check"));
  }
  return absl::OkStatus();
}

std::string FormatWindow(absl::Duration window) {
  const int64_t seconds = absl::ToInt64Seconds(window);
  if (seconds > 0 && seconds % 3600 == 0) return absl::StrCat(seconds / 3600, "h");
  if (seconds > 0 && seconds % 60 == 0) return absl::StrCat(seconds / 60, "m");
  if (window % absl::Seconds(1) == absl::ZeroDuration()) return absl::StrCat(seconds, "s");
  return absl::FormatDuration(window);
}

absl::StatusOr<absl::Duration> ParseWindow(absl::string_view text) {
  text = absl::StripAsciiWhitespace(text);
  absl::Duration d;
  std::string normalized(text);
  // absl::ParseDuration has no days; accept "2d" as 48h.
  if (!normalized.empty() && normalized.back() == 'd') {
    int64_t days;
    if (absl::SimpleAtoi(absl::string_view(normalized).substr(0, normalized.size() - 1), &days) &&
        days > 0 && days <= std::numeric_limits<int64_t>::max() / 86400) {
      return absl::Hours(24 * days);
    }
  }
  if (!absl::ParseDuration(normalized, &d) || d <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(absl::StrCat("\"", text,
                                                   "\" is not a window; write e.g. 90s, 5m, "
                                                   "1h, 1h30m or 2d"));
  }
  return d;
}

absl::StatusOr<std::vector<absl::Duration>> ParseWindowList(absl::string_view text) {
  std::vector<absl::Duration> windows;
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    absl::StatusOr<absl::Duration> w = ParseWindow(part);
    if (!w.ok()) return w.status();
    windows.push_back(*w);
  }
  if (windows.empty()) {
    return absl::InvalidArgumentError("no windows given; write e.g. 5m,1h,24h");
  }
  return windows;
}

}  // namespace kldrift
