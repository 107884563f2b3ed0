#include "server/metrics/drift_metrics.h"

#include "gtest/gtest.h"

namespace kldrift {
namespace {

TEST(DriftMetricsTest, Placeholder) {
  EXPECT_EQ(DriftMetrics::ReasonLabel(absl::StatusCode::kNotFound), "not_found");
}

}  // namespace
}  // namespace kldrift
