#include "server/core/drift_engine.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/core/clock.h"
#include "server/core/mutex.h"
#include "server/core/testing/engine_inputs.h"
#include "server/kernels/gaussian.h"
#include "server/kernels/paired_logprob.h"
#include "server/kernels/testing/scalar_oracle.h"

namespace kldrift {
namespace {

namespace oracle = kernels::oracle;
using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;
using Type = StreamData::Type;

// FakeClock's start, a multiple of every sub-bucket length used here (25 s, 5 min, 2 h).
const absl::Time kStart = absl::FromUnixSeconds(1'800'000'000);
const std::vector<absl::Duration> kDefaultWindows = {absl::Minutes(5), absl::Hours(1),
                                                     absl::Hours(24)};

using test_inputs::Categorical;
using test_inputs::Data;
using test_inputs::Gaussian;
using test_inputs::GaussianStats;
using test_inputs::Hist;
using test_inputs::Labels;
using test_inputs::LogProbs;
using test_inputs::MakeBatch;
using test_inputs::Numeric;
using test_inputs::PolicyRef;
using test_inputs::PreBinned;
using test_inputs::Probabilities;
using test_inputs::Values;

double Sum(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return s;
}

// |actual - expected| <= tolerance * scale, scale at least |expected|.
void ExpectClose(double actual, long double expected, const char* what, long double scale = 0,
                 double tolerance = 1e-9) {
  // The floor of 1e-6 makes the bound at least 1e-15 absolute, for measures that are ~0.
  const long double bound =
      tolerance * std::max({std::fabs(expected), scale, static_cast<long double>(1e-6)});
  EXPECT_LE(std::fabs(static_cast<long double>(actual) - expected), bound)
      << what << ": got " << actual << ", expected " << static_cast<double>(expected);
}

// Every measure of `m` against the long-double oracle on the same counts.
void ExpectMatchesOracle(const DriftMeasures& m, const std::vector<double>& current,
                         const std::vector<double>& reference, double alpha) {
  const oracle::Measures o = oracle::AllMeasures(current, reference, alpha);
  ExpectClose(m.kl_current_reference, o.kl_pq, "kl_current_reference", o.kl_pq_scale);
  ExpectClose(m.kl_reference_current, o.kl_qp, "kl_reference_current", o.kl_qp_scale);
  ExpectClose(m.jeffreys, o.kl_pq + o.kl_qp, "jeffreys", o.kl_pq_scale + o.kl_qp_scale);
  ExpectClose(m.psi, o.kl_pq + o.kl_qp, "psi", o.kl_pq_scale + o.kl_qp_scale);
  ExpectClose(m.js_bits, o.js_bits, "js_bits");
  ExpectClose(m.hellinger, o.hellinger, "hellinger");
  ExpectClose(m.total_variation, o.total_variation, "total_variation");
  ExpectClose(m.l_inf, o.l_inf, "l_inf");
  ExpectClose(m.chi2, o.chi2, "chi2");
  EXPECT_EQ(m.samples_current, Sum(current));
  EXPECT_EQ(m.samples_reference, Sum(reference));
  EXPECT_GE(m.g_test_p_value, 0);
  EXPECT_LE(m.g_test_p_value, 1);
}

class DriftEngineTest : public ::testing::Test {
 protected:
  DriftEngineTest() : engine_(EngineOptions{}, &clock_) {}

  std::shared_ptr<const Reference> Put(const ReferenceSpec& spec) {
    absl::StatusOr<std::shared_ptr<const Reference>> ref = engine_.PutReference(spec);
    EXPECT_TRUE(ref.ok()) << ref.status();
    return ref.ok() ? *ref : nullptr;
  }

  // Sends a batch as the next sequence of `client`.
  IngestResult Send(const std::string& model, std::vector<StreamData> streams,
                    std::optional<absl::Time> event_time = std::nullopt,
                    const std::string& client = "client-1") {
    return engine_.Ingest(
        MakeBatch(client, ++sequences_[client], model, std::move(streams), event_time));
  }
  void SendOk(const std::string& model, std::vector<StreamData> streams,
              std::optional<absl::Time> event_time = std::nullopt) {
    const IngestResult r = Send(model, std::move(streams), event_time);
    EXPECT_TRUE(r.status.ok()) << r.status;
    EXPECT_FALSE(r.duplicate);
  }

  WindowReport Drift(const StreamKey& key, absl::Duration window, size_t top_bins = 0) {
    absl::StatusOr<std::vector<WindowReport>> r = engine_.GetDrift(key, window, top_bins);
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok() || r->size() != 1) {
      ADD_FAILURE() << "no single report for " << key.ToString() << " " << window;
      return {};
    }
    return (*r)[0];
  }
  double Samples(const StreamKey& key, absl::Duration window) { return Drift(key, window).samples; }

  // The exact totals of a histogram window: re-baselines a scratch stream on it and reads the
  // counts back.
  std::vector<double> Totals(const StreamKey& key, absl::Duration window, size_t bins) {
    if (Samples(key, window) == 0) return std::vector<double>(bins, 0.0);
    absl::StatusOr<std::shared_ptr<const Reference>> source = engine_.GetReference(key, 0);
    if (!source.ok() || !(*source)->is_histogram() || (*source)->layout->size() != bins) {
      ADD_FAILURE() << key.ToString() << " is not a histogram stream of " << bins << " bins";
      return {};
    }
    ReferenceSpec spec;
    spec.stream = {"zz-scratch", "", "totals"};
    spec.kind = (*source)->kind;
    spec.edges = (*source)->layout->edges();
    spec.categories = (*source)->layout->categories();
    spec.bins = bins;
    spec.from_window = WindowSource{key, window};
    absl::StatusOr<std::shared_ptr<const Reference>> ref = engine_.PutReference(spec);
    EXPECT_TRUE(ref.ok()) << ref.status();
    EXPECT_TRUE(engine_.DeleteReference(spec.stream).ok());
    return ref.ok() ? std::vector<double>((*ref)->counts.begin(), (*ref)->counts.end())
                    : std::vector<double>();
  }

  FakeClock clock_;
  DriftEngine engine_;
  absl::flat_hash_map<std::string, uint64_t> sequences_;
};

// ---------------------------------------------------------------------------------------------
// References.

TEST_F(DriftEngineTest, PutReferenceNumbersVersionsAndGetReferenceFindsThem) {
  const StreamKey key{"fraud", "v1", "score"};
  for (int v = 1; v <= 3; ++v) {
    std::shared_ptr<const Reference> ref = Put(PreBinned(key, {1, 2, static_cast<double>(v)}));
    ASSERT_NE(ref, nullptr);
    EXPECT_EQ(ref->version, static_cast<uint64_t>(v));
    EXPECT_EQ(ref->created_at, kStart);
    EXPECT_EQ(ref->stream, key);
  }
  EXPECT_EQ(engine_.stream_count(), 1u);
  for (uint64_t v = 1; v <= 3; ++v) {
    absl::StatusOr<std::shared_ptr<const Reference>> ref = engine_.GetReference(key, v);
    ASSERT_TRUE(ref.ok()) << ref.status();
    EXPECT_EQ((*ref)->version, v);
    EXPECT_THAT((*ref)->counts, ElementsAre(1, 2, static_cast<double>(v)));
  }
  absl::StatusOr<std::shared_ptr<const Reference>> latest = engine_.GetReference(key, 0);
  ASSERT_TRUE(latest.ok());
  EXPECT_EQ((*latest)->version, 3u);

  absl::StatusOr<std::shared_ptr<const Reference>> missing = engine_.GetReference(key, 4);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(
      missing.status().message(),
      AllOf(HasSubstr("fraud/v1/score"), HasSubstr("no version 4"), HasSubstr("the latest is 3")));

  missing = engine_.GetReference({"fraud", "v1", "other"}, 0);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("no reference for stream fraud/v1/other"));

  EXPECT_EQ(engine_.GetReference({"fraud", "v 1", "score"}, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(DriftEngineTest, ListReferencesOrderFilterAndPagination) {
  const std::vector<StreamKey> keys = {
      {"b", "v2", "x"}, {"a", "", "s"},   {"c", "v1", "z"},  {"b", "v1", "y"},
      {"b", "v1", "x"}, {"a", "v1", "s"}, {"bb", "v1", "x"},
  };
  for (const StreamKey& key : keys) ASSERT_NE(Put(PreBinned(key, {1, 1})), nullptr);
  // A second version: the list shows the latest.
  ASSERT_NE(Put(PreBinned({"b", "v1", "y"}, {2, 2})), nullptr);
  std::vector<StreamKey> sorted = keys;
  std::sort(sorted.begin(), sorted.end());

  absl::StatusOr<DriftEngine::ReferencePage> page = engine_.ListReferences("", 0, "");
  ASSERT_TRUE(page.ok()) << page.status();
  EXPECT_TRUE(page->next_page_token.empty());
  std::vector<StreamKey> listed;
  for (const auto& ref : page->references) {
    listed.push_back(ref->stream);
    const StreamKey twice{"b", "v1", "y"};
    EXPECT_EQ(ref->version, ref->stream == twice ? 2u : 1u);
  }
  EXPECT_EQ(listed, sorted);

  // One model only ("b", not "bb").
  page = engine_.ListReferences("b", 0, "");
  ASSERT_TRUE(page.ok());
  listed.clear();
  for (const auto& ref : page->references) listed.push_back(ref->stream);
  EXPECT_THAT(listed, ElementsAre(StreamKey{"b", "v1", "x"}, StreamKey{"b", "v1", "y"},
                                  StreamKey{"b", "v2", "x"}));

  page = engine_.ListReferences("nosuchmodel", 0, "");
  ASSERT_TRUE(page.ok());
  EXPECT_TRUE(page->references.empty());
  EXPECT_TRUE(page->next_page_token.empty());

  // Pages of 2 until exhausted, with and without a model filter.
  for (const std::string model : {"", "b"}) {
    std::vector<StreamKey> expected;
    for (const StreamKey& k : sorted) {
      if (model.empty() || k.model == model) expected.push_back(k);
    }
    std::vector<StreamKey> all;
    std::string token;
    int pages = 0;
    do {
      page = engine_.ListReferences(model, 2, token);
      ASSERT_TRUE(page.ok()) << page.status();
      ASSERT_LE(page->references.size(), 2u);
      for (const auto& ref : page->references) all.push_back(ref->stream);
      token = page->next_page_token;
      ASSERT_LT(++pages, 10);
    } while (!token.empty());
    EXPECT_EQ(all, expected) << model;
    EXPECT_EQ(pages, static_cast<int>((expected.size() + 1) / 2)) << model;
  }

  // A page that ends exactly at the last stream has no next token.
  page = engine_.ListReferences("b", 3, "");
  ASSERT_TRUE(page.ok());
  EXPECT_EQ(page->references.size(), 3u);
  EXPECT_TRUE(page->next_page_token.empty());

  for (const std::string& bad : std::vector<std::string>{
           "!!!not base64!!!", absl::WebSafeBase64Escape("no separators"), "%%"}) {
    page = engine_.ListReferences("", 2, bad);
    EXPECT_EQ(page.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(page.status().message(), HasSubstr("page_token"));
  }
  EXPECT_EQ(engine_.ListReferences("bad model", 0, "").status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(DriftEngineTest, DeleteReferenceRemovesTheStreamEverywhere) {
  const StreamKey key{"m", "v1", "s"};
  const StreamKey other{"m", "v1", "t"};
  for (int v = 0; v < 3; ++v) ASSERT_NE(Put(PreBinned(key, {1, 1, 1})), nullptr);
  ASSERT_NE(Put(PreBinned(other, {1, 1, 1})), nullptr);
  SendOk("m", {Hist(key, {1, 2, 3})});
  EXPECT_EQ(engine_.stream_count(), 2u);

  absl::StatusOr<uint64_t> deleted = engine_.DeleteReference(key);
  ASSERT_TRUE(deleted.ok());
  EXPECT_EQ(*deleted, 3u);
  EXPECT_EQ(engine_.stream_count(), 1u);

  for (uint64_t v : {0, 1, 3}) {
    EXPECT_EQ(engine_.GetReference(key, v).status().code(), absl::StatusCode::kNotFound);
  }
  absl::StatusOr<std::vector<WindowReport>> drift = engine_.GetDrift(key, std::nullopt, 0);
  EXPECT_EQ(drift.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(drift.status().message(), HasSubstr("m/v1/s"));
  EXPECT_EQ(engine_.IncrementalKlCurrentReference(key, absl::Hours(1)).status().code(),
            absl::StatusCode::kNotFound);
  absl::StatusOr<DriftEngine::ReferencePage> page = engine_.ListReferences("m", 0, "");
  ASSERT_TRUE(page.ok());
  ASSERT_EQ(page->references.size(), 1u);
  EXPECT_EQ(page->references[0]->stream, other);
  EXPECT_EQ(engine_.DeleteReference(key).status().code(), absl::StatusCode::kNotFound);

  const IngestResult r = Send("m", {Hist(key, {1, 2, 3})});
  EXPECT_EQ(r.status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(r.status.message(),
              AllOf(HasSubstr("no reference for stream m/v1/s"), HasSubstr("PutReference")));

  // Re-created, it starts again at version 1 with empty windows.
  std::shared_ptr<const Reference> again = Put(PreBinned(key, {1, 1, 1}));
  ASSERT_NE(again, nullptr);
  EXPECT_EQ(again->version, 1u);
  EXPECT_EQ(Samples(key, absl::Hours(1)), 0);
}

// The same batch sent again and again, across every change to the model's streams: each one
// lands in the streams that exist when it arrives.
TEST_F(DriftEngineTest, RepeatedBatchesSeeEveryChangeToTheStreams) {
  const StreamKey a{"m", "v1", "a"};
  const StreamKey b{"m", "v1", "b"};
  ASSERT_NE(Put(PreBinned(a, {1, 1, 1})), nullptr);
  ASSERT_NE(Put(PreBinned(b, {1, 1, 1})), nullptr);
  auto batch = [&] { return std::vector<StreamData>{Hist(a, {1, 0, 0}), Hist(b, {0, 1, 0})}; };
  SendOk("m", batch());
  SendOk("m", batch());
  EXPECT_EQ(Samples(b, absl::Hours(1)), 2);

  // Deleted: the same batch names a stream that no longer exists.
  ASSERT_TRUE(engine_.DeleteReference(b).ok());
  IngestResult r = Send("m", batch());
  EXPECT_EQ(r.status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(r.status.message(), HasSubstr("no reference for stream m/v1/b"));

  // Re-created: a new stream under the same name takes the batch (not the deleted one).
  ASSERT_NE(Put(PreBinned(b, {1, 1, 1})), nullptr);
  SendOk("m", batch());
  EXPECT_EQ(Samples(b, absl::Hours(1)), 1);
  EXPECT_EQ(Samples(a, absl::Hours(1)), 3);

  // A new version keeps the stream (and its windows): still found.
  ASSERT_NE(Put(PreBinned(b, {2, 1, 1})), nullptr);
  SendOk("m", batch());
  EXPECT_EQ(Samples(b, absl::Hours(1)), 2);

  // Replaced by an import: the imported stream takes the next batch.
  absl::StatusOr<std::vector<StreamExport>> exported = engine_.ExportModel("m");
  ASSERT_TRUE(exported.ok()) << exported.status();
  for (StreamExport& stream : *exported) {
    for (StreamExport::Window& w : stream.windows) w.sub_buckets.clear();  // Empty windows.
  }
  ASSERT_TRUE(engine_.ImportModel("m", *exported, /*replace=*/true).ok());
  EXPECT_EQ(Samples(b, absl::Hours(1)), 0);
  SendOk("m", batch());
  EXPECT_EQ(Samples(a, absl::Hours(1)), 1);
  EXPECT_EQ(Samples(b, absl::Hours(1)), 1);

  // Another set of the model's streams, then the first set again.
  SendOk("m", {Hist(a, {1, 0, 0})});
  SendOk("m", batch());
  EXPECT_EQ(Samples(a, absl::Hours(1)), 3);
  EXPECT_EQ(Samples(b, absl::Hours(1)), 2);
}

// Ingest guesses that a batch's streams are neighbours in the engine's ordered set and checks
// each guess: a batch with gaps, one running into the next model's streams or off the end of the
// set, and one naming a missing stream between existing ones all land where they name.
TEST_F(DriftEngineTest, ABatchFindsItsStreamsWhereverTheyLieAmongOtherModels) {
  std::vector<StreamKey> keys;
  for (const char* model : {"a", "m", "m2", "z"}) {
    for (const char* version : {"v1", "v2"}) {
      for (const char* signal : {"s0", "s1", "s2", "s3"}) {
        keys.push_back(StreamKey{model, version, signal});
        ASSERT_NE(Put(PreBinned(keys.back(), {1, 1, 1})), nullptr);
      }
    }
  }
  // The entry after model "n"'s only stream is model "n2"'s, of the same version and the signal
  // a batch of "n" may name next.
  for (const StreamKey& key : {StreamKey{"n", "v1", "s0"}, StreamKey{"n2", "v1", "s1"}}) {
    keys.push_back(key);
    ASSERT_NE(Put(PreBinned(key, {1, 1, 1})), nullptr);
  }
  absl::flat_hash_map<StreamKey, double> want;
  auto send = [&](const std::string& model, const std::vector<StreamKey>& streams) {
    std::vector<StreamData> data;
    for (const StreamKey& key : streams) {
      data.push_back(Hist(key, {1, 2, 0}));
      want[key] += 3;
    }
    SendOk(model, std::move(data));
  };
  // Every other stream of "m" (every guess after the first wrong), then its last streams (the
  // entries after them are model "m2"'s), then "z"'s last (the set ends there), then all of "a"'s.
  send("m", {{"m", "v1", "s1"}, {"m", "v1", "s3"}, {"m", "v2", "s0"}, {"m", "v2", "s2"}});
  send("m", {{"m", "v2", "s2"}, {"m", "v2", "s3"}});
  send("z", {{"z", "v2", "s2"}, {"z", "v2", "s3"}});
  std::vector<StreamKey> all_of_a(keys.begin(), keys.begin() + 8);
  send("a", all_of_a);
  // In the batch's own order, not the set's.
  send("m2", {{"m2", "v2", "s3"}, {"m2", "v1", "s0"}, {"m2", "v1", "s1"}});
  for (const StreamKey& key : keys) {
    EXPECT_EQ(Samples(key, absl::Hours(1)), want[key]) << key.ToString();
  }

  // A missing stream between existing ones, after the model's last, and past the set's end: the
  // batch is refused whole, naming the stream.
  for (const auto& [model, missing] :
       std::vector<std::pair<std::string, StreamKey>>{{"m", {"m", "v1", "s1x"}},
                                                      {"m", {"m", "v3", "s0"}},
                                                      {"z", {"z", "v9", "s0"}},
                                                      {"n", {"n", "v1", "s1"}}}) {
    IngestResult r = Send(model, {Hist({model, "v1", "s0"}, {1, 0, 0}), Hist(missing, {1, 0, 0})});
    EXPECT_EQ(r.status.code(), absl::StatusCode::kFailedPrecondition) << missing.ToString();
    EXPECT_THAT(r.status.message(), HasSubstr("no reference for stream " + missing.ToString()));
  }
  for (const StreamKey& key : keys) {
    EXPECT_EQ(Samples(key, absl::Hours(1)), want[key]) << key.ToString();
  }
}

TEST_F(DriftEngineTest, MaxStreamsAndFailedPutsLeaveNothingBehind) {
  EngineOptions options;
  options.max_streams = 2;
  DriftEngine engine(options, &clock_);
  ASSERT_TRUE(engine.PutReference(PreBinned({"m", "", "a"}, {1, 1})).ok());
  ASSERT_TRUE(engine.PutReference(PreBinned({"m", "", "b"}, {1, 1})).ok());
  absl::StatusOr<std::shared_ptr<const Reference>> third =
      engine.PutReference(PreBinned({"m", "", "c"}, {1, 1}));
  EXPECT_EQ(third.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(third.status().message(), AllOf(HasSubstr("2 streams"), HasSubstr("--max-streams")));
  EXPECT_EQ(engine.stream_count(), 2u);
  // A new version of an existing stream is not a new stream.
  absl::StatusOr<std::shared_ptr<const Reference>> v2 =
      engine.PutReference(PreBinned({"m", "", "a"}, {2, 1}));
  ASSERT_TRUE(v2.ok()) << v2.status();
  EXPECT_EQ((*v2)->version, 2u);

  // With room again, a bad spec for a new stream fails and leaves no stream behind.
  ASSERT_TRUE(engine.DeleteReference({"m", "", "b"}).ok());
  EXPECT_EQ(engine.stream_count(), 1u);
  ReferenceSpec bad = PreBinned({"m", "", "new"}, {1, 1});
  bad.counts = std::vector<double>{1, 2, 3};  // Three counts for two bins.
  EXPECT_EQ(engine.PutReference(bad).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(engine.stream_count(), 1u);
  EXPECT_EQ(engine.GetReference({"m", "", "new"}, 0).status().code(), absl::StatusCode::kNotFound);
  absl::StatusOr<DriftEngine::ReferencePage> page = engine.ListReferences("m", 0, "");
  ASSERT_TRUE(page.ok());
  EXPECT_EQ(page->references.size(), 1u);
  // The freed slot is still usable.
  EXPECT_TRUE(engine.PutReference(PreBinned({"m", "", "new"}, {1, 1})).ok());
  EXPECT_EQ(engine.stream_count(), 2u);

  // A bad spec for an existing stream keeps its version and windows.
  ASSERT_TRUE(engine.Ingest(MakeBatch("c", 1, "m", {Hist({"m", "", "a"}, {3, 4})})).status.ok());
  ReferenceSpec bad_policy = PreBinned({"m", "", "a"}, {1, 1});
  bad_policy.policy.max_p_value = 2;
  EXPECT_EQ(engine.PutReference(bad_policy).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(engine.stream_count(), 2u);
  absl::StatusOr<std::shared_ptr<const Reference>> latest = engine.GetReference({"m", "", "a"}, 0);
  ASSERT_TRUE(latest.ok());
  EXPECT_EQ((*latest)->version, 2u);
  absl::StatusOr<std::vector<WindowReport>> drift =
      engine.GetDrift({"m", "", "a"}, absl::Hours(1), 0);
  ASSERT_TRUE(drift.ok());
  EXPECT_EQ((*drift)[0].samples, 7);
}

TEST_F(DriftEngineTest, PutReferenceRejectsBadStreamNames) {
  absl::StatusOr<std::shared_ptr<const Reference>> r =
      engine_.PutReference(PreBinned({"m", "v1", "bad\nsignal"}, {1, 1}));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("signal"));
  EXPECT_EQ(engine_.stream_count(), 0u);
}

// ---------------------------------------------------------------------------------------------
// Ingest: data types and validation.

TEST_F(DriftEngineTest, EachDataTypeLandsInItsKind) {
  const StreamKey num{"m", "v1", "num"}, cat{"m", "v1", "cat"}, pre{"m", "v1", "pre"};
  ASSERT_NE(Put(Numeric(num, {0, 1, 2}, {50, 50})), nullptr);       // [<0, [0,1), [1,2), >=2, NaN]
  ASSERT_NE(Put(Categorical(cat, {"x", "y"}, {50, 50})), nullptr);  // [x, y, unseen]
  ASSERT_NE(Put(PreBinned(pre, {1, 1, 1})), nullptr);

  SendOk("m", {Values(num, {-1, 0.5, 1.5, 1.7, 5, std::nan("")}),
               Labels(cat, {"x", "y", "y", "unknown"}), Probabilities(pre, {0.25, 0.25, 0.5})});
  SendOk("m", {Hist(num, {0, 1, 1, 0, 0}), Probabilities(cat, {0.25, 0.75, 1, 0}),
               Hist(pre, {1, 2, 3})});
  SendOk("m", {Hist(cat, {1, 0, 1}), Probabilities(pre, {0, 0, 1, 0.5, 0.5, 0})});

  for (absl::Duration w : kDefaultWindows) {
    EXPECT_THAT(Totals(num, w, 5), ElementsAre(1, 2, 3, 1, 1));
    EXPECT_THAT(Totals(cat, w, 3), ElementsAre(1 + 1.25 + 1, 2 + 0.75, 1 + 1));
    EXPECT_THAT(Totals(pre, w, 3), ElementsAre(0.25 + 1 + 0.5, 0.25 + 2 + 0.5, 0.5 + 3 + 1));
  }
  EXPECT_EQ(Samples(num, absl::Hours(1)), 8);
  EXPECT_EQ(Drift(num, absl::Hours(1)).kind, ReferenceKind::kNumeric);

  const StreamKey gauss{"m", "v1", "gauss"}, policy{"m", "v1", "policy"};
  ASSERT_NE(Put(Gaussian(gauss, {0}, {1})), nullptr);
  ASSERT_NE(Put(PolicyRef(policy)), nullptr);
  SendOk("m", {GaussianStats(gauss, 10, {1}, {12}), LogProbs(policy, {-1, -2}, {-1.5, -1})});
  SendOk("m", {GaussianStats(gauss, 5, {2}, {6})});
  EXPECT_EQ(Samples(gauss, absl::Minutes(5)), 15);
  EXPECT_EQ(Samples(policy, absl::Minutes(5)), 2);
  EXPECT_EQ(Drift(policy, absl::Minutes(5)).measure, "k3");
}

// Numbers a caller lends (StreamData::lent_numbers, what FromProto does with a request's) are read
// as owned ones are, checked the same way, and left as they were.
TEST_F(DriftEngineTest, LentNumbersCountLikeOwnedOnes) {
  const StreamKey num{"m", "v1", "num"}, pre{"m", "v1", "pre"}, cat{"m", "v1", "cat"};
  ASSERT_NE(Put(Numeric(num, {0, 1, 2}, {50, 50})), nullptr);  // [<0, [0,1), [1,2), >=2, NaN]
  ASSERT_NE(Put(PreBinned(pre, {1, 1, 1})), nullptr);
  ASSERT_NE(Put(Categorical(cat, {"x", "y"}, {50, 50})), nullptr);  // [x, y, unseen]
  // Lends each batch's numbers from a copy that outlives the batch, and sets owned numbers the
  // engine must not read.
  std::vector<std::unique_ptr<const std::vector<double>>> lenders;
  auto lent = [&](StreamData data) {
    lenders.push_back(std::make_unique<const std::vector<double>>(std::move(data.numbers)));
    data.lent_numbers = *lenders.back();
    data.numbers = {9, 9};
    return data;
  };
  const std::vector<double> big_counts = {4294967296.0, 0, 1};
  SendOk("m", {lent(Values(num, {-1, 0.5, 1.5, 1.7, 5, std::nan("")})), lent(Hist(pre, {1, 2, 3})),
               lent(Probabilities(cat, {0.25, 0.75, 1, 0}))});
  SendOk("m", {lent(Hist(pre, big_counts))});  // Large counts: the general check.
  for (absl::Duration w : kDefaultWindows) {
    EXPECT_THAT(Totals(num, w, 5), ElementsAre(1, 1, 2, 1, 1));
    EXPECT_THAT(Totals(pre, w, 3), ElementsAre(1 + 4294967296.0, 2, 3 + 1));
    EXPECT_THAT(Totals(cat, w, 3), ElementsAre(1.25, 0.75, 0));
  }
  EXPECT_EQ(Samples(num, absl::Hours(1)), 6);
  EXPECT_THAT(*lenders[1], ElementsAre(1, 2, 3));
  EXPECT_THAT(*lenders[3], ElementsAre(4294967296.0, 0, 1));

  const IngestResult fraction = Send("m", {lent(Hist(pre, {1, 1.5, 0}))});
  EXPECT_EQ(fraction.status.code(), absl::StatusCode::kInvalidArgument) << fraction.status;
  EXPECT_THAT(std::string(fraction.status.message()), HasSubstr("bin 1 has count 1.5"));
  const IngestResult short_histogram = Send("m", {lent(Hist(pre, {1, 2}))});
  EXPECT_EQ(short_histogram.status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(short_histogram.status.message()), HasSubstr("the histogram has 2 bins"));
  const IngestResult bad_probabilities = Send("m", {lent(Probabilities(cat, {0.5, 0.25}))});
  EXPECT_EQ(bad_probabilities.status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad_probabilities.status.message()), HasSubstr("sums to 0.75"));
  EXPECT_EQ(Samples(pre, absl::Hours(1)), 1 + 2 + 3 + 4294967296.0 + 1);  // Nothing more.
}

// Counts past 2^32 (up to 2^53) are whole counts too: the windows hold them exactly (as doubles),
// next to small counts kept in narrow integers.
TEST_F(DriftEngineTest, HistogramCountsUpTo2To53AreKeptExactly) {
  const StreamKey pre{"m", "v1", "pre"};
  ASSERT_NE(Put(PreBinned(pre, {1, 1, 1})), nullptr);
  constexpr double kLarge = 4294967296.0 * 3 + 7;     // 3 * 2^32 + 7
  constexpr double kLimit = 9007199254740992.0 - 16;  // 2^53 - 16
  SendOk("m", {Hist(pre, {1, 2, 3})});
  SendOk("m", {Hist(pre, {kLarge, 0, 255})});
  SendOk("m", {Hist(pre, {0, kLimit, 1})});
  for (absl::Duration w : kDefaultWindows) {
    EXPECT_THAT(Totals(pre, w, 3), ElementsAre(1 + kLarge, 2 + kLimit, 3 + 255 + 1));
  }
}

TEST_F(DriftEngineTest, KindMismatchesAreFailedPrecondition) {
  const StreamKey num{"m", "", "num"}, cat{"m", "", "cat"}, pre{"m", "", "pre"},
      gauss{"m", "", "gauss"}, policy{"m", "", "policy"};
  ASSERT_NE(Put(Numeric(num, {0, 1}, {5})), nullptr);
  ASSERT_NE(Put(Categorical(cat, {"x"}, {5})), nullptr);
  ASSERT_NE(Put(PreBinned(pre, {1, 1})), nullptr);
  ASSERT_NE(Put(Gaussian(gauss, {0}, {1})), nullptr);
  ASSERT_NE(Put(PolicyRef(policy)), nullptr);

  struct Case {
    StreamData data;
    std::vector<std::string> parts;
  };
  const std::vector<Case> cases = {
      {Values(cat, {1.0}),
       {"m//cat", "categorical reference", "a histogram, labels or probability vectors",
        "not raw values"}},
      {Values(pre, {1.0}), {"pre_binned reference", "not raw values"}},
      {Labels(num, {"x"}), {"numeric reference", "a histogram or raw values", "not labels"}},
      {Labels(pre, {"x"}), {"not labels"}},
      {Probabilities(num, {1.0}), {"not probability vectors"}},
      {Hist(gauss, {1}), {"gaussian reference", "Gaussian statistics", "not a histogram"}},
      {Hist(policy, {1}), {"log-prob pairs", "not a histogram"}},
      {GaussianStats(pre, 1, {1}, {1}), {"not Gaussian statistics"}},
      {LogProbs(gauss, {-1}, {-1}), {"not log-prob pairs"}},
      {Labels(policy, {"x"}), {"paired_log_probs reference", "not labels"}},
  };
  for (const Case& c : cases) {
    const IngestResult r = Send("m", {c.data});
    EXPECT_EQ(r.status.code(), absl::StatusCode::kFailedPrecondition) << r.status;
    for (const std::string& part : c.parts) EXPECT_THAT(r.status.message(), HasSubstr(part));
  }
  for (const StreamKey& k : {num, cat, pre, gauss, policy}) {
    EXPECT_EQ(Samples(k, absl::Hours(24)), 0) << k.ToString();
  }
}

// Ingest checks a histogram against what it keeps of the current version (the reference itself
// is not read on that path): a new version with other bins must change what is accepted.
TEST_F(DriftEngineTest, HistogramsAreCheckedAgainstTheCurrentVersionsBins) {
  const StreamKey pre{"m", "v", "pre"};
  ASSERT_NE(Put(PreBinned(pre, {1, 1, 1, 1})), nullptr);
  SendOk("m", {Hist(pre, {1, 2, 0, 1})});
  EXPECT_EQ(Samples(pre, absl::Minutes(5)), 4);

  ASSERT_NE(Put(PreBinned(pre, {1, 1, 1, 1, 1, 1})), nullptr);  // Version 2, other bins.
  IngestResult old_width = Send("m", {Hist(pre, {1, 2, 0, 1})});
  EXPECT_EQ(old_width.status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(old_width.status.message(), HasSubstr("has 4 bins but reference version 2 has 6"));

  StreamData stale = Hist(pre, {1, 1, 1, 1, 1, 1});
  stale.reference_version = 1;
  IngestResult stale_version = Send("m", {stale});
  EXPECT_EQ(stale_version.status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(stale_version.status.message(),
              HasSubstr("binned against reference version 1 but the current version is 2"));

  StreamData current = Hist(pre, {3, 0, 0, 0, 0, 2});
  current.reference_version = 2;
  SendOk("m", {current});
  EXPECT_EQ(Samples(pre, absl::Minutes(5)), 5);  // The new bins' windows start empty.

  ASSERT_TRUE(engine_.DeleteReference(pre).ok());
  EXPECT_EQ(Send("m", {Hist(pre, {3, 0, 0, 0, 0, 2})}).status.code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_F(DriftEngineTest, InvalidDataIsRejected) {
  const StreamKey cat{"m", "v", "cat"}, pre{"m", "v", "pre"}, gauss{"m", "v", "gauss"},
      policy{"m", "v", "policy"};
  ASSERT_NE(Put(Categorical(cat, {"x", "y"}, {5, 5})), nullptr);
  ASSERT_NE(Put(PreBinned(pre, {1, 1, 1, 1})), nullptr);
  ASSERT_NE(Put(Gaussian(gauss, {0, 0}, {1, 1})), nullptr);
  ASSERT_NE(Put(PolicyRef(policy)), nullptr);

  struct Case {
    StreamData data;
    absl::StatusCode code;
    std::vector<std::string> parts;
  };
  const std::vector<Case> cases = {
      {Hist(pre, {1, 2, 3}),
       absl::StatusCode::kFailedPrecondition,
       {"m/v/pre", "has 3 bins but reference version 1 has 4"}},
      {Hist(pre, {1, 1.5, 0, 0}),
       absl::StatusCode::kInvalidArgument,
       {"bin 1 has count 1.5", "integers >= 0"}},
      {Hist(pre, {1, 0, -1, 0}), absl::StatusCode::kInvalidArgument, {"bin 2 has count -1"}},
      {Hist(pre, {1, 0, 0, std::nan("")}), absl::StatusCode::kInvalidArgument, {"bin 3"}},
      {Hist(pre, {std::numeric_limits<double>::infinity(), 0, 0, 0}),
       absl::StatusCode::kInvalidArgument,
       {"bin 0 has count inf"}},
      // 2^53 + 2: an integer, but past where doubles count exactly.
      {Hist(pre, {0, 0, 9007199254740994.0, 1}),
       absl::StatusCode::kInvalidArgument,
       {"bin 2", "at most 2^53"}},
      {Probabilities(pre, {0.5, 0.5, 0.5, 0.5}),
       absl::StatusCode::kInvalidArgument,
       {"probability vector 0 sums to 2", "sum to 1"}},
      {Probabilities(pre, {0.25, 0.25, 0.25, 0.25, 0.1, 0.1, 0.1, 0.1}),
       absl::StatusCode::kInvalidArgument,
       {"probability vector 1 sums to 0.4"}},
      {Probabilities(pre, {1.5, -0.5, 0, 0}),
       absl::StatusCode::kInvalidArgument,
       {"has 1.5 at position 0", "[0, 1]"}},
      {Probabilities(pre, {0.5, 0.5}),
       absl::StatusCode::kInvalidArgument,
       {"not a whole number of vectors of 4"}},
      {Probabilities(cat, {0.5, 0.25, 0.25}),
       absl::StatusCode::kInvalidArgument,
       {"not a whole number of vectors of 2"}},
      {Probabilities(pre, {}), absl::StatusCode::kInvalidArgument, {"0 probabilities"}},
      {LogProbs(policy, {-1, 0.5}, {-1, -1}),
       absl::StatusCode::kInvalidArgument,
       {"pair 1 has log-prob 0.5", "<= 0"}},
      {LogProbs(policy, {-1}, {-1, -2}),
       absl::StatusCode::kInvalidArgument,
       {"1 current and 2 reference log-probs"}},
      {LogProbs(policy, {}, {}), absl::StatusCode::kInvalidArgument, {"non-zero"}},
      {LogProbs(policy, {-1}, {-std::numeric_limits<double>::infinity()}),
       absl::StatusCode::kInvalidArgument,
       {"finite"}},
      {GaussianStats(gauss, 0, {0, 0}, {0, 0}),
       absl::StatusCode::kInvalidArgument,
       {"Gaussian count 0 must be > 0"}},
      {GaussianStats(gauss, -3, {0, 0}, {1, 1}),
       absl::StatusCode::kInvalidArgument,
       {"Gaussian count -3"}},
      {GaussianStats(gauss, 3, {0, 0}, {-1, 1}),
       absl::StatusCode::kInvalidArgument,
       {"dimension 0", "squares >= 0"}},
      {GaussianStats(gauss, 3, {0}, {1}),
       absl::StatusCode::kFailedPrecondition,
       {"2 dimensions", "1 sums"}},
      // sum^2 > count * sum_squares: a negative variance, which no real values have.
      {GaussianStats(gauss, 2, {0, 10}, {1, 1}),
       absl::StatusCode::kInvalidArgument,
       {"dimension 1", "which no real values have"}},
  };
  for (const Case& c : cases) {
    const IngestResult r = Send("m", {c.data});
    EXPECT_EQ(r.status.code(), c.code) << r.status;
    for (const std::string& part : c.parts) EXPECT_THAT(r.status.message(), HasSubstr(part));
  }
  for (const StreamKey& k : {cat, pre, gauss, policy}) {
    EXPECT_EQ(Samples(k, absl::Hours(24)), 0) << k.ToString();
  }
}

TEST_F(DriftEngineTest, ABatchMayHoldOneSignalOfSeveralVersionsInAnyOrder) {
  // Keys differ only in model_version, or only in signal; sent out of key order. Each is its own
  // stream: none is taken for a duplicate, and each gets its own counts.
  const StreamKey v1_b{"m", "v1", "b"};
  const StreamKey v2_a{"m", "v2", "a"};
  const StreamKey v1_a{"m", "v1", "a"};
  const StreamKey none_a{"m", "", "a"};
  for (const StreamKey& k : {v1_b, v2_a, v1_a, none_a})
    ASSERT_NE(Put(PreBinned(k, {1, 1})), nullptr);
  SendOk("m", {Hist(v2_a, {2, 0}), Hist(v1_b, {3, 0}), Hist(none_a, {4, 0}), Hist(v1_a, {5, 0})});
  EXPECT_EQ(Samples(v2_a, absl::Hours(1)), 2);
  EXPECT_EQ(Samples(v1_b, absl::Hours(1)), 3);
  EXPECT_EQ(Samples(none_a, absl::Hours(1)), 4);
  EXPECT_EQ(Samples(v1_a, absl::Hours(1)), 5);

  // The same (version, signal) twice, apart in the batch: found once sorted.
  const IngestResult r =
      Send("m", {Hist(v1_a, {1, 0}), Hist(v2_a, {1, 0}), Hist(v1_b, {1, 0}), Hist(v1_a, {1, 0})});
  EXPECT_EQ(r.status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status.message(), HasSubstr("m/v1/a appears twice"));
  EXPECT_EQ(Samples(v1_a, absl::Hours(1)), 5);  // Nothing of the rejected batch was applied.
  // Neighbours in an otherwise ordered batch (the order a Recorder sends): caught without sorting.
  const IngestResult ordered =
      Send("m", {Hist(none_a, {1, 0}), Hist(v1_a, {1, 0}), Hist(v1_b, {1, 0}), Hist(v1_b, {1, 0})});
  EXPECT_EQ(ordered.status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(ordered.status.message(), HasSubstr("m/v1/b appears twice"));
  EXPECT_EQ(Samples(v1_b, absl::Hours(1)), 3);
}

TEST_F(DriftEngineTest, BatchLevelValidation) {
  const StreamKey a{"m", "v", "a"};
  ASSERT_NE(Put(PreBinned(a, {1, 1})), nullptr);

  IngestResult r = engine_.Ingest(MakeBatch("", 1, "m", {Hist(a, {1, 1})}));
  EXPECT_EQ(r.status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status.message(), HasSubstr("client_id"));
  r = engine_.Ingest(MakeBatch("bad client", 1, "m", {Hist(a, {1, 1})}));
  EXPECT_EQ(r.status.code(), absl::StatusCode::kInvalidArgument);

  r = Send("m", {});
  EXPECT_EQ(r.status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status.message(), HasSubstr("no streams"));

  r = Send("bad model", {Hist(a, {1, 1})});
  EXPECT_EQ(r.status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status.message(), HasSubstr("model"));

  StreamData bad_signal = Hist(a, {1, 1});
  bad_signal.signal = "a b";
  r = Send("m", {bad_signal});
  EXPECT_EQ(r.status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status.message(), HasSubstr("signal"));

  r = Send("m", {Hist(a, {1, 1}), Hist(a, {1, 1})});
  EXPECT_EQ(r.status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status.message(), HasSubstr("appears twice"));

  // Names are checked before anything else is said about the streams, and the first bad one in
  // the batch's order is named, wherever it sorts: ingest checks names only when a stream is not
  // found (a name that matches a stream is valid) or appears twice.
  StreamData bad_version = Hist(a, {1, 1});
  bad_version.model_version = "v?";
  StreamData unknown = Hist(StreamKey{"m", "v", "0-unknown"}, {1, 1});
  r = Send("m", {Hist(a, {1, 1}), bad_signal, unknown});
  EXPECT_EQ(r.status.code(), absl::StatusCode::kInvalidArgument) << r.status;
  EXPECT_THAT(r.status.message(), HasSubstr("\"a b\""));
  r = Send("m", {bad_version, bad_signal, unknown});
  EXPECT_EQ(r.status.code(), absl::StatusCode::kInvalidArgument) << r.status;
  EXPECT_THAT(r.status.message(), HasSubstr("\"v?\""));
  r = Send("m", {unknown, Hist(a, {1, 1}), Hist(a, {1, 1}), bad_signal});
  EXPECT_EQ(r.status.code(), absl::StatusCode::kInvalidArgument) << r.status;
  EXPECT_THAT(r.status.message(), HasSubstr("\"a b\""));
  r = Send("m", {unknown, Hist(a, {1, 1})});
  EXPECT_EQ(r.status.code(), absl::StatusCode::kFailedPrecondition) << r.status;
  EXPECT_THAT(r.status.message(), HasSubstr("no reference for stream m/v/0-unknown"));

  StreamData pinned = Hist(a, {1, 1});
  pinned.reference_version = 2;
  r = Send("m", {pinned});
  EXPECT_EQ(r.status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(r.status.message(),
              AllOf(HasSubstr("reference version 2"), HasSubstr("current version is 1")));
  pinned.reference_version = 1;
  r = Send("m", {pinned});
  EXPECT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(Samples(a, absl::Minutes(5)), 2);
}

TEST_F(DriftEngineTest, MaxObservationsPerBatch) {
  EngineOptions options;
  options.max_observations_per_batch = 10;
  DriftEngine engine(options, &clock_);
  const StreamKey num{"m", "", "num"};
  ASSERT_TRUE(engine.PutReference(Numeric(num, {0, 1}, {5})).ok());
  IngestResult r =
      engine.Ingest(MakeBatch("c", 1, "m", {Values(num, std::vector<double>(11, 0.5))}));
  EXPECT_EQ(r.status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(r.status.message(), AllOf(HasSubstr("11 observations"), HasSubstr("10")));
  r = engine.Ingest(MakeBatch("c", 2, "m", {Values(num, std::vector<double>(10, 0.5))}));
  EXPECT_TRUE(r.status.ok()) << r.status;
}

TEST_F(DriftEngineTest, BatchesAreAtomic) {
  const StreamKey a{"m", "v", "a"}, b{"m", "v", "b"};
  ASSERT_NE(Put(PreBinned(a, {1, 1, 1})), nullptr);
  ASSERT_NE(Put(PreBinned(b, {1, 1, 1})), nullptr);

  // Good a, bad b (wrong bin count).
  IngestResult r = Send("m", {Hist(a, {1, 1, 1}), Hist(b, {1, 1})});
  EXPECT_EQ(r.status.code(), absl::StatusCode::kFailedPrecondition);
  // Bad a (fractional), good b; listed in the other order.
  r = Send("m", {Hist(b, {1, 1, 1}), Hist(a, {0.5, 1, 1})});
  EXPECT_EQ(r.status.code(), absl::StatusCode::kInvalidArgument);
  // Good a, a stream without a reference.
  r = Send("m", {Hist(a, {1, 1, 1}), Hist({"m", "v", "zzz"}, {1})});
  EXPECT_EQ(r.status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(r.status.message(), HasSubstr("m/v/zzz"));
  for (absl::Duration w : kDefaultWindows) {
    EXPECT_EQ(Samples(a, w), 0);
    EXPECT_EQ(Samples(b, w), 0);
    EXPECT_EQ(*engine_.IncrementalKlCurrentReference(a, w), 0);
  }

  r = Send("m", {Hist(a, {1, 1, 1}), Hist(b, {2, 0, 0})});
  EXPECT_TRUE(r.status.ok());
  EXPECT_EQ(Samples(a, absl::Minutes(5)), 3);
  EXPECT_EQ(Samples(b, absl::Minutes(5)), 2);
}

TEST_F(DriftEngineTest, SequenceNumbersDeduplicate) {
  const StreamKey a{"m", "v", "a"};
  ASSERT_NE(Put(PreBinned(a, {1, 1})), nullptr);

  IngestResult r = engine_.Ingest(MakeBatch("c1", 1, "m", {Hist(a, {1, 1})}));
  EXPECT_TRUE(r.status.ok());
  EXPECT_FALSE(r.duplicate);
  EXPECT_EQ(r.acked_sequence, 1u);

  // Resent: acknowledged, not applied again.
  r = engine_.Ingest(MakeBatch("c1", 1, "m", {Hist(a, {1, 1})}));
  EXPECT_TRUE(r.status.ok());
  EXPECT_TRUE(r.duplicate);
  EXPECT_EQ(r.acked_sequence, 1u);
  EXPECT_EQ(Samples(a, absl::Minutes(5)), 2);

  // A rejected batch is done with too: acked, and a corrected resend is a duplicate.
  r = engine_.Ingest(MakeBatch("c1", 2, "m", {Hist(a, {1, 1, 1})}));
  EXPECT_EQ(r.status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_FALSE(r.duplicate);
  EXPECT_EQ(r.acked_sequence, 2u);
  r = engine_.Ingest(MakeBatch("c1", 2, "m", {Hist(a, {1, 1})}));
  EXPECT_TRUE(r.duplicate);
  EXPECT_EQ(r.acked_sequence, 2u);
  EXPECT_EQ(Samples(a, absl::Minutes(5)), 2);

  // Gaps are allowed; older sequences are then duplicates.
  r = engine_.Ingest(MakeBatch("c1", 5, "m", {Hist(a, {0, 3})}));
  EXPECT_TRUE(r.status.ok());
  EXPECT_EQ(r.acked_sequence, 5u);
  r = engine_.Ingest(MakeBatch("c1", 3, "m", {Hist(a, {0, 3})}));
  EXPECT_TRUE(r.duplicate);
  EXPECT_EQ(r.acked_sequence, 5u);
  EXPECT_EQ(Samples(a, absl::Minutes(5)), 5);

  r = engine_.Ingest(MakeBatch("c1", 0, "m", {Hist(a, {1, 1})}));
  EXPECT_EQ(r.status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status.message(), HasSubstr("sequence"));
  EXPECT_EQ(Samples(a, absl::Minutes(5)), 5);

  // Another client has its own sequence.
  r = engine_.Ingest(MakeBatch("c2", 1, "m", {Hist(a, {1, 0})}));
  EXPECT_TRUE(r.status.ok());
  EXPECT_FALSE(r.duplicate);
  EXPECT_EQ(r.acked_sequence, 1u);
  EXPECT_EQ(Samples(a, absl::Minutes(5)), 6);
  EXPECT_EQ(engine_.client_count(), 2u);
}

// ---------------------------------------------------------------------------------------------
// Event times and windows.

TEST_F(DriftEngineTest, EventTimes) {
  const StreamKey a{"m", "v", "a"};
  ASSERT_NE(Put(PreBinned(a, {1, 1})), nullptr);
  const absl::Time now = clock_.Now();

  IngestResult r = Send("m", {Hist(a, {1, 0})}, now + absl::Seconds(61));
  EXPECT_EQ(r.status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status.message(), HasSubstr("in the future"));
  r = Send("m", {Hist(a, {1, 0})}, now - absl::Hours(24));
  EXPECT_EQ(r.status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status.message(), AllOf(HasSubstr("older than"), HasSubstr("24h")));
  r = Send("m", {Hist(a, {1, 0})}, now - absl::Hours(30));
  EXPECT_EQ(r.status.code(), absl::StatusCode::kInvalidArgument);
  r = Send("m", {Hist(a, {1, 0})}, absl::InfinitePast());
  EXPECT_EQ(r.status.code(), absl::StatusCode::kInvalidArgument);
  r = Send("m", {Hist(a, {1, 0})}, absl::InfiniteFuture());
  EXPECT_EQ(r.status.code(), absl::StatusCode::kInvalidArgument);
  for (absl::Duration w : kDefaultWindows) EXPECT_EQ(Samples(a, w), 0);

  // Slightly in the future: clamped to now, so it is in every window.
  SendOk("m", {Hist(a, {1, 0})}, now + absl::Seconds(30));
  SendOk("m", {Hist(a, {1, 0})}, now + absl::Seconds(60));
  for (absl::Duration w : kDefaultWindows) EXPECT_EQ(Samples(a, w), 2) << w;

  // Within 1h but older than 5m: in 1h and 24h only.
  SendOk("m", {Hist(a, {0, 4})}, now - absl::Minutes(30));
  EXPECT_EQ(Samples(a, absl::Minutes(5)), 2);
  EXPECT_EQ(Samples(a, absl::Hours(1)), 6);
  EXPECT_EQ(Samples(a, absl::Hours(24)), 6);
  // Older than 1h: in 24h only (which now holds [now - 22h, now]: 12 sub-buckets of 2h).
  SendOk("m", {Hist(a, {0, 8})}, now - absl::Hours(21));
  EXPECT_EQ(Samples(a, absl::Minutes(5)), 2);
  EXPECT_EQ(Samples(a, absl::Hours(1)), 6);
  EXPECT_EQ(Samples(a, absl::Hours(24)), 14);
  EXPECT_THAT(Totals(a, absl::Hours(24), 2), ElementsAre(2, 12));
}

TEST_F(DriftEngineTest, AcceptedDataAlwaysLandsInTheLongestWindow) {
  // Windows of 12 sub-buckets hold between 11 and 12 sub-bucket lengths: data just under the
  // window length old may be outside every window. It must be rejected, not acknowledged and lost.
  AlertPolicy policy;
  policy.windows = {absl::Minutes(5), absl::Hours(1)};
  const StreamKey a{"m", "v", "a"};
  ASSERT_NE(Put(PreBinned(a, {1, 1}, policy)), nullptr);
  const absl::Time now = clock_.Now();  // On a 5-minute boundary: 1h covers [now - 55m, now].

  SendOk("m", {Hist(a, {1, 0})}, now - absl::Minutes(55));
  EXPECT_EQ(Samples(a, absl::Hours(1)), 1);
  for (absl::Duration age : {absl::Minutes(55) + absl::Seconds(1), absl::Minutes(59)}) {
    const IngestResult r = Send("m", {Hist(a, {0, 1})}, now - age);
    if (r.status.ok()) {
      EXPECT_EQ(Samples(a, absl::Hours(1)), 2) << "acknowledged but dropped: " << age;
    } else {
      EXPECT_EQ(r.status.code(), absl::StatusCode::kInvalidArgument);
      EXPECT_THAT(r.status.message(), HasSubstr("older than"));
    }
  }
}

TEST_F(DriftEngineTest, WindowsExpireAsTheClockAdvances) {
  const StreamKey a{"m", "v", "a"};
  ASSERT_NE(Put(PreBinned(a, {1, 1})), nullptr);
  SendOk("m", {Hist(a, {3, 1})});
  clock_.Advance(absl::Minutes(5) - absl::Seconds(1));
  EXPECT_EQ(Samples(a, absl::Minutes(5)), 4);
  clock_.Advance(absl::Seconds(1));
  EXPECT_EQ(Samples(a, absl::Minutes(5)), 0);
  EXPECT_FALSE(Drift(a, absl::Minutes(5)).histogram.has_value());
  EXPECT_EQ(*engine_.IncrementalKlCurrentReference(a, absl::Minutes(5)), 0);
  EXPECT_EQ(Samples(a, absl::Hours(1)), 4);
  EXPECT_EQ(Samples(a, absl::Hours(24)), 4);
  clock_.Advance(absl::Minutes(55));
  EXPECT_EQ(Samples(a, absl::Hours(1)), 0);
  EXPECT_EQ(Samples(a, absl::Hours(24)), 4);
  clock_.Advance(absl::Hours(23));
  EXPECT_EQ(Samples(a, absl::Hours(24)), 0);
}

TEST_F(DriftEngineTest, GetDriftWindowSelectionAndTopBins) {
  const StreamKey a{"m", "v", "a"};
  ASSERT_NE(Put(PreBinned(a, {10, 10, 10, 10})), nullptr);
  SendOk("m", {Hist(a, {9, 1, 0, 0})});
  absl::StatusOr<std::vector<WindowReport>> all = engine_.GetDrift(a, std::nullopt, 2);
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    const WindowReport& r = (*all)[i];
    EXPECT_EQ(r.window, kDefaultWindows[i]);
    EXPECT_EQ(r.stream, a);
    EXPECT_EQ(r.reference_version, 1u);
    EXPECT_EQ(r.evaluated_at, kStart);
    EXPECT_EQ(r.measure, "kl_current_reference");
    ASSERT_TRUE(r.histogram.has_value());
    EXPECT_EQ(r.measure_value, r.histogram->kl_current_reference);
    ASSERT_EQ(r.histogram->top_bins.size(), 2u);
    EXPECT_EQ(r.histogram->top_bins[0].bin, 0u);  // 9 of 10 where a quarter is expected.
    EXPECT_FALSE(r.enough_samples);               // 10 < 100.
  }
  absl::StatusOr<std::vector<WindowReport>> missing = engine_.GetDrift(a, absl::Hours(2), 0);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(),
              AllOf(HasSubstr("no 2h window"), HasSubstr("5m, 1h, 24h")));
  EXPECT_EQ(engine_.IncrementalKlCurrentReference(a, absl::Hours(2)).status().code(),
            absl::StatusCode::kNotFound);
}

// An independent model of the windows: an observation at t is in window w at `now` when its
// sub-bucket (floor(t / (w / 12))) is one of the 12 ending with that of now.
std::vector<double> ModelTotals(const std::vector<std::pair<absl::Time, std::vector<double>>>& log,
                                absl::Time now, absl::Duration window, size_t k) {
  const int64_t step = absl::ToInt64Seconds(window) / 12;
  auto index = [step](absl::Time t) {
    const int64_t s = absl::ToUnixSeconds(t);
    return s >= 0 ? s / step : -((-s + step - 1) / step);
  };
  std::vector<double> totals(k, 0.0);
  for (const auto& [t, counts] : log) {
    if (index(t) > index(now) - 12 && index(t) <= index(now)) {
      for (size_t i = 0; i < k; ++i) totals[i] += counts[i];
    }
  }
  return totals;
}

TEST_F(DriftEngineTest, GetDriftMatchesTheOracleInEveryWindow) {
  const StreamKey a{"m", "v", "a"};
  const std::vector<double> reference = {120, 300, 45, 0, 80, 455};
  AlertPolicy policy;
  policy.alpha = 0.7;
  ASSERT_NE(Put(PreBinned(a, reference, policy)), nullptr);
  std::mt19937_64 rng(42);
  std::vector<std::pair<absl::Time, std::vector<double>>> log;
  for (int step = 0; step < 120; ++step) {
    clock_.Advance(absl::Seconds(static_cast<int64_t>(rng() % 900)));
    const absl::Time now = clock_.Now();
    const absl::Time event = now - absl::Seconds(static_cast<int64_t>(rng() % 7200));
    std::vector<double> counts(6);
    for (double& c : counts) c = static_cast<double>(rng() % 50);
    counts[rng() % 6] += 1;
    SendOk("m", {Hist(a, counts)}, event);
    log.emplace_back(event, counts);
    if (step % 10 != 9) continue;
    for (absl::Duration w : kDefaultWindows) {
      SCOPED_TRACE(testing::Message() << "step " << step << " window " << w);
      const std::vector<double> expected = ModelTotals(log, now, w, 6);
      const WindowReport r = Drift(a, w);
      EXPECT_EQ(r.samples, Sum(expected));
      if (Sum(expected) == 0) {
        EXPECT_FALSE(r.histogram.has_value());
        continue;
      }
      EXPECT_THAT(Totals(a, w, 6), ElementsAreArray(expected));
      ASSERT_TRUE(r.histogram.has_value());
      EXPECT_EQ(r.histogram->alpha, 0.7);
      ExpectMatchesOracle(*r.histogram, expected, reference, 0.7);
    }
  }
}

TEST_F(DriftEngineTest, IncrementalKlMatchesGetDriftThroughIngestsAndExpiries) {
  const StreamKey a{"m", "v", "a"};
  std::vector<double> reference(16);
  std::mt19937_64 rng(5);
  for (double& c : reference) c = static_cast<double>(rng() % 1000);
  ASSERT_NE(Put(PreBinned(a, reference)), nullptr);
  int compared = 0;
  for (int step = 0; step < 600; ++step) {
    clock_.Advance(absl::Seconds(static_cast<int64_t>(rng() % 120)));
    std::vector<double> counts(16, 0.0);
    for (int i = 0; i < 4; ++i) counts[rng() % 16] += static_cast<double>(rng() % 300);
    const absl::Time event = clock_.Now() - absl::Seconds(static_cast<int64_t>(rng() % 1800));
    SendOk("m", {Hist(a, counts)}, event);
    if (step % 97 == 0) engine_.Evaluate();  // Resyncs the incremental sums.
    if (step % 7 != 0) continue;
    for (absl::Duration w : kDefaultWindows) {
      absl::StatusOr<double> incremental = engine_.IncrementalKlCurrentReference(a, w);
      ASSERT_TRUE(incremental.ok()) << incremental.status();
      const WindowReport r = Drift(a, w);
      if (r.samples == 0) {
        EXPECT_EQ(*incremental, 0);
        continue;
      }
      ASSERT_TRUE(r.histogram.has_value());
      ExpectClose(*incremental, r.histogram->kl_current_reference, "incremental KL");
      ++compared;
    }
  }
  EXPECT_GT(compared, 200);
  // And once everything has expired.
  clock_.Advance(absl::Hours(25));
  for (absl::Duration w : kDefaultWindows) {
    EXPECT_EQ(*engine_.IncrementalKlCurrentReference(a, w), 0);
    EXPECT_EQ(Samples(a, w), 0);
  }
}

TEST_F(DriftEngineTest, IncrementalKlIsOnlyForHistograms) {
  const StreamKey g{"m", "v", "g"};
  ASSERT_NE(Put(Gaussian(g, {0}, {1})), nullptr);
  EXPECT_EQ(engine_.IncrementalKlCurrentReference(g, absl::Hours(1)).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

// ---------------------------------------------------------------------------------------------
// Re-baselining.

TEST_F(DriftEngineTest, RebaseliningFromAWindowKeepsTheWindows) {
  const StreamKey a{"m", "v", "a"};
  ASSERT_NE(Put(PreBinned(a, {10, 20, 30, 40})), nullptr);
  SendOk("m", {Hist(a, {5, 1, 1, 1})});
  clock_.Advance(absl::Minutes(10));
  SendOk("m", {Hist(a, {5, 1, 1, 1})});
  clock_.Advance(absl::Minutes(1));
  SendOk("m", {Hist(a, {5, 1, 1, 1})});

  ReferenceSpec spec;
  spec.stream = a;
  spec.kind = ReferenceKind::kPreBinned;
  spec.bins = 4;
  spec.from_window = WindowSource{std::nullopt, absl::Hours(1)};
  std::shared_ptr<const Reference> v2 = Put(spec);
  ASSERT_NE(v2, nullptr);
  EXPECT_EQ(v2->version, 2u);
  EXPECT_THAT(v2->counts, ElementsAre(15, 3, 3, 3));
  absl::StatusOr<std::shared_ptr<const Reference>> got = engine_.GetReference(a, 2);
  ASSERT_TRUE(got.ok());
  EXPECT_THAT((*got)->counts, ElementsAre(15, 3, 3, 3));

  // The windows were kept, and are now compared with the new reference.
  EXPECT_EQ(Samples(a, absl::Minutes(5)), 16);
  EXPECT_EQ(Samples(a, absl::Hours(1)), 24);
  EXPECT_EQ(Samples(a, absl::Hours(24)), 24);
  const WindowReport hour = Drift(a, absl::Hours(1));
  EXPECT_EQ(hour.reference_version, 2u);
  ASSERT_TRUE(hour.histogram.has_value());
  EXPECT_LT(hour.histogram->kl_current_reference, 1e-12);
  for (absl::Duration w : kDefaultWindows) {
    const WindowReport r = Drift(a, w);
    ASSERT_TRUE(r.histogram.has_value());
    ExpectMatchesOracle(*r.histogram, Totals(a, w, 4), {15, 3, 3, 3}, 0.5);
    ExpectClose(*engine_.IncrementalKlCurrentReference(a, w), r.histogram->kl_current_reference,
                "incremental KL after re-baselining");
  }

  // From the 5m window of another stream with the same bins.
  const StreamKey b{"m", "v", "b"};
  spec.stream = b;
  spec.from_window = WindowSource{a, absl::Minutes(5)};
  std::shared_ptr<const Reference> b1 = Put(spec);
  ASSERT_NE(b1, nullptr);
  EXPECT_EQ(b1->version, 1u);
  EXPECT_THAT(b1->counts, ElementsAre(10, 2, 2, 2));
  EXPECT_EQ(Samples(b, absl::Hours(1)), 0);

  // Errors: no such window, no such stream, an empty window.
  spec.from_window = WindowSource{a, absl::Hours(2)};
  absl::StatusOr<std::shared_ptr<const Reference>> bad = engine_.PutReference(spec);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(bad.status().message(), AllOf(HasSubstr("no 2h window"), HasSubstr("5m, 1h, 24h")));
  spec.from_window = WindowSource{StreamKey{"m", "v", "nope"}, absl::Hours(1)};
  EXPECT_EQ(engine_.PutReference(spec).status().code(), absl::StatusCode::kNotFound);
  spec.from_window = WindowSource{b, absl::Hours(1)};
  bad = engine_.PutReference(spec);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(bad.status().message(), HasSubstr("empty"));
  absl::StatusOr<std::shared_ptr<const Reference>> b_latest = engine_.GetReference(b, 0);
  ASSERT_TRUE(b_latest.ok());
  EXPECT_EQ((*b_latest)->version, 1u);
}

TEST_F(DriftEngineTest, RebaseliningRequiresTheSameBins) {
  const StreamKey num{"m", "v", "num"};
  ASSERT_NE(Put(Numeric(num, {0, 1, 2}, {5, 5})), nullptr);
  SendOk("m", {Values(num, {0.5, 0.5, 1.5})});
  // Same number of bins, different edges: the window's counts do not describe these bins.
  ReferenceSpec spec = Numeric(num, {0, 1, 5}, {});
  spec.counts.reset();
  spec.from_window = WindowSource{std::nullopt, absl::Hours(1)};
  absl::StatusOr<std::shared_ptr<const Reference>> r = engine_.PutReference(spec);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition) << r.status();
  // A pre-binned stream of the same width is not the same bins either.
  ReferenceSpec pre;
  pre.stream = {"m", "v", "pre"};
  pre.kind = ReferenceKind::kPreBinned;
  pre.bins = 5;
  pre.from_window = WindowSource{num, absl::Hours(1)};
  r = engine_.PutReference(pre);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition) << r.status();
  EXPECT_EQ(engine_.stream_count(), 1u);
  // The same edges work.
  spec.edges = {0, 1, 2};
  r = engine_.PutReference(spec);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_THAT((*r)->counts, ElementsAre(0, 2, 1, 0, 0));
}

TEST_F(DriftEngineTest, NewBinsResetTheWindows) {
  const StreamKey num{"m", "v", "num"};
  ASSERT_NE(Put(Numeric(num, {0, 1, 2}, {5, 5})), nullptr);
  SendOk("m", {Values(num, {0.5, 1.5, 1.7})});
  // Same edges, new counts: windows kept.
  ASSERT_NE(Put(Numeric(num, {0, 1, 2}, {1, 9})), nullptr);
  EXPECT_EQ(Samples(num, absl::Hours(1)), 3);
  // New edges: windows reset.
  std::shared_ptr<const Reference> v3 = Put(Numeric(num, {0, 1, 3}, {5, 5}));
  ASSERT_NE(v3, nullptr);
  EXPECT_EQ(v3->version, 3u);
  for (absl::Duration w : kDefaultWindows) {
    EXPECT_EQ(Samples(num, w), 0);
    EXPECT_EQ(*engine_.IncrementalKlCurrentReference(num, w), 0);
  }
  SendOk("m", {Values(num, {2.5})});
  EXPECT_THAT(Totals(num, absl::Hours(1), 5), ElementsAre(0, 0, 1, 0, 0));
  // New windows: reset too, and the new windows are reported.
  ReferenceSpec spec = Numeric(num, {0, 1, 3}, {5, 5});
  spec.policy.windows = {absl::Minutes(10)};
  ASSERT_NE(Put(spec), nullptr);
  absl::StatusOr<std::vector<WindowReport>> reports = engine_.GetDrift(num, std::nullopt, 0);
  ASSERT_TRUE(reports.ok());
  ASSERT_EQ(reports->size(), 1u);
  EXPECT_EQ((*reports)[0].window, absl::Minutes(10));
  EXPECT_EQ((*reports)[0].samples, 0);
}

// ---------------------------------------------------------------------------------------------
// Evaluate and Watch.

struct Seen {
  StreamKey stream;
  absl::Duration window;
  AlertState state;
  Severity severity;
};

class Recorder {
 public:
  DriftEngine::WatchCallback Callback() {
    return [this](const WindowReport& r) {
      MutexLock lock(&mutex_);
      seen_.push_back({r.stream, r.window, r.alert.state, r.alert.severity});
    };
  }
  std::vector<Seen> Take() {
    MutexLock lock(&mutex_);
    return std::exchange(seen_, {});
  }

 private:
  Mutex mutex_;
  std::vector<Seen> seen_;
};

AlertPolicy WatchPolicy() {
  AlertPolicy p;
  p.windows = {absl::Minutes(5), absl::Hours(1)};
  p.for_duration = absl::Minutes(1);
  p.min_samples = 100;
  p.max_p_value = 1;
  return p;
}

std::vector<AlertState> States(const std::vector<Seen>& seen, absl::Duration window) {
  std::vector<AlertState> states;
  for (const Seen& s : seen) {
    if (s.window == window) states.push_back(s.state);
  }
  return states;
}

TEST_F(DriftEngineTest, AlertsGoPendingFiringAndBackToOk) {
  const StreamKey a{"m", "v", "a"};
  ASSERT_NE(Put(PreBinned(a, {250, 250, 250, 250}, WatchPolicy())), nullptr);
  Recorder changes;
  engine_.Watch({"m", "v", "a", /*state_changes_only=*/true}, changes.Callback());

  EXPECT_EQ(engine_.Evaluate(), 2u);
  EXPECT_TRUE(changes.Take().empty());

  SendOk("m", {Hist(a, {400, 0, 0, 0})});  // KL ~ log 4: critical.
  engine_.Evaluate();
  std::vector<Seen> seen = changes.Take();
  ASSERT_EQ(seen.size(), 2u);
  for (const Seen& s : seen) {
    EXPECT_EQ(s.stream, a);
    EXPECT_EQ(s.state, AlertState::kPending);
    EXPECT_EQ(s.severity, Severity::kCritical);
  }
  clock_.Advance(absl::Seconds(30));
  engine_.Evaluate();
  EXPECT_TRUE(changes.Take().empty());
  clock_.Advance(absl::Seconds(30));
  engine_.Evaluate();
  seen = changes.Take();
  EXPECT_THAT(States(seen, absl::Minutes(5)), ElementsAre(AlertState::kFiring));
  EXPECT_THAT(States(seen, absl::Hours(1)), ElementsAre(AlertState::kFiring));
  absl::StatusOr<std::vector<WindowReport>> reports = engine_.GetDrift(a, absl::Minutes(5), 0);
  ASSERT_TRUE(reports.ok());
  EXPECT_EQ((*reports)[0].alert.state, AlertState::kFiring);
  EXPECT_EQ((*reports)[0].alert.since, kStart + absl::Minutes(1));

  // The drifted data expires: an empty window is short of samples and keeps firing.
  clock_.Advance(absl::Minutes(61));
  engine_.Evaluate();
  clock_.Advance(absl::Minutes(2));
  engine_.Evaluate();
  EXPECT_TRUE(changes.Take().empty());

  // Data in the reference's shape: below clear, and ok after `for`.
  SendOk("m", {Hist(a, {100, 100, 100, 100})});
  engine_.Evaluate();
  EXPECT_TRUE(changes.Take().empty());
  clock_.Advance(absl::Minutes(1));
  engine_.Evaluate();
  seen = changes.Take();
  EXPECT_THAT(States(seen, absl::Minutes(5)), ElementsAre(AlertState::kOk));
  EXPECT_THAT(States(seen, absl::Hours(1)), ElementsAre(AlertState::kOk));
}

TEST_F(DriftEngineTest, FiringAlertsClearWithoutEvidenceOfDifference) {
  // With the default max_p_value, data that matches the reference has no evidence of drift (a
  // large p-value). That must not stop a firing alert from clearing.
  AlertPolicy policy = WatchPolicy();
  policy.max_p_value = 0.01;
  policy.windows = {absl::Minutes(5)};
  const StreamKey a{"m", "v", "a"};
  ASSERT_NE(Put(PreBinned(a, {250, 250, 250, 250}, policy)), nullptr);
  Recorder changes;
  engine_.Watch({"m", "v", "a", true}, changes.Callback());
  SendOk("m", {Hist(a, {400, 0, 0, 0})});
  engine_.Evaluate();
  clock_.Advance(absl::Minutes(1));
  engine_.Evaluate();
  EXPECT_THAT(States(changes.Take(), absl::Minutes(5)),
              ElementsAre(AlertState::kPending, AlertState::kFiring));

  clock_.Advance(absl::Minutes(5));
  SendOk("m", {Hist(a, {100, 100, 100, 100})});
  engine_.Evaluate();
  clock_.Advance(absl::Minutes(1));
  SendOk("m", {Hist(a, {100, 100, 100, 100})});
  engine_.Evaluate();
  EXPECT_THAT(States(changes.Take(), absl::Minutes(5)), ElementsAre(AlertState::kOk));
}

TEST_F(DriftEngineTest, TooFewSamplesNeverAlert) {
  AlertPolicy policy = WatchPolicy();
  policy.for_duration = absl::ZeroDuration();
  const StreamKey a{"m", "v", "a"};
  ASSERT_NE(Put(PreBinned(a, {250, 250, 250, 250}, policy)), nullptr);
  Recorder changes;
  engine_.Watch({"m", "v", "a", true}, changes.Callback());
  SendOk("m", {Hist(a, {99, 0, 0, 0})});  // Drifted, but 99 < min_samples.
  engine_.Evaluate();
  EXPECT_TRUE(changes.Take().empty());
  SendOk("m", {Hist(a, {1, 0, 0, 0})});
  engine_.Evaluate();
  EXPECT_THAT(States(changes.Take(), absl::Minutes(5)), ElementsAre(AlertState::kFiring));
}

TEST_F(DriftEngineTest, PutReferenceResetsAlertState) {
  AlertPolicy policy = WatchPolicy();
  policy.for_duration = absl::ZeroDuration();
  const StreamKey a{"m", "v", "a"};
  ASSERT_NE(Put(PreBinned(a, {250, 250, 250, 250}, policy)), nullptr);
  SendOk("m", {Hist(a, {400, 0, 0, 0})});
  engine_.Evaluate();
  EXPECT_EQ(Drift(a, absl::Minutes(5)).alert.state, AlertState::kFiring);
  ASSERT_NE(Put(PreBinned(a, {250, 250, 250, 250}, policy)), nullptr);
  const WindowReport r = Drift(a, absl::Minutes(5));
  EXPECT_EQ(r.alert.state, AlertState::kOk);
  EXPECT_EQ(r.samples, 400);  // Same bins: the window is kept.
}

TEST_F(DriftEngineTest, WatchFiltersAndUnwatch) {
  const StreamKey a{"m", "v1", "a"}, b{"m", "v1", "b"}, c{"m", "", "a"}, other{"n", "v1", "a"};
  for (const StreamKey& k : {a, b, c, other}) {
    ASSERT_NE(Put(PreBinned(k, {1, 1}, WatchPolicy())), nullptr);
  }
  Recorder whole_model, one_stream, empty_version;
  const uint64_t whole_id = engine_.Watch({"m", "", "", false}, whole_model.Callback());
  const uint64_t one_id = engine_.Watch({"m", "v1", "a", false}, one_stream.Callback());
  const uint64_t empty_id = engine_.Watch({"m", "", "a", false}, empty_version.Callback());
  EXPECT_NE(whole_id, one_id);
  EXPECT_NE(one_id, empty_id);

  EXPECT_EQ(engine_.Evaluate(), 8u);  // 4 streams x 2 windows.
  std::vector<Seen> seen = whole_model.Take();
  EXPECT_EQ(seen.size(), 6u);
  std::set<StreamKey> streams;
  for (const Seen& s : seen) streams.insert(s.stream);
  EXPECT_EQ(streams, (std::set<StreamKey>{a, b, c}));
  seen = one_stream.Take();
  ASSERT_EQ(seen.size(), 2u);
  for (const Seen& s : seen) EXPECT_EQ(s.stream, a);
  seen = empty_version.Take();
  ASSERT_EQ(seen.size(), 2u);
  for (const Seen& s : seen) EXPECT_EQ(s.stream, c);

  engine_.Unwatch(whole_id);
  engine_.Evaluate();
  EXPECT_TRUE(whole_model.Take().empty());
  EXPECT_EQ(one_stream.Take().size(), 2u);
  EXPECT_EQ(empty_version.Take().size(), 2u);
  engine_.Unwatch(one_id);
  engine_.Unwatch(empty_id);
  engine_.Unwatch(12345);  // Unknown ids are ignored.
  engine_.Evaluate();
  EXPECT_TRUE(one_stream.Take().empty());
  EXPECT_TRUE(empty_version.Take().empty());
}

// ---------------------------------------------------------------------------------------------
// Gaussian and policy streams.

TEST_F(DriftEngineTest, GaussianStreamsReportSampleMomentsAndKl) {
  const StreamKey g{"vae", "v1", "latent"};
  const std::vector<double> ref_mean = {0, 1}, ref_var = {1, 2};
  ASSERT_NE(Put(Gaussian(g, ref_mean, ref_var)), nullptr);
  std::mt19937_64 rng(9);
  std::normal_distribution<double> d0(0.5, 1.5), d1(1, 1);
  std::vector<std::vector<double>> xs(2);
  for (int batch = 0; batch < 3; ++batch) {
    std::vector<double> sum(2, 0.0), sum_sq(2, 0.0);
    for (int i = 0; i < 100; ++i) {
      const double x[2] = {d0(rng), d1(rng)};
      for (int j = 0; j < 2; ++j) {
        xs[j].push_back(x[j]);
        sum[j] += x[j];
        sum_sq[j] += x[j] * x[j];
      }
    }
    SendOk("vae", {GaussianStats(g, 100, sum, sum_sq)});
  }
  std::vector<double> mean(2), var(2);
  for (int j = 0; j < 2; ++j) {
    long double s = 0;
    for (double x : xs[j]) s += x;
    mean[j] = static_cast<double>(s / 300);
    long double ss = 0;
    for (double x : xs[j]) ss += (x - mean[j]) * (x - mean[j]);
    var[j] = static_cast<double>(ss / 299);
  }
  const kernels::GaussianKlPair expected =
      kernels::DiagonalGaussianKl(mean.data(), var.data(), ref_mean.data(), ref_var.data(), 2);
  for (absl::Duration w : kDefaultWindows) {
    const WindowReport r = Drift(g, w);
    EXPECT_EQ(r.kind, ReferenceKind::kGaussian);
    EXPECT_EQ(r.samples, 300);
    EXPECT_TRUE(r.enough_samples);
    ASSERT_TRUE(r.gaussian.has_value());
    for (int j = 0; j < 2; ++j) {
      ExpectClose(r.gaussian->current_mean[j], mean[j], "mean");
      ExpectClose(r.gaussian->current_var[j], var[j], "var");
    }
    ExpectClose(r.gaussian->kl.forward, expected.forward, "forward KL");
    ExpectClose(r.gaussian->kl.reverse, expected.reverse, "reverse KL");
    EXPECT_EQ(r.measure, "kl_current_reference");
    EXPECT_EQ(r.measure_value, r.gaussian->kl.forward);
    EXPECT_GT(r.measure_value, 0.1);
  }
}

TEST_F(DriftEngineTest, PolicyStreamsReportTheEstimators) {
  const StreamKey p{"rlhf", "v1", "policy"};
  ASSERT_NE(Put(PolicyRef(p)), nullptr);
  std::mt19937_64 rng(13);
  std::uniform_real_distribution<double> prob(0.05, 1.0);
  std::normal_distribution<double> shift(0.1, 0.3);
  std::vector<double> all_current, all_reference;
  for (int batch = 0; batch < 4; ++batch) {
    std::vector<double> current, reference;
    for (int i = 0; i < 125; ++i) {
      const double lc = std::log(prob(rng));
      current.push_back(lc);
      reference.push_back(std::min(0.0, lc - shift(rng)));
    }
    all_current.insert(all_current.end(), current.begin(), current.end());
    all_reference.insert(all_reference.end(), reference.begin(), reference.end());
    SendOk("rlhf", {LogProbs(p, current, reference)});
  }
  const kernels::PolicyKlEstimates expected =
      kernels::EstimatePolicyKl(all_current.data(), all_reference.data(), all_current.size());
  const WindowReport r = Drift(p, absl::Hours(1));
  EXPECT_EQ(r.kind, ReferenceKind::kPairedLogProbs);
  EXPECT_EQ(r.samples, 500);
  ASSERT_TRUE(r.policy.has_value());
  EXPECT_EQ(r.policy->samples, 500u);
  ExpectClose(r.policy->k1.mean, expected.k1.mean, "k1 mean", 1e-3);
  ExpectClose(r.policy->k2.mean, expected.k2.mean, "k2 mean", 1e-3);
  ExpectClose(r.policy->k3.mean, expected.k3.mean, "k3 mean", 1e-3);
  ExpectClose(r.policy->k1.standard_error, expected.k1.standard_error, "k1 se", 0, 1e-6);
  ExpectClose(r.policy->k3.standard_error, expected.k3.standard_error, "k3 se", 0, 1e-6);
  EXPECT_EQ(r.measure, "k3");
  EXPECT_EQ(r.measure_value, r.policy->k3.mean);
  EXPECT_GT(r.policy->k3.mean, 0);
}

// ---------------------------------------------------------------------------------------------
// Concurrency.

TEST_F(DriftEngineTest, ConcurrentIngestIntoOverlappingStreams) {
  const std::vector<StreamKey> keys = {{"m", "v", "s0"}, {"m", "v", "s1"}, {"m", "v", "s2"}};
  for (const StreamKey& k : keys) ASSERT_NE(Put(PreBinned(k, {1, 1, 1, 1})), nullptr);
  constexpr int kThreads = 4;
  constexpr int kBatchesPerThread = 500;
  std::atomic<int> failures{0};
  std::atomic<bool> done{false};
  std::atomic<int> callbacks{0};
  engine_.Watch({"m", "", "", false}, [&callbacks](const WindowReport&) { ++callbacks; });

  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([this, t, &keys, &failures] {
      const std::string client = "client-" + std::to_string(t);
      for (int i = 1; i <= kBatchesPerThread; ++i) {
        // Two streams per batch, in an order that varies.
        const StreamKey& x = keys[t % 3];
        const StreamKey& y = keys[(t + 1) % 3];
        std::vector<StreamData> streams = {Hist(x, {1, 2, 0, 1}), Hist(y, {1, 2, 0, 1})};
        if (i % 2 == 0) std::swap(streams[0], streams[1]);
        const IngestResult r = engine_.Ingest(MakeBatch(client, i, "m", streams));
        if (!r.status.ok() || r.duplicate || r.acked_sequence != static_cast<uint64_t>(i)) {
          ++failures;
        }
      }
    });
  }
  std::thread reader([this, &keys, &done] {
    while (!done.load()) {
      engine_.Evaluate();
      for (const StreamKey& k : keys) {
        (void)engine_.GetDrift(k, std::nullopt, 3);
        (void)engine_.IncrementalKlCurrentReference(k, absl::Minutes(5));
      }
      (void)engine_.ListReferences("m", 2, "");
    }
  });
  for (std::thread& t : threads) t.join();
  done = true;
  reader.join();

  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(engine_.client_count(), static_cast<size_t>(kThreads));
  // Thread t writes streams t % 3 and (t + 1) % 3: s0 by threads 0, 2, 3; s1 by 0, 1, 3; s2 by
  // 1, 2.
  const double per_batch = 4;
  const double expected[] = {3 * kBatchesPerThread * per_batch, 3 * kBatchesPerThread * per_batch,
                             2 * kBatchesPerThread * per_batch};
  for (size_t s = 0; s < keys.size(); ++s) {
    for (absl::Duration w : kDefaultWindows) {
      EXPECT_EQ(Samples(keys[s], w), expected[s]) << keys[s].ToString();
    }
    const double batches = expected[s] / per_batch;
    EXPECT_THAT(Totals(keys[s], absl::Hours(1), 4), ElementsAre(batches, 2 * batches, 0, batches));
  }
}

// References replaced (same and different bins) and a stream deleted and recreated while batches,
// evaluations and the clock move: no crash, every batch either applied or rejected with a precise
// status, and a stream nobody touches ends with exactly what was sent to it (run under TSan too).
TEST_F(DriftEngineTest, ConcurrentReferenceChurnDuringIngest) {
  const StreamKey stable{"m", "", "stable"};
  const StreamKey churned{"m", "", "churned"};
  const StreamKey deleted{"m", "", "deleted"};
  for (const StreamKey& k : {stable, churned, deleted})
    ASSERT_NE(Put(PreBinned(k, {1, 1})), nullptr);
  constexpr int kBatches = 300;
  std::atomic<bool> done{false};
  std::atomic<int> unexpected{0};
  std::atomic<int> stable_applied{0};

  std::vector<std::thread> writers;
  for (const StreamKey& target : {churned, deleted}) {
    writers.emplace_back([&, target] {
      for (int i = 1; i <= kBatches; ++i) {
        const IngestResult r = engine_.Ingest(
            MakeBatch("w-" + target.signal, i, "m", {Hist(stable, {1, 0}), Hist(target, {0, 1})}));
        if (r.status.ok()) {
          ++stable_applied;
        } else if (r.status.code() != absl::StatusCode::kFailedPrecondition) {
          ++unexpected;  // Bins changed or stream gone: FAILED_PRECONDITION, nothing else.
        }
      }
    });
  }
  std::thread churn([&] {
    for (int i = 0; !done.load(); ++i) {
      // Alternate same-shaped and differently shaped bins for one stream...
      (void)engine_.PutReference(PreBinned(
          churned, i % 2 == 0 ? std::vector<double>{1, 1} : std::vector<double>{1, 1, 1}));
      // ...and delete and recreate another.
      (void)engine_.DeleteReference(deleted);
      (void)engine_.PutReference(PreBinned(deleted, {2, 1}));
      clock_.Advance(absl::Milliseconds(1));
    }
  });
  std::thread evaluator([&] {
    while (!done.load()) {
      engine_.Evaluate();
      (void)engine_.GetDrift(churned, std::nullopt, 2);
      (void)engine_.ListReferences("m", 1, "");
    }
  });
  for (std::thread& t : writers) t.join();
  done = true;
  churn.join();
  evaluator.join();

  EXPECT_EQ(unexpected.load(), 0);
  EXPECT_GT(stable_applied.load(), 0);  // Batches to unchanged bins do get through.
  // Atomic batches: the stable stream holds one observation per applied batch, no more, no less.
  EXPECT_EQ(Drift(stable, absl::Minutes(5)).samples, static_cast<double>(stable_applied.load()));
}

// Clients that go quiet for longer than client_retention are forgotten, so the table stays
// bounded; clients still sending are kept and keep their de-duplication.
TEST_F(DriftEngineTest, IdleIngestClientsAreForgottenAfterRetention) {
  const StreamKey key{"m", "", "s"};
  ASSERT_NE(Put(PreBinned(key, {1, 1})), nullptr);
  ASSERT_TRUE(engine_.Ingest(MakeBatch("quiet", 1, "m", {Hist(key, {1, 0})})).status.ok());
  ASSERT_TRUE(engine_.Ingest(MakeBatch("busy", 1, "m", {Hist(key, {1, 0})})).status.ok());
  EXPECT_EQ(engine_.client_count(), 2u);
  clock_.Advance(absl::Hours(47));
  ASSERT_TRUE(engine_.Ingest(MakeBatch("busy", 2, "m", {Hist(key, {1, 0})})).status.ok());
  EXPECT_EQ(engine_.client_count(), 2u);  // Nobody idle for 48h yet.
  clock_.Advance(absl::Hours(2));
  // "busy" resends its last batch: still remembered, so acknowledged and not applied twice.
  const IngestResult resend = engine_.Ingest(MakeBatch("busy", 2, "m", {Hist(key, {1, 0})}));
  EXPECT_TRUE(resend.duplicate);
  EXPECT_EQ(engine_.client_count(), 1u);  // "quiet" has been idle for 49h.
}

}  // namespace
}  // namespace kldrift
