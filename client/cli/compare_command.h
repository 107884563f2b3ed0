// `kldrift compare`: every divergence between two histogram files (or two diagonal Gaussians),
// computed locally with the same kernels the server uses.
//
// Thread safety: thread-compatible (writes to the given streams).
#ifndef KLDRIFT_CLIENT_CLI_COMPARE_COMMAND_H_
#define KLDRIFT_CLIENT_CLI_COMPARE_COMMAND_H_

#include <ostream>
#include <string>
#include <vector>

namespace kldrift::cli {

// Runs the command on the words after "compare". Returns the process exit code:
// 0 on success, 2 on bad usage or input (with a message on `err`).
int RunCompare(const std::vector<std::string>& args, std::ostream& out, std::ostream& err);

}  // namespace kldrift::cli

#endif  // KLDRIFT_CLIENT_CLI_COMPARE_COMMAND_H_
