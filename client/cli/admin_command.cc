#include "client/cli/admin_command.h"

#include <fstream>
#include <sstream>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "client/cli/command_line.h"
#include "client/kldrift_client.h"

namespace kldrift::cli {
namespace {

constexpr char kUsage[] =
    "usage: kldrift [--server ADDR] [--timeout D] admin backup --to DIR\n"
    "       kldrift [--server ADDR] [--timeout D] admin export --model M --output FILE\n"
    "       kldrift [--server ADDR] [--timeout D] admin import --input FILE [--replace]\n\n"
    "backup: kldriftd writes a consistent copy of its data folder (a RocksDB checkpoint) into "
    "DIR,\n"
    "an absolute path on the server's machine that must not exist yet, without pausing ingest.\n"
    "Start a kldriftd with --data-dir DIR to restore it. Give a --timeout long enough for a large\n"
    "store.\n"
    "export / import: hand a model to another replica of a sharded deployment (README\n"
    "\"Sharding\"): export writes the model's whole state on --server (every stream's reference\n"
    "versions, window sub-buckets and alert states) to FILE; import installs FILE on --server,\n"
    "refusing a model that already has streams there unless --replace.\n\n";

// The export file: a serialized kldrift.v1.ModelExport behind this line, so a wrong file is told
// apart from a damaged one.
constexpr char kExportMagic[] = "kldrift-model-export v1\n";

const std::vector<FlagSpec>& BackupFlags() {
  static const auto* specs = new std::vector<FlagSpec>{
      {"to", false, "where the copy goes: an absolute path on the server's machine (required)"},
      {"help", true, "show this help"},
  };
  return *specs;
}

const std::vector<FlagSpec>& ExportFlags() {
  static const auto* specs = new std::vector<FlagSpec>{
      {"model", false, "the model to export (required)"},
      {"output", false, "the file to write (required)"},
      {"help", true, "show this help"},
  };
  return *specs;
}

const std::vector<FlagSpec>& ImportFlags() {
  static const auto* specs = new std::vector<FlagSpec>{
      {"input", false, "a file written by kldrift admin export (required)"},
      {"replace", true, "delete the model's streams on the server first"},
      {"help", true, "show this help"},
  };
  return *specs;
}

int RunExport(const ParsedFlags& flags, const GlobalOptions& options, std::ostream& out,
              std::ostream& err) {
  constexpr char kCommand[] = "kldrift admin export";
  const std::string model = flags.Get("model").value_or("");
  const std::string output = flags.Get("output").value_or("");
  if (model.empty() || output.empty()) {
    return ReportUsageError(
        kCommand, absl::InvalidArgumentError("--model M and --output FILE are required"), err);
  }
  absl::StatusOr<v1::ModelExport> exported = MakeClient(options).ExportModel(model);
  if (!exported.ok()) return ReportServerError(exported.status(), err);
  std::ofstream file(output, std::ios::binary | std::ios::trunc);
  file << kExportMagic;
  exported->SerializeToOstream(&file);
  file.close();
  if (!file) {
    err << kCommand << ": cannot write " << output << "\n";
    return kExitServerError;
  }
  out << "exported " << exported->streams_size() << " streams of " << model << " to " << output
      << "\n";
  return kExitOk;
}

int RunImport(const ParsedFlags& flags, const GlobalOptions& options, std::ostream& out,
              std::ostream& err) {
  constexpr char kCommand[] = "kldrift admin import";
  const std::string input = flags.Get("input").value_or("");
  if (input.empty()) {
    return ReportUsageError(kCommand, absl::InvalidArgumentError("--input FILE is required"), err);
  }
  std::ifstream file(input, std::ios::binary);
  std::stringstream contents;
  contents << file.rdbuf();
  const std::string bytes = contents.str();
  v1::ModelExport model_export;
  if (!file || bytes.compare(0, sizeof(kExportMagic) - 1, kExportMagic) != 0 ||
      !model_export.ParseFromString(bytes.substr(sizeof(kExportMagic) - 1))) {
    return ReportUsageError(
        kCommand,
        absl::InvalidArgumentError(absl::StrCat(
            input, " is not a file written by kldrift admin export (missing, or damaged)")),
        err);
  }
  absl::StatusOr<uint32_t> streams =
      MakeClient(options).ImportModel(model_export, flags.Has("replace"));
  if (!streams.ok()) return ReportServerError(streams.status(), err);
  out << "imported " << *streams << " streams of " << model_export.model() << "\n";
  return kExitOk;
}

}  // namespace

int RunAdmin(const std::vector<std::string>& args, const GlobalOptions& options, std::ostream& out,
             std::ostream& err) {
  if (args.empty() || args[0] == "--help" || args[0] == "-h") {
    (args.empty() ? err : out) << kUsage << FlagHelp(BackupFlags());
    return args.empty() ? kExitUsage : kExitOk;
  }
  const std::string subcommand = args[0];
  const std::vector<FlagSpec>* specs = subcommand == "backup"   ? &BackupFlags()
                                       : subcommand == "export" ? &ExportFlags()
                                       : subcommand == "import" ? &ImportFlags()
                                                                : nullptr;
  if (specs == nullptr) {
    err << "kldrift admin: unknown subcommand \"" << subcommand << "\"\n\n" << kUsage;
    return kExitUsage;
  }
  const std::string command = absl::StrCat("kldrift admin ", subcommand);
  const std::vector<std::string> rest(args.begin() + 1, args.end());
  absl::StatusOr<ParsedFlags> flags = ParseFlags(command, *specs, rest);
  if (!flags.ok()) return ReportUsageError(command, flags.status(), err);
  if (flags->Has("help")) {
    out << kUsage << FlagHelp(*specs);
    return kExitOk;
  }
  if (subcommand == "export") return RunExport(*flags, options, out, err);
  if (subcommand == "import") return RunImport(*flags, options, out, err);
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
