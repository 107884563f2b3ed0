// Per-command flag parsing for the `kldrift` CLI.
//
// Each subcommand declares the flags it takes; anything else is a usage error (exit code 2) that
// names the flag and the command, rather than being silently ignored or applied to another command.
// Accepts `--name value`, `--name=value` and, for switches, `--name`.
//
// Thread safety: thread-compatible.
#ifndef KLDRIFT_CLIENT_CLI_COMMAND_LINE_H_
#define KLDRIFT_CLIENT_CLI_COMMAND_LINE_H_

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace kldrift::cli {

struct FlagSpec {
  std::string name;  // Without the leading "--".
  bool is_switch = false;
  std::string help;
};

class ParsedFlags {
 public:
  bool Has(const std::string& name) const { return values_.count(name) > 0; }
  std::optional<std::string> Get(const std::string& name) const;
  // The flag's value as a double; INVALID_ARGUMENT naming the flag if it does not parse.
  absl::StatusOr<double> GetDouble(const std::string& name, double default_value) const;
  absl::StatusOr<long> GetInt(const std::string& name, long default_value) const;

 private:
  friend absl::StatusOr<ParsedFlags> ParseFlags(const std::string&, const std::vector<FlagSpec>&,
                                                const std::vector<std::string>&);
  std::map<std::string, std::string> values_;
};

// Parses `args` (the words after the subcommand) against `specs`.
absl::StatusOr<ParsedFlags> ParseFlags(const std::string& command,
                                       const std::vector<FlagSpec>& specs,
                                       const std::vector<std::string>& args);

// A help text listing `specs`.
std::string FlagHelp(const std::vector<FlagSpec>& specs);

}  // namespace kldrift::cli

#endif  // KLDRIFT_CLIENT_CLI_COMMAND_LINE_H_
