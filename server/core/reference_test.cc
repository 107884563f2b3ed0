#include "server/core/reference.h"

#include <cmath>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kldrift {
namespace {

using ::testing::AllOf;
using ::testing::Each;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
const absl::Time kNow = absl::FromUnixSeconds(1'800'000'000);

ReferenceSpec NumericSpec() {
  ReferenceSpec spec;
  spec.stream = {"fraud", "v1", "score"};
  spec.kind = ReferenceKind::kNumeric;
  spec.edges = {0, 1, 2, 3};  // K = 6: underflow, 3 bins, overflow, NaN.
  return spec;
}

ReferenceSpec CategoricalSpec() {
  ReferenceSpec spec;
  spec.stream = {"fraud", "v1", "country"};
  spec.kind = ReferenceKind::kCategorical;
  spec.categories = {"a", "b", "c"};  // K = 4 with "unseen".
  return spec;
}

ReferenceSpec PreBinnedSpec(size_t bins = 5) {
  ReferenceSpec spec;
  spec.stream = {"fraud", "", "bucket"};
  spec.kind = ReferenceKind::kPreBinned;
  spec.bins = bins;
  return spec;
}

ReferenceSpec GaussianSpec() {
  ReferenceSpec spec;
  spec.stream = {"vae", "v3", "latent"};
  spec.kind = ReferenceKind::kGaussian;
  spec.gaussian = {{0, 1}, {1, 2}};
  return spec;
}

ReferenceSpec PolicySpec() {
  ReferenceSpec spec;
  spec.stream = {"rlhf", "v9", "policy"};
  spec.kind = ReferenceKind::kPairedLogProbs;
  return spec;
}

absl::StatusOr<std::shared_ptr<const Reference>> Build(
    const ReferenceSpec& spec, ReferenceLimits limits = {},
    const std::vector<double>* window = nullptr) {
  return BuildReference(spec, 1, kNow, limits, window);
}

std::shared_ptr<const Reference> BuildOk(const ReferenceSpec& spec) {
  absl::StatusOr<std::shared_ptr<const Reference>> ref = Build(spec);
  EXPECT_TRUE(ref.ok()) << ref.status();
  return ref.ok() ? *ref : nullptr;
}

void ExpectError(const ReferenceSpec& spec, absl::StatusCode code,
                 const std::vector<std::string>& parts, ReferenceLimits limits = {}) {
  absl::StatusOr<std::shared_ptr<const Reference>> ref = Build(spec, limits);
  ASSERT_FALSE(ref.ok());
  EXPECT_EQ(ref.status().code(), code) << ref.status();
  for (const std::string& part : parts) EXPECT_THAT(ref.status().message(), HasSubstr(part));
}

std::vector<double> Vec(absl::Span<const double> s) { return {s.begin(), s.end()}; }

TEST(ReferenceTest, KindNames) {
  EXPECT_EQ(ReferenceKindName(ReferenceKind::kNumeric), "numeric");
  EXPECT_EQ(ReferenceKindName(ReferenceKind::kCategorical), "categorical");
  EXPECT_EQ(ReferenceKindName(ReferenceKind::kPreBinned), "pre_binned");
  EXPECT_EQ(ReferenceKindName(ReferenceKind::kGaussian), "gaussian");
  EXPECT_EQ(ReferenceKindName(ReferenceKind::kPairedLogProbs), "paired_log_probs");
}

TEST(ReferenceTest, NumericWithInteriorCounts) {
  ReferenceSpec spec = NumericSpec();
  spec.counts = std::vector<double>{5, 6, 7};
  spec.policy.alpha = 1;
  absl::StatusOr<std::shared_ptr<const Reference>> built = BuildReference(spec, 7, kNow, {});
  ASSERT_TRUE(built.ok()) << built.status();
  const Reference& ref = **built;
  EXPECT_EQ(ref.stream, spec.stream);
  EXPECT_EQ(ref.version, 7u);
  EXPECT_EQ(ref.kind, ReferenceKind::kNumeric);
  EXPECT_EQ(ref.created_at, kNow);
  EXPECT_EQ(ref.policy.alpha, 1);
  EXPECT_TRUE(ref.is_histogram());
  ASSERT_TRUE(ref.layout.has_value());
  EXPECT_EQ(ref.layout->size(), 6u);
  EXPECT_THAT(ref.layout->edges(), ElementsAre(0, 1, 2, 3));
  EXPECT_THAT(ref.counts, ElementsAre(0, 5, 6, 7, 0, 0));
  ASSERT_NE(ref.profile, nullptr);
  EXPECT_THAT(Vec(ref.profile->counts()), ElementsAre(0, 5, 6, 7, 0, 0));
  EXPECT_EQ(ref.profile->samples(), 18);
  EXPECT_EQ(ref.profile->alpha(), 1);
  // Smoothed shares (c + 1) / (18 + 6).
  const double expected[] = {1, 6, 7, 8, 1, 1};
  for (size_t i = 0; i < 6; ++i) {
    EXPECT_DOUBLE_EQ(ref.profile->shares()[i], expected[i] / 24) << i;
    EXPECT_DOUBLE_EQ(ref.profile->log_shares()[i], std::log(expected[i] / 24)) << i;
  }
  EXPECT_EQ(ref.window_width(), 6u);
}

TEST(ReferenceTest, NumericWithFullCounts) {
  ReferenceSpec spec = NumericSpec();
  spec.counts = std::vector<double>{1, 5, 6, 7, 2, 3};
  std::shared_ptr<const Reference> ref = BuildOk(spec);
  ASSERT_NE(ref, nullptr);
  EXPECT_THAT(ref->counts, ElementsAre(1, 5, 6, 7, 2, 3));
  EXPECT_EQ(ref->profile->samples(), 24);
}

TEST(ReferenceTest, NumericValuesAreBinnedServerSide) {
  ReferenceSpec spec = NumericSpec();
  spec.values = std::vector<double>{-1, 0, 0.5, 1, 2.9, 3, 100, kNaN, kInf, -kInf};
  std::shared_ptr<const Reference> ref = BuildOk(spec);
  ASSERT_NE(ref, nullptr);
  // [underflow, [0,1), [1,2), [2,3), overflow, NaN]
  EXPECT_THAT(ref->counts, ElementsAre(2, 2, 1, 1, 3, 1));
  EXPECT_EQ(ref->profile->samples(), 10);
}

TEST(ReferenceTest, CategoricalWithLabelsIncludingUnseen) {
  ReferenceSpec spec = CategoricalSpec();
  spec.labels = std::vector<std::string>{"a", "a", "c", "zzz", "b", "q", "A"};
  std::shared_ptr<const Reference> ref = BuildOk(spec);
  ASSERT_NE(ref, nullptr);
  EXPECT_EQ(ref->kind, ReferenceKind::kCategorical);
  EXPECT_THAT(ref->layout->categories(), ElementsAre("a", "b", "c"));
  EXPECT_THAT(ref->counts, ElementsAre(2, 1, 1, 3));
  EXPECT_EQ(ref->window_width(), 4u);
}

TEST(ReferenceTest, CategoricalCountsWithAndWithoutUnseen) {
  ReferenceSpec spec = CategoricalSpec();
  spec.counts = std::vector<double>{3, 2, 1};
  std::shared_ptr<const Reference> ref = BuildOk(spec);
  ASSERT_NE(ref, nullptr);
  EXPECT_THAT(ref->counts, ElementsAre(3, 2, 1, 0));

  spec.counts = std::vector<double>{3, 2, 1, 4};
  ref = BuildOk(spec);
  ASSERT_NE(ref, nullptr);
  EXPECT_THAT(ref->counts, ElementsAre(3, 2, 1, 4));

  spec.counts = std::vector<double>{3, 2, 1, 4, 5};
  ExpectError(spec, absl::StatusCode::kInvalidArgument,
              {"got 5 counts", "3 (one per category) or 4"});
}

TEST(ReferenceTest, PreBinned) {
  ReferenceSpec spec = PreBinnedSpec();
  spec.counts = std::vector<double>{1, 0, 2, 0, 3};
  std::shared_ptr<const Reference> ref = BuildOk(spec);
  ASSERT_NE(ref, nullptr);
  EXPECT_EQ(ref->layout->size(), 5u);
  EXPECT_THAT(ref->counts, ElementsAre(1, 0, 2, 0, 3));
  EXPECT_EQ(ref->window_width(), 5u);

  spec.counts = std::vector<double>{1, 2, 3, 4};
  ExpectError(spec, absl::StatusCode::kInvalidArgument, {"got 4 counts", "expected 5"});
}

TEST(ReferenceTest, CountsLengthForNumeric) {
  ReferenceSpec spec = NumericSpec();
  spec.counts = std::vector<double>{1, 2, 3, 4};
  ExpectError(spec, absl::StatusCode::kInvalidArgument, {"got 4 counts", "3 (one per bin) or 6"});
  spec.counts = std::vector<double>{};
  ExpectError(spec, absl::StatusCode::kInvalidArgument, {"got 0 counts"});
}

TEST(ReferenceTest, CountsMustBeNonNegativeIntegers) {
  ReferenceSpec spec = PreBinnedSpec(3);
  spec.counts = std::vector<double>{1, 1.5, 2};
  ExpectError(spec, absl::StatusCode::kInvalidArgument, {"bin 1 is 1.5", "integers >= 0"});
  spec.counts = std::vector<double>{1, 2, -1};
  ExpectError(spec, absl::StatusCode::kInvalidArgument, {"bin 2 is -1"});
  spec.counts = std::vector<double>{kNaN, 2, 1};
  ExpectError(spec, absl::StatusCode::kInvalidArgument, {"bin 0"});
  spec.counts = std::vector<double>{kInf, 2, 1};
  ExpectError(spec, absl::StatusCode::kInvalidArgument, {"bin 0"});
  // All zero: no distribution to compare against.
  spec.counts = std::vector<double>{0, 0, 0};
  EXPECT_EQ(Build(spec).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ReferenceTest, ExactlyOneDataSource) {
  ReferenceSpec spec = NumericSpec();
  ExpectError(spec, absl::StatusCode::kInvalidArgument,
              {"numeric reference needs exactly one of", "got 0"});
  spec.counts = std::vector<double>{1, 2, 3};
  spec.values = std::vector<double>{0.5};
  ExpectError(spec, absl::StatusCode::kInvalidArgument, {"exactly one of", "got 2"});

  ReferenceSpec cat = CategoricalSpec();
  cat.labels = std::vector<std::string>{"a"};
  cat.from_window = WindowSource{std::nullopt, absl::Hours(1)};
  ExpectError(cat, absl::StatusCode::kInvalidArgument,
              {"categorical reference needs exactly one of", "got 2"});
}

TEST(ReferenceTest, DataOfTheWrongShapeForTheKind) {
  ReferenceSpec cat = CategoricalSpec();
  cat.values = std::vector<double>{1.0};
  ExpectError(cat, absl::StatusCode::kInvalidArgument, {"raw values need a numeric reference"});

  ReferenceSpec pre = PreBinnedSpec();
  pre.values = std::vector<double>{1.0};
  ExpectError(pre, absl::StatusCode::kInvalidArgument, {"raw values need a numeric reference"});

  ReferenceSpec num = NumericSpec();
  num.labels = std::vector<std::string>{"a"};
  ExpectError(num, absl::StatusCode::kInvalidArgument, {"labels need a categorical reference"});
}

TEST(ReferenceTest, BadLayouts) {
  ReferenceSpec num = NumericSpec();
  num.edges = {0, 2, 1};
  num.counts = std::vector<double>{1, 1};
  ExpectError(num, absl::StatusCode::kInvalidArgument, {"strictly increasing"});
  num.edges = {0};
  ExpectError(num, absl::StatusCode::kInvalidArgument, {"at least 2 bin edges"});

  ReferenceSpec cat = CategoricalSpec();
  cat.categories = {"a", "a"};
  cat.counts = std::vector<double>{1, 1};
  EXPECT_EQ(Build(cat).status().code(), absl::StatusCode::kInvalidArgument);

  ReferenceSpec pre = PreBinnedSpec(0);
  pre.counts = std::vector<double>{};
  EXPECT_EQ(Build(pre).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ReferenceTest, MaxBinsIsResourceExhausted) {
  ReferenceLimits limits;
  limits.max_bins = 6;

  ReferenceSpec num = NumericSpec();  // 4 edges -> 6 bins: at the limit.
  num.counts = std::vector<double>{1, 1, 1};
  EXPECT_TRUE(Build(num, limits).ok());
  num.edges = {0, 1, 2, 3, 4};
  num.counts = std::vector<double>{1, 1, 1, 1};
  ExpectError(num, absl::StatusCode::kResourceExhausted, {"5 edges", "limit of 6", "--max-bins"},
              limits);

  ReferenceSpec cat = CategoricalSpec();
  cat.categories = {"a", "b", "c", "d", "e"};  // 6 bins: at the limit.
  cat.counts = std::vector<double>{1, 1, 1, 1, 1};
  EXPECT_TRUE(Build(cat, limits).ok());
  cat.categories.push_back("f");
  cat.counts->push_back(1);
  ExpectError(cat, absl::StatusCode::kResourceExhausted, {"6 categories", "--max-bins"}, limits);

  ReferenceSpec pre = PreBinnedSpec(6);
  pre.counts = std::vector<double>(6, 1.0);
  EXPECT_TRUE(Build(pre, limits).ok());
  pre = PreBinnedSpec(7);
  pre.counts = std::vector<double>(7, 1.0);
  ExpectError(pre, absl::StatusCode::kResourceExhausted, {"7 bins", "--max-bins"}, limits);
}

TEST(ReferenceTest, Gaussian) {
  std::shared_ptr<const Reference> ref = BuildOk(GaussianSpec());
  ASSERT_NE(ref, nullptr);
  EXPECT_FALSE(ref->is_histogram());
  EXPECT_EQ(ref->profile, nullptr);
  EXPECT_TRUE(ref->counts.empty());
  EXPECT_THAT(ref->gaussian.mean, ElementsAre(0, 1));
  EXPECT_THAT(ref->gaussian.var, ElementsAre(1, 2));
  EXPECT_EQ(ref->window_width(), 5u);  // count, 2 sums, 2 sums of squares.
}

TEST(ReferenceTest, GaussianErrors) {
  ReferenceSpec spec = GaussianSpec();
  spec.gaussian.var = {1, 0};
  ExpectError(spec, absl::StatusCode::kInvalidArgument, {"var[1] = 0", "> 0"});
  spec.gaussian.var = {-1, 1};
  ExpectError(spec, absl::StatusCode::kInvalidArgument, {"var[0] = -1"});
  spec.gaussian.var = {1, kNaN};
  ExpectError(spec, absl::StatusCode::kInvalidArgument, {"var[1]"});
  spec.gaussian.var = {1, kInf};
  ExpectError(spec, absl::StatusCode::kInvalidArgument, {"var[1]"});
  spec.gaussian.var = {1};
  ExpectError(spec, absl::StatusCode::kInvalidArgument, {"mean has 2 dimensions but var has 1"});
  spec.gaussian = {{kInf, 0}, {1, 1}};
  ExpectError(spec, absl::StatusCode::kInvalidArgument, {"mean[0] is not finite"});
  spec.gaussian = {{}, {}};
  ExpectError(spec, absl::StatusCode::kInvalidArgument, {"at least one dimension"});

  spec = GaussianSpec();
  spec.counts = std::vector<double>{1, 2};
  ExpectError(spec, absl::StatusCode::kInvalidArgument, {"Gaussian reference"});

  spec = GaussianSpec();
  ReferenceLimits limits;
  limits.max_dimensions = 2;
  EXPECT_TRUE(Build(spec, limits).ok());
  limits.max_dimensions = 1;
  ExpectError(spec, absl::StatusCode::kResourceExhausted,
              {"2 dimensions", "limit of 1", "--max-dimensions"}, limits);
}

TEST(ReferenceTest, PairedLogProbs) {
  std::shared_ptr<const Reference> ref = BuildOk(PolicySpec());
  ASSERT_NE(ref, nullptr);
  EXPECT_FALSE(ref->is_histogram());
  EXPECT_EQ(ref->window_width(), kPolicyWindowWidth);

  ReferenceSpec spec = PolicySpec();
  spec.values = std::vector<double>{-1};
  ExpectError(spec, absl::StatusCode::kInvalidArgument, {"paired-log-prob reference"});
}

TEST(ReferenceTest, BadStreamNameAndBadPolicy) {
  ReferenceSpec spec = PreBinnedSpec();
  spec.counts = std::vector<double>{1, 1, 1, 1, 1};
  spec.stream.signal = "bad signal";
  ExpectError(spec, absl::StatusCode::kInvalidArgument, {"signal", "position 3"});
  spec.stream.signal = "ok";
  spec.stream.model = "";
  ExpectError(spec, absl::StatusCode::kInvalidArgument, {"model is empty"});

  spec = PreBinnedSpec();
  spec.counts = std::vector<double>{1, 1, 1, 1, 1};
  spec.policy.max_p_value = 0;
  ExpectError(spec, absl::StatusCode::kInvalidArgument, {"max_p_value"});
  spec.policy = AlertPolicy();
  spec.policy.windows.clear();
  ExpectError(spec, absl::StatusCode::kInvalidArgument, {"at least one window"});

  // Non-histogram kinds validate the policy too.
  ReferenceSpec g = GaussianSpec();
  g.policy.sub_buckets = 1;
  ExpectError(g, absl::StatusCode::kInvalidArgument, {"sub_buckets"});
}

TEST(ReferenceTest, FromWindowTakesTheWindowCounts) {
  ReferenceSpec spec = NumericSpec();
  spec.from_window = WindowSource{std::nullopt, absl::Hours(1)};
  const std::vector<double> window = {0, 4, 5, 6, 1, 0};
  absl::StatusOr<std::shared_ptr<const Reference>> ref = Build(spec, {}, &window);
  ASSERT_TRUE(ref.ok()) << ref.status();
  EXPECT_THAT((*ref)->counts, ElementsAre(0, 4, 5, 6, 1, 0));

  EXPECT_EQ(Build(spec).status().code(), absl::StatusCode::kFailedPrecondition);
  const std::vector<double> wrong = {1, 2, 3};
  absl::StatusOr<std::shared_ptr<const Reference>> bad = Build(spec, {}, &wrong);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(bad.status().message(), HasSubstr("bins do not match"));
}

TEST(ReferenceTest, LayoutForSpec) {
  absl::StatusOr<BinLayout> layout = LayoutForSpec(NumericSpec(), {});
  ASSERT_TRUE(layout.ok());
  EXPECT_EQ(layout->size(), 6u);
  layout = LayoutForSpec(CategoricalSpec(), {});
  ASSERT_TRUE(layout.ok());
  EXPECT_EQ(layout->size(), 4u);
  layout = LayoutForSpec(PreBinnedSpec(9), {});
  ASSERT_TRUE(layout.ok());
  EXPECT_EQ(layout->size(), 9u);
  EXPECT_EQ(LayoutForSpec(GaussianSpec(), {}).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ReferenceTest, SameBins) {
  ReferenceSpec a = NumericSpec();
  a.counts = std::vector<double>{1, 2, 3};
  ReferenceSpec a2 = a;
  a2.counts = std::vector<double>{9, 9, 9};  // Different counts, same bins.
  a2.policy.alpha = 0.1;
  ReferenceSpec b = NumericSpec();
  b.edges = {0, 1, 2, 4};
  b.counts = std::vector<double>{1, 2, 3};
  ReferenceSpec c = CategoricalSpec();
  c.counts = std::vector<double>{1, 1, 1};
  ReferenceSpec c2 = CategoricalSpec();
  c2.categories = {"a", "b", "d"};
  c2.counts = std::vector<double>{1, 1, 1};
  ReferenceSpec p5 = PreBinnedSpec(5);
  p5.counts = std::vector<double>(5, 1.0);
  ReferenceSpec p4 = PreBinnedSpec(4);
  p4.counts = std::vector<double>(4, 1.0);
  ReferenceSpec p6 = PreBinnedSpec(6);  // Same bin count as the numeric layout.
  p6.counts = std::vector<double>(6, 1.0);
  ReferenceSpec g = GaussianSpec();
  ReferenceSpec g2 = GaussianSpec();
  g2.gaussian = {{5, 5}, {3, 3}};
  ReferenceSpec g3 = GaussianSpec();
  g3.gaussian = {{0, 0, 0}, {1, 1, 1}};
  ReferenceSpec pol = PolicySpec();

  auto ra = BuildOk(a), ra2 = BuildOk(a2), rb = BuildOk(b), rc = BuildOk(c), rc2 = BuildOk(c2),
       rp5 = BuildOk(p5), rp4 = BuildOk(p4), rp6 = BuildOk(p6), rg = BuildOk(g), rg2 = BuildOk(g2),
       rg3 = BuildOk(g3), rpol = BuildOk(pol), rpol2 = BuildOk(pol);
  for (const auto& r : {ra, ra2, rb, rc, rc2, rp5, rp4, rp6, rg, rg2, rg3, rpol, rpol2}) {
    ASSERT_NE(r, nullptr);
    EXPECT_TRUE(r->SameBins(*r));
  }
  EXPECT_TRUE(ra->SameBins(*ra2));
  EXPECT_FALSE(ra->SameBins(*rb));
  EXPECT_FALSE(ra->SameBins(*rp6));
  EXPECT_FALSE(rp6->SameBins(*ra));
  EXPECT_FALSE(ra->SameBins(*rc));
  EXPECT_FALSE(rc->SameBins(*rc2));
  EXPECT_FALSE(rp5->SameBins(*rp4));
  EXPECT_TRUE(rg->SameBins(*rg2));
  EXPECT_FALSE(rg->SameBins(*rg3));
  EXPECT_FALSE(rg->SameBins(*rpol));
  EXPECT_TRUE(rpol->SameBins(*rpol2));
}

TEST(ReferenceTest, ReferencesOfEqualBinsShareTheLayoutAndKeepTheirOwnCounts) {
  ReferenceSpec spec = NumericSpec();
  spec.counts = std::vector<double>{1, 2, 3};
  std::shared_ptr<const Reference> first = BuildOk(spec);
  spec.counts = std::vector<double>(first->counts.size(), 3.0);
  std::shared_ptr<const Reference> second = BuildOk(spec);
  ASSERT_TRUE(first->layout && second->layout);
  EXPECT_TRUE(first->layout->SharesDataWith(*second->layout));
  EXPECT_NE(first->counts, second->counts);
  // The counts are the profile's own, not a copy.
  EXPECT_EQ(first->counts.data(), first->profile->counts().data());
  EXPECT_THAT(second->counts, Each(3.0));
  // A new reference with other edges gets its own layout; the first keeps its bins.
  spec.edges = {0, 5, 10, 20};
  std::shared_ptr<const Reference> third = BuildOk(spec);
  EXPECT_FALSE(third->layout->SharesDataWith(*first->layout));
  EXPECT_EQ(first->layout->edges(), NumericSpec().edges);
  EXPECT_EQ(third->layout->edges(), spec.edges);
  // A copy of a reference reads the same counts.
  const Reference copy = *first;
  EXPECT_EQ(copy.counts, first->counts);
}

}  // namespace
}  // namespace kldrift
