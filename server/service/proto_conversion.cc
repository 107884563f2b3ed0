#include "server/service/proto_conversion.h"

#include <cmath>
#include <limits>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"

namespace kldrift {
namespace {

void ToProto(absl::Duration d, google::protobuf::Duration* out) {
  const int64_t seconds = absl::IDivDuration(d, absl::Seconds(1), &d);
  out->set_seconds(seconds);
  out->set_nanos(static_cast<int32_t>(absl::ToInt64Nanoseconds(d)));
}

void ToProto(absl::Time t, google::protobuf::Timestamp* out) {
  if (t == absl::InfinitePast() || t == absl::InfiniteFuture()) return;  // Unset.
  const int64_t seconds = absl::ToUnixSeconds(t);
  out->set_seconds(seconds);
  out->set_nanos(
      static_cast<int32_t>(absl::ToInt64Nanoseconds(t - absl::FromUnixSeconds(seconds))));
}

v1::AlertState ToProto(AlertState state) {
  switch (state) {
    case AlertState::kOk:
      return v1::ALERT_STATE_OK;
    case AlertState::kPending:
      return v1::ALERT_STATE_PENDING;
    case AlertState::kFiring:
      return v1::ALERT_STATE_FIRING;
  }
  return v1::ALERT_STATE_UNSPECIFIED;
}

v1::Severity ToProto(Severity severity) {
  switch (severity) {
    case Severity::kNone:
      return v1::SEVERITY_NONE;
    case Severity::kWarn:
      return v1::SEVERITY_WARN;
    case Severity::kCritical:
      return v1::SEVERITY_CRITICAL;
  }
  return v1::SEVERITY_UNSPECIFIED;
}

v1::ReferenceKind ToProto(ReferenceKind kind) {
  switch (kind) {
    case ReferenceKind::kNumeric:
      return v1::REFERENCE_KIND_NUMERIC;
    case ReferenceKind::kCategorical:
      return v1::REFERENCE_KIND_CATEGORICAL;
    case ReferenceKind::kPreBinned:
      return v1::REFERENCE_KIND_PRE_BINNED;
    case ReferenceKind::kGaussian:
      return v1::REFERENCE_KIND_GAUSSIAN;
    case ReferenceKind::kPairedLogProbs:
      return v1::REFERENCE_KIND_PAIRED_LOG_PROBS;
  }
  return v1::REFERENCE_KIND_UNSPECIFIED;
}

template <typename Repeated>
std::vector<double> ToVector(const Repeated& values) {
  return std::vector<double>(values.begin(), values.end());
}

}  // namespace

absl::StatusOr<absl::Time> FromProto(const google::protobuf::Timestamp& t,
                                     absl::string_view field) {
  if (t.nanos() < 0 || t.nanos() >= 1000000000) {
    return absl::InvalidArgumentError(absl::StrCat(field, ".nanos is out of range"));
  }
  return absl::FromUnixSeconds(t.seconds()) + absl::Nanoseconds(t.nanos());
}

absl::StatusOr<absl::Duration> FromProto(const google::protobuf::Duration& d,
                                         absl::string_view field) {
  if (d.nanos() <= -1000000000 || d.nanos() >= 1000000000 || (d.seconds() > 0 && d.nanos() < 0) ||
      (d.seconds() < 0 && d.nanos() > 0)) {
    return absl::InvalidArgumentError(absl::StrCat(field, " is not a valid duration"));
  }
  return absl::Seconds(d.seconds()) + absl::Nanoseconds(d.nanos());
}

StreamKey FromProto(const v1::StreamId& id) {
  return StreamKey{id.model(), id.model_version(), id.signal()};
}

void ToProto(const StreamKey& key, v1::StreamId* id) {
  id->set_model(key.model);
  id->set_model_version(key.model_version);
  id->set_signal(key.signal);
}

absl::StatusOr<AlertPolicy> FromProto(const v1::AlertPolicy& p) {
  AlertPolicy policy;
  if (p.windows_size() > 0) {
    policy.windows.clear();
    for (int i = 0; i < p.windows_size(); ++i) {
      absl::StatusOr<absl::Duration> w =
          FromProto(p.windows(i), absl::StrCat("policy.windows[", i, "]"));
      if (!w.ok()) return w.status();
      policy.windows.push_back(*w);
    }
  }
  if (p.has_alpha()) policy.alpha = p.alpha();
  if (!p.measure().empty()) {
    absl::StatusOr<Measure> measure = ParseMeasure(p.measure());
    if (!measure.ok()) return measure.status();
    policy.measure = *measure;
  }
  if (p.has_warn_threshold()) policy.warn_threshold = p.warn_threshold();
  if (p.has_critical_threshold()) {
    policy.critical_threshold = p.critical_threshold();
  } else if (p.has_warn_threshold()) {
    // Keep the default ratio (critical = 2.5 * warn) when only warn is given.
    policy.critical_threshold = 2.5 * p.warn_threshold();
  }
  if (p.has_clear_threshold()) policy.clear_threshold = p.clear_threshold();
  if (p.has_for_duration()) {
    absl::StatusOr<absl::Duration> d = FromProto(p.for_duration(), "policy.for_duration");
    if (!d.ok()) return d.status();
    policy.for_duration = *d;
  }
  if (p.has_min_samples()) policy.min_samples = p.min_samples();
  if (p.has_max_p_value()) policy.max_p_value = p.max_p_value();
  if (p.has_sub_buckets())
    policy.sub_buckets = static_cast<int>(std::min<uint32_t>(p.sub_buckets(), 1 << 20));
  return policy;
}

void ToProto(const AlertPolicy& policy, v1::AlertPolicy* out) {
  for (absl::Duration w : policy.windows) ToProto(w, out->add_windows());
  out->set_alpha(policy.alpha);
  out->set_measure(std::string(MeasureName(policy.measure)));
  out->set_warn_threshold(policy.warn_threshold);
  out->set_critical_threshold(policy.critical_threshold);
  out->set_clear_threshold(policy.EffectiveClearThreshold());
  ToProto(policy.for_duration, out->mutable_for_duration());
  if (policy.min_samples) out->set_min_samples(*policy.min_samples);
  out->set_max_p_value(policy.max_p_value);
  out->set_sub_buckets(static_cast<uint32_t>(policy.sub_buckets));
}

absl::StatusOr<ReferenceSpec> FromProto(const v1::PutReferenceRequest& request) {
  ReferenceSpec spec;
  spec.stream = FromProto(request.stream());
  switch (request.bins_case()) {
    case v1::PutReferenceRequest::kNumeric:
      spec.kind = ReferenceKind::kNumeric;
      spec.edges = ToVector(request.numeric().edges());
      break;
    case v1::PutReferenceRequest::kCategorical:
      spec.kind = ReferenceKind::kCategorical;
      spec.categories.assign(request.categorical().categories().begin(),
                             request.categorical().categories().end());
      break;
    case v1::PutReferenceRequest::kPreBinned:
      spec.kind = ReferenceKind::kPreBinned;
      spec.bins = request.pre_binned().bins();
      break;
    case v1::PutReferenceRequest::kGaussian:
      spec.kind = ReferenceKind::kGaussian;
      spec.gaussian.mean = ToVector(request.gaussian().mean());
      spec.gaussian.var = ToVector(request.gaussian().var());
      break;
    case v1::PutReferenceRequest::kPairedLogProbs:
      spec.kind = ReferenceKind::kPairedLogProbs;
      break;
    case v1::PutReferenceRequest::BINS_NOT_SET:
      return absl::InvalidArgumentError(
          "the reference has no kind: set numeric, categorical, pre_binned, gaussian or "
          "paired_log_probs");
  }
  switch (request.data_case()) {
    case v1::PutReferenceRequest::kCounts:
      spec.counts = ToVector(request.counts().counts());
      break;
    case v1::PutReferenceRequest::kValues:
      spec.values = ToVector(request.values().values());
      break;
    case v1::PutReferenceRequest::kLabels:
      spec.labels.emplace(request.labels().labels().begin(), request.labels().labels().end());
      break;
    case v1::PutReferenceRequest::kFromWindow: {
      WindowSource source;
      if (request.from_window().has_stream())
        source.stream = FromProto(request.from_window().stream());
      absl::StatusOr<absl::Duration> w =
          FromProto(request.from_window().window(), "from_window.window");
      if (!w.ok()) return w.status();
      source.window = *w;
      spec.from_window = source;
      break;
    }
    case v1::PutReferenceRequest::DATA_NOT_SET:
      break;
  }
  absl::StatusOr<AlertPolicy> policy = FromProto(request.policy());
  if (!policy.ok()) return policy.status();
  spec.policy = *std::move(policy);
  return spec;
}

void ToProto(const Reference& ref, v1::Reference* out, v1::ReferenceView view) {
  ToProto(ref.stream, out->mutable_stream());
  out->set_version(ref.version);
  out->set_kind(ToProto(ref.kind));
  if (ref.is_histogram()) {
    out->set_size(static_cast<uint32_t>(ref.layout->size()));
  } else if (ref.kind == ReferenceKind::kGaussian) {
    out->set_size(static_cast<uint32_t>(ref.gaussian.mean.size()));
  }
  ToProto(ref.policy, out->mutable_policy());
  ToProto(ref.created_at, out->mutable_created_at());
  if (view == v1::REFERENCE_VIEW_BASIC) return;
  switch (ref.kind) {
    case ReferenceKind::kNumeric:
      for (double e : ref.layout->edges()) out->mutable_numeric()->add_edges(e);
      break;
    case ReferenceKind::kCategorical:
      for (const std::string& c : ref.layout->categories())
        out->mutable_categorical()->add_categories(c);
      break;
    case ReferenceKind::kPreBinned:
      out->mutable_pre_binned()->set_bins(static_cast<uint32_t>(ref.layout->size()));
      break;
    case ReferenceKind::kGaussian:
      for (double m : ref.gaussian.mean) out->mutable_gaussian()->add_mean(m);
      for (double v : ref.gaussian.var) out->mutable_gaussian()->add_var(v);
      break;
    case ReferenceKind::kPairedLogProbs:
      break;
  }
  if (ref.is_histogram()) {
    for (double c : ref.counts) out->add_counts(c);
    for (size_t bin = 0; bin < ref.layout->size(); ++bin)
      out->add_bin_labels(ref.layout->BinLabel(bin));
  }
}

absl::StatusOr<IngestBatch> FromProto(const v1::IngestRequest& request) {
  IngestBatch batch;
  batch.client_id = request.client_id();
  batch.sequence = request.sequence();
  batch.model = request.model();
  if (request.has_event_time()) {
    absl::StatusOr<absl::Time> t = FromProto(request.event_time(), "event_time");
    if (!t.ok()) return t.status();
    batch.event_time = *t;
  }
  batch.streams.reserve(request.streams_size());
  for (int i = 0; i < request.streams_size(); ++i) {
    const v1::StreamBatch& in = request.streams(i);
    // Built where it stays: moving a StreamData copies its two short names again.
    StreamData& data = batch.streams.emplace_back();
    data.model_version = in.model_version();
    data.signal = in.signal();
    data.reference_version = in.reference_version();
    switch (in.data_case()) {
      case v1::StreamBatch::kHistogram:
        data.type = StreamData::Type::kHistogram;
        data.lent_numbers = in.histogram().counts();
        break;
      case v1::StreamBatch::kValues:
        data.type = StreamData::Type::kValues;
        data.lent_numbers = in.values().values();
        break;
      case v1::StreamBatch::kLabels:
        data.type = StreamData::Type::kLabels;
        data.labels.assign(in.labels().labels().begin(), in.labels().labels().end());
        break;
      case v1::StreamBatch::kProbabilities:
        data.type = StreamData::Type::kProbabilities;
        data.lent_numbers = in.probabilities().probabilities();
        break;
      case v1::StreamBatch::kGaussian:
        data.type = StreamData::Type::kGaussian;
        data.gaussian_count = in.gaussian().count();
        data.gaussian_sum = ToVector(in.gaussian().sum());
        data.gaussian_sum_squares = ToVector(in.gaussian().sum_squares());
        break;
      case v1::StreamBatch::kLogProbs:
        data.type = StreamData::Type::kLogProbs;
        data.log_p_current = ToVector(in.log_probs().log_p_current());
        data.log_p_reference = ToVector(in.log_probs().log_p_reference());
        break;
      case v1::StreamBatch::DATA_NOT_SET:
        return absl::InvalidArgumentError(
            absl::StrCat("streams[", i, "] (signal \"", in.signal(),
                         "\") carries no data: set histogram, "
                         "values, labels, probabilities, gaussian or log_probs"));
    }
  }
  return batch;
}

google::protobuf::ArenaOptions IngestArenaOptions() {
  google::protobuf::ArenaOptions options;
  options.start_block_size = 16 << 10;
  options.max_block_size = 128 << 10;
  return options;
}

void ToProto(const WindowReport& report, v1::DriftReport* out) {
  ToProto(report.stream, out->mutable_stream());
  ToProto(report.window, out->mutable_window());
  out->set_window_name(FormatWindow(report.window));
  out->set_samples(report.samples);
  out->set_enough_samples(report.enough_samples);
  if (report.histogram) {
    const DriftMeasures& m = *report.histogram;
    v1::HistogramDrift* h = out->mutable_histogram();
    h->set_kl_current_reference(m.kl_current_reference);
    h->set_kl_reference_current(m.kl_reference_current);
    h->set_jeffreys(m.jeffreys);
    h->set_psi(m.psi);
    h->set_js_bits(m.js_bits);
    h->set_hellinger(m.hellinger);
    h->set_total_variation(m.total_variation);
    h->set_l_inf(m.l_inf);
    h->set_chi2(m.chi2);
    h->set_g_test_p_value(m.g_test_p_value);
    h->set_alpha(m.alpha);
    for (const BinContribution& bin : m.top_bins) {
      v1::BinContribution* b = h->add_top_bins();
      b->set_bin(bin.bin);
      b->set_label(bin.label);
      b->set_current_share(bin.current_share);
      b->set_reference_share(bin.reference_share);
      b->set_contribution(bin.contribution);
    }
  } else if (report.gaussian) {
    v1::GaussianDrift* g = out->mutable_gaussian();
    g->set_kl_current_reference(report.gaussian->kl.forward);
    g->set_kl_reference_current(report.gaussian->kl.reverse);
    for (double m : report.gaussian->current_mean) g->add_current_mean(m);
    for (double v : report.gaussian->current_var) g->add_current_var(v);
  } else if (report.policy) {
    v1::PolicyDrift* p = out->mutable_policy();
    p->mutable_k1()->set_mean(report.policy->k1.mean);
    p->mutable_k1()->set_standard_error(report.policy->k1.standard_error);
    p->mutable_k2()->set_mean(report.policy->k2.mean);
    p->mutable_k2()->set_standard_error(report.policy->k2.standard_error);
    p->mutable_k3()->set_mean(report.policy->k3.mean);
    p->mutable_k3()->set_standard_error(report.policy->k3.standard_error);
  }
  out->set_measure(report.measure);
  out->set_measure_value(report.measure_value);
  out->set_alert_state(ToProto(report.alert.state));
  out->set_severity(ToProto(report.alert.severity));
  ToProto(report.alert.since, out->mutable_state_since());
  out->set_reference_version(report.reference_version);
  ToProto(report.evaluated_at, out->mutable_evaluated_at());
}

// --- Model export / import -------------------------------------------------------------------

namespace {

constexpr int64_t kNeverPast = std::numeric_limits<int64_t>::min();
constexpr int64_t kNeverFuture = std::numeric_limits<int64_t>::max();

int64_t ToMicros(absl::Time t) {
  if (t == absl::InfinitePast()) return kNeverPast;
  if (t == absl::InfiniteFuture()) return kNeverFuture;
  return absl::ToUnixMicros(t);
}

absl::Time FromMicros(int64_t micros) {
  if (micros == kNeverPast) return absl::InfinitePast();
  if (micros == kNeverFuture) return absl::InfiniteFuture();
  return absl::FromUnixMicros(micros);
}

// A stored version as the PutReference request that describes it (counts in the full layout).
v1::PutReferenceRequest AsPutRequest(const v1::Reference& r) {
  v1::PutReferenceRequest put;
  *put.mutable_stream() = r.stream();
  switch (r.kind()) {
    case v1::REFERENCE_KIND_NUMERIC:
      *put.mutable_numeric() = r.numeric();
      break;
    case v1::REFERENCE_KIND_CATEGORICAL:
      *put.mutable_categorical() = r.categorical();
      break;
    case v1::REFERENCE_KIND_PRE_BINNED:
      *put.mutable_pre_binned() = r.pre_binned();
      break;
    case v1::REFERENCE_KIND_GAUSSIAN:
      *put.mutable_gaussian() = r.gaussian();
      break;
    case v1::REFERENCE_KIND_PAIRED_LOG_PROBS:
      put.mutable_paired_log_probs();
      break;
    default:
      break;  // Left without bins: FromProto names the problem.
  }
  if (r.counts_size() > 0) *put.mutable_counts()->mutable_counts() = r.counts();
  *put.mutable_policy() = r.policy();
  return put;
}

}  // namespace

void ToProto(const StreamExport& in, v1::StreamExport* out) {
  for (const auto& version : in.versions) {
    ToProto(*version, out->add_versions(), v1::REFERENCE_VIEW_FULL);
  }
  for (const StreamExport::Window& window : in.windows) {
    v1::WindowExport* w = out->add_windows();
    ToProto(window.length, w->mutable_length());
    for (const SlidingWindow::SubBucket& b : window.sub_buckets) {
      v1::SubBucketExport* sub = w->add_sub_buckets();
      ToProto(b.start, sub->mutable_start());
      sub->mutable_values()->Add(b.values.begin(), b.values.end());
    }
    v1::AlertStateExport* alert = w->mutable_alert();
    alert->set_state(ToProto(window.alert.state));
    alert->set_severity(ToProto(window.alert.severity));
    alert->set_since_micros(ToMicros(window.alert.since));
    alert->set_over_since_micros(ToMicros(window.alert.over_since));
    alert->set_below_clear_since_micros(ToMicros(window.alert.below_clear_since));
  }
}

absl::StatusOr<StreamExport> FromProto(const v1::StreamExport& in, const ReferenceLimits& limits) {
  StreamExport out;
  for (const v1::Reference& version : in.versions()) {
    const std::string name = absl::StrCat("version ", version.version(), " of stream ",
                                          FromProto(version.stream()).ToString());
    absl::StatusOr<ReferenceSpec> spec = FromProto(AsPutRequest(version));
    if (!spec.ok()) {
      return absl::Status(spec.status().code(),
                          absl::StrCat(name, " in the export: ", spec.status().message()));
    }
    absl::StatusOr<absl::Time> created = FromProto(version.created_at(), "created_at");
    if (!created.ok()) return created.status();
    if (version.version() == 0 ||
        (!out.versions.empty() && version.version() <= out.versions.back()->version)) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, " in the export: versions must be positive and increasing"));
    }
    absl::StatusOr<std::shared_ptr<const Reference>> built =
        BuildReference(*spec, version.version(), *created, limits);
    if (!built.ok()) {
      return absl::Status(built.status().code(),
                          absl::StrCat(name, " in the export: ", built.status().message()));
    }
    out.versions.push_back(*std::move(built));
  }
  for (const v1::WindowExport& w : in.windows()) {
    StreamExport::Window window;
    absl::StatusOr<absl::Duration> length = FromProto(w.length(), "window length");
    if (!length.ok()) return length.status();
    window.length = *length;
    for (const v1::SubBucketExport& b : w.sub_buckets()) {
      absl::StatusOr<absl::Time> start = FromProto(b.start(), "sub-bucket start");
      if (!start.ok()) return start.status();
      for (double v : b.values()) {
        if (!std::isfinite(v)) {
          return absl::InvalidArgumentError("a sub-bucket of the export holds a non-finite value");
        }
      }
      window.sub_buckets.push_back({*start, {b.values().begin(), b.values().end()}});
    }
    const v1::AlertStateExport& a = w.alert();
    switch (a.state()) {
      case v1::ALERT_STATE_PENDING:
        window.alert.state = AlertState::kPending;
        break;
      case v1::ALERT_STATE_FIRING:
        window.alert.state = AlertState::kFiring;
        break;
      default:
        window.alert.state = AlertState::kOk;
    }
    switch (a.severity()) {
      case v1::SEVERITY_WARN:
        window.alert.severity = Severity::kWarn;
        break;
      case v1::SEVERITY_CRITICAL:
        window.alert.severity = Severity::kCritical;
        break;
      default:
        window.alert.severity = Severity::kNone;
    }
    window.alert.since = FromMicros(a.since_micros());
    window.alert.over_since = FromMicros(a.over_since_micros());
    window.alert.below_clear_since = FromMicros(a.below_clear_since_micros());
    out.windows.push_back(std::move(window));
  }
  return out;
}

}  // namespace kldrift
