#include "client/cli/json_writer.h"

#include <bit>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <random>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kldrift::cli {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

TEST(JsonWriterTest, EmptyContainers) {
  JsonWriter object;
  object.BeginObject();
  object.EndObject();
  EXPECT_EQ(object.Finish(), "{}\n");

  JsonWriter array;
  array.BeginArray();
  array.EndArray();
  EXPECT_EQ(array.Finish(), "[]\n");
}

TEST(JsonWriterTest, NestingAndSeparators) {
  JsonWriter json;
  json.BeginObject();
  json.Key("a");
  json.Integer(1);
  json.Key("b");
  json.BeginArray();
  json.Integer(1);
  json.String("x");
  json.BeginObject();
  json.EndObject();
  json.BeginArray();
  json.EndArray();
  json.BeginObject();
  json.Key("k");
  json.Number(0.5);
  json.EndObject();
  json.EndArray();
  json.Key("c");
  json.BeginObject();
  json.Key("d");
  json.String("e");
  json.Key("f");
  json.BeginArray();
  json.Integer(2);
  json.EndArray();
  json.EndObject();
  json.Key("g");
  json.String("h");
  json.EndObject();
  EXPECT_EQ(json.Finish(),
            R"({"a": 1, "b": [1, "x", {}, [], {"k": 0.5}], "c": {"d": "e", "f": [2]}, "g": "h"})"
            "\n");
}

TEST(JsonWriterTest, TopLevelArrayOfObjects) {
  JsonWriter json;
  json.BeginArray();
  for (int i = 0; i < 3; ++i) {
    json.BeginObject();
    json.Key("i");
    json.Integer(i);
    json.EndObject();
  }
  json.EndArray();
  EXPECT_EQ(json.Finish(), "[{\"i\": 0}, {\"i\": 1}, {\"i\": 2}]\n");
}

TEST(JsonWriterTest, FinishDoesNotConsume) {
  JsonWriter json;
  json.BeginArray();
  json.Integer(1);
  json.EndArray();
  EXPECT_EQ(json.Finish(), "[1]\n");
  EXPECT_EQ(json.Finish(), "[1]\n");
}

std::string Quoted(absl::string_view value) {
  JsonWriter json;
  json.String(value);
  std::string out = json.Finish();
  EXPECT_EQ(out.back(), '\n');
  out.pop_back();
  return out;
}

TEST(JsonWriterTest, StringEscaping) {
  EXPECT_EQ(Quoted("plain"), "\"plain\"");
  EXPECT_EQ(Quoted(""), "\"\"");
  EXPECT_EQ(Quoted("say \"hi\""), R"("say \"hi\"")");
  EXPECT_EQ(Quoted("a\\b"), R"("a\\b")");
  EXPECT_EQ(Quoted("\n\r\t"), R"("\n\r\t")");
  EXPECT_EQ(Quoted("/"), "\"/\"");
  // UTF-8 passes through unchanged.
  EXPECT_EQ(Quoted("caf\xc3\xa9"), "\"caf\xc3\xa9\"");
}

TEST(JsonWriterTest, ControlCharactersUseUnicodeEscapes) {
  EXPECT_EQ(Quoted(std::string("\0", 1)), R"("\u0000")");
  EXPECT_EQ(Quoted("\x01"), R"("\u0001")");
  EXPECT_EQ(Quoted("\b\f"), R"("\u0008\u000c")");
  EXPECT_EQ(Quoted("\x1f"), R"("\u001f")");
  EXPECT_EQ(Quoted("a\x1b[0m"), R"("a\u001b[0m")");
  // Every byte below 0x20 is escaped: the output holds no raw control
  // character.
  std::string all;
  for (int c = 0; c < 0x20; ++c) all += static_cast<char>(c);
  const std::string quoted = Quoted(all);
  for (char c : quoted) EXPECT_GE(static_cast<unsigned char>(c), 0x20);
  // 0x20 itself is printable.
  EXPECT_EQ(Quoted(" "), "\" \"");
}

TEST(JsonWriterTest, KeysAreEscaped) {
  JsonWriter json;
  json.BeginObject();
  json.Key("a\"b\n");
  json.Integer(0);
  json.EndObject();
  EXPECT_EQ(json.Finish(), "{\"a\\\"b\\n\": 0}\n");
}

std::string NumberText(double value) {
  JsonWriter json;
  json.Number(value);
  std::string out = json.Finish();
  out.pop_back();
  return out;
}

TEST(JsonWriterTest, NonFiniteNumbersAreStrings) {
  EXPECT_EQ(NumberText(kInf), "\"Infinity\"");
  EXPECT_EQ(NumberText(-kInf), "\"-Infinity\"");
  EXPECT_EQ(NumberText(kNaN), "\"NaN\"");
  EXPECT_EQ(NumberText(-kNaN), "\"NaN\"");

  JsonWriter json;
  json.BeginArray();
  json.Number(kInf);
  json.Number(1);
  json.Number(kNaN);
  json.EndArray();
  EXPECT_EQ(json.Finish(), "[\"Infinity\", 1, \"NaN\"]\n");
}

TEST(JsonWriterTest, SimpleNumbers) {
  EXPECT_EQ(NumberText(0.0), "0");
  EXPECT_EQ(NumberText(42.0), "42");
  EXPECT_EQ(NumberText(-3.0), "-3");
  EXPECT_EQ(NumberText(0.1), "0.1");
  EXPECT_EQ(NumberText(0.5), "0.5");
  EXPECT_EQ(NumberText(1e-300), "1e-300");
  // 0.1 + 0.2 is not 0.3; the shortest form that reads back is 17 digits long.
  EXPECT_EQ(NumberText(0.1 + 0.2), "0.30000000000000004");
}

TEST(JsonWriterTest, Integer) {
  EXPECT_EQ(NumberText(0), "0");
  JsonWriter json;
  json.BeginArray();
  json.Integer(0);
  json.Integer(-17);
  json.Integer(9007199254740993LL);  // Not representable as a double: must not
                                     // go through one.
  json.Integer(std::numeric_limits<long long>::max());
  json.Integer(std::numeric_limits<long long>::min());
  json.EndArray();
  EXPECT_EQ(json.Finish(),
            "[0, -17, 9007199254740993, 9223372036854775807, "
            "-9223372036854775808]\n");
}

// Significant digits of a decimal such as "-1.2345e-05", "120" or "0.0012".
int SignificantDigits(const std::string& text) {
  std::string mantissa = text.substr(0, text.find_first_of("eE"));
  std::string digits;
  for (char c : mantissa) {
    if (c >= '0' && c <= '9') digits += c;
  }
  const size_t first = digits.find_first_not_of('0');
  if (first == std::string::npos) return 1;
  const size_t last = digits.find_last_not_of('0');
  return static_cast<int>(last - first + 1);
}

bool ParsesExactlyTo(const std::string& text, double value) {
  errno = 0;
  char* end = nullptr;
  const double parsed = std::strtod(text.c_str(), &end);
  if (end != text.c_str() + text.size()) return false;
  return std::bit_cast<uint64_t>(parsed) == std::bit_cast<uint64_t>(value);
}

void ExpectShortestRoundTrip(double value) {
  const std::string text = FormatDouble(value);
  ASSERT_TRUE(ParsesExactlyTo(text, value)) << text << " does not read back as %a " << value;
  // Never longer than the always-round-tripping %.17g form.
  char longest[64];
  std::snprintf(longest, sizeof(longest), "%.17g", value);
  EXPECT_LE(text.size(), std::string(longest).size()) << text << " vs " << longest;
  // Shortest: rounding to one digit fewer does not read back. Skipped for exact
  // powers of two, whose rounding interval is lopsided; for single-digit
  // outputs; and for integers written out in full beyond 2^53 (e.g.
  // 754385304152857984), which are the exact value and no longer than the
  // scientific form.
  const int digits = SignificantDigits(text);
  const uint64_t bits = std::bit_cast<uint64_t>(value);
  const bool full_integer =
      text.find_first_of(".eE") == std::string::npos && std::fabs(value) >= 9007199254740992.0;
  if (digits > 1 && !full_integer && (bits & ((uint64_t{1} << 52) - 1)) != 0) {
    char shorter[64];
    std::snprintf(shorter, sizeof(shorter), "%.*e", digits - 2, value);
    EXPECT_FALSE(ParsesExactlyTo(shorter, value))
        << text << " is not shortest: " << shorter << " also reads back";
  }
  // Valid JSON number syntax: no leading '+', no "inf"/"nan", no leading '.'.
  EXPECT_EQ(text.find_first_not_of("0123456789.eE+-"), std::string::npos) << text;
  EXPECT_NE(text.front(), '+');
  EXPECT_NE(text.front(), '.');
}

TEST(JsonWriterTest, NumberShortestRoundTripRandomBits) {
  std::mt19937_64 rng(20240611);
  int tested = 0;
  for (int i = 0; i < 200000; ++i) {
    const double value = std::bit_cast<double>(rng());
    if (!std::isfinite(value)) continue;
    ++tested;
    ExpectShortestRoundTrip(value);
    if (HasFailure()) return;
  }
  EXPECT_GT(tested, 190000);
}

TEST(JsonWriterTest, NumberShortestRoundTripTypicalValues) {
  std::mt19937_64 rng(7);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  std::uniform_int_distribution<int> exponent(-20, 20);
  for (int i = 0; i < 100000; ++i) {
    const double value = unit(rng) * std::pow(10.0, exponent(rng)) * (i % 2 == 0 ? 1 : -1);
    ExpectShortestRoundTrip(value);
    if (HasFailure()) return;
  }
}

TEST(JsonWriterTest, NumberEdgeValues) {
  for (double value :
       {0.0, -0.0, std::numeric_limits<double>::min(), std::numeric_limits<double>::denorm_min(),
        std::numeric_limits<double>::max(), -std::numeric_limits<double>::max(),
        std::numeric_limits<double>::epsilon(), 9007199254740992.0, 1e21, 1e22,
        123456789012345680.0, 5e-324, 0.1, 1.0 / 3.0, 2.0 / 3.0}) {
    SCOPED_TRACE(value);
    ExpectShortestRoundTrip(value);
    // Written through the writer, the number reads back too.
    EXPECT_TRUE(ParsesExactlyTo(NumberText(value), value)) << NumberText(value);
  }
}

}  // namespace
TEST(JsonWriterTest, BooleansAreJsonLiterals) {
  JsonWriter json;
  json.BeginObject();
  json.Key("yes");
  json.Bool(true);
  json.Key("no");
  json.Bool(false);
  json.EndObject();
  EXPECT_EQ(json.Finish(), "{\"yes\": true, \"no\": false}\n");
}

}  // namespace kldrift::cli
