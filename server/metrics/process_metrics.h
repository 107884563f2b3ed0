// The standard process metrics of the Prometheus client libraries, read from /proc/self.
//
//   absl::StatusOr<ProcessStats> stats = ReadProcessStats();
//   if (stats.ok()) AppendProcessFamilies(*stats, families);
//
// Names, types and meanings are those of the Go and Python clients' process collector
// (process_cpu_seconds_total, process_resident_memory_bytes, ...), so dashboards and load
// generators written for any Prometheus-instrumented server read kldriftd's too.
//
// Thread safety: both functions are safe to call concurrently (they read /proc, no state).
#ifndef KLDRIFT_SERVER_METRICS_PROCESS_METRICS_H_
#define KLDRIFT_SERVER_METRICS_PROCESS_METRICS_H_

#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "prometheus/metric_family.h"

namespace kldrift {

struct ProcessStats {
  double cpu_seconds = 0;         // User plus system CPU time.
  double resident_bytes = 0;      // Resident set size.
  double virtual_bytes = 0;       // Virtual memory size.
  double open_fds = 0;            // Entries of /proc/self/fd.
  double max_fds = 0;             // The soft RLIMIT_NOFILE.
  double start_time_seconds = 0;  // Unix seconds.
};

// UNAVAILABLE when /proc cannot be read (not Linux, or no /proc mounted).
absl::StatusOr<ProcessStats> ReadProcessStats();

// The fields of a /proc/<pid>/stat line that ProcessStats needs: CPU seconds, virtual and resident
// bytes, and the start time in seconds after boot. `ticks_per_second` and `page_size` convert.
// INVALID_ARGUMENT if the line is malformed. The command name may contain spaces and ')'.
absl::StatusOr<ProcessStats> ParseProcStat(absl::string_view line, double ticks_per_second,
                                           double page_size);

// Appends process_cpu_seconds_total (a counter) and the process_* gauges to `families`.
void AppendProcessFamilies(const ProcessStats& stats,
                           std::vector<prometheus::MetricFamily>& families);

}  // namespace kldrift

#endif  // KLDRIFT_SERVER_METRICS_PROCESS_METRICS_H_
