#include "server/service/auth.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace kldrift {
namespace {

constexpr size_t kMinTokenLength = 16;
constexpr size_t kMaxTokenLength = 512;

bool IsTokenChar(char c) {
  return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '~' ||
         c == '+' || c == '/' || c == '=' || c == '-';
}

absl::StatusOr<Role> ParseRole(absl::string_view name) {
  if (name == "reader") return Role::kReader;
  if (name == "writer") return Role::kWriter;
  if (name == "admin") return Role::kAdmin;
  return absl::InvalidArgumentError(
      absl::StrCat("role \"", name, "\" is not one of reader, writer, admin"));
}

bool MatchesAnyPattern(const std::vector<std::string>& patterns, absl::string_view model) {
  for (const std::string& pattern : patterns) {
    if (ModelPatternMatches(pattern, model)) return true;
  }
  return false;
}

}  // namespace

absl::string_view RoleName(Role role) {
  switch (role) {
    case Role::kReader:
      return "reader";
    case Role::kWriter:
      return "writer";
    case Role::kAdmin:
      return "admin";
  }
  return "unknown";
}

bool ModelPatternMatches(absl::string_view pattern, absl::string_view model) {
  // Iterative glob with backtracking to the last '*'.
  size_t p = 0, m = 0, star = absl::string_view::npos, star_m = 0;
  while (m < model.size()) {
    if (p < pattern.size() && pattern[p] == '*') {
      star = p++;
      star_m = m;
    } else if (p < pattern.size() && pattern[p] == model[m]) {
      ++p;
      ++m;
    } else if (star != absl::string_view::npos) {
      p = star + 1;
      m = ++star_m;
    } else {
      return false;
    }
  }
  while (p < pattern.size() && pattern[p] == '*') ++p;
  return p == pattern.size();
}

absl::StatusOr<TokenTable> TokenTable::Parse(absl::string_view text) {
  TokenTable table;
  int line_number = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_number;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line[0] == '#') continue;
    std::vector<absl::string_view> fields =
        absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty());
    auto bad = [line_number](absl::string_view why) {
      return absl::InvalidArgumentError(
          absl::StrCat("auth tokens line ", line_number, ": ", why,
                       " (each line: <token> <reader|writer|admin> <model-pattern>[,...])"));
    };
    if (fields.size() != 3) return bad(absl::StrCat("has ", fields.size(), " fields, not 3"));
    Entry entry;
    entry.line = line_number;
    entry.token = std::string(fields[0]);
    if (entry.token.size() < kMinTokenLength || entry.token.size() > kMaxTokenLength) {
      return bad(absl::StrCat("the token has ", entry.token.size(), " characters; use ",
                              kMinTokenLength, " to ", kMaxTokenLength));
    }
    for (char c : entry.token) {
      if (!IsTokenChar(c)) return bad("the token has a character outside [A-Za-z0-9._~+/=-]");
    }
    absl::StatusOr<Role> role = ParseRole(fields[1]);
    if (!role.ok()) return bad(role.status().message());
    entry.role = *role;
    for (absl::string_view pattern : absl::StrSplit(fields[2], ',', absl::SkipEmpty())) {
      entry.model_patterns.emplace_back(pattern);
    }
    if (entry.model_patterns.empty()) return bad("no model pattern (use * for every model)");
    for (const Entry& other : table.entries_) {
      if (other.token == entry.token) {
        return bad(absl::StrCat("repeats the token of line ", other.line));
      }
    }
    table.entries_.push_back(std::move(entry));
  }
  if (table.entries_.empty()) {
    return absl::InvalidArgumentError("the auth tokens file has no token: every call would fail");
  }
  return table;
}

absl::StatusOr<TokenTable> TokenTable::Load(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    const int error = errno;
    const std::string message =
        absl::StrCat("cannot read the auth tokens file ", path, ": ", std::strerror(error));
    return error == ENOENT ? absl::NotFoundError(message) : absl::PermissionDeniedError(message);
  }
  std::stringstream text;
  text << in.rdbuf();
  absl::StatusOr<TokenTable> table = Parse(text.str());
  if (!table.ok()) {
    return absl::Status(table.status().code(), absl::StrCat(path, ": ", table.status().message()));
  }
  return table;
}

const TokenTable::Entry* TokenTable::Find(absl::string_view token) const {
  const Entry* found = nullptr;
  for (const Entry& entry : entries_) {
    // Every entry is compared: the time does not tell which one (if any) matched.
    if (ConstantTimeEquals(entry.token, token)) found = &entry;
  }
  return found;
}

absl::StatusOr<std::unique_ptr<TokenAuthorizer>> TokenAuthorizer::Create(const std::string& path) {
  absl::StatusOr<TokenTable> table = TokenTable::Load(path);
  if (!table.ok()) return table.status();
  std::unique_ptr<TokenAuthorizer> authorizer(new TokenAuthorizer(path));
  MutexLock lock(&authorizer->mutex_);
  authorizer->table_ = std::make_shared<const TokenTable>(*std::move(table));
  return authorizer;
}

absl::Status TokenAuthorizer::Reload() {
  absl::StatusOr<TokenTable> table = TokenTable::Load(path_);
  if (!table.ok()) return table.status();
  auto next = std::make_shared<const TokenTable>(*std::move(table));
  MutexLock lock(&mutex_);
  table_ = std::move(next);
  return absl::OkStatus();
}

std::shared_ptr<const TokenTable> TokenAuthorizer::table() const {
  MutexLock lock(&mutex_);
  return table_;
}

size_t TokenAuthorizer::token_count() const { return table()->size(); }

absl::Status TokenAuthorizer::Authorize(absl::string_view authorization,
                                        const AccessRequest& request) const {
  absl::string_view token = authorization;
  if (!absl::ConsumePrefix(&token, "Bearer ") || token.empty()) {
    return absl::UnauthenticatedError(
        authorization.empty()
            ? "no token: send the metadata \"authorization: Bearer <token>\" (kldrift "
              "--token-file, or $KLDRIFT_TOKEN)"
            : "the authorization metadata is not \"Bearer <token>\"");
  }
  std::shared_ptr<const TokenTable> current = table();
  const TokenTable::Entry* entry = current->Find(token);
  if (entry == nullptr) {
    return absl::UnauthenticatedError("unknown or revoked token");
  }
  if (entry->role < request.role) {
    return absl::PermissionDeniedError(
        absl::StrCat("this call needs the ", RoleName(request.role), " role; the token (line ",
                     entry->line, " of the tokens file) has ", RoleName(entry->role)));
  }
  if (!request.model.empty()) {
    if (!MatchesAnyPattern(entry->model_patterns, request.model)) {
      return absl::PermissionDeniedError(
          absl::StrCat("the token (line ", entry->line,
                       " of the tokens file) may not access model \"", request.model, "\""));
    }
  }
  return absl::OkStatus();
}

std::string TokenAuthorizer::TenantOf(absl::string_view authorization) const {
  absl::string_view token = authorization;
  if (!absl::ConsumePrefix(&token, "Bearer ") || table()->Find(token) == nullptr) return "";
  uint64_t hash = 14695981039346656037ull;  // FNV-1a 64.
  for (char c : token) {
    hash ^= static_cast<unsigned char>(c);
    hash *= 1099511628211ull;
  }
  return absl::StrCat("t", absl::Hex(hash >> 16, absl::kZeroPad12));
}

std::function<bool(absl::string_view)> TokenAuthorizer::ReadableModels(
    absl::string_view authorization) const {
  absl::string_view token = authorization;
  const TokenTable::Entry* entry = nullptr;
  std::shared_ptr<const TokenTable> current = table();
  if (absl::ConsumePrefix(&token, "Bearer ")) entry = current->Find(token);
  if (entry == nullptr) return [](absl::string_view) { return false; };
  return [patterns = entry->model_patterns](absl::string_view model) {
    return MatchesAnyPattern(patterns, model);
  };
}

}  // namespace kldrift
