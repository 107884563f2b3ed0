// kldrift: the command-line client of kldriftd, and a local drift calculator.
#include <iostream>
#include <string>
#include <vector>

#include "client/cli/compare_command.h"

namespace {

constexpr int kExitUsage = 2;

void PrintUsage(std::ostream& out) {
  out << "usage: kldrift <command> [flags]\n\n"
         "commands:\n"
         "  compare    divergences between two histogram (or Gaussian) files, computed locally\n\n"
         "'kldrift <command> --help' describes a command's flags.\n";
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty()) {
    PrintUsage(std::cerr);
    return kExitUsage;
  }
  const std::string command = args.front();
  args.erase(args.begin());
  if (command == "--help" || command == "-h" || command == "help") {
    PrintUsage(std::cout);
    return 0;
  }
  if (command == "compare") {
    return kldrift::cli::RunCompare(args, std::cout, std::cerr);
  }
  std::cerr << "kldrift: unknown command \"" << command << "\"\n\n";
  PrintUsage(std::cerr);
  return kExitUsage;
}
