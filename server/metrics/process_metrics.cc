#include "server/metrics/process_metrics.h"

#include <dirent.h>
#include <sys/resource.h>
#include <unistd.h>

#include <fstream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "prometheus/client_metric.h"
#include "prometheus/metric_type.h"

namespace kldrift {
namespace {

absl::StatusOr<std::string> ReadFile(const char* path) {
  std::ifstream in(path);
  if (!in) return absl::UnavailableError(absl::StrCat("cannot read ", path));
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// /proc/stat's btime: when the machine booted, Unix seconds.
absl::StatusOr<double> BootTime() {
  absl::StatusOr<std::string> stat = ReadFile("/proc/stat");
  if (!stat.ok()) return stat.status();
  for (absl::string_view line : absl::StrSplit(*stat, '\n')) {
    double seconds = 0;
    if (absl::ConsumePrefix(&line, "btime ") && absl::SimpleAtod(line, &seconds)) return seconds;
  }
  return absl::UnavailableError("no btime in /proc/stat");
}

absl::StatusOr<double> OpenFds() {
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return absl::UnavailableError("cannot list /proc/self/fd");
  double count = 0;
  while (const dirent* entry = readdir(dir)) {
    if (entry->d_name[0] != '.') ++count;
  }
  closedir(dir);
  return count;
}

prometheus::MetricFamily Family(const char* name, const char* help, prometheus::MetricType type,
                                double value) {
  prometheus::MetricFamily family;
  family.name = name;
  family.help = help;
  family.type = type;
  family.metric.emplace_back();
  if (type == prometheus::MetricType::Counter) {
    family.metric.back().counter.value = value;
  } else {
    family.metric.back().gauge.value = value;
  }
  return family;
}

}  // namespace

absl::StatusOr<ProcessStats> ParseProcStat(absl::string_view line, double ticks_per_second,
                                           double page_size) {
  // "pid (comm) state ppid ...": the command name is free text, so fields count from the last ')'.
  const size_t paren = line.rfind(')');
  if (paren == absl::string_view::npos) {
    return absl::InvalidArgumentError("no ')' in /proc/self/stat");
  }
  const std::vector<absl::string_view> fields =
      absl::StrSplit(line.substr(paren + 1), ' ', absl::SkipEmpty());
  // fields[0] is field 3 of proc(5) (state): field n is fields[n - 3].
  constexpr size_t kUtime = 14 - 3, kStime = 15 - 3, kStartTime = 22 - 3, kVsize = 23 - 3,
                   kRss = 24 - 3;
  double utime = 0, stime = 0, start = 0, vsize = 0, rss = 0;
  if (fields.size() <= kRss || !absl::SimpleAtod(fields[kUtime], &utime) ||
      !absl::SimpleAtod(fields[kStime], &stime) || !absl::SimpleAtod(fields[kStartTime], &start) ||
      !absl::SimpleAtod(fields[kVsize], &vsize) || !absl::SimpleAtod(fields[kRss], &rss)) {
    return absl::InvalidArgumentError("malformed /proc/self/stat");
  }
  ProcessStats stats;
  stats.cpu_seconds = (utime + stime) / ticks_per_second;
  stats.virtual_bytes = vsize;
  stats.resident_bytes = rss * page_size;
  stats.start_time_seconds = start / ticks_per_second;  // After boot, until ReadProcessStats.
  return stats;
}

absl::StatusOr<ProcessStats> ReadProcessStats() {
  absl::StatusOr<std::string> line = ReadFile("/proc/self/stat");
  if (!line.ok()) return line.status();
  const double ticks_per_second = static_cast<double>(sysconf(_SC_CLK_TCK));
  absl::StatusOr<ProcessStats> stats =
      ParseProcStat(*line, ticks_per_second, static_cast<double>(sysconf(_SC_PAGESIZE)));
  if (!stats.ok()) return absl::UnavailableError(stats.status().message());
  absl::StatusOr<double> boot = BootTime();
  if (!boot.ok()) return boot.status();
  stats->start_time_seconds += *boot;
  absl::StatusOr<double> open_fds = OpenFds();
  if (!open_fds.ok()) return open_fds.status();
  stats->open_fds = *open_fds;
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) == 0) stats->max_fds = static_cast<double>(limit.rlim_cur);
  return stats;
}

void AppendProcessFamilies(const ProcessStats& stats,
                           std::vector<prometheus::MetricFamily>& families) {
  using prometheus::MetricType;
  families.push_back(Family("process_cpu_seconds_total",
                            "Total user and system CPU time spent in seconds.", MetricType::Counter,
                            stats.cpu_seconds));
  families.push_back(Family("process_open_fds", "Number of open file descriptors.",
                            MetricType::Gauge, stats.open_fds));
  families.push_back(Family("process_max_fds", "Maximum number of open file descriptors.",
                            MetricType::Gauge, stats.max_fds));
  families.push_back(Family("process_virtual_memory_bytes", "Virtual memory size in bytes.",
                            MetricType::Gauge, stats.virtual_bytes));
  families.push_back(Family("process_resident_memory_bytes", "Resident memory size in bytes.",
                            MetricType::Gauge, stats.resident_bytes));
  families.push_back(Family("process_start_time_seconds",
                            "Start time of the process since unix epoch in seconds.",
                            MetricType::Gauge, stats.start_time_seconds));
}

}  // namespace kldrift
