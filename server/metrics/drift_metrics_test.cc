#include "server/metrics/drift_metrics.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "prometheus/client_metric.h"
#include "prometheus/metric_family.h"
#include "prometheus/metric_type.h"
#include "prometheus/text_serializer.h"
#include "server/core/alert_policy.h"
#include "server/core/alert_state.h"
#include "server/core/clock.h"
#include "server/core/drift_engine.h"
#include "server/core/drift_measures.h"
#include "server/core/reference.h"
#include "server/core/stream_key.h"
#include "server/core/testing/engine_inputs.h"
#include "server/metrics/process_metrics.h"

namespace kldrift {
namespace {

using ::testing::Eq;
using ::testing::HasSubstr;
using ::testing::IsNan;
using ::testing::Not;
using ::testing::Optional;
using Families = std::vector<prometheus::MetricFamily>;
using LabelSet = std::map<std::string, std::string>;

// ---------------------------------------------------------------------------------------------
// Reading Collect()'s output.

const prometheus::MetricFamily* FindFamily(const Families& families, absl::string_view name) {
  for (const prometheus::MetricFamily& family : families) {
    if (family.name == name) return &family;
  }
  return nullptr;
}

LabelSet LabelsOf(const prometheus::ClientMetric& metric) {
  LabelSet labels;
  for (const prometheus::ClientMetric::Label& label : metric.label) {
    labels[label.name] = label.value;
  }
  return labels;
}

// Whether every label of `subset` is on `metric` with the same value.
bool HasLabels(const prometheus::ClientMetric& metric, const LabelSet& subset) {
  const LabelSet labels = LabelsOf(metric);
  for (const auto& [name, value] : subset) {
    auto it = labels.find(name);
    if (it == labels.end() || it->second != value) return false;
  }
  return true;
}

// The value of the series of family `name` whose label set is exactly `labels` (a histogram's
// sample count), or nullopt if there is none.
std::optional<double> Sample(const Families& families, absl::string_view name,
                             const LabelSet& labels) {
  const prometheus::MetricFamily* family = FindFamily(families, name);
  if (family == nullptr) return std::nullopt;
  std::optional<double> found;
  for (const prometheus::ClientMetric& metric : family->metric) {
    if (LabelsOf(metric) != labels) continue;
    if (found.has_value()) ADD_FAILURE() << name << " has two series with the same labels";
    switch (family->type) {
      case prometheus::MetricType::Counter:
        found = metric.counter.value;
        break;
      case prometheus::MetricType::Gauge:
        found = metric.gauge.value;
        break;
      case prometheus::MetricType::Histogram:
        found = static_cast<double>(metric.histogram.sample_count);
        break;
      default:
        found = metric.untyped.value;
        break;
    }
  }
  return found;
}

// Series of family `name` whose labels include `subset` (0 when the family exports none).
size_t CountSeries(const Families& families, absl::string_view name, const LabelSet& subset = {}) {
  const prometheus::MetricFamily* family = FindFamily(families, name);
  if (family == nullptr) return 0;
  size_t count = 0;
  for (const prometheus::ClientMetric& metric : family->metric) {
    if (HasLabels(metric, subset)) ++count;
  }
  return count;
}

// Series of every family whose labels include `subset`.
size_t CountSeriesEverywhere(const Families& families, const LabelSet& subset) {
  size_t count = 0;
  for (const prometheus::MetricFamily& family : families) {
    count += CountSeries(families, family.name, subset);
  }
  return count;
}

std::string Serialize(const Families& families) {
  return prometheus::TextSerializer().Serialize(families);
}

LabelSet StreamLabels(const StreamKey& key) {
  return {{"model", key.model}, {"model_version", key.model_version}, {"signal", key.signal}};
}

LabelSet WindowLabels(const StreamKey& key, const std::string& window) {
  LabelSet labels = StreamLabels(key);
  labels["window"] = window;
  return labels;
}

LabelSet With(LabelSet labels, const std::string& name, const std::string& value) {
  labels[name] = value;
  return labels;
}

// The per-window families of histogram streams, with the DriftMeasures field each exports.
struct MeasureFamily {
  const char* name;
  double DriftMeasures::*field;
};
constexpr MeasureFamily kHistogramMeasureFamilies[] = {
    {"kldrift_drift_kl_current_reference_nats", &DriftMeasures::kl_current_reference},
    {"kldrift_drift_kl_reference_current_nats", &DriftMeasures::kl_reference_current},
    {"kldrift_drift_jeffreys_nats", &DriftMeasures::jeffreys},
    {"kldrift_drift_js_divergence", &DriftMeasures::js_bits},
    {"kldrift_drift_psi", &DriftMeasures::psi},
    {"kldrift_drift_hellinger_distance", &DriftMeasures::hellinger},
    {"kldrift_drift_total_variation_distance", &DriftMeasures::total_variation},
    {"kldrift_drift_linf_distance", &DriftMeasures::l_inf},
    {"kldrift_drift_chi_squared_divergence", &DriftMeasures::chi2},
    {"kldrift_drift_g_test_p_value", &DriftMeasures::g_test_p_value},
};
// Families only histogram streams export.
constexpr const char* kHistogramOnlyFamilies[] = {
    "kldrift_drift_js_divergence",      "kldrift_drift_psi",
    "kldrift_drift_hellinger_distance", "kldrift_drift_total_variation_distance",
    "kldrift_drift_linf_distance",      "kldrift_drift_chi_squared_divergence",
    "kldrift_drift_g_test_p_value",     "kldrift_top_bin_kl_contribution_nats",
};
// Families every kind exports per window, besides the measures.
constexpr const char* kCommonWindowFamilies[] = {
    "kldrift_window_samples",           "kldrift_window_enough_samples",
    "kldrift_alert_measure_value",      "kldrift_alert_warn_threshold",
    "kldrift_alert_critical_threshold", "kldrift_alert_clear_threshold",
    "kldrift_alert_eligible",           "kldrift_alert_state",
};
constexpr const char* kPerStreamFamilies[] = {
    "kldrift_reference_version",
    "kldrift_stream_ingested_observations_total",
};
// Unlabelled server families that start at 0.
constexpr const char* kServerFamilies[] = {
    "kldrift_ingested_batches_total",
    "kldrift_ingested_observations_total",
    "kldrift_duplicate_batches_total",
    "kldrift_ingest_acks_total",
    "kldrift_ingest_streams_opened_total",
    "kldrift_ingest_reconnects_total",
    "kldrift_ingest_streams_active",
    "kldrift_watch_streams_active",
    "kldrift_evaluated_windows",
    "kldrift_streams",
    "kldrift_streams_limit",
    "kldrift_ingest_clients",
    "kldrift_storage_bytes",
    "kldrift_store_errors_total",
    "kldrift_watch_reports_dropped_total",
    "kldrift_evaluation_duration_seconds",
};
// The `method` label of every RequestMethod, in order.
constexpr const char* kRequestMethodNames[] = {
    "PutReference", "GetReference", "ListReferences", "DeleteReference", "GetDrift",
    "Backup",       "ExportModel",  "ImportModel",    "Ingest",
};
constexpr const char* kRejectionReasons[] = {
    "invalid_argument",   "not_found",    "failed_precondition",
    "resource_exhausted", "out_of_range", "permission_denied",
    "unauthenticated",    "aborted",      "unavailable",
    "data_loss",          "internal",
};

// ---------------------------------------------------------------------------------------------
// Building references and batches (as in drift_engine_test.cc).

AlertPolicy FastPolicy(std::vector<absl::Duration> windows = {absl::Minutes(1), absl::Hours(1)}) {
  AlertPolicy policy;
  policy.windows = std::move(windows);
  policy.for_duration = absl::ZeroDuration();
  return policy;
}

// Categories a, b, c, d (the layout adds an "<unseen>" bin: 5 bins).
using test_inputs::Categorical;
using test_inputs::Gaussian;
using test_inputs::GaussianStats;
using test_inputs::Hist;
using test_inputs::LogProbs;
using test_inputs::MakeBatch;
using test_inputs::PolicyRef;
using test_inputs::PreBinned;

ReferenceSpec Categorical(const StreamKey& key, AlertPolicy policy) {
  ReferenceSpec spec;
  spec.stream = key;
  spec.kind = ReferenceKind::kCategorical;
  spec.categories = {"a", "b", "c", "d"};
  spec.counts = std::vector<double>{250, 250, 250, 250};
  spec.policy = std::move(policy);
  return spec;
}

MetricsOptions TopBins(size_t top_bins) {
  MetricsOptions options;
  options.top_bins = top_bins;
  return options;
}

EngineOptions WithObserver(EngineOptions options, EngineObserver* observer) {
  options.store = nullptr;  // Memory only.
  options.observer = observer;
  return options;
}

// A DriftMetrics observing a memory-only engine on a fake clock.
struct Harness {
  explicit Harness(MetricsOptions metrics_options = {}, EngineOptions engine_options = {})
      : metrics(std::make_shared<DriftMetrics>(std::move(metrics_options))),
        engine(WithObserver(std::move(engine_options), metrics.get()), &clock) {}

  std::shared_ptr<const Reference> Put(const ReferenceSpec& spec) {
    absl::StatusOr<std::shared_ptr<const Reference>> ref = engine.PutReference(spec);
    EXPECT_TRUE(ref.ok()) << ref.status();
    return ref.ok() ? *ref : nullptr;
  }

  // Sends a batch as the next sequence of `client`; expects it applied.
  void SendOk(const std::string& model, std::vector<StreamData> streams,
              const std::string& client = "client-1") {
    const IngestResult r =
        engine.Ingest(MakeBatch(client, ++sequences[client], model, std::move(streams)));
    EXPECT_TRUE(r.status.ok()) << r.status;
    EXPECT_FALSE(r.duplicate);
  }

  // The engine's fresh report of one window, with as many top bins as the metrics export.
  WindowReport Drift(const StreamKey& key, absl::Duration window) {
    absl::StatusOr<std::vector<WindowReport>> r = engine.GetDrift(key, window, metrics->top_bins());
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok() || r->size() != 1) {
      ADD_FAILURE() << "no single report for " << key.ToString() << " " << window;
      return {};
    }
    return (*r)[0];
  }

  Families Collect() const { return metrics->Collect(); }

  std::shared_ptr<DriftMetrics> metrics;
  FakeClock clock;
  DriftEngine engine;
  absl::flat_hash_map<std::string, uint64_t> sequences;
};

// Every measure series of a histogram window equals the engine's report of it, field by field.
void ExpectHistogramMeasuresMatch(const Families& f, const LabelSet& window,
                                  const WindowReport& report) {
  ASSERT_TRUE(report.histogram.has_value());
  for (const MeasureFamily& family : kHistogramMeasureFamilies) {
    EXPECT_THAT(Sample(f, family.name, window), Optional(Eq((*report.histogram).*family.field)))
        << family.name << " " << window.at("window");
  }
}

// ---------------------------------------------------------------------------------------------
// Construction and the service's recorders.

TEST(DriftMetricsTest, ServerFamiliesExistAtConstruction) {
  const absl::Time start = absl::FromUnixSeconds(1'700'000'123);
  MetricsOptions options;
  options.version = "1.2.3-test";
  options.start_time = start;
  DriftMetrics metrics(options);
  const Families f = metrics.Collect();

  for (const char* name : kServerFamilies) {
    EXPECT_THAT(Sample(f, name, {}), Optional(Eq(0.0))) << name;
  }
  for (const char* reason : kRejectionReasons) {
    EXPECT_THAT(Sample(f, "kldrift_rejected_batches_total", {{"reason", reason}}),
                Optional(Eq(0.0)))
        << reason;
  }
  EXPECT_EQ(CountSeries(f, "kldrift_rejected_batches_total"), std::size(kRejectionReasons));
  // Every method's request series, so that rate() sees the first request of each.
  for (const char* method : kRequestMethodNames) {
    EXPECT_THAT(Sample(f, "kldrift_request_duration_seconds", {{"method", method}}),
                Optional(Eq(0.0)))
        << method;
    EXPECT_THAT(Sample(f, "kldrift_requests_total", {{"method", method}, {"code", "ok"}}),
                Optional(Eq(0.0)))
        << method;
  }
  EXPECT_EQ(CountSeries(f, "kldrift_request_duration_seconds"), std::size(kRequestMethodNames));
  EXPECT_EQ(CountSeries(f, "kldrift_requests_total"), std::size(kRequestMethodNames));
  ASSERT_NE(FindFamily(f, "kldrift_request_duration_seconds"), nullptr);
  EXPECT_EQ(FindFamily(f, "kldrift_request_duration_seconds")->type,
            prometheus::MetricType::Histogram);
  EXPECT_THAT(Sample(f, "kldrift_build_info", {{"version", "1.2.3-test"}}), Optional(Eq(1.0)));
  EXPECT_EQ(CountSeries(f, "kldrift_build_info"), 1u);
  EXPECT_THAT(Sample(f, "kldrift_start_time_seconds", {}), Optional(Eq(1'700'000'123.0)));

  // Counters are counters and gauges gauges (Prometheus' rate() relies on it).
  ASSERT_NE(FindFamily(f, "kldrift_ingested_batches_total"), nullptr);
  EXPECT_EQ(FindFamily(f, "kldrift_ingested_batches_total")->type, prometheus::MetricType::Counter);
  ASSERT_NE(FindFamily(f, "kldrift_streams"), nullptr);
  EXPECT_EQ(FindFamily(f, "kldrift_streams")->type, prometheus::MetricType::Gauge);
  ASSERT_NE(FindFamily(f, "kldrift_evaluation_duration_seconds"), nullptr);
  EXPECT_EQ(FindFamily(f, "kldrift_evaluation_duration_seconds")->type,
            prometheus::MetricType::Histogram);

  // No stream, no per-stream series.
  EXPECT_EQ(metrics.stream_series(), 0u);
  for (const MeasureFamily& family : kHistogramMeasureFamilies) {
    EXPECT_EQ(CountSeries(f, family.name), 0u) << family.name;
  }
  for (const char* name : kCommonWindowFamilies) EXPECT_EQ(CountSeries(f, name), 0u) << name;
  for (const char* name : kPerStreamFamilies) EXPECT_EQ(CountSeries(f, name), 0u) << name;
  EXPECT_EQ(CountSeries(f, "kldrift_top_bin_kl_contribution_nats"), 0u);
  EXPECT_EQ(CountSeries(f, "kldrift_policy_kl_estimate_nats"), 0u);

  const std::string text = Serialize(f);
  EXPECT_THAT(text, HasSubstr("kldrift_build_info{version=\"1.2.3-test\"} 1"));
  EXPECT_THAT(text, HasSubstr("kldrift_rejected_batches_total{reason=\"invalid_argument\"} 0"));
}

TEST(DriftMetricsTest, ReasonLabelIsTheLowerCaseCodeName) {
  EXPECT_EQ(DriftMetrics::ReasonLabel(absl::StatusCode::kNotFound), "not_found");
  EXPECT_EQ(DriftMetrics::ReasonLabel(absl::StatusCode::kInvalidArgument), "invalid_argument");
  EXPECT_EQ(DriftMetrics::ReasonLabel(absl::StatusCode::kResourceExhausted), "resource_exhausted");
  EXPECT_EQ(DriftMetrics::ReasonLabel(absl::StatusCode::kCancelled), "cancelled");
}

TEST(DriftMetricsTest, RequestMethodNamesAreTheRpcNames) {
  ASSERT_EQ(std::size(kRequestMethodNames), kRequestMethodCount);
  for (size_t i = 0; i < kRequestMethodCount; ++i) {
    EXPECT_EQ(RequestMethodName(static_cast<RequestMethod>(i)), kRequestMethodNames[i]);
  }
}

// The prometheus-cpp histogram series of `method`, or null.
const prometheus::ClientMetric::Histogram* RequestHistogram(const Families& f,
                                                            absl::string_view method) {
  const prometheus::MetricFamily* family = FindFamily(f, "kldrift_request_duration_seconds");
  if (family == nullptr) return nullptr;
  for (const prometheus::ClientMetric& metric : family->metric) {
    if (LabelsOf(metric) == LabelSet{{"method", std::string(method)}}) return &metric.histogram;
  }
  return nullptr;
}

// Cumulative count of bucket `upper_bound` (seconds) of `histogram`, or -1 without that bucket.
double BucketCount(const prometheus::ClientMetric::Histogram& histogram, double upper_bound) {
  for (const prometheus::ClientMetric::Bucket& bucket : histogram.bucket) {
    if (bucket.upper_bound == upper_bound) return static_cast<double>(bucket.cumulative_count);
  }
  return -1;
}

TEST(DriftMetricsTest, RecordRequestTimesAndCountsByMethodAndCode) {
  DriftMetrics metrics;
  metrics.RecordRequest(RequestMethod::kGetDrift, absl::StatusCode::kOk, absl::Microseconds(80));
  metrics.RecordRequest(RequestMethod::kGetDrift, absl::StatusCode::kOk, absl::Milliseconds(3));
  metrics.RecordRequest(RequestMethod::kGetDrift, absl::StatusCode::kNotFound,
                        absl::Microseconds(20));
  metrics.RecordRequest(RequestMethod::kIngest, absl::StatusCode::kOk, absl::Microseconds(300));
  metrics.RecordRequest(RequestMethod::kIngest, absl::StatusCode::kFailedPrecondition,
                        absl::Microseconds(40));
  metrics.RecordRequest(RequestMethod::kIngest, absl::StatusCode::kFailedPrecondition,
                        absl::Microseconds(40));

  const Families f = metrics.Collect();
  const std::string requests = "kldrift_requests_total";
  EXPECT_THAT(Sample(f, requests, {{"method", "GetDrift"}, {"code", "ok"}}), Optional(Eq(2.0)));
  EXPECT_THAT(Sample(f, requests, {{"method", "GetDrift"}, {"code", "not_found"}}),
              Optional(Eq(1.0)));
  EXPECT_THAT(Sample(f, requests, {{"method", "Ingest"}, {"code", "ok"}}), Optional(Eq(1.0)));
  EXPECT_THAT(Sample(f, requests, {{"method", "Ingest"}, {"code", "failed_precondition"}}),
              Optional(Eq(2.0)));
  EXPECT_THAT(Sample(f, requests, {{"method", "PutReference"}, {"code", "ok"}}), Optional(Eq(0.0)));
  // An error code's series appears on first use, for that method only.
  EXPECT_EQ(Sample(f, requests, {{"method", "PutReference"}, {"code", "not_found"}}), std::nullopt);
  EXPECT_EQ(CountSeries(f, requests), std::size(kRequestMethodNames) + 2);

  // Failed requests are timed too.
  const prometheus::ClientMetric::Histogram* get_drift = RequestHistogram(f, "GetDrift");
  ASSERT_NE(get_drift, nullptr);
  EXPECT_EQ(get_drift->sample_count, 3u);
  EXPECT_NEAR(get_drift->sample_sum, 80e-6 + 3e-3 + 20e-6, 1e-12);
  EXPECT_EQ(BucketCount(*get_drift, 0.00005), 1);  // 20 µs.
  EXPECT_EQ(BucketCount(*get_drift, 0.0001), 2);   // And 80 µs.
  EXPECT_EQ(BucketCount(*get_drift, 0.0025), 2);
  EXPECT_EQ(BucketCount(*get_drift, 0.005), 3);  // And 3 ms.
  EXPECT_EQ(BucketCount(*get_drift, 10), 3);
  const prometheus::ClientMetric::Histogram* ingest = RequestHistogram(f, "Ingest");
  ASSERT_NE(ingest, nullptr);
  EXPECT_EQ(ingest->sample_count, 3u);
  EXPECT_EQ(BucketCount(*ingest, 0.00005), 2);
  EXPECT_EQ(BucketCount(*ingest, 0.00025), 2);
  EXPECT_EQ(BucketCount(*ingest, 0.0005), 3);
  const prometheus::ClientMetric::Histogram* backup = RequestHistogram(f, "Backup");
  ASSERT_NE(backup, nullptr);
  EXPECT_EQ(backup->sample_count, 0u);

  const std::string text = Serialize(f);
  EXPECT_THAT(text, HasSubstr("kldrift_requests_total{code=\"not_found\",method=\"GetDrift\"} 1"));
  EXPECT_THAT(text, HasSubstr("kldrift_request_duration_seconds_count{method=\"GetDrift\"} 3"));
}

TEST(DriftMetricsTest, ServiceRecordersCountEvents) {
  DriftMetrics metrics;
  metrics.RecordBatchRejected(absl::StatusCode::kInvalidArgument);
  metrics.RecordBatchRejected(absl::StatusCode::kInvalidArgument);
  metrics.RecordBatchRejected(absl::StatusCode::kFailedPrecondition);
  // A code outside the pre-created set gets its series on first use, and keeps it.
  metrics.RecordBatchRejected(absl::StatusCode::kCancelled);
  metrics.RecordBatchRejected(absl::StatusCode::kCancelled);
  metrics.RecordDuplicateBatch();
  for (int i = 0; i < 3; ++i) metrics.RecordAck();
  metrics.RecordIngestStreamOpened();
  metrics.RecordIngestStreamOpened();
  metrics.RecordIngestReconnect();
  metrics.RecordWatchStreamOpened();
  metrics.RecordWatchStreamOpened();
  metrics.RecordWatchStreamOpened();

  Families f = metrics.Collect();
  const std::string rejected = "kldrift_rejected_batches_total";
  EXPECT_THAT(Sample(f, rejected, {{"reason", "invalid_argument"}}), Optional(Eq(2.0)));
  EXPECT_THAT(Sample(f, rejected, {{"reason", "failed_precondition"}}), Optional(Eq(1.0)));
  EXPECT_THAT(Sample(f, rejected, {{"reason", "cancelled"}}), Optional(Eq(2.0)));
  EXPECT_THAT(Sample(f, rejected, {{"reason", "not_found"}}), Optional(Eq(0.0)));
  EXPECT_EQ(CountSeries(f, rejected), std::size(kRejectionReasons) + 1);
  EXPECT_THAT(Sample(f, "kldrift_duplicate_batches_total", {}), Optional(Eq(1.0)));
  EXPECT_THAT(Sample(f, "kldrift_ingest_acks_total", {}), Optional(Eq(3.0)));
  EXPECT_THAT(Sample(f, "kldrift_ingest_streams_opened_total", {}), Optional(Eq(2.0)));
  EXPECT_THAT(Sample(f, "kldrift_ingest_streams_active", {}), Optional(Eq(2.0)));
  EXPECT_THAT(Sample(f, "kldrift_ingest_reconnects_total", {}), Optional(Eq(1.0)));
  EXPECT_THAT(Sample(f, "kldrift_watch_streams_active", {}), Optional(Eq(3.0)));
  // Service events are not ingest batches.
  EXPECT_THAT(Sample(f, "kldrift_ingested_batches_total", {}), Optional(Eq(0.0)));

  metrics.RecordIngestStreamClosed();
  metrics.RecordWatchStreamClosed();
  f = metrics.Collect();
  EXPECT_THAT(Sample(f, "kldrift_ingest_streams_active", {}), Optional(Eq(1.0)));
  EXPECT_THAT(Sample(f, "kldrift_watch_streams_active", {}), Optional(Eq(2.0)));
  // Closing does not undo the opened counter.
  EXPECT_THAT(Sample(f, "kldrift_ingest_streams_opened_total", {}), Optional(Eq(2.0)));

  metrics.RecordIngestStreamClosed();
  metrics.RecordWatchStreamClosed();
  metrics.RecordWatchStreamClosed();
  f = metrics.Collect();
  EXPECT_THAT(Sample(f, "kldrift_ingest_streams_active", {}), Optional(Eq(0.0)));
  EXPECT_THAT(Sample(f, "kldrift_watch_streams_active", {}), Optional(Eq(0.0)));
  EXPECT_EQ(metrics.stream_series(), 0u);
}

TEST(DriftMetricsTest, ServerStateSourceIsReadAtEveryCollect) {
  EngineOptions engine_options;
  engine_options.max_streams = 7;
  Harness h({}, engine_options);
  ServerState state;
  state.storage_bytes = 123456;
  state.store_errors = 3;
  state.watch_reports_dropped = 10;
  int calls = 0;
  h.metrics->SetServerStateSource([&] {
    ++calls;
    ServerState s = state;
    s.streams = h.engine.stream_count();
    s.max_streams = h.engine.options().max_streams;
    s.ingest_clients = h.engine.client_count();
    return s;
  });
  ASSERT_NE(h.Put(PreBinned({"m", "v1", "a"}, {1, 1})), nullptr);
  ASSERT_NE(h.Put(PreBinned({"m", "v1", "b"}, {1, 1})), nullptr);
  h.SendOk("m", {Hist({"m", "v1", "a"}, {1, 2})}, "client-a");
  h.SendOk("m", {Hist({"m", "v1", "b"}, {1, 2})}, "client-b");
  h.SendOk("m", {Hist({"m", "v1", "b"}, {1, 2})}, "client-c");

  Families f = h.Collect();
  EXPECT_EQ(calls, 1);
  EXPECT_THAT(Sample(f, "kldrift_streams", {}), Optional(Eq(2.0)));
  EXPECT_THAT(Sample(f, "kldrift_streams_limit", {}), Optional(Eq(7.0)));
  EXPECT_THAT(Sample(f, "kldrift_ingest_clients", {}), Optional(Eq(3.0)));
  EXPECT_THAT(Sample(f, "kldrift_storage_bytes", {}), Optional(Eq(123456.0)));
  EXPECT_THAT(Sample(f, "kldrift_store_errors_total", {}), Optional(Eq(3.0)));
  EXPECT_THAT(Sample(f, "kldrift_watch_reports_dropped_total", {}), Optional(Eq(10.0)));

  // The counters follow the source's totals up...
  ASSERT_TRUE(h.engine.DeleteReference({"m", "v1", "a"}).ok());
  state.storage_bytes = 1000;
  state.store_errors = 5;
  state.watch_reports_dropped = 12;
  f = h.Collect();
  EXPECT_EQ(calls, 2);
  EXPECT_THAT(Sample(f, "kldrift_streams", {}), Optional(Eq(1.0)));
  EXPECT_THAT(Sample(f, "kldrift_storage_bytes", {}), Optional(Eq(1000.0)));
  EXPECT_THAT(Sample(f, "kldrift_store_errors_total", {}), Optional(Eq(5.0)));
  EXPECT_THAT(Sample(f, "kldrift_watch_reports_dropped_total", {}), Optional(Eq(12.0)));

  // ... and never down (a counter that decreases reads as a reset to Prometheus).
  state.store_errors = 4;
  state.watch_reports_dropped = 0;
  f = h.Collect();
  EXPECT_THAT(Sample(f, "kldrift_store_errors_total", {}), Optional(Eq(5.0)));
  EXPECT_THAT(Sample(f, "kldrift_watch_reports_dropped_total", {}), Optional(Eq(12.0)));
  // The same total again adds nothing.
  state.store_errors = 5;
  f = h.Collect();
  EXPECT_THAT(Sample(f, "kldrift_store_errors_total", {}), Optional(Eq(5.0)));
  state.store_errors = 9;
  f = h.Collect();
  EXPECT_THAT(Sample(f, "kldrift_store_errors_total", {}), Optional(Eq(9.0)));
  EXPECT_EQ(calls, 5);
}

// ---------------------------------------------------------------------------------------------
// Per-stream series through a real engine.

TEST(DriftMetricsTest, HistogramWindowMatchesGetDriftAndAlertStateFollowsSeverity) {
  Harness h;
  const StreamKey key{"fraud", "v7", "merchant_category"};
  AlertPolicy policy = FastPolicy();
  policy.warn_threshold = 0.1;
  policy.critical_threshold = 1.0;
  ASSERT_NE(h.Put(Categorical(key, policy)), nullptr);

  Families f = h.Collect();
  EXPECT_THAT(Sample(f, "kldrift_reference_version", StreamLabels(key)), Optional(Eq(1.0)));
  EXPECT_THAT(Sample(f, "kldrift_stream_ingested_observations_total", StreamLabels(key)),
              Optional(Eq(0.0)));
  // Window series appear at the first evaluation.
  EXPECT_EQ(CountSeries(f, "kldrift_window_samples", StreamLabels(key)), 0u);

  // Nothing ingested yet: ok, no severity; one state series per window.
  EXPECT_EQ(h.engine.Evaluate(), 2u);
  f = h.Collect();
  for (const std::string window : {"1m", "1h"}) {
    const LabelSet w = WindowLabels(key, window);
    EXPECT_THAT(Sample(f, "kldrift_alert_state", With(w, "severity", "none")), Optional(Eq(0.0)));
    EXPECT_EQ(CountSeries(f, "kldrift_alert_state", w), 1u) << window;
  }
  EXPECT_THAT(Sample(f, "kldrift_evaluated_windows", {}), Optional(Eq(2.0)));

  // Moderate drift: a warning.
  const std::vector<double> first = {600, 200, 200, 200, 0};
  h.SendOk("fraud", {Hist(key, first)});
  EXPECT_EQ(h.engine.Evaluate(), 2u);
  f = h.Collect();
  for (const auto& [window, duration] :
       {std::pair{std::string("1m"), absl::Minutes(1)}, {std::string("1h"), absl::Hours(1)}}) {
    SCOPED_TRACE(window);
    const WindowReport report = h.Drift(key, duration);
    ASSERT_TRUE(report.histogram.has_value());
    ASSERT_GE(report.histogram->kl_current_reference, policy.warn_threshold);
    ASSERT_LT(report.histogram->kl_current_reference, policy.critical_threshold);
    const LabelSet w = WindowLabels(key, window);
    ExpectHistogramMeasuresMatch(f, w, report);
    EXPECT_THAT(Sample(f, "kldrift_window_samples", w), Optional(Eq(1200.0)));
    EXPECT_THAT(Sample(f, "kldrift_window_enough_samples", w), Optional(Eq(1.0)));
    EXPECT_THAT(Sample(f, "kldrift_alert_eligible", w), Optional(Eq(1.0)));
    const LabelSet m = With(w, "measure", "kl_current_reference");
    EXPECT_THAT(Sample(f, "kldrift_alert_measure_value", m),
                Optional(Eq(report.histogram->kl_current_reference)));
    EXPECT_THAT(Sample(f, "kldrift_alert_warn_threshold", m), Optional(Eq(0.1)));
    EXPECT_THAT(Sample(f, "kldrift_alert_critical_threshold", m), Optional(Eq(1.0)));
    EXPECT_THAT(Sample(f, "kldrift_alert_clear_threshold", m),
                Optional(testing::DoubleEq(0.8 * 0.1)));
    EXPECT_THAT(Sample(f, "kldrift_alert_state", With(w, "severity", "warn")), Optional(Eq(2.0)));
    EXPECT_EQ(CountSeries(f, "kldrift_alert_state", w), 1u);
  }
  EXPECT_THAT(Sample(f, "kldrift_stream_ingested_observations_total", StreamLabels(key)),
              Optional(Eq(1200.0)));
  EXPECT_THAT(Sample(f, "kldrift_ingested_observations_total", {}), Optional(Eq(1200.0)));
  EXPECT_THAT(Sample(f, "kldrift_ingested_batches_total", {}), Optional(Eq(1.0)));

  // Much more drift: critical; the warn series is replaced, not kept beside it.
  h.SendOk("fraud", {Hist(key, {20000, 0, 0, 0, 0})});
  EXPECT_EQ(h.engine.Evaluate(), 2u);
  f = h.Collect();
  for (const auto& [window, duration] :
       {std::pair{std::string("1m"), absl::Minutes(1)}, {std::string("1h"), absl::Hours(1)}}) {
    SCOPED_TRACE(window);
    const WindowReport report = h.Drift(key, duration);
    ASSERT_TRUE(report.histogram.has_value());
    ASSERT_GE(report.histogram->kl_current_reference, policy.critical_threshold);
    ASSERT_EQ(report.alert.severity, Severity::kCritical);
    const LabelSet w = WindowLabels(key, window);
    ExpectHistogramMeasuresMatch(f, w, report);
    EXPECT_THAT(Sample(f, "kldrift_window_samples", w), Optional(Eq(21200.0)));
    EXPECT_THAT(Sample(f, "kldrift_alert_state", With(w, "severity", "critical")),
                Optional(Eq(2.0)));
    EXPECT_EQ(Sample(f, "kldrift_alert_state", With(w, "severity", "warn")), std::nullopt);
    EXPECT_EQ(Sample(f, "kldrift_alert_state", With(w, "severity", "none")), std::nullopt);
    EXPECT_EQ(CountSeries(f, "kldrift_alert_state", w), 1u);
  }
  EXPECT_THAT(Sample(f, "kldrift_stream_ingested_observations_total", StreamLabels(key)),
              Optional(Eq(21200.0)));
  EXPECT_THAT(Sample(f, "kldrift_ingested_observations_total", {}), Optional(Eq(21200.0)));
  EXPECT_THAT(Sample(f, "kldrift_ingested_batches_total", {}), Optional(Eq(2.0)));
  EXPECT_THAT(Sample(f, "kldrift_evaluation_duration_seconds", {}), Optional(Eq(3.0)));

  const std::string text = Serialize(f);
  EXPECT_THAT(text,
              HasSubstr("kldrift_alert_state{model=\"fraud\",model_version=\"v7\","
                        "severity=\"critical\",signal=\"merchant_category\",window=\"1m\"} 2"));
}

TEST(DriftMetricsTest, WindowSeriesCountIsExact) {
  // stream_series() is what the cardinality bound is about: check it against Collect().
  Harness h(TopBins(2));
  const StreamKey key{"m", "v1", "s"};
  ASSERT_NE(h.Put(Categorical(key, FastPolicy())), nullptr);
  EXPECT_EQ(h.metrics->stream_series(), 3u);  // Reference version, observations, NaN observations.
  h.SendOk("m", {Hist(key, {500, 100, 100, 100, 0})});
  h.engine.Evaluate();
  const Families f = h.Collect();
  EXPECT_EQ(h.metrics->stream_series(), CountSeriesEverywhere(f, StreamLabels(key)));
  // Per window: 10 measures, samples, enough, measure value, 3 thresholds, eligible, state, and 2
  // top bins.
  EXPECT_EQ(CountSeriesEverywhere(f, WindowLabels(key, "1m")), 10u + 2 + 1 + 3 + 1 + 1 + 2);
  EXPECT_EQ(h.metrics->stream_series(), 3u + 2 * 20);
}

TEST(DriftMetricsTest, TopBinsFollowTheRankingAndStaleBinsAreRemoved) {
  Harness h(TopBins(2));
  const StreamKey key{"shop", "v1", "country"};
  ASSERT_NE(h.Put(Categorical(key, FastPolicy())), nullptr);
  const std::string top = "kldrift_top_bin_kl_contribution_nats";
  const std::vector<std::pair<std::string, absl::Duration>> windows = {{"1m", absl::Minutes(1)},
                                                                       {"1h", absl::Hours(1)}};

  // Checks both ranks of every window against GetDrift; returns the rank-1 bin of the 1m window.
  auto check = [&](const Families& f) {
    std::string first;
    for (const auto& [window, duration] : windows) {
      SCOPED_TRACE(window);
      const WindowReport report = h.Drift(key, duration);
      EXPECT_TRUE(report.histogram.has_value());
      if (!report.histogram.has_value()) return first;
      const std::vector<BinContribution>& bins = report.histogram->top_bins;
      EXPECT_EQ(bins.size(), 2u);
      if (bins.size() != 2) return first;
      const LabelSet w = WindowLabels(key, window);
      EXPECT_EQ(CountSeries(f, top, w), 2u);
      for (size_t rank = 0; rank < 2; ++rank) {
        LabelSet labels = With(w, "rank", absl::StrCat(rank + 1));
        EXPECT_EQ(CountSeries(f, top, labels), 1u) << "rank " << rank + 1;
        EXPECT_THAT(Sample(f, top, With(labels, "bin", bins[rank].label)),
                    Optional(Eq(bins[rank].contribution)))
            << "rank " << rank + 1;
      }
      if (window == "1m") first = bins[0].label;
    }
    return first;
  };

  h.SendOk("shop", {Hist(key, {700, 300, 0, 0, 0})});
  h.engine.Evaluate();
  const std::string first_before = check(h.Collect());
  ASSERT_EQ(first_before, "a");

  // Bin c takes the lead.
  h.SendOk("shop", {Hist(key, {0, 0, 5000, 0, 0})});
  h.engine.Evaluate();
  const Families f = h.Collect();
  const std::string first_after = check(f);
  ASSERT_EQ(first_after, "c");
  for (const auto& [window, duration] : windows) {
    EXPECT_EQ(Sample(f, top, With(With(WindowLabels(key, window), "rank", "1"), "bin", "a")),
              std::nullopt)
        << window;
    EXPECT_EQ(CountSeries(f, top, WindowLabels(key, window)), 2u) << window;
  }
  EXPECT_EQ(CountSeries(f, top), 4u);
}

TEST(DriftMetricsTest, TopBinsAreBoundedByTheOptionAndTheLayout) {
  {
    Harness h(TopBins(0));
    const StreamKey key{"m", "", "none"};
    ASSERT_NE(h.Put(Categorical(key, FastPolicy())), nullptr);
    h.SendOk("m", {Hist(key, {700, 300, 0, 0, 0})});
    h.engine.Evaluate();
    const Families f = h.Collect();
    EXPECT_EQ(CountSeries(f, "kldrift_top_bin_kl_contribution_nats"), 0u);
    EXPECT_EQ(CountSeries(f, "kldrift_window_samples"), 2u);
  }
  {
    // More ranks asked for than the layout has bins: one series per bin.
    Harness h(TopBins(10));
    const StreamKey key{"m", "", "all"};
    ASSERT_NE(h.Put(PreBinned(key, {10, 10, 10}, FastPolicy({absl::Minutes(5)}))), nullptr);
    h.SendOk("m", {Hist(key, {1, 2, 3})});
    h.engine.Evaluate();
    const Families f = h.Collect();
    EXPECT_EQ(CountSeries(f, "kldrift_top_bin_kl_contribution_nats"), 3u);
    for (const std::string rank : {"1", "2", "3"}) {
      EXPECT_EQ(CountSeries(f, "kldrift_top_bin_kl_contribution_nats",
                            With(WindowLabels(key, "5m"), "rank", rank)),
                1u)
          << rank;
    }
  }
}

TEST(DriftMetricsTest, EmptyWindowExportsNaNMeasuresAndOkState) {
  Harness h;
  const StreamKey key{"idle", "v1", "s"};
  ASSERT_NE(h.Put(Categorical(key, FastPolicy())), nullptr);
  EXPECT_EQ(h.engine.Evaluate(), 2u);
  const Families f = h.Collect();
  for (const std::string window : {"1m", "1h"}) {
    SCOPED_TRACE(window);
    const LabelSet w = WindowLabels(key, window);
    for (const MeasureFamily& family : kHistogramMeasureFamilies) {
      EXPECT_THAT(Sample(f, family.name, w), Optional(IsNan())) << family.name;
    }
    EXPECT_THAT(
        Sample(f, "kldrift_alert_measure_value", With(w, "measure", "kl_current_reference")),
        Optional(IsNan()));
    EXPECT_THAT(Sample(f, "kldrift_window_samples", w), Optional(Eq(0.0)));
    EXPECT_THAT(Sample(f, "kldrift_window_enough_samples", w), Optional(Eq(0.0)));
    EXPECT_THAT(Sample(f, "kldrift_alert_eligible", w), Optional(Eq(0.0)));
    EXPECT_THAT(Sample(f, "kldrift_alert_state", With(w, "severity", "none")), Optional(Eq(0.0)));
    EXPECT_EQ(CountSeries(f, "kldrift_alert_state", w), 1u);
    EXPECT_EQ(CountSeries(f, "kldrift_top_bin_kl_contribution_nats", w), 0u);
    // The thresholds are known even without data.
    EXPECT_THAT(
        Sample(f, "kldrift_alert_warn_threshold", With(w, "measure", "kl_current_reference")),
        Optional(Eq(0.05)));
  }
}

TEST(DriftMetricsTest, WindowThatEmptiesGoesBackToNaNAndDropsItsTopBins) {
  Harness h(TopBins(2));
  const StreamKey key{"m", "v1", "s"};
  ASSERT_NE(h.Put(Categorical(key, FastPolicy())), nullptr);
  h.SendOk("m", {Hist(key, {700, 300, 0, 0, 0})});
  h.engine.Evaluate();
  Families f = h.Collect();
  const std::string top = "kldrift_top_bin_kl_contribution_nats";
  ASSERT_EQ(CountSeries(f, top, WindowLabels(key, "1m")), 2u);
  ASSERT_THAT(Sample(f, "kldrift_drift_kl_current_reference_nats", WindowLabels(key, "1m")),
              Optional(Not(IsNan())));

  // The data leaves the 1m window but stays in the 1h one.
  h.clock.Advance(absl::Minutes(2));
  h.engine.Evaluate();
  f = h.Collect();
  ASSERT_EQ(h.Drift(key, absl::Minutes(1)).samples, 0);
  const LabelSet minute = WindowLabels(key, "1m");
  for (const MeasureFamily& family : kHistogramMeasureFamilies) {
    EXPECT_THAT(Sample(f, family.name, minute), Optional(IsNan())) << family.name;
  }
  EXPECT_THAT(Sample(f, "kldrift_window_samples", minute), Optional(Eq(0.0)));
  // No stale contributions for a window without data.
  EXPECT_EQ(CountSeries(f, top, minute), 0u);
  EXPECT_EQ(CountSeries(f, top, WindowLabels(key, "1h")), 2u);
  ExpectHistogramMeasuresMatch(f, WindowLabels(key, "1h"), h.Drift(key, absl::Hours(1)));
  EXPECT_EQ(h.metrics->stream_series(), CountSeriesEverywhere(f, StreamLabels(key)));

  // Data again: the top bins come back.
  h.SendOk("m", {Hist(key, {700, 300, 0, 0, 0})});
  h.engine.Evaluate();
  f = h.Collect();
  EXPECT_EQ(CountSeries(f, top, minute), 2u);
  ExpectHistogramMeasuresMatch(f, minute, h.Drift(key, absl::Minutes(1)));
}

TEST(DriftMetricsTest, DeletingAStreamRemovesEverySeriesAndStaleReportsAreIgnored) {
  Harness h(TopBins(2));
  const StreamKey doomed{"doomed", "v1", "s"};
  const StreamKey kept{"kept", "v1", "s"};
  for (const StreamKey& key : {doomed, kept}) {
    ASSERT_NE(h.Put(Categorical(key, FastPolicy())), nullptr);
    h.SendOk(key.model, {Hist(key, {700, 300, 0, 0, 0})});
  }
  h.engine.Evaluate();
  Families f = h.Collect();
  const size_t per_stream = CountSeriesEverywhere(f, StreamLabels(doomed));
  ASSERT_GT(per_stream, 2u);
  EXPECT_EQ(CountSeriesEverywhere(f, StreamLabels(kept)), per_stream);
  EXPECT_EQ(h.metrics->stream_series(), 2 * per_stream);
  EXPECT_THAT(Serialize(f), HasSubstr("model=\"doomed\""));
  absl::StatusOr<std::vector<WindowReport>> stale =
      h.engine.GetDrift(doomed, std::nullopt, h.metrics->top_bins());
  ASSERT_TRUE(stale.ok()) << stale.status();
  ASSERT_EQ(stale->size(), 2u);

  ASSERT_TRUE(h.engine.DeleteReference(doomed).ok());
  f = h.Collect();
  EXPECT_EQ(CountSeriesEverywhere(f, {{"model", "doomed"}}), 0u);
  EXPECT_THAT(Serialize(f), Not(HasSubstr("model=\"doomed\"")));
  EXPECT_EQ(CountSeriesEverywhere(f, StreamLabels(kept)), per_stream);
  EXPECT_EQ(h.metrics->stream_series(), per_stream);

  // An evaluation of the deleted stream that was already under way reports late: ignored. A batch
  // applied to it just before the deletion counts in the total only.
  h.metrics->OnStreamEvaluated(*stale);
  h.metrics->OnBatchApplied(1, 5);
  f = h.Collect();
  EXPECT_EQ(CountSeriesEverywhere(f, {{"model", "doomed"}}), 0u);
  EXPECT_EQ(h.metrics->stream_series(), per_stream);
  EXPECT_THAT(Sample(f, "kldrift_ingested_observations_total", {}), Optional(Eq(2000.0 + 5)));

  ASSERT_TRUE(h.engine.DeleteReference(kept).ok());
  h.engine.Evaluate();
  f = h.Collect();
  EXPECT_EQ(h.metrics->stream_series(), 0u);
  for (const char* name : kPerStreamFamilies) EXPECT_EQ(CountSeries(f, name), 0u) << name;
  for (const char* name : kCommonWindowFamilies) EXPECT_EQ(CountSeries(f, name), 0u) << name;
  for (const MeasureFamily& family : kHistogramMeasureFamilies) {
    EXPECT_EQ(CountSeries(f, family.name), 0u) << family.name;
  }
  EXPECT_EQ(CountSeries(f, "kldrift_top_bin_kl_contribution_nats"), 0u);

  // Re-created, the stream starts again at version 1 with no window series until evaluated.
  ASSERT_NE(h.Put(Categorical(doomed, FastPolicy())), nullptr);
  f = h.Collect();
  EXPECT_THAT(Sample(f, "kldrift_reference_version", StreamLabels(doomed)), Optional(Eq(1.0)));
  EXPECT_THAT(Sample(f, "kldrift_stream_ingested_observations_total", StreamLabels(doomed)),
              Optional(Eq(0.0)));
  EXPECT_EQ(h.metrics->stream_series(), 3u);
}

TEST(DriftMetricsTest, NewVersionWithOtherWindowsDropsTheOldWindowsSeries) {
  Harness h;
  const StreamKey key{"m", "v1", "s"};
  ASSERT_NE(h.Put(Categorical(key, FastPolicy({absl::Minutes(1), absl::Hours(1)}))), nullptr);
  h.SendOk("m", {Hist(key, {700, 300, 0, 0, 0})});
  h.engine.Evaluate();
  Families f = h.Collect();
  const size_t per_window = CountSeriesEverywhere(f, WindowLabels(key, "1m"));
  ASSERT_GT(per_window, 0u);
  EXPECT_EQ(CountSeriesEverywhere(f, WindowLabels(key, "1h")), per_window);
  EXPECT_THAT(Sample(f, "kldrift_reference_version", StreamLabels(key)), Optional(Eq(1.0)));
  absl::StatusOr<std::vector<WindowReport>> stale =
      h.engine.GetDrift(key, std::nullopt, h.metrics->top_bins());
  ASSERT_TRUE(stale.ok());

  // Version 2 keeps only a 5m window.
  ASSERT_NE(h.Put(Categorical(key, FastPolicy({absl::Minutes(5)}))), nullptr);
  f = h.Collect();
  EXPECT_EQ(CountSeriesEverywhere(f, WindowLabels(key, "1m")), 0u);
  EXPECT_EQ(CountSeriesEverywhere(f, WindowLabels(key, "1h")), 0u);
  EXPECT_EQ(CountSeriesEverywhere(f, WindowLabels(key, "5m")), 0u);  // Until evaluated.
  EXPECT_THAT(Sample(f, "kldrift_reference_version", StreamLabels(key)), Optional(Eq(2.0)));
  EXPECT_EQ(h.metrics->stream_series(), 3u);

  // A report of version 1's windows arriving late does not bring them back.
  h.metrics->OnStreamEvaluated(*stale);
  f = h.Collect();
  EXPECT_EQ(CountSeriesEverywhere(f, WindowLabels(key, "1m")), 0u);
  EXPECT_EQ(CountSeriesEverywhere(f, WindowLabels(key, "1h")), 0u);
  EXPECT_EQ(h.metrics->stream_series(), 3u);

  h.SendOk("m", {Hist(key, {700, 300, 0, 0, 0})});
  EXPECT_EQ(h.engine.Evaluate(), 1u);
  f = h.Collect();
  EXPECT_EQ(CountSeriesEverywhere(f, WindowLabels(key, "5m")), per_window);
  ExpectHistogramMeasuresMatch(f, WindowLabels(key, "5m"), h.Drift(key, absl::Minutes(5)));
  EXPECT_EQ(CountSeries(f, "kldrift_window_samples", StreamLabels(key)), 1u);
  // The observations counter spans versions.
  EXPECT_THAT(Sample(f, "kldrift_stream_ingested_observations_total", StreamLabels(key)),
              Optional(Eq(2000.0)));

  // Version 3, same shape: the series stay and the version follows.
  const size_t before = h.metrics->stream_series();
  AlertPolicy same = FastPolicy({absl::Minutes(5)});
  same.warn_threshold = 0.07;
  same.critical_threshold = 0.2;
  ASSERT_NE(h.Put(Categorical(key, same)), nullptr);
  f = h.Collect();
  EXPECT_EQ(h.metrics->stream_series(), before);
  EXPECT_THAT(Sample(f, "kldrift_reference_version", StreamLabels(key)), Optional(Eq(3.0)));
  h.engine.Evaluate();
  f = h.Collect();
  EXPECT_THAT(Sample(f, "kldrift_alert_warn_threshold",
                     With(WindowLabels(key, "5m"), "measure", "kl_current_reference")),
              Optional(Eq(0.07)));
}

TEST(DriftMetricsTest, NewVersionWithAnotherMeasureOrKindRebuildsTheSeries) {
  Harness h;
  const StreamKey key{"m", "v1", "s"};
  ASSERT_NE(h.Put(PreBinned(key, {10, 10, 10}, FastPolicy({absl::Minutes(5)}))), nullptr);
  h.SendOk("m", {Hist(key, {1, 2, 30})});
  h.engine.Evaluate();
  const LabelSet w = WindowLabels(key, "5m");
  Families f = h.Collect();
  ASSERT_EQ(
      CountSeries(f, "kldrift_alert_measure_value", With(w, "measure", "kl_current_reference")),
      1u);
  absl::StatusOr<std::vector<WindowReport>> histogram_report =
      h.engine.GetDrift(key, std::nullopt, 0);
  ASSERT_TRUE(histogram_report.ok());

  // Alerting on another measure: the measure label changes, and there is one series.
  AlertPolicy js = FastPolicy({absl::Minutes(5)});
  js.measure = Measure::kJsBits;
  js.warn_threshold = 0.1;
  js.critical_threshold = 0.3;
  ASSERT_NE(h.Put(PreBinned(key, {10, 10, 10}, js)), nullptr);
  h.engine.Evaluate();
  f = h.Collect();
  EXPECT_EQ(CountSeries(f, "kldrift_alert_measure_value", w), 1u);
  const WindowReport report = h.Drift(key, absl::Minutes(5));
  ASSERT_TRUE(report.histogram.has_value());
  EXPECT_THAT(Sample(f, "kldrift_alert_measure_value", With(w, "measure", "js_bits")),
              Optional(Eq(report.histogram->js_bits)));
  EXPECT_THAT(Sample(f, "kldrift_alert_warn_threshold", With(w, "measure", "js_bits")),
              Optional(Eq(0.1)));

  // Same key, now a Gaussian stream: the histogram series go, and a late histogram report is not
  // taken for the new kind.
  ASSERT_NE(h.Put(Gaussian(key, {0}, {1})), nullptr);
  f = h.Collect();
  EXPECT_EQ(h.metrics->stream_series(), 3u);
  h.metrics->OnStreamEvaluated(*histogram_report);
  f = h.Collect();
  EXPECT_EQ(h.metrics->stream_series(), 3u);
  for (const char* name : kHistogramOnlyFamilies) {
    EXPECT_EQ(CountSeries(f, name, StreamLabels(key)), 0u) << name;
  }
  EXPECT_THAT(Sample(f, "kldrift_reference_version", StreamLabels(key)), Optional(Eq(3.0)));
}

TEST(DriftMetricsTest, GaussianStreamsExportBothKlDirectionsOnly) {
  Harness h;
  const StreamKey key{"vae", "v1", "latent"};
  ASSERT_NE(h.Put(Gaussian(key, {0, 1}, {1, 2})), nullptr);
  // 200 samples: dimension 0 with mean 0.5 and variance 1.5, dimension 1 with mean 1, variance 1.
  h.SendOk("vae", {GaussianStats(key, 200, {100, 200}, {199 * 1.5 + 200 * 0.25, 199 + 200})});
  EXPECT_EQ(h.engine.Evaluate(), 3u);
  const Families f = h.Collect();
  for (const auto& [window, duration] : {std::pair{std::string("5m"), absl::Minutes(5)},
                                         {std::string("1h"), absl::Hours(1)},
                                         {std::string("24h"), absl::Hours(24)}}) {
    SCOPED_TRACE(window);
    const WindowReport report = h.Drift(key, duration);
    ASSERT_TRUE(report.gaussian.has_value());
    ASSERT_GT(report.gaussian->kl.forward, 0);
    const LabelSet w = WindowLabels(key, window);
    EXPECT_THAT(Sample(f, "kldrift_drift_kl_current_reference_nats", w),
                Optional(Eq(report.gaussian->kl.forward)));
    EXPECT_THAT(Sample(f, "kldrift_drift_kl_reference_current_nats", w),
                Optional(Eq(report.gaussian->kl.reverse)));
    EXPECT_THAT(
        Sample(f, "kldrift_drift_jeffreys_nats", w),
        Optional(testing::DoubleEq(report.gaussian->kl.forward + report.gaussian->kl.reverse)));
    EXPECT_THAT(Sample(f, "kldrift_window_samples", w), Optional(Eq(200.0)));
    EXPECT_THAT(Sample(f, "kldrift_window_enough_samples", w), Optional(Eq(1.0)));
    EXPECT_THAT(
        Sample(f, "kldrift_alert_measure_value", With(w, "measure", "kl_current_reference")),
        Optional(Eq(report.measure_value)));
    EXPECT_EQ(CountSeries(f, "kldrift_alert_state", w), 1u);
  }
  for (const char* name : kHistogramOnlyFamilies) {
    EXPECT_EQ(CountSeries(f, name, StreamLabels(key)), 0u) << name;
  }
  EXPECT_EQ(CountSeries(f, "kldrift_policy_kl_estimate_nats", StreamLabels(key)), 0u);
  EXPECT_THAT(Sample(f, "kldrift_stream_ingested_observations_total", StreamLabels(key)),
              Optional(Eq(200.0)));
  EXPECT_EQ(h.metrics->stream_series(), CountSeriesEverywhere(f, StreamLabels(key)));
}

TEST(DriftMetricsTest, GaussianWindowWithoutDataIsNaN) {
  Harness h;
  const StreamKey key{"vae", "v1", "latent"};
  ASSERT_NE(h.Put(Gaussian(key, {0}, {1})), nullptr);
  h.engine.Evaluate();
  const Families f = h.Collect();
  const LabelSet w = WindowLabels(key, "5m");
  EXPECT_THAT(Sample(f, "kldrift_drift_kl_current_reference_nats", w), Optional(IsNan()));
  EXPECT_THAT(Sample(f, "kldrift_drift_kl_reference_current_nats", w), Optional(IsNan()));
  EXPECT_THAT(Sample(f, "kldrift_drift_jeffreys_nats", w), Optional(IsNan()));
  EXPECT_THAT(Sample(f, "kldrift_alert_measure_value", With(w, "measure", "kl_current_reference")),
              Optional(IsNan()));
  EXPECT_THAT(Sample(f, "kldrift_window_samples", w), Optional(Eq(0.0)));
}

TEST(DriftMetricsTest, PairedLogProbStreamsExportTheEstimators) {
  Harness h;
  const StreamKey key{"rlhf", "v1", "policy"};
  ASSERT_NE(h.Put(PolicyRef(key)), nullptr);
  std::vector<double> current, reference;
  for (int i = 0; i < 150; ++i) {
    const double lc = -0.05 - 0.01 * (i % 40);
    current.push_back(lc);
    reference.push_back(lc - 0.2 - 0.005 * (i % 7));
  }
  h.SendOk("rlhf", {LogProbs(key, current, reference)});
  EXPECT_EQ(h.engine.Evaluate(), 3u);
  const Families f = h.Collect();
  for (const auto& [window, duration] : {std::pair{std::string("5m"), absl::Minutes(5)},
                                         {std::string("1h"), absl::Hours(1)},
                                         {std::string("24h"), absl::Hours(24)}}) {
    SCOPED_TRACE(window);
    const WindowReport report = h.Drift(key, duration);
    ASSERT_TRUE(report.policy.has_value());
    const LabelSet w = WindowLabels(key, window);
    const std::string family = "kldrift_policy_kl_estimate_nats";
    EXPECT_THAT(Sample(f, family, With(w, "estimator", "k1")),
                Optional(Eq(report.policy->k1.mean)));
    EXPECT_THAT(Sample(f, family, With(w, "estimator", "k2")),
                Optional(Eq(report.policy->k2.mean)));
    EXPECT_THAT(Sample(f, family, With(w, "estimator", "k3")),
                Optional(Eq(report.policy->k3.mean)));
    EXPECT_EQ(CountSeries(f, family, w), 3u);
    EXPECT_THAT(Sample(f, "kldrift_alert_measure_value", With(w, "measure", "k3")),
                Optional(Eq(report.policy->k3.mean)));
    EXPECT_THAT(Sample(f, "kldrift_window_samples", w), Optional(Eq(150.0)));
    EXPECT_EQ(CountSeries(f, "kldrift_alert_state", w), 1u);
  }
  for (const char* name : kHistogramOnlyFamilies) {
    EXPECT_EQ(CountSeries(f, name, StreamLabels(key)), 0u) << name;
  }
  for (const MeasureFamily& family : kHistogramMeasureFamilies) {
    EXPECT_EQ(CountSeries(f, family.name, StreamLabels(key)), 0u) << family.name;
  }
  EXPECT_EQ(h.metrics->stream_series(), CountSeriesEverywhere(f, StreamLabels(key)));
}

TEST(DriftMetricsTest, MaxStreamsBoundsTheSeries) {
  EngineOptions engine_options;
  engine_options.max_streams = 3;
  Harness h(TopBins(2), engine_options);
  for (const std::string signal : {"a", "b", "c"}) {
    const StreamKey key{"m", "v1", signal};
    ASSERT_NE(h.Put(Categorical(key, FastPolicy())), nullptr);
    h.SendOk("m", {Hist(key, {700, 300, 0, 0, 0})});
  }
  h.engine.Evaluate();
  const size_t series = h.metrics->stream_series();
  ASSERT_GT(series, 0u);

  const StreamKey fourth{"m", "v1", "d"};
  absl::StatusOr<std::shared_ptr<const Reference>> refused =
      h.engine.PutReference(Categorical(fourth, FastPolicy()));
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(h.metrics->stream_series(), series);
  h.engine.Evaluate();
  EXPECT_EQ(h.metrics->stream_series(), series);
  const Families f = h.Collect();
  EXPECT_EQ(CountSeriesEverywhere(f, {{"signal", "d"}}), 0u);
  EXPECT_EQ(CountSeries(f, "kldrift_reference_version"), 3u);
  EXPECT_EQ(CountSeriesEverywhere(f, {{"model", "m"}}), series);
}

TEST(DriftMetricsTest, MeasuresOptionLimitsTheMeasureFamilies) {
  MetricsOptions options = TopBins(2);
  options.measures = MeasureBit(Measure::kKlCurrentReference) | kGTestPValueBit;
  Harness h(options);
  const StreamKey hist{"m", "v1", "hist"};
  const StreamKey gauss{"m", "v1", "gauss"};
  AlertPolicy js = FastPolicy({absl::Minutes(5)});
  js.measure = Measure::kJsBits;  // Not exported as a family, but still the alert's measure.
  ASSERT_NE(h.Put(Categorical(hist, js)), nullptr);
  ASSERT_NE(h.Put(Gaussian(gauss, {0}, {1})), nullptr);
  h.SendOk("m", {Hist(hist, {700, 300, 0, 0, 0}), GaussianStats(gauss, 200, {100}, {350})});
  h.engine.Evaluate();
  Families f = h.Collect();

  const LabelSet w = WindowLabels(hist, "5m");
  const WindowReport report = h.Drift(hist, absl::Minutes(5));
  ASSERT_TRUE(report.histogram.has_value());
  EXPECT_THAT(Sample(f, "kldrift_drift_kl_current_reference_nats", w),
              Optional(Eq(report.histogram->kl_current_reference)));
  EXPECT_THAT(Sample(f, "kldrift_drift_g_test_p_value", w),
              Optional(Eq(report.histogram->g_test_p_value)));
  for (const MeasureFamily& family : kHistogramMeasureFamilies) {
    const std::string name = family.name;
    if (name == "kldrift_drift_kl_current_reference_nats" ||
        name == "kldrift_drift_g_test_p_value") {
      continue;
    }
    EXPECT_EQ(CountSeries(f, family.name), 0u) << family.name;
  }
  EXPECT_THAT(Sample(f, "kldrift_alert_measure_value", With(w, "measure", "js_bits")),
              Optional(Eq(report.histogram->js_bits)));
  EXPECT_EQ(CountSeries(f, "kldrift_top_bin_kl_contribution_nats", w), 2u);
  // Per histogram window: 2 measures, 8 common families (state included), 2 top bins.
  EXPECT_EQ(CountSeriesEverywhere(f, w), 2u + 8 + 2);

  const LabelSet g = WindowLabels(gauss, "5m");
  EXPECT_EQ(CountSeries(f, "kldrift_drift_kl_current_reference_nats", g), 1u);
  EXPECT_EQ(CountSeries(f, "kldrift_drift_kl_reference_current_nats", g), 0u);
  EXPECT_EQ(CountSeries(f, "kldrift_drift_jeffreys_nats", g), 0u);
  EXPECT_EQ(h.metrics->stream_series(), CountSeriesEverywhere(f, {{"model", "m"}}));

  // An empty window with families left out: the exported ones go NaN, nothing crashes.
  h.clock.Advance(absl::Minutes(6));
  h.engine.Evaluate();
  f = h.Collect();
  EXPECT_THAT(Sample(f, "kldrift_drift_kl_current_reference_nats", w), Optional(IsNan()));
  EXPECT_THAT(Sample(f, "kldrift_drift_kl_current_reference_nats", g), Optional(IsNan()));
  EXPECT_EQ(CountSeries(f, "kldrift_top_bin_kl_contribution_nats", w), 0u);

  ASSERT_TRUE(h.engine.DeleteReference(hist).ok());
  ASSERT_TRUE(h.engine.DeleteReference(gauss).ok());
  EXPECT_EQ(h.metrics->stream_series(), 0u);
  EXPECT_EQ(CountSeriesEverywhere(h.Collect(), {{"model", "m"}}), 0u);
}

TEST(DriftMetricsTest, ParseMetricsMeasures) {
  absl::StatusOr<uint32_t> bits = ParseMetricsMeasures("all");
  ASSERT_TRUE(bits.ok()) << bits.status();
  EXPECT_EQ(*bits, kAllMeasureFamilies);
  bits = ParseMetricsMeasures("none");
  ASSERT_TRUE(bits.ok()) << bits.status();
  EXPECT_EQ(*bits, 0u);
  bits = ParseMetricsMeasures("kl_current_reference,psi,g_test_p_value");
  ASSERT_TRUE(bits.ok()) << bits.status();
  EXPECT_EQ(*bits,
            MeasureBit(Measure::kKlCurrentReference) | MeasureBit(Measure::kPsi) | kGTestPValueBit);
  // Every measure has its own bit, distinct from the p-value's.
  uint32_t seen = kGTestPValueBit;
  for (Measure m : {Measure::kKlCurrentReference, Measure::kKlReferenceCurrent, Measure::kJeffreys,
                    Measure::kPsi, Measure::kJsBits, Measure::kHellinger, Measure::kTotalVariation,
                    Measure::kLInf, Measure::kChi2}) {
    EXPECT_EQ(seen & MeasureBit(m), 0u) << MeasureName(m);
    seen |= MeasureBit(m);
  }
  for (const std::string bad : {"kl", "psi,,js_bits", "", "ALL"}) {
    bits = ParseMetricsMeasures(bad);
    EXPECT_EQ(bits.status().code(), absl::StatusCode::kInvalidArgument) << "\"" << bad << "\"";
    EXPECT_THAT(bits.status().message(), HasSubstr("g_test_p_value")) << bad;
  }
}

// ---------------------------------------------------------------------------------------------
// Process metrics.

// Resident bytes by /proc/self/statm (its second field, in pages).
double StatmResidentBytes() {
  std::ifstream statm("/proc/self/statm");
  double size = 0, resident = 0;
  statm >> size >> resident;
  return resident * static_cast<double>(sysconf(_SC_PAGESIZE));
}

// Busy-loops for `duration` of wall time on this thread; returns something the compiler cannot
// drop.
// Spins until this process has used `cpu` more CPU time (its own clock, not the wall clock, so a
// loaded machine cannot make it burn less), or 60 s of wall time pass.
double BurnCpu(std::chrono::milliseconds cpu) {
  auto process_cpu = [] {
    timespec t{};
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return std::chrono::seconds(t.tv_sec) + std::chrono::nanoseconds(t.tv_nsec);
  };
  const auto until = process_cpu() + cpu;
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  double x = 1;
  while (process_cpu() < until && std::chrono::steady_clock::now() < give_up) {
    for (int i = 0; i < 10000; ++i) x = std::sqrt(x + i);
  }
  return x;
}

TEST(DriftMetricsTest, ProcessMetricsArePlausibleAndMove) {
  DriftMetrics metrics;
  Families f = metrics.Collect();
  for (const char* name : {"process_cpu_seconds_total", "process_resident_memory_bytes",
                           "process_virtual_memory_bytes", "process_open_fds", "process_max_fds",
                           "process_start_time_seconds"}) {
    ASSERT_NE(FindFamily(f, name), nullptr) << name;
    EXPECT_EQ(CountSeries(f, name), 1u) << name;
  }
  // The process collector's types: CPU is a counter (rate() of it is the CPU use), the rest gauges.
  EXPECT_EQ(FindFamily(f, "process_cpu_seconds_total")->type, prometheus::MetricType::Counter);
  EXPECT_EQ(FindFamily(f, "process_resident_memory_bytes")->type, prometheus::MetricType::Gauge);

  const double cpu_before = Sample(f, "process_cpu_seconds_total", {}).value_or(-1);
  EXPECT_GE(cpu_before, 0);
  const double rss = Sample(f, "process_resident_memory_bytes", {}).value_or(-1);
  const double statm = StatmResidentBytes();
  EXPECT_GT(rss, 1 << 20);
  EXPECT_NEAR(rss, statm, 0.25 * statm + (16 << 20)) << "statm says " << statm;
  EXPECT_GE(Sample(f, "process_virtual_memory_bytes", {}).value_or(-1), rss);
  rlimit limit{};
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &limit), 0);
  EXPECT_THAT(Sample(f, "process_max_fds", {}), Optional(Eq(static_cast<double>(limit.rlim_cur))));
  const double now = absl::ToDoubleSeconds(absl::Now() - absl::UnixEpoch());
  const double start = Sample(f, "process_start_time_seconds", {}).value_or(-1);
  EXPECT_LE(start, now + 1);
  EXPECT_GT(start, now - 24 * 3600);  // This test process started today.

  // Burning CPU moves the counter; opening descriptors moves the gauge.
  EXPECT_GT(BurnCpu(std::chrono::milliseconds(300)), 0);
  int pipes[4][2];
  for (auto& p : pipes) ASSERT_EQ(pipe(p), 0);
  f = metrics.Collect();
  EXPECT_GE(Sample(f, "process_cpu_seconds_total", {}).value_or(-1), cpu_before + 0.1);
  const double open_fds = Sample(f, "process_open_fds", {}).value_or(-1);
  for (auto& p : pipes) {
    close(p[0]);
    close(p[1]);
  }
  const double closed_fds = Sample(metrics.Collect(), "process_open_fds", {}).value_or(-1);
  EXPECT_GE(closed_fds, 3);  // stdin, stdout, stderr.
  EXPECT_EQ(open_fds, closed_fds + 8);
  EXPECT_THAT(Sample(metrics.Collect(), "process_start_time_seconds", {}), Optional(Eq(start)));

  const std::string text = Serialize(f);
  EXPECT_THAT(text, HasSubstr("# TYPE process_cpu_seconds_total counter\n"));
  EXPECT_THAT(text, HasSubstr("# TYPE process_resident_memory_bytes gauge\n"));
}

TEST(DriftMetricsTest, ParseProcStatCountsFieldsFromTheLastParenthesis) {
  // proc(5): utime 14, stime 15, starttime 22, vsize 23, rss 24; a command name with ") (".
  const std::string line =
      "4242 (kl drift) (x) S 1 4242 4242 0 -1 4194304 100 0 0 0 250 50 0 0 20 0 3 0 1000 "
      "123456789 300 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
  absl::StatusOr<ProcessStats> stats = ParseProcStat(line, 100, 4096);
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_DOUBLE_EQ(stats->cpu_seconds, 3.0);  // (250 + 50) / 100.
  EXPECT_DOUBLE_EQ(stats->virtual_bytes, 123456789.0);
  EXPECT_DOUBLE_EQ(stats->resident_bytes, 300.0 * 4096);
  EXPECT_DOUBLE_EQ(stats->start_time_seconds, 10.0);  // After boot.

  for (const std::string bad : {"", "4242 (kldriftd S 1", "4242 (kldriftd) S 1 2 3",
                                "4242 (k) S 1 4242 4242 0 -1 4194304 100 0 0 0 x 50 0 0 20 0 3 "
                                "0 1000 123456789 300"}) {
    EXPECT_EQ(ParseProcStat(bad, 100, 4096).status().code(), absl::StatusCode::kInvalidArgument)
        << "\"" << bad << "\"";
  }
}

// ---------------------------------------------------------------------------------------------
// The HTTP endpoint.

// GETs `path` from 127.0.0.1:`port` with HTTP/`version` and `headers` (each "Name: value"), asking
// the server to close the connection after the response; returns the whole response. Receives
// time out after 10 s rather than hang.
absl::StatusOr<std::string> HttpGet(int port, const std::string& path,
                                    const std::string& version = "1.0",
                                    const std::vector<std::string>& headers = {}) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return absl::InternalError(absl::StrCat("socket: ", std::strerror(errno)));
  struct Closer {
    int fd;
    ~Closer() { close(fd); }
  } closer{fd};
  timeval timeout{};
  timeout.tv_sec = 10;
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  if (inet_pton(AF_INET, "127.0.0.1", &address.sin_addr) != 1) {
    return absl::InternalError("inet_pton");
  }
  if (connect(fd, reinterpret_cast<const sockaddr*>(&address), sizeof address) != 0) {
    return absl::UnavailableError(absl::StrCat("connect: ", std::strerror(errno)));
  }
  std::string request = absl::StrCat("GET ", path, " HTTP/", version, "\r\nHost: 127.0.0.1\r\n");
  for (const std::string& header : headers) absl::StrAppend(&request, header, "\r\n");
  absl::StrAppend(&request, "Connection: close\r\n\r\n");
  for (size_t sent = 0; sent < request.size();) {
    const ssize_t n = send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) return absl::UnavailableError(absl::StrCat("send: ", std::strerror(errno)));
    sent += static_cast<size_t>(n);
  }
  std::string response;
  char buffer[4096];
  while (true) {
    const ssize_t n = recv(fd, buffer, sizeof buffer, 0);
    if (n == 0) break;
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::DeadlineExceededError(absl::StrCat("recv: ", std::strerror(errno)));
    }
    response.append(buffer, static_cast<size_t>(n));
  }
  return response;
}

TEST(MetricsEndpointTest, ServesMetricsOverHttp) {
  MetricsOptions options;
  options.version = "endpoint-test";
  auto metrics = std::make_shared<DriftMetrics>(options);
  FakeClock clock;
  DriftEngine engine(WithObserver({}, metrics.get()), &clock);
  const StreamKey key{"served", "v1", "s"};
  ASSERT_TRUE(engine.PutReference(PreBinned(key, {1, 1, 1})).ok());
  engine.Evaluate();
  metrics->SetServerStateSource([&engine] {
    ServerState s;
    s.streams = engine.stream_count();
    return s;
  });

  absl::StatusOr<std::unique_ptr<MetricsEndpoint>> endpoint =
      MetricsEndpoint::Start("127.0.0.1:0", metrics);
  ASSERT_TRUE(endpoint.ok()) << endpoint.status();
  const int port = (*endpoint)->port();
  ASSERT_GT(port, 0);

  absl::StatusOr<std::string> response = HttpGet(port, "/metrics");
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_THAT(*response, testing::StartsWith("HTTP/1."));
  const size_t status_end = response->find("\r\n");
  ASSERT_NE(status_end, std::string::npos);
  EXPECT_THAT(response->substr(0, status_end), HasSubstr(" 200"));
  const size_t body = response->find("\r\n\r\n");
  ASSERT_NE(body, std::string::npos);
  const std::string text = response->substr(body + 4);
  EXPECT_THAT(text, HasSubstr("kldrift_streams 1"));
  EXPECT_THAT(text, HasSubstr("kldrift_build_info{version=\"endpoint-test\"} 1"));
  EXPECT_THAT(text, HasSubstr("kldrift_window_samples{model=\"served\""));

  // The port is taken now.
  absl::StatusOr<std::unique_ptr<MetricsEndpoint>> second =
      MetricsEndpoint::Start(absl::StrCat("127.0.0.1:", port), metrics);
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable) << second.status();
  EXPECT_THAT(second.status().message(), HasSubstr(absl::StrCat("127.0.0.1:", port)));

  // The first endpoint still serves.
  response = HttpGet(port, "/metrics");
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_THAT(*response, HasSubstr("kldrift_streams 1"));
}

// The headers of an HTTP response, and its body with the chunked framing and gzip undone.
struct HttpResponse {
  std::string headers;
  std::string body;
};

absl::StatusOr<std::string> Gunzip(absl::string_view compressed) {
  z_stream stream{};
  if (inflateInit2(&stream, 16 + MAX_WBITS) != Z_OK) return absl::InternalError("inflateInit2");
  stream.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(compressed.data()));
  stream.avail_in = static_cast<uInt>(compressed.size());
  std::string out;
  char buffer[1 << 14];
  int result = Z_OK;
  while (result == Z_OK) {
    stream.next_out = reinterpret_cast<Bytef*>(buffer);
    stream.avail_out = sizeof buffer;
    result = inflate(&stream, Z_NO_FLUSH);
    out.append(buffer, sizeof buffer - stream.avail_out);
  }
  inflateEnd(&stream);
  if (result != Z_STREAM_END) return absl::DataLossError("not a whole gzip stream");
  return out;
}

absl::StatusOr<HttpResponse> Decode(const std::string& response) {
  const size_t end = response.find("\r\n\r\n");
  if (end == std::string::npos) return absl::DataLossError("no end of headers");
  HttpResponse decoded{response.substr(0, end + 2), ""};
  absl::string_view rest = absl::string_view(response).substr(end + 4);
  if (absl::StrContains(decoded.headers, "Transfer-Encoding: chunked\r\n")) {
    std::string body;
    while (true) {
      const size_t line = rest.find("\r\n");
      size_t size = 0;
      if (line == absl::string_view::npos || !absl::SimpleHexAtoi(rest.substr(0, line), &size) ||
          rest.size() < line + 2 + size + 2) {
        return absl::DataLossError("bad chunk");
      }
      if (size == 0) break;
      body.append(rest.substr(line + 2, size).data(), size);
      rest.remove_prefix(line + 2 + size + 2);
    }
    decoded.body = std::move(body);
  } else {
    decoded.body = std::string(rest);
  }
  if (absl::StrContains(decoded.headers, "Content-Encoding: gzip\r\n")) {
    absl::StatusOr<std::string> text = Gunzip(decoded.body);
    if (!text.ok()) return text.status();
    decoded.body = *std::move(text);
  }
  return decoded;
}

// Lines of an exposition, but the process metrics' (which move between two reads).
std::string WithoutProcessMetrics(absl::string_view text) {
  std::string kept;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (absl::StartsWith(line, "process_") || absl::StartsWith(line, "# HELP process_") ||
        absl::StartsWith(line, "# TYPE process_")) {
      continue;
    }
    absl::StrAppend(&kept, line, "\n");
  }
  return kept;
}

// A DriftMetrics with a series of every kind: histogram windows with and without data, top bins
// whose labels need escaping, Gaussian and paired log-prob windows, a rejection.
void PopulateEveryKind(Harness& h) {
  ReferenceSpec odd;
  odd.stream = {"m", "v1", "odd-bins"};
  odd.kind = ReferenceKind::kCategorical;
  odd.categories = {"plain", "quote\"d", "back\\slash", "new\nline"};
  odd.counts = std::vector<double>{250, 250, 250, 250};
  odd.policy = FastPolicy();
  ASSERT_NE(h.Put(odd), nullptr);
  ASSERT_NE(h.Put(Categorical({"m", "v1", "idle"}, FastPolicy())), nullptr);
  ASSERT_NE(h.Put(Gaussian({"m", "v1", "gauss"}, {0}, {1})), nullptr);
  ASSERT_NE(h.Put(PolicyRef({"m", "v1", "policy"})), nullptr);
  std::vector<double> current, reference;
  for (int i = 0; i < 100; ++i) {
    current.push_back(-0.1 - 0.01 * (i % 30));
    reference.push_back(-0.3 - 0.007 * (i % 11));
  }
  h.SendOk("m", {Hist(odd.stream, {10, 700, 300, 200, 0}),
                 GaussianStats({"m", "v1", "gauss"}, 200, {100}, {350}),
                 LogProbs({"m", "v1", "policy"}, current, reference)});
  h.metrics->RecordBatchRejected(absl::StatusCode::kInvalidArgument);
  h.engine.Evaluate();
}

TEST(DriftMetricsTest, ExpositionIsTheTextSerializersOutputOfCollect) {
  Harness h(TopBins(5));  // Every bin of the odd one, <unseen> included.
  ASSERT_NO_FATAL_FAILURE(PopulateEveryKind(h));
  std::string buffer = "left over from a previous scrape";
  std::string text;
  int pieces = 0;
  h.metrics->WriteExposition(buffer, [&](absl::string_view piece) {
    text.append(piece.data(), piece.size());
    ++pieces;
  });
  const std::string expected = Serialize(h.Collect());
  // Every series of every family, in the same order, byte for byte (NaN, escaped quotes,
  // backslashes and newlines in bin labels, 16 significant digits).
  EXPECT_EQ(WithoutProcessMetrics(text), WithoutProcessMetrics(expected));
  EXPECT_THAT(text, HasSubstr("bin=\"quote\\\"d\""));
  EXPECT_THAT(text, HasSubstr("bin=\"back\\\\slash\""));
  EXPECT_THAT(text, HasSubstr("bin=\"new\\nline\""));
  EXPECT_THAT(text, HasSubstr(" Nan\n"));
  EXPECT_THAT(text, HasSubstr("# TYPE process_resident_memory_bytes gauge\n"));
  EXPECT_GE(pieces, 3);  // The server families, the per-stream ones, the process ones.
}

TEST(DriftMetricsTest, ExpositionComesInPiecesOfBoundedSize) {
  EngineOptions engine_options;
  engine_options.max_streams = 3000;
  Harness h(TopBins(3), engine_options);
  std::vector<StreamData> data;
  for (int i = 0; i < 3000; ++i) {
    const StreamKey key{"many", "v1", absl::StrCat("signal-", i)};
    ASSERT_NE(h.Put(Categorical(key, FastPolicy())), nullptr);
    data.push_back(Hist(key, {700, 300, 10, 0, 0}));
  }
  h.SendOk("many", std::move(data));
  h.engine.Evaluate();
  std::string buffer;
  std::string text;
  size_t largest = 0;
  int pieces = 0;
  h.metrics->WriteExposition(buffer, [&](absl::string_view piece) {
    text.append(piece.data(), piece.size());
    largest = std::max(largest, piece.size());
    ++pieces;
  });
  ASSERT_GT(text.size(), 10u << 20);
  // About 1 MiB at a time, plus at most one shard of one family, whatever the text's size.
  EXPECT_LE(largest, (1u << 20) + (64u << 10));
  EXPECT_GE(pieces, static_cast<int>(text.size() >> 20));
  EXPECT_EQ(WithoutProcessMetrics(text), WithoutProcessMetrics(Serialize(h.Collect())));
  // The buffer is the caller's to reuse.
  EXPECT_LE(buffer.capacity(), 4u << 20);
}

TEST(MetricsEndpointTest, StreamsChunkedAndGzippedToHttp11Clients) {
  Harness h(TopBins(2));
  ASSERT_NO_FATAL_FAILURE(PopulateEveryKind(h));
  absl::StatusOr<std::unique_ptr<MetricsEndpoint>> endpoint =
      MetricsEndpoint::Start("127.0.0.1:0", h.metrics);
  ASSERT_TRUE(endpoint.ok()) << endpoint.status();
  const std::string expected = WithoutProcessMetrics(Serialize(h.Collect()));
  for (const bool gzip : {false, true}) {
    SCOPED_TRACE(gzip ? "gzip" : "identity");
    std::vector<std::string> headers;
    if (gzip) headers.push_back("Accept-Encoding: gzip, deflate");
    for (const std::string version : {"1.1", "1.0"}) {
      SCOPED_TRACE(version);
      absl::StatusOr<std::string> raw = HttpGet((*endpoint)->port(), "/metrics", version, headers);
      ASSERT_TRUE(raw.ok()) << raw.status();
      absl::StatusOr<HttpResponse> response = Decode(*raw);
      ASSERT_TRUE(response.ok()) << response.status();
      EXPECT_THAT(response->headers, testing::StartsWith("HTTP/1.1 200 OK\r\n"));
      EXPECT_THAT(response->headers, HasSubstr("Content-Type: text/plain; charset=utf-8\r\n"));
      // HTTP/1.0 knows no chunks: the whole body with its length.
      EXPECT_EQ(absl::StrContains(response->headers, "Transfer-Encoding: chunked"),
                version == "1.1");
      EXPECT_EQ(absl::StrContains(response->headers, "Content-Encoding: gzip"), gzip);
      // The exposer's own families come first, then what Collect() says.
      EXPECT_THAT(response->body, testing::StartsWith("# HELP exposer_transferred_bytes_total"));
      const size_t ours = response->body.find("# HELP kldrift_");
      ASSERT_NE(ours, std::string::npos);
      EXPECT_EQ(WithoutProcessMetrics(response->body.substr(ours)), expected);
      EXPECT_THAT(response->body, HasSubstr("\nprocess_cpu_seconds_total "));
    }
  }
  absl::StatusOr<std::string> text = HttpGet((*endpoint)->port(), "/metrics");
  ASSERT_TRUE(text.ok()) << text.status();
  EXPECT_THAT(*text, HasSubstr("\nexposer_scrapes_total 4\n"));
}

TEST(MetricsEndpointTest, BasicAuthGuardsTheMetrics) {
  auto metrics = std::make_shared<DriftMetrics>();
  MetricsEndpointOptions options;
  options.address = "127.0.0.1:0";
  options.basic_auth_user = "prometheus";
  options.basic_auth_password = "s3cret:with-colon";
  absl::StatusOr<std::unique_ptr<MetricsEndpoint>> endpoint =
      MetricsEndpoint::Start(options, metrics);
  ASSERT_TRUE(endpoint.ok()) << endpoint.status();
  auto status_line = [&](const std::vector<std::string>& headers) {
    absl::StatusOr<std::string> raw = HttpGet((*endpoint)->port(), "/metrics", "1.1", headers);
    EXPECT_TRUE(raw.ok()) << raw.status();
    return raw.ok() ? raw->substr(0, raw->find("\r\n")) : std::string();
  };
  auto basic = [](const std::string& credentials) {
    return absl::StrCat("Authorization: Basic ", absl::Base64Escape(credentials));
  };
  for (const std::vector<std::string>& headers :
       std::vector<std::vector<std::string>>{{},
                                             {basic("prometheus:wrong")},
                                             {basic("someone:s3cret:with-colon")},
                                             {basic("prometheus:s3cret:with-colo")},
                                             {basic("prometheus")},
                                             {"Authorization: Basic !!not-base64!!"},
                                             {"Authorization: Bearer s3cret:with-colon"}}) {
    EXPECT_EQ(status_line(headers), "HTTP/1.1 401 Unauthorized")
        << (headers.empty() ? "no header" : headers[0]);
  }
  absl::StatusOr<std::string> denied = HttpGet((*endpoint)->port(), "/metrics", "1.1");
  ASSERT_TRUE(denied.ok());
  EXPECT_THAT(*denied, HasSubstr("WWW-Authenticate: Basic realm=\"kldriftd metrics\"\r\n"));
  EXPECT_THAT(*denied, Not(HasSubstr("kldrift_")));
  EXPECT_EQ(status_line({basic("prometheus:s3cret:with-colon")}), "HTTP/1.1 200 OK");
}

TEST(MetricsEndpointTest, RejectsAddressesThatAreNotHostPort) {
  auto metrics = std::make_shared<DriftMetrics>();
  for (const std::string address : {"nonsense", ":9464", "127.0.0.1:", ""}) {
    absl::StatusOr<std::unique_ptr<MetricsEndpoint>> endpoint =
        MetricsEndpoint::Start(address, metrics);
    EXPECT_EQ(endpoint.status().code(), absl::StatusCode::kInvalidArgument)
        << "\"" << address << "\": " << endpoint.status();
    EXPECT_THAT(endpoint.status().message(), HasSubstr("HOST:PORT")) << address;
  }
}

// ---------------------------------------------------------------------------------------------
// Concurrency.

TEST(DriftMetricsTest, ConcurrentIngestEvaluateCollectAndDelete) {
  Harness h(TopBins(2));
  constexpr int kIngesters = 3;
  constexpr int kBatches = 120;
  constexpr int kCollects = 150;
  constexpr double kPerStreamPerBatch = 10;  // 1 + 2 + 3 + 4.
  std::vector<StreamKey> keys;
  for (int i = 0; i < 2 * kIngesters; ++i) {
    keys.push_back({"conc", "v1", absl::StrCat("s", i)});
    ASSERT_NE(h.Put(PreBinned(keys.back(), {25, 25, 25, 25}, FastPolicy())), nullptr);
  }

  std::atomic<int> failures{0};
  std::atomic<int> regressions{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kIngesters; ++t) {
    threads.emplace_back([&h, &keys, &failures, t] {
      const std::string client = absl::StrCat("client-", t);
      for (int i = 1; i <= kBatches; ++i) {
        const IngestResult r = h.engine.Ingest(
            MakeBatch(client, i, "conc",
                      {Hist(keys[2 * t], {1, 2, 3, 4}), Hist(keys[2 * t + 1], {4, 3, 2, 1})}));
        if (!r.status.ok() || r.duplicate) ++failures;
        if (i % 10 == 0) h.engine.Evaluate();
      }
    });
  }
  threads.emplace_back([&h, &regressions] {
    double last = 0;
    for (int i = 0; i < kCollects; ++i) {
      const Families f = h.Collect();
      const double observations = Sample(f, "kldrift_ingested_observations_total", {}).value_or(-1);
      if (observations < last) ++regressions;
      last = observations;
      if (i % 25 == 0) (void)Serialize(f);
      (void)h.metrics->stream_series();
    }
  });
  for (std::thread& t : threads) t.join();
  threads.clear();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(regressions.load(), 0);

  h.engine.Evaluate();
  Families f = h.Collect();
  EXPECT_THAT(Sample(f, "kldrift_ingested_batches_total", {}),
              Optional(Eq(static_cast<double>(kIngesters * kBatches))));
  EXPECT_THAT(Sample(f, "kldrift_ingested_observations_total", {}),
              Optional(Eq(kIngesters * kBatches * 2 * kPerStreamPerBatch)));
  for (const StreamKey& key : keys) {
    EXPECT_THAT(Sample(f, "kldrift_stream_ingested_observations_total", StreamLabels(key)),
                Optional(Eq(kBatches * kPerStreamPerBatch)))
        << key.ToString();
    EXPECT_THAT(Sample(f, "kldrift_window_samples", WindowLabels(key, "1h")),
                Optional(Eq(kBatches * kPerStreamPerBatch)))
        << key.ToString();
  }
  EXPECT_EQ(h.metrics->stream_series(), CountSeriesEverywhere(f, {{"model", "conc"}}));

  // One thread deletes every stream while another evaluates and a third scrapes: reports of
  // deleted streams that arrive late must not bring their series back.
  threads.emplace_back([&h] {
    for (int i = 0; i < 40; ++i) h.engine.Evaluate();
  });
  threads.emplace_back([&h] {
    for (int i = 0; i < 40; ++i) (void)h.Collect();
  });
  threads.emplace_back([&h, &keys, &failures] {
    for (const StreamKey& key : keys) {
      if (!h.engine.DeleteReference(key).ok()) ++failures;
    }
  });
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(h.metrics->stream_series(), 0u);
  f = h.Collect();
  EXPECT_EQ(CountSeriesEverywhere(f, {{"model", "conc"}}), 0u);
  EXPECT_THAT(Serialize(f), Not(HasSubstr("model=\"conc\"")));
}

// ---------------------------------------------------------------------------------------------
// The observer tick: the engine sends only what changed (full reports of windows whose totals
// changed, alert-only reports of windows whose alert alone moved), and the exposition is what
// evaluating every window in full gives.

// The per-stream series of a scrape (every line with a model label), sorted.
std::vector<std::string> StreamSeriesLines(const DriftMetrics& metrics) {
  std::string buffer;
  std::string text;
  metrics.WriteExposition(buffer, [&](absl::string_view piece) { absl::StrAppend(&text, piece); });
  std::vector<std::string> lines;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (absl::StrContains(line, "model=\"")) lines.emplace_back(line);
  }
  // Streams come in hash order, which differs between two tables.
  std::sort(lines.begin(), lines.end());
  return lines;
}

TEST(DriftMetricsTest, ObserverTickExportsWhatEvaluatingEveryWindowExports) {
  // `full` has a watcher, so its engine evaluates every window in full on every tick and hands
  // every report to the metrics; `tick` has the metrics alone, which get only what changed.
  // `on_demand` takes them on demand: a tick sends alert moves, a scrape asks for the rest.
  Harness full(TopBins(3));
  Harness tick(TopBins(3));
  Harness on_demand(TopBins(3));
  on_demand.metrics->SetReportSource([&on_demand] { on_demand.engine.RefreshObserver(); });
  std::vector<WindowReport> watched;
  full.engine.Watch({"m", "", "", false}, [&](const WindowReport& r) { watched.push_back(r); });
  std::vector<Harness*> both = {&full, &tick, &on_demand};

  constexpr size_t kHistogramStreams = 12;
  constexpr size_t kBins = 6;
  const Measure measures[] = {Measure::kKlCurrentReference, Measure::kPsi, Measure::kJsBits,
                              Measure::kChi2};
  auto key = [](size_t s) { return StreamKey{"m", "v1", absl::StrCat("s", s)}; };
  auto policy_of = [&](size_t s, int version) {
    AlertPolicy policy = FastPolicy({absl::Minutes(1), absl::Minutes(10)});
    policy.measure = measures[(s + version) % std::size(measures)];
    policy.warn_threshold = policy.measure == Measure::kChi2 ? 0.1 : 0.02;
    policy.critical_threshold = 3 * policy.warn_threshold;
    policy.min_samples = 30;
    if (s % 2 == 0) policy.for_duration = absl::Seconds(20);
    return policy;
  };
  auto put_histogram = [&](size_t s, int version) {
    std::vector<double> counts(kBins);
    for (size_t b = 0; b < kBins; ++b) counts[b] = 50 + 10 * static_cast<double>((b + s) % 4);
    for (Harness* h : both)
      ASSERT_NE(h->Put(PreBinned(key(s), counts, policy_of(s, version))), nullptr);
  };
  for (size_t s = 0; s < kHistogramStreams; ++s) put_histogram(s, 0);
  const StreamKey gaussian = key(100);
  const StreamKey policy_stream = key(101);
  for (Harness* h : both) {
    ASSERT_NE(h->Put(Gaussian(gaussian, {0, 1}, {1, 2})), nullptr);
    ASSERT_NE(h->Put(PolicyRef(policy_stream)), nullptr);
  }

  std::mt19937_64 rng(5);
  std::uniform_int_distribution<int> die(0, 5);
  std::uniform_real_distribution<double> unit(0, 1);
  size_t alert_moves_without_data = 0;
  for (int step = 0; step < 120; ++step) {
    SCOPED_TRACE(absl::StrCat("step ", step));
    std::vector<StreamData> data;
    if (die(rng) >= 2) {
      for (size_t s = 0; s < kHistogramStreams; ++s) {
        if (die(rng) < 3 || (s == 3 && step > 70)) continue;  // s3 is deleted at step 70.
        const double tilt = unit(rng) < 0.4 ? 0 : 2 * unit(rng);
        std::vector<double> counts(kBins);
        for (size_t b = 0; b < kBins; ++b) {
          counts[b] = std::floor(8 * (1 + tilt * static_cast<double>(b)) * unit(rng));
        }
        data.push_back(Hist(key(s), counts));
      }
      if (die(rng) < 3) data.push_back(GaussianStats(gaussian, 10, {unit(rng) * 10, 10}, {40, 60}));
      if (die(rng) < 3)
        data.push_back(LogProbs(policy_stream, {-0.1 - unit(rng), -2}, {-0.3, -1.5}));
    }
    if (!data.empty()) {
      for (Harness* h : both) h->SendOk("m", data);
    }
    if (step % 37 == 36) put_histogram(static_cast<size_t>(step) % kHistogramStreams, step);
    if (step == 70) {
      for (Harness* h : both) ASSERT_TRUE(h->engine.DeleteReference(key(3)).ok());
    }
    const std::vector<AlertStatus> before = [&] {
      std::vector<AlertStatus> alerts;
      for (const WindowReport& r : watched) alerts.push_back(r.alert);
      return alerts;
    }();
    watched.clear();
    for (Harness* h : both) h->engine.Evaluate();
    if (data.empty() && before.size() == watched.size()) {
      for (size_t i = 0; i < watched.size(); ++i) {
        alert_moves_without_data += !(before[i] == watched[i].alert);
      }
    }
    const std::vector<std::string> expected = StreamSeriesLines(*full.metrics);
    ASSERT_EQ(StreamSeriesLines(*tick.metrics), expected);
    ASSERT_EQ(StreamSeriesLines(*on_demand.metrics), expected);
    const int seconds[] = {1, 7, 13, 45};
    const absl::Duration advance = absl::Seconds(seconds[die(rng) % 4]);
    for (Harness* h : both) h->clock.Advance(advance);
  }
  // The scenario exercised alert-only reports: alerts that moved on a tick without new data.
  EXPECT_GT(alert_moves_without_data, 0u);
}

}  // namespace
}  // namespace kldrift
