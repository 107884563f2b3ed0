#include "server/core/alert_policy.h"

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/core/drift_measures.h"

namespace kldrift {
namespace {

using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

constexpr Measure kAllMeasures[] = {
    Measure::kKlCurrentReference,
    Measure::kKlReferenceCurrent,
    Measure::kJeffreys,
    Measure::kPsi,
    Measure::kJsBits,
    Measure::kHellinger,
    Measure::kTotalVariation,
    Measure::kLInf,
    Measure::kChi2,
};

// Expects ValidatePolicy(policy) to fail with INVALID_ARGUMENT and a message containing every one
// of `parts`.
void ExpectInvalid(const AlertPolicy& policy, const std::vector<std::string>& parts) {
  const absl::Status s = ValidatePolicy(policy);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  for (const std::string& part : parts) EXPECT_THAT(s.message(), HasSubstr(part));
}

TEST(AlertPolicyTest, DefaultsAreValidAndAsDocumented) {
  const AlertPolicy p;
  EXPECT_TRUE(ValidatePolicy(p).ok());
  EXPECT_THAT(p.windows, ElementsAre(absl::Minutes(5), absl::Hours(1), absl::Hours(24)));
  EXPECT_EQ(p.alpha, 0.5);
  EXPECT_EQ(p.measure, Measure::kKlCurrentReference);
  EXPECT_EQ(p.warn_threshold, 0.05);
  EXPECT_EQ(p.critical_threshold, 0.125);
  EXPECT_FALSE(p.clear_threshold.has_value());
  EXPECT_EQ(p.for_duration, absl::Minutes(5));
  EXPECT_FALSE(p.min_samples.has_value());
  EXPECT_EQ(p.max_p_value, 0.01);
  EXPECT_EQ(p.sub_buckets, 12);
  EXPECT_EQ(p.LongestWindow(), absl::Hours(24));
}

TEST(AlertPolicyTest, LongestWindowIsTheMaximumWhateverTheOrder) {
  AlertPolicy p;
  p.windows = {absl::Hours(2), absl::Minutes(5), absl::Hours(1)};
  EXPECT_EQ(p.LongestWindow(), absl::Hours(2));
}

TEST(AlertPolicyTest, EffectiveClearThreshold) {
  AlertPolicy p;
  EXPECT_DOUBLE_EQ(p.EffectiveClearThreshold(), 0.04);
  p.warn_threshold = 0.2;
  EXPECT_DOUBLE_EQ(p.EffectiveClearThreshold(), 0.16);
  p.clear_threshold = 0.01;
  EXPECT_EQ(p.EffectiveClearThreshold(), 0.01);
}

TEST(AlertPolicyTest, EffectiveMinSamplesIsAtLeast100AndGrowsWithBins) {
  AlertPolicy p;  // warn 0.05: 5 (K - 1) / 0.05 = 100 (K - 1).
  EXPECT_EQ(p.EffectiveMinSamples(1), 100);
  EXPECT_EQ(p.EffectiveMinSamples(2), 100);
  EXPECT_EQ(p.EffectiveMinSamples(3), 200);
  EXPECT_EQ(p.EffectiveMinSamples(11), 1000);
  EXPECT_EQ(p.EffectiveMinSamples(65), 6400);
  double previous = 0;
  for (size_t k = 1; k <= 300; ++k) {
    const double n = p.EffectiveMinSamples(k);
    EXPECT_GE(n, 100);
    EXPECT_GE(n, previous) << k;
    // The bias (K - 1) / (2N) is at most a tenth of warn.
    EXPECT_LE((static_cast<double>(k) - 1) / (2 * n), p.warn_threshold / 10 * (1 + 1e-12)) << k;
    previous = n;
  }

  p.warn_threshold = 0.5;  // 5 (K - 1) / 0.5 = 10 (K - 1): the floor of 100 holds up to K = 11.
  EXPECT_EQ(p.EffectiveMinSamples(5), 100);
  EXPECT_EQ(p.EffectiveMinSamples(21), 200);

  p.warn_threshold = 0;  // No bias bound: the floor.
  EXPECT_EQ(p.EffectiveMinSamples(1000), 100);

  p.min_samples = 7;  // An explicit value wins, even below the floor.
  EXPECT_EQ(p.EffectiveMinSamples(1000), 7);
  EXPECT_EQ(p.EffectiveMinSamples(2), 7);
}

TEST(AlertPolicyTest, MeasureNamesRoundTrip) {
  std::vector<std::string> names;
  for (Measure m : kAllMeasures) {
    const std::string name(MeasureName(m));
    EXPECT_NE(name, "unknown");
    absl::StatusOr<Measure> parsed = ParseMeasure(name);
    ASSERT_TRUE(parsed.ok()) << name;
    EXPECT_EQ(*parsed, m);
    for (const std::string& other : names) EXPECT_NE(other, name);
    names.push_back(name);
  }
  EXPECT_EQ(MeasureName(Measure::kKlCurrentReference), "kl_current_reference");
  EXPECT_EQ(MeasureName(Measure::kJsBits), "js_bits");
  EXPECT_EQ(MeasureName(Measure::kLInf), "l_inf");
}

TEST(AlertPolicyTest, UnknownMeasureListsTheValidNames) {
  for (const char* bad : {"kl", "KL_CURRENT_REFERENCE", "", "psi "}) {
    absl::StatusOr<Measure> m = ParseMeasure(bad);
    EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(m.status().message(),
                AllOf(HasSubstr(absl::StrCat("\"", bad, "\"")), HasSubstr("kl_current_reference"),
                      HasSubstr("js_bits"), HasSubstr("chi2")));
  }
}

TEST(AlertPolicyTest, MeasureValuePicksTheNamedField) {
  DriftMeasures m;
  m.kl_current_reference = 1;
  m.kl_reference_current = 2;
  m.jeffreys = 3;
  m.psi = 4;
  m.js_bits = 5;
  m.hellinger = 6;
  m.total_variation = 7;
  m.l_inf = 8;
  m.chi2 = 9;
  double expected = 1;
  for (Measure measure : kAllMeasures) {
    EXPECT_EQ(MeasureValue(m, measure), expected) << MeasureName(measure);
    expected += 1;
  }
}

TEST(ValidatePolicyTest, Windows) {
  AlertPolicy p;
  p.windows.clear();
  ExpectInvalid(p, {"at least one window"});

  p.windows.clear();
  for (int i = 1; i <= 9; ++i) p.windows.push_back(absl::Minutes(i));
  ExpectInvalid(p, {"at most 8 windows", "got 9"});
  p.windows.pop_back();
  EXPECT_TRUE(ValidatePolicy(p).ok());

  p.windows = {absl::Minutes(5), absl::ZeroDuration()};
  ExpectInvalid(p, {"window 0", "whole seconds > 0"});
  p.windows = {-absl::Minutes(5)};
  ExpectInvalid(p, {"window -5m", "whole seconds > 0"});
  p.windows = {absl::Milliseconds(90500)};
  ExpectInvalid(p, {"window 1m30.5s", "whole seconds"});
  p.windows = {absl::InfiniteDuration()};
  EXPECT_EQ(ValidatePolicy(p).code(), absl::StatusCode::kInvalidArgument);

  p.windows = {absl::Minutes(5), absl::Hours(1), absl::Minutes(5)};
  ExpectInvalid(p, {"window 5m is listed twice"});
  p.windows = {absl::Seconds(3600), absl::Hours(1)};
  ExpectInvalid(p, {"window 1h is listed twice"});
}

TEST(ValidatePolicyTest, SubBuckets) {
  AlertPolicy p;
  p.sub_buckets = 1;
  ExpectInvalid(p, {"sub_buckets = 1", "[2, 120]"});
  p.sub_buckets = 121;
  ExpectInvalid(p, {"sub_buckets = 121", "[2, 120]"});
  p.sub_buckets = 2;
  EXPECT_TRUE(ValidatePolicy(p).ok());
  p.sub_buckets = 120;
  EXPECT_TRUE(ValidatePolicy(p).ok());

  // At least one second per sub-bucket.
  p.sub_buckets = 12;
  p.windows = {absl::Seconds(11)};
  ExpectInvalid(p, {"window 11s", "shorter than one second per sub-bucket", "12 sub-buckets"});
  p.windows = {absl::Seconds(12)};
  EXPECT_TRUE(ValidatePolicy(p).ok());
}

TEST(ValidatePolicyTest, AlphaAndThresholds) {
  {
    AlertPolicy p;
    p.alpha = -0.5;
    ExpectInvalid(p, {"alpha = -0.5", ">= 0"});
    p.alpha = kNaN;
    ExpectInvalid(p, {"alpha", "finite"});
    p.alpha = kInf;
    ExpectInvalid(p, {"alpha", "finite"});
    p.alpha = 0;
    EXPECT_TRUE(ValidatePolicy(p).ok());
  }
  {
    AlertPolicy p;
    p.warn_threshold = -1;
    ExpectInvalid(p, {"warn_threshold = -1"});
  }
  {
    AlertPolicy p;
    p.critical_threshold = kInf;
    ExpectInvalid(p, {"critical_threshold = inf"});
  }
  {
    AlertPolicy p;
    p.critical_threshold = 0.01;
    ExpectInvalid(p, {"critical_threshold = 0.01", "below warn_threshold = 0.05"});
    p.critical_threshold = p.warn_threshold;  // Equal is allowed: no separate warn band.
    EXPECT_TRUE(ValidatePolicy(p).ok());
  }
  {
    AlertPolicy p;
    p.clear_threshold = 0.05;
    ExpectInvalid(p, {"clear_threshold = 0.05", "below warn_threshold = 0.05", "hysteresis"});
    p.clear_threshold = 0.06;
    ExpectInvalid(p, {"clear_threshold = 0.06"});
    p.clear_threshold = -0.01;
    ExpectInvalid(p, {"clear_threshold = -0.01"});
    p.clear_threshold = 0.049;
    EXPECT_TRUE(ValidatePolicy(p).ok());
    p.clear_threshold = 0;
    EXPECT_TRUE(ValidatePolicy(p).ok());
  }
  {
    // warn_threshold = 0 (every value warns): clear can only be 0. The fuzzer found a clear of
    // 0.005 accepted above a warn of -0, which reports then carried (clear > warn).
    AlertPolicy p;
    p.warn_threshold = -0.0;
    p.clear_threshold = 0.005;
    ExpectInvalid(p, {"clear_threshold = 0.005", "below warn_threshold = 0"});
    p.warn_threshold = 0;
    ExpectInvalid(p, {"clear_threshold = 0.005"});
    p.clear_threshold = 0;
    EXPECT_TRUE(ValidatePolicy(p).ok());
    p.clear_threshold = -0.0;
    EXPECT_TRUE(ValidatePolicy(p).ok());
  }
}

TEST(ValidatePolicyTest, ForMinSamplesAndPValue) {
  {
    AlertPolicy p;
    p.for_duration = -absl::Seconds(1);
    ExpectInvalid(p, {"for_duration", "negative"});
    p.for_duration = absl::ZeroDuration();
    EXPECT_TRUE(ValidatePolicy(p).ok());
  }
  {
    AlertPolicy p;
    p.min_samples = -1;
    ExpectInvalid(p, {"min_samples = -1"});
    p.min_samples = kNaN;
    ExpectInvalid(p, {"min_samples"});
    p.min_samples = 0;
    EXPECT_TRUE(ValidatePolicy(p).ok());
  }
  {
    AlertPolicy p;
    for (double bad : {0.0, -0.1, 1.5, kNaN}) {
      p.max_p_value = bad;
      ExpectInvalid(p, {"max_p_value", "(0, 1]"});
    }
    p.max_p_value = 1;
    EXPECT_TRUE(ValidatePolicy(p).ok());
  }
}

TEST(WindowFormatTest, FormatWindowIsTheShortestExactForm) {
  EXPECT_EQ(FormatWindow(absl::Minutes(5)), "5m");
  EXPECT_EQ(FormatWindow(absl::Hours(1)), "1h");
  EXPECT_EQ(FormatWindow(absl::Hours(24)), "24h");
  EXPECT_EQ(FormatWindow(absl::Seconds(90)), "90s");
  EXPECT_EQ(FormatWindow(absl::Minutes(90)), "90m");
  EXPECT_EQ(FormatWindow(absl::Seconds(3660)), "61m");
  EXPECT_EQ(FormatWindow(absl::Seconds(3601)), "3601s");
  EXPECT_EQ(FormatWindow(absl::Hours(48)), "48h");
  EXPECT_EQ(FormatWindow(absl::Milliseconds(1500)), "1.5s");
}

TEST(WindowFormatTest, ParseWindowAcceptsDocumentedForms) {
  const std::vector<std::pair<std::string, absl::Duration>> cases = {
      {"5m", absl::Minutes(5)},   {"1h", absl::Hours(1)},       {"24h", absl::Hours(24)},
      {"90s", absl::Seconds(90)}, {"1h30m", absl::Minutes(90)}, {"2d", absl::Hours(48)},
      {" 5m ", absl::Minutes(5)}, {"1d", absl::Hours(24)},
  };
  for (const auto& [text, expected] : cases) {
    absl::StatusOr<absl::Duration> d = ParseWindow(text);
    ASSERT_TRUE(d.ok()) << text << ": " << d.status();
    EXPECT_EQ(*d, expected) << text;
  }
}

TEST(WindowFormatTest, FormatThenParseRoundTrips) {
  for (absl::Duration d : {absl::Seconds(1), absl::Seconds(90), absl::Minutes(5), absl::Minutes(90),
                           absl::Hours(1), absl::Hours(24), absl::Hours(168)}) {
    absl::StatusOr<absl::Duration> parsed = ParseWindow(FormatWindow(d));
    ASSERT_TRUE(parsed.ok()) << FormatWindow(d);
    EXPECT_EQ(*parsed, d);
  }
}

TEST(WindowFormatTest, ParseWindowRejectsJunk) {
  for (const char* bad : {"", "junk", "5", "5 minutes", "-5m", "0s", "0d", "-1d", "d", "2dd",
                          "1.5d", "5m,1h", "1000000000000000000d"}) {
    absl::StatusOr<absl::Duration> d = ParseWindow(bad);
    EXPECT_EQ(d.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(d.status().message(),
                AllOf(HasSubstr(absl::StrCat("\"", bad, "\"")), HasSubstr("is not a window")))
        << bad;
  }
}

TEST(WindowFormatTest, ParseWindowList) {
  absl::StatusOr<std::vector<absl::Duration>> w = ParseWindowList("5m,1h,24h");
  ASSERT_TRUE(w.ok());
  EXPECT_THAT(*w, ElementsAre(absl::Minutes(5), absl::Hours(1), absl::Hours(24)));

  w = ParseWindowList(" 90s , 2d ");
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_THAT(*w, ElementsAre(absl::Seconds(90), absl::Hours(48)));

  w = ParseWindowList("1h30m");
  ASSERT_TRUE(w.ok());
  EXPECT_THAT(*w, ElementsAre(absl::Minutes(90)));

  w = ParseWindowList("5m,bogus,1h");
  EXPECT_EQ(w.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(w.status().message(), HasSubstr("\"bogus\""));

  for (const char* empty : {"", " ", ",", " , "}) {
    w = ParseWindowList(empty);
    EXPECT_EQ(w.status().code(), absl::StatusCode::kInvalidArgument) << empty;
    EXPECT_THAT(w.status().message(), HasSubstr("no windows given"));
  }
}

}  // namespace
}  // namespace kldrift
