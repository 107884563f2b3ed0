// Token authorization for kldriftd's RPCs.
//
// `--auth-tokens FILE` holds one token per line:
//
//   # token                           role     models (comma-separated glob patterns)
//   3f9c1d0e5b7a4c2e9d8f6a1b0c3e5d7f    writer   fraud-*,ranker
//   a1b2c3d4e5f60718293a4b5c6d7e8f90    reader   *
//   0f1e2d3c4b5a69788796a5b4c3d2e1f0    admin    *
//
// Roles are ordered: reader (GetReference, ListReferences, GetDrift, WatchDrift) < writer (also
// PutReference, DeleteReference, Ingest) < admin (also Backup). A pattern is a model name with `*`
// matching any run of characters; a token may touch only models one of its patterns matches
// (ListReferences without a model filter lists only those). Tokens are at least 16 characters of
// [A-Za-z0-9._~+/=-]; a token appears once.
//
// Clients send `authorization: Bearer <token>` metadata. No or unknown token: UNAUTHENTICATED; a
// known token with too low a role or outside its models: PERMISSION_DENIED. Tokens are compared in
// constant time (every entry is compared, with no early exit), and no message, log line or metric
// ever contains one: entries are named by their line number.
//
// Thread safety: TokenAuthorizer is safe for concurrent use; Reload swaps the table atomically, so
// calls in flight finish with the table they started with and open streams use the new one from
// their next message.
#ifndef KLDRIFT_SERVER_SERVICE_AUTH_H_
#define KLDRIFT_SERVER_SERVICE_AUTH_H_

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "server/core/constant_time.h"
#include "server/core/mutex.h"

namespace kldrift {

enum class Role { kReader = 0, kWriter = 1, kAdmin = 2 };

absl::string_view RoleName(Role role);

// Whether `model` matches a glob `pattern` (`*` matches any run, including an empty one).
bool ModelPatternMatches(absl::string_view pattern, absl::string_view model);

// The parsed token file.
class TokenTable {
 public:
  struct Entry {
    std::string token;
    Role role = Role::kReader;
    std::vector<std::string> model_patterns;
    int line = 0;  // In the file, to name the entry without its token.
  };

  // Parses the file's text. INVALID_ARGUMENT naming the line (never the token) for a bad line.
  static absl::StatusOr<TokenTable> Parse(absl::string_view text);
  // Reads and parses `path`; NOT_FOUND / PERMISSION_DENIED if unreadable.
  static absl::StatusOr<TokenTable> Load(const std::string& path);

  // The entry of `token`, or null. Constant time in the token's contents.
  const Entry* Find(absl::string_view token) const;

  size_t size() const { return entries_.size(); }

 private:
  std::vector<Entry> entries_;
};

// What an RPC needs: a role, and (except server-wide calls) a model.
struct AccessRequest {
  Role role = Role::kReader;
  // The model the call touches; empty for calls that are not about one model.
  std::string model;
};

class TokenAuthorizer {
 public:
  // Loads `path` (see TokenTable::Load).
  static absl::StatusOr<std::unique_ptr<TokenAuthorizer>> Create(const std::string& path);

  // Re-reads the file; on error keeps the current table and returns the error.
  absl::Status Reload();

  // Checks the `authorization` metadata value (`Bearer <token>`) against `request`.
  // UNAUTHENTICATED or PERMISSION_DENIED with a message that names no token.
  absl::Status Authorize(absl::string_view authorization, const AccessRequest& request) const;

  // The models the caller may read, as a predicate: the token is looked up once, so filtering a
  // whole listing costs one pattern match per stream. Always false for an unknown token.
  std::function<bool(absl::string_view model)> ReadableModels(
      absl::string_view authorization) const;
  // Whether the caller may read `model`.
  bool MayRead(absl::string_view authorization, absl::string_view model) const {
    return ReadableModels(authorization)(model);
  }

  // A short, stable name of the caller's token ("t" and 12 hex digits of a 64-bit FNV-1a hash of
  // the token; "" for an unknown one), to keep tenants' ingest client ids apart: two tokens using
  // the same client id get separate sequence numbers and live streams. Not secret-revealing in
  // practice for tokens of 16+ random characters, and never the token itself.
  std::string TenantOf(absl::string_view authorization) const;

  size_t token_count() const;

 private:
  explicit TokenAuthorizer(std::string path) : path_(std::move(path)) {}

  std::shared_ptr<const TokenTable> table() const;

  const std::string path_;
  mutable Mutex mutex_;
  std::shared_ptr<const TokenTable> table_ ABSL_GUARDED_BY(mutex_);
};

}  // namespace kldrift

#endif  // KLDRIFT_SERVER_SERVICE_AUTH_H_
