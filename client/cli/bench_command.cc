#include "client/cli/bench_command.h"

#include <netdb.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <fstream>
#include <iterator>
#include <limits>
#include <map>
#include <memory>
#include <numeric>
#include <optional>
#include <random>
#include <thread>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "client/cli/json_writer.h"
#include "client/cli/simulate_command.h"
#include "server/core/bin_layout.h"
#include "server/core/mutex.h"

namespace kldrift::cli {
namespace {

constexpr char kCommand[] = "kldrift bench";
// Bounds that keep a benchmark bounded.
constexpr absl::Duration kMaxDuration = absl::Minutes(10);
constexpr absl::Duration kMaxWarmup = absl::Minutes(1);
constexpr int kMaxClients = 256;
constexpr int kMaxModels = 100000;
constexpr int kMaxStreamsPerModel = 100000;
constexpr long kMaxStreams = 1000000;
constexpr int kMaxBins = 65536;
// Numbers (counts) in one IngestRequest: ~9 bytes each on the wire, under kldriftd's default
// receive limit of 16 MiB.
constexpr long kMaxNumbersPerBatch = 1 << 20;
constexpr int kMaxBatchValues = 1 << 20;
constexpr int kMaxInFlight = 4096;
constexpr double kMaxGetDriftQps = 100000;
constexpr double kMaxIngestRate = 1e7;
// Values mode: the numeric references' edges span [-kEdgeRange, kEdgeRange]; raw values are drawn
// from N(0, 1) with a few NaN and infinities, from a pool reused cyclically.
constexpr double kEdgeRange = 3;
constexpr size_t kValuePoolSize = size_t{1} << 20;
constexpr double kSpecialValueShare = 0.001;
// Pre-binned references: bin b holds kReferenceCountBase + b observations.
constexpr double kReferenceCountBase = 100;
// Latency histogram: buckets grow by 2 %, from 1 µs up to the longest possible run.
constexpr double kLatencyBucketGrowth = 1.02;
constexpr double kLatencyMinNanos = 1000;
// HTTP scrape of --metrics: receive timeout and largest body read.
constexpr int kScrapeTimeoutSeconds = 5;
constexpr size_t kMaxScrapeBytes = 64 << 20;

std::string Usage() {
  return absl::StrCat(
      "usage: kldrift [global flags] bench [--clients N] [--models M] [--streams-per-model S]\n"
      "           [--bins K] [--mode prebinned|values] [--batch-streams B] [--batch-values V]\n"
      "           [--duration D] [--warmup D] [--in-flight N] [--ingest-rate R] [--get-drift-qps "
      "Q]\n"
      "           [--arrivals poisson|fixed]\n"
      "           [--server-pid PID] [--metrics HOST:PORT] [--json] [--setup-only|--no-setup]\n\n"
      "A load generator: creates references for M x S streams (skipping existing ones), then\n"
      "keeps N Ingest streams busy (one client id and connection each) with batches of B\n"
      "streams' histograms of one model, and calls GetDrift on random streams meanwhile.\n"
      "Reports acknowledged batches/s, bins/s (and raw values/s in values mode), ack and\n"
      "GetDrift latency percentiles, and the server's CPU per million bins and memory per\n"
      "stream (from --metrics, else /proc of --server-pid on this machine).\n\n",
      FlagHelp(BenchFlags()));
}

// Seeds of the arrival schedules: the GetDrift caller's and each client's apart.
constexpr uint64_t kArrivalSeedStride = 1 << 20;

// How far behind its schedule a paced client may be and still send what is due at once. A client
// waits for its next batch in its completion queue, whose deadlines gRPC 1.51 keeps in whole
// milliseconds (a 300 us wait returns 1.07 to 2.16 ms later), so on waking it sends every batch
// due by then: small bursts once a millisecond or two. Only a backlog older than this (a slow
// acknowledgement, no room in flight) is dropped rather than sent at once. Sending at the exact
// times from a thread per client cost the bench a third more CPU per batch, taken from the server
// it measures (tests/bench/HISTORY.md, "Tried and dropped on 2026-11-26 late").
constexpr absl::Duration kPaceCatchUp = absl::Milliseconds(3);

// The enumerated flags' choices, by their names on the command line and in the reports.
template <typename T>
struct Choice {
  absl::string_view name;
  T value;
};
constexpr Choice<BenchOptions::Mode> kModes[] = {{"prebinned", BenchOptions::Mode::kPreBinned},
                                                 {"values", BenchOptions::Mode::kValues}};
constexpr Choice<ArrivalSchedule::Kind> kArrivals[] = {{"poisson", ArrivalSchedule::Kind::kPoisson},
                                                       {"fixed", ArrivalSchedule::Kind::kFixed}};

template <typename T, size_t N>
absl::string_view ChoiceName(const Choice<T> (&choices)[N], T value) {
  for (const Choice<T>& choice : choices) {
    if (choice.value == value) return choice.name;
  }
  return "?";
}

// *value = the choice flag `name` names, if given; INVALID_ARGUMENT listing the choices otherwise.
template <typename T, size_t N>
absl::Status ParseChoice(const ParsedFlags& flags, const std::string& name,
                         const Choice<T> (&choices)[N], T* value) {
  if (!flags.Has(name)) return absl::OkStatus();
  const std::string given = *flags.Get(name);
  std::vector<absl::string_view> names;
  for (const Choice<T>& choice : choices) {
    if (choice.name == given) {
      *value = choice.value;
      return absl::OkStatus();
    }
    names.push_back(choice.name);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("--", name, "=", given, " is not one of ", absl::StrJoin(names, ", ")));
}

// Latencies in buckets 2 % wide: percentiles within 1 % without keeping every sample.
class LatencyHistogram {
 public:
  void Add(absl::Duration latency) {
    const double nanos = std::max(absl::ToDoubleNanoseconds(latency), kLatencyMinNanos);
    const auto bucket =
        static_cast<size_t>(std::log(nanos / kLatencyMinNanos) / std::log(kLatencyBucketGrowth));
    if (bucket >= counts_.size()) counts_.resize(bucket + 1, 0);
    ++counts_[bucket];
    ++count_;
  }
  void Merge(const LatencyHistogram& other) {
    if (other.counts_.size() > counts_.size()) counts_.resize(other.counts_.size(), 0);
    for (size_t i = 0; i < other.counts_.size(); ++i) counts_[i] += other.counts_[i];
    count_ += other.count_;
  }
  uint64_t count() const { return count_; }
  // The q-quantile (0 < q <= 1) in milliseconds: the middle of its bucket; NaN if empty.
  double QuantileMillis(double q) const {
    if (count_ == 0) return std::numeric_limits<double>::quiet_NaN();
    const auto rank = static_cast<uint64_t>(std::ceil(q * static_cast<double>(count_)));
    uint64_t seen = 0;
    for (size_t i = 0; i < counts_.size(); ++i) {
      seen += counts_[i];
      if (seen >= std::max<uint64_t>(rank, 1)) {
        return kLatencyMinNanos * std::pow(kLatencyBucketGrowth, i + 0.5) / 1e6;
      }
    }
    return kLatencyMinNanos * std::pow(kLatencyBucketGrowth, counts_.size()) / 1e6;
  }

 private:
  std::vector<uint64_t> counts_;
  uint64_t count_ = 0;
};

// --- The server's CPU time and resident memory ------------------------------------------------

// kldriftd's own time on one method's requests so far (kldrift_request_duration_seconds{method}).
struct RequestTimes {
  double requests = 0;
  double seconds = 0;
  double within_1ms = 0;  // The le="0.001" bucket.
};

// The methods whose server-side times the bench reports: its two kinds of request.
struct TimedMethod {
  const char* method;   // The `method` label.
  const char* request;  // What one request is, for the text output.
};
constexpr TimedMethod kTimedMethods[] = {{"GetDrift", "GetDrift"}, {"Ingest", "Ingest batch"}};

struct ServerSample {
  std::optional<double> cpu_seconds;
  std::optional<double> rss_bytes;
  std::string source;  // "metrics", "proc" or empty.
  // By kTimedMethods' index; from --metrics only (a kldriftd: the echo server has none).
  std::array<std::optional<RequestTimes>, std::size(kTimedMethods)> request_times;
};

// The body of GET http://`address`/metrics (HTTP/1.0, bounded in time and size).
absl::StatusOr<std::string> ScrapeMetrics(const std::string& address) {
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat("--metrics=", address, " is not HOST:PORT"));
  }
  const std::string host = address.substr(0, colon);
  const std::string port = address.substr(colon + 1);
  addrinfo hints = {};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* resolved = nullptr;
  if (getaddrinfo(host.c_str(), port.c_str(), &hints, &resolved) != 0 || resolved == nullptr) {
    return absl::UnavailableError(absl::StrCat("cannot resolve ", address));
  }
  const int fd = socket(resolved->ai_family, resolved->ai_socktype, resolved->ai_protocol);
  timeval timeout = {kScrapeTimeoutSeconds, 0};
  if (fd >= 0) {
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
  }
  const bool connected = fd >= 0 && connect(fd, resolved->ai_addr, resolved->ai_addrlen) == 0;
  freeaddrinfo(resolved);
  if (!connected) {
    if (fd >= 0) close(fd);
    return absl::UnavailableError(absl::StrCat("cannot connect to ", address, " for /metrics"));
  }
  const std::string request = absl::StrCat("GET /metrics HTTP/1.0\r\nHost: ", address, "\r\n\r\n");
  std::string response;
  if (send(fd, request.data(), request.size(), MSG_NOSIGNAL) ==
      static_cast<ssize_t>(request.size())) {
    std::array<char, 65536> buffer;
    ssize_t n;
    while (response.size() < kMaxScrapeBytes && (n = recv(fd, buffer.data(), buffer.size(), 0)) > 0)
      response.append(buffer.data(), static_cast<size_t>(n));
  }
  close(fd);
  const size_t body = response.find("\r\n\r\n");
  if (!absl::StartsWith(response, "HTTP/1.") || response.find(" 200 ") > response.find("\r\n") ||
      body == std::string::npos) {
    return absl::UnavailableError(
        absl::StrCat("GET http://", address, "/metrics did not answer 200 OK"));
  }
  return response.substr(body + 4);
}

// The value of an unlabelled series in a Prometheus text exposition.
std::optional<double> SeriesValue(absl::string_view exposition, absl::string_view name) {
  for (absl::string_view line : absl::StrSplit(exposition, '\n')) {
    if (!absl::ConsumePrefix(&line, name) || !absl::ConsumePrefix(&line, " ")) continue;
    double value;
    if (absl::SimpleAtod(absl::StripAsciiWhitespace(line), &value)) return value;
  }
  return std::nullopt;
}

// kldrift_request_duration_seconds of `method` in an exposition, if it has them.
std::optional<RequestTimes> ReadRequestTimes(absl::string_view exposition,
                                             absl::string_view method) {
  const std::string family = "kldrift_request_duration_seconds";
  const std::string labels = absl::StrCat("{method=\"", method, "\"}");
  std::optional<double> requests = SeriesValue(exposition, absl::StrCat(family, "_count", labels));
  std::optional<double> seconds = SeriesValue(exposition, absl::StrCat(family, "_sum", labels));
  std::optional<double> within_1ms = SeriesValue(
      exposition, absl::StrCat(family, "_bucket{method=\"", method, "\",le=\"0.001\"}"));
  if (!requests || !seconds || !within_1ms) return std::nullopt;
  return RequestTimes{*requests, *seconds, *within_1ms};
}

// utime + stime of /proc/PID/stat, and VmRSS of /proc/PID/status.
ServerSample ReadProc(int pid) {
  ServerSample sample;
  std::ifstream stat_file(absl::StrCat("/proc/", pid, "/stat"));
  std::string stat((std::istreambuf_iterator<char>(stat_file)), std::istreambuf_iterator<char>());
  // The command name may hold spaces; the fields after it start at the last ')'.
  const size_t end_of_name = stat.rfind(')');
  if (end_of_name != std::string::npos) {
    std::vector<std::string> fields =
        absl::StrSplit(stat.substr(end_of_name + 1), ' ', absl::SkipEmpty());
    // Fields 14 and 15 of the line, i.e. 12 and 13 after the name (state is field 3).
    double utime, stime;
    if (fields.size() > 12 && absl::SimpleAtod(fields[11], &utime) &&
        absl::SimpleAtod(fields[12], &stime)) {
      sample.cpu_seconds = (utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK));
    }
  }
  std::ifstream status(absl::StrCat("/proc/", pid, "/status"));
  for (std::string line; std::getline(status, line);) {
    absl::string_view rest = line;
    if (!absl::ConsumePrefix(&rest, "VmRSS:")) continue;
    rest = absl::StripAsciiWhitespace(rest);
    double kib;
    if (absl::ConsumeSuffix(&rest, "kB") && absl::SimpleAtod(rest, &kib)) {
      sample.rss_bytes = kib * 1024;
    }
  }
  if (sample.cpu_seconds || sample.rss_bytes) sample.source = "proc";
  return sample;
}

// CPU and RSS from the server's standard process metrics if --metrics is given and has them, else
// /proc (a scrape of many streams can pass kMaxScrapeBytes before the process metrics, which come
// last); the request times from --metrics either way (kldriftd writes them first).
ServerSample SampleServer(const BenchOptions& bench) {
  ServerSample sample;
  if (!bench.metrics_address.empty()) {
    absl::StatusOr<std::string> exposition = ScrapeMetrics(bench.metrics_address);
    if (exposition.ok()) {
      sample.cpu_seconds = SeriesValue(*exposition, "process_cpu_seconds_total");
      sample.rss_bytes = SeriesValue(*exposition, "process_resident_memory_bytes");
      for (size_t i = 0; i < std::size(kTimedMethods); ++i) {
        sample.request_times[i] = ReadRequestTimes(*exposition, kTimedMethods[i].method);
      }
      if (sample.cpu_seconds && sample.rss_bytes) {
        sample.source = "metrics";
        return sample;
      }
    }
  }
  if (bench.server_pid > 0) {
    ServerSample proc = ReadProc(bench.server_pid);
    proc.request_times = sample.request_times;
    return proc;
  }
  sample.cpu_seconds.reset();
  sample.rss_bytes.reset();
  return sample;
}

// --- What each client sends -------------------------------------------------------------------

std::string ModelName(const BenchOptions& bench, int model) {
  return absl::StrCat(bench.model_prefix, "-model-", model);
}
std::string SignalName(int signal) { return absl::StrCat("signal-", signal); }

// One IngestRequest a client sends again and again (with a new sequence number): up to
// batch_streams consecutive signals of one model.
struct BatchShape {
  int model = 0;
  // The batch's signal numbers in the order of the request's streams: by name, as the Recorder
  // sends them ("signal-10" before "signal-2").
  std::vector<int> signals;
  v1::IngestRequest request;
  // Observations each stream gets per batch (pre-binned: the sum of its counts).
  std::vector<uint64_t> observations;
  uint64_t acked = 0;  // Batches of this shape acknowledged, over the whole run.
};

// Pre-binned deltas vary a little between streams so the batches are not all alike.
double PreBinnedCount(int signal, int bin) { return 1 + (signal + bin) % 3; }

// Client `client`'s share of the streams (a contiguous range of model-major stream numbers), cut
// into batches of at most batch_streams signals of one model.
std::vector<BatchShape> PlanClient(const BenchOptions& bench, int client) {
  const long total = static_cast<long>(bench.models) * bench.streams_per_model;
  const long begin = total * client / bench.clients;
  const long end = total * (client + 1) / bench.clients;
  std::vector<BatchShape> shapes;
  for (long first = begin; first < end;) {
    const int model = static_cast<int>(first / bench.streams_per_model);
    const int signal = static_cast<int>(first % bench.streams_per_model);
    const long model_end = static_cast<long>(model + 1) * bench.streams_per_model;
    const int signals =
        static_cast<int>(std::min<long>({bench.batch_streams, end - first, model_end - first}));
    BatchShape shape;
    shape.model = model;
    shape.signals.resize(signals);
    std::iota(shape.signals.begin(), shape.signals.end(), signal);
    std::sort(shape.signals.begin(), shape.signals.end(),
              [](int a, int b) { return SignalName(a) < SignalName(b); });
    shape.request.set_model(ModelName(bench, model));
    for (const int s : shape.signals) {
      v1::StreamBatch* batch = shape.request.add_streams();
      batch->set_signal(SignalName(s));
      uint64_t observations = 0;
      for (int b = 0; b < bench.bins; ++b) {
        const double count = PreBinnedCount(s, b);
        batch->mutable_histogram()->add_counts(count);
        observations += static_cast<uint64_t>(count);
      }
      shape.observations.push_back(bench.mode == BenchOptions::Mode::kValues
                                       ? static_cast<uint64_t>(bench.batch_values)
                                       : observations);
    }
    shapes.push_back(std::move(shape));
    first += signals;
  }
  return shapes;
}

// Values mode: the numeric references' edges (K - 2 edges give K buckets in the full layout).
std::vector<double> ValuesModeEdges(int bins) {
  const int edges = bins - 2;
  std::vector<double> result;
  for (int i = 0; i < edges; ++i) {
    result.push_back(edges == 1 ? 0 : -kEdgeRange + 2 * kEdgeRange * i / (edges - 1));
  }
  return result;
}

v1::PutReferenceRequest ReferenceFor(const BenchOptions& bench, const v1::StreamId& stream) {
  if (bench.mode == BenchOptions::Mode::kValues) {
    return StandardNormalReference(stream, ValuesModeEdges(bench.bins));
  }
  v1::PutReferenceRequest request;
  *request.mutable_stream() = stream;
  request.mutable_pre_binned()->set_bins(bench.bins);
  for (int b = 0; b < bench.bins; ++b)
    request.mutable_counts()->add_counts(kReferenceCountBase + b);
  return request;
}

// Whether an existing reference takes this bench's batches.
absl::Status CheckExisting(const BenchOptions& bench, const v1::Reference& reference) {
  const v1::ReferenceKind kind = bench.mode == BenchOptions::Mode::kValues
                                     ? v1::REFERENCE_KIND_NUMERIC
                                     : v1::REFERENCE_KIND_PRE_BINNED;
  if (reference.kind() == kind && reference.size() == static_cast<uint32_t>(bench.bins)) {
    return absl::OkStatus();
  }
  return absl::FailedPreconditionError(
      absl::StrCat(StreamName(reference.stream()), " already has a ",
                   v1::ReferenceKind_Name(reference.kind()), " reference of ", reference.size(),
                   " buckets, which this bench cannot feed; choose another ", "--model-prefix"));
}

struct SetupResult {
  long created = 0;
  long existing = 0;
  absl::Status status;
};

// Creates the missing references of the models m with m % threads == thread.
SetupResult SetUpModels(const BenchOptions& bench, const KlDriftClient& client, int thread,
                        int threads) {
  SetupResult result;
  for (int m = thread; m < bench.models; m += threads) {
    absl::StatusOr<std::vector<v1::Reference>> existing =
        client.ListReferences(ModelName(bench, m));
    if (!existing.ok()) {
      result.status = existing.status();
      return result;
    }
    std::vector<bool> present(bench.streams_per_model, false);
    for (const v1::Reference& reference : *existing) {
      const v1::StreamId& stream = reference.stream();
      int signal;
      if (!stream.model_version().empty() ||
          !absl::SimpleAtoi(absl::StripPrefix(stream.signal(), "signal-"), &signal) ||
          SignalName(signal) != stream.signal() || signal < 0 ||
          signal >= bench.streams_per_model) {
        continue;
      }
      if (absl::Status s = CheckExisting(bench, reference); !s.ok()) {
        result.status = s;
        return result;
      }
      present[signal] = true;
      ++result.existing;
    }
    for (int s = 0; s < bench.streams_per_model; ++s) {
      if (present[s]) continue;
      v1::StreamId stream;
      stream.set_model(ModelName(bench, m));
      stream.set_signal(SignalName(s));
      absl::StatusOr<v1::PutReferenceResponse> put =
          client.PutReference(ReferenceFor(bench, stream));
      if (!put.ok()) {
        result.status = put.status();
        return result;
      }
      ++result.created;
    }
  }
  return result;
}

// --- The load -------------------------------------------------------------------------------

// State shared by the main thread and every load thread.
struct RunControl {
  std::atomic<bool> measuring{false};
  std::atomic<bool> stop{false};
  Mutex mutex;
  CondVar changed;
  absl::Status failure ABSL_GUARDED_BY(mutex);

  void Fail(absl::Status status) {
    MutexLock lock(&mutex);
    if (failure.ok()) failure = std::move(status);
    stop = true;
    changed.SignalAll();
  }
};

// Acknowledged work, cumulative.
struct Progress {
  uint64_t batches = 0;
  uint64_t bins = 0;
  uint64_t values = 0;  // Raw values (values mode).
  uint64_t observations = 0;
};

// One client: one channel and one Ingest stream, driven by one thread (this object's Run) through
// a completion queue of its own (gRPC's asynchronous API). Writes, acknowledgements, pacing and the
// stop check all happen on the thread that waits, so a batch costs no hand-off between threads.
// (A writer and a reader thread on gRPC's synchronous API passed the poller back and forth on
// every write and every acknowledgement: the futex wake-ups cost the bench ~0.3 of a core at
// 5,000 batches/s, taken from the server it measures on a 2-core machine.)
//
// In flight: when --in-flight batches are unacknowledged, the client waits until half of them
// are (a real fleet's many clients do not move in lock step with each acknowledgement either).
class BenchClient {
 public:
  BenchClient(const BenchOptions& bench, const GlobalOptions& global, int index,
              RunControl* control)
      : bench_(bench), global_(global), index_(index), control_(control) {
    shapes_ = PlanClient(bench, index);
    slots_.resize(bench.in_flight);
    if (bench.mode == BenchOptions::Mode::kValues) {
      layout_ = std::make_unique<BinLayout>(*BinLayout::Numeric(ValuesModeEdges(bench.bins)));
      std::mt19937_64 random(bench.seed + index);
      std::normal_distribution<double> normal(0, 1);
      std::uniform_real_distribution<double> uniform(0, 1);
      const double specials[] = {std::numeric_limits<double>::quiet_NaN(),
                                 std::numeric_limits<double>::infinity(),
                                 -std::numeric_limits<double>::infinity()};
      values_.resize(kValuePoolSize);
      for (double& v : values_) {
        v = uniform(random) < kSpecialValueShare ? specials[random() % 3] : normal(random);
      }
    }
  }

  // Writes batches until control->stop, then waits (bounded) for the outstanding acks.
  void Run(absl::Time deadline) {
    ChannelOptions channel_options = global_.Channel();
    // A receive limit of its own makes the channel's arguments unique, so gRPC gives this client
    // its own connection (channels with equal arguments share one), as separate processes would
    // have: + 1, so that no client shares the GetDrift caller's connection either (its GetDrift
    // calls would queue behind the client's batches). The bench's responses are tiny; the limit
    // itself does not matter.
    channel_options.max_receive_message_bytes += index_ + 1;
    std::shared_ptr<grpc::Channel> channel = CreateChannel(channel_options);
    std::unique_ptr<v1::KlDrift::Stub> stub = v1::KlDrift::NewStub(channel);
    grpc::CompletionQueue queue;
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(deadline));
    std::unique_ptr<grpc::ClientAsyncReaderWriter<v1::IngestRequest, v1::IngestResponse>> stream =
        stub->PrepareAsyncIngest(&context, &queue);
    stream->StartCall(TagOf(Op::kStart));
    const std::string client_id = absl::StrCat("kldrift-bench.", getpid(), ".",
                                               absl::ToUnixMicros(absl::Now()), ".c", index_);
    // Pacing (--ingest-rate): this client's batches are due every `pace` on average.
    const absl::Duration pace = bench_.ingest_rate > 0
                                    ? absl::Seconds(bench_.clients / bench_.ingest_rate)
                                    : absl::ZeroDuration();
    ArrivalSchedule schedule(bench_.arrivals, pace, bench_.seed * kArrivalSeedStride + index_);
    absl::Time due = absl::Now() + schedule.FirstDelay();
    v1::IngestResponse response;
    grpc::Status status;
    // The stream's operations in progress and how far it got. Only this thread touches these.
    bool started = false, writing = false, reading = false, read_ended = false;
    bool write_failed = false, closing = false, writes_done_pending = false, finishing = false;
    bool waiting_for_room = false, drain_cancelled = false;
    size_t next_shape = 0;
    absl::Time drain_deadline = absl::InfiniteFuture();
    for (;;) {
      const absl::Time now = absl::Now();
      absl::Time wake = now + absl::Milliseconds(100);  // Sees control->stop promptly.
      const bool ending = control_->stop || read_ended || write_failed;
      if (started && !writing && !ending) {
        const uint64_t in_flight = InFlight();
        if (in_flight >= static_cast<uint64_t>(bench_.in_flight)) waiting_for_room = true;
        if (waiting_for_room && in_flight <= static_cast<uint64_t>(bench_.in_flight) / 2) {
          waiting_for_room = false;
        }
        if (!waiting_for_room && now < due) wake = std::min(wake, due);
        if (!waiting_for_room && now >= due) {
          // Batches that fell due while the thread waited go out now; no burst to catch up
          // after a slow ack or a full window, though (see kPaceCatchUp).
          if (pace > absl::ZeroDuration()) {
            due = std::max(due + schedule.NextGap(), now - std::max(pace, kPaceCatchUp));
          }
          // Saturated, with room for the next batch after this one: it follows at once, so the
          // server may acknowledge the two together.
          const bool more_follows = pace == absl::ZeroDuration() &&
                                    in_flight + 1 < static_cast<uint64_t>(bench_.in_flight);
          WriteNext(client_id, more_follows, &next_shape, stream.get());
          writing = true;
        }
      }
      if (started && ending && !writing && !closing) {
        // Half-close at once: the server then acknowledges everything it read (including batches
        // it held for one that said more follows) and ends its side.
        closing = true;
        drain_deadline = now + global_.timeout;
        if (!write_failed && !read_ended) {
          stream->WritesDone(TagOf(Op::kWritesDone));
          writes_done_pending = true;
        }
      }
      if (closing && !read_ended && !drain_cancelled) {
        // Wait for the acknowledgements of everything written, so the totals are exact.
        if (now >= drain_deadline) {
          control_->Fail(absl::DeadlineExceededError(
              absl::StrCat("client ", index_, ": ", InFlight(), " batches not acknowledged within ",
                           absl::FormatDuration(global_.timeout), " of the end")));
          context.TryCancel();
          drain_cancelled = true;
        } else {
          wake = std::min(wake, drain_deadline);
        }
      }
      // Finish once nothing else is in progress and the server has ended its side (a failed
      // read), as gRPC's asynchronous API requires; also when the call never started.
      if (!finishing && (closing || !started) && read_ended && !writing && !reading &&
          !writes_done_pending) {
        stream->Finish(&status, TagOf(Op::kFinish));
        finishing = true;
      }
      void* tag = nullptr;
      bool ok = false;
      const grpc::CompletionQueue::NextStatus next =
          queue.AsyncNext(&tag, &ok, absl::ToChronoTime(wake));
      if (next == grpc::CompletionQueue::SHUTDOWN) break;
      if (next == grpc::CompletionQueue::TIMEOUT) continue;
      switch (static_cast<Op>(reinterpret_cast<intptr_t>(tag))) {
        case Op::kStart:
          if (ok) {
            started = true;
            stream->Read(&response, TagOf(Op::kRead));
            reading = true;
          } else {
            read_ended = true;  // Finish tells why.
          }
          break;
        case Op::kWrite:
          writing = false;
          if (!ok) write_failed = true;  // The stream is broken; the read fails too.
          break;
        case Op::kRead:
          reading = false;
          if (ok && HandleAck(response)) {
            stream->Read(&response, TagOf(Op::kRead));
            reading = true;
          } else {
            if (ok) context.TryCancel();  // An impossible acknowledgement (already failed).
            read_ended = true;
          }
          break;
        case Op::kWritesDone:
          writes_done_pending = false;
          break;
        case Op::kFinish:
          if (!status.ok()) control_->Fail(FromGrpcStatus(status));
          queue.Shutdown();  // Nothing else is in progress: the loop ends at SHUTDOWN.
          break;
      }
    }
    MutexLock lock(&mutex_);
    if (acked_ < sent_) {
      control_->Fail(
          absl::UnavailableError(absl::StrCat("client ", index_, ": the Ingest stream ended with ",
                                              sent_ - acked_, " batches unacknowledged")));
    }
  }

  Progress progress() const {
    MutexLock lock(&mutex_);
    return progress_;
  }
  LatencyHistogram latencies() const {
    MutexLock lock(&mutex_);
    return latencies_;
  }
  uint64_t sent() const {
    MutexLock lock(&mutex_);
    return sent_;
  }
  // Every stream's acknowledged observations, by "model/signal". Call after Run.
  void AddPerStream(std::map<std::string, uint64_t>* out) const {
    MutexLock lock(&mutex_);
    for (const BatchShape& shape : shapes_) {
      for (size_t i = 0; i < shape.signals.size(); ++i) {
        (*out)[absl::StrCat(ModelName(bench_, shape.model), "/", SignalName(shape.signals[i]))] +=
            shape.acked * shape.observations[i];
      }
    }
  }

 private:
  struct Slot {
    size_t shape = 0;
    bool measured = false;
    absl::Time written;
  };

  // Values mode: bins fresh raw values for every stream of `shape` into its histograms.
  void BinValues(BatchShape& shape) {
    counts_.assign(bench_.bins, 0.0);
    for (v1::StreamBatch& batch : *shape.request.mutable_streams()) {
      if (value_offset_ + bench_.batch_values > values_.size()) value_offset_ = 0;
      std::fill(counts_.begin(), counts_.end(), 0.0);
      layout_->AddValues(absl::MakeConstSpan(values_).subspan(value_offset_, bench_.batch_values),
                         absl::MakeSpan(counts_));
      value_offset_ += bench_.batch_values;
      std::copy(counts_.begin(), counts_.end(),
                batch.mutable_histogram()->mutable_counts()->mutable_data());
    }
  }

  // What a tag on the completion queue stands for: at most one of each is in progress.
  enum class Op : intptr_t { kStart = 1, kWrite, kRead, kWritesDone, kFinish };
  static void* TagOf(Op op) { return reinterpret_cast<void*>(static_cast<intptr_t>(op)); }

  uint64_t InFlight() const {
    MutexLock lock(&mutex_);
    return sent_ - acked_;
  }

  // Stamps the next batch with the stream's client id and the next sequence number and starts
  // writing it.
  void WriteNext(const std::string& client_id, bool more_follows, size_t* next_shape,
                 grpc::ClientAsyncReaderWriter<v1::IngestRequest, v1::IngestResponse>* stream) {
    BatchShape& shape = shapes_[*next_shape];
    if (layout_ != nullptr) BinValues(shape);
    shape.request.set_client_id(client_id);
    shape.request.set_more_follows(more_follows);
    {
      MutexLock lock(&mutex_);
      const uint64_t sequence = sent_ + 1;
      shape.request.set_sequence(sequence);
      Slot& slot = slots_[sequence % slots_.size()];
      slot.shape = *next_shape;
      slot.measured = control_->measuring;
      slot.written = absl::Now();
      sent_ = sequence;
    }
    // gRPC serializes the request here; the shape may change before the write completes.
    stream->Write(shape.request, TagOf(Op::kWrite));
    *next_shape = (*next_shape + 1) % shapes_.size();
  }

  // Counts what `response` acknowledges. False if it acknowledges a batch not yet sent (the run
  // has failed).
  bool HandleAck(const v1::IngestResponse& response) {
    const absl::Time now = absl::Now();
    if (response.errors_size() > 0) {
      const v1::BatchError& error = response.errors(0);
      control_->Fail(absl::Status(static_cast<absl::StatusCode>(error.code()),
                                  absl::StrCat("client ", index_, ": batch ", error.sequence(),
                                               " rejected: ", error.message())));
    }
    MutexLock lock(&mutex_);
    if (response.acked_sequence() > sent_) {
      control_->Fail(absl::InternalError(
          absl::StrCat("client ", index_, ": the server acknowledged sequence ",
                       response.acked_sequence(), " before it was sent (", sent_, ")")));
      return false;
    }
    for (uint64_t seq = acked_ + 1; seq <= response.acked_sequence(); ++seq) {
      const Slot& slot = slots_[seq % slots_.size()];
      BatchShape& shape = shapes_[slot.shape];
      ++shape.acked;
      ++progress_.batches;
      progress_.bins += shape.signals.size() * bench_.bins;
      if (layout_ != nullptr) {
        progress_.values += shape.signals.size() * bench_.batch_values;
      }
      for (uint64_t observations : shape.observations) progress_.observations += observations;
      if (slot.measured) latencies_.Add(now - slot.written);
    }
    acked_ = std::max(acked_, response.acked_sequence());
    return true;
  }

  const BenchOptions& bench_;
  const GlobalOptions& global_;
  const int index_;
  RunControl* const control_;
  // Values mode: the bins, the raw values and where the next batch takes them from.
  std::unique_ptr<BinLayout> layout_;
  std::vector<double> values_;
  size_t value_offset_ = 0;
  std::vector<double> counts_;

  mutable Mutex mutex_;
  std::vector<BatchShape> shapes_;  // Requests: Run's thread only; acked counts: under mutex_.
  std::vector<Slot> slots_ ABSL_GUARDED_BY(mutex_);  // By sequence modulo in_flight.
  uint64_t sent_ ABSL_GUARDED_BY(mutex_) = 0;
  uint64_t acked_ ABSL_GUARDED_BY(mutex_) = 0;
  Progress progress_ ABSL_GUARDED_BY(mutex_);
  LatencyHistogram latencies_ ABSL_GUARDED_BY(mutex_);
};

struct GetDriftResult {
  uint64_t calls = 0;
  LatencyHistogram latencies;  // Calls started while measuring.
};

// Calls GetDrift on random streams at `qps` until control->stop.
GetDriftResult RunGetDrift(const BenchOptions& bench, const GlobalOptions& global,
                           RunControl* control) {
  GetDriftResult result;
  KlDriftClient client(CreateChannel(global.Channel()), global.timeout);
  std::mt19937_64 random(bench.seed ^ 0x9e3779b97f4a7c15ULL);
  std::uniform_int_distribution<int> model(0, bench.models - 1);
  std::uniform_int_distribution<int> signal(0, bench.streams_per_model - 1);
  const absl::Duration interval = absl::Seconds(1) / bench.get_drift_qps;
  // Its own random stream, apart from every client's.
  ArrivalSchedule schedule(bench.arrivals, interval, bench.seed * kArrivalSeedStride - 1);
  absl::Time next = absl::Now() + schedule.FirstDelay();
  while (!control->stop) {
    {
      MutexLock lock(&control->mutex);
      while (!control->stop && absl::Now() < next) {
        control->changed.WaitWithDeadline(&control->mutex, next);
      }
    }
    if (control->stop) break;
    v1::GetDriftRequest request;
    request.mutable_stream()->set_model(ModelName(bench, model(random)));
    request.mutable_stream()->set_signal(SignalName(signal(random)));
    const bool measured = control->measuring;
    const absl::Time start = absl::Now();
    absl::StatusOr<v1::GetDriftResponse> response = client.GetDrift(request);
    const absl::Time end = absl::Now();
    if (!response.ok()) {
      control->Fail(response.status());
      break;
    }
    ++result.calls;
    if (measured) result.latencies.Add(end - start);
    // On schedule, without bursts to catch up after a slow call.
    next = std::max(next + schedule.NextGap(), end - interval);
  }
  return result;
}

// --- Report ---------------------------------------------------------------------------------

struct BenchReport {
  long streams = 0;
  SetupResult setup;
  double setup_seconds = 0;
  double measured_seconds = 0;
  Progress measured;  // Acknowledged within the measured interval.
  Progress total;     // Over the whole run.
  uint64_t batches_sent = 0;
  LatencyHistogram ack_latencies;
  GetDriftResult get_drift;
  ServerSample before_setup, start, end;
  std::map<std::string, uint64_t> per_stream;
};

double PerSecond(uint64_t count, double seconds) { return seconds > 0 ? count / seconds : 0; }

std::optional<double> CpuPerMillionBins(const BenchReport& report) {
  if (!report.start.cpu_seconds || !report.end.cpu_seconds || report.measured.bins == 0) {
    return std::nullopt;
  }
  return (*report.end.cpu_seconds - *report.start.cpu_seconds) / (report.measured.bins / 1e6);
}

// kldriftd's own time on method kTimedMethods[index] within the measured interval, if both
// samples have it.
std::optional<RequestTimes> MeasuredRequestTimes(const BenchReport& report, size_t index) {
  const std::optional<RequestTimes>& start = report.start.request_times[index];
  const std::optional<RequestTimes>& end = report.end.request_times[index];
  if (!start || !end) return std::nullopt;
  return RequestTimes{end->requests - start->requests, end->seconds - start->seconds,
                      end->within_1ms - start->within_1ms};
}

std::optional<double> RssPerStream(const BenchReport& report) {
  if (!report.before_setup.rss_bytes || !report.end.rss_bytes || report.streams == 0) {
    return std::nullopt;
  }
  return (*report.end.rss_bytes - *report.before_setup.rss_bytes) / report.streams;
}

void JsonLatencies(const LatencyHistogram& latencies, JsonWriter& json) {
  json.BeginObject();
  json.Key("count");
  json.Integer(static_cast<long long>(latencies.count()));
  for (auto [key, q] :
       {std::pair<const char*, double>{"p50", 0.5}, {"p99", 0.99}, {"p999", 0.999}}) {
    json.Key(key);
    json.Number(latencies.QuantileMillis(q));
  }
  json.EndObject();
}

void JsonOptional(absl::string_view key, std::optional<double> value, JsonWriter& json) {
  json.Key(key);
  json.Number(value.value_or(std::numeric_limits<double>::quiet_NaN()));
}

std::string FormatJson(const BenchOptions& bench, const BenchReport& report) {
  JsonWriter json;
  json.BeginObject();
  json.Key("mode");
  json.String(ChoiceName(kModes, bench.mode));
  for (auto [key, value] : {std::pair<const char*, long>{"clients", bench.clients},
                            {"models", bench.models},
                            {"streams_per_model", bench.streams_per_model},
                            {"streams", report.streams},
                            {"bins", bench.bins},
                            {"batch_streams", bench.batch_streams},
                            {"batch_values", bench.batch_values},
                            {"in_flight", bench.in_flight}}) {
    json.Key(key);
    json.Integer(value);
  }
  json.Key("get_drift_qps");
  json.Number(bench.get_drift_qps);
  json.Key("ingest_rate");
  json.Number(bench.ingest_rate);
  json.Key("arrivals");
  json.String(ChoiceName(kArrivals, bench.arrivals));
  json.Key("setup");
  json.BeginObject();
  json.Key("created");
  json.Integer(report.setup.created);
  json.Key("existing");
  json.Integer(report.setup.existing);
  json.Key("seconds");
  json.Number(report.setup_seconds);
  json.EndObject();
  json.Key("measured_seconds");
  json.Number(report.measured_seconds);
  json.Key("acked_batches");
  json.Integer(static_cast<long long>(report.measured.batches));
  json.Key("batches_per_second");
  json.Number(PerSecond(report.measured.batches, report.measured_seconds));
  json.Key("bins_per_second");
  json.Number(PerSecond(report.measured.bins, report.measured_seconds));
  json.Key("values_per_second");
  json.Number(PerSecond(report.measured.values, report.measured_seconds));
  json.Key("ack_latency_ms");
  JsonLatencies(report.ack_latencies, json);
  json.Key("get_drift");
  json.BeginObject();
  json.Key("calls");
  json.Integer(static_cast<long long>(report.get_drift.calls));
  json.Key("latency_ms");
  JsonLatencies(report.get_drift.latencies, json);
  json.EndObject();
  json.Key("totals");
  json.BeginObject();
  json.Key("batches_sent");
  json.Integer(static_cast<long long>(report.batches_sent));
  json.Key("batches_acked");
  json.Integer(static_cast<long long>(report.total.batches));
  json.Key("bins_acked");
  json.Integer(static_cast<long long>(report.total.bins));
  json.Key("values_acked");
  json.Integer(static_cast<long long>(report.total.values));
  json.Key("observations_acked");
  json.Integer(static_cast<long long>(report.total.observations));
  json.EndObject();
  json.Key("server");
  json.BeginObject();
  json.Key("source");
  json.String(report.end.source);
  JsonOptional("cpu_seconds",
               report.end.cpu_seconds && report.start.cpu_seconds
                   ? std::optional<double>(*report.end.cpu_seconds - *report.start.cpu_seconds)
                   : std::nullopt,
               json);
  JsonOptional("cpu_seconds_per_million_bins", CpuPerMillionBins(report), json);
  JsonOptional("rss_before_setup_bytes", report.before_setup.rss_bytes, json);
  JsonOptional("rss_bytes", report.end.rss_bytes, json);
  JsonOptional("rss_per_stream_bytes", RssPerStream(report), json);
  // kldriftd's own time per request in the measured interval (--metrics), by method: mean, and
  // the share of requests over 1 ms. Ingest's requests are batches.
  json.Key("request_time");
  json.BeginObject();
  for (size_t i = 0; i < std::size(kTimedMethods); ++i) {
    const std::optional<RequestTimes> times = MeasuredRequestTimes(report, i);
    if (!times) continue;
    json.Key(kTimedMethods[i].method);
    json.BeginObject();
    json.Key("requests");
    json.Integer(static_cast<long long>(times->requests));
    JsonOptional("mean_us",
                 times->requests > 0 ? std::optional<double>(1e6 * times->seconds / times->requests)
                                     : std::nullopt,
                 json);
    JsonOptional("over_1ms_share",
                 times->requests > 0
                     ? std::optional<double>(1 - times->within_1ms / times->requests)
                     : std::nullopt,
                 json);
    json.EndObject();
  }
  json.EndObject();
  json.EndObject();
  if (bench.per_stream) {
    json.Key("per_stream_observations");
    json.BeginObject();
    for (const auto& [name, observations] : report.per_stream) {
      json.Key(name);
      json.Integer(static_cast<long long>(observations));
    }
    json.EndObject();
  }
  json.EndObject();
  return json.Finish();
}

std::string Millis(double ms) { return std::isnan(ms) ? "-" : absl::StrFormat("%.3g ms", ms); }

void PrintHuman(const BenchOptions& bench, const BenchReport& report, std::ostream& out) {
  out << absl::StrFormat("ingest: %.0f batches/s, %.3g bins/s",
                         PerSecond(report.measured.batches, report.measured_seconds),
                         PerSecond(report.measured.bins, report.measured_seconds));
  if (bench.mode == BenchOptions::Mode::kValues) {
    out << absl::StrFormat(", %.3g raw values/s",
                           PerSecond(report.measured.values, report.measured_seconds));
  }
  out << absl::StrFormat(" (%d batches in %.1f s)\n", report.measured.batches,
                         report.measured_seconds);
  const LatencyHistogram& acks = report.ack_latencies;
  out << "ack latency: p50 " << Millis(acks.QuantileMillis(0.5)) << ", p99 "
      << Millis(acks.QuantileMillis(0.99)) << ", p99.9 " << Millis(acks.QuantileMillis(0.999))
      << "\n";
  if (bench.get_drift_qps > 0) {
    const LatencyHistogram& drift = report.get_drift.latencies;
    out << "GetDrift latency: p50 " << Millis(drift.QuantileMillis(0.5)) << ", p99 "
        << Millis(drift.QuantileMillis(0.99)) << " (" << drift.count() << " calls at "
        << bench.get_drift_qps << "/s, " << ChoiceName(kArrivals, bench.arrivals) << " arrivals)\n";
  }
  out << "totals: " << report.total.batches << " of " << report.batches_sent
      << " batches acknowledged, " << report.total.observations << " observations\n";
  if (report.end.source.empty()) {
    out << "server: no CPU or memory figures (give --metrics or --server-pid)\n";
    return;
  }
  out << "server (from " << (report.end.source == "metrics" ? "/metrics" : "/proc") << "):";
  if (std::optional<double> cpu = CpuPerMillionBins(report)) {
    out << absl::StrFormat(" %.3g CPU s per million bins;", *cpu);
  }
  if (report.end.rss_bytes) {
    out << absl::StrFormat(" RSS %.1f MiB", *report.end.rss_bytes / (1 << 20));
  }
  if (std::optional<double> per_stream = RssPerStream(report)) {
    out << absl::StrFormat(" (%.1f MiB before setup): %.1f KiB per stream",
                           *report.before_setup.rss_bytes / (1 << 20), *per_stream / 1024);
  }
  out << "\n";
  for (size_t i = 0; i < std::size(kTimedMethods); ++i) {
    const std::optional<RequestTimes> times = MeasuredRequestTimes(report, i);
    if (!times || times->requests <= 0) continue;
    out << absl::StrFormat("server time per %s: mean %.0f us, %.2f %% over 1 ms (%.0f requests)\n",
                           kTimedMethods[i].request, 1e6 * times->seconds / times->requests,
                           100 * (1 - times->within_1ms / times->requests), times->requests);
  }
}

absl::Status ParseBounded(const ParsedFlags& flags, const std::string& name, long low, long high,
                          int* value) {
  absl::StatusOr<long> parsed = flags.GetInt(name, *value);
  if (!parsed.ok()) return parsed.status();
  if (*parsed < low || *parsed > high) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", name, "=", *parsed, " is out of range [", low, ", ", high, "]"));
  }
  *value = static_cast<int>(*parsed);
  return absl::OkStatus();
}

absl::Status ParseDurationFlag(const ParsedFlags& flags, const std::string& name,
                               absl::Duration low, absl::Duration high, absl::Duration* value) {
  if (!flags.Has(name)) return absl::OkStatus();
  if (!absl::ParseDuration(*flags.Get(name), value) || *value < low || *value > high) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", name, "=", *flags.Get(name), " is not a duration such as 10s in [",
                     absl::FormatDuration(low), ", ", absl::FormatDuration(high), "]"));
  }
  return absl::OkStatus();
}

}  // namespace

const std::vector<FlagSpec>& BenchFlags() {
  static const auto* specs = new std::vector<FlagSpec>{
      {"clients", false,
       "concurrent Ingest streams, one client id and connection each (default 4)"},
      {"models", false, "models (default 100)"},
      {"streams-per-model", false, "signals per model; streams = models x signals (default 100)"},
      {"bins", false, "buckets per histogram, full layout (default 64)"},
      {"mode", false,
       "prebinned: pre-binned K-bin deltas; values: raw values binned on the client against a "
       "numeric reference (default prebinned)"},
      {"batch-streams", false,
       "streams per IngestRequest, all of one model (default 100, at most --streams-per-model)"},
      {"batch-values", false, "values mode: raw values per stream per batch (default 100)"},
      {"duration", false, "measured time after the warm-up (default 10s, at most 10m)"},
      {"warmup", false, "load before measuring starts (default 2s, at most 1m)"},
      {"in-flight", false,
       "most unacknowledged batches per Ingest stream; when reached, the client waits until "
       "half are acknowledged (default 8)"},
      {"ingest-rate", false,
       "batches per second across all clients, sent as they fall due to the millisecond "
       "(gRPC's completion-queue timers); 0: as fast as acks allow (default 0)"},
      {"get-drift-qps", false,
       "GetDrift calls per second on random streams; 0: none (default 100)"},
      {"arrivals", false,
       "poisson: each paced client and the GetDrift caller send at random, exponentially "
       "distributed gaps (independent senders); fixed: all on fixed grids starting together "
       "(synchronized flushes) (default poisson)"},
      {"server-pid", false, "read the server's CPU and RSS from /proc/PID (same machine)"},
      {"metrics", false,
       "the server's metrics endpoint HOST:PORT: CPU and RSS from its process_* metrics"},
      {"model-prefix", false, "models are named PREFIX-model-N (default bench)"},
      {"setup-only", true, "create the missing references and stop"},
      {"no-setup", true, "assume the references exist"},
      {"per-stream", true, "JSON: every stream's acknowledged observations"},
      {"seed", false, "random seed (default 1)"},
      {"json", true, "one JSON object instead of text"},
      {"help", true, "show this help"},
  };
  return *specs;
}

absl::StatusOr<BenchOptions> ParseBenchOptions(const ParsedFlags& flags) {
  BenchOptions bench;
  if (absl::Status s = ParseChoice(flags, "mode", kModes, &bench.mode); !s.ok()) return s;
  const bool values = bench.mode == BenchOptions::Mode::kValues;
  absl::Status status = ParseBounded(flags, "clients", 1, kMaxClients, &bench.clients);
  if (status.ok()) status = ParseBounded(flags, "models", 1, kMaxModels, &bench.models);
  if (status.ok()) {
    status =
        ParseBounded(flags, "streams-per-model", 1, kMaxStreamsPerModel, &bench.streams_per_model);
  }
  // Values mode needs at least one edge: underflow, overflow and NaN come on top.
  if (status.ok()) status = ParseBounded(flags, "bins", values ? 3 : 1, kMaxBins, &bench.bins);
  bench.batch_streams = std::min(bench.batch_streams, bench.streams_per_model);
  if (status.ok()) {
    status = ParseBounded(flags, "batch-streams", 1, bench.streams_per_model, &bench.batch_streams);
  }
  if (status.ok()) {
    status = ParseBounded(flags, "batch-values", 1, kMaxBatchValues, &bench.batch_values);
  }
  if (status.ok()) status = ParseBounded(flags, "in-flight", 1, kMaxInFlight, &bench.in_flight);
  if (status.ok()) {
    status = ParseDurationFlag(flags, "duration", absl::Milliseconds(100), kMaxDuration,
                               &bench.duration);
  }
  if (status.ok()) {
    status = ParseDurationFlag(flags, "warmup", absl::ZeroDuration(), kMaxWarmup, &bench.warmup);
  }
  if (status.ok() && flags.Has("server-pid")) {
    status = ParseBounded(flags, "server-pid", 1, 1 << 30, &bench.server_pid);
  }
  if (!status.ok()) return status;
  absl::StatusOr<double> qps = flags.GetDouble("get-drift-qps", bench.get_drift_qps);
  if (!qps.ok()) return qps.status();
  if (!(*qps >= 0 && *qps <= kMaxGetDriftQps)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--get-drift-qps must be in [0, ", kMaxGetDriftQps, "]"));
  }
  bench.get_drift_qps = *qps;
  absl::StatusOr<double> rate = flags.GetDouble("ingest-rate", bench.ingest_rate);
  if (!rate.ok()) return rate.status();
  if (!(*rate >= 0 && *rate <= kMaxIngestRate)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--ingest-rate must be in [0, ", kMaxIngestRate, "]"));
  }
  bench.ingest_rate = *rate;
  if (absl::Status s = ParseChoice(flags, "arrivals", kArrivals, &bench.arrivals); !s.ok()) {
    return s;
  }
  const long streams = static_cast<long>(bench.models) * bench.streams_per_model;
  if (streams > kMaxStreams) {
    return absl::InvalidArgumentError(
        absl::StrCat("--models x --streams-per-model = ", streams, " is over ", kMaxStreams));
  }
  if (bench.clients > streams) {
    return absl::InvalidArgumentError(
        absl::StrCat("--clients=", bench.clients, " is more than the ", streams, " streams"));
  }
  if (static_cast<long>(bench.batch_streams) * bench.bins > kMaxNumbersPerBatch) {
    return absl::InvalidArgumentError(absl::StrCat("--batch-streams x --bins is over ",
                                                   kMaxNumbersPerBatch, " numbers per batch"));
  }
  if (flags.Has("metrics")) bench.metrics_address = *flags.Get("metrics");
  if (flags.Has("model-prefix")) {
    bench.model_prefix = *flags.Get("model-prefix");
    if (bench.model_prefix.empty()) return absl::InvalidArgumentError("--model-prefix is empty");
  }
  bench.setup_only = flags.Has("setup-only");
  bench.setup = !flags.Has("no-setup");
  if (bench.setup_only && !bench.setup) {
    return absl::InvalidArgumentError("--setup-only and --no-setup exclude each other");
  }
  absl::StatusOr<long> seed = flags.GetInt("seed", 1);
  if (!seed.ok()) return seed.status();
  bench.seed = static_cast<uint64_t>(*seed);
  bench.json = flags.Has("json");
  bench.per_stream = flags.Has("per-stream");
  return bench;
}

int RunBench(const std::vector<std::string>& args, const GlobalOptions& options, std::ostream& out,
             std::ostream& err) {
  absl::StatusOr<ParsedFlags> flags = ParseFlags(kCommand, BenchFlags(), args);
  if (!flags.ok()) return ReportUsageError(kCommand, flags.status(), err);
  if (flags->Has("help")) {
    out << Usage();
    return kExitOk;
  }
  absl::StatusOr<BenchOptions> parsed = ParseBenchOptions(*flags);
  if (!parsed.ok()) return ReportUsageError(kCommand, parsed.status(), err);
  const BenchOptions& bench = *parsed;
  BenchReport report;
  report.streams = static_cast<long>(bench.models) * bench.streams_per_model;
  if (!bench.json) {
    out << absl::StrFormat(
               "kldrift bench: %s, %d clients, %d streams (%d models x %d signals), %d bins, "
               "%d streams per batch%s, %d in flight, %s after %s warm-up\n",
               ChoiceName(kModes, bench.mode), bench.clients, report.streams, bench.models,
               bench.streams_per_model, bench.bins, bench.batch_streams,
               bench.mode == BenchOptions::Mode::kValues
                   ? absl::StrCat(" x ", bench.batch_values, " values")
                   : "",
               bench.in_flight, absl::FormatDuration(bench.duration),
               absl::FormatDuration(bench.warmup))
        << std::flush;
  }

  report.before_setup = SampleServer(bench);
  if (bench.setup) {
    const absl::Time setup_start = absl::Now();
    const int threads = std::min(bench.clients, bench.models);
    std::vector<SetupResult> results(threads);
    {
      const KlDriftClient client = MakeClient(options);
      std::vector<std::thread> workers;
      for (int t = 0; t < threads; ++t) {
        workers.emplace_back([&, t] { results[t] = SetUpModels(bench, client, t, threads); });
      }
      for (std::thread& worker : workers) worker.join();
    }
    for (const SetupResult& result : results) {
      if (!result.status.ok()) return ReportServerError(result.status, err);
      report.setup.created += result.created;
      report.setup.existing += result.existing;
    }
    report.setup_seconds = absl::ToDoubleSeconds(absl::Now() - setup_start);
    if (!bench.json) {
      out << absl::StrFormat("setup: %d references created, %d existing, in %.1f s\n",
                             report.setup.created, report.setup.existing, report.setup_seconds)
          << std::flush;
    }
  }
  if (bench.setup_only) {
    if (bench.json) out << FormatJson(bench, report);
    return kExitOk;
  }

  RunControl control;
  std::vector<std::unique_ptr<BenchClient>> clients;
  for (int c = 0; c < bench.clients; ++c) {
    clients.push_back(std::make_unique<BenchClient>(bench, options, c, &control));
  }
  const absl::Time start = absl::Now();
  const absl::Time measure_start = start + bench.warmup;
  // A backstop only (the run ends on control.stop): past the measured interval, which starts
  // once the start sample is in (a scrape can take up to its timeout between reads, and reads up
  // to kMaxScrapeBytes), by the drain time of the last batches.
  const absl::Time stream_deadline = measure_start + bench.duration + 2 * options.timeout +
                                     absl::Seconds(60 + kScrapeTimeoutSeconds);
  std::vector<std::thread> threads;
  for (auto& client : clients) {
    threads.emplace_back([&client, stream_deadline] { client->Run(stream_deadline); });
  }
  GetDriftResult get_drift;
  std::thread get_drift_thread;
  if (bench.get_drift_qps > 0) {
    get_drift_thread = std::thread([&] { get_drift = RunGetDrift(bench, options, &control); });
  }
  // Sleeps until `until` or a failure; whether the run is still healthy.
  auto sleep_until = [&control](absl::Time until) {
    MutexLock lock(&control.mutex);
    while (!control.stop && absl::Now() < until) {
      control.changed.WaitWithDeadline(&control.mutex, until);
    }
    return !control.stop.load();
  };
  Progress at_start, at_end;
  auto sum_progress = [&clients] {
    Progress sum;
    for (const auto& client : clients) {
      const Progress p = client->progress();
      sum.batches += p.batches;
      sum.bins += p.bins;
      sum.values += p.values;
      sum.observations += p.observations;
    }
    return sum;
  };
  if (sleep_until(measure_start)) {
    // The measured interval starts once the start sample is in. A /metrics scrape of 10,000
    // streams takes a good part of a second and loads the server (the echo server has none):
    // neither its time nor what was acknowledged during it is measured. (Until 2026-11-25 the
    // batches acknowledged during it were counted, its time was not.)
    report.start = SampleServer(bench);
    at_start = sum_progress();
    const absl::Time measured_from = absl::Now();
    control.measuring = true;
    sleep_until(measured_from + bench.duration);
    control.measuring = false;
    at_end = sum_progress();
    report.measured_seconds = absl::ToDoubleSeconds(absl::Now() - measured_from);
    report.end = SampleServer(bench);
  }
  {
    MutexLock lock(&control.mutex);
    control.stop = true;
    control.changed.SignalAll();
  }
  for (std::thread& thread : threads) thread.join();
  if (get_drift_thread.joinable()) get_drift_thread.join();
  {
    MutexLock lock(&control.mutex);
    if (!control.failure.ok()) return ReportServerError(control.failure, err);
  }

  report.measured.batches = at_end.batches - at_start.batches;
  report.measured.bins = at_end.bins - at_start.bins;
  report.measured.values = at_end.values - at_start.values;
  report.measured.observations = at_end.observations - at_start.observations;
  report.total = sum_progress();
  for (const auto& client : clients) {
    report.batches_sent += client->sent();
    report.ack_latencies.Merge(client->latencies());
    if (bench.per_stream) client->AddPerStream(&report.per_stream);
  }
  report.get_drift = std::move(get_drift);
  if (bench.json) {
    out << FormatJson(bench, report);
  } else {
    PrintHuman(bench, report, out);
  }
  return kExitOk;
}

}  // namespace kldrift::cli
