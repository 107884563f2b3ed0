// Client-side binning: a reference's frozen bins as the client sees them (ReferenceBins), and one
// stream's observations turned into histogram deltas against those bins (StreamAccumulator).
//
// The client bins with the server's own BinLayout, so a value lands in the same bucket whichever
// side bins it. Deltas are sent as StreamBatch.histogram (integer counts in the full layout) with
// the reference version they were binned against. Class-probability vectors are kept as vectors
// and sent as StreamBatch.probabilities: the server's histogram path takes integer counts only, and
// adds probability vectors as a soft histogram itself.
//
// Private to the client library (Recorder and the CLI); not a stable API.
//
// Thread safety: ReferenceBins is immutable and shared between threads. StreamAccumulator is
// thread-compatible: the Recorder guards each one with its mutex.
#ifndef KLDRIFT_CLIENT_INTERNAL_STREAM_ACCUMULATOR_H_
#define KLDRIFT_CLIENT_INTERNAL_STREAM_ACCUMULATOR_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "kldrift/v1/kldrift.pb.h"
#include "server/core/bin_layout.h"

namespace kldrift::client_internal {

// Each probability vector must sum to 1 within this (the server's own tolerance). Vectors are
// checked before they are queued, because one bad vector makes the server reject a whole batch.
inline constexpr double kProbabilitySumTolerance = 1e-6;

// One version of a histogram reference: its kind, frozen bins and version.
class ReferenceBins {
 public:
  // From a GetReference answer. FAILED_PRECONDITION for Gaussian and paired-log-prob references
  // (the client bins histogram kinds only); INVALID_ARGUMENT if the bins are malformed.
  static absl::StatusOr<std::shared_ptr<const ReferenceBins>> FromProto(
      const v1::Reference& reference);
  // From a layout, e.g. in tests.
  static std::shared_ptr<const ReferenceBins> Create(uint64_t version, BinLayout layout);

  uint64_t version() const { return version_; }
  const BinLayout& layout() const { return layout_; }
  // Entries in one probability vector: the categories (without the unseen bucket) or the
  // pre-binned bins; 0 for numeric references, which take no probability vectors.
  size_t probability_width() const;
  // Whether counts binned against `other` line up with these bins (same kind and bins).
  bool SameBins(const ReferenceBins& other) const;
  // User-given counts in the full layout: either already full (layout().size() entries) or one per
  // interior bin / category, to which zero underflow, overflow, NaN or unseen counts are added.
  // INVALID_ARGUMENT if the length fits neither or a count is not a whole number >= 0.
  absl::StatusOr<std::vector<double>> ExpandCounts(absl::Span<const double> counts) const;

 private:
  ReferenceBins(uint64_t version, BinLayout layout)
      : version_(version), layout_(std::move(layout)) {}

  uint64_t version_;
  BinLayout layout_;
};

// One stream's data, ready for one StreamBatch.
struct StreamDelta {
  enum class Type { kCounts, kProbabilities };

  std::string signal;
  // The bins `numbers` were computed against; its version goes out as reference_version.
  std::shared_ptr<const ReferenceBins> bins;
  Type type = Type::kCounts;
  // kCounts: bins->layout().size() integer counts. kProbabilities: whole vectors of
  // bins->probability_width() entries, one after another.
  std::vector<double> numbers;
  // Observations in this delta (values, labels or probability vectors).
  uint64_t observations = 0;
  // How many times the server has rejected this delta because its reference changed.
  int rejections = 0;
};

// Fills `batch` (signal, model_version, reference_version and data) from `delta`.
void ToStreamBatch(const StreamDelta& delta, absl::string_view model_version,
                   v1::StreamBatch* batch);

// Accumulates one stream's observations between flushes.
//
// Until the stream's bins are known (SetBins), observations are buffered raw, up to
// `max_buffered` values, labels and probability entries; beyond that they are dropped and counted.
// Once bins are known, values and labels become counts (O(bins) memory); probability vectors stay
// vectors (bounded by the same limit) until taken. Every observation that cannot be sent is counted
// in dropped_observations(), with the reason in last_drop_reason(): nothing is lost silently.
class StreamAccumulator {
 public:
  StreamAccumulator(std::string signal, size_t max_buffered);

  const std::string& signal() const { return signal_; }

  void AddValue(double value);
  void AddLabel(absl::string_view label);
  void AddProbabilities(absl::Span<const double> probabilities);

  // The bins observations are counted against; null until SetBins.
  const std::shared_ptr<const ReferenceBins>& bins() const { return bins_; }
  // True until SetBins, and again after Requeue: the Recorder should fetch the reference.
  bool needs_bins() const { return bins_ == nullptr || needs_refresh_; }

  // Installs the stream's current bins. Buffered observations are binned; counts and requeued
  // deltas binned against earlier bins are kept if those bins are the same, dropped otherwise.
  // Observations of a type the reference does not take (labels for a numeric stream) are dropped.
  void SetBins(std::shared_ptr<const ReferenceBins> bins);
  // The stream's reference no longer exists: counts and requeued deltas are dropped, and later
  // observations are buffered until SetBins.
  void ClearBins(absl::string_view reason);

  // Drops everything not yet taken (buffered, pending and requeued), e.g. when the Recorder closes.
  void DropAll(absl::string_view reason);

  // Takes back a delta the server rejected because the stream's reference changed. It is sent
  // again after the next SetBins if the bins are unchanged; a delta rejected twice is dropped.
  void Requeue(StreamDelta delta);

  // The data to send now, or nullopt. Counts are taken before probability vectors: a stream that
  // has both gives two deltas, in two batches.
  std::optional<StreamDelta> TakeDelta();
  // Whether TakeDelta would return a delta.
  bool HasDelta() const;

  // Observations waiting for bins (buffered raw or requeued).
  uint64_t waiting_observations() const;
  uint64_t dropped_observations() const { return dropped_observations_; }
  const std::string& last_drop_reason() const { return last_drop_reason_; }

 private:
  // Buffered observations not yet binned.
  size_t BufferedEntries() const;
  // Bins buffered values into counts_. REQUIRES: bins_ is numeric.
  void BinBufferedValues();
  void Drop(uint64_t observations, std::string reason);
  void DropCounts(absl::string_view reason);
  // Validates and appends one probability vector to pending_probabilities_.
  void AppendProbabilities(absl::Span<const double> probabilities);
  // Merges a requeued delta into the pending data. REQUIRES: bins_->SameBins(*delta.bins).
  void Merge(StreamDelta delta);

  const std::string signal_;
  const size_t max_buffered_;
  std::shared_ptr<const ReferenceBins> bins_;
  bool needs_refresh_ = false;

  // Raw observations: before bins are known, and numeric values between binning chunks.
  std::vector<double> buffered_values_;
  std::vector<std::string> buffered_labels_;
  std::vector<double> buffered_probabilities_;
  std::vector<size_t> buffered_probability_sizes_;

  // Pending data against bins_.
  std::vector<double> counts_;
  uint64_t counted_observations_ = 0;
  std::vector<double> pending_probabilities_;
  uint64_t pending_probability_vectors_ = 0;
  // The most rejections among deltas merged into the pending data.
  int pending_rejections_ = 0;

  // Rejected deltas waiting for refreshed bins.
  std::vector<StreamDelta> requeued_;

  uint64_t dropped_observations_ = 0;
  std::string last_drop_reason_;
};

}  // namespace kldrift::client_internal

#endif  // KLDRIFT_CLIENT_INTERNAL_STREAM_ACCUMULATOR_H_
