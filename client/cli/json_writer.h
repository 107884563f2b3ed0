// A minimal streaming JSON writer for CLI output.
//
// Numbers are written in the shortest form that reads back to the same double. JSON has no
// infinity or NaN, so they are written as the strings "Infinity", "-Infinity" and "NaN", as
// protobuf's JSON mapping does (Python's float() reads all three).
//
// Thread safety: thread-compatible.
#ifndef KLDRIFT_CLIENT_CLI_JSON_WRITER_H_
#define KLDRIFT_CLIENT_CLI_JSON_WRITER_H_

#include <string>
#include <vector>

#include "absl/strings/string_view.h"

namespace kldrift::cli {

class JsonWriter {
 public:
  void BeginObject();
  void EndObject();
  void BeginArray();
  void EndArray();
  // Inside an object: the next value's key.
  void Key(absl::string_view key);
  void String(absl::string_view value);
  void Number(double value);
  void Integer(long long value);
  void Bool(bool value);

  // The document, followed by a newline.
  std::string Finish() const { return out_ + "\n"; }

 private:
  void BeforeValue();
  void AppendQuoted(absl::string_view value);

  std::string out_;
  // One entry per open container: whether it already holds an element.
  std::vector<bool> has_element_;
  bool after_key_ = false;
};

// Shortest round-trip decimal form of a finite double ("0.1", "1e-300", "42").
std::string FormatDouble(double value);

}  // namespace kldrift::cli

#endif  // KLDRIFT_CLIENT_CLI_JSON_WRITER_H_
