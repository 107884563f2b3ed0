#include "client/cli/command_line.h"

#include <cmath>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace kldrift::cli {

std::optional<std::string> ParsedFlags::Get(const std::string& name) const {
  auto it = values_.find(name);
  if (it == values_.end()) return std::nullopt;
  return it->second;
}

absl::StatusOr<double> ParsedFlags::GetDouble(const std::string& name, double default_value) const {
  std::optional<std::string> value = Get(name);
  if (!value) return default_value;
  double parsed;
  if (!absl::SimpleAtod(*value, &parsed) || std::isnan(parsed)) {
    return absl::InvalidArgumentError(absl::StrCat("--", name, "=", *value, " is not a number"));
  }
  return parsed;
}

absl::StatusOr<long> ParsedFlags::GetInt(const std::string& name, long default_value) const {
  std::optional<std::string> value = Get(name);
  if (!value) return default_value;
  int64_t parsed;
  if (!absl::SimpleAtoi(*value, &parsed)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", name, "=", *value, " is not a whole number"));
  }
  return static_cast<long>(parsed);
}

absl::StatusOr<ParsedFlags> ParseFlags(const std::string& command,
                                       const std::vector<FlagSpec>& specs,
                                       const std::vector<std::string>& args) {
  ParsedFlags flags;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (!absl::StartsWith(arg, "--") || arg.size() == 2) {
      return absl::InvalidArgumentError(absl::StrCat("unexpected argument \"", arg, "\" for '",
                                                     command, "'; flags look like --name value"));
    }
    std::string name = arg.substr(2);
    std::optional<std::string> inline_value;
    if (size_t eq = name.find('='); eq != std::string::npos) {
      inline_value = name.substr(eq + 1);
      name = name.substr(0, eq);
    }
    const FlagSpec* spec = nullptr;
    for (const FlagSpec& candidate : specs) {
      if (candidate.name == name) spec = &candidate;
    }
    if (spec == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag --", name, " for '", command,
                                                     "'; see '", command, " --help'"));
    }
    if (flags.values_.count(name) > 0) {
      return absl::InvalidArgumentError(absl::StrCat("--", name, " is given twice"));
    }
    if (spec->is_switch) {
      if (inline_value) {
        return absl::InvalidArgumentError(absl::StrCat("--", name, " takes no value"));
      }
      flags.values_[name] = "true";
      continue;
    }
    if (inline_value) {
      flags.values_[name] = *inline_value;
    } else if (i + 1 < args.size()) {
      flags.values_[name] = args[++i];
    } else {
      return absl::InvalidArgumentError(absl::StrCat("--", name, " needs a value"));
    }
  }
  return flags;
}

std::string FlagHelp(const std::vector<FlagSpec>& specs) {
  std::string help;
  for (const FlagSpec& spec : specs) {
    std::string left = absl::StrCat("  --", spec.name, spec.is_switch ? "" : " VALUE");
    if (left.size() < 26) left.resize(26, ' ');
    absl::StrAppend(&help, left, " ", spec.help, "\n");
  }
  return help;
}

}  // namespace kldrift::cli
