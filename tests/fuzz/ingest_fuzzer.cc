// libFuzzer harness over request validation and the engine: whatever a client sends, kldriftd must
// answer with a canonical error or apply it, and never crash, leak, hit undefined behaviour or
// corrupt its state.
//
// The input is a serialized kldrift.fuzz.FuzzInput (tests/fuzz/fuzz_input.proto): a sequence of
// API requests run against one fresh, memory-only DriftEngine on a fake clock. Each request is
// decoded and applied the way KlDriftService does (server/service/kldrift_service.cc):
// FromProto (server/service/proto_conversion.h), the engine call, ToProto of every reply, and
// ToGrpcStatus of every error. Besides the sanitizers, the harness checks:
//   - every error has a canonical code the API documents and a message, bounded by ToGrpcStatus;
//   - references: versions count up from 1 per stream, a failed PutReference or DeleteReference
//     changes nothing, ListReferences pages through exactly the streams that exist, in order;
//   - ingest: a rejected batch changes no window of any stream it names (all or nothing), an
//     applied one never lowers a window's samples, duplicates are acknowledged, not applied;
//   - reports (GetDrift and the evaluation tick, through a watcher as WatchDrift gets them):
//     samples >= 0, no NaN measure, distances in [0, 1], divergences in [0, +inf], p-values in
//     [0, 1], top bins in range and largest first, alert state consistent with its severity;
//   - every reply survives protobuf serialization (e.g. labels stay valid UTF-8).
// Limits are small (EngineOptions below) so that no input can run the fuzzer out of memory
// legitimately.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "fuzz_input.pb.h"
#include "google/protobuf/stubs/logging.h"
#include "kldrift/v1/kldrift.pb.h"
#include "server/core/alert_policy.h"
#include "server/core/clock.h"
#include "server/core/drift_engine.h"
#include "server/core/reference.h"
#include "server/core/stream_key.h"
#include "server/service/kldrift_service.h"
#include "server/service/proto_conversion.h"
#include "server/service/status_conversion.h"

namespace kldrift {
namespace {

// Operations run per input: enough for long interleavings, few enough to keep an input fast.
constexpr int kMaxOperations = 64;
// Watchers registered per input (one per model, as WatchDrift clients would).
constexpr size_t kMaxWatchers = 8;
// Clock steps are clamped to these.
constexpr absl::Duration kMaxClockStep = absl::Hours(24 * 365);
constexpr int64_t kMaxNanosStep = 1'000'000'000;
// Pages read when walking ListReferences to its end (more than max_streams).
constexpr int kMaxPages = 200;

EngineOptions FuzzEngineOptions() {
  EngineOptions options;
  options.store = nullptr;
  // Worst case per stream: 8 windows x 122 sub-buckets x 1024 bins x 8 B = 8 MB; 16 streams.
  options.reference_limits.max_bins = 1024;
  options.reference_limits.max_dimensions = 256;
  options.max_streams = 16;
  options.max_observations_per_batch = 100000;
  return options;
}

[[noreturn]] void Fail(const std::string& what) {
  std::fprintf(stderr, "ingest_fuzzer: invariant violated: %s\n", what.c_str());
  std::fflush(stderr);
  std::abort();
}

#define FUZZ_CHECK(condition, ...)                                                  \
  do {                                                                              \
    if (!(condition)) ::kldrift::Fail(absl::StrCat(#condition, ": ", __VA_ARGS__)); \
  } while (0)

// KLDRIFT_FUZZ_TRACE=1 prints every call and its outcome (for reading a regression input).
bool trace = false;

void Trace(absl::string_view call, const absl::Status& status, absl::string_view detail = "") {
  if (trace)
    std::fprintf(stderr, "  %s -> %s %s\n", std::string(call).c_str(), status.ToString().c_str(),
                 std::string(detail).c_str());
}

bool SameDouble(double a, double b) { return a == b || (std::isnan(a) && std::isnan(b)); }

// Codes the API documents for requests (README "kldriftd": Errors). A memory-only engine has no
// store to be UNAVAILABLE or to lose data, and nothing runs concurrently to abort a call.
bool IsDocumentedCode(absl::StatusCode code) {
  return code == absl::StatusCode::kInvalidArgument || code == absl::StatusCode::kNotFound ||
         code == absl::StatusCode::kFailedPrecondition ||
         code == absl::StatusCode::kResourceExhausted;
}

// An error as the service would send it.
void CheckError(const absl::Status& status, absl::string_view where) {
  FUZZ_CHECK(!status.ok(), where);
  FUZZ_CHECK(IsDocumentedCode(status.code()), where, ": ", status.ToString());
  FUZZ_CHECK(!status.message().empty(), where, ": code ", status.code(), " without a message");
  const grpc::Status grpc_status = ToGrpcStatus(status);
  FUZZ_CHECK(static_cast<int>(grpc_status.error_code()) == static_cast<int>(status.code()), where);
  FUZZ_CHECK(grpc_status.error_message().size() <= kMaxStatusMessageBytes, where);
  if (status.message().size() <= kMaxStatusMessageBytes) {
    FUZZ_CHECK(grpc_status.error_message() == status.message(), where);
  }
}

// A reply the service would send must serialize and parse back as the same message.
template <typename Message>
void CheckRoundTrip(const Message& message, absl::string_view where) {
  std::string bytes;
  FUZZ_CHECK(message.SerializeToString(&bytes), where, ": does not serialize");
  Message back;
  FUZZ_CHECK(back.ParseFromString(bytes), where, ": does not parse back");
  std::string again;
  FUZZ_CHECK(back.SerializeToString(&again) && again == bytes, where, ": changed in a round trip");
}

void CheckUnit(double value, absl::string_view name) {
  FUZZ_CHECK(value >= 0 && value <= 1, name, " = ", value, " is outside [0, 1]");
}

void CheckDivergence(double value, absl::string_view name) {
  FUZZ_CHECK(value >= 0, name, " = ", value, " is negative or NaN");  // +inf allowed.
}

bool IsHistogramKind(ReferenceKind kind) {
  return kind == ReferenceKind::kNumeric || kind == ReferenceKind::kCategorical ||
         kind == ReferenceKind::kPreBinned;
}

void CheckReport(const WindowReport& report, size_t top_bins, absl::Time now,
                 absl::string_view where) {
  const std::string at =
      absl::StrCat(where, " ", report.stream.ToString(), " window ", FormatWindow(report.window));
  FUZZ_CHECK(report.window > absl::ZeroDuration(), at);
  FUZZ_CHECK(report.samples >= 0, at, ": samples = ", report.samples);
  FUZZ_CHECK(!report.eligible || report.enough_samples, at, ": eligible without enough samples");
  FUZZ_CHECK(report.reference_version >= 1, at);
  FUZZ_CHECK(report.evaluated_at == now, at);
  FUZZ_CHECK(!std::isnan(report.measure_value), at, ": measure ", report.measure, " is NaN");
  FUZZ_CHECK(!report.measure.empty(), at);
  FUZZ_CHECK(report.warn_threshold <= report.critical_threshold, at);
  FUZZ_CHECK(report.clear_threshold <= report.warn_threshold, at);
  const AlertStatus& alert = report.alert;
  FUZZ_CHECK((alert.state == AlertState::kOk) == (alert.severity == Severity::kNone), at,
             ": state ", AlertStateName(alert.state), " with severity ",
             SeverityName(alert.severity));

  const int kinds =
      report.histogram.has_value() + report.gaussian.has_value() + report.policy.has_value();
  FUZZ_CHECK(kinds <= 1, at, ": several kinds of drift data");
  if (IsHistogramKind(report.kind)) {
    FUZZ_CHECK(!report.gaussian && !report.policy, at);
    if (report.samples > 0 && std::isfinite(report.samples)) {
      FUZZ_CHECK(report.histogram.has_value(), at, ": samples = ", report.samples,
                 " but no measures");
    }
  } else if (report.kind == ReferenceKind::kGaussian) {
    FUZZ_CHECK(!report.histogram && !report.policy, at);
  } else {
    FUZZ_CHECK(!report.histogram && !report.gaussian, at);
  }
  if (report.histogram) {
    const DriftMeasures& m = *report.histogram;
    CheckDivergence(m.kl_current_reference, "kl_current_reference");
    CheckDivergence(m.kl_reference_current, "kl_reference_current");
    CheckDivergence(m.jeffreys, "jeffreys");
    CheckDivergence(m.psi, "psi");
    CheckDivergence(m.chi2, "chi2");
    CheckUnit(m.js_bits, "js_bits");
    CheckUnit(m.hellinger, "hellinger");
    CheckUnit(m.total_variation, "total_variation");
    CheckUnit(m.l_inf, "l_inf");
    CheckUnit(m.g_test_p_value, "g_test_p_value");
    FUZZ_CHECK(m.alpha >= 0 && std::isfinite(m.alpha), at);
    FUZZ_CHECK(m.top_bins.size() <= top_bins, at, ": ", m.top_bins.size(), " top bins > ",
               top_bins);
    for (size_t i = 0; i < m.top_bins.size(); ++i) {
      const BinContribution& bin = m.top_bins[i];
      CheckUnit(bin.current_share, "top_bins.current_share");
      CheckUnit(bin.reference_share, "top_bins.reference_share");
      FUZZ_CHECK(!std::isnan(bin.contribution), at, ": top bin ", bin.bin, " contribution NaN");
      FUZZ_CHECK(!bin.label.empty(), at, ": top bin ", bin.bin, " has no label");
      if (i > 0) {
        FUZZ_CHECK(m.top_bins[i - 1].contribution >= bin.contribution, at,
                   ": top bins not largest first");
      }
    }
  }
  if (report.gaussian) {
    const GaussianDriftData& g = *report.gaussian;
    CheckDivergence(g.kl.forward, "gaussian kl_current_reference");
    CheckDivergence(g.kl.reverse, "gaussian kl_reference_current");
    FUZZ_CHECK(g.current_mean.size() == g.current_var.size(), at);
  }
  if (report.policy) {
    for (const kernels::EstimatorSummary* e :
         {&report.policy->k1, &report.policy->k2, &report.policy->k3}) {
      FUZZ_CHECK(!std::isnan(e->mean), at, ": policy estimate NaN");
      FUZZ_CHECK(e->standard_error >= 0, at, ": standard error ", e->standard_error);
    }
  }

  v1::DriftReport proto;
  ToProto(report, &proto);
  FUZZ_CHECK(!proto.window_name().empty(), at);
  FUZZ_CHECK(proto.samples() == report.samples, at);
  CheckRoundTrip(proto, at);
}

void CheckReference(const Reference& ref, absl::string_view where) {
  const std::string at = absl::StrCat(where, " ", ref.stream.ToString(), " v", ref.version);
  FUZZ_CHECK(ValidateStreamKey(ref.stream).ok(), at);
  FUZZ_CHECK(ValidatePolicy(ref.policy).ok(), at,
             ": installed with an invalid policy: ", ValidatePolicy(ref.policy).ToString());
  FUZZ_CHECK(ref.is_histogram() == IsHistogramKind(ref.kind), at);
  if (ref.is_histogram()) {
    FUZZ_CHECK(ref.counts.size() == ref.layout->size(), at);
    FUZZ_CHECK(ref.profile != nullptr && ref.profile->size() == ref.layout->size(), at);
    double total = 0;
    for (double c : ref.counts) {
      FUZZ_CHECK(std::isfinite(c) && c >= 0, at, ": count ", c);
      total += c;
    }
    FUZZ_CHECK(total > 0, at, ": a reference without data");
  }
  v1::Reference proto;
  ToProto(ref, &proto);
  if (ref.is_histogram()) {
    FUZZ_CHECK(static_cast<size_t>(proto.counts_size()) == ref.layout->size(), at);
    FUZZ_CHECK(static_cast<size_t>(proto.bin_labels_size()) == ref.layout->size(), at);
  }
  CheckRoundTrip(proto, at);
}

// What the harness expects the engine to hold, and the calls it makes.
class Harness {
 public:
  Harness() : engine_(FuzzEngineOptions(), &clock_) {}

  void Run(const fuzz::Operation& op) {
    switch (op.op_case()) {
      case fuzz::Operation::kPutReference:
        PutReference(op.put_reference());
        break;
      case fuzz::Operation::kIngest:
        Ingest(op.ingest());
        break;
      case fuzz::Operation::kGetDrift:
        GetDrift(op.get_drift());
        break;
      case fuzz::Operation::kGetReference:
        GetReference(op.get_reference());
        break;
      case fuzz::Operation::kListReferences:
        ListReferences(op.list_references());
        break;
      case fuzz::Operation::kDeleteReference:
        DeleteReference(op.delete_reference());
        break;
      case fuzz::Operation::kEvaluate:
        Evaluate();
        break;
      case fuzz::Operation::kAdvanceSeconds: {
        Trace("AdvanceSeconds", absl::OkStatus(), absl::StrCat(op.advance_seconds()));
        const absl::Duration step =
            std::clamp(absl::Seconds(op.advance_seconds()), -kMaxClockStep, kMaxClockStep);
        clock_.Advance(step);
        break;
      }
      case fuzz::Operation::kAdvanceNanos:
        clock_.Advance(absl::Nanoseconds(
            std::clamp<int64_t>(op.advance_nanos(), -kMaxNanosStep, kMaxNanosStep)));
        break;
      case fuzz::Operation::OP_NOT_SET:
        break;
    }
    CheckStreams();
  }

 private:
  // Every stream the harness expects is there with its latest version, and nothing else.
  void CheckStreams() {
    FUZZ_CHECK(engine_.stream_count() == latest_.size(), "engine holds ", engine_.stream_count(),
               " streams, expected ", latest_.size());
    for (const auto& [key, version] : latest_) {
      absl::StatusOr<std::shared_ptr<const Reference>> ref = engine_.GetReference(key, 0);
      FUZZ_CHECK(ref.ok(), key.ToString(), ": ", ref.status().ToString());
      FUZZ_CHECK((*ref)->version == version, key.ToString(), " is at version ", (*ref)->version,
                 ", expected ", version);
    }
  }

  void PutReference(const v1::PutReferenceRequest& request) {
    absl::StatusOr<ReferenceSpec> spec = FromProto(request);
    Trace("PutReference FromProto", spec.status());
    if (!spec.ok()) {
      CheckError(spec.status(), "PutReference FromProto");
      FUZZ_CHECK(spec.status().code() == absl::StatusCode::kInvalidArgument,
                 spec.status().ToString());
      return;
    }
    absl::StatusOr<std::shared_ptr<const Reference>> ref = engine_.PutReference(*spec);
    Trace("PutReference", ref.status(), ref.ok() ? absl::StrCat("v", (*ref)->version) : "");
    if (!ref.ok()) {
      CheckError(ref.status(), "PutReference");
      return;
    }
    auto it = latest_.find(spec->stream);
    const uint64_t expected = it == latest_.end() ? 1 : it->second + 1;
    FUZZ_CHECK((*ref)->version == expected, "PutReference returned version ", (*ref)->version,
               ", expected ", expected);
    FUZZ_CHECK((*ref)->stream == spec->stream, "PutReference stored another stream");
    latest_[spec->stream] = expected;
    CheckReference(**ref, "PutReference");
    v1::PutReferenceResponse response;
    response.set_version((*ref)->version);
    ToProto(**ref, response.mutable_reference());
    CheckRoundTrip(response, "PutReferenceResponse");
    MaybeWatch(spec->stream.model);
  }

  // One whole-model watcher per model, as WatchDrift clients (state changes only, every other).
  void MaybeWatch(const std::string& model) {
    if (watched_.size() >= kMaxWatchers || !watched_.insert(model).second) return;
    WatchFilter filter;
    filter.model = model;
    filter.state_changes_only = watched_.size() % 2 == 0;
    engine_.Watch(filter, [this, model](const WindowReport& report) {
      FUZZ_CHECK(report.stream.model == model, "watcher of ", model, " got ",
                 report.stream.ToString());
      CheckReport(report, /*top_bins=*/SIZE_MAX, clock_.Now(), "WatchDrift");
      ++watched_reports_;
    });
  }

  // The samples and measure of each window of `key` (empty if the stream does not exist).
  std::vector<std::pair<double, double>> Fingerprint(const StreamKey& key) {
    std::vector<std::pair<double, double>> windows;
    absl::StatusOr<std::vector<WindowReport>> reports = engine_.GetDrift(key, std::nullopt, 0);
    if (!reports.ok()) return windows;
    for (const WindowReport& r : *reports) windows.emplace_back(r.samples, r.measure_value);
    return windows;
  }

  void Ingest(const v1::IngestRequest& request) {
    absl::StatusOr<IngestBatch> batch = FromProto(request);
    Trace("Ingest FromProto", batch.status());
    if (!batch.ok()) {
      CheckError(batch.status(), "Ingest FromProto");
      FUZZ_CHECK(batch.status().code() == absl::StatusCode::kInvalidArgument,
                 batch.status().ToString());
      return;
    }
    std::map<StreamKey, std::vector<std::pair<double, double>>> before;
    for (const StreamData& data : batch->streams) {
      StreamKey key{batch->model, data.model_version, data.signal};
      if (latest_.count(key) != 0) before[key] = Fingerprint(key);
    }
    const IngestResult result = engine_.Ingest(*batch);
    Trace("Ingest", result.status,
          absl::StrCat("acked ", result.acked_sequence, result.duplicate ? " duplicate" : ""));
    if (result.duplicate) {
      FUZZ_CHECK(result.status.ok(), "a duplicate with an error");
      FUZZ_CHECK(result.acked_sequence >= batch->sequence, "duplicate acked ",
                 result.acked_sequence, " < sequence ", batch->sequence);
    } else if (!result.status.ok()) {
      CheckError(result.status, "Ingest");
    }
    const bool applied = result.status.ok() && !result.duplicate;
    if (!result.duplicate && ValidateName("client_id", batch->client_id, false).ok() &&
        batch->sequence != 0) {
      FUZZ_CHECK(result.acked_sequence == batch->sequence, "acked ", result.acked_sequence,
                 " for sequence ", batch->sequence, ": ", result.status.ToString());
    }
    for (const auto& [key, windows] : before) {
      const std::vector<std::pair<double, double>> after = Fingerprint(key);
      FUZZ_CHECK(after.size() == windows.size(), key.ToString(), ": windows changed by Ingest");
      for (size_t i = 0; i < after.size(); ++i) {
        if (applied) {
          FUZZ_CHECK(after[i].first >= windows[i].first, key.ToString(), ": window ", i,
                     " lost samples on an applied batch: ", windows[i].first, " -> ",
                     after[i].first);
        } else {
          FUZZ_CHECK(SameDouble(after[i].first, windows[i].first) &&
                         SameDouble(after[i].second, windows[i].second),
                     key.ToString(), ": window ", i, " changed by a batch that was not applied (",
                     result.status.ToString(), "): samples ", windows[i].first, " -> ",
                     after[i].first);
        }
      }
    }
    // The response the service would write.
    v1::IngestResponse response;
    response.set_acked_sequence(result.acked_sequence);
    if (!result.status.ok()) {
      v1::BatchError* error = response.add_errors();
      error->set_sequence(batch->sequence);
      const grpc::Status grpc_status = ToGrpcStatus(result.status);
      error->set_code(static_cast<int32_t>(grpc_status.error_code()));
      error->set_message(grpc_status.error_message());
    }
    // Error messages echo names, which are validated, and numbers: always valid UTF-8.
    CheckRoundTrip(response, "IngestResponse");
  }

  void GetDrift(const v1::GetDriftRequest& request) {
    std::optional<absl::Duration> window;
    if (request.has_window()) {
      absl::StatusOr<absl::Duration> w = FromProto(request.window(), "window");
      if (!w.ok()) {
        CheckError(w.status(), "GetDrift window");
        return;
      }
      window = *w;
    }
    const ServiceOptions service;
    const uint32_t top_bins =
        request.top_bins() == 0 ? service.default_top_bins : request.top_bins();
    if (top_bins > service.max_top_bins) return;  // The service answers INVALID_ARGUMENT.
    const StreamKey key = FromProto(request.stream());
    absl::StatusOr<std::vector<WindowReport>> reports = engine_.GetDrift(key, window, top_bins);
    if (trace && reports.ok()) {
      for (const WindowReport& r : *reports) {
        Trace("GetDrift", absl::OkStatus(),
              absl::StrCat(FormatWindow(r.window), " samples ", r.samples, " ", r.measure, " ",
                           r.measure_value, " state ", AlertStateName(r.alert.state)));
      }
    } else {
      Trace("GetDrift", reports.status());
    }
    auto it = latest_.find(key);
    if (!reports.ok()) {
      CheckError(reports.status(), "GetDrift");
      FUZZ_CHECK(it == latest_.end() || window.has_value(), key.ToString(),
                 " exists but GetDrift failed: ", reports.status().ToString());
      return;
    }
    FUZZ_CHECK(it != latest_.end(), "GetDrift of a stream that does not exist: ", key.ToString());
    absl::StatusOr<std::shared_ptr<const Reference>> ref = engine_.GetReference(key, 0);
    FUZZ_CHECK(ref.ok(), key.ToString());
    const size_t expected = window ? 1 : (*ref)->policy.windows.size();
    FUZZ_CHECK(reports->size() == expected, key.ToString(), ": ", reports->size(),
               " reports, expected ", expected);
    v1::GetDriftResponse response;
    for (const WindowReport& report : *reports) {
      FUZZ_CHECK(report.stream == key, "GetDrift of ", key.ToString(), " reported ",
                 report.stream.ToString());
      FUZZ_CHECK(!window || report.window == *window, key.ToString());
      FUZZ_CHECK(report.reference_version == it->second, key.ToString());
      CheckReport(report, top_bins, clock_.Now(), "GetDrift");
      if ((*ref)->is_histogram()) CheckIncrementalKl(key, report);
      ToProto(report, response.add_reports());
    }
    CheckRoundTrip(response, "GetDriftResponse");
  }

  // The O(1) incremental KL agrees with the one computed afresh, while counts are in the range
  // where doubles are exact (beyond it both are approximations of different sums).
  void CheckIncrementalKl(const StreamKey& key, const WindowReport& report) {
    absl::StatusOr<double> incremental = engine_.IncrementalKlCurrentReference(key, report.window);
    FUZZ_CHECK(incremental.ok(), key.ToString(), ": ", incremental.status().ToString());
    FUZZ_CHECK(*incremental >= 0, key.ToString(), ": incremental KL ", *incremental);
    if (!report.histogram || report.samples > 9007199254740992.0) return;
    // With a subnormal alpha a reference share can underflow to 0: the kernels then call a bin
    // impossible by the current window's smoothed share (which depends on its total), IncrementalKl
    // by its count alone, so the two may disagree on infinity there. The engine alerts on the
    // kernels' value; IncrementalKl is a library cross-check. (Known, left: see the issue notes.)
    absl::StatusOr<std::shared_ptr<const Reference>> ref = engine_.GetReference(key, 0);
    if (ref.ok() && (*ref)->policy.alpha > 0 &&
        (*ref)->policy.alpha < std::numeric_limits<double>::min()) {
      return;
    }
    const double fresh = report.histogram->kl_current_reference;
    if (std::isinf(fresh) || std::isinf(*incremental)) {
      FUZZ_CHECK(fresh == *incremental, key.ToString(), ": incremental KL ", *incremental,
                 ", fresh ", fresh);
      return;
    }
    FUZZ_CHECK(std::fabs(*incremental - fresh) <= 1e-6 * std::max(1.0, fresh), key.ToString(),
               " window ", FormatWindow(report.window), ": incremental KL ", *incremental,
               ", fresh ", fresh);
  }

  void GetReference(const v1::GetReferenceRequest& request) {
    const StreamKey key = FromProto(request.stream());
    absl::StatusOr<std::shared_ptr<const Reference>> ref =
        engine_.GetReference(key, request.version());
    Trace("GetReference", ref.status());
    auto it = latest_.find(key);
    const bool exists = it != latest_.end() && request.version() <= it->second;
    if (!ref.ok()) {
      CheckError(ref.status(), "GetReference");
      FUZZ_CHECK(!exists, key.ToString(), " v", request.version(),
                 " exists but: ", ref.status().ToString());
      return;
    }
    FUZZ_CHECK(exists, "GetReference found ", key.ToString(), " v", request.version());
    const uint64_t expected = request.version() == 0 ? it->second : request.version();
    FUZZ_CHECK((*ref)->version == expected, key.ToString());
    CheckReference(**ref, "GetReference");
  }

  void ListReferences(const v1::ListReferencesRequest& request) {
    // The request as sent (any page token).
    absl::StatusOr<DriftEngine::ReferencePage> page =
        engine_.ListReferences(request.model(), request.page_size(), request.page_token());
    Trace("ListReferences", page.status(),
          page.ok() ? absl::StrCat(page->references.size(), " references") : "");
    if (!page.ok()) {
      CheckError(page.status(), "ListReferences");
    } else {
      v1::ListReferencesResponse response;
      for (const auto& ref : page->references) ToProto(*ref, response.add_references());
      response.set_next_page_token(page->next_page_token);
      CheckRoundTrip(response, "ListReferencesResponse");
    }
    if (!request.model().empty() && !ValidateName("model", request.model(), false).ok()) return;
    // From the first page to the last: exactly the model's streams, in order, once each.
    std::vector<StreamKey> expected;
    for (const auto& [key, version] : latest_) {
      if (request.model().empty() || key.model == request.model()) expected.push_back(key);
    }
    std::vector<StreamKey> listed;
    std::string token;
    for (int pages = 0;; ++pages) {
      FUZZ_CHECK(pages < kMaxPages, "ListReferences does not end");
      page = engine_.ListReferences(request.model(), request.page_size(), token);
      FUZZ_CHECK(page.ok(), page.status().ToString());
      for (const auto& ref : page->references) {
        FUZZ_CHECK(ref->version == latest_[ref->stream], ref->stream.ToString(),
                   ": listed version ", ref->version);
        listed.push_back(ref->stream);
      }
      if (page->next_page_token.empty()) break;
      FUZZ_CHECK(!page->references.empty(), "an empty page with a next page token");
      token = page->next_page_token;
    }
    FUZZ_CHECK(listed == expected, "ListReferences listed ", listed.size(), " streams, expected ",
               expected.size());
  }

  void DeleteReference(const v1::DeleteReferenceRequest& request) {
    const StreamKey key = FromProto(request.stream());
    absl::StatusOr<uint64_t> deleted = engine_.DeleteReference(key);
    Trace("DeleteReference", deleted.status());
    auto it = latest_.find(key);
    if (!deleted.ok()) {
      CheckError(deleted.status(), "DeleteReference");
      FUZZ_CHECK(it == latest_.end(), key.ToString(), " exists but: ", deleted.status().ToString());
      return;
    }
    FUZZ_CHECK(it != latest_.end(), "deleted ", key.ToString(), ", which did not exist");
    // Every version is kept until the stream is deleted.
    FUZZ_CHECK(*deleted == it->second, key.ToString(), ": deleted ", *deleted, " versions of ",
               it->second);
    latest_.erase(it);
    FUZZ_CHECK(!engine_.GetDrift(key, std::nullopt, 0).ok(), key.ToString(),
               " still has windows after DeleteReference");
  }

  void Evaluate() {
    size_t windows = 0;
    for (const auto& [key, version] : latest_) {
      absl::StatusOr<std::shared_ptr<const Reference>> ref = engine_.GetReference(key, 0);
      FUZZ_CHECK(ref.ok(), key.ToString());
      windows += (*ref)->policy.windows.size();
    }
    const size_t evaluated = engine_.Evaluate();
    Trace("Evaluate", absl::OkStatus(),
          absl::StrCat(evaluated, " windows; ", watched_reports_, " reports watched so far"));
    FUZZ_CHECK(evaluated == windows, "Evaluate evaluated ", evaluated, " windows, expected ",
               windows);
  }

  FakeClock clock_;
  DriftEngine engine_;
  std::map<StreamKey, uint64_t> latest_;
  std::set<std::string> watched_;
  size_t watched_reports_ = 0;
};

}  // namespace
}  // namespace kldrift

extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) {
  // Protobuf logs every string field that is not UTF-8 while parsing; the fuzzer makes many.
  google::protobuf::SetLogHandler(nullptr);
  const char* trace = std::getenv("KLDRIFT_FUZZ_TRACE");
  kldrift::trace = trace != nullptr && *trace != '\0' && *trace != '0';
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  kldrift::fuzz::FuzzInput input;
  if (!input.ParseFromArray(data, static_cast<int>(size))) return -1;  // Not worth keeping.
  kldrift::Harness harness;
  int operations = 0;
  for (const kldrift::fuzz::Operation& op : input.operations()) {
    if (++operations > kldrift::kMaxOperations) break;
    harness.Run(op);
  }
  return 0;
}
