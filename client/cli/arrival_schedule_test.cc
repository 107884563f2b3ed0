#include "client/cli/arrival_schedule.h"

#include <cmath>
#include <vector>

#include "gtest/gtest.h"

namespace kldrift::cli {
namespace {

constexpr int kGaps = 200000;

std::vector<double> GapsInMillis(ArrivalSchedule& schedule, int count) {
  std::vector<double> gaps;
  gaps.reserve(count);
  for (int i = 0; i < count; ++i) gaps.push_back(absl::ToDoubleMilliseconds(schedule.NextGap()));
  return gaps;
}

TEST(ArrivalScheduleTest, FixedStartsAtOnceAndKeepsEveryGapAtTheMean) {
  ArrivalSchedule schedule(ArrivalSchedule::Kind::kFixed, absl::Milliseconds(40), 7);
  EXPECT_EQ(schedule.FirstDelay(), absl::ZeroDuration());
  for (int i = 0; i < 1000; ++i) ASSERT_EQ(schedule.NextGap(), absl::Milliseconds(40));
}

TEST(ArrivalScheduleTest, PoissonGapsAreExponentialWithTheMean) {
  ArrivalSchedule schedule(ArrivalSchedule::Kind::kPoisson, absl::Milliseconds(40), 7);
  const std::vector<double> gaps = GapsInMillis(schedule, kGaps);
  double sum = 0, sum_squares = 0;
  int below_mean = 0, over_three_means = 0;
  for (double g : gaps) {
    ASSERT_GE(g, 0);
    ASSERT_TRUE(std::isfinite(g));
    sum += g;
    sum_squares += g * g;
    below_mean += g < 40;
    over_three_means += g > 120;
  }
  const double mean = sum / kGaps;
  const double variance = sum_squares / kGaps - mean * mean;
  // An exponential's standard deviation is its mean (a fixed grid's is 0); the sample mean of
  // 200k gaps is within 1 % of 40 ms at over 4 standard errors.
  EXPECT_NEAR(mean, 40, 0.4);
  EXPECT_NEAR(std::sqrt(variance), 40, 0.8);
  // P(gap < mean) = 1 - 1/e = 0.632, P(gap > 3 means) = e^-3 = 0.0498.
  EXPECT_NEAR(static_cast<double>(below_mean) / kGaps, 1 - std::exp(-1.0), 0.005);
  EXPECT_NEAR(static_cast<double>(over_three_means) / kGaps, std::exp(-3.0), 0.003);
}

TEST(ArrivalScheduleTest, PoissonStartsAtARandomPointOfTheProcess) {
  // Senders started together are not in step: their first delays are themselves exponential.
  double sum = 0;
  int distinct = 0;
  double previous = -1;
  for (uint64_t seed = 1; seed <= 10000; ++seed) {
    ArrivalSchedule schedule(ArrivalSchedule::Kind::kPoisson, absl::Milliseconds(40), seed);
    const double first = absl::ToDoubleMilliseconds(schedule.FirstDelay());
    sum += first;
    distinct += first != previous;
    previous = first;
  }
  EXPECT_NEAR(sum / 10000, 40, 40 * 4 / std::sqrt(10000.0));
  EXPECT_EQ(distinct, 10000);
}

TEST(ArrivalScheduleTest, TheSameSeedGivesTheSameScheduleAndAnotherSeedAnother) {
  ArrivalSchedule a(ArrivalSchedule::Kind::kPoisson, absl::Milliseconds(5), 42);
  ArrivalSchedule b(ArrivalSchedule::Kind::kPoisson, absl::Milliseconds(5), 42);
  ArrivalSchedule c(ArrivalSchedule::Kind::kPoisson, absl::Milliseconds(5), 43);
  EXPECT_EQ(GapsInMillis(a, 100), GapsInMillis(b, 100));
  ArrivalSchedule a2(ArrivalSchedule::Kind::kPoisson, absl::Milliseconds(5), 42);
  EXPECT_NE(GapsInMillis(a2, 100), GapsInMillis(c, 100));
}

TEST(ArrivalScheduleTest, AZeroMeanIsNoPacing) {
  for (ArrivalSchedule::Kind kind :
       {ArrivalSchedule::Kind::kPoisson, ArrivalSchedule::Kind::kFixed}) {
    ArrivalSchedule schedule(kind, absl::ZeroDuration(), 1);
    EXPECT_EQ(schedule.FirstDelay(), absl::ZeroDuration());
    EXPECT_EQ(schedule.NextGap(), absl::ZeroDuration());
  }
}

}  // namespace
}  // namespace kldrift::cli
