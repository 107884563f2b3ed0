#include "server/metrics/drift_metrics.h"

#include <cmath>
#include <exception>
#include <fstream>
#include <limits>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "prometheus/exposer.h"
#include "server/core/alert_policy.h"
#include "server/core/constant_time.h"

namespace kldrift {
namespace {

using prometheus::Counter;
using prometheus::Family;
using prometheus::Gauge;
using prometheus::Labels;

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

Family<Gauge>& GaugeFamily(prometheus::Registry& registry, const std::string& name,
                           const std::string& help) {
  return prometheus::BuildGauge().Name(name).Help(help).Register(registry);
}

Family<Counter>& CounterFamily(prometheus::Registry& registry, const std::string& name,
                               const std::string& help) {
  return prometheus::BuildCounter().Name(name).Help(help).Register(registry);
}

// Evaluation durations: 100 µs to 10 s.
prometheus::Histogram::BucketBoundaries EvaluationBuckets() {
  return {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
          0.05,   0.1,     0.25,   0.5,   1,      2.5,   5,    10};
}

bool IsHistogramKind(ReferenceKind kind) {
  return kind != ReferenceKind::kGaussian && kind != ReferenceKind::kPairedLogProbs;
}

// The gRPC codes a batch can be rejected with; their series exist from start-up so that rate()
// sees the first rejection.
constexpr absl::StatusCode kRejectionCodes[] = {
    absl::StatusCode::kInvalidArgument,    absl::StatusCode::kNotFound,
    absl::StatusCode::kFailedPrecondition, absl::StatusCode::kResourceExhausted,
    absl::StatusCode::kOutOfRange,         absl::StatusCode::kPermissionDenied,
    absl::StatusCode::kUnauthenticated,    absl::StatusCode::kAborted,
    absl::StatusCode::kUnavailable,        absl::StatusCode::kDataLoss,
    absl::StatusCode::kInternal,
};

}  // namespace

absl::StatusOr<uint32_t> ParseMetricsMeasures(absl::string_view text) {
  if (text == "all") return kAllMeasureFamilies;
  if (text == "none") return 0u;
  uint32_t bits = 0;
  for (absl::string_view name : absl::StrSplit(text, ',')) {
    if (name == "g_test_p_value") {
      bits |= kGTestPValueBit;
      continue;
    }
    absl::StatusOr<Measure> measure = ParseMeasure(name);
    if (!measure.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--metrics-measures: ", measure.status().message(),
                       ", or g_test_p_value; or all, or none"));
    }
    bits |= MeasureBit(*measure);
  }
  return bits;
}

struct DriftMetrics::WindowSeries {
  absl::Duration window;
  Labels labels;  // model, model_version, signal, window.
  // Every series of this window but the alert state and top bins, for removal.
  std::vector<std::pair<Family<Gauge>*, Gauge*>> gauges;
  // Histogram kinds.
  Gauge* kl_current_reference = nullptr;
  Gauge* kl_reference_current = nullptr;
  Gauge* jeffreys = nullptr;
  Gauge* js_divergence = nullptr;
  Gauge* psi = nullptr;
  Gauge* hellinger = nullptr;
  Gauge* total_variation = nullptr;
  Gauge* linf = nullptr;
  Gauge* chi_squared = nullptr;
  Gauge* g_test_p_value = nullptr;
  // Paired log-probs.
  Gauge* k1 = nullptr;
  Gauge* k2 = nullptr;
  Gauge* k3 = nullptr;
  // Every kind.
  Gauge* samples = nullptr;
  Gauge* enough_samples = nullptr;
  Gauge* measure_value = nullptr;
  Gauge* warn_threshold = nullptr;
  Gauge* critical_threshold = nullptr;
  Gauge* clear_threshold = nullptr;
  Gauge* eligible = nullptr;
  // The state series carries the severity label, so it is replaced when the severity changes.
  Gauge* alert_state = nullptr;
  Severity alert_severity = Severity::kNone;
  struct TopBin {
    std::string bin;
    Gauge* gauge = nullptr;
  };
  std::vector<TopBin> top_bins;  // By rank.
};

struct DriftMetrics::StreamSeries {
  StreamKey key;
  Labels labels;  // model, model_version, signal.
  ReferenceKind kind = ReferenceKind::kPreBinned;
  std::string measure;
  std::vector<absl::Duration> windows;  // The current version's.
  Gauge* reference_version = nullptr;
  Counter* observations = nullptr;
  Counter* nan_observations = nullptr;
  std::vector<std::unique_ptr<WindowSeries>> window_series;
};

DriftMetrics::DriftMetrics(MetricsOptions options)
    : options_(std::move(options)),
      registry_(std::make_shared<prometheus::Registry>()),
      kl_current_reference_(GaugeFamily(
          *registry_, "kldrift_drift_kl_current_reference_nats",
          "KL(current || reference) of the window, nats (histogram and Gaussian streams)")),
      kl_reference_current_(GaugeFamily(*registry_, "kldrift_drift_kl_reference_current_nats",
                                        "KL(reference || current) of the window, nats")),
      jeffreys_(GaugeFamily(*registry_, "kldrift_drift_jeffreys_nats",
                            "Jeffreys divergence (KL in both directions, summed), nats")),
      js_divergence_(
          GaugeFamily(*registry_, "kldrift_drift_js_divergence",
                      "Jensen-Shannon divergence of the window, base-2 logarithm, in [0, 1]")),
      psi_(
          GaugeFamily(*registry_, "kldrift_drift_psi", "Population stability index of the window")),
      hellinger_(GaugeFamily(*registry_, "kldrift_drift_hellinger_distance",
                             "Hellinger distance of the window, in [0, 1]")),
      total_variation_(GaugeFamily(*registry_, "kldrift_drift_total_variation_distance",
                                   "Total variation distance of the window, in [0, 1]")),
      linf_(GaugeFamily(*registry_, "kldrift_drift_linf_distance",
                        "Largest absolute difference of a bin's share, in [0, 1]")),
      chi_squared_(GaugeFamily(*registry_, "kldrift_drift_chi_squared_divergence",
                               "Pearson chi-squared divergence of the window")),
      g_test_p_value_(GaugeFamily(*registry_, "kldrift_drift_g_test_p_value",
                                  "G-test p-value that the window and the reference share a "
                                  "distribution (small: significant drift)")),
      policy_kl_estimate_(GaugeFamily(
          *registry_, "kldrift_policy_kl_estimate_nats",
          "Paired log-prob KL(current || reference) estimate (Schulman k1, k2, k3), nats")),
      window_samples_(
          GaugeFamily(*registry_, "kldrift_window_samples", "Observations in the window")),
      window_enough_samples_(GaugeFamily(*registry_, "kldrift_window_enough_samples",
                                         "1 when the window holds the policy's min_samples")),
      alert_measure_value_(GaugeFamily(*registry_, "kldrift_alert_measure_value",
                                       "Value of the measure the stream's alert policy watches")),
      alert_warn_threshold_(GaugeFamily(*registry_, "kldrift_alert_warn_threshold",
                                        "The alert policy's warn threshold for the measure")),
      alert_critical_threshold_(GaugeFamily(*registry_, "kldrift_alert_critical_threshold",
                                            "The alert policy's critical threshold")),
      alert_clear_threshold_(
          GaugeFamily(*registry_, "kldrift_alert_clear_threshold",
                      "The alert policy's clear threshold (a firing warning clears below it)")),
      alert_eligible_(GaugeFamily(*registry_, "kldrift_alert_eligible",
                                  "1 when the window may raise an alert: enough samples and a "
                                  "G-test p-value at most the policy's max_p_value")),
      alert_state_(GaugeFamily(*registry_, "kldrift_alert_state",
                               "kldriftd's alert state of the window: 0 ok, 1 pending, 2 firing")),
      top_bin_contribution_(GaugeFamily(
          *registry_, "kldrift_top_bin_kl_contribution_nats",
          "Contribution of the bins contributing most to KL(current || reference), by rank")),
      reference_version_(GaugeFamily(*registry_, "kldrift_reference_version",
                                     "Version of the stream's current reference")),
      stream_observations_(CounterFamily(*registry_, "kldrift_stream_ingested_observations_total",
                                         "Observations applied to the stream")),
      stream_nan_observations_(
          CounterFamily(*registry_, "kldrift_stream_nan_observations_total",
                        "NaN values applied to a numeric stream (counted in its NaN bucket)")),
      batches_(CounterFamily(*registry_, "kldrift_ingested_batches_total", "Ingest batches applied")
                   .Add({})),
      observations_(CounterFamily(*registry_, "kldrift_ingested_observations_total",
                                  "Observations applied, over every stream")
                        .Add({})),
      rejected_batches_(CounterFamily(*registry_, "kldrift_rejected_batches_total",
                                      "Ingest batches rejected, by reason (gRPC status code)")),
      duplicate_batches_(
          CounterFamily(*registry_, "kldrift_duplicate_batches_total",
                        "Resent ingest batches recognised and acknowledged without reapplying")
              .Add({})),
      acks_(CounterFamily(*registry_, "kldrift_ingest_acks_total", "Ingest acks written").Add({})),
      ingest_streams_opened_(
          CounterFamily(*registry_, "kldrift_ingest_streams_opened_total", "Ingest streams opened")
              .Add({})),
      ingest_reconnects_(
          CounterFamily(*registry_, "kldrift_ingest_reconnects_total",
                        "Ingest streams opened by a client id the server already knew")
              .Add({})),
      ingest_streams_active_(
          GaugeFamily(*registry_, "kldrift_ingest_streams_active", "Open Ingest streams").Add({})),
      watch_streams_active_(
          GaugeFamily(*registry_, "kldrift_watch_streams_active", "Open WatchDrift streams")
              .Add({})),
      evaluation_duration_(prometheus::BuildHistogram()
                               .Name("kldrift_evaluation_duration_seconds")
                               .Help("Duration of one evaluation of every window of every stream")
                               .Register(*registry_)
                               .Add({}, EvaluationBuckets())),
      evaluated_windows_(GaugeFamily(*registry_, "kldrift_evaluated_windows",
                                     "Windows evaluated by the last evaluation")
                             .Add({})),
      streams_(GaugeFamily(*registry_, "kldrift_streams", "Streams with a reference").Add({})),
      streams_limit_(
          GaugeFamily(*registry_, "kldrift_streams_limit", "Most streams allowed (--max-streams)")
              .Add({})),
      ingest_clients_(GaugeFamily(*registry_, "kldrift_ingest_clients",
                                  "Ingest client ids remembered for de-duplication")
                          .Add({})),
      storage_bytes_(GaugeFamily(*registry_, "kldrift_storage_bytes",
                                 "Bytes of the data folder (0 with --storage memory)")
                         .Add({})),
      store_errors_(CounterFamily(*registry_, "kldrift_store_errors_total",
                                  "Background writes to the store that failed")
                        .Add({})),
      watch_reports_dropped_(
          CounterFamily(*registry_, "kldrift_watch_reports_dropped_total",
                        "WatchDrift reports dropped because a watcher fell behind")
              .Add({})) {
  GaugeFamily(*registry_, "kldrift_build_info", "kldriftd's version; the value is 1")
      .Add({{"version", options_.version}})
      .Set(1);
  GaugeFamily(*registry_, "kldrift_start_time_seconds", "When kldriftd started, Unix seconds")
      .Add({})
      .Set(absl::ToDoubleSeconds(options_.start_time - absl::UnixEpoch()));
  MutexLock lock(&mutex_);
  for (absl::StatusCode code : kRejectionCodes) {
    rejected_by_code_[code] = &rejected_batches_.Add({{"reason", ReasonLabel(code)}});
  }
}

DriftMetrics::~DriftMetrics() = default;

std::string DriftMetrics::ReasonLabel(absl::StatusCode code) {
  return absl::AsciiStrToLower(absl::StatusCodeToString(code));
}

void DriftMetrics::OnReferenceInstalled(const Reference& reference) {
  MutexLock lock(&mutex_);
  std::unique_ptr<StreamSeries>& slot = streams_series_[reference.stream];
  if (slot == nullptr) {
    slot = std::make_unique<StreamSeries>();
    slot->key = reference.stream;
    slot->labels = {{"model", reference.stream.model},
                    {"model_version", reference.stream.model_version},
                    {"signal", reference.stream.signal}};
    slot->reference_version = &reference_version_.Add(slot->labels);
    slot->observations = &stream_observations_.Add(slot->labels);
    slot->nan_observations = &stream_nan_observations_.Add(slot->labels);
  }
  StreamSeries& stream = *slot;
  const std::string measure(MeasureName(reference.policy.measure));
  if (stream.kind != reference.kind || stream.windows != reference.policy.windows ||
      stream.measure != measure) {
    // The window series are rebuilt for the new shape at the next evaluation.
    for (auto& window : stream.window_series) RemoveWindowLocked(stream, *window);
    stream.window_series.clear();
    stream.kind = reference.kind;
    stream.windows = reference.policy.windows;
    stream.measure = measure;
  }
  stream.reference_version->Set(static_cast<double>(reference.version));
}

void DriftMetrics::OnStreamDeleted(const StreamKey& key) {
  MutexLock lock(&mutex_);
  auto it = streams_series_.find(key);
  if (it == streams_series_.end()) return;
  StreamSeries& stream = *it->second;
  for (auto& window : stream.window_series) RemoveWindowLocked(stream, *window);
  reference_version_.Remove(stream.reference_version);
  stream_observations_.Remove(stream.observations);
  stream_nan_observations_.Remove(stream.nan_observations);
  streams_series_.erase(it);
}

void DriftMetrics::OnBatchApplied(absl::Span<const StreamKey> streams,
                                  absl::Span<const double> samples,
                                  absl::Span<const double> nan_samples) {
  double total = 0;
  {
    MutexLock lock(&mutex_);
    for (size_t i = 0; i < streams.size() && i < samples.size(); ++i) {
      total += samples[i];
      auto it = streams_series_.find(streams[i]);
      if (it == streams_series_.end()) continue;
      it->second->observations->Increment(samples[i]);
      if (i < nan_samples.size() && nan_samples[i] > 0) {
        it->second->nan_observations->Increment(nan_samples[i]);
      }
    }
  }
  batches_.Increment();
  observations_.Increment(total);
}

void DriftMetrics::OnStreamEvaluated(absl::Span<const WindowReport> reports) {
  if (reports.empty()) return;
  MutexLock lock(&mutex_);
  auto it = streams_series_.find(reports.front().stream);
  if (it == streams_series_.end()) return;  // Deleted since the evaluation.
  StreamSeries& stream = *it->second;
  for (const WindowReport& report : reports) {
    if (report.kind != stream.kind) return;  // From a version replaced since.
    bool known = false;
    for (absl::Duration w : stream.windows) known |= w == report.window;
    if (!known) continue;
    WindowSeries* window = nullptr;
    for (auto& w : stream.window_series) {
      if (w->window == report.window) window = w.get();
    }
    if (window == nullptr) {
      stream.window_series.push_back(std::make_unique<WindowSeries>());
      window = stream.window_series.back().get();
      window->window = report.window;
      window->labels = stream.labels;
      window->labels.emplace("window", FormatWindow(report.window));
    }
    UpdateWindowLocked(stream, *window, report);
  }
}

void DriftMetrics::UpdateWindowLocked(const StreamSeries& stream, WindowSeries& w,
                                      const WindowReport& report) {
  auto add = [&w](Family<Gauge>& family, const Labels& labels) {
    Gauge* gauge = &family.Add(labels);
    w.gauges.emplace_back(&family, gauge);
    return gauge;
  };
  auto add_measure = [&](Measure measure, Family<Gauge>& family) -> Gauge* {
    return (options_.measures & MeasureBit(measure)) ? add(family, w.labels) : nullptr;
  };
  auto set = [](Gauge* gauge, double value) {
    if (gauge != nullptr) gauge->Set(value);
  };
  if (w.samples == nullptr) {
    // First report of this window: create its series for the stream's kind.
    Labels with_measure = w.labels;
    with_measure.emplace("measure", report.measure);
    if (IsHistogramKind(stream.kind)) {
      w.kl_current_reference = add_measure(Measure::kKlCurrentReference, kl_current_reference_);
      w.kl_reference_current = add_measure(Measure::kKlReferenceCurrent, kl_reference_current_);
      w.jeffreys = add_measure(Measure::kJeffreys, jeffreys_);
      w.js_divergence = add_measure(Measure::kJsBits, js_divergence_);
      w.psi = add_measure(Measure::kPsi, psi_);
      w.hellinger = add_measure(Measure::kHellinger, hellinger_);
      w.total_variation = add_measure(Measure::kTotalVariation, total_variation_);
      w.linf = add_measure(Measure::kLInf, linf_);
      w.chi_squared = add_measure(Measure::kChi2, chi_squared_);
      if (options_.measures & kGTestPValueBit) w.g_test_p_value = add(g_test_p_value_, w.labels);
    } else if (stream.kind == ReferenceKind::kGaussian) {
      w.kl_current_reference = add_measure(Measure::kKlCurrentReference, kl_current_reference_);
      w.kl_reference_current = add_measure(Measure::kKlReferenceCurrent, kl_reference_current_);
      w.jeffreys = add_measure(Measure::kJeffreys, jeffreys_);
    } else {
      for (auto [gauge, name] : {std::pair{&w.k1, "k1"}, {&w.k2, "k2"}, {&w.k3, "k3"}}) {
        Labels labels = w.labels;
        labels.emplace("estimator", name);
        *gauge = add(policy_kl_estimate_, labels);
      }
    }
    w.samples = add(window_samples_, w.labels);
    w.enough_samples = add(window_enough_samples_, w.labels);
    w.measure_value = add(alert_measure_value_, with_measure);
    w.warn_threshold = add(alert_warn_threshold_, with_measure);
    w.critical_threshold = add(alert_critical_threshold_, with_measure);
    w.clear_threshold = add(alert_clear_threshold_, with_measure);
    w.eligible = add(alert_eligible_, w.labels);
  }

  bool defined = false;  // Whether the window has data to measure.
  if (report.histogram) {
    const DriftMeasures& m = *report.histogram;
    defined = true;
    set(w.kl_current_reference, m.kl_current_reference);
    set(w.kl_reference_current, m.kl_reference_current);
    set(w.jeffreys, m.jeffreys);
    set(w.js_divergence, m.js_bits);
    set(w.psi, m.psi);
    set(w.hellinger, m.hellinger);
    set(w.total_variation, m.total_variation);
    set(w.linf, m.l_inf);
    set(w.chi_squared, m.chi2);
    set(w.g_test_p_value, m.g_test_p_value);
  } else if (IsHistogramKind(stream.kind)) {
    for (Gauge* g :
         {w.kl_current_reference, w.kl_reference_current, w.jeffreys, w.js_divergence, w.psi,
          w.hellinger, w.total_variation, w.linf, w.chi_squared, w.g_test_p_value}) {
      set(g, kNaN);
    }
  }
  if (stream.kind == ReferenceKind::kGaussian) {
    defined = report.gaussian.has_value();
    set(w.kl_current_reference, defined ? report.gaussian->kl.forward : kNaN);
    set(w.kl_reference_current, defined ? report.gaussian->kl.reverse : kNaN);
    set(w.jeffreys, defined ? report.gaussian->kl.forward + report.gaussian->kl.reverse : kNaN);
  }
  if (stream.kind == ReferenceKind::kPairedLogProbs) {
    defined = report.policy.has_value();
    w.k1->Set(defined ? report.policy->k1.mean : kNaN);
    w.k2->Set(defined ? report.policy->k2.mean : kNaN);
    w.k3->Set(defined ? report.policy->k3.mean : kNaN);
  }
  w.samples->Set(report.samples);
  w.enough_samples->Set(report.enough_samples ? 1 : 0);
  w.measure_value->Set(defined ? report.measure_value : kNaN);
  w.warn_threshold->Set(report.warn_threshold);
  w.critical_threshold->Set(report.critical_threshold);
  w.clear_threshold->Set(report.clear_threshold);
  w.eligible->Set(report.eligible ? 1 : 0);

  const Severity severity = report.alert.severity;
  if (w.alert_state == nullptr || w.alert_severity != severity) {
    if (w.alert_state != nullptr) alert_state_.Remove(w.alert_state);
    Labels labels = w.labels;
    labels.emplace("severity", std::string(SeverityName(severity)));
    w.alert_state = &alert_state_.Add(labels);
    w.alert_severity = severity;
  }
  w.alert_state->Set(static_cast<double>(report.alert.state));

  if (IsHistogramKind(stream.kind)) {
    // A window without data has no contributing bins: drop the last ones rather than export them
    // as if they were current.
    static const std::vector<BinContribution> kNoBins;
    const std::vector<BinContribution>& top =
        report.histogram ? report.histogram->top_bins : kNoBins;
    const size_t ranks = std::min(top.size(), options_.top_bins);
    for (size_t rank = ranks; rank < w.top_bins.size(); ++rank) {
      top_bin_contribution_.Remove(w.top_bins[rank].gauge);
    }
    w.top_bins.resize(ranks);
    for (size_t rank = 0; rank < ranks; ++rank) {
      WindowSeries::TopBin& slot = w.top_bins[rank];
      if (slot.gauge == nullptr || slot.bin != top[rank].label) {
        if (slot.gauge != nullptr) top_bin_contribution_.Remove(slot.gauge);
        Labels labels = w.labels;
        labels.emplace("rank", absl::StrCat(rank + 1));
        labels.emplace("bin", top[rank].label);
        slot.bin = top[rank].label;
        slot.gauge = &top_bin_contribution_.Add(labels);
      }
      slot.gauge->Set(top[rank].contribution);
    }
  }
}

void DriftMetrics::RemoveWindowLocked(StreamSeries& /*stream*/, WindowSeries& w) {
  for (auto& [family, gauge] : w.gauges) family->Remove(gauge);
  w.gauges.clear();
  if (w.alert_state != nullptr) alert_state_.Remove(w.alert_state);
  w.alert_state = nullptr;
  for (WindowSeries::TopBin& slot : w.top_bins) top_bin_contribution_.Remove(slot.gauge);
  w.top_bins.clear();
}

void DriftMetrics::OnEvaluationFinished(size_t windows, absl::Duration duration) {
  evaluation_duration_.Observe(absl::ToDoubleSeconds(duration));
  evaluated_windows_.Set(static_cast<double>(windows));
}

void DriftMetrics::RecordBatchRejected(absl::StatusCode code) {
  MutexLock lock(&mutex_);
  Counter*& counter = rejected_by_code_[code];
  if (counter == nullptr) counter = &rejected_batches_.Add({{"reason", ReasonLabel(code)}});
  counter->Increment();
}

void DriftMetrics::RecordDuplicateBatch() { duplicate_batches_.Increment(); }
void DriftMetrics::RecordAck() { acks_.Increment(); }

void DriftMetrics::RecordIngestStreamOpened() {
  ingest_streams_opened_.Increment();
  ingest_streams_active_.Increment();
}

void DriftMetrics::RecordIngestReconnect() { ingest_reconnects_.Increment(); }

void DriftMetrics::RecordIngestStreamClosed() { ingest_streams_active_.Decrement(); }
void DriftMetrics::RecordWatchStreamOpened() { watch_streams_active_.Increment(); }
void DriftMetrics::RecordWatchStreamClosed() { watch_streams_active_.Decrement(); }

void DriftMetrics::SetServerStateSource(std::function<ServerState()> source) {
  MutexLock lock(&source_mutex_);
  source_ = std::move(source);
}

std::vector<prometheus::MetricFamily> DriftMetrics::Collect() const {
  {
    MutexLock lock(&source_mutex_);
    if (source_) {
      const ServerState state = source_();
      streams_.Set(static_cast<double>(state.streams));
      streams_limit_.Set(static_cast<double>(state.max_streams));
      ingest_clients_.Set(static_cast<double>(state.ingest_clients));
      storage_bytes_.Set(static_cast<double>(state.storage_bytes));
      if (state.store_errors > seen_store_errors_) {
        store_errors_.Increment(static_cast<double>(state.store_errors - seen_store_errors_));
        seen_store_errors_ = state.store_errors;
      }
      if (state.watch_reports_dropped > seen_watch_reports_dropped_) {
        watch_reports_dropped_.Increment(
            static_cast<double>(state.watch_reports_dropped - seen_watch_reports_dropped_));
        seen_watch_reports_dropped_ = state.watch_reports_dropped;
      }
    }
  }
  return registry_->Collect();
}

size_t DriftMetrics::stream_series() const {
  MutexLock lock(&mutex_);
  size_t series = 0;
  for (const auto& [key, stream] : streams_series_) {
    series += 3;  // Reference version, observations, NaN observations.
    for (const auto& w : stream->window_series) {
      series += w->gauges.size() + (w->alert_state != nullptr ? 1 : 0) + w->top_bins.size();
    }
  }
  return series;
}

struct MetricsEndpoint::Impl {
  std::unique_ptr<prometheus::Exposer> exposer;
  std::shared_ptr<DriftMetrics> metrics;
};

absl::StatusOr<std::unique_ptr<MetricsEndpoint>> MetricsEndpoint::Start(
    const MetricsEndpointOptions& options, std::shared_ptr<DriftMetrics> metrics) {
  const std::string& address = options.address;
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == address.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--metrics-listen \"", address, "\" is not HOST:PORT (e.g. 127.0.0.1:9464 or [::1]:0)"));
  }
  const std::vector<std::string> civetweb_options = {"listening_ports", address, "num_threads",
                                                     "2"};
  std::unique_ptr<MetricsEndpoint> endpoint(new MetricsEndpoint);
  endpoint->impl_ = std::make_unique<Impl>();
  try {
    endpoint->impl_->exposer = std::make_unique<prometheus::Exposer>(civetweb_options);
  } catch (const std::exception& e) {
    return absl::UnavailableError(
        absl::StrCat("cannot serve metrics on ", address, " (", e.what(),
                     "); is the port in use? choose another with --metrics-listen"));
  }
  endpoint->impl_->metrics = std::move(metrics);
  if (!options.basic_auth_user.empty()) {
    // Registered before the collectable, so no scrape is ever served without it.
    endpoint->impl_->exposer->RegisterAuth(
        [user = options.basic_auth_user, password = options.basic_auth_password](
            const std::string& given_user, const std::string& given_password) {
          // Both compared in full, whatever the first says.
          const bool user_ok = ConstantTimeEquals(user, given_user);
          const bool password_ok = ConstantTimeEquals(password, given_password);
          return user_ok && password_ok;
        },
        "kldriftd metrics");
  }
  endpoint->impl_->exposer->RegisterCollectable(endpoint->impl_->metrics);
  const std::vector<int> ports = endpoint->impl_->exposer->GetListeningPorts();
  if (ports.empty()) {
    return absl::UnavailableError(absl::StrCat("cannot serve metrics on ", address));
  }
  endpoint->port_ = ports.front();
  return endpoint;
}

MetricsEndpoint::~MetricsEndpoint() = default;

}  // namespace kldrift
