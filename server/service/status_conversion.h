// The one place where absl::Status becomes grpc::Status.
//
// absl's canonical codes map one-to-one onto gRPC's. Messages are bounded so a pathological input
// (a 100 MB label echoed into an error) cannot produce a pathological response.
//
// Thread safety: pure function.
#ifndef KLDRIFT_SERVER_SERVICE_STATUS_CONVERSION_H_
#define KLDRIFT_SERVER_SERVICE_STATUS_CONVERSION_H_

#include <cstddef>

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace kldrift {

inline constexpr size_t kMaxStatusMessageBytes = 1024;

grpc::Status ToGrpcStatus(const absl::Status& status);

}  // namespace kldrift

#endif  // KLDRIFT_SERVER_SERVICE_STATUS_CONVERSION_H_
