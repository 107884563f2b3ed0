// `kldrift simulate`: streams synthetic predictions through a Recorder, for demos and dashboards.
//
// Creates a standard-normal numeric reference for the stream if it has none, then records values
// drawn from N(shift, 1) at a steady rate for a bounded duration, and reports what the Recorder
// sent, had acknowledged and dropped.
//
// Thread safety: thread-compatible (writes to the given streams).
#ifndef KLDRIFT_CLIENT_CLI_SIMULATE_COMMAND_H_
#define KLDRIFT_CLIENT_CLI_SIMULATE_COMMAND_H_

#include <ostream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "client/cli/command_line.h"
#include "client/cli/server_command.h"
#include "kldrift/v1/kldrift.pb.h"

namespace kldrift::cli {

// Runs the command on the words after "simulate". Returns the process exit code.
int RunSimulate(const std::vector<std::string>& args, const GlobalOptions& options,
                std::ostream& out, std::ostream& err);

// Exposed for tests.
const std::vector<FlagSpec>& SimulateFlags();

struct SimulateOptions {
  v1::StreamId stream;
  double shift = 0;
  double rate_per_second = 100;
  absl::Duration duration = absl::Seconds(30);
  std::vector<double> edges;  // For a reference created by the command.
  bool edges_given = false;
  uint64_t seed = 0;
};

// INVALID_ARGUMENT naming the flag at fault. --rate is "N" or "N/s".
absl::StatusOr<SimulateOptions> ParseSimulateOptions(const ParsedFlags& flags);

// A numeric reference over `edges` whose counts are the standard normal's probabilities of each
// bucket (underflow and overflow included) times a fixed sample size, rounded.
v1::PutReferenceRequest StandardNormalReference(const v1::StreamId& stream,
                                                const std::vector<double>& edges);

}  // namespace kldrift::cli

#endif  // KLDRIFT_CLIENT_CLI_SIMULATE_COMMAND_H_
