// ArrivalSchedule: when a paced sender of `kldrift bench` (an Ingest client at --ingest-rate, or
// the GetDrift caller) sends next.
//
// kPoisson draws each gap from an exponential distribution of the given mean, starting at a random
// point of the process: the arrivals of many independent services and dashboards. kFixed makes
// every gap the mean, starting at once, so senders started together stay on one grid (a fleet
// flushing in step). Two fixed grids whose periods divide each other lock in phase: a GetDrift
// that lands just after a burst of batches does so on every period, or never, and its latency
// percentiles then depend on where the grids happened to fall (kldrift bench --arrivals).
//
// Thread safety: thread-compatible; one schedule per sender.
#ifndef KLDRIFT_CLIENT_CLI_ARRIVAL_SCHEDULE_H_
#define KLDRIFT_CLIENT_CLI_ARRIVAL_SCHEDULE_H_

#include <cstdint>
#include <random>

#include "absl/time/time.h"

namespace kldrift::cli {

class ArrivalSchedule {
 public:
  enum class Kind { kPoisson, kFixed };

  // REQUIRES: mean >= 0 (0: no pacing; every gap is 0).
  ArrivalSchedule(Kind kind, absl::Duration mean, uint64_t seed);

  // From the sender's start to its first send.
  absl::Duration FirstDelay();
  // From one send to the next.
  absl::Duration NextGap();

 private:
  const Kind kind_;
  const absl::Duration mean_;
  std::mt19937_64 random_;
};

}  // namespace kldrift::cli

#endif  // KLDRIFT_CLIENT_CLI_ARRIVAL_SCHEDULE_H_
