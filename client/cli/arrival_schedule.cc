#include "client/cli/arrival_schedule.h"

#include <cmath>

namespace kldrift::cli {

ArrivalSchedule::ArrivalSchedule(Kind kind, absl::Duration mean, uint64_t seed)
    : kind_(kind), mean_(mean), random_(seed) {}

absl::Duration ArrivalSchedule::FirstDelay() {
  // A Poisson process is memoryless: the wait from any instant to its next arrival is one gap.
  return kind_ == Kind::kPoisson ? NextGap() : absl::ZeroDuration();
}

absl::Duration ArrivalSchedule::NextGap() {
  if (kind_ == Kind::kFixed || mean_ <= absl::ZeroDuration()) return mean_;
  // -log(U), U uniform in (0, 1]: an exponential of mean 1 that is never infinite. (Some
  // standard libraries' generate_canonical can return 1.0 itself, hence the loop.)
  double u;
  do {
    u = 1.0 - std::generate_canonical<double, 53>(random_);
  } while (!(u > 0));
  return mean_ * -std::log(u);
}

}  // namespace kldrift::cli
