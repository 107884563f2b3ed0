// `kldrift drift` (a stream's current drift reports) and `kldrift watch` (reports pushed by the
// server as JSON lines), and the report formats they share.
//
// JSON: one object per window with keys model, model_version, signal, window, samples,
// alert_state ("ok" / "pending" / "firing"), severity ("none" / "warn" /
// "critical"), state_since, reference_version, measure, measure_value, evaluated_at, and
//   histogram streams: kl_current_reference, kl_reference_current, jeffreys, psi, js_bits,
//     hellinger, total_variation, l_inf, chi2, g_test_p_value, alpha, top_bins (the measures of
//     `kldrift compare`, under the same names; absent while the window holds no samples);
//   Gaussian streams: kl_current_reference, kl_reference_current, current_mean, current_var;
//   policy streams: k1, k2, k3, each {"mean", "standard_error"}.
//
// Thread safety: thread-compatible (writes to the given streams).
#ifndef KLDRIFT_CLIENT_CLI_DRIFT_COMMAND_H_
#define KLDRIFT_CLIENT_CLI_DRIFT_COMMAND_H_

#include <ostream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/cli/command_line.h"
#include "client/cli/json_writer.h"
#include "client/cli/server_command.h"
#include "kldrift/v1/kldrift.pb.h"

namespace kldrift::cli {

// Run the commands on the words after "drift" / "watch". Return the process exit code.
int RunDrift(const std::vector<std::string>& args, const GlobalOptions& options, std::ostream& out,
             std::ostream& err);
int RunWatch(const std::vector<std::string>& args, const GlobalOptions& options, std::ostream& out,
             std::ostream& err);

// Exposed for tests: the flags and requests of both commands, and the report formats.
const std::vector<FlagSpec>& DriftFlags();
const std::vector<FlagSpec>& WatchFlags();
absl::StatusOr<v1::GetDriftRequest> BuildGetDriftRequest(const ParsedFlags& flags);
absl::StatusOr<v1::WatchDriftRequest> BuildWatchDriftRequest(const ParsedFlags& flags);

void WriteDriftReportJson(const v1::DriftReport& report, JsonWriter& json);
std::string FormatDriftReports(const std::vector<v1::DriftReport>& reports);
// "ok", "pending", "firing" ("unknown" if unset).
std::string AlertStateName(v1::AlertState state);
// "none", "warn", "critical" ("unknown" if unset).
std::string SeverityName(v1::Severity severity);

}  // namespace kldrift::cli

#endif  // KLDRIFT_CLIENT_CLI_DRIFT_COMMAND_H_
