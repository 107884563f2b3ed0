// `kldrift reference put|get|list|delete`: managing the reference distributions kldriftd compares
// production data with.
//
// Thread safety: thread-compatible (writes to the given streams).
#ifndef KLDRIFT_CLIENT_CLI_REFERENCE_COMMAND_H_
#define KLDRIFT_CLIENT_CLI_REFERENCE_COMMAND_H_

#include <istream>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/cli/command_line.h"
#include "client/cli/json_writer.h"
#include "client/cli/server_command.h"
#include "kldrift/v1/kldrift.pb.h"

namespace kldrift::cli {

// Runs the command on the words after "reference" (a subcommand and its flags). `in` is read for
// --values-file -. Returns the process exit code (see server_command.h).
int RunReference(const std::vector<std::string>& args, const GlobalOptions& options,
                 std::ostream& out, std::ostream& err, std::istream& in);

// The flags of `reference put`, and the request they describe (INVALID_ARGUMENT naming the flag
// at fault). Exposed for tests.
const std::vector<FlagSpec>& PutReferenceFlags();
absl::StatusOr<v1::PutReferenceRequest> BuildPutReferenceRequest(const ParsedFlags& flags,
                                                                 std::istream& in);

// A reference as JSON (an object) and as readable text. Exposed for tests.
void WriteReferenceJson(const v1::Reference& reference, JsonWriter& json);
std::string FormatReference(const v1::Reference& reference);
std::string FormatReferenceList(const std::vector<v1::Reference>& references);
// "numeric", "categorical", "pre_binned", "gaussian", "paired_log_probs".
std::string KindName(v1::ReferenceKind kind);

}  // namespace kldrift::cli

#endif  // KLDRIFT_CLIENT_CLI_REFERENCE_COMMAND_H_
