#include "server/core/stream_key.h"

#include <string>
#include <vector>

#include "absl/container/btree_set.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/hash/hash_testing.h"
#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kldrift {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

TEST(ValidateNameTest, AcceptsEveryAllowedCharacter) {
  EXPECT_TRUE(ValidateName("model", "fraud-scorer_v2.1:prod/eu", false).ok());
  EXPECT_TRUE(ValidateName("model", "abcdefghijklmnopqrstuvwxyz", false).ok());
  EXPECT_TRUE(ValidateName("model", "ABCDEFGHIJKLMNOPQRSTUVWXYZ", false).ok());
  EXPECT_TRUE(ValidateName("model", "0123456789", false).ok());
  EXPECT_TRUE(ValidateName("model", "._:/-", false).ok());
  EXPECT_TRUE(ValidateName("model", "x", false).ok());
}

TEST(ValidateNameTest, LengthLimitIs128) {
  EXPECT_TRUE(ValidateName("signal", std::string(kMaxNameLength, 'a'), false).ok());
  const absl::Status s = ValidateName("signal", std::string(129, 'a'), false);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), AllOf(HasSubstr("signal"), HasSubstr("129"), HasSubstr("128")));
}

TEST(ValidateNameTest, EmptyOnlyWhenAllowed) {
  EXPECT_TRUE(ValidateName("model_version", "", true).ok());
  const absl::Status s = ValidateName("model", "", false);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), AllOf(HasSubstr("model"), HasSubstr("empty")));
}

TEST(ValidateNameTest, SpaceIsNamedWithItsPosition) {
  const absl::Status s = ValidateName("signal", "ab cd", false);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), AllOf(HasSubstr("signal"), HasSubstr("' '"), HasSubstr("position 2")));
}

TEST(ValidateNameTest, NewlineIsEscapedAndPositioned) {
  const absl::Status s = ValidateName("model", "abc\n", false);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), AllOf(HasSubstr("model"), HasSubstr("0xa"), HasSubstr("position 3"),
                                 HasSubstr("\\n")));
  // The raw newline is not echoed back into the message.
  EXPECT_EQ(std::string(s.message()).find('\n'), std::string::npos);
}

TEST(ValidateNameTest, UnicodeIsRejectedAtItsFirstByte) {
  // "é" is 0xC3 0xA9 in UTF-8.
  const absl::Status s = ValidateName("model_version", "v\xC3\xA9", true);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(),
              AllOf(HasSubstr("model_version"), HasSubstr("0xc3"), HasSubstr("position 1")));
}

TEST(ValidateNameTest, OtherPunctuationIsRejected) {
  for (const char* name : {"a,b", "a;b", "a\"b", "a\\b", "a*b", "a=b", "a{b", "a\tb"}) {
    EXPECT_EQ(ValidateName("signal", name, false).code(), absl::StatusCode::kInvalidArgument)
        << name;
  }
  const absl::Status nul = ValidateName("signal", std::string("a\0b", 3), false);
  EXPECT_THAT(nul.message(), AllOf(HasSubstr("0x0"), HasSubstr("position 1")));
}

TEST(ValidateStreamKeyTest, ChecksEachPartAndNamesIt) {
  EXPECT_TRUE(ValidateStreamKey({"m", "v1", "s"}).ok());
  EXPECT_TRUE(ValidateStreamKey({"m", "", "s"}).ok());

  absl::Status s = ValidateStreamKey({"", "v1", "s"});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("model is empty"));

  s = ValidateStreamKey({"m", "v 1", "s"});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), AllOf(HasSubstr("model_version"), HasSubstr("position 1")));

  s = ValidateStreamKey({"m", "v1", ""});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("signal is empty"));

  s = ValidateStreamKey({"m", "v1", std::string(200, 's')});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), AllOf(HasSubstr("signal"), HasSubstr("200")));
}

TEST(StreamKeyTest, ToString) {
  EXPECT_EQ((StreamKey{"m", "v1", "s"}).ToString(), "m/v1/s");
  EXPECT_EQ((StreamKey{"m", "", "s"}).ToString(), "m//s");
}

TEST(StreamKeyTest, OrderingIsLexicographicByModelVersionSignal) {
  const StreamKey a{"a", "z", "z"};
  const StreamKey b{"b", "", ""};
  const StreamKey b1{"b", "1", "a"};
  const StreamKey b1b{"b", "1", "b"};
  EXPECT_LT(a, b);
  EXPECT_LT(b, b1);
  EXPECT_LT(b1, b1b);
  EXPECT_EQ(b1, (StreamKey{"b", "1", "a"}));
  EXPECT_NE(b1, b1b);

  absl::btree_set<StreamKey> ordered = {b1b, a, b1, b};
  std::vector<StreamKey> got(ordered.begin(), ordered.end());
  EXPECT_EQ(got, (std::vector<StreamKey>{a, b, b1, b1b}));
}

TEST(StreamKeyTest, HashIsUsableInAbslContainers) {
  EXPECT_TRUE(absl::VerifyTypeImplementsAbslHashCorrectly({
      StreamKey{"m", "v", "s"},
      StreamKey{"m", "", "s"},
      StreamKey{"m", "vs", ""},
      StreamKey{"mv", "", "s"},
      StreamKey{"", "", ""},
      StreamKey{"m", "v", "t"},
  }));
  absl::flat_hash_map<StreamKey, int> map;
  map[{"m", "v", "s"}] = 1;
  map[{"m", "", "s"}] = 2;
  // Parts that concatenate to the same text are still different keys.
  map[{"m", "vs", ""}] = 3;
  EXPECT_EQ(map.size(), 3u);
  EXPECT_EQ(map.at({"m", "v", "s"}), 1);
  EXPECT_EQ(map.at({"m", "", "s"}), 2);
  EXPECT_EQ(map.at({"m", "vs", ""}), 3);
  EXPECT_FALSE(map.contains({"m", "v", "x"}));

  absl::flat_hash_set<StreamKey> set = {{"a", "b", "c"}, {"a", "b", "c"}};
  EXPECT_EQ(set.size(), 1u);
}

}  // namespace
}  // namespace kldrift
