// A gtest check that two window reports say the same, to the last bit: for tests comparing two
// engines that must agree (different thread counts, ingest coalesced or not).
#ifndef KLDRIFT_SERVER_CORE_TESTING_REPORT_COMPARE_H_
#define KLDRIFT_SERVER_CORE_TESTING_REPORT_COMPARE_H_

#include <cmath>

#include "gtest/gtest.h"
#include "server/core/drift_engine.h"

namespace kldrift::test_inputs {

inline void ExpectSameReport(const WindowReport& a, const WindowReport& b) {
  EXPECT_EQ(a.stream, b.stream);
  EXPECT_EQ(a.window, b.window);
  EXPECT_EQ(a.samples, b.samples);
  // Bit for bit, NaN included.
  EXPECT_EQ(std::isnan(a.measure_value), std::isnan(b.measure_value));
  if (!std::isnan(a.measure_value)) {
    EXPECT_EQ(a.measure_value, b.measure_value);
  }
  EXPECT_EQ(a.enough_samples, b.enough_samples);
  EXPECT_EQ(a.eligible, b.eligible);
  EXPECT_EQ(a.alert, b.alert);
  EXPECT_EQ(a.histogram.has_value(), b.histogram.has_value());
  if (a.histogram && b.histogram) {
    EXPECT_EQ(a.histogram->kl_current_reference, b.histogram->kl_current_reference);
    EXPECT_EQ(a.histogram->g_test_p_value, b.histogram->g_test_p_value);
    ASSERT_EQ(a.histogram->top_bins.size(), b.histogram->top_bins.size());
    for (size_t j = 0; j < a.histogram->top_bins.size(); ++j) {
      EXPECT_EQ(a.histogram->top_bins[j].bin, b.histogram->top_bins[j].bin);
    }
  }
}

}  // namespace kldrift::test_inputs

#endif  // KLDRIFT_SERVER_CORE_TESTING_REPORT_COMPARE_H_
