#include "server/core/alert_state.h"

#include <random>

#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "server/core/alert_policy.h"

namespace kldrift {
namespace {

const absl::Time kT0 = absl::FromUnixSeconds(1'800'000'000);

AlertPolicy TestPolicy(absl::Duration for_duration = absl::Minutes(1)) {
  AlertPolicy p;
  p.warn_threshold = 0.1;
  p.critical_threshold = 0.3;
  p.clear_threshold = 0.05;
  p.for_duration = for_duration;
  return p;
}

absl::Time At(int seconds) { return kT0 + absl::Seconds(seconds); }

class AlertStateTest : public ::testing::Test {
 protected:
  // Observes an eligible evaluation at kT0 + seconds.
  bool See(double value, int seconds, bool eligible = true) {
    return machine_.Observe(value, eligible, At(seconds), policy_);
  }
  AlertState state() const { return machine_.status().state; }
  Severity severity() const { return machine_.status().severity; }
  absl::Time since() const { return machine_.status().since; }

  void ExpectStatus(AlertState state, Severity severity) {
    EXPECT_EQ(this->state(), state) << AlertStateName(this->state());
    EXPECT_EQ(this->severity(), severity) << SeverityName(this->severity());
  }

  // Brings the machine to firing at warn severity at kT0 + `seconds` - 60 .. kT0 + `seconds`.
  void FireAt(int seconds) {
    See(0.15, seconds - 60);
    See(0.15, seconds);
    ASSERT_EQ(state(), AlertState::kFiring);
  }

  AlertPolicy policy_ = TestPolicy();
  AlertStateMachine machine_;
};

TEST(AlertStateNamesTest, Names) {
  EXPECT_EQ(AlertStateName(AlertState::kOk), "ok");
  EXPECT_EQ(AlertStateName(AlertState::kPending), "pending");
  EXPECT_EQ(AlertStateName(AlertState::kFiring), "firing");
  EXPECT_EQ(SeverityName(Severity::kNone), "none");
  EXPECT_EQ(SeverityName(Severity::kWarn), "warn");
  EXPECT_EQ(SeverityName(Severity::kCritical), "critical");
}

TEST_F(AlertStateTest, StartsOkAndStaysOkBelowWarn) {
  ExpectStatus(AlertState::kOk, Severity::kNone);
  EXPECT_EQ(since(), absl::InfinitePast());
  EXPECT_FALSE(See(0.0, 0));
  EXPECT_FALSE(See(0.0999, 10));
  ExpectStatus(AlertState::kOk, Severity::kNone);
}

TEST_F(AlertStateTest, OkPendingFiringAfterFor) {
  EXPECT_TRUE(See(0.1, 10));  // At exactly warn.
  ExpectStatus(AlertState::kPending, Severity::kWarn);
  EXPECT_EQ(since(), At(10));
  EXPECT_FALSE(See(0.2, 40));
  EXPECT_FALSE(See(0.2, 69));  // 59 s over: not yet.
  ExpectStatus(AlertState::kPending, Severity::kWarn);
  EXPECT_EQ(since(), At(10));
  EXPECT_TRUE(See(0.2, 70));  // 60 s over.
  ExpectStatus(AlertState::kFiring, Severity::kWarn);
  EXPECT_EQ(since(), At(70));
  EXPECT_FALSE(See(0.2, 80));
  EXPECT_EQ(since(), At(70));
}

TEST_F(AlertStateTest, PendingFiresOnTheFirstEvaluationPastFor) {
  // A sparse tick: the first evaluation after `for` fires, even much later.
  EXPECT_TRUE(See(0.2, 0));
  EXPECT_TRUE(See(0.2, 3600));
  ExpectStatus(AlertState::kFiring, Severity::kWarn);
  EXPECT_EQ(since(), At(3600));
}

TEST_F(AlertStateTest, PendingReturnsToOkWhenTheMeasureDrops) {
  EXPECT_TRUE(See(0.2, 0));
  EXPECT_TRUE(See(0.09, 30));
  ExpectStatus(AlertState::kOk, Severity::kNone);
  EXPECT_EQ(since(), At(30));
  // The `for` clock restarts: pending again at 40 fires at 100, not at 60.
  EXPECT_TRUE(See(0.2, 40));
  EXPECT_EQ(since(), At(40));
  EXPECT_FALSE(See(0.2, 60));
  EXPECT_FALSE(See(0.2, 99));
  EXPECT_EQ(state(), AlertState::kPending);
  EXPECT_TRUE(See(0.2, 100));
  EXPECT_EQ(state(), AlertState::kFiring);
}

TEST_F(AlertStateTest, PendingReturnsToOkWhenNoLongerEligible) {
  EXPECT_TRUE(See(0.2, 0));
  EXPECT_TRUE(See(0.2, 10, /*eligible=*/false));
  ExpectStatus(AlertState::kOk, Severity::kNone);
}

TEST_F(AlertStateTest, ZeroForFiresAtOnce) {
  policy_ = TestPolicy(absl::ZeroDuration());
  EXPECT_TRUE(See(0.2, 5));
  ExpectStatus(AlertState::kFiring, Severity::kWarn);
  EXPECT_EQ(since(), At(5));
  // And clears at once below clear.
  EXPECT_TRUE(See(0.01, 6));
  ExpectStatus(AlertState::kOk, Severity::kNone);
  EXPECT_EQ(since(), At(6));
}

TEST_F(AlertStateTest, HysteresisKeepsFiringBetweenClearAndWarn) {
  FireAt(60);
  // Between clear (0.05) and warn (0.1): keeps firing at warn, however long.
  EXPECT_FALSE(See(0.07, 100));
  EXPECT_FALSE(See(0.07, 10000));
  ExpectStatus(AlertState::kFiring, Severity::kWarn);
  EXPECT_EQ(since(), At(60));
  // At exactly clear: not below it.
  EXPECT_FALSE(See(0.05, 10100));
  EXPECT_FALSE(See(0.05, 20000));
  EXPECT_EQ(state(), AlertState::kFiring);
}

TEST_F(AlertStateTest, FiringClearsAfterStayingBelowClearForFor) {
  FireAt(60);
  EXPECT_FALSE(See(0.04, 100));  // Below clear since 100.
  EXPECT_FALSE(See(0.04, 130));
  EXPECT_FALSE(See(0.07, 140));  // Back above clear: the clear timer restarts.
  EXPECT_FALSE(See(0.04, 150));  // Below clear since 150.
  EXPECT_FALSE(See(0.04, 200));  // 160 s after 100, but only 50 s after 150.
  EXPECT_FALSE(See(0.04, 209));
  EXPECT_EQ(state(), AlertState::kFiring);
  EXPECT_TRUE(See(0.04, 210));
  ExpectStatus(AlertState::kOk, Severity::kNone);
  EXPECT_EQ(since(), At(210));
  EXPECT_EQ(machine_.status(), (AlertStatus{AlertState::kOk, Severity::kNone, At(210)}));
}

TEST_F(AlertStateTest, IneligibleNeverGoesPending) {
  EXPECT_FALSE(See(5.0, 0, /*eligible=*/false));
  EXPECT_FALSE(See(5.0, 600, /*eligible=*/false));
  ExpectStatus(AlertState::kOk, Severity::kNone);
}

TEST_F(AlertStateTest, IneligibleDoesNotClearAFiringAlert) {
  FireAt(60);
  // The window ran short of samples (e.g. traffic stopped and the measure reads 0): still firing,
  // however long it lasts.
  EXPECT_FALSE(See(0.0, 100, /*eligible=*/false));
  EXPECT_FALSE(See(0.0, 200, /*eligible=*/false));
  EXPECT_FALSE(See(0.0, 5000, /*eligible=*/false));
  EXPECT_EQ(state(), AlertState::kFiring);
  EXPECT_EQ(since(), At(60));
  // Eligible again and below clear: it clears only after `for` of eligible evaluations.
  EXPECT_FALSE(See(0.0, 5010));
  EXPECT_EQ(state(), AlertState::kFiring);
  EXPECT_TRUE(See(0.0, 5070));
  EXPECT_EQ(state(), AlertState::kOk);
}

TEST_F(AlertStateTest, SeverityEscalatesToCriticalAndBack) {
  EXPECT_TRUE(See(0.2, 0));
  ExpectStatus(AlertState::kPending, Severity::kWarn);
  EXPECT_TRUE(See(0.3, 10));  // At exactly critical.
  ExpectStatus(AlertState::kPending, Severity::kCritical);
  EXPECT_EQ(since(), At(0));  // A severity change is not a state change.
  EXPECT_FALSE(See(0.5, 20));
  EXPECT_TRUE(See(0.2, 30));
  ExpectStatus(AlertState::kPending, Severity::kWarn);
  EXPECT_TRUE(See(0.4, 60));  // Fires, critical.
  ExpectStatus(AlertState::kFiring, Severity::kCritical);
  EXPECT_TRUE(See(0.2, 70));
  ExpectStatus(AlertState::kFiring, Severity::kWarn);
  EXPECT_FALSE(See(0.07, 80));  // Hysteresis band: warn.
  ExpectStatus(AlertState::kFiring, Severity::kWarn);
  EXPECT_TRUE(See(0.31, 90));
  ExpectStatus(AlertState::kFiring, Severity::kCritical);
  EXPECT_EQ(since(), At(60));
}

TEST_F(AlertStateTest, WaitingToClearKeepsTheSeverityAndReportsNoChange) {
  EXPECT_TRUE(See(0.5, 0));
  EXPECT_TRUE(See(0.5, 60));
  ExpectStatus(AlertState::kFiring, Severity::kCritical);
  // Below clear but not for long enough: still firing, nothing to report until it clears.
  EXPECT_FALSE(See(0.01, 70));
  EXPECT_FALSE(See(0.01, 129));
  ExpectStatus(AlertState::kFiring, Severity::kCritical);
  EXPECT_TRUE(See(0.01, 130));
  ExpectStatus(AlertState::kOk, Severity::kNone);
}

TEST_F(AlertStateTest, RestoreResumesTheStateMachine) {
  AlertStatus firing;
  firing.state = AlertState::kFiring;
  firing.severity = Severity::kWarn;
  firing.since = At(0);
  machine_.Restore(firing);
  EXPECT_EQ(machine_.status(), firing);
  EXPECT_FALSE(See(0.01, 10));
  EXPECT_TRUE(See(0.01, 70));
  EXPECT_EQ(state(), AlertState::kOk);

  AlertStatus pending;
  pending.state = AlertState::kPending;
  pending.severity = Severity::kWarn;
  pending.since = At(100);
  pending.over_since = At(100);
  machine_.Restore(pending);
  EXPECT_FALSE(See(0.2, 120));
  EXPECT_TRUE(See(0.2, 160));
  EXPECT_EQ(state(), AlertState::kFiring);
  EXPECT_EQ(since(), At(160));
}

TEST_F(AlertStateTest, ObserveReturnsTrueExactlyOnStateOrSeverityChanges) {
  std::mt19937_64 rng(3);
  const double values[] = {0.0, 0.03, 0.05, 0.07, 0.1, 0.2, 0.3, 0.6};
  int changes = 0;
  for (int i = 0; i < 20000; ++i) {
    const AlertStatus before = machine_.status();
    const double value = values[rng() % 8];
    const bool eligible = rng() % 5 != 0;
    const int t = i * 15;
    const bool changed = See(value, t, eligible);
    const AlertStatus& after = machine_.status();
    ASSERT_EQ(changed, after.state != before.state || after.severity != before.severity) << i;
    if (after.state != before.state) {
      ++changes;
      ASSERT_EQ(after.since, At(t)) << i;
    } else {
      ASSERT_EQ(after.since, before.since) << i;
    }
    // Invariants of the contract.
    ASSERT_EQ(after.state == AlertState::kOk, after.severity == Severity::kNone) << i;
    if (after.state == AlertState::kPending) {
      ASSERT_TRUE(eligible && value >= policy_.warn_threshold) << i;
    }
    // (While firing below clear, waiting to clear, the severity is left as it was.)
    if (after.state != AlertState::kOk && eligible &&
        !(after.state == AlertState::kFiring && value < 0.05)) {
      ASSERT_EQ(after.severity,
                value >= policy_.critical_threshold ? Severity::kCritical : Severity::kWarn)
          << i << " value " << value;
    }
    if (before.state == AlertState::kOk && after.state != AlertState::kOk) {
      ASSERT_TRUE(eligible && value >= policy_.warn_threshold) << i;
    }
    if (before.state == AlertState::kFiring && after.state == AlertState::kOk) {
      ASSERT_TRUE(eligible && value < 0.05) << i;
    }
  }
  EXPECT_GT(changes, 100);
}

}  // namespace
}  // namespace kldrift
