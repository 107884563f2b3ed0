#include "server/core/stream_key.h"

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"

namespace kldrift {
namespace {

bool IsNameChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
         c == '_' || c == ':' || c == '/' || c == '-';
}

}  // namespace

std::string StreamKey::ToString() const {
  return absl::StrCat(model, "/", model_version, "/", signal);
}

namespace {

absl::Status ValidateNameUpTo(absl::string_view what, absl::string_view name, bool may_be_empty,
                              size_t max_length) {
  if (name.empty()) {
    if (may_be_empty) return absl::OkStatus();
    return absl::InvalidArgumentError(
        absl::StrCat(what, " is empty; give 1-", max_length, " characters of [A-Za-z0-9._:/-]"));
  }
  if (name.size() > max_length) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " is ", name.size(), " characters long; the limit is ", max_length));
  }
  for (size_t i = 0; i < name.size(); ++i) {
    if (!IsNameChar(name[i])) {
      const unsigned char c = static_cast<unsigned char>(name[i]);
      return absl::InvalidArgumentError(
          absl::StrCat(what, " \"", absl::CEscape(name), "\" has the character ",
                       c >= 0x20 && c < 0x7f ? absl::StrCat("'", std::string(1, name[i]), "'")
                                             : absl::StrCat("0x", absl::Hex(c)),
                       " at position ", i, "; names use only [A-Za-z0-9._:/-]"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateName(absl::string_view what, absl::string_view name, bool may_be_empty) {
  return ValidateNameUpTo(what, name, may_be_empty, kMaxNameLength);
}

absl::Status ValidateClientId(absl::string_view client_id) {
  return ValidateNameUpTo("client_id", client_id, false, kMaxClientIdLength);
}

absl::Status ValidateStreamKey(const StreamKey& key) {
  if (absl::Status s = ValidateName("model", key.model, false); !s.ok()) return s;
  return ValidateStreamParts(key.model_version, key.signal);
}

absl::Status ValidateStreamParts(absl::string_view model_version, absl::string_view signal) {
  if (absl::Status s = ValidateName("model_version", model_version, true); !s.ok()) return s;
  return ValidateName("signal", signal, false);
}

}  // namespace kldrift
