// DriftEngine::ExportModel / ImportModel: handing a model's state to another engine (sharding).
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/core/clock.h"
#include "server/core/drift_engine.h"
#include "server/core/testing/engine_inputs.h"

namespace kldrift {
namespace {

using test_inputs::Gaussian;
using test_inputs::GaussianStats;
using test_inputs::Hist;
using test_inputs::LogProbs;
using test_inputs::MakeBatch;
using test_inputs::PolicyRef;
using test_inputs::PreBinned;
using ::testing::HasSubstr;

const absl::Time kStart = absl::FromUnixSeconds(1'800'000'000);

AlertPolicy EagerPolicy() {
  AlertPolicy policy;
  policy.warn_threshold = 0.01;
  policy.critical_threshold = 0.05;
  policy.for_duration = absl::ZeroDuration();
  policy.min_samples = 5;
  policy.max_p_value = 1;
  return policy;
}

// Two engines, each with its own clock at the same time: the exporting and the importing replica.
class ModelTransferTest : public ::testing::Test {
 protected:
  ModelTransferTest() : from_clock_(kStart), to_clock_(kStart) {
    from_ = std::make_unique<DriftEngine>(EngineOptions{}, &from_clock_);
    to_ = std::make_unique<DriftEngine>(EngineOptions{}, &to_clock_);
  }

  // Every window report of `stream` on both engines: the same samples, measures and alert state.
  void ExpectSameDrift(const StreamKey& stream) {
    absl::StatusOr<std::vector<WindowReport>> a = from_->GetDrift(stream, std::nullopt, 3);
    absl::StatusOr<std::vector<WindowReport>> b = to_->GetDrift(stream, std::nullopt, 3);
    ASSERT_TRUE(a.ok()) << a.status();
    ASSERT_TRUE(b.ok()) << b.status();
    ASSERT_EQ(a->size(), b->size());
    for (size_t w = 0; w < a->size(); ++w) {
      SCOPED_TRACE(stream.ToString() + " window " + absl::FormatDuration((*a)[w].window));
      EXPECT_EQ((*b)[w].samples, (*a)[w].samples);
      EXPECT_EQ((*b)[w].measure_value, (*a)[w].measure_value);
      EXPECT_EQ((*b)[w].reference_version, (*a)[w].reference_version);
      EXPECT_EQ((*b)[w].alert, (*a)[w].alert);
      ASSERT_EQ((*b)[w].histogram.has_value(), (*a)[w].histogram.has_value());
      if ((*a)[w].histogram) {
        EXPECT_EQ((*b)[w].histogram->kl_current_reference, (*a)[w].histogram->kl_current_reference);
        EXPECT_EQ((*b)[w].histogram->js_bits, (*a)[w].histogram->js_bits);
      }
    }
  }

  FakeClock from_clock_;
  FakeClock to_clock_;
  std::unique_ptr<DriftEngine> from_;
  std::unique_ptr<DriftEngine> to_;
};

TEST_F(ModelTransferTest, EveryKindRoundTripsWithVersionsWindowsAndAlertStates) {
  const StreamKey hist{"m", "v1", "hist"};
  const StreamKey gauss{"m", "v1", "latent"};
  const StreamKey policy{"m", "v1", "policy"};
  const StreamKey other{"other", "", "s"};
  ASSERT_TRUE(from_->PutReference(PreBinned(hist, {5, 5, 5, 5})).ok());
  ASSERT_TRUE(from_->PutReference(PreBinned(hist, {1, 1, 1, 1}, EagerPolicy())).ok());
  ASSERT_TRUE(from_->PutReference(Gaussian(gauss, {0, 0}, {1, 1})).ok());
  ASSERT_TRUE(from_->PutReference(PolicyRef(policy)).ok());
  ASSERT_TRUE(from_->PutReference(PreBinned(other, {1, 1})).ok());
  // Data in several sub-buckets of every window, an hour apart.
  for (int step = 0; step < 4; ++step) {
    IngestResult r = from_->Ingest(
        MakeBatch("c", step + 1, "m",
                  {Hist(hist, {30.0 + step, 1, 0, 2}), GaussianStats(gauss, 10, {5, -5}, {20, 20}),
                   LogProbs(policy, {-1.0, -2.0}, {-1.5, -1.5})}));
    ASSERT_TRUE(r.status.ok()) << r.status;
    from_->Evaluate();
    from_clock_.Advance(absl::Minutes(7));
    to_clock_.Advance(absl::Minutes(7));
  }
  from_->Evaluate();
  absl::StatusOr<std::vector<WindowReport>> fired = from_->GetDrift(hist, std::nullopt, 0);
  ASSERT_TRUE(fired.ok());
  EXPECT_EQ(fired->back().alert.state, AlertState::kFiring);

  absl::StatusOr<std::vector<StreamExport>> exported = from_->ExportModel("m");
  ASSERT_TRUE(exported.ok()) << exported.status();
  ASSERT_EQ(exported->size(), 3u);  // Not the other model's stream.
  absl::StatusOr<size_t> imported = to_->ImportModel("m", *exported, /*replace=*/false);
  ASSERT_TRUE(imported.ok()) << imported.status();
  EXPECT_EQ(*imported, 3u);

  absl::StatusOr<std::shared_ptr<const Reference>> first = to_->GetReference(hist, 1);
  ASSERT_TRUE(first.ok());
  EXPECT_EQ((*first)->counts, (*from_->GetReference(hist, 1))->counts);
  EXPECT_EQ((*to_->GetReference(hist, 0))->version, 2u);
  for (const StreamKey& key : {hist, gauss, policy}) ExpectSameDrift(key);
  EXPECT_EQ(to_->GetReference(other, 0).status().code(), absl::StatusCode::kNotFound);

  // Both go on the same way: the next tick and the next batch give the same reports.
  from_->Evaluate();
  to_->Evaluate();
  for (IngestResult r : {from_->Ingest(MakeBatch("c", 9, "m", {Hist(hist, {0, 9, 0, 0})})),
                         to_->Ingest(MakeBatch("c", 9, "m", {Hist(hist, {0, 9, 0, 0})}))}) {
    ASSERT_TRUE(r.status.ok()) << r.status;
  }
  ExpectSameDrift(hist);
}

TEST_F(ModelTransferTest, SubBucketsOlderThanTheWindowAreDroppedOnImport) {
  const StreamKey key{"m", "", "s"};
  ASSERT_TRUE(from_->PutReference(PreBinned(key, {1, 1})).ok());
  ASSERT_TRUE(from_->Ingest(MakeBatch("c", 1, "m", {Hist(key, {4, 0})})).status.ok());
  absl::StatusOr<std::vector<StreamExport>> exported = from_->ExportModel("m");
  ASSERT_TRUE(exported.ok());
  // The importing replica is two hours later: the 5m and 1h windows no longer cover the data.
  to_clock_.Advance(absl::Hours(2));
  ASSERT_TRUE(to_->ImportModel("m", *exported, false).ok());
  absl::StatusOr<std::vector<WindowReport>> reports = to_->GetDrift(key, std::nullopt, 0);
  ASSERT_TRUE(reports.ok());
  ASSERT_EQ(reports->size(), 3u);
  EXPECT_EQ((*reports)[0].samples, 0);  // 5m
  EXPECT_EQ((*reports)[1].samples, 0);  // 1h
  EXPECT_EQ((*reports)[2].samples, 4);  // 24h
}

TEST_F(ModelTransferTest, ExistingModelNeedsReplaceAndBadExportsAreRefused) {
  const StreamKey key{"m", "", "s"};
  ASSERT_TRUE(from_->PutReference(PreBinned(key, {1, 1})).ok());
  absl::StatusOr<std::vector<StreamExport>> exported = from_->ExportModel("m");
  ASSERT_TRUE(exported.ok());
  EXPECT_EQ(from_->ExportModel("absent").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(from_->ExportModel("bad*name").status().code(), absl::StatusCode::kInvalidArgument);

  // Exists here: refused without replace, state untouched; replace swaps it whole.
  const StreamKey stale{"m", "", "stale"};
  ASSERT_TRUE(to_->PutReference(PreBinned(stale, {3, 3, 3})).ok());
  absl::StatusOr<size_t> refused = to_->ImportModel("m", *exported, false);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(refused.status().message(), HasSubstr("already has 1 streams"));
  EXPECT_TRUE(to_->GetReference(stale, 0).ok());
  ASSERT_TRUE(to_->ImportModel("m", *exported, true).ok());
  EXPECT_EQ(to_->GetReference(stale, 0).status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(to_->GetReference(key, 0).ok());

  // Streams of another model than named, no streams, a stream without versions.
  EXPECT_THAT(to_->ImportModel("renamed", *exported, true).status().message(),
              HasSubstr("is not of model \"renamed\""));
  EXPECT_EQ(to_->ImportModel("m", {}, true).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(to_->ImportModel("m", {StreamExport{}}, true).status().code(),
            absl::StatusCode::kInvalidArgument);
  // A stream name PutReference would refuse (ingest trusts every stream's name to be valid).
  std::vector<StreamExport> badly_named = *exported;
  auto renamed = std::make_shared<Reference>(*badly_named[0].versions[0]);
  renamed->stream.signal = "bad name";
  badly_named[0].versions = {renamed};
  const size_t streams_before = to_->stream_count();
  const absl::Status bad_name = to_->ImportModel("m", badly_named, true).status();
  EXPECT_EQ(bad_name.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad_name.message(), HasSubstr("signal"));
  EXPECT_EQ(to_->stream_count(), streams_before);
  EXPECT_TRUE(to_->GetReference(key, 0).ok());  // The model's streams stay as they were.
}

// An import sent in parts: later parts append to the streams the earlier ones installed, and
// refuse a stream that exists.
TEST_F(ModelTransferTest, PartsAppendAndRefuseStreamsThatExist) {
  for (const char* signal : {"a", "b", "c"}) {
    ASSERT_TRUE(from_->PutReference(PreBinned({"m", "", signal}, {1, 1})).ok());
  }
  absl::StatusOr<std::vector<StreamExport>> exported = from_->ExportModel("m");
  ASSERT_TRUE(exported.ok());
  ASSERT_EQ(exported->size(), 3u);
  std::vector<StreamExport> first(exported->begin(), exported->begin() + 2);
  std::vector<StreamExport> rest(exported->begin() + 2, exported->end());
  ASSERT_TRUE(to_->ImportModel("m", first, /*replace=*/false).ok());
  EXPECT_EQ(to_->ImportModel("m", rest, false).status().code(),
            absl::StatusCode::kFailedPrecondition);
  absl::StatusOr<size_t> appended = to_->ImportModel("m", rest, false, /*append=*/true);
  ASSERT_TRUE(appended.ok()) << appended.status();
  EXPECT_EQ(*appended, 1u);
  EXPECT_EQ(to_->stream_count(), 3u);
  absl::StatusOr<size_t> again = to_->ImportModel("m", rest, false, /*append=*/true);
  EXPECT_EQ(again.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(again.status().message(), HasSubstr("m//c already exists"));
}

TEST_F(ModelTransferTest, ImportHonoursTheStreamLimits) {
  EngineOptions limited;
  limited.max_streams = 2;
  FakeClock clock(kStart);
  DriftEngine small(limited, &clock);
  ASSERT_TRUE(small.PutReference(PreBinned({"x", "", "s"}, {1, 1})).ok());
  for (const char* signal : {"a", "b"}) {
    ASSERT_TRUE(from_->PutReference(PreBinned({"m", "", signal}, {1, 1})).ok());
  }
  absl::StatusOr<std::vector<StreamExport>> exported = from_->ExportModel("m");
  ASSERT_TRUE(exported.ok());
  absl::StatusOr<size_t> refused = small.ImportModel("m", *exported, false);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(refused.status().message(), HasSubstr("--max-streams"));
  EXPECT_EQ(small.stream_count(), 1u);
}

}  // namespace
}  // namespace kldrift
