#include "client/cli/command_line.h"

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kldrift::cli {
namespace {

using ::testing::HasSubstr;
using ::testing::Optional;

const std::vector<FlagSpec>& Specs() {
  static const auto* specs = new std::vector<FlagSpec>{
      {"reference", false, "the reference file"},
      {"alpha", false, "smoothing pseudo-counts"},
      {"top", false, "how many bins"},
      {"json", true, "print JSON"},
      {"a-very-long-flag-name-indeed", false, "a flag wider than the help column"},
  };
  return *specs;
}

absl::StatusOr<ParsedFlags> Parse(const std::vector<std::string>& args) {
  return ParseFlags("kldrift compare", Specs(), args);
}

void ExpectInvalid(const absl::StatusOr<ParsedFlags>& result,
                   const std::vector<std::string>& fragments) {
  ASSERT_FALSE(result.ok()) << "expected an error containing " << fragments.front();
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
  for (const std::string& fragment : fragments) {
    EXPECT_THAT(std::string(result.status().message()), HasSubstr(fragment));
  }
}

TEST(ParseFlagsTest, NoArguments) {
  absl::StatusOr<ParsedFlags> flags = Parse({});
  ASSERT_TRUE(flags.ok()) << flags.status();
  EXPECT_FALSE(flags->Has("reference"));
  EXPECT_FALSE(flags->Has("json"));
  EXPECT_EQ(flags->Get("reference"), std::nullopt);
}

TEST(ParseFlagsTest, SeparateValue) {
  absl::StatusOr<ParsedFlags> flags = Parse({"--reference", "ref.json", "--alpha", "0.25"});
  ASSERT_TRUE(flags.ok()) << flags.status();
  EXPECT_TRUE(flags->Has("reference"));
  EXPECT_THAT(flags->Get("reference"), Optional(std::string("ref.json")));
  EXPECT_THAT(flags->Get("alpha"), Optional(std::string("0.25")));
  EXPECT_FALSE(flags->Has("top"));
}

TEST(ParseFlagsTest, InlineValue) {
  absl::StatusOr<ParsedFlags> flags = Parse({"--reference=a=b.json", "--top=3"});
  ASSERT_TRUE(flags.ok()) << flags.status();
  // Only the first '=' separates the name from the value.
  EXPECT_THAT(flags->Get("reference"), Optional(std::string("a=b.json")));
  EXPECT_THAT(flags->Get("top"), Optional(std::string("3")));
}

TEST(ParseFlagsTest, InlineEmptyValue) {
  absl::StatusOr<ParsedFlags> flags = Parse({"--reference="});
  ASSERT_TRUE(flags.ok()) << flags.status();
  EXPECT_THAT(flags->Get("reference"), Optional(std::string("")));
}

TEST(ParseFlagsTest, SeparateValueMayStartWithDash) {
  absl::StatusOr<ParsedFlags> flags = Parse({"--alpha", "-1"});
  ASSERT_TRUE(flags.ok()) << flags.status();
  EXPECT_THAT(flags->Get("alpha"), Optional(std::string("-1")));
}

TEST(ParseFlagsTest, Switch) {
  absl::StatusOr<ParsedFlags> flags = Parse({"--json", "--top", "2"});
  ASSERT_TRUE(flags.ok()) << flags.status();
  EXPECT_TRUE(flags->Has("json"));
  EXPECT_THAT(flags->Get("json"), Optional(std::string("true")));
  EXPECT_THAT(flags->Get("top"), Optional(std::string("2")));
}

TEST(ParseFlagsTest, UnknownFlagNamesFlagAndCommand) {
  ExpectInvalid(Parse({"--top", "1", "--bogus", "x"}),
                {"unknown flag --bogus", "'kldrift compare'"});
  ExpectInvalid(Parse({"--bogus=x"}), {"unknown flag --bogus ", "'kldrift compare'"});
  // A prefix of a known flag is not that flag.
  ExpectInvalid(Parse({"--ref", "x"}), {"unknown flag --ref "});
}

TEST(ParseFlagsTest, DuplicatedFlag) {
  ExpectInvalid(Parse({"--top", "1", "--top", "2"}), {"--top", "twice"});
  ExpectInvalid(Parse({"--top=1", "--top", "2"}), {"--top", "twice"});
  ExpectInvalid(Parse({"--json", "--json"}), {"--json", "twice"});
}

TEST(ParseFlagsTest, MissingValue) {
  ExpectInvalid(Parse({"--json", "--reference"}), {"--reference needs a value"});
}

TEST(ParseFlagsTest, SwitchGivenValue) {
  ExpectInvalid(Parse({"--json=true"}), {"--json takes no value"});
  // A separate word after a switch is not its value but a stray argument.
  ExpectInvalid(Parse({"--json", "true"}), {"unexpected argument \"true\""});
}

TEST(ParseFlagsTest, StrayPositionalArgument) {
  ExpectInvalid(Parse({"ref.json"}), {"unexpected argument \"ref.json\"", "'kldrift compare'"});
  ExpectInvalid(Parse({"--top", "1", "extra"}), {"unexpected argument \"extra\""});
  ExpectInvalid(Parse({"-j"}), {"unexpected argument \"-j\""});
  ExpectInvalid(Parse({"--"}), {"unexpected argument \"--\""});
}

absl::StatusOr<ParsedFlags> ParseOk(const std::vector<std::string>& args) {
  absl::StatusOr<ParsedFlags> flags = Parse(args);
  EXPECT_TRUE(flags.ok()) << flags.status();
  return flags;
}

TEST(GetDoubleTest, DefaultWhenAbsent) {
  absl::StatusOr<ParsedFlags> flags = ParseOk({});
  ASSERT_TRUE(flags.ok());
  absl::StatusOr<double> alpha = flags->GetDouble("alpha", 0.5);
  ASSERT_TRUE(alpha.ok()) << alpha.status();
  EXPECT_EQ(*alpha, 0.5);
}

TEST(GetDoubleTest, Parses) {
  for (const auto& [text, expected] : std::vector<std::pair<std::string, double>>{
           {"0.25", 0.25}, {"-1", -1.0}, {"1e-3", 1e-3}, {"0", 0.0}, {"3", 3.0}}) {
    SCOPED_TRACE(text);
    absl::StatusOr<ParsedFlags> flags = ParseOk({"--alpha", text});
    ASSERT_TRUE(flags.ok());
    absl::StatusOr<double> alpha = flags->GetDouble("alpha", 0.5);
    ASSERT_TRUE(alpha.ok()) << alpha.status();
    EXPECT_EQ(*alpha, expected);
  }
}

TEST(GetDoubleTest, ErrorsNameTheFlag) {
  for (const std::string text : {"abc", "", "1.5x", "nan", "NaN", "0.5.1"}) {
    SCOPED_TRACE(text);
    absl::StatusOr<ParsedFlags> flags = ParseOk({"--alpha=" + text});
    ASSERT_TRUE(flags.ok());
    absl::StatusOr<double> alpha = flags->GetDouble("alpha", 0.5);
    ASSERT_FALSE(alpha.ok());
    EXPECT_EQ(alpha.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(alpha.status().message()),
                HasSubstr("--alpha=" + text + " is not a number"));
  }
}

TEST(GetIntTest, DefaultWhenAbsent) {
  absl::StatusOr<ParsedFlags> flags = ParseOk({});
  ASSERT_TRUE(flags.ok());
  absl::StatusOr<long> top = flags->GetInt("top", 5);
  ASSERT_TRUE(top.ok()) << top.status();
  EXPECT_EQ(*top, 5);
}

TEST(GetIntTest, Parses) {
  for (const auto& [text, expected] : std::vector<std::pair<std::string, long>>{
           {"0", 0}, {"7", 7}, {"-1", -1}, {"9223372036854775807", 9223372036854775807L}}) {
    SCOPED_TRACE(text);
    absl::StatusOr<ParsedFlags> flags = ParseOk({"--top", text});
    ASSERT_TRUE(flags.ok());
    absl::StatusOr<long> top = flags->GetInt("top", 5);
    ASSERT_TRUE(top.ok()) << top.status();
    EXPECT_EQ(*top, expected);
  }
}

TEST(GetIntTest, ErrorsNameTheFlag) {
  for (const std::string text : {"abc", "", "1.5", "1e3", "3x", "9223372036854775808"}) {
    SCOPED_TRACE(text);
    absl::StatusOr<ParsedFlags> flags = ParseOk({"--top=" + text});
    ASSERT_TRUE(flags.ok());
    absl::StatusOr<long> top = flags->GetInt("top", 5);
    ASSERT_FALSE(top.ok());
    EXPECT_EQ(top.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(top.status().message()),
                HasSubstr("--top=" + text + " is not a whole number"));
  }
}

TEST(FlagHelpTest, ListsEveryFlag) {
  const std::string help = FlagHelp(Specs());
  for (const FlagSpec& spec : Specs()) {
    SCOPED_TRACE(spec.name);
    const std::string left = "--" + spec.name + (spec.is_switch ? "" : " VALUE");
    EXPECT_THAT(help, HasSubstr(left));
    EXPECT_THAT(help, HasSubstr(spec.help));
    // The flag and its help are on the same line.
    const size_t flag_at = help.find(left);
    ASSERT_NE(flag_at, std::string::npos);
    const size_t line_end = help.find('\n', flag_at);
    ASSERT_NE(line_end, std::string::npos);
    EXPECT_NE(help.substr(flag_at, line_end - flag_at).find(spec.help), std::string::npos);
  }
  EXPECT_EQ(std::count(help.begin(), help.end(), '\n'), static_cast<long>(Specs().size()));
  // Switches take no VALUE.
  EXPECT_EQ(help.find("--json VALUE"), std::string::npos);
}

}  // namespace
}  // namespace kldrift::cli
