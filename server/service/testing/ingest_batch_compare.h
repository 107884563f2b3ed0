// Test helpers: where two IngestBatches differ, and where IngestDecoder's result for some bytes
// differs from protobuf's parse and FromProto, the reference it must agree with
// (ingest_decoder_test and ingest_decoder_fuzzer).
//
// Thread safety: pure functions.
#ifndef KLDRIFT_SERVER_SERVICE_TESTING_INGEST_BATCH_COMPARE_H_
#define KLDRIFT_SERVER_SERVICE_TESTING_INGEST_BATCH_COMPARE_H_

#include <cstring>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "kldrift/v1/kldrift.pb.h"
#include "server/core/drift_engine.h"
#include "server/service/proto_conversion.h"

namespace kldrift {

// "" if `a` and `b` hold the same request: names, sequence, event time, and each stream's names,
// reference version, kind and numbers bit for bit (labels, Gaussian and log-prob data too). Else
// the first difference, in words.
inline std::string IngestBatchDifference(const IngestBatch& a, const IngestBatch& b) {
  if (a.client_id != b.client_id)
    return absl::StrCat("client_id ", a.client_id, " / ", b.client_id);
  if (a.sequence != b.sequence) return absl::StrCat("sequence ", a.sequence, " / ", b.sequence);
  if (a.model != b.model) return absl::StrCat("model ", a.model, " / ", b.model);
  if (a.event_time != b.event_time) {
    return absl::StrCat("event_time ", a.event_time ? absl::FormatTime(*a.event_time) : "unset",
                        " / ", b.event_time ? absl::FormatTime(*b.event_time) : "unset");
  }
  if (a.streams.size() != b.streams.size()) {
    return absl::StrCat("streams ", a.streams.size(), " / ", b.streams.size());
  }
  const auto same_doubles = [](absl::Span<const double> x, absl::Span<const double> y) {
    return x.size() == y.size() &&
           (x.empty() || std::memcmp(x.data(), y.data(), x.size() * sizeof(double)) == 0);
  };
  for (size_t i = 0; i < a.streams.size(); ++i) {
    const StreamData& x = a.streams[i];
    const StreamData& y = b.streams[i];
    const std::string at = absl::StrCat("streams[", i, "].");
    if (x.model_version != y.model_version) return at + "model_version";
    if (x.signal != y.signal) return at + "signal";
    if (x.reference_version != y.reference_version) return at + "reference_version";
    if (x.type != y.type) {
      return absl::StrCat(at, "type ", static_cast<int>(x.type), " / ", static_cast<int>(y.type));
    }
    if (!same_doubles(x.values(), y.values())) {
      return absl::StrCat(at, "numbers (", x.values().size(), " / ", y.values().size(), ")");
    }
    if (x.labels != y.labels) return at + "labels";
    if (std::memcmp(&x.gaussian_count, &y.gaussian_count, sizeof(double)) != 0 ||
        !same_doubles(x.gaussian_sum, y.gaussian_sum) ||
        !same_doubles(x.gaussian_sum_squares, y.gaussian_sum_squares)) {
      return at + "gaussian";
    }
    if (!same_doubles(x.log_p_current, y.log_p_current) ||
        !same_doubles(x.log_p_reference, y.log_p_reference)) {
      return at + "log_probs";
    }
  }
  return "";
}

// "" if protobuf parses `bytes` as an IngestRequest and FromProto converts it into `decoded` with
// the flag `more_follows`: what must hold of every request IngestDecoder accepts. Else the
// disagreement, in words.
inline std::string DecodedUnlikeProtobuf(const std::string& bytes, const IngestBatch& decoded,
                                         bool more_follows) {
  v1::IngestRequest request;
  if (!request.ParseFromString(bytes)) {
    return absl::StrCat("decoded ", bytes.size(), " bytes protobuf cannot parse");
  }
  absl::StatusOr<IngestBatch> reference = FromProto(request);
  if (!reference.ok()) {
    return absl::StrCat("decoded a request FromProto rejects: ", reference.status().ToString());
  }
  if (std::string difference = IngestBatchDifference(decoded, *reference); !difference.empty()) {
    return "decoded unlike protobuf and FromProto: " + difference;
  }
  if (more_follows != request.more_follows()) return "more_follows differs";
  return "";
}

}  // namespace kldrift

#endif  // KLDRIFT_SERVER_SERVICE_TESTING_INGEST_BATCH_COMPARE_H_
