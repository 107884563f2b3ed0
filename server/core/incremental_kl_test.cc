#include "server/core/incremental_kl.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <random>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "gtest/gtest.h"
#include "server/core/drift_measures.h"
#include "server/kernels/testing/scalar_oracle.h"

namespace kldrift {
namespace {

namespace oracle = kernels::oracle;
using Real = oracle::Real;

constexpr double kInf = std::numeric_limits<double>::infinity();

std::shared_ptr<const ReferenceProfile> MakeReference(std::vector<double> counts, double alpha) {
  absl::StatusOr<ReferenceProfile> profile = ReferenceProfile::Create(std::move(counts), alpha);
  EXPECT_TRUE(profile.ok()) << profile.status();
  if (!profile.ok()) return nullptr;
  return std::make_shared<const ReferenceProfile>(*std::move(profile));
}

std::vector<double> ToVector(absl::Span<const double> span) {
  return std::vector<double>(span.begin(), span.end());
}

// KL(current || reference) of the tracker's counts, from the long-double
// oracle.
Real OracleKl(const IncrementalKl& kl) {
  const ReferenceProfile& reference = kl.reference();
  return oracle::Kl(oracle::Shares(ToVector(kl.counts()), reference.alpha()),
                    oracle::Shares(ToVector(reference.counts()), reference.alpha()));
}

Real OracleTotal(absl::Span<const double> counts) {
  Real total = 0;
  for (double c : counts) total += c;
  return total;
}

// |got - want| <= rel * |want| + rel_to_scale * scale; infinities must match
// exactly.
::testing::AssertionResult RelativelyClose(double got, Real want, double rel, Real scale = 0,
                                           double rel_to_scale = 1e-14) {
  if (std::isnan(got)) return ::testing::AssertionFailure() << "got NaN";
  if (std::isinf(got) || std::isinf(static_cast<double>(want))) {
    if (got == static_cast<double>(want)) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << "got " << got << ", want " << static_cast<double>(want);
  }
  const Real error = std::fabs(static_cast<Real>(got) - want);
  const Real allowed = rel * std::fabs(want) + rel_to_scale * scale;
  if (error <= allowed) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << "got " << got << ", want " << static_cast<double>(want) << " (error "
         << static_cast<double>(error) << " > allowed " << static_cast<double>(allowed) << ")";
}

// The magnitude of the terms IncrementalKl cancels, KL = (S_cc - S_cq) / N' -
// log N': any KL it returns carries rounding of order 1e-16 times this, even
// when KL itself is ~0.
Real CancellationScale(const IncrementalKl& kl) {
  const ReferenceProfile& reference = kl.reference();
  const double alpha = reference.alpha();
  Real total = 0;
  for (double c : kl.counts()) total += c + Real{alpha};
  if (total == 0) return 0;
  Real scale = std::fabs(std::log(total));
  for (size_t i = 0; i < kl.size(); ++i) {
    const Real c = kl.counts()[i] + Real{alpha};
    if (c > 0 && reference.shares()[i] > 0) {
      scale += c / total * (std::fabs(std::log(c)) + std::fabs(reference.log_shares()[i]));
    }
  }
  return scale;
}

// Checks the tracker against the oracle and against ComputeDriftMeasures over
// the same counts: within `rel` relative, or 1e-14 of the cancellation scale
// when KL is ~0.
void ExpectMatchesBatch(const IncrementalKl& kl, double rel = 1e-10) {
  const double got = kl.KlCurrentReference();
  if (OracleTotal(kl.counts()) == 0) {
    EXPECT_EQ(got, 0.0);
    return;
  }
  const Real scale = CancellationScale(kl);
  EXPECT_TRUE(RelativelyClose(got, OracleKl(kl), rel, scale)) << "vs oracle";
  absl::StatusOr<DriftMeasures> batch = ComputeDriftMeasures(kl.reference(), kl.counts(), 0);
  ASSERT_TRUE(batch.ok()) << batch.status();
  EXPECT_TRUE(RelativelyClose(got, batch->kl_current_reference, rel, scale)) << "vs batch";
}

// --- CompensatedSum
// --------------------------------------------------------------------------------

TEST(CompensatedSum, RecoversSmallAddendsLostNextToALargeOne) {
  CompensatedSum sum;
  sum.Add(1e16);
  for (int i = 0; i < 1000; ++i) sum.Add(1.0);  // Each is below half an ulp of 1e16.
  sum.Add(-1e16);
  EXPECT_EQ(sum.value(), 1000.0);

  // The naive sum loses all of them, which is what makes the test meaningful.
  double naive = 1e16;
  for (int i = 0; i < 1000; ++i) naive += 1.0;
  naive += -1e16;
  EXPECT_NE(naive, 1000.0);
}

TEST(CompensatedSum, HandlesAddendsLargerThanTheSum) {
  // Kahan summation returns 0 here; Neumaier's variant returns 2.
  CompensatedSum sum;
  sum.Add(1.0);
  sum.Add(1e100);
  sum.Add(1.0);
  sum.Add(-1e100);
  EXPECT_EQ(sum.value(), 2.0);
}

TEST(CompensatedSum, ManySmallTermsMatchLongDouble) {
  CompensatedSum sum;
  Real exact = 0;
  std::mt19937_64 rng(7);
  std::uniform_real_distribution<double> unit(-1.0, 1.0);
  for (int i = 0; i < 1000000; ++i) {
    const double x = unit(rng) * std::ldexp(1.0, static_cast<int>(rng() % 40) - 20);
    sum.Add(x);
    exact += x;
  }
  EXPECT_TRUE(RelativelyClose(sum.value(), exact, 1e-15));
}

TEST(CompensatedSum, ResetAndInitialValue) {
  CompensatedSum sum;
  EXPECT_EQ(sum.value(), 0.0);
  sum.Add(1e16);
  sum.Add(1.0);
  sum.Reset(5.0);
  EXPECT_EQ(sum.value(), 5.0);  // The old compensation term is dropped too.
  sum.Add(1.0);
  EXPECT_EQ(sum.value(), 6.0);
  sum.Reset();
  EXPECT_EQ(sum.value(), 0.0);
}

// --- IncrementalKl
// ---------------------------------------------------------------------------------

TEST(IncrementalKl, EmptyIsZero) {
  for (double alpha : {0.0, 0.5, 1.0}) {
    IncrementalKl kl(MakeReference({3, 0, 7, 1}, alpha));
    EXPECT_EQ(kl.size(), 4u);
    EXPECT_EQ(kl.samples(), 0.0);
    EXPECT_EQ(kl.KlCurrentReference(), 0.0);
    EXPECT_EQ(ToVector(kl.counts()), std::vector<double>(4, 0.0));
    kl.Resync();
    EXPECT_EQ(kl.KlCurrentReference(), 0.0);
  }
}

TEST(IncrementalKl, SingleAddsMatchBatch) {
  IncrementalKl kl(MakeReference({10, 20, 30, 40}, 0.5));
  kl.Add(0, 5);
  EXPECT_EQ(kl.samples(), 5.0);
  EXPECT_GT(kl.KlCurrentReference(), 0.0);
  ExpectMatchesBatch(kl);
  kl.Add(3, 2.5);
  ExpectMatchesBatch(kl);
  kl.Add(0, -5);  // Back to a single fractional bin.
  EXPECT_EQ(kl.counts()[0], 0.0);
  EXPECT_EQ(kl.samples(), 2.5);
  ExpectMatchesBatch(kl);
}

TEST(IncrementalKl, ProportionalToReferenceIsZero) {
  // Without smoothing, current counts proportional to the reference give KL = 0
  // (up to rounding).
  IncrementalKl kl(MakeReference({1, 2, 3, 4}, 0.0));
  for (size_t i = 0; i < 4; ++i) kl.Add(i, 10.0 * (i + 1));
  EXPECT_LT(kl.KlCurrentReference(), 1e-14);
  EXPECT_GE(kl.KlCurrentReference(), 0.0);
}

TEST(IncrementalKl, RemovingEverythingReturnsToZero) {
  IncrementalKl kl(MakeReference({4, 4, 2}, 0.5));
  kl.Add(0, 3);
  kl.Add(2, 1.25);
  EXPECT_GT(kl.KlCurrentReference(), 0.0);
  kl.Add(2, -1.25);
  kl.Add(0, -3);
  EXPECT_EQ(kl.samples(), 0.0);
  EXPECT_EQ(kl.KlCurrentReference(), 0.0);
}

TEST(IncrementalKl, EmptyAfterFractionalAddsAndRemovesIsZero) {
  // Fractional updates round (0.1 + 0.7 - 0.1 != 0.7 in doubles), so the
  // running sums need not return exactly to zero; an empty histogram must still
  // report KL = 0, not -log(rounding).
  for (double alpha : {0.0, 0.5}) {
    IncrementalKl kl(MakeReference({1, 1}, alpha));
    kl.Add(0, 0.1);
    kl.Add(0, 0.7);
    kl.Add(1, 0.3);
    kl.Add(0, -kl.counts()[0]);
    kl.Add(1, -kl.counts()[1]);
    EXPECT_EQ(ToVector(kl.counts()), std::vector<double>(2, 0.0));
    EXPECT_EQ(kl.KlCurrentReference(), 0.0) << "alpha " << alpha << " samples " << kl.samples();
    EXPECT_EQ(kl.samples(), 0.0) << "alpha " << alpha;
  }
  std::mt19937_64 rng(11);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  for (int trial = 0; trial < 200; ++trial) {
    const double alpha = trial % 2 == 0 ? 0.0 : 0.5;
    IncrementalKl kl(MakeReference({1, 2, 3}, alpha));
    for (int step = 0; step < 50; ++step) kl.Add(rng() % 3, unit(rng) * std::pow(10.0, rng() % 6));
    for (size_t bin = 0; bin < 3; ++bin) kl.Add(bin, -kl.counts()[bin]);
    ASSERT_EQ(kl.KlCurrentReference(), 0.0) << "trial " << trial << " samples " << kl.samples();
    ASSERT_EQ(kl.samples(), 0.0) << "trial " << trial;
  }
}

TEST(IncrementalKl, RandomUpdatesMatchBatch) {
  uint64_t seed = 1;
  for (size_t k : {1, 2, 5, 17, 64, 1000}) {
    for (double alpha : {0.0, 0.5, 1.0}) {
      std::mt19937_64 rng(seed++);
      std::uniform_real_distribution<double> unit(0.0, 1.0);
      std::vector<double> reference(k);
      // With alpha = 0 every reference bin is populated, so no update makes KL
      // infinite.
      for (double& c : reference) c = std::floor(unit(rng) * 100) + (alpha == 0 ? 1 : 0);
      if (alpha > 0) reference[0] += 1;
      IncrementalKl kl(MakeReference(reference, alpha));
      std::vector<double> shadow(k, 0.0);
      SCOPED_TRACE(::testing::Message() << "k=" << k << " alpha=" << alpha);
      for (int step = 0; step < 2000; ++step) {
        const size_t bin = rng() % k;
        double delta;
        switch (rng() % 5) {
          case 0:  // Remove everything that was added to the bin.
            delta = -shadow[bin];
            break;
          case 1:  // Remove part of it.
            delta = -shadow[bin] * unit(rng);
            break;
          case 2:  // Fractional weight.
            delta = unit(rng) * 3;
            break;
          default:
            delta = static_cast<double>(1 + rng() % 10);
        }
        kl.Add(bin, delta);
        shadow[bin] = std::max(shadow[bin] + delta, 0.0);
        ASSERT_EQ(kl.counts()[bin], shadow[bin]);
        if (step % 97 == 0 || step == 1999) {
          // Fractional updates round, so allow a few ulps of the largest count
          // seen.
          ASSERT_NEAR(kl.samples(), static_cast<double>(OracleTotal(shadow)), 1e-10);
          ExpectMatchesBatch(kl);
          if (HasFailure()) return;
        }
      }
      EXPECT_EQ(ToVector(kl.counts()), shadow);
    }
  }
}

TEST(IncrementalKl, LongRunStaysAccurate) {
  const size_t k = 200;
  for (double alpha : {0.0, 0.5}) {
    std::mt19937_64 rng(4242);
    std::uniform_real_distribution<double> unit(0.0, 1.0);
    std::vector<double> reference(k);
    for (size_t i = 0; i < k; ++i) reference[i] = 1 + std::floor(unit(rng) * 1000);
    IncrementalKl kl(MakeReference(reference, alpha));
    std::vector<double> shadow(k, 0.0);
    SCOPED_TRACE(::testing::Message() << "alpha=" << alpha);
    // A sliding window: each step adds an observation and, once the window is
    // full, retires one added earlier, the way a streaming service ages out old
    // data.
    std::vector<std::pair<size_t, double>> window;
    const size_t window_size = 20000;
    size_t oldest = 0;
    for (int step = 0; step < 300000; ++step) {
      // Skewed toward low bins so the current distribution differs from the
      // reference.
      const size_t bin = static_cast<size_t>(std::pow(unit(rng), 2) * k);
      const double weight = step % 3 == 0 ? 0.5 + unit(rng) : 1.0;
      kl.Add(bin, weight);
      shadow[bin] += weight;
      window.emplace_back(bin, weight);
      if (window.size() - oldest > window_size) {
        const auto [old_bin, old_weight] = window[oldest++];
        kl.Add(old_bin, -old_weight);
        shadow[old_bin] = std::max(shadow[old_bin] - old_weight, 0.0);
      }
      if (step % 25000 == 0 || step == 299999) {
        ExpectMatchesBatch(kl);
        ASSERT_TRUE(RelativelyClose(kl.samples(), OracleTotal(shadow), 1e-12));
        if (HasFailure()) return;
      }
    }
    const double before = kl.KlCurrentReference();
    EXPECT_GT(before, 0.0);
    kl.Resync();
    const double after = kl.KlCurrentReference();
    EXPECT_TRUE(RelativelyClose(before, after, 1e-12)) << "Resync moved the value";
    ExpectMatchesBatch(kl);
  }
}

TEST(IncrementalKl, LongRunWithoutDriftStaysAccurate) {
  // Current data drawn from the reference distribution: KL is small (~K / 2N),
  // so the cancellation in (S_cc - S_cq) / N' - log N' is at its worst relative
  // to the result.
  const size_t k = 500;
  std::mt19937_64 rng(777);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  std::vector<double> reference(k);
  for (double& c : reference) c = 1000 + std::floor(unit(rng) * 1000);
  std::discrete_distribution<size_t> draw(reference.begin(), reference.end());
  IncrementalKl kl(MakeReference(reference, 0.5));
  std::vector<size_t> window;
  const size_t window_size = 200000;
  size_t oldest = 0;
  for (int step = 0; step < 400000; ++step) {
    const size_t bin = draw(rng);
    kl.Add(bin, 1);
    window.push_back(bin);
    if (window.size() - oldest > window_size) kl.Add(window[oldest++], -1);
    if (step % 50000 == 49999) {
      ExpectMatchesBatch(kl);
      EXPECT_LT(kl.KlCurrentReference(), 0.01);
      if (HasFailure()) return;
    }
  }
  EXPECT_EQ(kl.samples(), static_cast<double>(window_size));
  const double before = kl.KlCurrentReference();
  kl.Resync();
  EXPECT_TRUE(RelativelyClose(before, kl.KlCurrentReference(), 1e-12));
}

TEST(IncrementalKl, LongRunWithLargeCountsStaysAccurate) {
  // Large counts make each c log c term large relative to the change an update
  // makes.
  const size_t k = 50;
  std::mt19937_64 rng(99);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  std::vector<double> reference(k);
  for (double& c : reference) c = 1e6 + std::floor(unit(rng) * 1e6);
  IncrementalKl kl(MakeReference(reference, 0.5));
  for (size_t i = 0; i < k; ++i) kl.Add(i, 1e7 * (1 + unit(rng)));
  for (int step = 0; step < 200000; ++step) {
    const size_t bin = rng() % k;
    const double delta = kl.counts()[bin] > 10 && unit(rng) < 0.5 ? -1.0 : 1.0;
    kl.Add(bin, delta);
  }
  ExpectMatchesBatch(kl);
  const double before = kl.KlCurrentReference();
  kl.Resync();
  EXPECT_TRUE(RelativelyClose(before, kl.KlCurrentReference(), 1e-12));
}

TEST(IncrementalKl, ResyncChangesTheValueNegligibly) {
  std::mt19937_64 rng(5);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  for (size_t k : {3, 100, 1000}) {
    for (double alpha : {0.0, 0.5, 1.0}) {
      std::vector<double> reference(k);
      for (double& c : reference) c = 1 + std::floor(unit(rng) * 50);
      IncrementalKl kl(MakeReference(reference, alpha));
      for (int step = 0; step < 20000; ++step) {
        const size_t bin = rng() % k;
        const double current = kl.counts()[bin];
        kl.Add(bin, unit(rng) < 0.3 ? -current * unit(rng) : unit(rng) * 5);
      }
      const double before = kl.KlCurrentReference();
      kl.Resync();
      const double after = kl.KlCurrentReference();
      EXPECT_TRUE(RelativelyClose(before, after, 1e-12)) << "k=" << k << " alpha=" << alpha;
      // Resync is idempotent.
      kl.Resync();
      EXPECT_EQ(kl.KlCurrentReference(), after);
    }
  }
}

TEST(IncrementalKl, ImpossibleBinWithoutSmoothingIsInfinite) {
  // Bin 2 has no reference mass and alpha = 0: any current mass there makes
  // KL(P||Q) infinite.
  IncrementalKl kl(MakeReference({5, 5, 0}, 0.0));
  kl.Add(0, 3);
  kl.Add(1, 2);
  EXPECT_TRUE(std::isfinite(kl.KlCurrentReference()));
  ExpectMatchesBatch(kl);

  kl.Add(2, 1);
  EXPECT_EQ(kl.KlCurrentReference(), kInf);
  kl.Add(2, 2.5);
  EXPECT_EQ(kl.KlCurrentReference(), kInf);
  kl.Add(2, -1);
  EXPECT_EQ(kl.KlCurrentReference(), kInf);  // Still 2.5 there.
  kl.Resync();
  EXPECT_EQ(kl.KlCurrentReference(), kInf);  // Resync agrees.

  kl.Add(2, -2.5);  // Back to zero: finite again, and equal to the batch value.
  EXPECT_EQ(kl.counts()[2], 0.0);
  EXPECT_TRUE(std::isfinite(kl.KlCurrentReference()));
  ExpectMatchesBatch(kl);
  EXPECT_EQ(kl.samples(), 5.0);

  // Only the impossible bin populated, then emptied: infinite, then 0 (empty
  // histogram).
  IncrementalKl only(MakeReference({5, 5, 0}, 0.0));
  only.Add(2, 4);
  EXPECT_EQ(only.KlCurrentReference(), kInf);
  only.Add(2, -4);
  EXPECT_EQ(only.KlCurrentReference(), 0.0);

  // With smoothing the same bin is merely unlikely: finite.
  IncrementalKl smoothed(MakeReference({5, 5, 0}, 0.5));
  smoothed.Add(2, 10);
  EXPECT_TRUE(std::isfinite(smoothed.KlCurrentReference()));
  ExpectMatchesBatch(smoothed);
}

TEST(IncrementalKl, TinyNegativeResultIsClampedToZero) {
  IncrementalKl kl(MakeReference({1, 1}, 0.5));
  kl.Add(0, 0.1);
  kl.Add(0, 0.2);
  kl.Add(0,
         -0.30000000000000004);  // 0.1 + 0.2 in doubles: exactly back to zero.
  EXPECT_GE(kl.counts()[0], 0.0);
  kl.Add(1, 1);
  kl.Add(1, -(1 + 1e-12));  // A rounding-sized overshoot is clamped to 0.
  EXPECT_EQ(kl.counts()[1], 0.0);
  EXPECT_GE(kl.samples(), -1e-9);
  EXPECT_LE(kl.samples(), 1e-9);
  EXPECT_FALSE(std::isnan(kl.KlCurrentReference()));
}

TEST(IncrementalKl, SamplesTrackTheTotal) {
  IncrementalKl kl(MakeReference({2, 3, 5}, 0.5));
  double total = 0;
  std::mt19937_64 rng(3);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  for (int step = 0; step < 10000; ++step) {
    const size_t bin = rng() % 3;
    const double delta = step % 4 == 3 ? -kl.counts()[bin] : std::floor(unit(rng) * 10);
    total += std::max(kl.counts()[bin] + delta, 0.0) - kl.counts()[bin];
    kl.Add(bin, delta);
    // Integer counts: every partial sum is exact, so the tracked total is too.
    ASSERT_EQ(kl.samples(), total) << step;
    ASSERT_EQ(kl.samples(), static_cast<double>(OracleTotal(kl.counts())));
  }
}

TEST(IncrementalKl, SharesTheReference) {
  std::shared_ptr<const ReferenceProfile> reference = MakeReference({1, 2, 3}, 0.5);
  IncrementalKl a(reference);
  IncrementalKl b(reference);
  a.Add(0, 10);
  EXPECT_EQ(&a.reference(), reference.get());
  EXPECT_EQ(b.samples(), 0.0);
  EXPECT_EQ(b.KlCurrentReference(), 0.0);
  EXPECT_GT(a.KlCurrentReference(), 0.0);
}

}  // namespace
}  // namespace kldrift
