// Tests of the token file, model patterns, constant-time comparison and TokenAuthorizer.
#include "server/service/auth.h"

#include <stdlib.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/core/constant_time.h"

namespace kldrift {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

// Tokens used throughout: long enough, made of the allowed characters.
constexpr char kReaderToken[] = "reader-token-0123456789abcdef";
constexpr char kWriterToken[] = "writer-token-0123456789abcdef";
constexpr char kAdminToken[] = "admin-token-0123456789abcdef";
constexpr char kScopedToken[] = "scoped.writer_token~+/=0123456789";

std::string Bearer(absl::string_view token) { return absl::StrCat("Bearer ", token); }

// --- TokenTable::Parse ---------------------------------------------------------------------------

TEST(TokenTableTest, ParsesEntriesSkippingCommentsAndBlankLines) {
  const std::string text = absl::StrCat(
      "# kldriftd tokens\n"
      "\n",
      "   \t  \n",                                          // Only whitespace.
      "  # an indented comment\n",                          //
      kReaderToken, " reader *\n",                          // Line 5.
      "\t", kWriterToken, "\twriter\tfraud-*,ranker,\r\n",  // Line 6: tabs, CRLF.
      kAdminToken, "   admin   *\n",                        // Line 7.
      "# trailing comment without newline");
  absl::StatusOr<TokenTable> table = TokenTable::Parse(text);
  ASSERT_TRUE(table.ok()) << table.status();
  EXPECT_EQ(table->size(), 3u);

  const TokenTable::Entry* reader = table->Find(kReaderToken);
  ASSERT_NE(reader, nullptr);
  EXPECT_EQ(reader->role, Role::kReader);
  EXPECT_EQ(reader->line, 5);
  EXPECT_THAT(reader->model_patterns, ::testing::ElementsAre("*"));

  const TokenTable::Entry* writer = table->Find(kWriterToken);
  ASSERT_NE(writer, nullptr);
  EXPECT_EQ(writer->role, Role::kWriter);
  EXPECT_EQ(writer->line, 6);
  EXPECT_EQ(writer->token, kWriterToken);  // No trailing \r.
  EXPECT_THAT(writer->model_patterns, ::testing::ElementsAre("fraud-*", "ranker"));

  const TokenTable::Entry* admin = table->Find(kAdminToken);
  ASSERT_NE(admin, nullptr);
  EXPECT_EQ(admin->role, Role::kAdmin);
  EXPECT_EQ(admin->line, 7);

  EXPECT_EQ(table->Find("not-a-token-in-the-table"), nullptr);
  EXPECT_EQ(table->Find(""), nullptr);
}

TEST(TokenTableTest, ParsesEveryRole) {
  for (const auto& [name, role] : std::vector<std::pair<std::string, Role>>{
           {"reader", Role::kReader}, {"writer", Role::kWriter}, {"admin", Role::kAdmin}}) {
    absl::StatusOr<TokenTable> table =
        TokenTable::Parse(absl::StrCat(kAdminToken, " ", name, " *"));
    ASSERT_TRUE(table.ok()) << name << ": " << table.status();
    ASSERT_NE(table->Find(kAdminToken), nullptr);
    EXPECT_EQ(table->Find(kAdminToken)->role, role) << name;
    EXPECT_EQ(RoleName(role), name);
  }
}

TEST(TokenTableTest, AcceptsTokenLengthsAndCharactersAtTheLimits) {
  const std::string shortest(16, 'a');
  const std::string longest(512, 'b');
  const std::string every_char =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._~+/=-";
  absl::StatusOr<TokenTable> table = TokenTable::Parse(
      absl::StrCat(shortest, " reader *\n", longest, " reader *\n", every_char, " reader *\n"));
  ASSERT_TRUE(table.ok()) << table.status();
  EXPECT_EQ(table->size(), 3u);
  EXPECT_NE(table->Find(shortest), nullptr);
  EXPECT_NE(table->Find(longest), nullptr);
  EXPECT_NE(table->Find(every_char), nullptr);
}

struct BadLine {
  std::string description;
  std::string line;    // Preceded in the file by two good lines, so it is line 3 (or 4, below).
  std::string secret;  // Token text that must not appear in the message.
  std::string expect;  // A part of the message.
};

TEST(TokenTableTest, ErrorsNameTheLineAndNeverTheToken) {
  const std::string secret = "s3cret-T0ken-value-which-must-not-leak";
  const std::vector<BadLine> cases = {
      {"two fields", absl::StrCat(secret, " writer"), secret, "has 2 fields, not 3"},
      {"one field", secret, secret, "has 1 fields, not 3"},
      {"four fields", absl::StrCat(secret, " writer fraud-* extra"), secret, "has 4 fields"},
      {"comment after the fields", absl::StrCat(secret, " writer * # note"), secret,
       "has 5 fields"},
      {"token too short", "s3cret-15-chars writer *", "s3cret-15-chars", "15 characters"},
      {"token too long", absl::StrCat(std::string(513, 'x'), " writer *"), std::string(513, 'x'),
       "513 characters"},
      {"illegal character", "s3cret!token-with-a-bang writer *", "s3cret!token-with-a-bang",
       "outside [A-Za-z0-9._~+/=-]"},
      {"non-ASCII character", "s3cret-t\xc3\xb6ken-0123456 writer *", "s3cret-t\xc3\xb6ken",
       "outside"},
      {"unknown role", absl::StrCat(secret, " root *"), secret, "role \"root\""},
      {"role is not a role", absl::StrCat(secret, " readers *"), secret, "role \"readers\""},
      {"no pattern", absl::StrCat(secret, " writer ,,"), secret, "no model pattern"},
      {"duplicate token", absl::StrCat(kWriterToken, " admin *"), kWriterToken,
       "repeats the token of line 2"},
  };
  for (const BadLine& c : cases) {
    SCOPED_TRACE(c.description);
    const std::string text =
        absl::StrCat(kReaderToken, " reader *\n", kWriterToken, " writer *\n", c.line, "\n");
    absl::StatusOr<TokenTable> table = TokenTable::Parse(text);
    ASSERT_FALSE(table.ok());
    EXPECT_EQ(table.status().code(), absl::StatusCode::kInvalidArgument);
    const std::string message(table.status().message());
    EXPECT_THAT(message, HasSubstr("line 3"));
    EXPECT_THAT(message, HasSubstr(c.expect));
    EXPECT_THAT(message, Not(HasSubstr(c.secret)));
    // No other token of the file either, nor a recognisable part of one.
    EXPECT_THAT(message, Not(HasSubstr(kReaderToken)));
    EXPECT_THAT(message, Not(HasSubstr(kWriterToken)));
    EXPECT_THAT(message, Not(HasSubstr("s3cret")));
    EXPECT_THAT(message, Not(HasSubstr("0123456789abcdef")));
  }
}

TEST(TokenTableTest, ErrorLineNumbersCountCommentsAndBlankLines) {
  absl::StatusOr<TokenTable> table =
      TokenTable::Parse(absl::StrCat("# header\n\n", kReaderToken, " reader *\n\n# x\nbad\n"));
  ASSERT_FALSE(table.ok());
  EXPECT_THAT(table.status().message(), HasSubstr("line 6"));
}

TEST(TokenTableTest, DuplicateTokensAreRejectedWhateverTheirRoles) {
  absl::StatusOr<TokenTable> table = TokenTable::Parse(
      absl::StrCat(kAdminToken, " admin *\n# x\n", kAdminToken, " reader fraud-*\n"));
  ASSERT_FALSE(table.ok());
  EXPECT_EQ(table.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(table.status().message(), HasSubstr("line 3"));
  EXPECT_THAT(table.status().message(), HasSubstr("repeats the token of line 1"));
  EXPECT_THAT(table.status().message(), Not(HasSubstr(kAdminToken)));
  // Tokens that differ only in case are different tokens.
  std::string upper = kAdminToken;
  upper[0] = 'A';
  EXPECT_TRUE(TokenTable::Parse(absl::StrCat(kAdminToken, " admin *\n", upper, " admin *\n")).ok());
}

TEST(TokenTableTest, AFileWithoutTokensIsAnError) {
  for (const std::string text : {"", "\n\n", "# only a comment\n   \n# another\n"}) {
    absl::StatusOr<TokenTable> table = TokenTable::Parse(text);
    ASSERT_FALSE(table.ok()) << "\"" << text << "\"";
    EXPECT_EQ(table.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(table.status().message(), HasSubstr("no token"));
  }
}

// --- ModelPatternMatches -------------------------------------------------------------------------

struct PatternCase {
  std::string pattern;
  std::string model;
  bool matches;
};

TEST(ModelPatternTest, MatchesGlobs) {
  const std::vector<PatternCase> cases = {
      // Exact.
      {"fraud-scorer", "fraud-scorer", true},
      {"fraud-scorer", "fraud-scorer2", false},
      {"fraud-scorer", "fraud-score", false},
      {"fraud-scorer", "Fraud-scorer", false},
      {"fraud-scorer", "", false},
      // Prefix.
      {"fraud-*", "fraud-scorer", true},
      {"fraud-*", "fraud-", true},
      {"fraud-*", "fraud", false},
      {"fraud-*", "xfraud-scorer", false},
      {"fraud-*", "", false},
      // Suffix.
      {"*-scorer", "fraud-scorer", true},
      {"*-scorer", "-scorer", true},
      {"*-scorer", "fraud-scorer-v2", false},
      {"*-scorer", "scorer", false},
      // Several stars, with backtracking.
      {"a*b*c", "abc", true},
      {"a*b*c", "aXXbYYc", true},
      {"a*b*c", "abcbc", true},
      {"a*b*c", "abbbc", true},
      {"a*b*c", "acb", false},
      {"a*b*c", "aXbXcX", false},
      {"a*b*c", "bc", false},
      {"*ab", "aab", true},
      {"*ab", "abab", true},
      {"*ab", "aba", false},
      {"a*a", "a", false},
      {"a*a", "aa", true},
      {"fraud-*-v*", "fraud-scorer-v2", true},
      {"fraud-*-v*", "fraud-scorer-2", false},
      // Everything.
      {"*", "anything", true},
      {"*", "", true},
      {"**", "x", true},
      {"***", "", true},
      // Empty pattern.
      {"", "", true},
      {"", "a", false},
  };
  for (const PatternCase& c : cases) {
    EXPECT_EQ(ModelPatternMatches(c.pattern, c.model), c.matches)
        << "pattern \"" << c.pattern << "\", model \"" << c.model << "\"";
  }
}

// --- ConstantTimeEquals --------------------------------------------------------------------------

TEST(ConstantTimeEqualsTest, ComparesContentsAndLengths) {
  EXPECT_TRUE(ConstantTimeEquals("", ""));
  EXPECT_TRUE(ConstantTimeEquals("abc", "abc"));
  EXPECT_TRUE(ConstantTimeEquals(kAdminToken, std::string(kAdminToken)));
  EXPECT_FALSE(ConstantTimeEquals("abc", "abd"));  // Last byte.
  EXPECT_FALSE(ConstantTimeEquals("abc", "xbc"));  // First byte.
  EXPECT_FALSE(ConstantTimeEquals("abc", "ABC"));
  // Different lengths, including a prefix either way and the empty string.
  EXPECT_FALSE(ConstantTimeEquals("abc", "abcd"));
  EXPECT_FALSE(ConstantTimeEquals("abcd", "abc"));
  EXPECT_FALSE(ConstantTimeEquals("", "a"));
  EXPECT_FALSE(ConstantTimeEquals("a", ""));
  // NUL bytes are content, not terminators (a shorter string is not padded with zeros).
  EXPECT_FALSE(ConstantTimeEquals(absl::string_view("a\0", 2), "a"));
  EXPECT_FALSE(ConstantTimeEquals("a", absl::string_view("a\0", 2)));
  EXPECT_TRUE(ConstantTimeEquals(absl::string_view("a\0b", 3), absl::string_view("a\0b", 3)));
  EXPECT_FALSE(ConstantTimeEquals(absl::string_view("a\0b", 3), absl::string_view("a\0c", 3)));
  // High bytes.
  EXPECT_FALSE(ConstantTimeEquals("\xff", "\x7f"));
  EXPECT_TRUE(ConstantTimeEquals("\xff\x80", "\xff\x80"));
}

// --- TokenAuthorizer -----------------------------------------------------------------------------

class TokenAuthorizerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char dir_template[] = "/tmp/kldrift-auth-test-XXXXXX";
    ASSERT_NE(mkdtemp(dir_template), nullptr);
    dir_ = dir_template;
    path_ = dir_ + "/tokens";
  }
  void TearDown() override {
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
  }

  void WriteTokens(const std::string& text) {
    std::ofstream out(path_, std::ios::trunc);
    out << text;
    ASSERT_TRUE(out.good());
  }

  std::unique_ptr<TokenAuthorizer> CreateAuthorizer() {
    absl::StatusOr<std::unique_ptr<TokenAuthorizer>> created = TokenAuthorizer::Create(path_);
    EXPECT_TRUE(created.ok()) << created.status();
    return created.ok() ? *std::move(created) : nullptr;
  }

  // Reader, writer and admin on every model, and a writer scoped to fraud-* and ranker.
  std::string StandardTokens() const {
    return absl::StrCat(kReaderToken, " reader *\n", kWriterToken, " writer *\n", kAdminToken,
                        " admin *\n", kScopedToken, " writer fraud-*,ranker\n");
  }

  std::string dir_;
  std::string path_;
};

TEST_F(TokenAuthorizerTest, EveryRoleAgainstEveryRequiredRole) {
  WriteTokens(StandardTokens());
  std::unique_ptr<TokenAuthorizer> authorizer = CreateAuthorizer();
  ASSERT_NE(authorizer, nullptr);
  EXPECT_EQ(authorizer->token_count(), 4u);
  const std::vector<std::pair<std::string, Role>> tokens = {
      {kReaderToken, Role::kReader}, {kWriterToken, Role::kWriter}, {kAdminToken, Role::kAdmin}};
  for (const auto& [token, has] : tokens) {
    for (Role needs : {Role::kReader, Role::kWriter, Role::kAdmin}) {
      SCOPED_TRACE(absl::StrCat(RoleName(has), " token, call needs ", RoleName(needs)));
      for (const std::string model : {"", "fraud-scorer"}) {
        const absl::Status status = authorizer->Authorize(Bearer(token), {needs, model});
        if (static_cast<int>(has) >= static_cast<int>(needs)) {
          EXPECT_TRUE(status.ok()) << status;
        } else {
          EXPECT_EQ(status.code(), absl::StatusCode::kPermissionDenied) << status;
          EXPECT_THAT(status.message(), HasSubstr(absl::StrCat("needs the ", RoleName(needs))));
          EXPECT_THAT(status.message(), HasSubstr(absl::StrCat("has ", RoleName(has))));
          EXPECT_THAT(status.message(), Not(HasSubstr(token)));
        }
      }
    }
  }
}

TEST_F(TokenAuthorizerTest, ModelPatternsAllowAndDeny) {
  WriteTokens(StandardTokens());
  std::unique_ptr<TokenAuthorizer> authorizer = CreateAuthorizer();
  ASSERT_NE(authorizer, nullptr);
  const std::string scoped = Bearer(kScopedToken);
  for (const std::string model : {"fraud-scorer", "fraud-", "ranker"}) {
    EXPECT_TRUE(authorizer->Authorize(scoped, {Role::kWriter, model}).ok()) << model;
    EXPECT_TRUE(authorizer->Authorize(scoped, {Role::kReader, model}).ok()) << model;
    EXPECT_TRUE(authorizer->MayRead(scoped, model)) << model;
  }
  for (const std::string model : {"ranker2", "fraud", "payments", "xfraud-scorer"}) {
    const absl::Status status = authorizer->Authorize(scoped, {Role::kWriter, model});
    EXPECT_EQ(status.code(), absl::StatusCode::kPermissionDenied) << model;
    EXPECT_THAT(status.message(), HasSubstr(absl::StrCat("\"", model, "\"")));
    EXPECT_THAT(status.message(), HasSubstr("line 4"));
    EXPECT_THAT(status.message(), Not(HasSubstr(kScopedToken)));
    EXPECT_EQ(authorizer->Authorize(scoped, {Role::kReader, model}).code(),
              absl::StatusCode::kPermissionDenied);
    EXPECT_FALSE(authorizer->MayRead(scoped, model)) << model;
    // Tokens on "*" may.
    EXPECT_TRUE(authorizer->MayRead(Bearer(kReaderToken), model)) << model;
  }
  // A call about no model in particular (e.g. listing every model) needs only the role.
  EXPECT_TRUE(authorizer->Authorize(scoped, {Role::kWriter, ""}).ok());
  // The role is checked even on a model the token may touch.
  EXPECT_EQ(authorizer->Authorize(scoped, {Role::kAdmin, "fraud-scorer"}).code(),
            absl::StatusCode::kPermissionDenied);
  // MayRead refuses what Authorize refuses.
  EXPECT_FALSE(authorizer->MayRead("", "fraud-scorer"));
  EXPECT_FALSE(authorizer->MayRead(Bearer("unknown-token-0123456789"), "fraud-scorer"));
}

TEST_F(TokenAuthorizerTest, MissingOrMalformedOrUnknownTokensAreUnauthenticated) {
  WriteTokens(StandardTokens());
  std::unique_ptr<TokenAuthorizer> authorizer = CreateAuthorizer();
  ASSERT_NE(authorizer, nullptr);
  const std::string admin = kAdminToken;
  const std::vector<std::string> refused = {
      "",                                   // No metadata.
      admin,                                // No "Bearer " prefix.
      absl::StrCat("Basic ", admin),        // Another scheme.
      "Bearer",                             // Prefix only.
      "Bearer ",                            // Empty token.
      absl::StrCat("Bearer  ", admin),      // The token would start with a space.
      absl::StrCat("Bearer ", admin, " "),  // Trailing space: not the token.
      absl::StrCat(" Bearer ", admin),
      Bearer(admin.substr(0, admin.size() - 1)),  // A prefix of a token.
      Bearer(absl::StrCat(admin, "0")),           // A token plus one character.
      Bearer("unknown-token-0123456789"),
  };
  for (const std::string& authorization : refused) {
    for (Role needs : {Role::kReader, Role::kAdmin}) {
      const absl::Status status = authorizer->Authorize(authorization, {needs, "fraud-scorer"});
      EXPECT_EQ(status.code(), absl::StatusCode::kUnauthenticated) << "\"" << authorization << "\"";
      EXPECT_THAT(status.message(), Not(HasSubstr(admin.substr(0, 16))));
    }
  }
  // The message for no metadata says what to send.
  EXPECT_THAT(authorizer->Authorize("", {Role::kReader, ""}).message(),
              HasSubstr("authorization: Bearer <token>"));
}

TEST_F(TokenAuthorizerTest, ReloadReplacesTheTable) {
  WriteTokens(absl::StrCat(kWriterToken, " writer *\n"));
  std::unique_ptr<TokenAuthorizer> authorizer = CreateAuthorizer();
  ASSERT_NE(authorizer, nullptr);
  EXPECT_TRUE(authorizer->Authorize(Bearer(kWriterToken), {Role::kWriter, "m"}).ok());
  EXPECT_EQ(authorizer->Authorize(Bearer(kAdminToken), {Role::kReader, "m"}).code(),
            absl::StatusCode::kUnauthenticated);

  // The writer is revoked, an admin added, and the reader's scope changes on a second reload.
  WriteTokens(absl::StrCat(kAdminToken, " admin *\n", kReaderToken, " reader m\n"));
  ASSERT_TRUE(authorizer->Reload().ok());
  EXPECT_EQ(authorizer->token_count(), 2u);
  EXPECT_EQ(authorizer->Authorize(Bearer(kWriterToken), {Role::kWriter, "m"}).code(),
            absl::StatusCode::kUnauthenticated);
  EXPECT_TRUE(authorizer->Authorize(Bearer(kAdminToken), {Role::kAdmin, ""}).ok());
  EXPECT_TRUE(authorizer->Authorize(Bearer(kReaderToken), {Role::kReader, "m"}).ok());
  EXPECT_FALSE(authorizer->Authorize(Bearer(kReaderToken), {Role::kReader, "n"}).ok());

  WriteTokens(absl::StrCat(kAdminToken, " admin *\n", kReaderToken, " reader n\n"));
  ASSERT_TRUE(authorizer->Reload().ok());
  EXPECT_FALSE(authorizer->Authorize(Bearer(kReaderToken), {Role::kReader, "m"}).ok());
  EXPECT_TRUE(authorizer->Authorize(Bearer(kReaderToken), {Role::kReader, "n"}).ok());
}

TEST_F(TokenAuthorizerTest, ReloadOfABrokenOrMissingFileKeepsThePreviousTable) {
  WriteTokens(StandardTokens());
  std::unique_ptr<TokenAuthorizer> authorizer = CreateAuthorizer();
  ASSERT_NE(authorizer, nullptr);

  // A bad line (and a good token for a new admin before it, which must not take effect).
  const std::string newcomer = "newcomer-token-0123456789";
  WriteTokens(absl::StrCat(newcomer, " admin *\n", kAdminToken, " superuser *\n"));
  absl::Status reloaded = authorizer->Reload();
  EXPECT_EQ(reloaded.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(reloaded.message(), HasSubstr(path_));
  EXPECT_THAT(reloaded.message(), HasSubstr("line 2"));
  EXPECT_THAT(reloaded.message(), Not(HasSubstr(kAdminToken)));
  EXPECT_THAT(reloaded.message(), Not(HasSubstr(newcomer)));
  EXPECT_EQ(authorizer->token_count(), 4u);
  EXPECT_TRUE(authorizer->Authorize(Bearer(kAdminToken), {Role::kAdmin, ""}).ok());
  EXPECT_TRUE(authorizer->Authorize(Bearer(kScopedToken), {Role::kWriter, "ranker"}).ok());
  EXPECT_EQ(authorizer->Authorize(Bearer(newcomer), {Role::kReader, ""}).code(),
            absl::StatusCode::kUnauthenticated);

  // An empty file: also kept.
  WriteTokens("# everything commented out\n");
  EXPECT_EQ(authorizer->Reload().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(authorizer->Authorize(Bearer(kAdminToken), {Role::kAdmin, ""}).ok());

  // The file removed: NOT_FOUND, kept.
  ASSERT_TRUE(std::filesystem::remove(path_));
  EXPECT_EQ(authorizer->Reload().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(authorizer->token_count(), 4u);
  EXPECT_TRUE(authorizer->Authorize(Bearer(kReaderToken), {Role::kReader, "x"}).ok());

  // And a good file again takes effect.
  WriteTokens(absl::StrCat(newcomer, " admin *\n"));
  ASSERT_TRUE(authorizer->Reload().ok());
  EXPECT_EQ(authorizer->token_count(), 1u);
  EXPECT_TRUE(authorizer->Authorize(Bearer(newcomer), {Role::kAdmin, ""}).ok());
  EXPECT_EQ(authorizer->Authorize(Bearer(kAdminToken), {Role::kReader, ""}).code(),
            absl::StatusCode::kUnauthenticated);
}

TEST_F(TokenAuthorizerTest, CreateFailsOnAMissingOrBadFile) {
  absl::StatusOr<std::unique_ptr<TokenAuthorizer>> missing =
      TokenAuthorizer::Create(dir_ + "/no-such-file");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("no-such-file"));

  const std::string secret = "s3cret-T0ken-value-which-must-not-leak";
  WriteTokens(absl::StrCat(kAdminToken, " admin *\n", secret, " writer\n"));
  absl::StatusOr<std::unique_ptr<TokenAuthorizer>> bad = TokenAuthorizer::Create(path_);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr(path_));
  EXPECT_THAT(bad.status().message(), HasSubstr("line 2"));
  EXPECT_THAT(bad.status().message(), Not(HasSubstr(secret)));
  EXPECT_THAT(bad.status().message(), Not(HasSubstr(kAdminToken)));
}

TEST_F(TokenAuthorizerTest, ReloadWhileAuthorizing) {
  // Two tables alternate under concurrent Authorize calls: the admin token is in both, so it
  // must never be refused; each of the others is in one table only.
  const std::string table_a = absl::StrCat(kAdminToken, " admin *\n", kReaderToken, " reader *\n");
  const std::string table_b = absl::StrCat(kAdminToken, " admin *\n", kWriterToken, " writer *\n");
  WriteTokens(table_a);
  std::unique_ptr<TokenAuthorizer> authorizer = CreateAuthorizer();
  ASSERT_NE(authorizer, nullptr);
  std::atomic<bool> stop{false};
  std::atomic<int> admin_refused{0};
  std::atomic<int> reader_or_writer_ok{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 3; ++t) {
    threads.emplace_back([&] {
      while (!stop.load()) {
        if (!authorizer->Authorize(Bearer(kAdminToken), {Role::kAdmin, "m"}).ok()) {
          admin_refused.fetch_add(1);
        }
        if (authorizer->MayRead(Bearer(kReaderToken), "m") ||
            authorizer->MayRead(Bearer(kWriterToken), "m")) {
          reader_or_writer_ok.fetch_add(1);
        }
      }
    });
  }
  for (int i = 0; i < 200; ++i) {
    // Write a temporary file and rename it, as an operator's tooling should.
    const std::string temp = path_ + ".tmp";
    {
      std::ofstream out(temp, std::ios::trunc);
      out << (i % 2 == 0 ? table_b : table_a);
    }
    std::filesystem::rename(temp, path_);
    EXPECT_TRUE(authorizer->Reload().ok());
  }
  stop.store(true);
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(admin_refused.load(), 0);
  EXPECT_GT(reader_or_writer_ok.load(), 0);
  EXPECT_EQ(authorizer->token_count(), 2u);
}

}  // namespace
}  // namespace kldrift
