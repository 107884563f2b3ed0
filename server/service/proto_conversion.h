// Conversions between the kldrift.v1 protobuf messages and the core's C++ types.
//
// Decoding validates only what the wire format cannot express (e.g. a oneof left empty, a
// duration that is not whole seconds); the core validates meaning. Errors are INVALID_ARGUMENT
// naming the field.
//
// Thread safety: pure functions.
#ifndef KLDRIFT_SERVER_SERVICE_PROTO_CONVERSION_H_
#define KLDRIFT_SERVER_SERVICE_PROTO_CONVERSION_H_

#include "absl/status/statusor.h"
#include "google/protobuf/arena.h"
#include "kldrift/v1/kldrift.pb.h"
#include "server/core/drift_engine.h"
#include "server/core/reference.h"

namespace kldrift {

StreamKey FromProto(const v1::StreamId& id);
void ToProto(const StreamKey& key, v1::StreamId* id);

absl::StatusOr<AlertPolicy> FromProto(const v1::AlertPolicy& policy);
void ToProto(const AlertPolicy& policy, v1::AlertPolicy* out);

absl::StatusOr<ReferenceSpec> FromProto(const v1::PutReferenceRequest& request);
// `view` BASIC leaves out the per-bin data (layout, counts, labels, moments); UNSPECIFIED is FULL.
void ToProto(const Reference& reference, v1::Reference* out,
             v1::ReferenceView view = v1::REFERENCE_VIEW_FULL);

// The batch borrows the request's histogram counts, values and probabilities
// (StreamData::lent_numbers): `request` must outlive its use (DriftEngine::Ingest).
absl::StatusOr<IngestBatch> FromProto(const v1::IngestRequest& request);
// The arena an Ingest stream parses an IngestRequest into when IngestDecoder declines it (reset
// once the batch is done): blocks from 16 KB up to 128 KB, none kept by an idle stream.
google::protobuf::ArenaOptions IngestArenaOptions();

void ToProto(const WindowReport& report, v1::DriftReport* out);

// A model export's stream (kldrift admin export/import). FromProto rebuilds every version with
// this server's `limits`; INVALID_ARGUMENT / RESOURCE_EXHAUSTED name the version at fault.
void ToProto(const StreamExport& stream, v1::StreamExport* out);
absl::StatusOr<StreamExport> FromProto(const v1::StreamExport& stream,
                                       const ReferenceLimits& limits);

absl::StatusOr<absl::Duration> FromProto(const google::protobuf::Duration& duration,
                                         absl::string_view field);
// A timestamp's time; INVALID_ARGUMENT naming `field` if its nanos are out of range.
absl::StatusOr<absl::Time> FromProto(const google::protobuf::Timestamp& t, absl::string_view field);

}  // namespace kldrift

#endif  // KLDRIFT_SERVER_SERVICE_PROTO_CONVERSION_H_
