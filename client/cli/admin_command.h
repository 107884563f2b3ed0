// `kldrift admin`: operator commands for a running kldriftd.
//
//   kldrift admin backup --to DIR   online backup of the server's data folder into DIR, a path on
//                                   the server's machine (see README, "Backup and restore").
//   kldrift admin export --model M --output FILE / import --input FILE [--replace]
//                                   hand a model's whole state to another replica (README
//                                   "Sharding").
//
// Thread safety: thread-compatible (writes to the given streams).
#ifndef KLDRIFT_CLIENT_CLI_ADMIN_COMMAND_H_
#define KLDRIFT_CLIENT_CLI_ADMIN_COMMAND_H_

#include <ostream>
#include <string>
#include <vector>

#include "client/cli/server_command.h"

namespace kldrift::cli {

// Runs the words after "admin"; returns the exit code (0 ok, 1 server error, 2 bad usage).
int RunAdmin(const std::vector<std::string>& args, const GlobalOptions& options, std::ostream& out,
             std::ostream& err);

}  // namespace kldrift::cli

#endif  // KLDRIFT_CLIENT_CLI_ADMIN_COMMAND_H_
