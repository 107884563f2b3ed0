// `kldrift bench`: a load generator for kldriftd (or any server of the KlDrift API).
//
// Creates references for models x signals streams (skipping those that exist), then keeps
// --clients concurrent Ingest streams busy for a bounded time, each with its own client id,
// connection and share of the streams, and --in-flight unacknowledged batches. Each batch carries
// histograms for up to --batch-streams streams of one model: pre-binned K-bin deltas, or (values
// mode) --batch-values raw values per stream binned on the client with the library's binning.
// Optionally a separate thread calls GetDrift on random streams at a fixed rate meanwhile, and the
// server's CPU time and resident memory are read from its /metrics or /proc/PID.
//
// Reported, over the measured interval after the warm-up: acknowledged batches/s, histogram
// bins/s (and raw values/s), ack latency percentiles (Write of a batch to the acknowledgement
// covering its sequence), GetDrift latency percentiles, server CPU seconds per million bins and
// resident memory per stream. Totals over the whole run (warm-up included, every batch waited for)
// let tests compare the server's counters with what was sent.
//
// Thread safety: thread-compatible (RunBench starts and joins its own threads).
#ifndef KLDRIFT_CLIENT_CLI_BENCH_COMMAND_H_
#define KLDRIFT_CLIENT_CLI_BENCH_COMMAND_H_

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "client/cli/arrival_schedule.h"
#include "client/cli/command_line.h"
#include "client/cli/server_command.h"

namespace kldrift::cli {

// Runs the command on the words after "bench". Returns the process exit code.
int RunBench(const std::vector<std::string>& args, const GlobalOptions& options, std::ostream& out,
             std::ostream& err);

// Exposed for tests.
const std::vector<FlagSpec>& BenchFlags();

struct BenchOptions {
  enum class Mode { kPreBinned, kValues };
  Mode mode = Mode::kPreBinned;
  int clients = 4;
  int models = 100;
  int streams_per_model = 100;
  // Buckets of every stream's histogram, in the full layout (values mode: K - 3 interior bins plus
  // underflow, overflow and NaN).
  int bins = 64;
  // Streams per IngestRequest (at most streams_per_model: a batch is for one model).
  int batch_streams = 100;
  // Values mode: raw values per stream per batch.
  int batch_values = 100;
  absl::Duration duration = absl::Seconds(10);
  absl::Duration warmup = absl::Seconds(2);
  // Unacknowledged batches per Ingest stream.
  int in_flight = 8;
  // Batches per second across all clients (each client paced at its share); 0: as fast as acks
  // allow. A paced load measures GetDrift latency under a given ingest rate rather than under
  // saturation (where client and server compete for the cores).
  double ingest_rate = 0;
  // GetDrift calls per second on random streams while ingest runs; 0: none.
  double get_drift_qps = 100;
  // When paced batches (--ingest-rate) and GetDrift calls are sent (arrival_schedule.h):
  // Poisson (independent senders) or on fixed grids started together.
  ArrivalSchedule::Kind arrivals = ArrivalSchedule::Kind::kPoisson;
  // Where the server's CPU and memory are read: its /metrics (host:port), else /proc/PID.
  std::string metrics_address;
  int server_pid = 0;
  // Model names are "<prefix>-model-<m>", signals "signal-<s>".
  std::string model_prefix = "bench";
  // Create missing references first (default), only that, or not at all.
  bool setup = true;
  bool setup_only = false;
  bool json = false;
  // JSON: every stream's acknowledged observations.
  bool per_stream = false;
  uint64_t seed = 1;
};

// INVALID_ARGUMENT naming the flag at fault.
absl::StatusOr<BenchOptions> ParseBenchOptions(const ParsedFlags& flags);

}  // namespace kldrift::cli

#endif  // KLDRIFT_CLIENT_CLI_BENCH_COMMAND_H_
