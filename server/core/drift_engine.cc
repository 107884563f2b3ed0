#include "server/core/drift_engine.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <iterator>
#include <limits>
#include <thread>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "server/core/count_scan.h"
#include "server/core/cpu_dispatch.h"
#include "server/core/prefetch.h"
#include "server/kernels/divergence.h"
#include "server/kernels/gaussian.h"

namespace kldrift {
namespace {

// The largest count a batch may carry: 2^53, the last double with all integers below it exact.
constexpr double kMaxExactCount = 9007199254740992.0;

constexpr size_t kDefaultPageSize = 100;
constexpr size_t kMaxPageSize = 1000;
constexpr size_t kEvaluationTopBins = 5;
// Streams an evaluation thread claims at a time.
constexpr size_t kStreamsPerRun = 256;
// Probability vectors must sum to 1 within this.
constexpr double kProbabilitySumTolerance = 1e-6;
// Gaussian statistics must satisfy sum^2 <= count * sum_squares (Cauchy-Schwarz) within this
// relative slack, which covers the client's rounding.
constexpr double kGaussianStatsTolerance = 1e-6;
constexpr double kDefaultMinSamplesNonHistogram = 100;
// How often the ingest client table is swept for clients idle past EngineOptions::client_retention.
constexpr absl::Duration kClientSweepInterval = absl::Minutes(1);

// sums[i] += counts[i] for n whole counts in [0, 2^31): converted through int32_t, one vector
// instruction (an unsigned conversion takes three more before AVX-512), in a loop the compiler
// vectorizes and compiles for AVX2 too. Coalescing's add of a delta to a stream's pending sums.
KLDRIFT_TARGET_CLONES_AVX2 void AddSmallCounts(uint32_t* sums, const double* counts, size_t n) {
  for (size_t i = 0; i < n; ++i) sums[i] += static_cast<uint32_t>(static_cast<int32_t>(counts[i]));
}

std::string WindowList(const Reference& ref) {
  std::vector<std::string> names;
  for (absl::Duration w : ref.policy.windows) names.push_back(FormatWindow(w));
  return absl::StrJoin(names, ", ");
}

absl::Status KindMismatch(const StreamKey& key, const Reference& ref, absl::string_view sent) {
  absl::string_view accepted = "a histogram";
  switch (ref.kind) {
    case ReferenceKind::kNumeric:
      accepted = "a histogram or raw values";
      break;
    case ReferenceKind::kCategorical:
      accepted = "a histogram, labels or probability vectors";
      break;
    case ReferenceKind::kPreBinned:
      accepted = "a histogram or probability vectors";
      break;
    case ReferenceKind::kGaussian:
      accepted = "Gaussian statistics";
      break;
    case ReferenceKind::kPairedLogProbs:
      accepted = "log-prob pairs";
      break;
  }
  return absl::FailedPreconditionError(
      absl::StrCat("stream ", key.ToString(), " has a ", ReferenceKindName(ref.kind),
                   " reference, which takes ", accepted, ", not ", sent));
}

// Histogram counts that are small whole numbers (the common case), checked and summed in one
// vectorized pass: fills `summary` and `sum` and returns true, so the counts can become the delta
// as they are. False for anything else (the general check then says what is wrong, if anything).
bool ScanSmallHistogram(const StreamData& data, CompactSubBuckets::DeltaSummary* summary,
                        double* sum) {
  const SmallCountScan scan = ScanSmallCounts(data.values());
  if (!scan.small_counts) return false;
  *summary = CompactSubBuckets::DeltaSummary{true, scan.max};  // max < 2^31
  *sum = scan.sum;
  return true;
}

// The window delta a stream's data adds, validated against its reference. Histogram data also
// fills `summary` (CompactSubBuckets::Summarize of the delta) and `sum` in the same pass; for other
// data the caller computes them. (Histograms of small whole counts, the bulk of ingest, do not
// come here: their counts are the delta as they are, see ScanSmallHistogram.)
absl::StatusOr<std::vector<double>> ComputeDelta(const StreamKey& key, const Reference& ref,
                                                 const StreamData& data,
                                                 const EngineOptions& options,
                                                 CompactSubBuckets::DeltaSummary* summary,
                                                 double* sum) {
  using Type = StreamData::Type;
  const absl::Span<const double> numbers = data.values();
  if (data.type == Type::kHistogram) {
    if (!ref.is_histogram()) return KindMismatch(key, ref, "a histogram");
    if (numbers.size() != ref.window_width()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "stream ", key.ToString(), ": the histogram has ", numbers.size(),
          " bins but reference version ", ref.version, " has ", ref.window_width(),
          " (underflow, bins, overflow and NaN buckets included); fetch its bins again"));
    }
  }
  std::vector<double> delta(ref.window_width(), 0.0);
  switch (data.type) {
    case Type::kHistogram: {
      // Counts of 2^31 or more, or invalid input: the general check.
      double total = 0;
      double max = 0;
      for (size_t i = 0; i < delta.size(); ++i) {
        const double c = numbers[i];
        // Past 2^53 doubles are no longer exact integers, and a few such counts would make the
        // window's total infinite (no measures until they expire). NaN and infinities fail the
        // range test; inside it the cast is exact for integers and tells them from fractions.
        if (!(c >= 0 && c <= kMaxExactCount) || static_cast<double>(static_cast<int64_t>(c)) != c) {
          return absl::InvalidArgumentError(
              absl::StrCat("stream ", key.ToString(), ": bin ", i, " has count ", c,
                           "; histogram counts are integers >= 0 and at most 2^53"));
        }
        total += c;
        max = std::max(max, c);
        delta[i] = c;
      }
      // Every value is an integer >= 0: what Summarize would say.
      constexpr double kMaxUint32 = 0xFFFFFFFFu;
      *summary = max <= kMaxUint32 ? CompactSubBuckets::DeltaSummary{true, max}
                                   : CompactSubBuckets::DeltaSummary{};
      *sum = total;
      return delta;
    }
    case Type::kValues:
      if (ref.kind != ReferenceKind::kNumeric) return KindMismatch(key, ref, "raw values");
      ref.layout->AddValues(numbers, absl::MakeSpan(delta));
      return delta;
    case Type::kLabels:
      if (ref.kind != ReferenceKind::kCategorical) return KindMismatch(key, ref, "labels");
      for (const std::string& label : data.labels) delta[ref.layout->CategoryBin(label)] += 1;
      return delta;
    case Type::kProbabilities: {
      if (ref.kind != ReferenceKind::kCategorical && ref.kind != ReferenceKind::kPreBinned) {
        return KindMismatch(key, ref, "probability vectors");
      }
      const size_t width = ref.kind == ReferenceKind::kCategorical ? ref.layout->categories().size()
                                                                   : ref.layout->size();
      if (numbers.empty() || numbers.size() % width != 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("stream ", key.ToString(), ": ", numbers.size(),
                         " probabilities are not a whole number of vectors of ", width));
      }
      for (size_t start = 0; start < numbers.size(); start += width) {
        double sum = 0;
        for (size_t i = 0; i < width; ++i) {
          const double p = numbers[start + i];
          if (!(p >= 0 && p <= 1)) {
            return absl::InvalidArgumentError(
                absl::StrCat("stream ", key.ToString(), ": probability vector ", start / width,
                             " has ", p, " at position ", i, "; probabilities are in [0, 1]"));
          }
          sum += p;
          delta[i] += p;
        }
        if (std::fabs(sum - 1.0) > kProbabilitySumTolerance) {
          return absl::InvalidArgumentError(absl::StrCat(
              "stream ", key.ToString(), ": probability vector ", start / width, " sums to ", sum,
              "; each vector must sum to 1 within ", kProbabilitySumTolerance));
        }
      }
      return delta;
    }
    case Type::kGaussian: {
      if (ref.kind != ReferenceKind::kGaussian)
        return KindMismatch(key, ref, "Gaussian statistics");
      const size_t dims = ref.gaussian.mean.size();
      if (data.gaussian_sum.size() != dims || data.gaussian_sum_squares.size() != dims) {
        return absl::FailedPreconditionError(
            absl::StrCat("stream ", key.ToString(), ": the reference has ", dims,
                         " dimensions but the batch ", "has ", data.gaussian_sum.size(),
                         " sums and ", data.gaussian_sum_squares.size(), " sums of squares"));
      }
      if (!std::isfinite(data.gaussian_count) || !(data.gaussian_count > 0)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "stream ", key.ToString(), ": Gaussian count ", data.gaussian_count, " must be > 0"));
      }
      delta[0] = data.gaussian_count;
      for (size_t i = 0; i < dims; ++i) {
        const double s = data.gaussian_sum[i];
        const double ss = data.gaussian_sum_squares[i];
        if (!std::isfinite(s) || !std::isfinite(ss) || ss < 0) {
          return absl::InvalidArgumentError(
              absl::StrCat("stream ", key.ToString(), ": dimension ", i, " has sum ", s,
                           " and sum of squares ", ss, "; both must be finite, squares >= 0"));
        }
        if (s * s > data.gaussian_count * ss * (1 + kGaussianStatsTolerance)) {
          // No real values have these statistics: the window's variance would go negative.
          return absl::InvalidArgumentError(
              absl::StrCat("stream ", key.ToString(), ": dimension ", i, " has sum ", s,
                           " and sum of squares ", ss, " over count ", data.gaussian_count,
                           ", which no real values have (sum^2 <= count * sum of squares)"));
        }
        delta[1 + i] = s;
        delta[1 + dims + i] = ss;
      }
      return delta;
    }
    case Type::kLogProbs: {
      if (ref.kind != ReferenceKind::kPairedLogProbs)
        return KindMismatch(key, ref, "log-prob pairs");
      const size_t n = data.log_p_current.size();
      if (n == 0 || data.log_p_reference.size() != n) {
        return absl::InvalidArgumentError(absl::StrCat(
            "stream ", key.ToString(), ": ", n, " current and ", data.log_p_reference.size(),
            " reference log-probs; pairs need equal, non-zero counts"));
      }
      for (size_t i = 0; i < n; ++i) {
        for (double lp : {data.log_p_current[i], data.log_p_reference[i]}) {
          if (!std::isfinite(lp) || lp > 0) {
            return absl::InvalidArgumentError(
                absl::StrCat("stream ", key.ToString(), ": pair ", i, " has log-prob ", lp,
                             "; log-probabilities are finite and <= 0"));
          }
        }
      }
      const kernels::PolicyKlSums sums =
          kernels::SumPolicyKl(data.log_p_current.data(), data.log_p_reference.data(), n);
      delta = {sums.samples, sums.k1, sums.k1_sq, sums.k2, sums.k2_sq, sums.k3, sums.k3_sq};
      return delta;
    }
  }
  return absl::InternalError("unknown stream data type");
}

size_t ObservationCount(const StreamData& data) {
  switch (data.type) {
    case StreamData::Type::kLabels:
      return data.labels.size();
    case StreamData::Type::kLogProbs:
      return data.log_p_current.size();
    case StreamData::Type::kGaussian:
      return data.gaussian_sum.size();
    default:
      return data.values().size();
  }
}

std::string EncodePageToken(const StreamKey& key) {
  return absl::WebSafeBase64Escape(absl::StrCat(key.model, std::string(1, '\0'), key.model_version,
                                                std::string(1, '\0'), key.signal));
}

absl::StatusOr<StreamKey> DecodePageToken(const std::string& token) {
  std::string raw;
  if (!absl::WebSafeBase64Unescape(token, &raw)) {
    return absl::InvalidArgumentError("page_token is not one this server issued");
  }
  std::vector<std::string> parts = absl::StrSplit(raw, '\0');
  if (parts.size() != 3)
    return absl::InvalidArgumentError("page_token is not one this server issued");
  return StreamKey{parts[0], parts[1], parts[2]};
}

double Sum(absl::Span<const double> values) {
  double total = 0;
  for (double v : values) total += v;
  return total;
}

kernels::EstimatorSummary Estimator(double n, double sum, double sum_squares) {
  kernels::EstimatorSummary e;
  e.mean = sum / n;
  if (n < 2) {
    e.standard_error = std::numeric_limits<double>::infinity();
  } else {
    const double variance = std::max(0.0, (sum_squares - n * e.mean * e.mean) / (n - 1));
    e.standard_error = std::sqrt(variance / n);
  }
  return e;
}

// A window's totals in this thread's scratch buffer, valid until the next call on this thread.
absl::Span<const double> TotalsOf(const SlidingWindow& ring) {
  thread_local std::vector<double> scratch;
  scratch.resize(ring.width());
  ring.ReadTotals(absl::MakeSpan(scratch));
  return scratch;
}

size_t EvalThreads(int configured) {
  if (configured > 0) return static_cast<size_t>(configured);
  return std::max(1u, std::thread::hardware_concurrency());
}

}  // namespace

struct DriftEngine::WindowState {
  WindowState(absl::Duration length, int sub_buckets, size_t width)
      : ring(length, sub_buckets, width) {}

  SlidingWindow ring;
  AlertStateMachine alert;
  // Starts of the sub-buckets changed since the last snapshot (storage).
  std::vector<absl::Time> dirty;
  // dirty.back() when dirty is not empty, kept here so that ingest need not read the vector's heap
  // block (a cache miss per window per stream of every batch) to see that it is already there.
  absl::Time last_dirty;
  // What the alert needs, derived from the totals of ring.generation() == inputs_generation under
  // the current reference (StreamState::FastAlertInputs, or seeded from a full report by
  // Evaluate); kNoInputs when not derived yet. With an observer, inputs_generation is also the
  // generation of the last full report it was given for this window.
  static constexpr uint64_t kNoInputs = ~uint64_t{0};
  uint64_t inputs_generation = kNoInputs;
  double inputs_value = 0;
  bool inputs_enough_samples = false;
  // Whether the G-test p-value is at most the policy's max_p_value: 1, 0, or -1 not computed yet.
  int8_t inputs_evidence = -1;
  // The generation of the totals of the last full report the observer was given for this window
  // under the current reference; kNoInputs when none.
  uint64_t observer_generation = kNoInputs;
};

struct DriftEngine::StreamState {
  // `track_dirty`: record the sub-buckets each add changes (WindowState::dirty), for a store.
  StreamState(StreamKey k, bool track_dirty) : key(std::move(k)), track_dirty(track_dirty) {}

  const Reference& current() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex) { return *versions.back(); }
  // Adds what ingest coalesced (FoldPending), then advances every window to `now`. Everything that
  // reads the windows calls it first.
  void AdvanceWindows(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex);

  // Ingest coalescing (EngineOptions::coalesce_ingest).
  // Whether data of `event_time` added now would land in every window's head sub-bucket with no
  // window to advance first: what coalescing needs, and what makes the windows' own check of
  // coverage unnecessary.
  bool InEveryHead(absl::Time event_time, absl::Time now) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex) {
    return event_time >= heads_start && now < heads_end;
  }
  // Adds `delta` (of `summary`) to `pending` if it may be coalesced (whole counts below 2^31,
  // InEveryHead(event_time, now), windows holding no fractions), adding what was pending to the
  // windows first if the sum could reach 2^32. False: the caller adds it to the windows
  // (AddToWindows).
  bool Coalesce(absl::Time event_time, absl::Time now, absl::Span<const double> delta,
                const CompactSubBuckets::DeltaSummary& summary)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex);
  // Adds what is pending to the windows.
  void FoldPending() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex);
  // Adds `delta` to every window covering `event_time`, noting the sub-buckets changed.
  void AddToWindows(absl::Time event_time, absl::Span<const double> delta,
                    const CompactSubBuckets::DeltaSummary& summary)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex);
  // For adds to the windows made directly (restoring them): notes fractional values, which rule
  // out coalescing into these windows from now on.
  void NoteAdded(absl::Span<const double> values) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex) {
    if (!windows_hold_fractions && !CompactSubBuckets::Summarize(values).counts) {
      windows_hold_fractions = true;
    }
  }
  // Replaces the windows with `fresh` ones (nothing pending, no heads known).
  void ResetWindows(std::vector<WindowState> fresh) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex);
  // A fresh report for one of this stream's windows.
  WindowReport Report(const WindowState& window, size_t top_bins, absl::Time now,
                      BinLabels labels = BinLabels::kNamed) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex);
  // What AlertStateMachine::Observe needs for `window`, as a Report would give it, computing no
  // more than the decision needs: the policy's measure (KL(current||reference) alone by default),
  // the G-test only when it can raise an alert, and nothing when the totals have not changed since
  // the last call.
  struct AlertInputs {
    double value = 0;
    bool eligible = false;
  };
  AlertInputs FastAlertInputs(WindowState& window, absl::Time now) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex);
  // Makes FastAlertInputs answer from `report` (a full report of `window`'s current totals) until
  // the totals change.
  static void SeedAlertInputs(WindowState& window, const WindowReport& report);
  // A report of `window` with what every report carries: stream, window, kind, version, time,
  // alert status and thresholds.
  WindowReport ReportHeader(const WindowState& window, absl::Time now) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex);
  // A report of `window` for an observer that has its measures already: alert fields only, from
  // the inputs SeedAlertInputs kept (WindowReport::measures_unchanged).
  WindowReport AlertOnlyReport(const WindowState& window, absl::Time now) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex);
  // Whether the windows kept for the current version can serve `next` (same bins and windows).
  bool KeepsWindows(const Reference& next) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex) {
    return !versions.empty() && current().SameBins(next) &&
           current().policy.windows == next.policy.windows &&
           current().policy.sub_buckets == next.policy.sub_buckets;
  }
  // Makes `ref` the current version: new windows unless `keep_windows`, alert states reset,
  // incremental sums rebuilt for its profile.
  void Install(std::shared_ptr<const Reference> ref, bool keep_windows, absl::Time now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex);
  // The window of this length, or null.
  WindowState* FindWindow(absl::Duration length) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex) {
    for (WindowState& w : windows) {
      if (w.ring.length() == length) return &w;
    }
    return nullptr;
  }

  // Asks the CPU to bring into cache what evaluating this stream reads, in three steps, each
  // from memory the step before brought in (the stream's data is a chain of heap blocks, and a
  // tick over 100k streams otherwise waits for memory at every link): kObject the stream itself,
  // kWindows its windows, kWindowData the blocks of the windows that changed and the reference's
  // arrays they will be compared with.
  enum class PrefetchStep { kObject, kWindows, kWindowData };
  void Prefetch(PrefetchStep step) const;
  // The same for what ApplyBatch reads of a stream it holds locked (after kObject): kIngestLists
  // the windows' array (or the pending sums) and the ingest counters, and the versions' array
  // when `needs_reference`; kIngestData (after kIngestLists) the first line of each window's
  // blocks (the encodings its sub-bucket's offset comes from), and the current reference when
  // `needs_reference`. A pre-binned histogram needs no reference: ingest checks it against
  // `current_shape` (below).
  // `needs_windows`: the batch will add to the windows themselves (not InEveryHead, or no
  // coalescing); otherwise kIngestLists asks for the pending sums instead of the windows.
  enum class IngestPrefetchStep { kIngestLists, kIngestData };
  void PrefetchForIngest(IngestPrefetchStep step, bool needs_windows, bool needs_reference) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex);

  // Layout: the key first, then what a tick and a query read besides it (mutex, versions, current
  // shape, windows, profile arrays), then what ingest alone reads and writes. Ordering the fields
  // for ingest first instead (the key last, tried on 2026-11-25) made a tick over 100k streams
  // (metrics_bench BM_FullTick metrics:2 threads:2) about 7 % slower, 140 -> 150 ms, for no
  // measurable gain in ingest_bench.
  const StreamKey key;
  mutable ExclusiveMutex mutex;
  std::vector<std::shared_ptr<const Reference>> versions ABSL_GUARDED_BY(mutex);
  // What ingest checks a pre-binned histogram against, of the current version (Install keeps it):
  // read from here, the reference and its bin layout (two more heap blocks per stream, rarely in
  // cache with thousands of streams) are not fetched for a batch's usual histograms.
  struct CurrentShape {
    uint64_t version = 0;
    size_t window_width = 0;
    bool is_histogram = false;
    bool numeric = false;  // A numeric layout: its last bucket counts NaN values.
  };
  CurrentShape current_shape ABSL_GUARDED_BY(mutex);
  std::vector<WindowState> windows ABSL_GUARDED_BY(mutex);
  // The current reference's profile (the object, and its arrays: ReferenceProfile keeps its four
  // in one block, counts first), for Prefetch; null for kinds without a profile.
  const ReferenceProfile* profile_object ABSL_GUARDED_BY(mutex) = nullptr;
  const double* profile_arrays ABSL_GUARDED_BY(mutex) = nullptr;
  size_t profile_bytes ABSL_GUARDED_BY(mutex) = 0;
  // Set when the stream was deleted while a caller held a pointer to it.
  bool deleted ABSL_GUARDED_BY(mutex) = false;
  // Storage: the last log record applied to the windows, and the last one a stored snapshot holds.
  uint64_t applied_lsn ABSL_GUARDED_BY(mutex) = 0;
  uint64_t snapshot_lsn ABSL_GUARDED_BY(mutex) = 0;
  // A snapshot write failed: the next one writes every live sub-bucket.
  bool needs_full_snapshot ABSL_GUARDED_BY(mutex) = false;
  // The observer's counters of what is ingested into this stream (null without an observer, or
  // when it does not count per stream). Written to under `mutex`.
  std::shared_ptr<StreamIngestCounters> ingest_counters ABSL_GUARDED_BY(mutex);

  // Ingest coalescing. With thousands of streams a stream's windows are rarely in cache, and each
  // batch would add to six scattered blocks (a sub-bucket and the totals of three windows); while
  // no head moves, whole counts are summed in `pending` (one block) instead, and FoldPending adds
  // the sum to the windows when a head is about to move or anything reads them. Integer sums below
  // 2^32 are exact and the windows' encodings depend only on their values, so the windows end up
  // bit for bit as adding each delta would have left them. A window holding fractions (from
  // probability vectors) is never coalesced into: there, the order of additions shows.
  std::vector<uint32_t> pending ABSL_GUARDED_BY(mutex);  // window_width() values once used.
  bool has_pending ABSL_GUARDED_BY(mutex) = false;
  // At least every pending value (the sum of the coalesced deltas' maxima).
  double pending_bound ABSL_GUARDED_BY(mutex) = 0;
  // The event time of the first coalesced delta: the pending data's sub-bucket in every window.
  absl::Time pending_event_time ABSL_GUARDED_BY(mutex);
  // Where every window's head sub-bucket overlaps, [heads_start, heads_end), as of the last
  // advance; empty (InfinitePast) before it or when a window's bounds are not exact. "Now" before
  // heads_end advances no window.
  absl::Time heads_start ABSL_GUARDED_BY(mutex) = absl::InfinitePast();
  absl::Time heads_end ABSL_GUARDED_BY(mutex) = absl::InfinitePast();
  // Some window was added fractional (or huge) values: no coalescing into these windows.
  bool windows_hold_fractions ABSL_GUARDED_BY(mutex) = false;
  const bool track_dirty;  // Read by AddToWindows (ingest's adds to the windows).
};

bool DriftEngine::StreamOrder::operator()(const std::shared_ptr<StreamState>& a,
                                          const std::shared_ptr<StreamState>& b) const {
  return a->key < b->key;
}
bool DriftEngine::StreamOrder::operator()(const std::shared_ptr<StreamState>& a,
                                          const StreamKey& b) const {
  return a->key < b;
}
bool DriftEngine::StreamOrder::operator()(const StreamKey& a,
                                          const std::shared_ptr<StreamState>& b) const {
  return a < b->key;
}

struct DriftEngine::ClientState {
  absl::Time last_seen;  // Guarded by the engine's clients_mutex_.
  Mutex mutex;
  uint64_t last_sequence ABSL_GUARDED_BY(mutex) = 0;
};

DriftEngine::DriftEngine(EngineOptions options, const Clock* clock)
    : options_(std::move(options)), clock_(clock) {}

DriftEngine::~DriftEngine() = default;

std::shared_ptr<DriftEngine::StreamState> DriftEngine::FindStream(const StreamKey& key) const {
  ReaderMutexLock lock(&streams_mutex_);
  auto it = streams_.find(key);
  return it == streams_.end() ? nullptr : *it;
}

std::vector<std::shared_ptr<DriftEngine::StreamState>> DriftEngine::AllStreams() const {
  std::vector<std::shared_ptr<StreamState>> streams;
  ReaderMutexLock lock(&streams_mutex_);
  streams.reserve(streams_.size());
  for (const std::shared_ptr<StreamState>& stream : streams_) streams.push_back(stream);
  return streams;
}

size_t DriftEngine::RunCount(size_t streams) {
  return (streams + kStreamsPerRun - 1) / kStreamsPerRun;
}

size_t DriftEngine::ForEachStreamInRuns(
    const std::vector<std::shared_ptr<StreamState>>& streams,
    const std::function<void(size_t, const std::shared_ptr<StreamState>&,
                             std::vector<WindowReport>&)>& evaluate,
    const std::function<void(size_t)>& run_done) const {
  const size_t runs = RunCount(streams.size());
  std::atomic<size_t> next_run{0};
  auto work = [&] {
    std::vector<WindowReport> scratch;
    for (size_t run = next_run.fetch_add(1); run < runs; run = next_run.fetch_add(1)) {
      const size_t end = std::min(streams.size(), (run + 1) * kStreamsPerRun);
      const size_t begin = run * kStreamsPerRun;
      // Memory for the next streams is asked for while this one is evaluated (see Prefetch).
      using Step = StreamState::PrefetchStep;
      for (size_t i = begin; i < std::min(end, begin + 2); ++i) {
        streams[i]->Prefetch(Step::kObject);
      }
      if (begin + 1 < end) streams[begin + 1]->Prefetch(Step::kWindows);
      for (size_t i = begin; i < end; ++i) {
        if (i + 3 < end) streams[i + 3]->Prefetch(Step::kObject);
        if (i + 2 < end) streams[i + 2]->Prefetch(Step::kWindows);
        if (i + 1 < end) streams[i + 1]->Prefetch(Step::kWindowData);
        evaluate(run, streams[i], scratch);
      }
      run_done(run);
    }
  };
  const size_t threads = std::min(EvalThreads(options_.eval_threads), runs);
  std::vector<std::thread> workers;
  for (size_t t = 1; t < threads; ++t) workers.emplace_back(work);
  work();
  for (std::thread& worker : workers) worker.join();
  return runs;
}

void DriftEngine::StreamState::Install(std::shared_ptr<const Reference> ref, bool keep_windows,
                                       absl::Time now) {
  if (!keep_windows) {
    std::vector<WindowState> fresh;
    fresh.reserve(ref->policy.windows.size());
    for (absl::Duration length : ref->policy.windows) {
      fresh.emplace_back(length, ref->policy.sub_buckets, ref->window_width());
    }
    ResetWindows(std::move(fresh));
  }
  for (WindowState& w : windows) {
    w.alert = AlertStateMachine();
    w.inputs_generation = WindowState::kNoInputs;  // Derived under the previous reference.
    w.observer_generation = WindowState::kNoInputs;
  }
  if (ref->is_histogram()) {
    profile_object = ref->profile.get();
    profile_arrays = ref->counts.data();
    profile_bytes = 4 * ref->counts.size() * sizeof(double);
  } else {
    profile_object = nullptr;
    profile_arrays = nullptr;
    profile_bytes = 0;
  }
  current_shape = CurrentShape{
      .version = ref->version,
      .window_width = ref->window_width(),
      .is_histogram = ref->is_histogram(),
      .numeric = ref->is_histogram() && ref->layout->kind() == BinLayout::Kind::kNumeric};
  versions.push_back(std::move(ref));
  AdvanceWindows(now);
}

void DriftEngine::StreamState::Prefetch(PrefetchStep step) const {
  if (step == PrefetchStep::kObject) {
    // From just before the object: make_shared's reference counts sit there.
    constexpr size_t kCountsBefore = 16;
    PrefetchRange(reinterpret_cast<const void*>(reinterpret_cast<uintptr_t>(this) - kCountsBefore),
                  sizeof(*this) + kCountsBefore);
    return;
  }
  MutexLock lock(&mutex);
  if (step == PrefetchStep::kWindows) {
    // The current version's slot (the next step reads the reference through it), what ingest
    // coalesced (folded first) and the profile's object (its alpha and array pointers).
    if (!versions.empty()) PrefetchRange(&versions.back(), sizeof(versions.back()));
    PrefetchRange(windows.data(), windows.size() * sizeof(WindowState));
    if (has_pending) {
      PrefetchRange(pending.data(), pending.size() * sizeof(uint32_t), /*for_write=*/true);
    }
    if (profile_object != nullptr) PrefetchLine(profile_object);
    return;
  }
  // The reference: its kind, profile pointer and policy are read for every window.
  if (!versions.empty()) {
    PrefetchRange(versions.back().get(), std::min<size_t>(sizeof(Reference), 512));
  }
  // Only windows whose totals changed since they were last derived are computed (the others
  // answer from what was kept), and only they need their totals and the profile.
  bool any_changed = false;
  for (const WindowState& w : windows) {
    if (w.inputs_generation == w.ring.generation() && !has_pending) continue;
    w.ring.PrefetchForEvaluate();
    any_changed = true;
  }
  // The hardware prefetcher carries on past a few KB.
  if (any_changed) PrefetchRange(profile_arrays, std::min<size_t>(profile_bytes, 4096));
}

void DriftEngine::StreamState::PrefetchForIngest(IngestPrefetchStep step, bool needs_windows,
                                                 bool needs_reference) const {
  if (step == IngestPrefetchStep::kIngestLists) {
    if (needs_reference && !versions.empty()) {
      PrefetchRange(&versions.back(), sizeof(versions.back()));
    }
    if (needs_windows) {
      PrefetchRange(windows.data(), windows.size() * sizeof(WindowState));
    } else {
      PrefetchRange(pending.data(), pending.size() * sizeof(uint32_t), /*for_write=*/true);
    }
    // Its own heap block, which the apply writes to.
    if (ingest_counters != nullptr) PrefetchLine(ingest_counters.get(), /*for_write=*/true);
    return;
  }
  // The reference's first lines: its kind, version, policy and layout, what validation reads.
  if (needs_reference && !versions.empty()) {
    PrefetchRange(versions.back().get(), std::min<size_t>(sizeof(Reference), 256));
  }
  if (needs_windows) {
    for (const WindowState& w : windows) w.ring.PrefetchBlockStarts();
  }
}

void DriftEngine::StreamState::AdvanceWindows(absl::Time now) {
  FoldPending();                // Into the heads it was coalesced for, before they move.
  if (now < heads_end) return;  // No head moves: every Advance(now) would be a no-op.
  absl::Time start = absl::InfinitePast();
  absl::Time end = absl::InfiniteFuture();
  for (WindowState& window : windows) {
    window.ring.Advance(now);
    start = std::max(start, window.ring.head_start());
    end = std::min(end, window.ring.head_end());
  }
  if (windows.empty() || start >= end) start = end = absl::InfinitePast();
  heads_start = start;
  heads_end = end;
}

bool DriftEngine::StreamState::Coalesce(absl::Time event_time, absl::Time now,
                                        absl::Span<const double> delta,
                                        const CompactSubBuckets::DeltaSummary& summary) {
  constexpr double kMaxDeltaCount = 2147483648.0;  // 2^31: each delta's counts stay below it,
  constexpr double kMaxPending = 4294967296.0;     // and pending sums below 2^32 (uint32_t).
  if (!summary.counts || !(summary.max_count < kMaxDeltaCount) || windows_hold_fractions ||
      !InEveryHead(event_time, now)) {
    return false;
  }
  if (has_pending && pending_bound + summary.max_count >= kMaxPending) FoldPending();
  if (!has_pending) {
    pending.resize(delta.size());  // Zeros: FoldPending clears what it adds.
    pending_event_time = event_time;
    has_pending = true;
  }
  AddSmallCounts(pending.data(), delta.data(), delta.size());  // max_count < 2^31, checked above.
  pending_bound += summary.max_count;
  return true;
}

void DriftEngine::StreamState::FoldPending() {
  if (!has_pending) return;
  thread_local std::vector<double> delta;
  delta.resize(pending.size());
  uint32_t max = 0;
  for (size_t i = 0; i < pending.size(); ++i) {
    delta[i] = pending[i];
    max = std::max(max, pending[i]);
    pending[i] = 0;
  }
  has_pending = false;
  pending_bound = 0;
  AddToWindows(pending_event_time, delta,
               CompactSubBuckets::DeltaSummary{true, static_cast<double>(max)});
}

void DriftEngine::StreamState::AddToWindows(absl::Time event_time, absl::Span<const double> delta,
                                            const CompactSubBuckets::DeltaSummary& summary) {
  if (!summary.counts) windows_hold_fractions = true;
  for (WindowState& w : windows) {
    if (!w.ring.Covers(event_time)) continue;
    w.ring.Add(event_time, delta, summary);
    if (track_dirty) {
      const absl::Time start = w.ring.SubBucketStart(event_time);
      if (w.dirty.empty() || w.last_dirty != start) {
        w.dirty.push_back(start);
        w.last_dirty = start;
      }
    }
  }
}

void DriftEngine::StreamState::ResetWindows(std::vector<WindowState> fresh) {
  windows = std::move(fresh);
  pending.clear();
  has_pending = false;
  pending_bound = 0;
  heads_start = heads_end = absl::InfinitePast();
  windows_hold_fractions = false;
}

absl::StatusOr<std::shared_ptr<const Reference>> DriftEngine::PutReference(
    const ReferenceSpec& spec) {
  if (absl::Status s = ValidateStreamKey(spec.stream); !s.ok()) return s;
  MutexLock store_lock(&store_mutex_);
  const absl::Time now = clock_->Now();

  std::vector<double> window_counts;
  if (spec.from_window) {
    const StreamKey source = spec.from_window->stream.value_or(spec.stream);
    std::shared_ptr<StreamState> src = FindStream(source);
    if (src == nullptr) {
      return absl::NotFoundError(
          absl::StrCat("no stream ", source.ToString(), " to take a window from"));
    }
    MutexLock lock(&src->mutex);
    if (src->deleted || src->versions.empty()) {
      return absl::NotFoundError(absl::StrCat("no stream ", source.ToString()));
    }
    if (!src->current().is_histogram()) {
      return absl::FailedPreconditionError(
          absl::StrCat("stream ", source.ToString(), " is not a histogram stream"));
    }
    // The window's counts are only meaningful in the same bins.
    const Reference& src_ref = src->current();
    absl::StatusOr<BinLayout> layout = LayoutForSpec(spec, options_.reference_limits);
    if (!layout.ok()) return layout.status();
    if (spec.kind != src_ref.kind || layout->size() != src_ref.layout->size() ||
        layout->edges() != src_ref.layout->edges() ||
        layout->categories() != src_ref.layout->categories()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "the source window's bins do not match this reference's bins: ", source.ToString(),
          " has a ", ReferenceKindName(src_ref.kind), " reference with ", src_ref.layout->size(),
          " bins; re-baseline with the same bins"));
    }
    src->AdvanceWindows(now);
    const WindowState* found = nullptr;
    for (const WindowState& w : src->windows) {
      if (w.ring.length() == spec.from_window->window) found = &w;
    }
    if (found == nullptr) {
      return absl::NotFoundError(absl::StrCat(
          "stream ", source.ToString(), " has no ", FormatWindow(spec.from_window->window),
          " window; its windows are ", WindowList(src->current())));
    }
    window_counts = found->ring.totals();
    if (Sum(window_counts) == 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("the ", FormatWindow(spec.from_window->window), " window of ",
                       source.ToString(), " is empty; nothing to re-baseline on"));
    }
  }

  std::shared_ptr<StreamState> stream;
  {
    MutexLock lock(&streams_mutex_);
    auto it = streams_.find(spec.stream);
    if (it == streams_.end()) {
      if (streams_.size() >= options_.max_streams) {
        return absl::ResourceExhaustedError(
            absl::StrCat("the server holds its maximum of ", options_.max_streams,
                         " streams (--max-streams); delete unused references or raise the limit"));
      }
      if (options_.max_streams_per_model > 0) {
        // Streams are ordered by model first: this model's are one range of the set.
        size_t of_model = 0;
        for (auto m = streams_.lower_bound(StreamKey{spec.stream.model, "", ""});
             m != streams_.end() && (*m)->key.model == spec.stream.model; ++m) {
          ++of_model;
        }
        if (of_model >= options_.max_streams_per_model) {
          return absl::ResourceExhaustedError(absl::StrCat(
              "model \"", spec.stream.model, "\" has its maximum of ",
              options_.max_streams_per_model,
              " streams (--max-streams-per-model); delete unused references or raise the limit"));
        }
      }
      it = streams_.insert(std::make_shared<StreamState>(spec.stream, options_.store != nullptr))
               .first;
    }
    stream = *it;
  }

  absl::StatusOr<std::shared_ptr<const Reference>> built;
  {
    MutexLock lock(&stream->mutex);
    if (stream->deleted) {
      return absl::AbortedError(
          "the stream was deleted while its reference was being written; retry");
    }
    const uint64_t version = stream->versions.empty() ? 1 : stream->current().version + 1;
    built = BuildReference(spec, version, now, options_.reference_limits,
                           spec.from_window ? &window_counts : nullptr);
    if (built.ok()) {
      const bool keep_windows = stream->KeepsWindows(**built);
      if (options_.store != nullptr) {
        // Durable first: a reference the store refused must not be served.
        if (absl::Status s =
                options_.store->PutReference(**built, !keep_windows, next_lsn_.load() - 1);
            !s.ok()) {
          built = s;
        }
      }
      if (built.ok()) {
        stream->Install(*built, keep_windows, now);
        if (options_.observer != nullptr) {
          stream->ingest_counters = options_.observer->OnReferenceInstalled(**built);
        }
        if (!keep_windows) {
          // Fresh windows: no earlier log record belongs to them (the store recorded the floor).
          stream->applied_lsn = stream->snapshot_lsn = next_lsn_.load() - 1;
        }
        return built;
      }
    }
  }
  // The spec was bad. If this call created the stream, remove it again.
  MutexLock map_lock(&streams_mutex_);
  MutexLock lock(&stream->mutex);
  if (stream->versions.empty() && !stream->deleted) {
    stream->deleted = true;
    auto it = streams_.find(spec.stream);
    if (it != streams_.end() && *it == stream) streams_.erase(it);
  }
  return built.status();
}

absl::StatusOr<std::shared_ptr<const Reference>> DriftEngine::GetReference(const StreamKey& key,
                                                                           uint64_t version) const {
  if (absl::Status s = ValidateStreamKey(key); !s.ok()) return s;
  std::shared_ptr<StreamState> stream = FindStream(key);
  if (stream != nullptr) {
    MutexLock lock(&stream->mutex);
    if (!stream->deleted && !stream->versions.empty()) {
      if (version == 0) return stream->versions.back();
      for (const auto& ref : stream->versions) {
        if (ref->version == version) return ref;
      }
      return absl::NotFoundError(absl::StrCat("stream ", key.ToString(), " has no version ",
                                              version, "; the latest is ",
                                              stream->current().version));
    }
  }
  return absl::NotFoundError(absl::StrCat("no reference for stream ", key.ToString()));
}

absl::StatusOr<DriftEngine::ReferencePage> DriftEngine::ListReferences(
    const std::string& model, size_t page_size, const std::string& page_token,
    const std::function<bool(const std::string& model)>& visible) const {
  if (!model.empty()) {
    if (absl::Status s = ValidateName("model", model, false); !s.ok()) return s;
  }
  if (page_size == 0) page_size = kDefaultPageSize;
  page_size = std::min(page_size, kMaxPageSize);
  std::optional<StreamKey> after;
  if (!page_token.empty()) {
    absl::StatusOr<StreamKey> key = DecodePageToken(page_token);
    if (!key.ok()) return key.status();
    after = *key;
  }
  std::vector<std::shared_ptr<StreamState>> candidates;
  {
    ReaderMutexLock lock(&streams_mutex_);
    auto it =
        after ? streams_.upper_bound(*after)
              : (model.empty() ? streams_.begin() : streams_.lower_bound(StreamKey{model, "", ""}));
    for (; it != streams_.end() && candidates.size() <= page_size; ++it) {
      if (!model.empty() && (*it)->key.model != model) break;
      // Hidden streams are skipped before the page is cut, so the page token (the last key
      // returned) never names one.
      if (visible && !visible((*it)->key.model)) continue;
      candidates.push_back(*it);
    }
  }
  ReferencePage page;
  for (const auto& stream : candidates) {
    if (page.references.size() == page_size) {
      page.next_page_token = EncodePageToken(page.references.back()->stream);
      break;
    }
    MutexLock lock(&stream->mutex);
    if (!stream->deleted && !stream->versions.empty())
      page.references.push_back(stream->versions.back());
  }
  return page;
}

std::string DriftEngine::PageTokenAfter(const StreamKey& stream) { return EncodePageToken(stream); }

absl::StatusOr<uint64_t> DriftEngine::DeleteReference(const StreamKey& key) {
  if (absl::Status s = ValidateStreamKey(key); !s.ok()) return s;
  MutexLock store_lock(&store_mutex_);
  // Set lock, then stream lock (the engine's order), held across the store's delete so a stream
  // the store could not delete stays served.
  MutexLock map_lock(&streams_mutex_);
  auto it = streams_.find(key);
  if (it == streams_.end()) {
    return absl::NotFoundError(absl::StrCat("no reference for stream ", key.ToString()));
  }
  std::shared_ptr<StreamState> stream = *it;
  MutexLock lock(&stream->mutex);
  if (options_.store != nullptr) {
    if (absl::Status s = options_.store->DeleteStream(key); !s.ok()) return s;
  }
  streams_.erase(it);
  stream->deleted = true;
  if (options_.observer != nullptr) options_.observer->OnStreamDeleted(key);
  const uint64_t versions = stream->versions.size();
  stream->versions.clear();
  stream->ResetWindows({});
  return versions;
}

IngestResult DriftEngine::Ingest(IngestBatch batch) {
  IngestResult result;
  if (absl::Status s = ValidateClientId(batch.client_id); !s.ok()) {
    result.status = s;
    return result;
  }
  if (batch.sequence == 0) {
    result.status = absl::InvalidArgumentError("sequence numbers start at 1");
    return result;
  }
  const absl::Time now = clock_->Now();
  std::shared_ptr<ClientState> client;
  {
    MutexLock lock(&clients_mutex_);
    if (now - last_client_sweep_ >= kClientSweepInterval) {
      last_client_sweep_ = now;
      absl::erase_if(clients_, [&](const auto& entry) {
        return now - entry.second->last_seen > options_.client_retention;
      });
    }
    auto& slot = clients_[batch.client_id];
    if (slot == nullptr) slot = std::make_shared<ClientState>();
    slot->last_seen = now;
    client = slot;
  }
  MutexLock client_lock(&client->mutex);
  if (batch.sequence <= client->last_sequence) {
    result.duplicate = true;
    result.acked_sequence = client->last_sequence;
    return result;
  }
  bool persisted = false;
  result.status = ApplyBatch(batch, now, &persisted);
  if (absl::IsUnavailable(result.status) || absl::IsDataLoss(result.status)) {
    // The store failed: nothing was applied, and the client may resend this sequence.
    return result;
  }
  if (!persisted && options_.store != nullptr) {
    // A rejected batch is done with too; remember that durably (best effort: at worst a resend
    // after a crash is rejected again with the same error).
    if (!options_.store->WriteClientSequence(batch.client_id, batch.sequence, now).ok()) {
      store_errors_.fetch_add(1);
    }
  }
  client->last_sequence = batch.sequence;
  result.acked_sequence = batch.sequence;
  return result;
}

absl::Status DriftEngine::ApplyBatch(IngestBatch& batch, absl::Time now, bool* persisted)
    ABSL_NO_THREAD_SAFETY_ANALYSIS {  // Locks a dynamic set of streams, in key order.
  if (absl::Status s = ValidateName("model", batch.model, false); !s.ok()) return s;
  if (batch.streams.empty()) return absl::InvalidArgumentError("the batch has no streams");
  size_t observations = 0;
  for (const StreamData& data : batch.streams) observations += ObservationCount(data);
  if (observations > options_.max_observations_per_batch) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the batch has ", observations, " observations; the limit is ",
                     options_.max_observations_per_batch, " (--max-batch-observations): split it"));
  }
  absl::Time event_time = batch.event_time.value_or(now);
  if (event_time > now + options_.max_future_skew) {
    return absl::InvalidArgumentError(
        absl::StrCat("event_time ", absl::FormatTime(event_time), " is more than ",
                     absl::FormatDuration(options_.max_future_skew), " in the future (server time ",
                     absl::FormatTime(now), ")"));
  }
  event_time = std::min(event_time, now);

  // A stream of the batch; its key is its state's once found (no key is built per stream).
  struct Target {
    const StreamData* data;
    std::shared_ptr<StreamState> state;
    const std::shared_ptr<StreamState>* slot = nullptr;  // In streams_, under its lock only.
  };
  auto key_of = [&](const StreamData& data) {
    return StreamKey{batch.model, data.model_version, data.signal};
  };
  // The batch's streams in key order, which within one model is (model_version, signal): sorted
  // as pointers, comparing neither the model nor moving strings around. The model was checked
  // above. The other parts need no check when they name a stream (every stream's name was checked
  // when it was created); before anything else is said about the streams (a repeat, a stream
  // without a reference), they are checked, in the batch's order.
  std::vector<const StreamData*> in_order;
  in_order.reserve(batch.streams.size());
  for (const StreamData& data : batch.streams) in_order.push_back(&data);
  const auto compare_streams = [](const StreamData* a, const StreamData* b) {
    if (const int c = a->model_version.compare(b->model_version); c != 0) return c;
    return a->signal.compare(b->signal);
  };
  // A client that keeps its streams in key order (the Recorder does) is neither sorted again nor
  // checked for repeats again: one comparison per neighbours says both.
  bool ordered_and_distinct = true;
  for (size_t i = 1; i < in_order.size() && ordered_and_distinct; ++i) {
    ordered_and_distinct = compare_streams(in_order[i - 1], in_order[i]) < 0;
  }
  // For an error path: the first stream, in the batch's order, whose names are invalid.
  auto first_invalid_name = [&]() -> absl::Status {
    for (const StreamData& data : batch.streams) {
      if (absl::Status s = ValidateStreamParts(data.model_version, data.signal); !s.ok()) return s;
    }
    return absl::OkStatus();
  };
  if (!ordered_and_distinct) {
    std::sort(in_order.begin(), in_order.end(),
              [&](const StreamData* a, const StreamData* b) { return compare_streams(a, b) < 0; });
    for (size_t i = 1; i < in_order.size(); ++i) {
      if (compare_streams(in_order[i - 1], in_order[i]) == 0) {
        if (absl::Status s = first_invalid_name(); !s.ok()) return s;
        return absl::InvalidArgumentError(absl::StrCat("stream ", key_of(*in_order[i]).ToString(),
                                                       " appears twice in one batch; merge them"));
      }
    }
  }
  std::vector<Target> targets;
  targets.reserve(in_order.size());
  for (const StreamData* data : in_order) targets.push_back(Target{data, nullptr, nullptr});
  {
    ReaderMutexLock lock(&streams_mutex_);
    // Targets are sorted, and a model's streams are neighbours in the set: guess that each target
    // is the entry after the one before it, without reading any key, and ask for all the guesses'
    // keys at once; then check the guesses, searching only for those that were wrong, and ask
    // for each stream and its reference count (make_shared puts them together) for the copies
    // below. (The key-to-stream map this replaced checked each guess as it was made, waiting for
    // one key at a time: ~10 % more CPU per bin at saturation; tests/bench/HISTORY.md.)
    auto it = streams_.lower_bound(key_of(*targets.front().data));
    for (Target& t : targets) {
      if (it == streams_.end()) break;
      t.slot = &*it;
      PrefetchRange(&(*it)->key, sizeof(StreamKey));
      ++it;
    }
    // The guesses are one range of the set, ordered by model first: if its first and last
    // streams are of the batch's model, so are all, and only the other parts need comparing.
    const bool one_model = targets.back().slot != nullptr &&
                           (*targets.front().slot)->key.model == batch.model &&
                           (*targets.back().slot)->key.model == batch.model;
    for (Target& t : targets) {
      const StreamKey* guess = t.slot == nullptr ? nullptr : &(*t.slot)->key;
      const bool right = guess != nullptr && guess->signal == t.data->signal &&
                         guess->model_version == t.data->model_version &&
                         (one_model || guess->model == batch.model);
      if (!right) {
        const StreamKey key = key_of(*t.data);
        auto found = streams_.find(key);
        if (found == streams_.end()) {
          if (absl::Status s = first_invalid_name(); !s.ok()) return s;
          return absl::FailedPreconditionError(absl::StrCat(
              "no reference for stream ", key.ToString(),
              "; create one with PutReference (kldrift reference put) before ingesting"));
        }
        t.slot = &*found;
      }
      (*t.slot)->Prefetch(StreamState::PrefetchStep::kObject);
    }
    for (Target& t : targets) t.state = *t.slot;
  }
  // Lock every stream of the batch in key order, validate everything, then apply everything.
  // Each stream is a chain of heap blocks, rarely in cache with thousands of streams: each loop
  // asks for the next link (PrefetchForIngest) while it works.
  using IngestStep = StreamState::IngestPrefetchStep;
  // Whether a stream's windows themselves are read (not just its pending sums: see Coalesce).
  auto needs_windows = [&](const StreamState& stream) ABSL_NO_THREAD_SAFETY_ANALYSIS {
    return !options_.coalesce_ingest || !stream.InEveryHead(event_time, now);
  };
  // Whether the stream's reference is read (pre-binned histograms are checked against the
  // stream's current_shape).
  auto needs_reference = [](const Target& t) {
    return t.data->type != StreamData::Type::kHistogram;
  };
  for (Target& t : targets) {
    t.state->mutex.Lock();
    t.state->PrefetchForIngest(IngestStep::kIngestLists, needs_windows(*t.state),
                               needs_reference(t));
  }
  if (!targets.empty()) {
    targets.front().state->PrefetchForIngest(IngestStep::kIngestData,
                                             needs_windows(*targets.front().state),
                                             needs_reference(targets.front()));
  }
  absl::Status status = absl::OkStatus();
  // Each target's delta: its data's own numbers (pre-binned small counts: the usual case, and
  // then nothing is copied), or what ComputeDelta made of its data, kept in `computed`.
  std::vector<absl::Span<const double>> deltas;
  deltas.reserve(targets.size());
  std::vector<std::vector<double>> computed;
  std::vector<double> samples;  // Observations each delta adds.
  samples.reserve(targets.size());
  std::vector<double> nan_samples;  // Of them, NaN values.
  nan_samples.reserve(targets.size());
  double applied_observations = 0;  // In all.
  // Each delta scanned once for every window's sub-bucket and totals.
  std::vector<CompactSubBuckets::DeltaSummary> summaries;
  summaries.reserve(targets.size());
  for (size_t i = 0; i < targets.size(); ++i) {
    const Target& t = targets[i];
    if (i + 1 < targets.size()) {
      targets[i + 1].state->PrefetchForIngest(IngestStep::kIngestData,
                                              needs_windows(*targets[i + 1].state),
                                              needs_reference(targets[i + 1]));
    }
    if (t.state->deleted || t.state->versions.empty()) {
      status = absl::FailedPreconditionError(
          absl::StrCat("the reference of stream ", t.state->key.ToString(), " was just deleted"));
      break;
    }
    const StreamState::CurrentShape& shape = t.state->current_shape;
    if (t.data->reference_version != 0 && t.data->reference_version != shape.version) {
      status = absl::FailedPreconditionError(
          absl::StrCat("stream ", t.state->key.ToString(), " was binned against reference version ",
                       t.data->reference_version, " but the current version is ", shape.version,
                       "; fetch the new bins"));
      break;
    }
    // Windows hold whole sub-buckets, so they may end a little short of their length: reject what
    // no window covers rather than acknowledge it and drop it. (What lands in every window's head
    // is covered: the usual case, known without reading the windows.)
    bool covered = t.state->InEveryHead(event_time, now);
    if (!covered) {
      for (const WindowState& w : t.state->windows) {
        covered |=
            w.ring.SubBucketIndex(event_time) > w.ring.SubBucketIndex(now) - w.ring.sub_buckets();
      }
    }
    if (!covered) {
      status = absl::InvalidArgumentError(
          absl::StrCat("event_time ", absl::FormatTime(event_time), " is older than stream ",
                       t.state->key.ToString(), "'s longest window (",
                       FormatWindow(t.state->current().policy.LongestWindow()), ")"));
      break;
    }
    CompactSubBuckets::DeltaSummary summary;
    double sum = 0;
    absl::Span<const double> delta;
    if (t.data->type == StreamData::Type::kHistogram && shape.is_histogram &&
        t.data->values().size() == shape.window_width &&
        ScanSmallHistogram(*t.data, &summary, &sum)) {
      // The usual case, checked without fetching the reference: the counts are the delta.
      delta = t.data->values();
    } else {
      absl::StatusOr<std::vector<double>> made =
          ComputeDelta(t.state->key, t.state->current(), *t.data, options_, &summary, &sum);
      if (!made.ok()) {
        status = made.status();
        break;
      }
      computed.push_back(*std::move(made));
      delta = computed.back();  // Stays where it is when `computed` grows.
      if (t.data->type != StreamData::Type::kHistogram) {  // Else ComputeDelta filled them.
        summary = CompactSubBuckets::Summarize(delta);
        sum = Sum(delta);
      }
    }
    summaries.push_back(summary);
    samples.push_back(shape.is_histogram ? sum : delta[0]);
    // Numeric layouts end with the NaN bucket.
    nan_samples.push_back(shape.numeric ? delta.back() : 0);
    deltas.push_back(delta);
  }
  uint64_t lsn = 0;
  if (status.ok()) {
    for (Target& t : targets) {
      StreamState& stream = *t.state;
      // Only a head about to move needs the windows now (AdvanceWindows also folds what was
      // pending into the heads first).
      if (now >= stream.heads_end) stream.AdvanceWindows(now);
      if (!needs_windows(stream)) continue;  // Coalesced: the pending sums were asked for.
      // The sub-buckets the apply below adds to, fetched while the store writes the record: with
      // thousands of streams they are rarely in cache, and a miss costs more than the add.
      for (const WindowState& w : stream.windows) {
        if (w.ring.Covers(event_time)) w.ring.PrefetchForAdd(event_time);
      }
    }
    if (options_.store != nullptr) {
      // Durable before applied, and applied before acknowledged: a batch the store could not write
      // is neither applied nor acknowledged, so the client resends it.
      // The record is written from the batch and the deltas where they are.
      std::vector<StreamDeltaView> views;
      views.reserve(targets.size());
      for (size_t i = 0; i < targets.size(); ++i) {
        const StreamKey& key = targets[i].state->key;
        views.push_back(StreamDeltaView{key.model, key.model_version, key.signal, deltas[i],
                                        summaries[i].counts, summaries[i].max_count});
      }
      IngestRecordView record;
      record.lsn = next_lsn_.fetch_add(1);  // Under every target stream's lock: see Evaluate.
      record.client_id = batch.client_id;
      record.sequence = batch.sequence;
      record.received_at = now;
      record.event_time = event_time;
      record.deltas = views;
      lsn = record.lsn;
      status = options_.store->WriteBatch(record);
      *persisted = status.ok();
    }
  }
  if (status.ok()) {
    uint64_t coalesced = 0;
    // The pending sums and counters were asked for before validation and the store's write,
    // which pass enough memory through the cache to have evicted them: asked for again, a few
    // streams ahead. (Asking for the objects again too, 8 ahead, was slower.)
    constexpr size_t kListsAhead = 4;
    auto prefetch_lists = [&](size_t i) ABSL_NO_THREAD_SAFETY_ANALYSIS {
      const StreamState& ahead = *targets[i].state;
      ahead.PrefetchForIngest(IngestStep::kIngestLists, needs_windows(ahead), false);
    };
    for (size_t i = 0; i < std::min(targets.size(), kListsAhead); ++i) prefetch_lists(i);
    for (size_t i = 0; i < targets.size(); ++i) {
      if (i + kListsAhead < targets.size()) prefetch_lists(i + kListsAhead);
      StreamState& stream = *targets[i].state;
      const absl::Span<const double> delta = deltas[i];
      if (lsn != 0) stream.applied_lsn = lsn;
      if (stream.ingest_counters != nullptr)
        stream.ingest_counters->Add(samples[i], nan_samples[i]);
      applied_observations += samples[i];
      if (options_.coalesce_ingest && stream.Coalesce(event_time, now, delta, summaries[i])) {
        ++coalesced;
      } else {
        stream.FoldPending();  // The windows take additions in the order they came.
        stream.AddToWindows(event_time, delta, summaries[i]);
      }
      // Done with this stream: a GetDrift waiting for it need not wait for the rest of the batch.
      // (Evaluate only needs each stream locked from the log position until its own apply.)
      stream.mutex.Unlock();
    }
    if (coalesced > 0) coalesced_histograms_.fetch_add(coalesced, std::memory_order_relaxed);
  } else {
    for (auto it = targets.rbegin(); it != targets.rend(); ++it) it->state->mutex.Unlock();
  }
  if (status.ok() && options_.observer != nullptr) {
    options_.observer->OnBatchApplied(targets.size(), applied_observations);
  }
  return status;
}

WindowReport DriftEngine::StreamState::Report(const WindowState& window, size_t top_bins,
                                              absl::Time now, BinLabels labels) const {
  const Reference& ref = current();
  WindowReport report = ReportHeader(window, now);
  const absl::Span<const double> totals = TotalsOf(window.ring);
  if (ref.is_histogram()) {
    report.samples = Sum(totals);
    report.measure = std::string(MeasureName(ref.policy.measure));
    report.enough_samples = report.samples >= ref.policy.EffectiveMinSamples(ref.layout->size());
    if (report.samples > 0) {
      absl::StatusOr<DriftMeasures> measures =
          ComputeDriftMeasures(*ref.profile, totals, top_bins, &*ref.layout, labels);
      if (measures.ok()) {
        report.measure_value = MeasureValue(*measures, ref.policy.measure);
        report.eligible =
            report.enough_samples && measures->g_test_p_value <= ref.policy.max_p_value;
        report.histogram = *std::move(measures);
      }
    }
    return report;
  }
  const double n = totals[0];
  report.samples = n;
  report.enough_samples =
      n >= ref.policy.min_samples.value_or(kDefaultMinSamplesNonHistogram) && n >= 2;
  report.eligible = report.enough_samples;
  if (ref.kind == ReferenceKind::kGaussian) {
    report.measure =
        ref.policy.measure == Measure::kKlReferenceCurrent ? "kl_reference_current"
        : ref.policy.measure == Measure::kJeffreys || ref.policy.measure == Measure::kPsi
            ? "jeffreys"
            : "kl_current_reference";
    if (n >= 2) {
      const size_t dims = ref.gaussian.mean.size();
      GaussianDriftData g;
      g.current_mean.resize(dims);
      g.current_var.resize(dims);
      bool degenerate = false;
      for (size_t i = 0; i < dims; ++i) {
        const double mean = totals[1 + i] / n;
        // Sample variance from the sufficient statistics.
        const double var = (totals[1 + dims + i] - n * mean * mean) / (n - 1);
        g.current_mean[i] = mean;
        g.current_var[i] = var;
        degenerate |= !(var > 0);
      }
      if (degenerate) {
        g.kl = {std::numeric_limits<double>::infinity(), std::numeric_limits<double>::infinity()};
      } else {
        g.kl = kernels::DiagonalGaussianKl(g.current_mean.data(), g.current_var.data(),
                                           ref.gaussian.mean.data(), ref.gaussian.var.data(), dims);
      }
      report.measure_value = report.measure == "kl_reference_current" ? g.kl.reverse
                             : report.measure == "jeffreys"           ? g.kl.forward + g.kl.reverse
                                                                      : g.kl.forward;
      report.gaussian = std::move(g);
    }
    return report;
  }
  // Paired log-probs: totals = [n, sum k1, sum k1^2, sum k2, sum k2^2, sum k3, sum k3^2].
  report.measure = "k3";
  if (n > 0) {
    kernels::PolicyKlEstimates estimates;
    estimates.samples = static_cast<size_t>(n);
    estimates.k1 = Estimator(n, totals[1], totals[2]);
    estimates.k2 = Estimator(n, totals[3], totals[4]);
    estimates.k3 = Estimator(n, totals[5], totals[6]);
    report.measure_value = estimates.k3.mean;
    report.policy = estimates;
  }
  return report;
}

DriftEngine::StreamState::AlertInputs DriftEngine::StreamState::FastAlertInputs(
    WindowState& window, absl::Time now) const {
  const Reference& ref = current();
  const bool firing = window.alert.status().state == AlertState::kFiring;
  if (!ref.is_histogram()) {  // A handful of sums: the report itself is cheap.
    const WindowReport report = Report(window, 0, now);
    return {report.measure_value, report.eligible || (report.enough_samples && firing)};
  }
  // Decoded only when something must be computed: a tick with nothing new reads no bins.
  absl::Span<const double> totals;
  auto read_totals = [&] {
    if (totals.empty()) totals = TotalsOf(window.ring);
  };
  // Full measures without top bins: the value and the evidence exactly as Report gives them.
  auto measure_fully = [&] {
    read_totals();
    absl::StatusOr<DriftMeasures> measures =
        ComputeDriftMeasures(*ref.profile, totals, 0, &*ref.layout);
    window.inputs_value = measures.ok() ? MeasureValue(*measures, ref.policy.measure) : 0;
    window.inputs_evidence = measures.ok() && measures->g_test_p_value <= ref.policy.max_p_value;
  };
  // The totals' summary, when this call has made it (the G-test below needs it too).
  std::optional<kernels::CountSummary> summary_made;
  if (window.inputs_generation != window.ring.generation()) {
    window.inputs_generation = window.ring.generation();
    read_totals();
    const kernels::CountSummary& summary =
        summary_made.emplace(kernels::SummarizeCounts(totals.data(), totals.size()));
    // Integer totals below 2^32 add up exactly in any order: the vector sum is Report's Sum().
    const double samples = window.ring.totals_are_integers() ? summary.total : Sum(totals);
    window.inputs_enough_samples = samples >= ref.policy.EffectiveMinSamples(ref.layout->size());
    window.inputs_value = 0;
    window.inputs_evidence = 0;
    if (samples > 0) {
      window.inputs_evidence = -1;
      if (ref.policy.measure == Measure::kKlCurrentReference && summary.all_finite_non_negative &&
          summary.total > 0 && std::isfinite(summary.total)) {
        // One vector log per bin instead of every measure's.
        const double alpha = ref.profile->alpha();
        const double p_scale = 1.0 / (summary.total + static_cast<double>(totals.size()) * alpha);
        window.inputs_value =
            std::max(kernels::KlCurrentReference(totals.data(), totals.size(), alpha, p_scale,
                                                 ref.profile->log_shares().data()),
                     0.0);
      } else {
        measure_fully();
      }
    }
  }
  if (!window.inputs_enough_samples) return {window.inputs_value, false};
  // A firing alert needs only enough samples (see Evaluate); otherwise the evidence matters only
  // when the measure reaches warn.
  if (firing) return {window.inputs_value, true};
  if (window.inputs_value < ref.policy.warn_threshold) return {window.inputs_value, false};
  if (window.inputs_evidence < 0) {
    // Only the KL path leaves it unknown, with totals that passed SummarizeCounts: the G-test's
    // sums alone, as ComputeDriftMeasures computes them.
    read_totals();
    if (!summary_made) summary_made = kernels::SummarizeCounts(totals.data(), totals.size());
    const kernels::HomogeneityTerms terms =
        kernels::HomogeneitySums(totals.data(), totals.size(), ref.profile->View());
    // Whether the p-value is at most max_p_value, as Report would find, mostly without
    // computing it (see GTestDecider). One per evaluating thread.
    thread_local GTestDecider decider;
    window.inputs_evidence = decider.PValueAtMost(
        HomogeneityGStatistic(summary_made->total, ref.profile->samples(), terms.homogeneity_terms),
        terms.occupied_bins - 1, ref.policy.max_p_value);
  }
  return {window.inputs_value, window.inputs_evidence == 1};
}

void DriftEngine::StreamState::SeedAlertInputs(WindowState& window, const WindowReport& report) {
  window.inputs_generation = window.ring.generation();
  window.inputs_value = report.measure_value;
  window.inputs_enough_samples = report.enough_samples;
  // FastAlertInputs asks for the evidence only with enough samples, where eligible is exactly it.
  window.inputs_evidence = report.eligible ? 1 : 0;
}

WindowReport DriftEngine::StreamState::ReportHeader(const WindowState& window,
                                                    absl::Time now) const {
  const Reference& ref = current();
  WindowReport report;
  report.stream = key;
  report.window = window.ring.length();
  report.kind = ref.kind;
  report.reference_version = ref.version;
  report.evaluated_at = now;
  report.alert = window.alert.status();
  report.warn_threshold = ref.policy.warn_threshold;
  report.critical_threshold = ref.policy.critical_threshold;
  report.clear_threshold = ref.policy.EffectiveClearThreshold();
  return report;
}

WindowReport DriftEngine::StreamState::AlertOnlyReport(const WindowState& window,
                                                       absl::Time now) const {
  WindowReport report = ReportHeader(window, now);
  report.measure_value = window.inputs_value;
  report.enough_samples = window.inputs_enough_samples;
  report.eligible = window.inputs_enough_samples && window.inputs_evidence == 1;
  report.measures_unchanged = true;
  return report;
}

absl::StatusOr<std::vector<WindowReport>> DriftEngine::GetDrift(
    const StreamKey& key, std::optional<absl::Duration> window, size_t top_bins) const {
  if (absl::Status s = ValidateStreamKey(key); !s.ok()) return s;
  std::shared_ptr<StreamState> stream = FindStream(key);
  if (stream == nullptr) {
    return absl::NotFoundError(absl::StrCat("no reference for stream ", key.ToString()));
  }
  const absl::Time now = clock_->Now();
  MutexLock lock(&stream->mutex);
  if (stream->deleted || stream->versions.empty()) {
    return absl::NotFoundError(absl::StrCat("no reference for stream ", key.ToString()));
  }
  stream->AdvanceWindows(now);
  std::vector<WindowReport> reports;
  for (const WindowState& w : stream->windows) {
    if (window && w.ring.length() != *window) continue;
    reports.push_back(stream->Report(w, top_bins, now));
  }
  if (window && reports.empty()) {
    return absl::NotFoundError(absl::StrCat("stream ", key.ToString(), " has no ",
                                            FormatWindow(*window), " window; its windows are ",
                                            WindowList(stream->current())));
  }
  return reports;
}

absl::StatusOr<double> DriftEngine::IncrementalKlCurrentReference(const StreamKey& key,
                                                                  absl::Duration window) const {
  std::shared_ptr<StreamState> stream = FindStream(key);
  if (stream == nullptr) {
    return absl::NotFoundError(absl::StrCat("no reference for stream ", key.ToString()));
  }
  MutexLock lock(&stream->mutex);
  if (stream->deleted || stream->versions.empty()) {
    return absl::NotFoundError(absl::StrCat("no reference for stream ", key.ToString()));
  }
  stream->AdvanceWindows(clock_->Now());
  for (const WindowState& w : stream->windows) {
    if (w.ring.length() != window) continue;
    const Reference& ref = stream->current();
    if (!ref.is_histogram()) return absl::FailedPreconditionError("not a histogram stream");
    // Built from the totals and resynced: what the running sums give right after a tick.
    IncrementalKl kl(ref.profile);
    const std::vector<double> totals = w.ring.totals();
    for (size_t bin = 0; bin < totals.size(); ++bin) {
      if (totals[bin] != 0) kl.Add(bin, totals[bin]);
    }
    kl.Resync();
    return kl.KlCurrentReference();
  }
  return absl::NotFoundError(
      absl::StrCat("stream ", key.ToString(), " has no ", FormatWindow(window), " window"));
}

size_t DriftEngine::Evaluate() {
  // One tick at a time (see evaluate_mutex_).
  MutexLock tick_lock(&evaluate_mutex_);
  // Held until the snapshots and alert states are written: see store_mutex_.
  ReaderMutexLock store_lock(&store_mutex_);
  const absl::Time now = clock_->Now();
  // Every batch with a log position up to here holds its streams' locks from taking the position
  // until it is applied, and its streams are in the set (read after this): each one is snapshotted
  // below with the batch included, so the log can be truncated to this point afterwards.
  // The store's log end first: every record it has written by then has an lsn up to
  // truncate_up_to (see StateStore::TruncateLog).
  const uint64_t log_end = options_.store != nullptr ? options_.store->LogEnd() : 0;
  const uint64_t truncate_up_to = next_lsn_.load() - 1;
  const std::vector<std::shared_ptr<StreamState>> streams = AllStreams();
  bool have_watchers;
  {
    MutexLock lock(&watch_mutex_);
    have_watchers = !watchers_.empty();
  }
  EngineObserver* const observer = options_.observer;
  const absl::Time started = absl::Now();
  const size_t top_bins =
      std::max(have_watchers ? kEvaluationTopBins : 0, observer ? observer->top_bins() : 0);
  // Without watchers, or an observer that wants every tick's reports, nobody reads the reports:
  // only the alert's inputs are needed.
  const bool need_reports =
      have_watchers || (observer != nullptr && !observer->reports_on_demand());
  // Labels are for watchers, and for an observer that does not name the bins itself.
  const BinLabels labels = have_watchers || (observer != nullptr && observer->wants_bin_labels())
                               ? BinLabels::kNamed
                               : BinLabels::kIndexOnly;

  // What evaluating a run of streams produces; merged in stream order afterwards. Cache-line
  // aligned: neighbouring runs are written by different threads.
  struct alignas(kCacheLineBytes) TickOutput {
    std::vector<StreamSnapshot> snapshots;
    std::vector<std::shared_ptr<StreamState>> snapshotted;
    std::vector<std::pair<WindowReport, bool>> reports;  // For the watchers.
    std::vector<StateStore::AlertUpdate> alert_updates;
    size_t evaluated = 0;
  };
  auto evaluate_stream = [&](const std::shared_ptr<StreamState>& stream, TickOutput& out,
                             std::vector<WindowReport>& stream_reports) {
    stream_reports.clear();
    {  // The stream's lock; the observer is called without it.
      MutexLock lock(&stream->mutex);
      if (stream->deleted || stream->versions.empty()) return;
      stream->AdvanceWindows(now);
      const Reference& ref = stream->current();
      if (options_.store != nullptr &&
          (stream->applied_lsn > stream->snapshot_lsn || stream->needs_full_snapshot)) {
        StreamSnapshot snapshot{stream->key, stream->applied_lsn, {}};
        for (WindowState& w : stream->windows) {
          if (stream->needs_full_snapshot) {
            for (SlidingWindow::SubBucket& b : w.ring.LiveSubBuckets()) {
              snapshot.sub_buckets.push_back(
                  SubBucketDelta{stream->key, w.ring.length(), b.start, std::move(b.values)});
            }
          } else {
            for (absl::Time start : w.dirty) {
              if (!w.ring.Covers(start)) continue;  // Expired since: the filter drops it.
              snapshot.sub_buckets.push_back(SubBucketDelta{stream->key, w.ring.length(), start,
                                                            w.ring.SubBucketValues(start)});
            }
          }
          w.dirty.clear();
        }
        stream->snapshot_lsn = stream->applied_lsn;
        stream->needs_full_snapshot = false;
        out.snapshots.push_back(std::move(snapshot));
        out.snapshotted.push_back(stream);
      }
      for (WindowState& w : stream->windows) {
        const AlertStatus before = w.alert.status();
        ++out.evaluated;
        // The observer alone keeps the measures of the last report it was given: while the
        // totals stay the same, so do they, and only the alert may move. An observer that takes
        // reports on demand is told of alert moves here and given measures when it asks.
        const bool observer_current =
            !have_watchers && w.observer_generation == w.ring.generation();
        if (!need_reports || observer_current) {
          const StreamState::AlertInputs inputs = stream->FastAlertInputs(w, now);
          w.alert.Observe(inputs.value, inputs.eligible, now, ref.policy);
          if (w.alert.status() == before) continue;
          if (options_.store != nullptr) {
            out.alert_updates.push_back({stream->key, w.ring.length(), w.alert.status()});
          }
          if (observer != nullptr && !have_watchers) {
            stream_reports.push_back(stream->AlertOnlyReport(w, now));
          }
          continue;
        }
        WindowReport report = stream->Report(w, top_bins, now, labels);
        StreamState::SeedAlertInputs(w, report);
        if (observer != nullptr) w.observer_generation = w.ring.generation();
        // Evidence (the G-test) is needed to raise an alert, not to keep or clear a firing one:
        // data back in the reference's shape has none, and must still clear it.
        const bool eligible =
            report.eligible || (report.enough_samples && before.state == AlertState::kFiring);
        const bool changed = w.alert.Observe(report.measure_value, eligible, now, ref.policy);
        report.alert = w.alert.status();
        if (options_.store != nullptr && !(report.alert == before)) {
          out.alert_updates.push_back({stream->key, w.ring.length(), report.alert});
        }
        if (have_watchers) {
          if (observer != nullptr) stream_reports.push_back(report);
          out.reports.emplace_back(std::move(report), changed);
        } else if (observer != nullptr) {
          stream_reports.push_back(std::move(report));
        }
      }
    }
    if (observer != nullptr && !stream_reports.empty()) observer->OnStreamEvaluated(stream_reports);
  };

  // A run's window snapshots are written as soon as the run is done, each stream's sub-buckets with
  // its log position in one write: a tick over 100k streams would otherwise hold every changed
  // sub-bucket of every stream, and one write batch of all of them, at once (~400 MB at the peak,
  // which the allocator keeps). The log is truncated only after every run's write succeeded
  // (below); a crash in between leaves each stream at a consistent snapshot with its log records.
  std::atomic<bool> snapshots_failed{false};
  auto write_snapshots = [&](TickOutput& out) {
    if (out.snapshots.empty()) return;
    if (!options_.store->WriteSnapshots(out.snapshots).ok()) {
      // Nothing of this run was written: write everything of these streams next time.
      store_errors_.fetch_add(1);
      snapshots_failed.store(true);
      for (const auto& stream : out.snapshotted) {
        MutexLock lock(&stream->mutex);
        stream->needs_full_snapshot = true;
      }
    }
    std::vector<StreamSnapshot>().swap(out.snapshots);
    std::vector<std::shared_ptr<StreamState>>().swap(out.snapshotted);
  };

  // Each run's output has its own slot, so the merge below keeps stream order.
  std::vector<TickOutput> outputs(RunCount(streams.size()));
  ForEachStreamInRuns(
      streams,
      [&](size_t run, const std::shared_ptr<StreamState>& stream,
          std::vector<WindowReport>& stream_reports) {
        evaluate_stream(stream, outputs[run], stream_reports);
      },
      [&](size_t run) { write_snapshots(outputs[run]); });

  std::vector<std::pair<WindowReport, bool>> reports;
  std::vector<StateStore::AlertUpdate> alert_updates;
  size_t evaluated = 0;
  for (TickOutput& out : outputs) {
    std::move(out.reports.begin(), out.reports.end(), std::back_inserter(reports));
    std::move(out.alert_updates.begin(), out.alert_updates.end(),
              std::back_inserter(alert_updates));
    evaluated += out.evaluated;
  }
  // Every stream's snapshot holds the batches up to truncate_up_to: their log records can go,
  // unless a run's snapshots were not written (the log keeps them until a later tick's are).
  if (options_.store != nullptr && !snapshots_failed.load() &&
      truncate_up_to > truncated_lsn_.load()) {
    if (options_.store->TruncateLog(truncate_up_to, log_end).ok()) {
      truncated_lsn_.store(truncate_up_to);
    } else {
      store_errors_.fetch_add(1);
    }
  }
  if (!alert_updates.empty() && !options_.store->WriteAlerts(alert_updates).ok()) {
    // The next change is written again; until then a restart restores the previous state.
    store_errors_.fetch_add(1);
  }
  if (!reports.empty()) {
    MutexLock lock(&watch_mutex_);
    for (const auto& [report, changed] : reports) {
      for (const auto& [id, watcher] : watchers_) {
        const WatchFilter& f = watcher.first;
        if (f.model != report.stream.model) continue;
        const bool whole_model = f.model_version.empty() && f.signal.empty();
        if (!whole_model &&
            (f.model_version != report.stream.model_version || f.signal != report.stream.signal)) {
          continue;
        }
        if (f.state_changes_only && !changed) continue;
        watcher.second(report);
      }
    }
  }
  if (observer != nullptr) observer->OnEvaluationFinished(evaluated, absl::Now() - started);
  return evaluated;
}

size_t DriftEngine::RefreshObserver() {
  EngineObserver* const observer = options_.observer;
  if (observer == nullptr) return 0;
  MutexLock evaluate_lock(&evaluate_mutex_);
  const absl::Time now = clock_->Now();
  const std::vector<std::shared_ptr<StreamState>> streams = AllStreams();
  const size_t top_bins = observer->top_bins();
  const BinLabels labels = observer->wants_bin_labels() ? BinLabels::kNamed : BinLabels::kIndexOnly;
  std::atomic<size_t> reported{0};
  ForEachStreamInRuns(
      streams,
      [&](size_t, const std::shared_ptr<StreamState>& stream,
          std::vector<WindowReport>& stream_reports) {
        stream_reports.clear();
        {
          MutexLock lock(&stream->mutex);
          if (stream->deleted || stream->versions.empty()) return;
          stream->AdvanceWindows(now);
          for (WindowState& w : stream->windows) {
            if (w.observer_generation == w.ring.generation()) continue;
            WindowReport report = stream->Report(w, top_bins, now, labels);
            StreamState::SeedAlertInputs(w, report);
            report.alert = w.alert.status();
            w.observer_generation = w.ring.generation();
            stream_reports.push_back(std::move(report));
          }
        }
        if (stream_reports.empty()) return;
        reported.fetch_add(stream_reports.size(), std::memory_order_relaxed);
        observer->OnStreamEvaluated(stream_reports);
      },
      [](size_t) {});
  return reported.load();
}

absl::Status DriftEngine::Recover() {
  if (options_.store == nullptr) return absl::OkStatus();
  const absl::Time now = clock_->Now();
  MutexLock map_lock(&streams_mutex_);
  MutexLock clients_lock(&clients_mutex_);
  // The visitors run inside Load(), below, while this function holds streams_mutex_ and
  // clients_mutex_; the analysis cannot follow that into the lambdas.
  StateStore::Visitor visitor;
  visitor.reference = [&](std::shared_ptr<const Reference> ref)
                          ABSL_NO_THREAD_SAFETY_ANALYSIS -> absl::Status {
    auto it = streams_.find(ref->stream);
    if (it == streams_.end()) {
      it = streams_.insert(std::make_shared<StreamState>(ref->stream, options_.store != nullptr))
               .first;
    }
    StreamState* slot = it->get();
    MutexLock lock(&slot->mutex);
    // Stored windows were reset whenever bins changed, so the latest version's windows hold them.
    const bool keep_windows = slot->KeepsWindows(*ref);
    slot->Install(std::move(ref), keep_windows, now);
    return absl::OkStatus();
  };
  visitor.sub_bucket = [&](const SubBucketDelta& delta) ABSL_NO_THREAD_SAFETY_ANALYSIS {
    auto it = streams_.find(delta.stream);
    if (it == streams_.end()) return;  // Its reference was deleted; the range delete is pending.
    MutexLock lock(&(*it)->mutex);
    WindowState* w = (*it)->FindWindow(delta.window);
    if (w == nullptr || !w->ring.Covers(delta.sub_bucket_start) ||
        delta.values.size() != w->ring.width()) {
      return;  // Expired, or from a window the policy no longer has.
    }
    w->ring.Add(delta.sub_bucket_start, delta.values);
    (*it)->NoteAdded(delta.values);
  };
  uint64_t max_lsn = 0;
  visitor.stream_lsn = [&](const StreamKey& key, uint64_t lsn) ABSL_NO_THREAD_SAFETY_ANALYSIS {
    max_lsn = std::max(max_lsn, lsn);
    auto it = streams_.find(key);
    if (it == streams_.end()) return;
    MutexLock lock(&(*it)->mutex);
    (*it)->snapshot_lsn = (*it)->applied_lsn = lsn;
  };
  visitor.log_record = [&](const IngestRecord& record) ABSL_NO_THREAD_SAFETY_ANALYSIS {
    max_lsn = std::max(max_lsn, record.lsn);
    for (const StreamDelta& delta : record.deltas) {
      auto it = streams_.find(delta.stream);
      if (it == streams_.end()) continue;  // Deleted since.
      StreamState& stream = **it;
      MutexLock lock(&stream.mutex);
      if (record.lsn <= stream.applied_lsn) continue;  // In the snapshot, or before a reset.
      for (WindowState& w : stream.windows) {
        if (!w.ring.Covers(record.event_time) || delta.values.size() != w.ring.width()) continue;
        w.ring.Add(record.event_time, delta.values);
      }
      stream.NoteAdded(delta.values);
      stream.applied_lsn = record.lsn;
      stream.needs_full_snapshot = true;  // Replayed data is not in a snapshot yet.
    }
  };
  visitor.client = [&](const std::string& client_id, uint64_t sequence, absl::Time seen)
                       ABSL_NO_THREAD_SAFETY_ANALYSIS {
                         auto state = std::make_shared<ClientState>();
                         state->last_seen = seen;
                         // Not locked: no other thread can see the new state yet, and its lock
                         // taken under streams_mutex_ would invert Ingest's order (client, then
                         // streams), which ThreadSanitizer reports.
                         state->last_sequence = sequence;
                         clients_[client_id] = std::move(state);
                       };
  visitor.alert = [&](const StreamKey& stream, absl::Duration window, const AlertStatus& status)
                      ABSL_NO_THREAD_SAFETY_ANALYSIS {
                        auto it = streams_.find(stream);
                        if (it == streams_.end()) return;
                        MutexLock lock(&(*it)->mutex);
                        if (WindowState* w = (*it)->FindWindow(window); w != nullptr)
                          w->alert.Restore(status);
                      };
  if (absl::Status s = options_.store->Load(visitor); !s.ok()) return s;
  if (options_.observer != nullptr) {
    for (const std::shared_ptr<StreamState>& stream : streams_) {
      MutexLock lock(&stream->mutex);
      if (!stream->versions.empty()) {
        stream->ingest_counters = options_.observer->OnReferenceInstalled(stream->current());
      }
    }
  }
  next_lsn_.store(max_lsn + 1);
  truncated_lsn_.store(0);
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> DriftEngine::Backup(const std::string& directory) {
  if (options_.store == nullptr) {
    return absl::FailedPreconditionError(
        "this kldriftd keeps state in memory (--storage=memory): there is nothing to back up");
  }
  if (directory.empty() || directory.front() != '/') {
    return absl::InvalidArgumentError(absl::StrCat(
        "backup directory \"", directory, "\" must be an absolute path on the server's machine"));
  }
  std::error_code error;
  if (std::filesystem::exists(directory, error)) {
    return absl::AlreadyExistsError(
        absl::StrCat("backup directory ", directory, " already exists; name a new one"));
  }
  return options_.store->Backup(directory);
}

uint64_t DriftEngine::Watch(WatchFilter filter, WatchCallback callback) {
  MutexLock lock(&watch_mutex_);
  const uint64_t id = next_watch_id_++;
  watchers_.emplace(id, std::make_pair(std::move(filter), std::move(callback)));
  return id;
}

void DriftEngine::Unwatch(uint64_t id) {
  MutexLock lock(&watch_mutex_);
  watchers_.erase(id);
}

size_t DriftEngine::stream_count() const {
  ReaderMutexLock lock(&streams_mutex_);
  return streams_.size();
}

bool DriftEngine::KnowsClient(const std::string& client_id) const {
  MutexLock lock(&clients_mutex_);
  return clients_.contains(client_id);
}

size_t DriftEngine::client_count() const {
  MutexLock lock(&clients_mutex_);
  return clients_.size();
}

// --- Handing a model to another replica ------------------------------------------------------

absl::StatusOr<std::vector<StreamExport>> DriftEngine::ExportModel(const std::string& model) const {
  if (absl::Status s = ValidateName("model", model, false); !s.ok()) return s;
  const absl::Time now = clock_->Now();
  std::vector<std::shared_ptr<StreamState>> streams;
  {
    ReaderMutexLock lock(&streams_mutex_);
    for (auto it = streams_.lower_bound(StreamKey{model, "", ""});
         it != streams_.end() && (*it)->key.model == model; ++it) {
      streams.push_back(*it);
    }
  }
  std::vector<StreamExport> exported;
  for (const std::shared_ptr<StreamState>& stream : streams) {
    MutexLock lock(&stream->mutex);
    if (stream->deleted || stream->versions.empty()) continue;
    stream->AdvanceWindows(now);
    StreamExport& out = exported.emplace_back();
    out.versions = stream->versions;
    for (const WindowState& w : stream->windows) {
      out.windows.push_back({w.ring.length(), w.ring.LiveSubBuckets(), w.alert.status()});
    }
  }
  if (exported.empty()) {
    return absl::NotFoundError(absl::StrCat("model \"", model, "\" has no streams on this server"));
  }
  return exported;
}

absl::StatusOr<size_t> DriftEngine::ImportModel(const std::string& model,
                                                std::vector<StreamExport> streams, bool replace,
                                                bool append) {
  if (absl::Status s = ValidateName("model", model, false); !s.ok()) return s;
  if (streams.empty()) return absl::InvalidArgumentError("the export holds no streams");
  for (const StreamExport& stream : streams) {
    if (stream.versions.empty()) {
      return absl::InvalidArgumentError("a stream of the export has no reference version");
    }
    const StreamKey& key = stream.versions.front()->stream;
    // Ingest relies on every stream's name having been checked when the stream was made.
    if (absl::Status s = ValidateStreamKey(key); !s.ok()) return s;
    if (key.model != model) {
      return absl::InvalidArgumentError(absl::StrCat(
          "stream ", key.ToString(), " of the export is not of model \"", model, "\""));
    }
    for (const auto& version : stream.versions) {
      if (!(version->stream == key)) {
        return absl::InvalidArgumentError(
            absl::StrCat("the versions of stream ", key.ToString(), " name other streams"));
      }
    }
  }
  // Replacing deletes the model's streams first (each durably, as DeleteReference does).
  std::vector<StreamKey> existing;
  {
    ReaderMutexLock lock(&streams_mutex_);
    for (auto it = streams_.lower_bound(StreamKey{model, "", ""});
         it != streams_.end() && (*it)->key.model == model; ++it) {
      existing.push_back((*it)->key);
    }
  }
  if (append && !replace) {
    for (const StreamExport& stream : streams) {
      const StreamKey& key = stream.versions.front()->stream;
      if (std::find(existing.begin(), existing.end(), key) != existing.end()) {
        return absl::FailedPreconditionError(
            absl::StrCat("stream ", key.ToString(),
                         " already exists on this server; an import's parts must "
                         "name different streams (re-run the import with replace)"));
      }
    }
    existing.clear();
  }
  if (!existing.empty() && !replace) {
    return absl::FailedPreconditionError(
        absl::StrCat("model \"", model, "\" already has ", existing.size(),
                     " streams on this server; import with replace (kldrift admin import "
                     "--replace) to overwrite them, or delete them first"));
  }
  for (const StreamKey& key : existing) {
    absl::StatusOr<uint64_t> deleted = DeleteReference(key);
    if (!deleted.ok() && !absl::IsNotFound(deleted.status())) return deleted.status();
  }

  MutexLock store_lock(&store_mutex_);
  const absl::Time now = clock_->Now();
  {
    ReaderMutexLock lock(&streams_mutex_);
    // Checked again now that no PutReference can run: one may have created a stream since.
    for (const StreamExport& stream : streams) {
      const StreamKey& key = stream.versions.front()->stream;
      if (streams_.contains(key)) {
        return absl::FailedPreconditionError(
            absl::StrCat("stream ", key.ToString(),
                         " was created on this server during the import; re-run it with replace"));
      }
    }
    if (streams_.size() + streams.size() > options_.max_streams) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "importing ", streams.size(), " streams would pass this server's maximum of ",
          options_.max_streams, " streams (--max-streams); it holds ", streams_.size()));
    }
    if (options_.max_streams_per_model > 0 && streams.size() > options_.max_streams_per_model) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "the export holds ", streams.size(), " streams of model \"", model,
          "\", over this server's --max-streams-per-model of ", options_.max_streams_per_model));
    }
  }
  size_t installed = 0;
  for (StreamExport& in : streams) {
    const StreamKey key = in.versions.front()->stream;
    auto stream = std::make_shared<StreamState>(key, options_.store != nullptr);
    {
      // Not visible to other threads until it is in the set, below (after its lock: the engine
      // takes the set's lock before a stream's).
      MutexLock lock(&stream->mutex);
      // Log records up to here were written before this stream existed here: never replayed.
      const uint64_t lsn = next_lsn_.load() - 1;
      for (const std::shared_ptr<const Reference>& version : in.versions) {
        const bool keep_windows = stream->KeepsWindows(*version);
        if (options_.store != nullptr) {
          if (absl::Status s = options_.store->PutReference(*version, !keep_windows, lsn);
              !s.ok()) {
            return s;
          }
        }
        stream->Install(version, keep_windows, now);
      }
      StreamSnapshot snapshot{key, lsn, {}};
      std::vector<StateStore::AlertUpdate> alerts;
      for (const StreamExport::Window& from : in.windows) {
        WindowState* w = stream->FindWindow(from.length);
        if (w == nullptr) continue;  // Not a window of the current version.
        for (const SlidingWindow::SubBucket& b : from.sub_buckets) {
          if (!w->ring.Covers(b.start) || b.values.size() != w->ring.width()) continue;
          w->ring.Add(b.start, b.values);
          stream->NoteAdded(b.values);
        }
        for (SlidingWindow::SubBucket& b : w->ring.LiveSubBuckets()) {
          snapshot.sub_buckets.push_back({key, from.length, b.start, std::move(b.values)});
        }
        w->alert.Restore(from.alert);
        alerts.push_back({key, from.length, from.alert});
      }
      if (options_.store != nullptr) {
        if (absl::Status s = options_.store->WriteSnapshots({snapshot}); !s.ok()) return s;
        if (absl::Status s = options_.store->WriteAlerts(alerts); !s.ok()) return s;
      }
      stream->snapshot_lsn = stream->applied_lsn = lsn;
    }
    {
      MutexLock map_lock(&streams_mutex_);
      // Absent (checked above, and store_mutex_ has kept PutReference out since).
      streams_.insert(stream);
    }
    if (options_.observer != nullptr) {
      MutexLock lock(&stream->mutex);
      stream->ingest_counters = options_.observer->OnReferenceInstalled(*in.versions.back());
    }
    ++installed;
  }
  return installed;
}

}  // namespace kldrift
