#include "client/cli/server_command.h"

#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "server/core/stream_key.h"

namespace kldrift::cli {
namespace {

constexpr size_t kMaxHostNameLength = 255;
// RFC 3339 in UTC with as many fractional digits as needed: 2026-01-02T03:04:05.25Z.
constexpr char kTimestampFormat[] = "%Y-%m-%d%ET%H:%M:%E*SZ";

// Splits "--name=value" / "--name value" at args[i]; advances i past a separate value.
absl::StatusOr<std::string> TakeValue(const std::vector<std::string>& args, size_t& i,
                                      absl::string_view name) {
  const std::string& arg = args[i];
  if (size_t eq = arg.find('='); eq != std::string::npos) return arg.substr(eq + 1);
  if (i + 1 >= args.size()) {
    return absl::InvalidArgumentError(absl::StrCat("--", name, " needs a value"));
  }
  return args[++i];
}

// The contents of the file a global flag names (certificates, keys, tokens).
absl::StatusOr<std::string> ReadFlagFile(absl::string_view flag, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::InvalidArgumentError(absl::StrCat("--", flag, ": cannot read ", path));
  }
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (text.empty())
    return absl::InvalidArgumentError(absl::StrCat("--", flag, ": ", path, " is empty"));
  return text;
}

}  // namespace

ChannelOptions GlobalOptions::Channel() const {
  ChannelOptions channel;
  channel.target = server;
  channel.deadline = timeout;
  channel.use_tls = use_tls;
  channel.tls_root_certs = tls_root_certs;
  channel.tls_client_cert = tls_client_cert;
  channel.tls_client_key = tls_client_key;
  channel.token = token;
  return channel;
}

absl::StatusOr<GlobalOptions> ParseGlobalFlags(std::vector<std::string>& args) {
  GlobalOptions options;
  // The environment sets the default address; --server overrides it.
  if (const char* env = std::getenv(kServerEnvironmentVariable); env != nullptr && *env != '\0') {
    options.server = env;
  }
  if (const char* env = std::getenv(kTokenEnvironmentVariable); env != nullptr && *env != '\0') {
    options.token = env;
  }
  size_t i = 0;
  for (; i < args.size() && absl::StartsWith(args[i], "-"); ++i) {
    const std::string& arg = args[i];
    const std::string name = arg.substr(0, arg.find('='));
    if (name == "--help" || name == "-h") {
      options.help = true;
    } else if (name == "--server") {
      absl::StatusOr<std::string> value = TakeValue(args, i, "server");
      if (!value.ok()) return value.status();
      if (value->empty()) return absl::InvalidArgumentError("--server needs host:port");
      options.server = *value;
    } else if (name == "--timeout") {
      absl::StatusOr<std::string> value = TakeValue(args, i, "timeout");
      if (!value.ok()) return value.status();
      absl::Duration timeout;
      if (!absl::ParseDuration(*value, &timeout) || timeout <= absl::ZeroDuration() ||
          timeout == absl::InfiniteDuration()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "--timeout=", *value, " is not a positive duration such as 500ms, 10s or 1m"));
      }
      options.timeout = timeout;
    } else if (name == "--tls") {
      options.use_tls = true;
    } else if (name == "--tls-ca" || name == "--tls-cert" || name == "--tls-key" ||
               name == "--token-file") {
      const std::string flag = name.substr(2);
      absl::StatusOr<std::string> path = TakeValue(args, i, flag);
      if (!path.ok()) return path.status();
      absl::StatusOr<std::string> contents = ReadFlagFile(flag, *path);
      if (!contents.ok()) return contents.status();
      if (flag == "token-file") {
        options.token = std::string(absl::StripAsciiWhitespace(*contents));
      } else {
        options.use_tls = true;  // Any certificate flag means TLS.
        (flag == "tls-ca"     ? options.tls_root_certs
         : flag == "tls-cert" ? options.tls_client_cert
                              : options.tls_client_key) = *contents;
      }
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown global flag ", name,
                       "; global flags are --server, --timeout, --tls, --tls-ca, --tls-cert, "
                       "--tls-key and --token-file, and go before the command"));
    }
  }
  args.erase(args.begin(), args.begin() + static_cast<std::ptrdiff_t>(i));
  if (options.tls_client_cert.empty() != options.tls_client_key.empty()) {
    return absl::InvalidArgumentError("--tls-cert and --tls-key go together (mutual TLS)");
  }
  return options;
}

std::string GlobalFlagHelp() {
  return FlagHelp({
      {"server", false,
       absl::StrCat("kldriftd address host:port (default $", kServerEnvironmentVariable, ", else ",
                    kDefaultServerAddress, ")")},
      {"timeout", false,
       absl::StrCat("deadline of every call, e.g. 500ms, 30s (default ",
                    absl::FormatDuration(kDefaultRpcDeadline), ")")},
      {"tls", true, "connect over TLS, verifying the server with the system's roots"},
      {"tls-ca", false, "PEM CA bundle to verify the server with (implies --tls)"},
      {"tls-cert", false, "PEM client certificate chain for mutual TLS (with --tls-key)"},
      {"tls-key", false, "PEM private key of --tls-cert"},
      {"token-file", false,
       absl::StrCat("file holding the token sent as 'authorization: Bearer' (default $",
                    kTokenEnvironmentVariable, ")")},
  });
}

KlDriftClient MakeClient(const GlobalOptions& options) {
  return KlDriftClient(CreateChannel(options.Channel()), options.timeout);
}

int ReportServerError(const absl::Status& status, std::ostream& err) {
  err << "kldrift: " << absl::StatusCodeToString(status.code()) << ": " << status.message() << "\n";
  return kExitServerError;
}

int ReportUsageError(absl::string_view command, const absl::Status& status, std::ostream& err) {
  err << command << ": " << status.message() << "\n";
  return kExitUsage;
}

absl::StatusOr<v1::StreamId> StreamFromFlags(const ParsedFlags& flags) {
  v1::StreamId stream;
  if (!flags.Has("model")) return absl::InvalidArgumentError("--model is required");
  if (!flags.Has("signal")) return absl::InvalidArgumentError("--signal is required");
  stream.set_model(*flags.Get("model"));
  stream.set_model_version(flags.Get("model-version").value_or(""));
  stream.set_signal(*flags.Get("signal"));
  StreamKey key{stream.model(), stream.model_version(), stream.signal()};
  if (absl::Status status = ValidateStreamKey(key); !status.ok()) return status;
  return stream;
}

std::string StreamName(const v1::StreamId& stream) {
  return absl::StrCat(stream.model(), "/", stream.model_version(), "/", stream.signal());
}

absl::StatusOr<std::vector<double>> ParseNumberList(absl::string_view flag,
                                                    absl::string_view text) {
  std::vector<double> numbers;
  for (absl::string_view item : absl::StrSplit(text, ',')) {
    item = absl::StripAsciiWhitespace(item);
    double value;
    if (!absl::SimpleAtod(item, &value) || std::isnan(value)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--", flag, ": \"", item, "\" is not a number (expected e.g. 0,0.5,1)"));
    }
    numbers.push_back(value);
  }
  return numbers;
}

absl::StatusOr<std::vector<std::string>> ParseLabelList(absl::string_view flag,
                                                        absl::string_view text) {
  std::vector<std::string> labels;
  for (absl::string_view item : absl::StrSplit(text, ',')) {
    item = absl::StripAsciiWhitespace(item);
    if (item.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--", flag, " has an empty item (expected e.g. cat,dog,bird)"));
    }
    labels.emplace_back(item);
  }
  return labels;
}

absl::StatusOr<std::vector<std::string>> ReadItems(const std::string& path, std::istream& in) {
  std::ifstream file;
  std::istream* source = &in;
  if (path != "-") {
    file.open(path);
    if (!file) return absl::NotFoundError(absl::StrCat("cannot open ", path));
    source = &file;
  }
  std::vector<std::string> items;
  std::string line;
  while (std::getline(*source, line)) {
    absl::string_view item = absl::StripAsciiWhitespace(line);
    if (!item.empty()) items.emplace_back(item);
  }
  if (source->bad()) return absl::DataLossError(absl::StrCat("error reading ", path));
  return items;
}

absl::StatusOr<std::vector<double>> ParseValues(const std::string& path,
                                                const std::vector<std::string>& lines) {
  std::vector<double> values;
  values.reserve(lines.size());
  for (size_t i = 0; i < lines.size(); ++i) {
    double value;
    if (!absl::SimpleAtod(lines[i], &value)) {
      return absl::InvalidArgumentError(absl::StrCat(path == "-" ? "stdin" : path, ": item ", i + 1,
                                                     " \"", lines[i], "\" is not a number"));
    }
    values.push_back(value);
  }
  return values;
}

std::string ProcessClientId(absl::string_view prefix) {
  char host[kMaxHostNameLength + 1] = {};
  if (gethostname(host, kMaxHostNameLength) != 0) host[0] = '\0';
  std::string id = absl::StrCat(prefix, ".", host, ".", getpid());
  for (char& c : id) {
    const bool allowed = absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '.' ||
                         c == '_' || c == ':' || c == '/' || c == '-';
    if (!allowed) c = '-';
  }
  if (id.size() > kMaxNameLength) id = id.substr(id.size() - kMaxNameLength);
  return id;
}

void ToProto(absl::Duration duration, google::protobuf::Duration* out) {
  const int64_t seconds = absl::IDivDuration(duration, absl::Seconds(1), &duration);
  out->set_seconds(seconds);
  out->set_nanos(static_cast<int32_t>(absl::ToInt64Nanoseconds(duration)));
}

absl::Duration FromProto(const google::protobuf::Duration& duration) {
  return absl::Seconds(duration.seconds()) + absl::Nanoseconds(duration.nanos());
}

std::string FormatTimestamp(const google::protobuf::Timestamp& timestamp) {
  if (timestamp.seconds() == 0 && timestamp.nanos() == 0) return "";
  const absl::Time time =
      absl::FromUnixSeconds(timestamp.seconds()) + absl::Nanoseconds(timestamp.nanos());
  return absl::FormatTime(kTimestampFormat, time, absl::UTCTimeZone());
}

std::string FormatNumber(double value) {
  if (std::isnan(value)) return "nan";
  if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
  return absl::StrFormat("%.6g", value);
}

}  // namespace kldrift::cli
