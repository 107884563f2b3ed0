// ConstantTimeEquals: compares secrets (tokens, passwords) without an early exit, so the time
// taken tells nothing about where two strings first differ.
//
// Thread safety: a pure function.
#ifndef KLDRIFT_SERVER_CORE_CONSTANT_TIME_H_
#define KLDRIFT_SERVER_CORE_CONSTANT_TIME_H_

#include <algorithm>
#include <cstddef>

#include "absl/strings/string_view.h"

namespace kldrift {

// Equal contents, in time that depends only on the lengths (which are not secret).
inline bool ConstantTimeEquals(absl::string_view a, absl::string_view b) {
  const size_t n = std::max(a.size(), b.size());
  volatile unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < n; ++i) {
    const unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
    const unsigned char y = i < b.size() ? static_cast<unsigned char>(b[i]) : 0;
    diff = diff | static_cast<unsigned char>(x ^ y);
  }
  return diff == 0;
}

}  // namespace kldrift

#endif  // KLDRIFT_SERVER_CORE_CONSTANT_TIME_H_
