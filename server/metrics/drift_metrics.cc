#include "server/metrics/drift_metrics.h"

#include <algorithm>
#include <array>
#include <cassert>
#include <charconv>
#include <cmath>
#include <fstream>
#include <limits>
#include <optional>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/types/span.h"
#include "prometheus/client_metric.h"
#include "prometheus/metric_family.h"
#include "prometheus/metric_type.h"
#include "prometheus/text_serializer.h"
#include "server/core/alert_policy.h"
#include "server/metrics/process_metrics.h"

namespace kldrift {
namespace {

using prometheus::Counter;
using prometheus::Family;
using prometheus::Gauge;

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

// Request handling times: 50 µs to 10 s.
prometheus::Histogram::BucketBoundaries RequestBuckets() {
  return {0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
          0.05,    0.1,    0.25,    0.5,    1,     2.5,    5,     10};
}

// The `method` label of each RequestMethod, indexed by it.
constexpr absl::string_view kRequestMethodNames[] = {
    "PutReference", "GetReference", "ListReferences", "DeleteReference", "GetDrift",
    "Backup",       "ExportModel",  "ImportModel",    "Ingest",
};
static_assert(std::size(kRequestMethodNames) == kRequestMethodCount);

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

absl::string_view RequestMethodName(RequestMethod method) {
  return kRequestMethodNames[static_cast<size_t>(method)];
}

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

namespace {

// What a per-stream family is called and says.
struct FamilyInfo {
  const char* name;
  const char* help;
  prometheus::MetricType type;
};

constexpr prometheus::MetricType kGaugeType = prometheus::MetricType::Gauge;

// The measure slots of a window: histogram kinds use all ten; Gaussian streams the first three
// (both KL directions and Jeffreys); paired log-prob streams the first three for k1, k2, k3.
constexpr size_t kMeasureSlots = 10;
constexpr size_t kGaussianSlots = 3;
struct MeasureFamily {
  FamilyInfo info;
  uint32_t bit;  // In MetricsOptions::measures.
};
constexpr MeasureFamily kMeasureFamilies[kMeasureSlots] = {
    {{"kldrift_drift_kl_current_reference_nats",
      "KL(current || reference) of the window, nats (histogram and Gaussian streams)", kGaugeType},
     MeasureBit(Measure::kKlCurrentReference)},
    {{"kldrift_drift_kl_reference_current_nats", "KL(reference || current) of the window, nats",
      kGaugeType},
     MeasureBit(Measure::kKlReferenceCurrent)},
    {{"kldrift_drift_jeffreys_nats", "Jeffreys divergence (KL in both directions, summed), nats",
      kGaugeType},
     MeasureBit(Measure::kJeffreys)},
    {{"kldrift_drift_js_divergence",
      "Jensen-Shannon divergence of the window, base-2 logarithm, in [0, 1]", kGaugeType},
     MeasureBit(Measure::kJsBits)},
    {{"kldrift_drift_psi", "Population stability index of the window", kGaugeType},
     MeasureBit(Measure::kPsi)},
    {{"kldrift_drift_hellinger_distance", "Hellinger distance of the window, in [0, 1]",
      kGaugeType},
     MeasureBit(Measure::kHellinger)},
    {{"kldrift_drift_total_variation_distance", "Total variation distance of the window, in [0, 1]",
      kGaugeType},
     MeasureBit(Measure::kTotalVariation)},
    {{"kldrift_drift_linf_distance", "Largest absolute difference of a bin's share, in [0, 1]",
      kGaugeType},
     MeasureBit(Measure::kLInf)},
    {{"kldrift_drift_chi_squared_divergence", "Pearson chi-squared divergence of the window",
      kGaugeType},
     MeasureBit(Measure::kChi2)},
    {{"kldrift_drift_g_test_p_value",
      "G-test p-value that the window and the reference share a distribution (small: "
      "significant drift)",
      kGaugeType},
     kGTestPValueBit},
};
constexpr FamilyInfo kPolicyKlEstimate = {
    "kldrift_policy_kl_estimate_nats",
    "Paired log-prob KL(current || reference) estimate (Schulman k1, k2, k3), nats", kGaugeType};
constexpr const char* kEstimators[kGaussianSlots] = {"k1", "k2", "k3"};
// Families every window exports besides the measures, the alert state and the top bins (samples,
// enough samples, measure value, three thresholds, eligible), and families per stream.
constexpr size_t kCommonWindowFamilies = 7;
constexpr size_t kPerStreamFamilies = 3;
// Every per-stream family: the measures, the policy estimators, the common window families, the
// alert state, the top bins, the per-stream families.
constexpr size_t kStreamFamilies =
    kMeasureSlots + 1 + kCommonWindowFamilies + 2 + kPerStreamFamilies;
// WriteExposition hands out text once it holds this much (and at the end), so a scrape's text
// buffer stays near this size whatever the number of streams.
constexpr size_t kExpositionPieceBytes = 1 << 20;
constexpr FamilyInfo kWindowSamples = {"kldrift_window_samples", "Observations in the window",
                                       kGaugeType};
constexpr FamilyInfo kWindowEnoughSamples = {"kldrift_window_enough_samples",
                                             "1 when the window holds the policy's min_samples",
                                             kGaugeType};
constexpr FamilyInfo kAlertMeasureValue = {"kldrift_alert_measure_value",
                                           "Value of the measure the stream's alert policy watches",
                                           kGaugeType};
constexpr FamilyInfo kAlertWarnThreshold = {"kldrift_alert_warn_threshold",
                                            "The alert policy's warn threshold for the measure",
                                            kGaugeType};
constexpr FamilyInfo kAlertCriticalThreshold = {
    "kldrift_alert_critical_threshold", "The alert policy's critical threshold", kGaugeType};
constexpr FamilyInfo kAlertClearThreshold = {
    "kldrift_alert_clear_threshold",
    "The alert policy's clear threshold (a firing warning clears below it)", kGaugeType};
constexpr FamilyInfo kAlertEligible = {"kldrift_alert_eligible",
                                       "1 when the window may raise an alert: enough samples and "
                                       "a G-test p-value at most the policy's max_p_value",
                                       kGaugeType};
constexpr FamilyInfo kAlertState = {
    "kldrift_alert_state", "kldriftd's alert state of the window: 0 ok, 1 pending, 2 firing",
    kGaugeType};
constexpr FamilyInfo kTopBinContribution = {
    "kldrift_top_bin_kl_contribution_nats",
    "Contribution of the bins contributing most to KL(current || reference), by rank", kGaugeType};
constexpr FamilyInfo kReferenceVersion = {"kldrift_reference_version",
                                          "Version of the stream's current reference", kGaugeType};
constexpr FamilyInfo kStreamObservations = {"kldrift_stream_ingested_observations_total",
                                            "Observations applied to the stream",
                                            prometheus::MetricType::Counter};
constexpr FamilyInfo kStreamNanObservations = {
    "kldrift_stream_nan_observations_total",
    "NaN values applied to a numeric stream (counted in its NaN bucket)",
    prometheus::MetricType::Counter};

// Every per-stream family, in the order they are written: the measures, the policy estimators,
// the common window families (samples, enough samples, measure value, warn, critical and clear
// thresholds, eligible), the alert state, the top bins, the per-stream families.
constexpr const FamilyInfo* kStreamFamilyInfos[] = {
    &kMeasureFamilies[0].info,
    &kMeasureFamilies[1].info,
    &kMeasureFamilies[2].info,
    &kMeasureFamilies[3].info,
    &kMeasureFamilies[4].info,
    &kMeasureFamilies[5].info,
    &kMeasureFamilies[6].info,
    &kMeasureFamilies[7].info,
    &kMeasureFamilies[8].info,
    &kMeasureFamilies[9].info,
    &kPolicyKlEstimate,
    &kWindowSamples,
    &kWindowEnoughSamples,
    &kAlertMeasureValue,
    &kAlertWarnThreshold,
    &kAlertCriticalThreshold,
    &kAlertClearThreshold,
    &kAlertEligible,
    &kAlertState,
    &kTopBinContribution,
    &kReferenceVersion,
    &kStreamObservations,
    &kStreamNanObservations,
};
static_assert(std::size(kStreamFamilyInfos) == kStreamFamilies);

// One label of a series being handed to a sink; the strings belong to the caller.
struct LabelRef {
  absl::string_view name;
  absl::string_view value;
};

// A series' labels, kept sorted by name as prometheus-cpp's Labels (a std::map) were: a stream's
// three, then window and at most two more (a top bin's rank and bin).
class LabelList {
 public:
  explicit LabelList(const StreamKey& key) {
    Add("model", key.model);
    Add("model_version", key.model_version);
    Add("signal", key.signal);
  }
  // REQUIRES: fewer than six labels so far.
  LabelList& Add(absl::string_view name, absl::string_view value) {
    assert(size_ < labels_.size());
    size_t i = size_;
    for (; i > 0 && labels_[i - 1].name > name; --i) labels_[i] = labels_[i - 1];
    labels_[i] = {name, value};
    ++size_;
    return *this;
  }
  absl::Span<const LabelRef> span() const { return {labels_.data(), size_}; }

 private:
  std::array<LabelRef, 6> labels_;
  size_t size_ = 0;
};

}  // namespace

// Receives the per-stream series, family by family; a family without series is never started
// (prometheus-cpp does not export empty families either).
class DriftMetrics::SeriesSink {
 public:
  virtual ~SeriesSink() = default;
  void StartFamily(const FamilyInfo& info) {
    info_ = &info;
    started_ = false;
  }
  void Add(absl::Span<const LabelRef> labels, double value) {
    if (!started_) {
      Start(*info_);
      started_ = true;
    }
    Series(*info_, labels, value);
  }

 protected:
  // The family's first series is coming.
  virtual void Start(const FamilyInfo& info) = 0;
  virtual void Series(const FamilyInfo& info, absl::Span<const LabelRef> labels, double value) = 0;

 private:
  const FamilyInfo* info_ = nullptr;
  bool started_ = false;
};

namespace {

// Builds prometheus-cpp's MetricFamily objects, for Collect().
class FamilySink final : public DriftMetrics::SeriesSink {
 public:
  explicit FamilySink(std::vector<prometheus::MetricFamily>& families) : families_(families) {}

 private:
  void Start(const FamilyInfo& info) override {
    prometheus::MetricFamily& family = families_.emplace_back();
    family.name = info.name;
    family.help = info.help;
    family.type = info.type;
  }
  void Series(const FamilyInfo& info, absl::Span<const LabelRef> labels, double value) override {
    prometheus::ClientMetric& metric = families_.back().metric.emplace_back();
    metric.label.reserve(labels.size());
    for (const LabelRef& label : labels) {
      metric.label.push_back({std::string(label.name), std::string(label.value)});
    }
    if (info.type == prometheus::MetricType::Counter) {
      metric.counter.value = value;
    } else {
      metric.gauge.value = value;
    }
  }

  std::vector<prometheus::MetricFamily>& families_;
};

// Appends the text format, exactly as prometheus::TextSerializer writes it (label values escaped,
// NaN as "Nan", 16 significant digits), without a MetricFamily in between.
class TextSink final : public DriftMetrics::SeriesSink {
 public:
  explicit TextSink(std::string& out) : out_(out) {}

 private:
  void Start(const FamilyInfo& info) override {
    absl::StrAppend(&out_, "# HELP ", info.name, " ", info.help, "\n# TYPE ", info.name,
                    info.type == prometheus::MetricType::Counter ? " counter\n" : " gauge\n");
  }
  void Series(const FamilyInfo& info, absl::Span<const LabelRef> labels, double value) override {
    out_.append(info.name);
    if (!labels.empty()) {
      char separator = '{';
      for (const LabelRef& label : labels) {
        out_.push_back(separator);
        out_.append(label.name.data(), label.name.size());
        out_.append("=\"");
        AppendEscaped(label.value);
        out_.push_back('"');
        separator = ',';
      }
      out_.push_back('}');
    }
    out_.push_back(' ');
    AppendValue(value);
    out_.push_back('\n');
  }

  void AppendEscaped(absl::string_view value) {
    for (char c : value) {
      if (c == '\n') {
        out_.append("\\n");
        continue;
      }
      if (c == '\\' || c == '"') out_.push_back('\\');
      out_.push_back(c);
    }
  }

  void AppendValue(double value) {
    if (std::isnan(value)) {
      out_.append("Nan");
    } else if (std::isinf(value)) {
      out_.append(value < 0 ? "-Inf" : "+Inf");
    } else {
      // TextSerializer: an ostream with precision max_digits10 - 1, i.e. printf's %.16g.
      char buffer[32];
      const std::to_chars_result end =
          std::to_chars(buffer, buffer + sizeof buffer, value, std::chars_format::general,
                        std::numeric_limits<double>::max_digits10 - 1);
      out_.append(buffer, end.ptr);
    }
  }

  std::string& out_;
};

}  // namespace

// One window's last report, as exported.
struct DriftMetrics::WindowState {
  absl::Duration window;
  std::string label;                           // FormatWindow(window).
  const std::string* measure = nullptr;        // The alerting measure (interned).
  std::array<double, kMeasureSlots> measures;  // See kMeasureFamilies; NaN without data.
  double samples = 0;
  double measure_value = 0;
  double warn_threshold = 0;
  double critical_threshold = 0;
  double clear_threshold = 0;
  bool enough_samples = false;
  bool eligible = false;
  Severity severity = Severity::kNone;
  AlertState state = AlertState::kOk;
  struct TopBin {
    uint32_t bin = 0;  // Named by `layout` when scraped: no string per bin.
    double contribution = 0;
  };
  std::vector<TopBin> top_bins;  // By rank; histogram kinds with data only.
  // The layout of the reference the top bins were ranked under (shared, interned).
  std::optional<BinLayout> layout;
};

struct DriftMetrics::StreamState {
  ReferenceKind kind = ReferenceKind::kPreBinned;
  std::optional<BinLayout> layout;  // The current version's (histogram kinds).
  std::string measure;
  std::vector<absl::Duration> windows;  // The current version's.
  double reference_version = 0;
  // Added to by the engine as it ingests (EngineObserver::OnReferenceInstalled hands them out).
  std::shared_ptr<StreamIngestCounters> ingested = std::make_shared<StreamIngestCounters>();
  std::vector<WindowState> window_states;  // Windows reported at least once, in that order.
};

DriftMetrics::DriftMetrics(MetricsOptions options)
    : options_(std::move(options)),
      registry_(std::make_shared<prometheus::Registry>()),
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
              .Add({})),
      request_duration_(prometheus::BuildHistogram()
                            .Name("kldrift_request_duration_seconds")
                            .Help("Time kldriftd spent on a request, by method: a unary call until "
                                  "its answer, an Ingest batch until its ack is queued (not the "
                                  "wait for a gRPC thread, not the network)")
                            .Register(*registry_)),
      requests_(CounterFamily(*registry_, "kldrift_requests_total",
                              "Requests handled, by method and status code (an Ingest batch is "
                              "one request)")) {
  for (size_t index = 0; index < kRequestMethodCount; ++index) {
    const std::string name(kRequestMethodNames[index]);
    request_duration_by_method_[index] =
        &request_duration_.Add({{"method", name}}, RequestBuckets());
    requests_ok_[index] =
        &requests_.Add({{"method", name}, {"code", ReasonLabel(absl::StatusCode::kOk)}});
  }
  GaugeFamily(*registry_, "kldrift_build_info", "kldriftd's version; the value is 1")
      .Add({{"version", options_.version}})
      .Set(1);
  GaugeFamily(*registry_, "kldrift_start_time_seconds", "When kldriftd started, Unix seconds")
      .Add({})
      .Set(absl::ToDoubleSeconds(options_.start_time - absl::UnixEpoch()));
  MutexLock lock(&rejected_mutex_);
  for (absl::StatusCode code : kRejectionCodes) {
    rejected_by_code_[code] = &rejected_batches_.Add({{"reason", ReasonLabel(code)}});
  }
}

DriftMetrics::~DriftMetrics() = default;

std::string DriftMetrics::ReasonLabel(absl::StatusCode code) {
  return absl::AsciiStrToLower(absl::StatusCodeToString(code));
}

std::shared_ptr<StreamIngestCounters> DriftMetrics::OnReferenceInstalled(
    const Reference& reference) {
  Shard& shard = ShardOf(reference.stream);
  MutexLock lock(&shard.mutex);
  std::unique_ptr<StreamState>& slot = shard.streams[reference.stream];
  if (slot == nullptr) slot = std::make_unique<StreamState>();
  StreamState& stream = *slot;
  const absl::string_view measure = MeasureName(reference.policy.measure);
  if (stream.kind != reference.kind || stream.windows != reference.policy.windows ||
      stream.measure != measure) {
    // The window series are rebuilt for the new shape at the next evaluation.
    stream.window_states.clear();
    stream.kind = reference.kind;
    stream.windows = reference.policy.windows;
    stream.measure = std::string(measure);
  }
  stream.reference_version = static_cast<double>(reference.version);
  stream.layout = reference.layout;
  return stream.ingested;
}

void DriftMetrics::OnStreamDeleted(const StreamKey& key) {
  Shard& shard = ShardOf(key);
  MutexLock lock(&shard.mutex);
  shard.streams.erase(key);
}

void DriftMetrics::OnBatchApplied(size_t /*streams*/, double observations) {
  batches_.Increment();
  observations_.Increment(observations);
}

void DriftMetrics::OnStreamEvaluated(absl::Span<const WindowReport> reports) {
  if (reports.empty()) return;
  Shard& shard = ShardOf(reports.front().stream);
  MutexLock lock(&shard.mutex);
  auto it = shard.streams.find(reports.front().stream);
  if (it == shard.streams.end()) return;  // Deleted since the evaluation.
  StreamState& stream = *it->second;
  for (const WindowReport& report : reports) {
    if (report.kind != stream.kind) return;  // From a version replaced since.
    bool known = false;
    for (absl::Duration w : stream.windows) known |= w == report.window;
    if (!known) continue;
    WindowState* window = nullptr;
    for (WindowState& w : stream.window_states) {
      if (w.window == report.window) window = &w;
    }
    if (report.measures_unchanged) {
      // The alert moved; everything else is what the window's last full report said. A window
      // not exported yet waits for its first full report (a new version's windows get one).
      if (window != nullptr) {
        window->severity = report.alert.severity;
        window->state = report.alert.state;
      }
      continue;
    }
    // A full report of a version replaced since: its bins may not be the current layout's, and
    // the new version's windows get a full report at the next evaluation.
    if (static_cast<double>(report.reference_version) != stream.reference_version) continue;
    if (window == nullptr) {
      window = &stream.window_states.emplace_back();
      window->window = report.window;
      window->label = FormatWindow(report.window);
      window->measure = InternMeasure(report.measure);
    }
    UpdateWindowLocked(stream, *window, report);
  }
}

const std::string* DriftMetrics::InternMeasure(absl::string_view name) {
  MutexLock lock(&names_mutex_);
  return &*measure_names_.emplace(name).first;
}

void DriftMetrics::UpdateWindowLocked(const StreamState& stream, WindowState& w,
                                      const WindowReport& report) {
  bool defined = false;  // Whether the window has data to measure.
  w.measures.fill(kNaN);
  if (report.histogram) {
    const DriftMeasures& m = *report.histogram;
    defined = true;
    w.measures = {m.kl_current_reference,
                  m.kl_reference_current,
                  m.jeffreys,
                  m.js_bits,
                  m.psi,
                  m.hellinger,
                  m.total_variation,
                  m.l_inf,
                  m.chi2,
                  m.g_test_p_value};
  }
  if (stream.kind == ReferenceKind::kGaussian) {
    defined = report.gaussian.has_value();
    if (defined) {
      const double forward = report.gaussian->kl.forward;
      const double reverse = report.gaussian->kl.reverse;
      w.measures[0] = forward;
      w.measures[1] = reverse;
      w.measures[2] = forward + reverse;
    }
  }
  if (stream.kind == ReferenceKind::kPairedLogProbs) {
    defined = report.policy.has_value();
    if (defined) {
      w.measures[0] = report.policy->k1.mean;
      w.measures[1] = report.policy->k2.mean;
      w.measures[2] = report.policy->k3.mean;
    }
  }
  w.samples = report.samples;
  w.enough_samples = report.enough_samples;
  w.measure_value = defined ? report.measure_value : kNaN;
  w.warn_threshold = report.warn_threshold;
  w.critical_threshold = report.critical_threshold;
  w.clear_threshold = report.clear_threshold;
  w.eligible = report.eligible;
  w.severity = report.alert.severity;
  w.state = report.alert.state;

  // A window without data has no contributing bins: drop the last ones rather than export them as
  // if they were current.
  size_t ranks = 0;
  if (IsHistogramKind(stream.kind) && report.histogram) {
    ranks = std::min(report.histogram->top_bins.size(), options_.top_bins);
  }
  w.top_bins.resize(ranks);
  for (size_t rank = 0; rank < ranks; ++rank) {
    const BinContribution& bin = report.histogram->top_bins[rank];
    w.top_bins[rank].bin = static_cast<uint32_t>(bin.bin);
    w.top_bins[rank].contribution = bin.contribution;
  }
  // The report is of the current version (see OnStreamEvaluated): its layout names the bins.
  // Compared first so that the common case copies no handle.
  if (ranks == 0) {
    w.layout.reset();
  } else if (!w.layout.has_value() || !stream.layout.has_value() ||
             !w.layout->SharesDataWith(*stream.layout)) {
    w.layout = stream.layout;
  }
}

size_t DriftMetrics::MeasureSeries(ReferenceKind kind) const {
  if (kind == ReferenceKind::kPairedLogProbs) return std::size(kEstimators);
  const size_t slots = kind == ReferenceKind::kGaussian ? kGaussianSlots : kMeasureSlots;
  size_t series = 0;
  for (size_t slot = 0; slot < slots; ++slot) {
    if (options_.measures & kMeasureFamilies[slot].bit) ++series;
  }
  return series;
}

DriftMetrics::Shard& DriftMetrics::ShardOf(const StreamKey& key) {
  return shards_[absl::Hash<StreamKey>{}(key) % kShards];
}

bool DriftMetrics::FamilyExported(size_t family) const {
  return family >= kMeasureSlots || (options_.measures & kMeasureFamilies[family].bit) != 0;
}

void DriftMetrics::VisitFamilyLocked(size_t family, const Shard& shard, SeriesSink& sink) const {
  const StreamTable& streams = shard.streams;
  // Calls add(stream, window, labels) for every window of every stream of the shard, `labels`
  // holding the window's own. (Called only below, under the shard lock this function requires;
  // Clang's analysis does not carry a held lock into a lambda.)
  auto for_each_window = [&streams](auto&& add) ABSL_NO_THREAD_SAFETY_ANALYSIS {
    for (const auto& [key, stream] : streams) {
      for (const WindowState& w : stream->window_states) {
        LabelList labels(key);
        labels.Add("window", w.label);
        add(*stream, w, labels);
      }
    }
  };
  // The common window families, in kStreamFamilyInfos' order.
  using WindowValue = double (*)(const WindowState&);
  static constexpr WindowValue kCommon[] = {
      [](const WindowState& w) { return w.samples; },
      [](const WindowState& w) { return w.enough_samples ? 1.0 : 0.0; },
      [](const WindowState& w) { return w.measure_value; },
      [](const WindowState& w) { return w.warn_threshold; },
      [](const WindowState& w) { return w.critical_threshold; },
      [](const WindowState& w) { return w.clear_threshold; },
      [](const WindowState& w) { return w.eligible ? 1.0 : 0.0; },
  };
  static_assert(std::size(kCommon) == kCommonWindowFamilies);
  using StreamValue = double (*)(const StreamState&);
  static constexpr StreamValue kPerStream[] = {
      [](const StreamState& s) { return s.reference_version; },
      [](const StreamState& s) { return s.ingested->observations.load(std::memory_order_relaxed); },
      [](const StreamState& s) {
        return s.ingested->nan_observations.load(std::memory_order_relaxed);
      },
  };
  static_assert(std::size(kPerStream) == kPerStreamFamilies);

  if (family < kMeasureSlots) {
    const size_t slot = family;
    for_each_window([&](const StreamState& stream, const WindowState& w, LabelList& labels) {
      const bool exported = IsHistogramKind(stream.kind) ||
                            (stream.kind == ReferenceKind::kGaussian && slot < kGaussianSlots);
      if (exported) sink.Add(labels.span(), w.measures[slot]);
    });
    return;
  }
  family -= kMeasureSlots;
  if (family == 0) {
    for_each_window([&](const StreamState& stream, const WindowState& w, LabelList& labels) {
      if (stream.kind != ReferenceKind::kPairedLogProbs) return;
      for (size_t slot = 0; slot < std::size(kEstimators); ++slot) {
        LabelList estimator = labels;
        sink.Add(estimator.Add("estimator", kEstimators[slot]).span(), w.measures[slot]);
      }
    });
    return;
  }
  family -= 1;
  if (family < kCommonWindowFamilies) {
    const bool with_measure = family >= 2 && family <= 5;  // Measure value and thresholds.
    const WindowValue value = kCommon[family];
    for_each_window([&](const StreamState&, const WindowState& w, LabelList& labels) {
      if (with_measure) labels.Add("measure", *w.measure);
      sink.Add(labels.span(), value(w));
    });
    return;
  }
  family -= kCommonWindowFamilies;
  if (family == 0) {
    for_each_window([&](const StreamState&, const WindowState& w, LabelList& labels) {
      sink.Add(labels.Add("severity", SeverityName(w.severity)).span(),
               static_cast<double>(w.state));
    });
    return;
  }
  if (family == 1) {
    std::string scratch;
    for_each_window([&](const StreamState&, const WindowState& w, LabelList& labels) {
      for (size_t rank = 0; rank < w.top_bins.size(); ++rank) {
        const std::string rank_label = absl::StrCat(rank + 1);
        const size_t index = w.top_bins[rank].bin;
        // As ComputeDriftMeasures names them.
        const absl::string_view name = w.layout.has_value() && index < w.layout->size()
                                           ? w.layout->CachedBinLabel(index, scratch)
                                           : (scratch = absl::StrCat("bin ", index));
        LabelList bin = labels;
        sink.Add(bin.Add("rank", rank_label).Add("bin", name).span(),
                 w.top_bins[rank].contribution);
      }
    });
    return;
  }
  family -= 2;
  const StreamValue value = kPerStream[family];
  for (const auto& [key, stream] : streams) sink.Add(LabelList(key).span(), value(*stream));
}

void DriftMetrics::OnEvaluationFinished(size_t windows, absl::Duration duration) {
  evaluation_duration_.Observe(absl::ToDoubleSeconds(duration));
  evaluated_windows_.Set(static_cast<double>(windows));
}

void DriftMetrics::RecordRequest(RequestMethod method, absl::StatusCode code,
                                 absl::Duration handling) {
  const size_t index = static_cast<size_t>(method);
  request_duration_by_method_[index]->Observe(absl::ToDoubleSeconds(handling));
  if (code == absl::StatusCode::kOk) {
    requests_ok_[index]->Increment();
    return;
  }
  MutexLock lock(&requests_mutex_);
  prometheus::Counter*& counter = request_errors_[{method, code}];
  if (counter == nullptr) {
    counter = &requests_.Add(
        {{"method", std::string(RequestMethodName(method))}, {"code", ReasonLabel(code)}});
  }
  counter->Increment();
}

void DriftMetrics::RecordBatchRejected(absl::StatusCode code) {
  MutexLock lock(&rejected_mutex_);
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

void DriftMetrics::SetReportSource(std::function<void()> refresh) {
  MutexLock lock(&source_mutex_);
  report_source_ = std::move(refresh);
  report_source_set_.store(report_source_ != nullptr);
}

void DriftMetrics::RefreshReports() const {
  std::function<void()> refresh;
  {
    MutexLock lock(&source_mutex_);
    refresh = report_source_;
  }
  if (refresh) refresh();
}

void DriftMetrics::RefreshServerState() const {
  MutexLock lock(&source_mutex_);
  if (!source_) return;
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

std::vector<prometheus::MetricFamily> DriftMetrics::Collect() const {
  RefreshReports();
  RefreshServerState();
  std::vector<prometheus::MetricFamily> families = registry_->Collect();
  {
    FamilySink sink(families);
    for (size_t family = 0; family < kStreamFamilies; ++family) {
      if (!FamilyExported(family)) continue;
      sink.StartFamily(*kStreamFamilyInfos[family]);
      for (const Shard& shard : shards_) {
        ReaderMutexLock lock(&shard.mutex);
        VisitFamilyLocked(family, shard, sink);
      }
    }
  }
  // Outside /proc (another OS), the process families are simply absent.
  if (absl::StatusOr<ProcessStats> process = ReadProcessStats(); process.ok()) {
    AppendProcessFamilies(*process, families);
  }
  return families;
}

void DriftMetrics::WriteExposition(std::string& buffer,
                                   const std::function<void(absl::string_view)>& write) const {
  RefreshReports();
  RefreshServerState();
  const prometheus::TextSerializer serializer;
  buffer = serializer.Serialize(registry_->Collect());
  write(buffer);
  buffer.clear();
  for (size_t family = 0; family < kStreamFamilies; ++family) {
    if (!FamilyExported(family)) continue;
    TextSink sink(buffer);
    sink.StartFamily(*kStreamFamilyInfos[family]);
    for (const Shard& shard : shards_) {
      {
        // A shard at a time: an evaluation waits for the text of one shard's series, never for
        // the client to read it.
        ReaderMutexLock lock(&shard.mutex);
        VisitFamilyLocked(family, shard, sink);
      }
      if (buffer.size() >= kExpositionPieceBytes) {
        write(buffer);
        buffer.clear();
      }
    }
  }
  if (!buffer.empty()) write(buffer);
  if (absl::StatusOr<ProcessStats> process = ReadProcessStats(); process.ok()) {
    std::vector<prometheus::MetricFamily> families;
    AppendProcessFamilies(*process, families);
    buffer = serializer.Serialize(families);
    write(buffer);
  }
}

size_t DriftMetrics::stream_series() const {
  size_t series = 0;
  for (const Shard& shard : shards_) {
    ReaderMutexLock lock(&shard.mutex);
    for (const auto& [key, stream] : shard.streams) {
      series += kPerStreamFamilies;
      for (const WindowState& w : stream->window_states) {
        // The common families, the alert state, the top bins.
        series += MeasureSeries(stream->kind) + kCommonWindowFamilies + 1 + w.top_bins.size();
      }
    }
  }
  return series;
}

}  // namespace kldrift
