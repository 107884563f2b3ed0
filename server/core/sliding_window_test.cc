#include "server/core/sliding_window.h"

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "absl/time/time.h"
#include "absl/types/span.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/core/clock.h"

namespace kldrift {
namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::UnorderedElementsAre;

// A round instant: a multiple of every sub-bucket length used below.
const absl::Time kT0 = absl::FromUnixSeconds(1'800'000'000);

std::vector<double> Vec(absl::Span<const double> s) { return {s.begin(), s.end()}; }

// Records what the expire callback is given.
struct Expired {
  std::vector<std::vector<double>> buckets;
  SlidingWindow::ExpireCallback Callback() {
    return [this](absl::Span<const double> expired) { buckets.push_back(Vec(expired)); };
  }
};

TEST(SlidingWindowTest, Accessors) {
  SlidingWindow w(absl::Minutes(1), 6, 3);
  EXPECT_EQ(w.length(), absl::Minutes(1));
  EXPECT_EQ(w.sub_bucket_length(), absl::Seconds(10));
  EXPECT_EQ(w.sub_buckets(), 6);
  EXPECT_EQ(w.width(), 3u);
  EXPECT_THAT(Vec(w.totals()), ElementsAre(0, 0, 0));
}

TEST(SlidingWindowTest, NothingIsCoveredBeforeTheFirstAdvance) {
  SlidingWindow w(absl::Minutes(1), 6, 1);
  EXPECT_FALSE(w.Covers(kT0));
  EXPECT_TRUE(w.LiveSubBuckets().empty());
}

TEST(SlidingWindowTest, AddsLandInTotals) {
  SlidingWindow w(absl::Minutes(1), 6, 3);
  w.Advance(kT0);
  w.Add(kT0, std::vector<double>{1, 2, 3});
  w.Add(kT0 - absl::Seconds(30), std::vector<double>{10, 0, 5});
  w.Add(kT0 + absl::Seconds(9), std::vector<double>{0, 0, 1});
  EXPECT_THAT(Vec(w.totals()), ElementsAre(11, 2, 9));
}

TEST(SlidingWindowTest, CoversTheSubBucketOfNowAndTheOnesBefore) {
  SlidingWindow w(absl::Minutes(1), 6, 1);  // Sub-buckets of 10 s.
  w.Advance(kT0 + absl::Seconds(4));
  // The window holds [kT0 - 50 s, kT0 + 10 s): the sub-bucket of now and 5 before it.
  EXPECT_TRUE(w.Covers(kT0));
  EXPECT_TRUE(w.Covers(kT0 + absl::Seconds(4)));
  EXPECT_TRUE(w.Covers(kT0 - absl::Seconds(50)));
  EXPECT_FALSE(w.Covers(kT0 - absl::Seconds(50) - absl::Nanoseconds(1)));
  EXPECT_FALSE(w.Covers(kT0 - absl::Hours(1)));
  EXPECT_FALSE(w.Covers(absl::InfinitePast()));
  // Later in the sub-bucket of now is covered; the next sub-bucket is the future.
  EXPECT_TRUE(w.Covers(kT0 + absl::Seconds(10) - absl::Nanoseconds(1)));
  EXPECT_FALSE(w.Covers(kT0 + absl::Seconds(10)));
  EXPECT_FALSE(w.Covers(kT0 + absl::Hours(1)));
}

TEST(SlidingWindowTest, SubBucketsExpireExactlyAtBoundaries) {
  SlidingWindow w(absl::Minutes(1), 6, 2);
  Expired expired;
  w.Advance(kT0, expired.Callback());
  w.Add(kT0 - absl::Seconds(50), std::vector<double>{1, 0});  // Oldest live sub-bucket.
  w.Add(kT0 - absl::Seconds(41), std::vector<double>{0, 4});  // Same sub-bucket.
  w.Add(kT0 - absl::Seconds(40), std::vector<double>{0, 2});  // The next one.
  w.Add(kT0, std::vector<double>{7, 0});
  EXPECT_THAT(Vec(w.totals()), ElementsAre(8, 6));

  // Up to the last nanosecond of the current sub-bucket nothing expires.
  w.Advance(kT0 + absl::Seconds(10) - absl::Nanoseconds(1), expired.Callback());
  EXPECT_THAT(Vec(w.totals()), ElementsAre(8, 6));
  EXPECT_TRUE(expired.buckets.empty());
  EXPECT_TRUE(w.Covers(kT0 - absl::Seconds(50)));

  // At the boundary the oldest sub-bucket leaves, whole.
  w.Advance(kT0 + absl::Seconds(10), expired.Callback());
  EXPECT_THAT(Vec(w.totals()), ElementsAre(7, 2));
  EXPECT_THAT(expired.buckets, ElementsAre(ElementsAre(1, 4)));
  EXPECT_FALSE(w.Covers(kT0 - absl::Seconds(50)));
  EXPECT_TRUE(w.Covers(kT0 - absl::Seconds(40)));

  w.Advance(kT0 + absl::Seconds(20), expired.Callback());
  EXPECT_THAT(Vec(w.totals()), ElementsAre(7, 0));
  EXPECT_THAT(expired.buckets, ElementsAre(ElementsAre(1, 4), ElementsAre(0, 2)));

  // The sub-bucket of kT0 stays until kT0 + 60 s.
  w.Advance(kT0 + absl::Seconds(60) - absl::Nanoseconds(1), expired.Callback());
  EXPECT_THAT(Vec(w.totals()), ElementsAre(7, 0));
  w.Advance(kT0 + absl::Seconds(60), expired.Callback());
  EXPECT_THAT(Vec(w.totals()), ElementsAre(0, 0));
  EXPECT_EQ(expired.buckets.size(), 3u);
  EXPECT_THAT(expired.buckets.back(), ElementsAre(7, 0));
}

TEST(SlidingWindowTest, TimeNeverMovesTheWindowBackwards) {
  SlidingWindow w(absl::Minutes(1), 6, 1);
  w.Advance(kT0 + absl::Seconds(100));
  w.Add(kT0 + absl::Seconds(100), std::vector<double>{3});
  w.Advance(kT0);  // Earlier: ignored.
  EXPECT_FALSE(w.Covers(kT0));
  EXPECT_TRUE(w.Covers(kT0 + absl::Seconds(100)));
  EXPECT_THAT(Vec(w.totals()), ElementsAre(3));
  EXPECT_EQ(w.LiveSubBuckets().back().start, kT0 + absl::Seconds(100));
}

TEST(SlidingWindowTest, LongGapClearsEverythingAndReportsEachBucketOnce) {
  SlidingWindow w(absl::Minutes(1), 6, 2);
  w.Advance(kT0);
  for (int i = 0; i < 6; ++i) {
    w.Add(kT0 - absl::Seconds(10 * i), std::vector<double>{static_cast<double>(i + 1), 1});
  }
  EXPECT_THAT(Vec(w.totals()), ElementsAre(21, 6));
  Expired expired;
  w.Advance(kT0 + absl::Hours(1000), expired.Callback());
  EXPECT_THAT(Vec(w.totals()), ElementsAre(0, 0));
  EXPECT_THAT(expired.buckets,
              UnorderedElementsAre(ElementsAre(1, 1), ElementsAre(2, 1), ElementsAre(3, 1),
                                   ElementsAre(4, 1), ElementsAre(5, 1), ElementsAre(6, 1)));
  for (const SlidingWindow::SubBucket& b : w.LiveSubBuckets()) {
    EXPECT_THAT(Vec(b.values), ElementsAre(0, 0));
  }
  EXPECT_FALSE(w.Covers(kT0));
  // The ring is usable again after the gap.
  w.Add(kT0 + absl::Hours(1000), std::vector<double>{2, 3});
  EXPECT_THAT(Vec(w.totals()), ElementsAre(2, 3));
}

TEST(SlidingWindowTest, GapOfPartOfTheWindowExpiresOnlyTheOldBuckets) {
  SlidingWindow w(absl::Minutes(1), 6, 1);
  w.Advance(kT0);
  for (int i = 0; i < 6; ++i) {
    w.Add(kT0 - absl::Seconds(10 * i), std::vector<double>{static_cast<double>(1 << i)});
  }
  // Three sub-buckets later, those at kT0 - 50, -40, -30 s (32, 16, 8) are gone.
  Expired expired;
  w.Advance(kT0 + absl::Seconds(35), expired.Callback());
  EXPECT_THAT(Vec(w.totals()), ElementsAre(1 + 2 + 4));
  EXPECT_THAT(expired.buckets,
              UnorderedElementsAre(ElementsAre(32), ElementsAre(16), ElementsAre(8)));
}

TEST(SlidingWindowTest, LiveSubBucketsOldestFirstWithStartTimes) {
  SlidingWindow w(absl::Minutes(1), 6, 2);
  w.Advance(kT0 + absl::Seconds(3));
  w.Add(kT0 - absl::Seconds(45), std::vector<double>{1, 2});
  w.Add(kT0 + absl::Seconds(1), std::vector<double>{3, 4});
  std::vector<SlidingWindow::SubBucket> live = w.LiveSubBuckets();
  ASSERT_EQ(live.size(), 6u);
  for (int i = 0; i < 6; ++i) {
    EXPECT_EQ(live[i].start, kT0 - absl::Seconds(50 - 10 * i)) << i;
  }
  EXPECT_THAT(Vec(live[0].values), ElementsAre(1, 2));
  EXPECT_THAT(Vec(live[5].values), ElementsAre(3, 4));
  for (int i = 1; i < 5; ++i) EXPECT_THAT(Vec(live[i].values), ElementsAre(0, 0));
}

TEST(SlidingWindowTest, SubBucketIndexIsFloorDivisionFromTheEpoch) {
  SlidingWindow w(absl::Seconds(60), 6, 1);
  const absl::Time epoch = absl::UnixEpoch();
  EXPECT_EQ(w.SubBucketIndex(epoch), 0);
  EXPECT_EQ(w.SubBucketIndex(epoch + absl::Seconds(9)), 0);
  EXPECT_EQ(w.SubBucketIndex(epoch + absl::Seconds(10)), 1);
  EXPECT_EQ(w.SubBucketIndex(epoch - absl::Nanoseconds(1)), -1);
  EXPECT_EQ(w.SubBucketIndex(epoch - absl::Seconds(10)), -1);
  EXPECT_EQ(w.SubBucketIndex(epoch - absl::Seconds(10) - absl::Nanoseconds(1)), -2);
  EXPECT_EQ(w.SubBucketIndex(epoch - absl::Seconds(25)), -3);
  EXPECT_EQ(w.SubBucketIndex(kT0), 180'000'000);
}

TEST(SlidingWindowTest, WorksAcrossTheUnixEpoch) {
  const absl::Time epoch = absl::UnixEpoch();
  SlidingWindow w(absl::Minutes(1), 6, 1);
  Expired expired;
  w.Advance(epoch - absl::Seconds(25), expired.Callback());  // Sub-bucket -3: [-30 s, -20 s).
  EXPECT_TRUE(w.Covers(epoch - absl::Seconds(80)));
  EXPECT_FALSE(w.Covers(epoch - absl::Seconds(80) - absl::Nanoseconds(1)));
  EXPECT_FALSE(w.Covers(epoch - absl::Seconds(20)));
  w.Add(epoch - absl::Seconds(75), std::vector<double>{1});  // Sub-bucket -8.
  w.Add(epoch - absl::Seconds(21), std::vector<double>{2});  // Sub-bucket -3.
  std::vector<SlidingWindow::SubBucket> live = w.LiveSubBuckets();
  ASSERT_EQ(live.size(), 6u);
  EXPECT_EQ(live.front().start, epoch - absl::Seconds(80));
  EXPECT_EQ(live.back().start, epoch - absl::Seconds(30));
  EXPECT_THAT(Vec(live.front().values), ElementsAre(1));
  EXPECT_THAT(Vec(live.back().values), ElementsAre(2));

  w.Advance(epoch - absl::Seconds(20), expired.Callback());  // Sub-bucket -8 leaves.
  EXPECT_THAT(Vec(w.totals()), ElementsAre(2));
  EXPECT_THAT(expired.buckets, ElementsAre(ElementsAre(1)));

  w.Add(epoch - absl::Seconds(15), std::vector<double>{4});
  w.Advance(epoch + absl::Seconds(30), expired.Callback());  // Sub-bucket 3: [-20 s, 40 s).
  EXPECT_THAT(Vec(w.totals()), ElementsAre(4));
  w.Advance(epoch + absl::Seconds(40), expired.Callback());
  EXPECT_THAT(Vec(w.totals()), ElementsAre(0));
  EXPECT_THAT(expired.buckets, ElementsAre(ElementsAre(1), ElementsAre(2), ElementsAre(4)));
}

TEST(SlidingWindowTest, IntegerTotalsStayExactOverManyCycles) {
  // Large odd integers make any accumulated rounding visible: 2^40 + k cannot lose a unit while
  // the totals stay below 2^53.
  SlidingWindow w(absl::Minutes(5), 12, 2);
  FakeClock clock(kT0);
  std::vector<std::pair<int64_t, std::vector<double>>> history;  // (sub-bucket, delta)
  std::mt19937_64 rng(7);
  for (int step = 0; step < 5000; ++step) {
    clock.Advance(absl::Seconds(static_cast<int64_t>(rng() % 40)));
    const absl::Time now = clock.Now();
    w.Advance(now);
    const double a = static_cast<double>((int64_t{1} << 40) + static_cast<int64_t>(rng() % 1000));
    const double b = static_cast<double>(rng() % 3);
    const absl::Time when = now - absl::Seconds(static_cast<int64_t>(rng() % 250));
    if (!w.Covers(when)) continue;
    w.Add(when, std::vector<double>{a, b});
    history.push_back({w.SubBucketIndex(when), {a, b}});
    const int64_t head = w.SubBucketIndex(now);
    int64_t expected_a = 0, expected_b = 0;
    for (const auto& [index, delta] : history) {
      if (index > head - 12 && index <= head) {
        expected_a += static_cast<int64_t>(delta[0]);
        expected_b += static_cast<int64_t>(delta[1]);
      }
    }
    ASSERT_EQ(w.totals()[0], static_cast<double>(expected_a)) << step;
    ASSERT_EQ(w.totals()[1], static_cast<double>(expected_b)) << step;
  }
}

TEST(SlidingWindowTest, MatchesABruteForceModelAndConservesMass) {
  // Fractional values too: totals equal the live sub-buckets' sum and, with what expired, what was
  // added.
  SlidingWindow w(absl::Seconds(70), 7, 3);
  std::mt19937_64 rng(11);
  std::uniform_real_distribution<double> unit(0, 1);
  absl::Time now = kT0 + absl::Milliseconds(123);
  std::vector<double> added(3, 0.0), gone(3, 0.0);
  auto on_expire = [&gone](absl::Span<const double> e) {
    for (size_t i = 0; i < e.size(); ++i) gone[i] += e[i];
  };
  w.Advance(now, on_expire);
  for (int step = 0; step < 3000; ++step) {
    now += absl::Milliseconds(static_cast<int64_t>(rng() % 25000));
    w.Advance(now, on_expire);
    const absl::Time when = now - absl::Milliseconds(static_cast<int64_t>(rng() % 80000));
    const std::vector<double> delta = {std::floor(unit(rng) * 10), unit(rng), 0.25};
    if (w.Covers(when)) {
      w.Add(when, delta);
      for (size_t i = 0; i < 3; ++i) added[i] += delta[i];
    }
    std::vector<double> live_sum(3, 0.0);
    for (const SlidingWindow::SubBucket& b : w.LiveSubBuckets()) {
      for (size_t i = 0; i < 3; ++i) live_sum[i] += b.values[i];
    }
    for (size_t i = 0; i < 3; ++i) {
      ASSERT_NEAR(w.totals()[i], live_sum[i], 1e-9 * (1 + live_sum[i])) << step;
      ASSERT_NEAR(w.totals()[i] + gone[i], added[i], 1e-9 * (1 + added[i])) << step;
    }
    // The first component is integer-valued: exact.
    ASSERT_EQ(w.totals()[0], live_sum[0]);
  }
}

// SubBucketIndex floors (t - epoch) / sub_bucket_length for every time: the integer fast path near
// the epoch and the Duration path beyond it, sub-nanosecond times and infinities agree.
TEST(SlidingWindowTest, SubBucketIndexIsTheFloorEverywhere) {
  SlidingWindow w(absl::Minutes(5), 12, 1);  // 25 s sub-buckets.
  auto floor_index = [](absl::Time t) {
    absl::Duration remainder;
    int64_t index = absl::IDivDuration(t - absl::UnixEpoch(), absl::Seconds(25), &remainder);
    if (remainder < absl::ZeroDuration() && index > std::numeric_limits<int64_t>::min()) --index;
    return index;
  };
  std::mt19937_64 rng(5);
  std::uniform_int_distribution<int64_t> nanos(-(int64_t{1} << 62), int64_t{1} << 62);
  std::vector<absl::Time> times = {absl::UnixEpoch(),
                                   absl::UnixEpoch() - absl::Nanoseconds(1),
                                   absl::UnixEpoch() - absl::Seconds(25),
                                   absl::UnixEpoch() - absl::Seconds(25) - absl::Nanoseconds(1),
                                   kT0 - absl::Nanoseconds(1) / 4,
                                   kT0 + absl::Nanoseconds(1) / 4,
                                   absl::UnixEpoch() - absl::Nanoseconds(1) / 4,
                                   absl::UnixEpoch() + absl::Hours(24 * 365 * 250),
                                   absl::UnixEpoch() - absl::Hours(24 * 365 * 250),
                                   absl::InfinitePast(),
                                   absl::InfiniteFuture()};
  for (int i = 0; i < 10000; ++i) {
    times.push_back(absl::UnixEpoch() + absl::Nanoseconds(nanos(rng) >> (i % 40)));
  }
  for (absl::Time t : times) EXPECT_EQ(w.SubBucketIndex(t), floor_index(t)) << t;
}

// The sub-bucket of "now" is answered without a division: the shortcut must agree with the floor
// at its edges, whatever sub-bucket the window was advanced to (and with no shortcut at all when
// the step is not a whole number of nanoseconds).
TEST(SlidingWindowTest, SubBucketOfNowAgreesWithTheFloorAtItsEdges) {
  const absl::Duration lengths[] = {absl::Minutes(5), absl::Hours(24),
                                    absl::Nanoseconds(10) / 3 * 12};
  const absl::Time nows[] = {kT0, kT0 - absl::Nanoseconds(1), absl::UnixEpoch(),
                             absl::UnixEpoch() - absl::Nanoseconds(1) / 4,
                             absl::UnixEpoch() + absl::Hours(24 * 365 * 150)};
  for (absl::Duration length : lengths) {
    for (absl::Time now : nows) {
      SlidingWindow w(length, 12, 1);
      SlidingWindow reference(length, 12, 1);  // Never advanced: no shortcut.
      w.Advance(now);
      const absl::Time start = reference.SubBucketStart(now);
      const absl::Duration step = w.sub_bucket_length();
      const absl::Duration quarter = absl::Nanoseconds(1) / 4;
      for (absl::Time t : {start - quarter, start, start + quarter, now, start + step - quarter,
                           start + step, start + step + quarter}) {
        EXPECT_EQ(w.SubBucketIndex(t), reference.SubBucketIndex(t)) << length << " " << t;
        EXPECT_EQ(w.SubBucketStart(t), reference.SubBucketStart(t)) << length << " " << t;
      }
      EXPECT_TRUE(w.Covers(now));
      EXPECT_FALSE(w.Covers(start + step));
    }
  }
}

// Adding one delta with its summary, to the sub-bucket of now or an older one, is the same as
// adding it without.
TEST(SlidingWindowTest, AddWithASummaryIsAdd) {
  SlidingWindow with(absl::Minutes(1), 6, 3);
  SlidingWindow without(absl::Minutes(1), 6, 3);
  with.Advance(kT0);
  without.Advance(kT0);
  const std::vector<std::vector<double>> deltas = {{1, 2, 3}, {0.5, 0, 1}, {250, 0, 7}, {-1, 2, 3}};
  for (const std::vector<double>& delta : deltas) {
    for (absl::Time t : {kT0, kT0 - absl::Seconds(30)}) {
      with.Add(t, delta, CompactSubBuckets::Summarize(delta));
      without.Add(t, delta);
    }
  }
  EXPECT_EQ(Vec(with.totals()), Vec(without.totals()));
  EXPECT_EQ(with.generation(), without.generation());
  for (absl::Time t : {kT0, kT0 - absl::Seconds(30)}) {
    EXPECT_EQ(Vec(with.SubBucketValues(t)), Vec(without.SubBucketValues(t)));
  }
}

}  // namespace
}  // namespace kldrift
