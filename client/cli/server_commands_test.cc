// Flag parsing, request building and output formats of the commands that talk to kldriftd. No
// server is needed: the requests are checked as built, and errors are exercised against an address
// nothing listens on.
#include <cmath>
#include <limits>
#include <numeric>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/cli/drift_command.h"
#include "client/cli/ingest_command.h"
#include "client/cli/reference_command.h"
#include "client/cli/server_command.h"
#include "client/cli/simulate_command.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/core/stream_key.h"

namespace kldrift::cli {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::StartsWith;

// Nothing listens on port 1 of the loopback address: calls fail fast with UNAVAILABLE.
GlobalOptions Unreachable() {
  GlobalOptions options;
  options.server = "127.0.0.1:1";
  options.timeout = absl::Seconds(5);
  return options;
}

ParsedFlags Parse(const std::vector<FlagSpec>& specs, const std::vector<std::string>& args) {
  absl::StatusOr<ParsedFlags> flags = ParseFlags("test", specs, args);
  EXPECT_TRUE(flags.ok()) << flags.status();
  return flags.ok() ? *flags : ParsedFlags();
}

// --- Global flags ---

TEST(GlobalFlagsTest, Defaults) {
  std::vector<std::string> args = {"drift", "--model", "m"};
  absl::StatusOr<GlobalOptions> options = ParseGlobalFlags(args);
  ASSERT_TRUE(options.ok());
  EXPECT_EQ(options->server, "localhost:50051");
  EXPECT_EQ(options->timeout, absl::Seconds(10));
  EXPECT_THAT(args, ElementsAre("drift", "--model", "m"));
}

TEST(GlobalFlagsTest, ServerAndTimeoutBeforeTheCommand) {
  std::vector<std::string> args = {"--server", "kld:9000", "--timeout=500ms", "drift", "--json"};
  absl::StatusOr<GlobalOptions> options = ParseGlobalFlags(args);
  ASSERT_TRUE(options.ok()) << options.status();
  EXPECT_EQ(options->server, "kld:9000");
  EXPECT_EQ(options->timeout, absl::Milliseconds(500));
  EXPECT_THAT(args, ElementsAre("drift", "--json"));
}

TEST(GlobalFlagsTest, Errors) {
  std::vector<std::string> args = {"--timeout", "soon", "drift"};
  EXPECT_THAT(std::string(ParseGlobalFlags(args).status().message()), HasSubstr("--timeout"));
  args = {"--timeout", "0s", "drift"};
  EXPECT_FALSE(ParseGlobalFlags(args).ok());
  args = {"--json", "drift"};
  EXPECT_THAT(std::string(ParseGlobalFlags(args).status().message()),
              HasSubstr("unknown global flag --json"));
  args = {"--server"};
  EXPECT_THAT(std::string(ParseGlobalFlags(args).status().message()), HasSubstr("needs a value"));
}

TEST(GlobalFlagsTest, Help) {
  std::vector<std::string> args = {"--help"};
  absl::StatusOr<GlobalOptions> options = ParseGlobalFlags(args);
  ASSERT_TRUE(options.ok());
  EXPECT_TRUE(options->help);
}

// --- Shared parsing ---

TEST(ListParsingTest, NumbersAndLabels) {
  EXPECT_THAT(*ParseNumberList("edges", "0, 0.5,1e3"), ElementsAre(0, 0.5, 1000));
  EXPECT_THAT(std::string(ParseNumberList("edges", "0,x").status().message()),
              HasSubstr("--edges: \"x\""));
  EXPECT_FALSE(ParseNumberList("edges", "0,,1").ok());
  EXPECT_THAT(*ParseLabelList("categories", "cat, dog"), ElementsAre("cat", "dog"));
  EXPECT_FALSE(ParseLabelList("categories", "cat,,dog").ok());
}

TEST(ReadItemsTest, StdinSkipsBlankLinesAndTrims) {
  std::istringstream in("1.5\n\n  2 \nnan\n");
  absl::StatusOr<std::vector<std::string>> items = ReadItems("-", in);
  ASSERT_TRUE(items.ok());
  EXPECT_THAT(*items, ElementsAre("1.5", "2", "nan"));
  absl::StatusOr<std::vector<double>> values = ParseValues("-", *items);
  ASSERT_TRUE(values.ok());
  EXPECT_TRUE(std::isnan((*values)[2]));
  EXPECT_THAT(std::string(ParseValues("v.txt", {"1", "one"}).status().message()),
              HasSubstr("v.txt: item 2 \"one\""));
  EXPECT_EQ(ReadItems("/nonexistent/values.txt", in).status().code(), absl::StatusCode::kNotFound);
}

TEST(StreamFromFlagsTest, RequiresModelAndSignal) {
  const std::vector<FlagSpec> specs = {
      {"model", false, ""}, {"model-version", false, ""}, {"signal", false, ""}};
  absl::StatusOr<v1::StreamId> stream =
      StreamFromFlags(Parse(specs, {"--model", "m", "--signal", "s"}));
  ASSERT_TRUE(stream.ok());
  EXPECT_EQ(StreamName(*stream), "m//s");
  EXPECT_THAT(std::string(StreamFromFlags(Parse(specs, {"--model", "m"})).status().message()),
              HasSubstr("--signal is required"));
  EXPECT_FALSE(StreamFromFlags(Parse(specs, {"--model", "a b", "--signal", "s"})).ok());
}

TEST(FormatTest, TimestampsNumbersAndDurations) {
  google::protobuf::Timestamp timestamp;
  EXPECT_EQ(FormatTimestamp(timestamp), "");
  timestamp.set_seconds(1);
  timestamp.set_nanos(500000000);
  EXPECT_EQ(FormatTimestamp(timestamp), "1970-01-01T00:00:01.5Z");
  EXPECT_EQ(FormatNumber(0.1234567), "0.123457");
  EXPECT_EQ(FormatNumber(std::numeric_limits<double>::infinity()), "inf");
  google::protobuf::Duration duration;
  ToProto(absl::Milliseconds(1500), &duration);
  EXPECT_EQ(duration.seconds(), 1);
  EXPECT_EQ(duration.nanos(), 500000000);
  EXPECT_EQ(FromProto(duration), absl::Milliseconds(1500));
}

TEST(ProcessClientIdTest, IsAValidName) {
  const std::string id = ProcessClientId("kldrift-cli");
  EXPECT_THAT(id, StartsWith("kldrift-cli."));
  EXPECT_TRUE(ValidateName("client_id", id, false).ok()) << id;
}

// --- reference put ---

absl::StatusOr<v1::PutReferenceRequest> Put(const std::vector<std::string>& args,
                                            const std::string& stdin_text = "") {
  std::istringstream in(stdin_text);
  absl::StatusOr<ParsedFlags> flags =
      ParseFlags("kldrift reference put", PutReferenceFlags(), args);
  if (!flags.ok()) return flags.status();
  return BuildPutReferenceRequest(*flags, in);
}

TEST(ReferencePutTest, NumericWithCountsAndPolicy) {
  absl::StatusOr<v1::PutReferenceRequest> request = Put(
      {"--model",    "fraud", "--model-version", "v2",   "--signal",  "score", "--edges", "0,0.5,1",
       "--counts",   "10,20", "--alpha",         "0.25", "--windows", "5m,1h", "--warn",  "0.1",
       "--critical", "0.3",   "--measure",       "psi",  "--for",     "0s"});
  ASSERT_TRUE(request.ok()) << request.status();
  EXPECT_EQ(request->stream().model(), "fraud");
  EXPECT_EQ(request->stream().model_version(), "v2");
  EXPECT_THAT(request->numeric().edges(), ElementsAre(0, 0.5, 1));
  EXPECT_THAT(request->counts().counts(), ElementsAre(10, 20));
  const v1::AlertPolicy& policy = request->policy();
  EXPECT_EQ(policy.alpha(), 0.25);
  ASSERT_EQ(policy.windows_size(), 2);
  EXPECT_EQ(policy.windows(0).seconds(), 300);
  EXPECT_EQ(policy.windows(1).seconds(), 3600);
  EXPECT_EQ(policy.warn_threshold(), 0.1);
  EXPECT_EQ(policy.critical_threshold(), 0.3);
  EXPECT_EQ(policy.measure(), "psi");
  EXPECT_TRUE(policy.has_for_duration());
  EXPECT_EQ(policy.for_duration().seconds(), 0);
}

TEST(ReferencePutTest, UnsetPolicyFieldsStayUnsetForServerDefaults) {
  absl::StatusOr<v1::PutReferenceRequest> request =
      Put({"--model", "m", "--signal", "s", "--bins", "3", "--counts", "1,2,3"});
  ASSERT_TRUE(request.ok()) << request.status();
  EXPECT_EQ(request->pre_binned().bins(), 3u);
  EXPECT_FALSE(request->policy().has_alpha());
  EXPECT_FALSE(request->policy().has_warn_threshold());
  EXPECT_EQ(request->policy().windows_size(), 0);
  EXPECT_FALSE(request->policy().has_for_duration());
}

TEST(ReferencePutTest, ValuesFileFromStdin) {
  absl::StatusOr<v1::PutReferenceRequest> numeric =
      Put({"--model", "m", "--signal", "s", "--edges", "0,1", "--values-file", "-"}, "0.5\n0.25\n");
  ASSERT_TRUE(numeric.ok()) << numeric.status();
  EXPECT_THAT(numeric->values().values(), ElementsAre(0.5, 0.25));

  absl::StatusOr<v1::PutReferenceRequest> categorical =
      Put({"--model", "m", "--signal", "s", "--categories", "cat,dog", "--values-file", "-"},
          "cat\ndog\ncat\n");
  ASSERT_TRUE(categorical.ok()) << categorical.status();
  EXPECT_THAT(categorical->categorical().categories(), ElementsAre("cat", "dog"));
  EXPECT_THAT(categorical->labels().labels(), ElementsAre("cat", "dog", "cat"));
}

TEST(ReferencePutTest, UsageErrors) {
  const std::vector<std::string> stream = {"--model", "m", "--signal", "s"};
  auto with = [&](std::vector<std::string> extra) {
    std::vector<std::string> args = stream;
    args.insert(args.end(), extra.begin(), extra.end());
    return std::string(Put(args).status().message());
  };
  EXPECT_THAT(with({"--counts", "1"}), HasSubstr("exactly one of --edges"));
  EXPECT_THAT(with({"--edges", "0,1", "--bins", "2", "--counts", "1"}),
              HasSubstr("exactly one of --edges"));
  EXPECT_THAT(with({"--edges", "0,1"}), HasSubstr("exactly one of --counts and --values-file"));
  EXPECT_THAT(with({"--bins", "2", "--values-file", "-"}), HasSubstr("--bins takes --counts"));
  EXPECT_THAT(with({"--bins", "0", "--counts", "1"}), HasSubstr("--bins"));
  EXPECT_THAT(with({"--edges", "0,1", "--counts", "1,-2"}), HasSubstr("not a count"));
  EXPECT_THAT(with({"--edges", "0,1", "--counts", "1", "--windows", "5x"}), HasSubstr("--windows"));
  EXPECT_THAT(with({"--edges", "0,1", "--counts", "1", "--measure", "kl"}), HasSubstr("--measure"));
  EXPECT_THAT(with({"--edges", "0,1", "--counts", "1", "--for", "-1s"}), HasSubstr("--for"));
  EXPECT_THAT(with({"--edges", "0,1", "--values-file", "/nonexistent"}), HasSubstr("cannot open"));
  EXPECT_THAT(
      std::string(Put({"--signal", "s", "--edges", "0,1", "--counts", "1"}).status().message()),
      HasSubstr("--model is required"));
  EXPECT_THAT(
      std::string(Put({"--model", "m", "--signal", "s", "--edgez", "1"}).status().message()),
      HasSubstr("unknown flag --edgez"));
}

// --- reference get/list/delete: usage errors never reach the server ---

int RunReferenceWith(const std::vector<std::string>& args, std::string* out_text,
                     std::string* err_text) {
  std::ostringstream out, err;
  std::istringstream in;
  const int code = RunReference(args, Unreachable(), out, err, in);
  *out_text = out.str();
  *err_text = err.str();
  return code;
}

TEST(ReferenceCommandTest, HelpAndUsageErrors) {
  std::string out, err;
  EXPECT_EQ(RunReferenceWith({"--help"}, &out, &err), kExitOk);
  EXPECT_THAT(out, HasSubstr("put"));
  EXPECT_EQ(RunReferenceWith({"put", "--help"}, &out, &err), kExitOk);
  EXPECT_THAT(out, HasSubstr("--values-file"));
  EXPECT_EQ(RunReferenceWith({"get", "--help"}, &out, &err), kExitOk);
  EXPECT_THAT(out, HasSubstr("--version"));
  EXPECT_EQ(RunReferenceWith({"list", "--help"}, &out, &err), kExitOk);
  EXPECT_EQ(RunReferenceWith({"delete", "--help"}, &out, &err), kExitOk);
  EXPECT_EQ(RunReferenceWith({}, &out, &err), kExitUsage);
  EXPECT_EQ(RunReferenceWith({"frob"}, &out, &err), kExitUsage);
  EXPECT_THAT(err, HasSubstr("unknown subcommand \"frob\""));
  EXPECT_EQ(RunReferenceWith({"get", "--model", "m"}, &out, &err), kExitUsage);
  EXPECT_THAT(err, HasSubstr("kldrift reference get: --signal is required"));
  EXPECT_EQ(
      RunReferenceWith({"get", "--model", "m", "--signal", "s", "--version", "x"}, &out, &err),
      kExitUsage);
  EXPECT_EQ(RunReferenceWith({"delete", "--model", "m", "--signal", "s", "--json"}, &out, &err),
            kExitUsage);
  EXPECT_THAT(err, HasSubstr("unknown flag --json"));
  EXPECT_EQ(RunReferenceWith({"list", "--model", "bad model"}, &out, &err), kExitUsage);
}

TEST(ReferenceCommandTest, ServerErrorsExitOneWithTheStatusCode) {
  std::string out, err;
  EXPECT_EQ(RunReferenceWith({"get", "--model", "m", "--signal", "s"}, &out, &err),
            kExitServerError);
  EXPECT_THAT(err, StartsWith("kldrift: UNAVAILABLE: "));
  EXPECT_EQ(RunReferenceWith({"list"}, &out, &err), kExitServerError);
}

TEST(ReferenceFormatTest, JsonAndText) {
  v1::Reference reference;
  reference.mutable_stream()->set_model("m");
  reference.mutable_stream()->set_signal("s");
  reference.set_version(2);
  reference.set_kind(v1::REFERENCE_KIND_CATEGORICAL);
  reference.mutable_categorical()->add_categories("cat");
  reference.add_counts(3);
  reference.add_counts(1);
  reference.add_bin_labels("cat");
  reference.add_bin_labels("<unseen>");
  reference.mutable_policy()->add_windows()->set_seconds(300);
  reference.mutable_policy()->set_measure("kl_current_reference");
  JsonWriter json;
  WriteReferenceJson(reference, json);
  const std::string text = json.Finish();
  EXPECT_THAT(text, HasSubstr("\"kind\": \"categorical\""));
  EXPECT_THAT(text, HasSubstr("\"categories\": [\"cat\"]"));
  EXPECT_THAT(text, HasSubstr("\"counts\": [3, 1]"));
  EXPECT_THAT(text, HasSubstr("\"windows\": [\"5m\"]"));
  EXPECT_THAT(FormatReference(reference), HasSubstr("<unseen>"));
  EXPECT_THAT(FormatReference(reference), HasSubstr("0.75"));
  EXPECT_THAT(FormatReferenceList({reference}), HasSubstr("m//s"));
  EXPECT_EQ(FormatReferenceList({}), "no references\n");
  EXPECT_EQ(KindName(v1::REFERENCE_KIND_PRE_BINNED), "pre_binned");
}

// --- ingest ---

absl::StatusOr<IngestData> ReadIngest(const std::vector<std::string>& args,
                                      const std::string& stdin_text = "") {
  std::istringstream in(stdin_text);
  absl::StatusOr<ParsedFlags> flags = ParseFlags("kldrift ingest", IngestFlags(), args);
  if (!flags.ok()) return flags.status();
  return ReadIngestData(*flags, in);
}

TEST(IngestTest, ReadsExactlyOneKindOfData) {
  absl::StatusOr<IngestData> values = ReadIngest({"--values-file", "-"}, "1\n2\n");
  ASSERT_TRUE(values.ok()) << values.status();
  EXPECT_THAT(*values->values, ElementsAre(1, 2));
  absl::StatusOr<IngestData> labels = ReadIngest({"--labels-file", "-"}, "a\nb\n");
  ASSERT_TRUE(labels.ok());
  EXPECT_THAT(*labels->labels, ElementsAre("a", "b"));
  absl::StatusOr<IngestData> counts = ReadIngest({"--counts", "1,2"});
  ASSERT_TRUE(counts.ok());
  EXPECT_THAT(*counts->counts, ElementsAre(1, 2));

  EXPECT_THAT(std::string(ReadIngest({}).status().message()), HasSubstr("exactly one"));
  EXPECT_THAT(std::string(ReadIngest({"--counts", "1", "--values-file", "-"}).status().message()),
              HasSubstr("exactly one"));
  EXPECT_THAT(std::string(ReadIngest({"--values-file", "-"}, "\n").status().message()),
              HasSubstr("holds no values"));
  EXPECT_THAT(std::string(ReadIngest({"--values-file", "-"}, "1\nx\n").status().message()),
              HasSubstr("item 2"));
}

TEST(IngestTest, BinsLikeTheRecorder) {
  auto bins = client_internal::ReferenceBins::Create(4, *BinLayout::Numeric({0, 1, 2}));
  IngestData data;
  data.values = std::vector<double>{-1, 0.5, 1.5, 1.7, 3, std::nan("")};
  absl::StatusOr<client_internal::StreamDelta> delta = BinIngestData(data, bins, "score");
  ASSERT_TRUE(delta.ok()) << delta.status();
  std::vector<double> expected(bins->layout().size(), 0.0);
  bins->layout().AddValues(*data.values, absl::MakeSpan(expected));
  EXPECT_EQ(delta->numbers, expected);
  EXPECT_EQ(delta->observations, 6u);
  EXPECT_EQ(delta->bins->version(), 4u);

  IngestData labels;
  labels.labels = std::vector<std::string>{"a"};
  EXPECT_THAT(std::string(BinIngestData(labels, bins, "score").status().message()),
              HasSubstr("numeric reference: send --values-file or --counts"));

  IngestData counts;
  counts.counts = std::vector<double>{3, 4};
  delta = BinIngestData(counts, bins, "score");
  ASSERT_TRUE(delta.ok());
  EXPECT_THAT(delta->numbers, ElementsAre(0, 3, 4, 0, 0));
  EXPECT_EQ(delta->observations, 7u);
  counts.counts = std::vector<double>{3, 4, 5};
  EXPECT_THAT(std::string(BinIngestData(counts, bins, "score").status().message()),
              HasSubstr("--counts"));

  auto categorical = client_internal::ReferenceBins::Create(1, *BinLayout::Categorical({"a"}));
  labels.labels = std::vector<std::string>{"a", "a", "zzz"};
  delta = BinIngestData(labels, categorical, "decision");
  ASSERT_TRUE(delta.ok());
  EXPECT_THAT(delta->numbers, ElementsAre(2, 1));
  EXPECT_FALSE(BinIngestData(data, categorical, "decision").ok());
}

TEST(IngestTest, UsageAndServerErrors) {
  std::ostringstream out, err;
  std::istringstream in("1\n");
  EXPECT_EQ(RunIngest({"--model", "m", "--signal", "s"}, Unreachable(), out, err, in), kExitUsage);
  EXPECT_THAT(err.str(), HasSubstr("exactly one"));
  err.str("");
  EXPECT_EQ(RunIngest({"--model", "m", "--signal", "s", "--values-file", "-"}, Unreachable(), out,
                      err, in),
            kExitServerError);
  EXPECT_THAT(err.str(), StartsWith("kldrift: UNAVAILABLE: "));
  EXPECT_EQ(RunIngest({"--help"}, Unreachable(), out, err, in), kExitOk);
}

// --- drift and watch ---

TEST(DriftTest, Requests) {
  absl::StatusOr<v1::GetDriftRequest> request = BuildGetDriftRequest(
      Parse(DriftFlags(), {"--model", "m", "--signal", "s", "--window", "1h", "--top", "3"}));
  ASSERT_TRUE(request.ok()) << request.status();
  EXPECT_EQ(request->window().seconds(), 3600);
  EXPECT_EQ(request->top_bins(), 3u);
  request = BuildGetDriftRequest(Parse(DriftFlags(), {"--model", "m", "--signal", "s"}));
  ASSERT_TRUE(request.ok());
  EXPECT_FALSE(request->has_window());
  EXPECT_EQ(request->top_bins(), 0u);
  EXPECT_FALSE(BuildGetDriftRequest(
                   Parse(DriftFlags(), {"--model", "m", "--signal", "s", "--window", "soon"}))
                   .ok());
  EXPECT_FALSE(
      BuildGetDriftRequest(Parse(DriftFlags(), {"--model", "m", "--signal", "s", "--top", "0"}))
          .ok());
}

TEST(WatchTest, Requests) {
  absl::StatusOr<v1::WatchDriftRequest> request =
      BuildWatchDriftRequest(Parse(WatchFlags(), {"--model", "m", "--changes-only"}));
  ASSERT_TRUE(request.ok()) << request.status();
  EXPECT_EQ(request->stream().model(), "m");
  EXPECT_TRUE(request->stream().signal().empty());
  EXPECT_TRUE(request->state_changes_only());
  request = BuildWatchDriftRequest(
      Parse(WatchFlags(), {"--model", "m", "--model-version", "v", "--signal", "s"}));
  ASSERT_TRUE(request.ok());
  EXPECT_EQ(request->stream().signal(), "s");
  EXPECT_EQ(request->stream().model_version(), "v");
  EXPECT_THAT(std::string(BuildWatchDriftRequest(
                              Parse(WatchFlags(), {"--model", "m", "--model-version", "v"}))
                              .status()
                              .message()),
              HasSubstr("--model-version needs --signal"));
  EXPECT_FALSE(BuildWatchDriftRequest(Parse(WatchFlags(), {})).ok());
}

TEST(WatchTest, UsageErrors) {
  std::ostringstream out, err;
  EXPECT_EQ(RunWatch({"--model", "m", "--count", "0"}, Unreachable(), out, err), kExitUsage);
  EXPECT_EQ(RunWatch({"--model", "m", "--duration", "x"}, Unreachable(), out, err), kExitUsage);
  EXPECT_EQ(RunWatch({"--model", "m"}, Unreachable(), out, err), kExitServerError);
  EXPECT_EQ(RunWatch({"--help"}, Unreachable(), out, err), kExitOk);
}

v1::DriftReport HistogramReport() {
  v1::DriftReport report;
  report.mutable_stream()->set_model("m");
  report.mutable_stream()->set_signal("s");
  report.set_window_name("5m");
  report.set_samples(1000);
  report.set_enough_samples(true);
  report.set_alert_state(v1::ALERT_STATE_FIRING);
  report.set_severity(v1::SEVERITY_CRITICAL);
  report.set_reference_version(3);
  report.set_measure("kl_current_reference");
  report.set_measure_value(0.2);
  v1::HistogramDrift* h = report.mutable_histogram();
  h->set_kl_current_reference(0.2);
  h->set_g_test_p_value(1e-9);
  v1::BinContribution* bin = h->add_top_bins();
  bin->set_bin(2);
  bin->set_label("[0, 1)");
  bin->set_contribution(0.1);
  return report;
}

TEST(DriftFormatTest, JsonHasEveryKey) {
  JsonWriter json;
  WriteDriftReportJson(HistogramReport(), json);
  const std::string text = json.Finish();
  for (const char* key :
       {"window", "samples", "alert_state", "severity", "reference_version", "kl_current_reference",
        "kl_reference_current", "jeffreys", "psi", "js_bits", "hellinger", "total_variation",
        "l_inf", "chi2", "g_test_p_value", "top_bins", "measure_value"}) {
    EXPECT_THAT(text, HasSubstr(absl::StrCat("\"", key, "\": "))) << key;
  }
  EXPECT_THAT(text, HasSubstr("\"alert_state\": \"firing\""));
  EXPECT_THAT(text, HasSubstr("\"severity\": \"critical\""));
  EXPECT_THAT(text, HasSubstr("\"window\": \"5m\""));
  EXPECT_THAT(text, HasSubstr("\"label\": \"[0, 1)\""));
}

TEST(DriftFormatTest, GaussianAndPolicyStreams) {
  v1::DriftReport gaussian;
  gaussian.mutable_gaussian()->set_kl_current_reference(0.5);
  gaussian.mutable_gaussian()->add_current_mean(1);
  JsonWriter json;
  WriteDriftReportJson(gaussian, json);
  EXPECT_THAT(json.Finish(), HasSubstr("\"current_mean\": [1]"));

  v1::DriftReport policy;
  policy.mutable_policy()->mutable_k3()->set_mean(0.01);
  JsonWriter policy_json;
  WriteDriftReportJson(policy, policy_json);
  EXPECT_THAT(policy_json.Finish(), HasSubstr("\"k3\": {\"mean\": 0.01"));
  EXPECT_THAT(FormatDriftReports({policy}), HasSubstr("k3 0.01"));
}

TEST(DriftFormatTest, Table) {
  v1::DriftReport few = HistogramReport();
  few.set_window_name("1h");
  few.set_enough_samples(false);
  const std::string table = FormatDriftReports({HistogramReport(), few});
  EXPECT_THAT(table, HasSubstr("m//s  reference version 3"));
  EXPECT_THAT(table, HasSubstr("firing"));
  EXPECT_THAT(table, HasSubstr("1000*"));
  EXPECT_THAT(table, HasSubstr("top bins"));
  EXPECT_EQ(FormatDriftReports({}), "no windows\n");
  EXPECT_EQ(AlertStateName(v1::ALERT_STATE_PENDING), "pending");
  EXPECT_EQ(SeverityName(v1::SEVERITY_WARN), "warn");
}

TEST(DriftCommandTest, UsageAndServerErrors) {
  std::ostringstream out, err;
  EXPECT_EQ(RunDrift({"--model", "m"}, Unreachable(), out, err), kExitUsage);
  EXPECT_EQ(RunDrift({"--model", "m", "--signal", "s"}, Unreachable(), out, err), kExitServerError);
  EXPECT_THAT(err.str(), HasSubstr("kldrift: UNAVAILABLE: "));
  EXPECT_EQ(RunDrift({"--help"}, Unreachable(), out, err), kExitOk);
  EXPECT_THAT(out.str(), HasSubstr("--window"));
}

// --- simulate ---

TEST(SimulateTest, Options) {
  absl::StatusOr<SimulateOptions> options = ParseSimulateOptions(
      Parse(SimulateFlags(), {"--model", "m", "--signal", "s", "--shift", "0.5", "--rate", "250/s",
                              "--duration", "2s", "--seed", "7"}));
  ASSERT_TRUE(options.ok()) << options.status();
  EXPECT_EQ(options->shift, 0.5);
  EXPECT_EQ(options->rate_per_second, 250);
  EXPECT_EQ(options->duration, absl::Seconds(2));
  EXPECT_EQ(options->seed, 7u);
  EXPECT_FALSE(options->edges_given);
  EXPECT_EQ(options->edges.size(), 17u);
  EXPECT_EQ(options->edges.front(), -4);
  EXPECT_EQ(options->edges.back(), 4);

  options = ParseSimulateOptions(Parse(SimulateFlags(), {"--model", "m", "--signal", "s"}));
  ASSERT_TRUE(options.ok());
  EXPECT_EQ(options->rate_per_second, 100);
  EXPECT_EQ(options->duration, absl::Seconds(30));

  for (const std::vector<std::string>& bad :
       std::vector<std::vector<std::string>>{{"--rate", "0"},
                                             {"--rate", "fast"},
                                             {"--duration", "48h"},
                                             {"--duration", "0s"},
                                             {"--shift", "inf"},
                                             {"--edges", "a"}}) {
    std::vector<std::string> args = {"--model", "m", "--signal", "s"};
    args.insert(args.end(), bad.begin(), bad.end());
    EXPECT_FALSE(ParseSimulateOptions(Parse(SimulateFlags(), args)).ok()) << bad[0];
  }
}

TEST(SimulateTest, StandardNormalReference) {
  v1::StreamId stream;
  stream.set_model("m");
  stream.set_signal("s");
  const std::vector<double> edges = {-1, 0, 1};
  v1::PutReferenceRequest request = StandardNormalReference(stream, edges);
  EXPECT_THAT(request.numeric().edges(), ElementsAre(-1, 0, 1));
  // Full layout: underflow, 2 bins, overflow, NaN.
  ASSERT_EQ(request.counts().counts_size(), 5);
  const auto& counts = request.counts().counts();
  EXPECT_EQ(counts[0], counts[3]);  // Symmetric tails.
  EXPECT_EQ(counts[1], counts[2]);
  EXPECT_EQ(counts[4], 0);
  EXPECT_NEAR(counts[1], 34134, 1);  // P(-1 < Z < 0) = 0.34134.
  EXPECT_NEAR(std::accumulate(counts.begin(), counts.end(), 0.0), 100000, 2);
  for (double count : counts) EXPECT_EQ(count, std::floor(count));
}

TEST(SimulateTest, ServerErrors) {
  std::ostringstream out, err;
  EXPECT_EQ(RunSimulate({"--model", "m", "--signal", "s"}, Unreachable(), out, err),
            kExitServerError);
  EXPECT_EQ(RunSimulate({"--model", "m"}, Unreachable(), out, err), kExitUsage);
}

}  // namespace
}  // namespace kldrift::cli
