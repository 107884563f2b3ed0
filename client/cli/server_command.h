// What the `kldrift` commands that talk to kldriftd share: the global flags (--server, --timeout),
// exit codes, error reporting, and parsing of stream names, lists and input files.
//
// Exit codes: 0 ok; 2 bad usage or input (reported as "kldrift <command>: message"); 1 an error
// from the server (reported as "kldrift: CODE: message", e.g. "kldrift: NOT_FOUND: no reference
// for stream m//s").
//
// Thread safety: pure functions.
#ifndef KLDRIFT_CLIENT_CLI_SERVER_COMMAND_H_
#define KLDRIFT_CLIENT_CLI_SERVER_COMMAND_H_

#include <istream>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "client/cli/command_line.h"
#include "client/kldrift_client.h"
#include "google/protobuf/duration.pb.h"
#include "google/protobuf/timestamp.pb.h"
#include "kldrift/v1/kldrift.pb.h"

namespace kldrift::cli {

inline constexpr int kExitOk = 0;
inline constexpr int kExitServerError = 1;
inline constexpr int kExitUsage = 2;

// Flags given before the command.
// Environment variable naming the default kldriftd address (overridden by --server).
inline constexpr char kServerEnvironmentVariable[] = "KLDRIFT_SERVER";

struct GlobalOptions {
  std::string server = std::string(kDefaultServerAddress);
  // The deadline of every call.
  absl::Duration timeout = kDefaultRpcDeadline;
  bool help = false;
  // TLS, certificates and token, read from the flags' files (ChannelOptions fields).
  bool use_tls = false;
  std::string tls_root_certs;
  std::string tls_client_cert;
  std::string tls_client_key;
  std::string token;

  ChannelOptions Channel() const;
};

// The environment variable holding a token when --token-file is not given.
inline constexpr char kTokenEnvironmentVariable[] = "KLDRIFT_TOKEN";

// Parses and removes the global flags at the front of `args` (--server ADDR, --timeout D, --help),
// leaving the command and its own flags. INVALID_ARGUMENT for an unknown or malformed global flag.
absl::StatusOr<GlobalOptions> ParseGlobalFlags(std::vector<std::string>& args);

// Help text of the global flags.
std::string GlobalFlagHelp();

// A client for `options`, with its deadline.
KlDriftClient MakeClient(const GlobalOptions& options);

// Prints "kldrift: CODE: message" and returns kExitServerError.
int ReportServerError(const absl::Status& status, std::ostream& err);
// Prints "<command>: message" and returns kExitUsage.
int ReportUsageError(absl::string_view command, const absl::Status& status, std::ostream& err);

// The stream named by --model, --model-version (optional) and --signal; INVALID_ARGUMENT naming
// the missing or malformed flag.
absl::StatusOr<v1::StreamId> StreamFromFlags(const ParsedFlags& flags);
// "model/model_version/signal".
std::string StreamName(const v1::StreamId& stream);

// "1,2.5,-3" -> {1, 2.5, -3}; INVALID_ARGUMENT naming --`flag` and the bad item.
absl::StatusOr<std::vector<double>> ParseNumberList(absl::string_view flag, absl::string_view text);
// "a,b,c" -> {"a", "b", "c"} (surrounding spaces trimmed); empty items are an error.
absl::StatusOr<std::vector<std::string>> ParseLabelList(absl::string_view flag,
                                                        absl::string_view text);

// The non-blank lines of `path` ("-" reads `in`), surrounding spaces trimmed. NOT_FOUND if the
// file cannot be opened.
absl::StatusOr<std::vector<std::string>> ReadItems(const std::string& path, std::istream& in);
// Lines as numbers ("nan", "inf" accepted); INVALID_ARGUMENT naming the line number.
absl::StatusOr<std::vector<double>> ParseValues(const std::string& path,
                                                const std::vector<std::string>& lines);

// A client id for one CLI process: "<prefix>.<host>.<pid>", valid as a kldrift name.
std::string ProcessClientId(absl::string_view prefix);

void ToProto(absl::Duration duration, google::protobuf::Duration* out);
absl::Duration FromProto(const google::protobuf::Duration& duration);
// RFC 3339 in UTC, e.g. "2026-01-02T03:04:05.5Z"; empty for an unset timestamp.
std::string FormatTimestamp(const google::protobuf::Timestamp& timestamp);
// Six significant digits; "inf" / "-inf" / "nan" spelled out.
std::string FormatNumber(double value);

}  // namespace kldrift::cli

#endif  // KLDRIFT_CLIENT_CLI_SERVER_COMMAND_H_
