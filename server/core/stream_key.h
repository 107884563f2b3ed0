// StreamKey: the identity of a monitored stream, (model, model_version, signal).
//
// Names are 1-128 characters of [A-Za-z0-9._:/-] (model_version may be empty): safe as Prometheus
// label values, RocksDB key parts and file names without escaping.
//
// Thread safety: a value type.
#ifndef KLDRIFT_SERVER_CORE_STREAM_KEY_H_
#define KLDRIFT_SERVER_CORE_STREAM_KEY_H_

#include <compare>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace kldrift {

inline constexpr size_t kMaxNameLength = 128;

struct StreamKey {
  std::string model;
  std::string model_version;
  std::string signal;

  auto operator<=>(const StreamKey&) const = default;
  bool operator==(const StreamKey&) const = default;

  // "model/model_version/signal" (model_version may be empty: "model//signal").
  std::string ToString() const;

  template <typename H>
  friend H AbslHashValue(H h, const StreamKey& key) {
    return H::combine(std::move(h), key.model, key.model_version, key.signal);
  }
};

// INVALID_ARGUMENT naming `what` unless `name` is 1-128 characters of [A-Za-z0-9._:/-] (or empty,
// when allowed).
absl::Status ValidateName(absl::string_view what, absl::string_view name, bool may_be_empty);

// Checks all three parts of a key.
absl::Status ValidateStreamKey(const StreamKey& key);
// Checks the parts below the model (for a batch of one model's streams, its model checked once).
absl::Status ValidateStreamParts(absl::string_view model_version, absl::string_view signal);

// Ingest client ids as the engine keeps them: a name's characters, up to kMaxClientIdLength (room
// for the tenant prefix the service adds to a client's own id of up to kMaxNameLength).
inline constexpr size_t kMaxClientIdLength = 160;
absl::Status ValidateClientId(absl::string_view client_id);

}  // namespace kldrift

#endif  // KLDRIFT_SERVER_CORE_STREAM_KEY_H_
