#include "client/cli/admin_command.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "client/cli/command_line.h"
#include "client/kldrift_client.h"

namespace kldrift::cli {
namespace {

constexpr char kUsage[] =
    "usage: kldrift [--server ADDR] [--timeout D] admin backup --to DIR\n\n"
    "Online backup: kldriftd writes a consistent copy of its data folder (a RocksDB checkpoint)\n"
    "into DIR, an absolute path on the server's machine that must not exist yet, without pausing\n"
    "ingest. Start a kldriftd with --data-dir DIR to restore it. Give a --timeout long enough for\n"
    "a large store.\n\n";

const std::vector<FlagSpec>& BackupFlags() {
  static const auto* specs = new std::vector<FlagSpec>{
      {"to", false, "where the copy goes: an absolute path on the server's machine (required)"},
      {"help", true, "show this help"},
  };
  return *specs;
}

}  // namespace

int RunAdmin(const std::vector<std::string>& args, const GlobalOptions& options, std::ostream& out,
             std::ostream& err) {
  if (args.empty() || args[0] == "--help" || args[0] == "-h") {
    (args.empty() ? err : out) << kUsage << FlagHelp(BackupFlags());
    return args.empty() ? kExitUsage : kExitOk;
  }
  if (args[0] != "backup") {
    err << "kldrift admin: unknown subcommand \"" << args[0] << "\"\n\n" << kUsage;
    return kExitUsage;
  }
  const std::vector<std::string> rest(args.begin() + 1, args.end());
  absl::StatusOr<ParsedFlags> flags = ParseFlags("kldrift admin backup", BackupFlags(), rest);
  if (!flags.ok()) return ReportUsageError("kldrift admin backup", flags.status(), err);
  if (flags->Has("help")) {
    out << kUsage << FlagHelp(BackupFlags());
    return kExitOk;
  }
  const std::string directory = flags->Get("to").value_or("");
  if (directory.empty()) {
    return ReportUsageError("kldrift admin backup",
                            absl::InvalidArgumentError("--to DIR is required"), err);
  }
  absl::StatusOr<uint64_t> bytes = MakeClient(options).Backup(directory);
  if (!bytes.ok()) return ReportServerError(bytes.status(), err);
  out << "backed up to " << directory << " (" << *bytes << " bytes)\n";
  return kExitOk;
}

}  // namespace kldrift::cli
