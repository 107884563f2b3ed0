// kldrift: the command-line client of kldriftd, and a local drift calculator.
#include <iostream>
#include <string>
#include <vector>

#include "client/cli/admin_command.h"
#include "client/cli/bench_command.h"
#include "client/cli/compare_command.h"
#include "client/cli/drift_command.h"
#include "client/cli/ingest_command.h"
#include "client/cli/reference_command.h"
#include "client/cli/server_command.h"
#include "client/cli/simulate_command.h"

namespace {

using kldrift::cli::kExitOk;
using kldrift::cli::kExitUsage;

void PrintUsage(std::ostream& out) {
  out << "usage: kldrift [--server host:port] [--timeout D] [--tls] [--tls-ca F] [--tls-cert F "
         "--tls-key F]\n               [--token-file F] <command> [flags]\n\n"
         "commands:\n"
         "  compare    divergences between two histogram (or Gaussian) files, computed locally\n"
         "  reference  put, get, list or delete a stream's reference distribution\n"
         "  ingest     send one batch of production data (values, labels or counts)\n"
         "  drift      a stream's drift reports, as a table or JSON\n"
         "  watch      drift reports pushed by the server, as JSON lines\n"
         "  admin      operator commands: backup --to DIR (online backup of the data folder)\n"
         "  simulate   stream synthetic N(shift, 1) predictions, for demos and dashboards\n"
         "  bench      a load generator: ingest throughput, ack and GetDrift latency, server "
         "cost\n\n"
         "global flags (before the command; every call to the server has the deadline):\n"
      << kldrift::cli::GlobalFlagHelp()
      << "\n'kldrift <command> --help' describes a command's flags.\n"
         "Exit codes: 0 ok, 1 error from the server, 2 bad usage or input.\n";
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  absl::StatusOr<kldrift::cli::GlobalOptions> options = kldrift::cli::ParseGlobalFlags(args);
  if (!options.ok()) {
    std::cerr << "kldrift: " << options.status().message() << "\n\n";
    PrintUsage(std::cerr);
    return kExitUsage;
  }
  if (options->help) {
    PrintUsage(std::cout);
    return kExitOk;
  }
  if (args.empty()) {
    PrintUsage(std::cerr);
    return kExitUsage;
  }
  const std::string command = args.front();
  args.erase(args.begin());
  if (command == "help") {
    PrintUsage(std::cout);
    return kExitOk;
  }
  if (command == "compare") return kldrift::cli::RunCompare(args, std::cout, std::cerr);
  if (command == "reference") {
    return kldrift::cli::RunReference(args, *options, std::cout, std::cerr, std::cin);
  }
  if (command == "ingest") {
    return kldrift::cli::RunIngest(args, *options, std::cout, std::cerr, std::cin);
  }
  if (command == "drift") return kldrift::cli::RunDrift(args, *options, std::cout, std::cerr);
  if (command == "admin") return kldrift::cli::RunAdmin(args, *options, std::cout, std::cerr);
  if (command == "watch") return kldrift::cli::RunWatch(args, *options, std::cout, std::cerr);
  if (command == "simulate") {
    return kldrift::cli::RunSimulate(args, *options, std::cout, std::cerr);
  }
  if (command == "bench") return kldrift::cli::RunBench(args, *options, std::cout, std::cerr);
  std::cerr << "kldrift: unknown command \"" << command << "\"\n\n";
  PrintUsage(std::cerr);
  return kExitUsage;
}
