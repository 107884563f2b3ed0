// `kldrift ingest`: sends one batch of production data for a stream and waits for the server's
// acknowledgement. Values and labels are binned locally against the stream's reference, exactly as
// the Recorder bins them, and sent as one histogram delta tagged with the reference version.
//
// Thread safety: thread-compatible (writes to the given streams).
#ifndef KLDRIFT_CLIENT_CLI_INGEST_COMMAND_H_
#define KLDRIFT_CLIENT_CLI_INGEST_COMMAND_H_

#include <istream>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/cli/command_line.h"
#include "client/cli/server_command.h"
#include "client/internal/stream_accumulator.h"

namespace kldrift::cli {

// Runs the command on the words after "ingest". `in` is read for --values-file - and
// --labels-file -. Returns the process exit code (a rejected batch is a server error, 1).
int RunIngest(const std::vector<std::string>& args, const GlobalOptions& options, std::ostream& out,
              std::ostream& err, std::istream& in);

// Exposed for tests.
const std::vector<FlagSpec>& IngestFlags();

// The data of one `kldrift ingest`: exactly one of the three.
struct IngestData {
  std::optional<std::vector<double>> values;
  std::optional<std::vector<std::string>> labels;
  std::optional<std::vector<double>> counts;
};

// Reads --values-file, --labels-file or --counts. INVALID_ARGUMENT for a missing, extra or
// malformed data flag, or no data.
absl::StatusOr<IngestData> ReadIngestData(const ParsedFlags& flags, std::istream& in);

// The delta `data` adds to a stream with `bins`. INVALID_ARGUMENT if the data does not fit the
// reference (labels for a numeric stream, counts of the wrong length).
absl::StatusOr<client_internal::StreamDelta> BinIngestData(
    const IngestData& data, std::shared_ptr<const client_internal::ReferenceBins> bins,
    const std::string& signal);

}  // namespace kldrift::cli

#endif  // KLDRIFT_CLIENT_CLI_INGEST_COMMAND_H_
