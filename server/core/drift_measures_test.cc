#include "server/core/drift_measures.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/core/bin_layout.h"
#include "server/kernels/chi_squared.h"
#include "server/kernels/testing/random_histograms.h"
#include "server/kernels/testing/scalar_oracle.h"

namespace kldrift {
namespace {

namespace oracle = kernels::oracle;
using Real = oracle::Real;
using ::testing::AllOf;
using ::testing::HasSubstr;

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

using test_histograms::RandomCounts;
using test_histograms::Shape;
using test_histograms::ShapeName;

Real Total(const std::vector<double>& counts) {
  Real total = 0;
  for (double c : counts) total += c;
  return total;
}

// |got - want| <= rel * |want| + rel_to_scale * scale + absolute, where scale
// is the sum of |terms| (which bounds the rounding of any summation order when
// the result itself is tiny) and absolute (kShareRounding by default) allows
// for the rounding of the double shares themselves (a few ulps of each p_i,
// summing to a few ulps of 1): e.g. with one bin, c * (1 / c) may be 1 - 2^-53,
// so KL = 1e-16. Infinities must match exactly.
constexpr double kShareRounding = 1e-15;
::testing::AssertionResult Close(const char* what, double got, Real want, double rel,
                                 Real scale = 0, double rel_to_scale = 1e-14,
                                 double absolute = kShareRounding) {
  if (std::isnan(got)) return ::testing::AssertionFailure() << what << ": got NaN";
  if (std::isinf(static_cast<double>(want)) || std::isinf(got)) {
    if (got == static_cast<double>(want)) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure()
           << what << ": got " << got << ", want " << static_cast<double>(want);
  }
  const Real error = std::fabs(static_cast<Real>(got) - want);
  const Real allowed = rel * std::fabs(want) + rel_to_scale * scale + absolute;
  if (error <= allowed) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << what << ": got " << got << ", want " << static_cast<double>(want) << " (error "
         << static_cast<double>(error) << " > allowed " << static_cast<double>(allowed) << ")";
}

// Sum of |terms| of the Jensen-Shannon sum, in bits.
Real JsScale(const std::vector<Real>& p, const std::vector<Real>& q) {
  Real scale = 0;
  for (size_t i = 0; i < p.size(); ++i) {
    const Real m = (p[i] + q[i]) / 2;
    if (p[i] > 0) scale += p[i] * (std::fabs(std::log(p[i])) + std::fabs(std::log(m)));
    if (q[i] > 0) scale += q[i] * (std::fabs(std::log(q[i])) + std::fabs(std::log(m)));
  }
  return scale / std::log(Real{2});
}

absl::StatusOr<DriftMeasures> Compute(const std::vector<double>& reference,
                                      const std::vector<double>& current, double alpha,
                                      size_t top_k = 0, const BinLayout* layout = nullptr) {
  absl::StatusOr<ReferenceProfile> profile = ReferenceProfile::Create(reference, alpha);
  if (!profile.ok()) return profile.status();
  return ComputeDriftMeasures(*profile, current, top_k, layout);
}

void ExpectInvalidArgument(const absl::Status& status) {
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
}

// --- ReferenceProfile
// ----------------------------------------------------------------------------

TEST(ReferenceProfile, StoresCountsAndSmoothedShares) {
  std::mt19937_64 rng(5);
  for (size_t k : {1, 2, 5, 17, 1000}) {
    for (double alpha : {0.0, 0.5, 1.0}) {
      const std::vector<double> counts = RandomCounts(k, Shape::kSparse, rng, /*huge_shift=*/30);
      absl::StatusOr<ReferenceProfile> profile = ReferenceProfile::Create(counts, alpha);
      ASSERT_TRUE(profile.ok()) << profile.status();
      EXPECT_EQ(profile->size(), k);
      EXPECT_EQ(profile->alpha(), alpha);
      EXPECT_EQ(profile->samples(), static_cast<double>(Total(counts)));
      EXPECT_EQ(std::vector<double>(profile->counts().begin(), profile->counts().end()), counts);
      const std::vector<Real> want = oracle::Shares(counts, alpha);
      ASSERT_EQ(profile->shares().size(), k);
      ASSERT_EQ(profile->log_shares().size(), k);
      for (size_t i = 0; i < k; ++i) {
        ASSERT_TRUE(Close("share", profile->shares()[i], want[i], 1e-14, 0, 0, 0)) << i;
        if (want[i] == 0) {
          ASSERT_EQ(profile->log_shares()[i], -kInf) << i;
        } else {
          ASSERT_TRUE(
              Close("log share", profile->log_shares()[i], std::log(want[i]), 1e-14, 0, 0, 1e-15))
              << i;
        }
      }
    }
  }
}

TEST(ReferenceProfile, RejectsEmptyCounts) {
  absl::StatusOr<ReferenceProfile> profile = ReferenceProfile::Create({}, 0.5);
  ASSERT_FALSE(profile.ok());
  ExpectInvalidArgument(profile.status());
  EXPECT_THAT(profile.status().message(), HasSubstr("no bins"));
}

TEST(ReferenceProfile, RejectsBadCountsNamingTheBin) {
  struct Case {
    double bad;
    std::string value;
  };
  for (const Case& c : {Case{-1.0, "-1"}, Case{-0.5, "-0.5"}, Case{kNaN, "nan"}, Case{kInf, "inf"},
                        Case{-kInf, "-inf"}}) {
    for (size_t position : {size_t{0}, size_t{3}, size_t{18}}) {
      std::vector<double> counts(19, 2.0);
      counts[position] = c.bad;
      absl::StatusOr<ReferenceProfile> profile = ReferenceProfile::Create(counts, 0.5);
      ASSERT_FALSE(profile.ok()) << c.value << " at " << position;
      ExpectInvalidArgument(profile.status());
      EXPECT_THAT(profile.status().message(),
                  AllOf(HasSubstr("reference"),
                        HasSubstr(absl::StrCat("bin ", position, " is ", c.value))));
    }
  }
}

TEST(ReferenceProfile, NamesTheFirstBadBin) {
  std::vector<double> counts(10, 1.0);
  counts[4] = -3;
  counts[7] = kNaN;
  absl::StatusOr<ReferenceProfile> profile = ReferenceProfile::Create(counts, 0.5);
  ASSERT_FALSE(profile.ok());
  EXPECT_THAT(profile.status().message(), HasSubstr("bin 4 is -3"));
}

TEST(ReferenceProfile, RejectsAllZeroCounts) {
  for (double alpha : {0.0, 0.5}) {
    absl::StatusOr<ReferenceProfile> profile =
        ReferenceProfile::Create(std::vector<double>(7, 0.0), alpha);
    ASSERT_FALSE(profile.ok());
    ExpectInvalidArgument(profile.status());
    EXPECT_THAT(profile.status().message(), HasSubstr("empty"));
  }
}

TEST(ReferenceProfile, RejectsBadAlpha) {
  struct Case {
    double alpha;
    std::string value;
  };
  for (const Case& c : {Case{-0.5, "-0.5"}, Case{-1e-300, "-1e-300"}, Case{kNaN, "nan"},
                        Case{kInf, "inf"}, Case{-kInf, "-inf"}}) {
    absl::StatusOr<ReferenceProfile> profile = ReferenceProfile::Create({1, 2, 3}, c.alpha);
    ASSERT_FALSE(profile.ok()) << c.value;
    ExpectInvalidArgument(profile.status());
    EXPECT_THAT(profile.status().message(), HasSubstr(absl::StrCat("alpha = ", c.value)));
  }
}

// --- ComputeDriftMeasures errors
// -----------------------------------------------------------------

TEST(ComputeDriftMeasures, RejectsBinCountMismatch) {
  absl::StatusOr<ReferenceProfile> profile = ReferenceProfile::Create({1, 2, 3, 4}, 0.5);
  ASSERT_TRUE(profile.ok());
  for (size_t k : {0, 1, 3, 5, 100}) {
    const std::vector<double> current(k, 1.0);
    absl::StatusOr<DriftMeasures> m = ComputeDriftMeasures(*profile, current, 3);
    ASSERT_FALSE(m.ok()) << k;
    ExpectInvalidArgument(m.status());
    EXPECT_THAT(m.status().message(),
                AllOf(HasSubstr(absl::StrCat("has ", k, " bins")), HasSubstr("reference has 4")));
  }
}

TEST(ComputeDriftMeasures, RejectsEmptyCurrent) {
  absl::StatusOr<ReferenceProfile> profile = ReferenceProfile::Create({1, 2, 3, 4}, 0.5);
  ASSERT_TRUE(profile.ok());
  absl::StatusOr<DriftMeasures> m = ComputeDriftMeasures(*profile, {0, 0, 0, 0}, 3);
  ASSERT_FALSE(m.ok());
  ExpectInvalidArgument(m.status());
  EXPECT_THAT(m.status().message(), HasSubstr("empty"));
}

TEST(ComputeDriftMeasures, RejectsBadCurrentCountNamingTheBin) {
  absl::StatusOr<ReferenceProfile> profile =
      ReferenceProfile::Create(std::vector<double>(21, 3.0), 0.5);
  ASSERT_TRUE(profile.ok());
  struct Case {
    double bad;
    std::string value;
  };
  for (const Case& c :
       {Case{-1.0, "-1"}, Case{-2.5, "-2.5"}, Case{kNaN, "nan"}, Case{kInf, "inf"}}) {
    for (size_t position : {size_t{0}, size_t{7}, size_t{20}}) {
      std::vector<double> current(21, 1.0);
      current[position] = c.bad;
      absl::StatusOr<DriftMeasures> m = ComputeDriftMeasures(*profile, current, 3);
      ASSERT_FALSE(m.ok()) << c.value << " at " << position;
      ExpectInvalidArgument(m.status());
      EXPECT_THAT(
          m.status().message(),
          AllOf(HasSubstr("current"), HasSubstr(absl::StrCat("bin ", position, " is ", c.value))));
    }
  }
}

TEST(ComputeDriftMeasures, RejectsLayoutSizeMismatch) {
  absl::StatusOr<ReferenceProfile> profile = ReferenceProfile::Create({1, 2, 3, 4}, 0.5);
  ASSERT_TRUE(profile.ok());
  absl::StatusOr<BinLayout> layout = BinLayout::Numeric({0.0, 1.0, 2.0});  // 5 buckets.
  ASSERT_TRUE(layout.ok());
  absl::StatusOr<DriftMeasures> m = ComputeDriftMeasures(*profile, {1, 1, 1, 1}, 3, &*layout);
  ASSERT_FALSE(m.ok());
  ExpectInvalidArgument(m.status());
  EXPECT_THAT(m.status().message(),
              AllOf(HasSubstr("layout has 5 bins"), HasSubstr("reference has 4")));
  // A layout of the right size is accepted.
  absl::StatusOr<BinLayout> good = BinLayout::Numeric({0.0, 1.0});
  ASSERT_TRUE(good.ok());
  EXPECT_TRUE(ComputeDriftMeasures(*profile, {1, 1, 1, 1}, 3, &*good).ok());
}

// --- Values against the long-double oracle
// ---------------------------------------------------------

void ExpectMatchesOracle(const std::vector<double>& current, const std::vector<double>& reference,
                         double alpha) {
  absl::StatusOr<DriftMeasures> got = Compute(reference, current, alpha);
  ASSERT_TRUE(got.ok()) << got.status();
  const oracle::Measures want = oracle::AllMeasures(current, reference, alpha);
  const std::vector<Real> p = oracle::Shares(current, alpha);
  const std::vector<Real> q = oracle::Shares(reference, alpha);

  EXPECT_TRUE(Close("kl_current_reference", got->kl_current_reference, want.kl_pq, 1e-12,
                    want.kl_pq_scale));
  EXPECT_TRUE(Close("kl_reference_current", got->kl_reference_current, want.kl_qp, 1e-12,
                    want.kl_qp_scale));
  const Real jeffreys = want.kl_pq + want.kl_qp;
  EXPECT_TRUE(
      Close("jeffreys", got->jeffreys, jeffreys, 1e-12, want.kl_pq_scale + want.kl_qp_scale));
  EXPECT_EQ(got->jeffreys, got->kl_current_reference + got->kl_reference_current);
  EXPECT_EQ(got->psi, got->jeffreys);
  EXPECT_TRUE(Close("js_bits", got->js_bits, want.js_bits, 1e-12, JsScale(p, q)));
  EXPECT_TRUE(Close("hellinger", got->hellinger, want.hellinger, 1e-12));
  EXPECT_TRUE(Close("total_variation", got->total_variation, want.total_variation, 1e-12));
  EXPECT_TRUE(Close("l_inf", got->l_inf, want.l_inf, 1e-12));
  EXPECT_TRUE(Close("chi2", got->chi2, want.chi2, 1e-12));
  EXPECT_EQ(got->samples_current, static_cast<double>(Total(current)));
  EXPECT_EQ(got->samples_reference, static_cast<double>(Total(reference)));
  EXPECT_EQ(got->alpha, alpha);
  EXPECT_TRUE(got->top_bins.empty());

  // g_test_p_value = ChiSquaredSurvival(G, occupied bins - 1), G the two-sample homogeneity
  // statistic. G carries the rounding of its sum, so the p-value must lie between the survival
  // function at G -+ that error.
  const double p_value = got->g_test_p_value;
  ASSERT_FALSE(std::isnan(p_value));
  EXPECT_GE(p_value, 0.0);
  EXPECT_LE(p_value, 1.0);
  const double dof = static_cast<double>(want.g_degrees_of_freedom);
  if (dof < 1) {
    EXPECT_EQ(p_value, 1.0);
  } else {
    const Real g = want.g_statistic;
    const Real g_error = 1e-12L * g + 1e-13L * want.g_scale + 1e-9L;
    const double exact = kernels::ChiSquaredSurvival(static_cast<double>(g), dof);
    const double upper =
        kernels::ChiSquaredSurvival(static_cast<double>(std::max<Real>(g - g_error, 0)), dof);
    const double lower = kernels::ChiSquaredSurvival(static_cast<double>(g + g_error), dof);
    EXPECT_GE(p_value, lower * (1 - 1e-12) - 1e-300)
        << "exact " << exact << " G " << static_cast<double>(g);
    EXPECT_LE(p_value, upper * (1 + 1e-12) + 1e-300)
        << "exact " << exact << " G " << static_cast<double>(g);
  }
}

TEST(ComputeDriftMeasures, MatchesLongDoubleOracle) {
  const std::vector<Shape> shapes = {Shape::kDense, Shape::kSparse, Shape::kHuge, Shape::kTiny,
                                     Shape::kOneHot};
  uint64_t seed = 1;
  for (size_t k : {1, 2, 3, 8, 17, 64, 1000}) {
    for (Shape shape : shapes) {
      for (double alpha : {0.0, 0.5, 1.0}) {
        for (int repeat = 0; repeat < 4; ++repeat) {
          std::mt19937_64 rng(seed++);
          const std::vector<double> current = RandomCounts(k, shape, rng, /*huge_shift=*/30);
          const std::vector<double> reference = RandomCounts(k, shape, rng, /*huge_shift=*/30);
          SCOPED_TRACE(::testing::Message() << "k=" << k << " shape=" << ShapeName(shape)
                                            << " alpha=" << alpha << " seed=" << seed - 1);
          ExpectMatchesOracle(current, reference, alpha);
          if (HasFatalFailure()) return;
        }
      }
    }
  }
}

TEST(ComputeDriftMeasures, MatchesLongDoubleOracleWithMixedShapes) {
  uint64_t seed = 1000;
  const std::vector<Shape> shapes = {Shape::kDense, Shape::kSparse, Shape::kTiny};
  for (size_t k : {2, 17, 1000}) {
    for (Shape current_shape : shapes) {
      for (Shape reference_shape : shapes) {
        for (double alpha : {0.0, 0.5, 1.0}) {
          std::mt19937_64 rng(seed++);
          const std::vector<double> current =
              RandomCounts(k, current_shape, rng, /*huge_shift=*/30);
          const std::vector<double> reference =
              RandomCounts(k, reference_shape, rng, /*huge_shift=*/30);
          SCOPED_TRACE(::testing::Message()
                       << "k=" << k << " current=" << ShapeName(current_shape)
                       << " reference=" << ShapeName(reference_shape) << " alpha=" << alpha);
          ExpectMatchesOracle(current, reference, alpha);
          if (HasFatalFailure()) return;
        }
      }
    }
  }
}

TEST(ComputeDriftMeasures, MatchesLongDoubleOracleAtOneHundredThousandBins) {
  const size_t k = 100000;
  uint64_t seed = 99;
  for (Shape shape : {Shape::kDense, Shape::kSparse}) {
    for (double alpha : {0.0, 0.5, 1.0}) {
      std::mt19937_64 rng(seed++);
      const std::vector<double> current = RandomCounts(k, shape, rng, /*huge_shift=*/30);
      const std::vector<double> reference = RandomCounts(k, shape, rng, /*huge_shift=*/30);
      SCOPED_TRACE(::testing::Message() << "shape=" << ShapeName(shape) << " alpha=" << alpha);
      ExpectMatchesOracle(current, reference, alpha);
    }
  }
}

// --- Properties
// ------------------------------------------------------------------------------------

struct RandomPair {
  std::vector<double> current, reference;
  double alpha;
  std::string description;
};

std::vector<RandomPair> RandomPairs(uint64_t seed, size_t count, bool positive_alpha) {
  std::mt19937_64 rng(seed);
  const std::vector<Shape> shapes = {Shape::kDense, Shape::kSparse, Shape::kTiny, Shape::kOneHot};
  const std::vector<size_t> sizes = {2, 3, 5, 17, 64, 300};
  const std::vector<double> alphas =
      positive_alpha ? std::vector<double>{0.5, 1.0, 0.01} : std::vector<double>{0.0, 0.5, 1.0};
  std::vector<RandomPair> pairs;
  for (size_t i = 0; i < count; ++i) {
    const size_t k = sizes[rng() % sizes.size()];
    const Shape current_shape = shapes[rng() % shapes.size()];
    const Shape reference_shape = shapes[rng() % shapes.size()];
    RandomPair pair;
    pair.current = RandomCounts(k, current_shape, rng, /*huge_shift=*/30);
    pair.reference = RandomCounts(k, reference_shape, rng, /*huge_shift=*/30);
    pair.alpha = alphas[rng() % alphas.size()];
    pair.description =
        absl::StrCat("pair ", i, " k=", k, " current=", ShapeName(current_shape),
                     " reference=", ShapeName(reference_shape), " alpha=", pair.alpha);
    pairs.push_back(std::move(pair));
  }
  return pairs;
}

TEST(DriftProperties, BoundsAndPinskerOverRandomPairs) {
  for (const RandomPair& pair : RandomPairs(17, 600, /*positive_alpha=*/false)) {
    SCOPED_TRACE(pair.description);
    absl::StatusOr<DriftMeasures> m = Compute(pair.reference, pair.current, pair.alpha);
    ASSERT_TRUE(m.ok()) << m.status();
    for (double value :
         {m->kl_current_reference, m->kl_reference_current, m->jeffreys, m->psi, m->js_bits,
          m->hellinger, m->total_variation, m->l_inf, m->chi2, m->g_test_p_value}) {
      ASSERT_FALSE(std::isnan(value));
    }
    EXPECT_GE(m->kl_current_reference, 0.0);
    EXPECT_GE(m->kl_reference_current, 0.0);
    EXPECT_GE(m->chi2, 0.0);
    for (double bounded :
         {m->js_bits, m->hellinger, m->total_variation, m->l_inf, m->g_test_p_value}) {
      EXPECT_GE(bounded, 0.0);
      EXPECT_LE(bounded, 1.0);
    }
    // Pinsker: TV <= sqrt(KL / 2) in both directions.
    const double slack = 1e-12;
    EXPECT_LE(m->total_variation, std::sqrt(m->kl_current_reference / 2) + slack);
    EXPECT_LE(m->total_variation, std::sqrt(m->kl_reference_current / 2) + slack);
    // Since sum(p - q) = 0, the largest |p - q| is at most TV; and H^2 <= TV <=
    // sqrt(2) H.
    EXPECT_LE(m->l_inf, m->total_variation + slack);
    EXPECT_LE(m->hellinger * m->hellinger, m->total_variation + slack);
    EXPECT_LE(m->total_variation, std::sqrt(2.0) * m->hellinger + slack);
  }
}

TEST(DriftProperties, IdenticalCountsGiveExactlyZero) {
  std::mt19937_64 rng(23);
  for (size_t k : {1, 2, 3, 8, 13, 17, 1000}) {
    for (Shape shape : {Shape::kDense, Shape::kSparse, Shape::kTiny, Shape::kOneHot}) {
      const std::vector<double> counts = RandomCounts(k, shape, rng, /*huge_shift=*/30);
      for (double alpha : {0.0, 0.5, 1.0}) {
        SCOPED_TRACE(::testing::Message()
                     << "k=" << k << " shape=" << ShapeName(shape) << " alpha=" << alpha);
        absl::StatusOr<DriftMeasures> m = Compute(counts, counts, alpha, k);
        ASSERT_TRUE(m.ok()) << m.status();
        EXPECT_EQ(m->kl_current_reference, 0.0);
        EXPECT_EQ(m->kl_reference_current, 0.0);
        EXPECT_EQ(m->jeffreys, 0.0);
        EXPECT_EQ(m->psi, 0.0);
        EXPECT_EQ(m->js_bits, 0.0);
        EXPECT_EQ(m->hellinger, 0.0);
        EXPECT_EQ(m->total_variation, 0.0);
        EXPECT_EQ(m->l_inf, 0.0);
        EXPECT_EQ(m->chi2, 0.0);
        for (const BinContribution& c : m->top_bins) EXPECT_EQ(c.contribution, 0.0) << c.bin;
        if (alpha == 0) {
          EXPECT_NEAR(m->g_test_p_value, 1.0, 1e-9);  // Phat == Q.
        }
      }
    }
  }
}

TEST(DriftProperties, DifferentCountsGivePositiveDivergenceWithSmoothing) {
  int checked = 0;
  for (const RandomPair& pair : RandomPairs(29, 400, /*positive_alpha=*/true)) {
    // Smoothed shares are equal only when the counts are (the totals then match
    // too); skip pairs that happen to be proportional with equal totals, i.e.
    // identical.
    if (pair.current == pair.reference) continue;
    SCOPED_TRACE(pair.description);
    absl::StatusOr<DriftMeasures> m = Compute(pair.reference, pair.current, pair.alpha);
    ASSERT_TRUE(m.ok()) << m.status();
    const oracle::Measures want = oracle::AllMeasures(pair.current, pair.reference, pair.alpha);
    if (want.total_variation == 0) continue;  // Proportional counts with uniform shares.
    EXPECT_GT(m->kl_current_reference, 0.0);
    EXPECT_GT(m->kl_reference_current, 0.0);
    EXPECT_GT(m->js_bits, 0.0);
    EXPECT_GT(m->total_variation, 0.0);
    EXPECT_TRUE(std::isfinite(m->kl_current_reference));
    EXPECT_TRUE(std::isfinite(m->kl_reference_current));
    ++checked;
  }
  EXPECT_GT(checked, 300);
}

TEST(DriftProperties, SwappingCurrentAndReferenceSwapsTheKlDirections) {
  bool found_asymmetric = false;
  for (const RandomPair& pair : RandomPairs(31, 500, /*positive_alpha=*/true)) {
    SCOPED_TRACE(pair.description);
    absl::StatusOr<DriftMeasures> forward = Compute(pair.reference, pair.current, pair.alpha);
    absl::StatusOr<DriftMeasures> backward = Compute(pair.current, pair.reference, pair.alpha);
    ASSERT_TRUE(forward.ok()) << forward.status();
    ASSERT_TRUE(backward.ok()) << backward.status();
    EXPECT_TRUE(Close("swapped kl_current_reference", backward->kl_current_reference,
                      forward->kl_reference_current, 1e-12));
    EXPECT_TRUE(Close("swapped kl_reference_current", backward->kl_reference_current,
                      forward->kl_current_reference, 1e-12));
    EXPECT_TRUE(Close("swapped js_bits", backward->js_bits, forward->js_bits, 1e-12));
    EXPECT_TRUE(Close("swapped jeffreys", backward->jeffreys, forward->jeffreys, 1e-12));
    EXPECT_TRUE(Close("swapped hellinger", backward->hellinger, forward->hellinger, 1e-12));
    EXPECT_TRUE(Close("swapped total_variation", backward->total_variation,
                      forward->total_variation, 1e-12));
    const double larger = std::max(forward->kl_current_reference, forward->kl_reference_current);
    if (std::fabs(forward->kl_current_reference - forward->kl_reference_current) > 1e-3 * larger) {
      found_asymmetric = true;
    }
  }
  EXPECT_TRUE(found_asymmetric) << "KL should not be symmetric";
}

TEST(DriftProperties, KlIsAsymmetricOnAKnownPair) {
  // P = (0.9, 0.1) against Q = (0.5, 0.5): KL(P||Q) != KL(Q||P).
  absl::StatusOr<DriftMeasures> m = Compute({5, 5}, {9, 1}, 0.0);
  ASSERT_TRUE(m.ok()) << m.status();
  const Real p0 = 0.9L, p1 = 0.1L, q0 = 0.5L, q1 = 0.5L;
  const Real kl_pq = p0 * std::log(p0 / q0) + p1 * std::log(p1 / q1);
  const Real kl_qp = q0 * std::log(q0 / p0) + q1 * std::log(q1 / p1);
  EXPECT_TRUE(Close("kl_pq", m->kl_current_reference, kl_pq, 1e-13));
  EXPECT_TRUE(Close("kl_qp", m->kl_reference_current, kl_qp, 1e-13));
  EXPECT_GT(std::fabs(m->kl_current_reference - m->kl_reference_current), 0.1);
}

TEST(DriftProperties, ZeroReferenceBinWithoutSmoothingIsInfiniteNeverNaN) {
  const std::vector<double> reference = {5, 5, 0};
  for (const std::vector<double>& current :
       {std::vector<double>{5, 3, 2}, std::vector<double>{0, 0, 1},
        std::vector<double>{1000, 0, 1}}) {
    absl::StatusOr<DriftMeasures> m = Compute(reference, current, 0.0, 3);
    ASSERT_TRUE(m.ok()) << m.status();
    EXPECT_EQ(m->kl_current_reference, kInf);
    EXPECT_EQ(m->chi2, kInf);
    EXPECT_EQ(m->jeffreys, kInf);
    EXPECT_EQ(m->psi, kInf);
    // The two-sample G-test needs no smoothing: a finite p-value, never NaN.
    EXPECT_GE(m->g_test_p_value, 0.0);
    EXPECT_LE(m->g_test_p_value, 1.0);
    EXPECT_TRUE(std::isfinite(m->js_bits));
    EXPECT_GT(m->js_bits, 0.0);
    EXPECT_LE(m->js_bits, 1.0);
    for (double value : {m->kl_reference_current, m->hellinger, m->total_variation, m->l_inf}) {
      EXPECT_FALSE(std::isnan(value));
      EXPECT_LE(value, kInf);
    }
    EXPECT_TRUE(std::isfinite(m->hellinger));
    EXPECT_TRUE(std::isfinite(m->total_variation));
    // The impossible bin is the top contributor, with an infinite term.
    ASSERT_FALSE(m->top_bins.empty());
    EXPECT_EQ(m->top_bins[0].bin, 2u);
    EXPECT_EQ(m->top_bins[0].contribution, kInf);
    EXPECT_EQ(m->top_bins[0].reference_share, 0.0);
    for (const BinContribution& c : m->top_bins) EXPECT_FALSE(std::isnan(c.contribution));
  }
  // The reverse direction is finite when every bin with q > 0 has p > 0.
  absl::StatusOr<DriftMeasures> m = Compute(reference, {5, 3, 2}, 0.0);
  ASSERT_TRUE(m.ok());
  EXPECT_TRUE(std::isfinite(m->kl_reference_current));
  // Disjoint supports: both directions infinite, JS exactly one bit, TV one.
  absl::StatusOr<DriftMeasures> disjoint = Compute({1, 0}, {0, 1}, 0.0);
  ASSERT_TRUE(disjoint.ok());
  EXPECT_EQ(disjoint->kl_current_reference, kInf);
  EXPECT_EQ(disjoint->kl_reference_current, kInf);
  EXPECT_TRUE(Close("js_bits", disjoint->js_bits, 1, 1e-15));
  EXPECT_TRUE(Close("total_variation", disjoint->total_variation, 1, 1e-15));
  EXPECT_TRUE(Close("hellinger", disjoint->hellinger, 1, 1e-15));
  EXPECT_TRUE(Close("l_inf", disjoint->l_inf, 1, 1e-15));
}

TEST(DriftProperties, EmptyCurrentBinWhereReferenceIsEmptyIsFinite) {
  absl::StatusOr<DriftMeasures> m = Compute({5, 5, 0}, {4, 6, 0}, 0.0);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_TRUE(std::isfinite(m->kl_current_reference));
  EXPECT_TRUE(std::isfinite(m->kl_reference_current));
  EXPECT_TRUE(std::isfinite(m->chi2));
  EXPECT_GT(m->kl_current_reference, 0.0);
}

// --- Top bins
// --------------------------------------------------------------------------------------

TEST(TopBins, CountIsMinOfTopKAndBins) {
  const std::vector<double> reference = {3, 1, 4, 1, 5};
  const std::vector<double> current = {2, 7, 1, 8, 2};
  for (size_t top_k : {0, 1, 3, 5, 6, 1000}) {
    absl::StatusOr<DriftMeasures> m = Compute(reference, current, 0.5, top_k);
    ASSERT_TRUE(m.ok()) << m.status();
    EXPECT_EQ(m->top_bins.size(), std::min<size_t>(top_k, 5)) << top_k;
  }
}

TEST(TopBins, TiesKeepTheLowerBinFirst) {
  // Bins 1, 3, 4 have identical (current, reference) counts and so identical
  // contributions, as do bins 0 and 2; the first group contributes more (less
  // reference mass, same current mass).
  const std::vector<double> reference = {20, 10, 20, 10, 10};
  const std::vector<double> current = {20, 20, 20, 20, 20};
  for (double alpha : {0.0, 0.5}) {
    absl::StatusOr<DriftMeasures> m = Compute(reference, current, alpha, 5);
    ASSERT_TRUE(m.ok()) << m.status();
    std::vector<size_t> order;
    for (const BinContribution& c : m->top_bins) order.push_back(c.bin);
    EXPECT_EQ(order, (std::vector<size_t>{1, 3, 4, 0, 2})) << "alpha " << alpha;
    EXPECT_EQ(m->top_bins[0].contribution, m->top_bins[1].contribution);
    EXPECT_EQ(m->top_bins[1].contribution, m->top_bins[2].contribution);
    EXPECT_EQ(m->top_bins[3].contribution, m->top_bins[4].contribution);
    EXPECT_GT(m->top_bins[2].contribution, m->top_bins[3].contribution);
  }
  // All equal: bins in index order.
  absl::StatusOr<DriftMeasures> flat = Compute({1, 1, 1, 1}, {2, 2, 2, 2}, 0.5, 3);
  ASSERT_TRUE(flat.ok());
  ASSERT_EQ(flat->top_bins.size(), 3u);
  for (size_t j = 0; j < 3; ++j) EXPECT_EQ(flat->top_bins[j].bin, j);
}

TEST(TopBins, FewAreThePrefixOfTheFullRanking) {
  // A handful is ranked by insertion (up to 8 behind a threshold from column maxima), many by a
  // partial sort: the same order, ties included.
  uint64_t seed = 5000;
  for (size_t k : {1, 3, 5, 8, 9, 17, 64, 67, 1000}) {
    for (Shape shape : {Shape::kDense, Shape::kSparse, Shape::kOneHot}) {
      std::mt19937_64 rng(seed++);
      std::vector<double> current = RandomCounts(k, shape, rng);
      const std::vector<double> reference = RandomCounts(k, shape, rng);
      // Repeat a stretch of (current, reference) pairs: equal contributions.
      std::vector<double> tied_reference = reference;
      for (size_t i = k / 2; i < k; ++i) {
        current[i] = current[i % 4];
        tied_reference[i] = tied_reference[i % 4];
      }
      auto all_zero = [](const std::vector<double>& v) {
        return std::all_of(v.begin(), v.end(), [](double c) { return c == 0; });
      };
      if (all_zero(current)) current[0] = 1;
      if (all_zero(tied_reference)) tied_reference[0] = 1;
      SCOPED_TRACE(::testing::Message() << "k=" << k << " shape=" << ShapeName(shape));
      absl::StatusOr<DriftMeasures> all = Compute(tied_reference, current, 0.5, k);
      ASSERT_TRUE(all.ok()) << all.status();
      for (size_t top_k : {1, 2, 3, 5, 8, 9, 16, 17}) {
        absl::StatusOr<DriftMeasures> few = Compute(tied_reference, current, 0.5, top_k);
        ASSERT_TRUE(few.ok()) << few.status();
        ASSERT_EQ(few->top_bins.size(), std::min(top_k, k));
        for (size_t j = 0; j < few->top_bins.size(); ++j) {
          EXPECT_EQ(few->top_bins[j].bin, all->top_bins[j].bin) << "top " << top_k << " rank " << j;
          EXPECT_EQ(few->top_bins[j].contribution, all->top_bins[j].contribution);
        }
      }
    }
  }
}

TEST(TopBins, IndexOnlyLeavesLabelsEmpty) {
  absl::StatusOr<BinLayout> layout = BinLayout::Categorical({"a", "b"});
  ASSERT_TRUE(layout.ok());
  absl::StatusOr<ReferenceProfile> reference = ReferenceProfile::Create({5, 1, 1}, 0.5);
  ASSERT_TRUE(reference.ok());
  const std::vector<double> current = {1, 5, 1};
  absl::StatusOr<DriftMeasures> named =
      ComputeDriftMeasures(*reference, current, 2, &*layout, BinLabels::kNamed);
  absl::StatusOr<DriftMeasures> indexed =
      ComputeDriftMeasures(*reference, current, 2, &*layout, BinLabels::kIndexOnly);
  ASSERT_TRUE(named.ok() && indexed.ok());
  ASSERT_EQ(named->top_bins.size(), 2u);
  ASSERT_EQ(indexed->top_bins.size(), 2u);
  EXPECT_EQ(named->top_bins[0].label, "b");
  for (size_t j = 0; j < 2; ++j) {
    EXPECT_EQ(indexed->top_bins[j].bin, named->top_bins[j].bin);
    EXPECT_EQ(indexed->top_bins[j].contribution, named->top_bins[j].contribution);
    EXPECT_TRUE(indexed->top_bins[j].label.empty());
  }
}

TEST(TopBins, MatchOracleOnRandomHistograms) {
  uint64_t seed = 4000;
  for (size_t k : {1, 2, 17, 1000}) {
    for (Shape shape : {Shape::kDense, Shape::kSparse, Shape::kTiny}) {
      for (double alpha : {0.0, 0.5, 1.0}) {
        std::mt19937_64 rng(seed++);
        const std::vector<double> current = RandomCounts(k, shape, rng, /*huge_shift=*/30);
        const std::vector<double> reference = RandomCounts(k, shape, rng, /*huge_shift=*/30);
        SCOPED_TRACE(::testing::Message()
                     << "k=" << k << " shape=" << ShapeName(shape) << " alpha=" << alpha);
        absl::StatusOr<DriftMeasures> all = Compute(reference, current, alpha, k);
        ASSERT_TRUE(all.ok()) << all.status();
        ASSERT_EQ(all->top_bins.size(), k);
        const std::vector<Real> p = oracle::Shares(current, alpha);
        const std::vector<Real> q = oracle::Shares(reference, alpha);
        const oracle::Measures want = oracle::AllMeasures(current, reference, alpha);

        std::vector<bool> seen(k, false);
        Real sum = 0;
        for (size_t j = 0; j < k; ++j) {
          const BinContribution& c = all->top_bins[j];
          ASSERT_LT(c.bin, k);
          ASSERT_FALSE(seen[c.bin]) << "bin " << c.bin << " listed twice";
          seen[c.bin] = true;
          EXPECT_EQ(c.label, absl::StrCat("bin ", c.bin));
          ASSERT_TRUE(Close("current_share", c.current_share, p[c.bin], 1e-14, 0, 0, 0)) << c.bin;
          ASSERT_TRUE(Close("reference_share", c.reference_share, q[c.bin], 1e-14, 0, 0, 0))
              << c.bin;
          const Real term = p[c.bin] == 0   ? 0
                            : q[c.bin] == 0 ? oracle::kInf
                                            : p[c.bin] * std::log(p[c.bin] / q[c.bin]);
          const Real term_scale =
              p[c.bin] == 0
                  ? 0
                  : p[c.bin] * (std::fabs(std::log(p[c.bin])) + std::fabs(std::log(q[c.bin])) + 1);
          ASSERT_TRUE(Close("contribution", c.contribution, term, 1e-12, term_scale)) << c.bin;
          if (j > 0) {
            const BinContribution& previous = all->top_bins[j - 1];
            ASSERT_TRUE(previous.contribution > c.contribution ||
                        (previous.contribution == c.contribution && previous.bin < c.bin))
                << "position " << j;
          }
          sum += c.contribution;
        }
        // The contributions of all bins add up to KL(P||Q).
        EXPECT_TRUE(Close("sum of contributions", static_cast<double>(sum),
                          all->kl_current_reference, 1e-12, want.kl_pq_scale));

        // A shorter list is a prefix of the full one.
        for (size_t top_k : {size_t{0}, size_t{1}, size_t{3}, k / 2}) {
          absl::StatusOr<DriftMeasures> some = Compute(reference, current, alpha, top_k);
          ASSERT_TRUE(some.ok());
          ASSERT_EQ(some->top_bins.size(), std::min(top_k, k));
          for (size_t j = 0; j < some->top_bins.size(); ++j) {
            EXPECT_EQ(some->top_bins[j].bin, all->top_bins[j].bin);
            EXPECT_EQ(some->top_bins[j].contribution, all->top_bins[j].contribution);
          }
          // The measures do not depend on top_k.
          EXPECT_EQ(some->kl_current_reference, all->kl_current_reference);
          EXPECT_EQ(some->chi2, all->chi2);
        }
      }
    }
  }
}

TEST(TopBins, ContributionsSumToKlWhenFinite) {
  // Dense histograms with smoothing: a strict 1e-12 relative check (KL is far
  // from zero).
  std::mt19937_64 rng(808);
  for (size_t k : {2, 17, 1000, 100000}) {
    const std::vector<double> current = RandomCounts(k, Shape::kDense, rng, /*huge_shift=*/30);
    const std::vector<double> reference = RandomCounts(k, Shape::kSparse, rng, /*huge_shift=*/30);
    absl::StatusOr<DriftMeasures> m = Compute(reference, current, 0.5, k);
    ASSERT_TRUE(m.ok()) << m.status();
    Real sum = 0;
    for (const BinContribution& c : m->top_bins) sum += c.contribution;
    EXPECT_TRUE(Close("sum", m->kl_current_reference, sum, 1e-12)) << "k=" << k;
  }
}

TEST(TopBins, LabelsComeFromTheLayout) {
  absl::StatusOr<BinLayout> numeric = BinLayout::Numeric({0.0, 1.0, 2.0});
  ASSERT_TRUE(numeric.ok());
  const std::vector<double> reference = {1, 10, 10, 1, 1};
  const std::vector<double> current = {0, 30, 1, 0, 0};  // Bin 1, [0, 1), dominates.
  absl::StatusOr<DriftMeasures> m = Compute(reference, current, 0.5, 5, &*numeric);
  ASSERT_TRUE(m.ok()) << m.status();
  ASSERT_EQ(m->top_bins.size(), 5u);
  EXPECT_EQ(m->top_bins[0].bin, 1u);
  EXPECT_EQ(m->top_bins[0].label, "[0, 1)");
  for (const BinContribution& c : m->top_bins) EXPECT_EQ(c.label, numeric->BinLabel(c.bin));
  std::vector<std::string> labels;
  for (const BinContribution& c : m->top_bins) labels.push_back(c.label);
  EXPECT_THAT(labels, ::testing::UnorderedElementsAre("< 0", "[0, 1)", "[1, 2)", ">= 2", "NaN"));

  absl::StatusOr<BinLayout> categorical = BinLayout::Categorical({"cat", "dog"});
  ASSERT_TRUE(categorical.ok());
  absl::StatusOr<DriftMeasures> c = Compute({10, 10, 0}, {1, 10, 9}, 0.5, 3, &*categorical);
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_EQ(c->top_bins.size(), 3u);
  EXPECT_EQ(c->top_bins[0].bin, 2u);
  EXPECT_EQ(c->top_bins[0].label, "<unseen>");
  for (const BinContribution& b : c->top_bins) EXPECT_EQ(b.label, categorical->BinLabel(b.bin));

  absl::StatusOr<BinLayout> pre_binned = BinLayout::PreBinned(3);
  ASSERT_TRUE(pre_binned.ok());
  absl::StatusOr<DriftMeasures> p = Compute({10, 10, 1}, {1, 10, 9}, 0.5, 3, &*pre_binned);
  ASSERT_TRUE(p.ok()) << p.status();
  for (const BinContribution& b : p->top_bins) EXPECT_EQ(b.label, absl::StrCat("bin ", b.bin));
}

TEST(TopBins, LabelsWithoutLayoutAreBinIndices) {
  absl::StatusOr<DriftMeasures> m = Compute({5, 1, 1, 1}, {1, 1, 1, 5}, 0.5, 4);
  ASSERT_TRUE(m.ok()) << m.status();
  ASSERT_EQ(m->top_bins.size(), 4u);
  EXPECT_EQ(m->top_bins[0].bin, 3u);
  EXPECT_EQ(m->top_bins[0].label, "bin 3");
  for (const BinContribution& c : m->top_bins) EXPECT_EQ(c.label, absl::StrCat("bin ", c.bin));
}

TEST(GTestPValue, EdgeCases) {
  EXPECT_EQ(GTestPValue(0.7, 0), 1.0);     // One occupied bin: no degrees of freedom.
  EXPECT_EQ(GTestPValue(0.0, 9), 1.0);     // G = 0.
  EXPECT_EQ(GTestPValue(-1e-17, 9), 1.0);  // Rounding below zero is clamped.
  EXPECT_EQ(GTestPValue(kInf, 9), 0.0);
  EXPECT_EQ(GTestPValue(120.0, 6), kernels::ChiSquaredSurvival(120.0, 6.0));
}

// The decider answers exactly as comparing the p-value would: over a grid of statistics and,
// densely, right around where the p-value crosses the bound (found here by bisection), for
// degrees of freedom from 1 to 2^19 and bounds from 0.5 to below the decider's range.
TEST(GTestDecider, AgreesWithThePValueEverywhere) {
  GTestDecider decider;
  size_t compared = 0;
  for (double df : {1.0, 2.0, 5.0, 63.0, 255.0, 10000.0, 524287.0, 0.0, 0.5}) {
    for (double bound : {0.5, 0.05, 0.01, 1e-3, 1e-10, 1e-100, 1e-250, 1.0, 0.0, kInf}) {
      std::vector<double> statistics = {-1.0, 0.0, 1e-300, kInf, -kInf, kNaN};
      const double scale = std::max(df, 1.0) + 10 * std::sqrt(std::max(df, 1.0)) + 2000;
      for (int i = 0; i <= 400; ++i) statistics.push_back(scale * i / 400.0);
      if (df >= 1 && bound > 0 && bound < 1) {
        double lo = 0, hi = scale;
        while (!(GTestPValue(hi, df) <= bound) && hi < 1e300) hi *= 2;
        for (int i = 0; i < 200; ++i) {
          const double mid = lo + (hi - lo) / 2;
          (GTestPValue(mid, df) <= bound ? hi : lo) = mid;
        }
        for (double step : {0.0, 1e-15, 1e-12, 1e-9, 1e-7, 1e-6, 1e-5, 1e-3}) {
          for (double sign : {-1.0, 1.0}) statistics.push_back(hi * (1 + sign * step));
        }
        for (int i = -50; i <= 50; ++i)
          statistics.push_back(std::nextafter(hi, 0.0) + i * 1e-13 * hi);
      }
      for (double g : statistics) {
        ASSERT_EQ(decider.PValueAtMost(g, df, bound), GTestPValue(g, df) <= bound)
            << "g=" << g << " df=" << df << " bound=" << bound << " p=" << GTestPValue(g, df);
        ++compared;
      }
    }
  }
  EXPECT_GT(compared, 30000u);
}

TEST(HomogeneityGStatistic, ProportionalHistogramsGiveZeroWhateverTheSmoothing) {
  // The same shape at different totals: no evidence of drift, p = 1, for every alpha.
  const std::vector<double> reference = {10, 30, 0, 60};
  const std::vector<double> current = {1, 3, 0, 6};
  for (double alpha : {0.0, 0.5, 3.0, 100.0}) {
    absl::StatusOr<ReferenceProfile> profile = ReferenceProfile::Create(reference, alpha);
    ASSERT_TRUE(profile.ok());
    absl::StatusOr<DriftMeasures> m = ComputeDriftMeasures(*profile, current, 0);
    ASSERT_TRUE(m.ok());
    EXPECT_NEAR(m->g_test_p_value, 1.0, 1e-9) << alpha;
  }
  // G grows with evidence: the same shift seen in more samples gives a smaller p-value (bounded
  // by the reference's own 1000 samples).
  absl::StatusOr<ReferenceProfile> profile = ReferenceProfile::Create({500, 500}, 0.5);
  double previous = 1.0;
  for (double n : {10.0, 100.0, 1000.0, 10000.0}) {
    const std::vector<double> current = {0.6 * n, 0.4 * n};
    const double p = ComputeDriftMeasures(*profile, current, 0)->g_test_p_value;
    EXPECT_LT(p, previous) << n;
    previous = p;
  }
  EXPECT_LT(previous, 1e-6);
  // The statistic itself: G = 0 for proportional totals, > 0 otherwise.
  EXPECT_EQ(HomogeneityGStatistic(10, 100, 10 * std::log1p(10.0) + 100 * std::log1p(0.1)), 0.0);
}

// Finite counts whose total overflows a double would make every share 0 and KL
// +inf: refused.
TEST(DriftMeasuresOverflow, CountsWhoseTotalOverflowsAreRejected) {
  const double huge = std::numeric_limits<double>::max();
  absl::StatusOr<ReferenceProfile> reference = ReferenceProfile::Create({huge, huge}, 0.5);
  EXPECT_EQ(reference.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(reference.status().message(), ::testing::HasSubstr("add up to more"));

  absl::StatusOr<ReferenceProfile> ok = ReferenceProfile::Create({1, 1}, 0.5);
  ASSERT_TRUE(ok.ok());
  const std::vector<double> current = {huge, huge};
  absl::StatusOr<DriftMeasures> measures = ComputeDriftMeasures(*ok, current, 0);
  EXPECT_EQ(measures.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(measures.status().message(), ::testing::HasSubstr("current counts add up"));
}

}  // namespace
}  // namespace kldrift
