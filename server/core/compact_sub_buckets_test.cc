#include "server/core/compact_sub_buckets.h"

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kldrift {
namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using Encoding = CompactSubBuckets::Encoding;

constexpr double kTwo32 = 4294967296.0;
constexpr double kTwo53 = 9007199254740992.0;

std::vector<double> Read(const CompactSubBuckets& b, int slot) {
  std::vector<double> out(b.width());
  b.Read(slot, absl::MakeSpan(out));
  return out;
}

TEST(CompactSubBucketsTest, StartsEmptyWithoutStorage) {
  CompactSubBuckets b(12, 3);
  EXPECT_EQ(b.heap_bytes(), 0u);
  for (int s = 0; s < 12; ++s) {
    EXPECT_EQ(b.encoding(s), Encoding::kEmpty);
    EXPECT_TRUE(b.AllZero(s));
    EXPECT_THAT(Read(b, s), ElementsAre(0, 0, 0));
  }
}

TEST(CompactSubBucketsTest, WidensPerSubBucketAsCountsGrow) {
  CompactSubBuckets b(3, 2);
  b.Add(1, std::vector<double>{255, 0});
  EXPECT_EQ(b.encoding(1), Encoding::kUint8);
  EXPECT_EQ(b.encoding(0), Encoding::kEmpty);
  EXPECT_EQ(b.heap_bytes(), 3u + 2u);
  b.Add(1, std::vector<double>{1, 0});
  EXPECT_EQ(b.encoding(1), Encoding::kUint16);
  EXPECT_THAT(Read(b, 1), ElementsAre(256, 0));
  b.Add(1, std::vector<double>{65535 - 256 + 1, 7});
  EXPECT_EQ(b.encoding(1), Encoding::kUint32);
  EXPECT_THAT(Read(b, 1), ElementsAre(65536, 7));
  // Neighbours keep their own encodings and values through the moves.
  b.Add(0, std::vector<double>{3, 4});
  b.Add(2, std::vector<double>{5, 6});
  b.Add(1, std::vector<double>{kTwo32 - 65536, 0});
  EXPECT_EQ(b.encoding(1), Encoding::kDouble);
  EXPECT_THAT(Read(b, 0), ElementsAre(3, 4));
  EXPECT_THAT(Read(b, 1), ElementsAre(kTwo32, 7));
  EXPECT_THAT(Read(b, 2), ElementsAre(5, 6));
  EXPECT_EQ(b.heap_bytes(), 3u + 2u + 16u + 2u);
}

TEST(CompactSubBucketsTest, ExactAroundTwoToThe32) {
  CompactSubBuckets b(2, 1);
  b.Add(0, std::vector<double>{kTwo32 - 1});
  EXPECT_EQ(b.encoding(0), Encoding::kUint32);
  EXPECT_THAT(Read(b, 0), ElementsAre(kTwo32 - 1));
  b.Add(0, std::vector<double>{1});
  EXPECT_EQ(b.encoding(0), Encoding::kDouble);
  EXPECT_THAT(Read(b, 0), ElementsAre(kTwo32));
  b.Add(0, std::vector<double>{1});
  EXPECT_THAT(Read(b, 0), ElementsAre(kTwo32 + 1));
}

TEST(CompactSubBucketsTest, NearTwoToThe53MatchesDoubleArithmetic) {
  CompactSubBuckets b(1, 2);
  std::vector<double> plain(2, 0.0);
  for (const std::vector<double>& delta :
       {std::vector<double>{kTwo53 - 1, 1}, std::vector<double>{1, kTwo53},
        std::vector<double>{1, 1}, std::vector<double>{kTwo53, 3}}) {
    b.Add(0, delta);
    for (size_t i = 0; i < 2; ++i) plain[i] += delta[i];
    EXPECT_THAT(Read(b, 0), ElementsAreArray(plain));
  }
}

TEST(CompactSubBucketsTest, FractionalAndNegativeValuesAreStoredAsDoubles) {
  CompactSubBuckets b(2, 3);
  b.Add(0, std::vector<double>{0.25, 0.5, 0.25});  // A probability vector.
  EXPECT_EQ(b.encoding(0), Encoding::kDouble);
  EXPECT_THAT(Read(b, 0), ElementsAre(0.25, 0.5, 0.25));
  b.Add(1, std::vector<double>{2, -3.5, 12.25});  // Gaussian count, sum, sum of squares.
  EXPECT_EQ(b.encoding(1), Encoding::kDouble);
  EXPECT_THAT(Read(b, 1), ElementsAre(2, -3.5, 12.25));
  // Back to integers: a sub-bucket never narrows until cleared.
  b.Add(0, std::vector<double>{0.75, 0.5, 0.75});
  EXPECT_EQ(b.encoding(0), Encoding::kDouble);
  EXPECT_THAT(Read(b, 0), ElementsAre(1, 1, 1));
  b.Add(1, std::vector<double>{-2, 3.5, -12.25});
  EXPECT_TRUE(b.AllZero(1));
}

TEST(CompactSubBucketsTest, ClearReleasesStorage) {
  CompactSubBuckets b(4, 2);
  b.Add(0, std::vector<double>{1, 2});
  b.Add(3, std::vector<double>{300, 2});
  b.Clear(0);
  EXPECT_EQ(b.encoding(0), Encoding::kEmpty);
  EXPECT_THAT(Read(b, 0), ElementsAre(0, 0));
  EXPECT_THAT(Read(b, 3), ElementsAre(300, 2));
  EXPECT_EQ(b.heap_bytes(), 4u + 4u);
  b.Clear(3);
  EXPECT_EQ(b.heap_bytes(), 0u);
  b.Clear(3);  // Clearing an empty sub-bucket is a no-op.
  EXPECT_EQ(b.heap_bytes(), 0u);
  b.Add(2, std::vector<double>{0, 0});  // All zeros: still nothing stored.
  EXPECT_EQ(b.encoding(2), Encoding::kEmpty);
  EXPECT_EQ(b.heap_bytes(), 0u);
}

TEST(CompactSubBucketsTest, AddToSumsInSlotOrder) {
  CompactSubBuckets b(3, 2);
  b.Add(0, std::vector<double>{1, 0.5});
  b.Add(2, std::vector<double>{70000, 2});
  std::vector<double> sums = {10, 10};
  for (int s = 0; s < 3; ++s) b.AddTo(s, absl::MakeSpan(sums));
  EXPECT_THAT(sums, ElementsAre(70011, 12.5));
}

// Random adds of every size, clears included, against a plain ring of doubles: bit for bit equal.
TEST(CompactSubBucketsTest, MatchesARingOfDoubles) {
  constexpr int kSlots = 5;
  constexpr size_t kWidth = 7;
  CompactSubBuckets b(kSlots, kWidth);
  std::vector<std::vector<double>> plain(kSlots, std::vector<double>(kWidth, 0.0));
  std::mt19937_64 rng(1);
  std::uniform_int_distribution<int> slot_of(0, kSlots - 1);
  std::uniform_int_distribution<int> magnitude(0, 54);
  std::uniform_real_distribution<double> unit(0, 1);
  for (int step = 0; step < 5000; ++step) {
    const int slot = slot_of(rng);
    if (step % 50 == 49) {
      b.Clear(slot);
      plain[slot].assign(kWidth, 0.0);
      continue;
    }
    std::vector<double> delta(kWidth);
    for (double& d : delta) {
      d = std::floor(unit(rng) * std::ldexp(1.0, magnitude(rng)));
      if (step % 7 == 0) d += 0.5;
    }
    b.Add(slot, delta);
    for (size_t i = 0; i < kWidth; ++i) plain[slot][i] += delta[i];
    for (int s = 0; s < kSlots; ++s) ASSERT_THAT(Read(b, s), ElementsAreArray(plain[s]));
  }
}

TEST(CompactSubBucketsTest, SummarizeTellsCountsFromEverythingElse) {
  using Summary = CompactSubBuckets::DeltaSummary;
  auto summarize = [](std::vector<double> delta) { return CompactSubBuckets::Summarize(delta); };
  const Summary counts = summarize({0, 3, 255, 1});
  EXPECT_TRUE(counts.counts);
  EXPECT_EQ(counts.max_count, 255);
  EXPECT_TRUE(summarize({}).counts);
  EXPECT_TRUE(summarize({-0.0, kTwo32 - 1}).counts);
  EXPECT_EQ(summarize({-0.0, kTwo32 - 1}).max_count, kTwo32 - 1);
  for (double bad : {-1.0, 0.5, 1e-20, kTwo32, kTwo53, std::nan(""), HUGE_VAL, -HUGE_VAL}) {
    EXPECT_FALSE(summarize({1, bad, 2}).counts) << bad;
  }
}

// Small counts stay in place in their integer encodings; whatever does not fit (a carry past the
// encoding, a fraction, a negative, a tiny fraction that rounds away, -0) gives what a ring of
// doubles holds, in the encoding a re-encode picks, and leaves the other slots alone.
TEST(CompactSubBucketsTest, InPlaceAddsMatchARingOfDoubles) {
  constexpr int kSlots = 4;
  constexpr size_t kWidth = 67;
  CompactSubBuckets b(kSlots, kWidth);
  std::vector<std::vector<double>> plain(kSlots, std::vector<double>(kWidth, 0.0));
  std::mt19937_64 rng(7);
  std::uniform_int_distribution<int> slot_of(0, kSlots - 1);
  std::uniform_int_distribution<int> count(0, 3);
  for (int step = 0; step < 20000; ++step) {
    const int slot = slot_of(rng);
    if (step % 997 == 996) {
      b.Clear(slot);
      plain[slot].assign(kWidth, 0.0);
      continue;
    }
    std::vector<double> delta(kWidth);
    for (double& d : delta) d = count(rng);
    switch (step % 500) {
      case 100:
        delta[3] = 70000;
        break;  // Past uint16 in one add.
      case 200:
        delta[5] = 1e-20;
        break;  // Rounds away against a count of 1 or more.
      case 300:
        delta[0] = -0.0;
        break;  // A count, and adds as 0.
      case 400:
        delta[kWidth - 1] = -1;
        break;
      case 499:
        delta[1] = 0.25;
        break;  // Fractional: doubles from here on.
    }
    const Encoding before = b.encoding(slot);
    b.Add(slot, delta, CompactSubBuckets::Summarize(delta));
    for (size_t i = 0; i < kWidth; ++i) plain[slot][i] += delta[i];
    CompactSubBuckets reencoded(1, kWidth);
    reencoded.Add(0, plain[slot]);
    ASSERT_EQ(b.encoding(slot), std::max(before, reencoded.encoding(0))) << step;
    for (int s = 0; s < kSlots; ++s) ASSERT_THAT(Read(b, s), ElementsAreArray(plain[s])) << step;
  }
}

}  // namespace
}  // namespace kldrift
