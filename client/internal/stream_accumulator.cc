#include "client/internal/stream_accumulator.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace kldrift::client_internal {
namespace {

// Numeric values are binned in chunks, which amortises the vector binning kernel's set-up.
constexpr size_t kBinningChunk = 256;
// A delta the server rejects this many times (its reference changed under it each time) is
// dropped rather than requeued again.
constexpr int kMaxRejections = 2;

absl::string_view KindName(BinLayout::Kind kind) {
  switch (kind) {
    case BinLayout::Kind::kNumeric:
      return "numeric";
    case BinLayout::Kind::kCategorical:
      return "categorical";
    case BinLayout::Kind::kPreBinned:
      return "pre_binned";
  }
  return "unknown";
}

}  // namespace

absl::StatusOr<std::shared_ptr<const ReferenceBins>> ReferenceBins::FromProto(
    const v1::Reference& reference) {
  absl::StatusOr<BinLayout> layout = absl::InvalidArgumentError("no bins");
  switch (reference.kind()) {
    case v1::REFERENCE_KIND_NUMERIC:
      layout = BinLayout::Numeric(std::vector<double>(reference.numeric().edges().begin(),
                                                      reference.numeric().edges().end()));
      break;
    case v1::REFERENCE_KIND_CATEGORICAL:
      layout = BinLayout::Categorical(
          std::vector<std::string>(reference.categorical().categories().begin(),
                                   reference.categorical().categories().end()));
      break;
    case v1::REFERENCE_KIND_PRE_BINNED:
      layout = BinLayout::PreBinned(reference.pre_binned().bins());
      break;
    default:
      return absl::FailedPreconditionError(
          absl::StrCat("the reference of ", reference.stream().model(), "/",
                       reference.stream().model_version(), "/", reference.stream().signal(),
                       " is of kind ", v1::ReferenceKind_Name(reference.kind()),
                       "; the client bins numeric, categorical and pre-binned references only"));
  }
  if (!layout.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("the server sent malformed bins: ", layout.status().message()));
  }
  return Create(reference.version(), *std::move(layout));
}

std::shared_ptr<const ReferenceBins> ReferenceBins::Create(uint64_t version, BinLayout layout) {
  return std::shared_ptr<const ReferenceBins>(new ReferenceBins(version, std::move(layout)));
}

size_t ReferenceBins::probability_width() const {
  switch (layout_.kind()) {
    case BinLayout::Kind::kCategorical:
      return layout_.categories().size();
    case BinLayout::Kind::kPreBinned:
      return layout_.size();
    case BinLayout::Kind::kNumeric:
      return 0;
  }
  return 0;
}

bool ReferenceBins::SameBins(const ReferenceBins& other) const {
  if (layout_.kind() != other.layout_.kind()) return false;
  switch (layout_.kind()) {
    case BinLayout::Kind::kNumeric:
      return layout_.edges() == other.layout_.edges();
    case BinLayout::Kind::kCategorical:
      return layout_.categories() == other.layout_.categories();
    case BinLayout::Kind::kPreBinned:
      return layout_.size() == other.layout_.size();
  }
  return false;
}

absl::StatusOr<std::vector<double>> ReferenceBins::ExpandCounts(
    absl::Span<const double> counts) const {
  for (size_t i = 0; i < counts.size(); ++i) {
    if (!std::isfinite(counts[i]) || counts[i] < 0 || counts[i] != std::floor(counts[i])) {
      return absl::InvalidArgumentError(
          absl::StrCat("count ", i, " is ", counts[i], "; counts are whole numbers >= 0"));
    }
  }
  const size_t full = layout_.size();
  if (counts.size() == full) return std::vector<double>(counts.begin(), counts.end());
  std::vector<double> expanded(full, 0.0);
  switch (layout_.kind()) {
    case BinLayout::Kind::kNumeric: {
      // Full layout: [underflow, interior bins..., overflow, NaN].
      const size_t interior = layout_.edges().size() - 1;
      if (counts.size() == interior) {
        std::copy(counts.begin(), counts.end(), expanded.begin() + 1);
        return expanded;
      }
      return absl::InvalidArgumentError(absl::StrCat(
          counts.size(), " counts do not fit the numeric reference: give ", interior,
          " (one per bin between the edges) or ", full, " (underflow, bins, overflow, NaN)"));
    }
    case BinLayout::Kind::kCategorical: {
      // Full layout: [categories..., unseen].
      const size_t categories = layout_.categories().size();
      if (counts.size() == categories) {
        std::copy(counts.begin(), counts.end(), expanded.begin());
        return expanded;
      }
      return absl::InvalidArgumentError(
          absl::StrCat(counts.size(), " counts do not fit the categorical reference: give ",
                       categories, " (one per category) or ", full, " (with the unseen count)"));
    }
    case BinLayout::Kind::kPreBinned:
      break;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      counts.size(), " counts do not fit the pre-binned reference of ", full, " bins"));
}

void ToStreamBatch(const StreamDelta& delta, absl::string_view model_version,
                   v1::StreamBatch* batch) {
  batch->set_model_version(std::string(model_version));
  batch->set_signal(delta.signal);
  batch->set_reference_version(delta.bins->version());
  auto* numbers = delta.type == StreamDelta::Type::kCounts
                      ? batch->mutable_histogram()->mutable_counts()
                      : batch->mutable_probabilities()->mutable_probabilities();
  numbers->Assign(delta.numbers.begin(), delta.numbers.end());
}

StreamAccumulator::StreamAccumulator(std::string signal, size_t max_buffered)
    : signal_(std::move(signal)), max_buffered_(max_buffered) {}

size_t StreamAccumulator::BufferedEntries() const {
  return buffered_values_.size() + buffered_labels_.size() + buffered_probabilities_.size() +
         pending_probabilities_.size();
}

void StreamAccumulator::Drop(uint64_t observations, std::string reason) {
  if (observations == 0) return;
  dropped_observations_ += observations;
  last_drop_reason_ = std::move(reason);
}

void StreamAccumulator::AddValue(double value) {
  if (bins_ != nullptr && bins_->layout().kind() != BinLayout::Kind::kNumeric) {
    Drop(1, absl::StrCat("stream ", signal_, " has a ", KindName(bins_->layout().kind()),
                         " reference, which takes no numeric values"));
    return;
  }
  if (bins_ == nullptr && BufferedEntries() >= max_buffered_) {
    Drop(1, absl::StrCat("stream ", signal_, ": ", max_buffered_,
                         " observations are already waiting for the reference"));
    return;
  }
  buffered_values_.push_back(value);
  if (bins_ != nullptr && buffered_values_.size() >= kBinningChunk) BinBufferedValues();
}

void StreamAccumulator::AddLabel(absl::string_view label) {
  if (bins_ == nullptr) {
    if (BufferedEntries() >= max_buffered_) {
      Drop(1, absl::StrCat("stream ", signal_, ": ", max_buffered_,
                           " observations are already waiting for the reference"));
      return;
    }
    buffered_labels_.emplace_back(label);
    return;
  }
  if (bins_->layout().kind() != BinLayout::Kind::kCategorical) {
    Drop(1, absl::StrCat("stream ", signal_, " has a ", KindName(bins_->layout().kind()),
                         " reference, which takes no labels"));
    return;
  }
  counts_[bins_->layout().CategoryBin(label)] += 1;
  ++counted_observations_;
}

void StreamAccumulator::AddProbabilities(absl::Span<const double> probabilities) {
  if (bins_ == nullptr) {
    if (BufferedEntries() + probabilities.size() > max_buffered_) {
      Drop(1, absl::StrCat("stream ", signal_, ": ", max_buffered_,
                           " observations are already waiting for the reference"));
      return;
    }
    buffered_probabilities_.insert(buffered_probabilities_.end(), probabilities.begin(),
                                   probabilities.end());
    buffered_probability_sizes_.push_back(probabilities.size());
    return;
  }
  AppendProbabilities(probabilities);
}

void StreamAccumulator::AppendProbabilities(absl::Span<const double> probabilities) {
  const size_t width = bins_->probability_width();
  if (width == 0) {
    Drop(1, absl::StrCat("stream ", signal_,
                         " has a numeric reference, which takes no probability vectors"));
    return;
  }
  if (probabilities.size() != width) {
    Drop(1, absl::StrCat("stream ", signal_, ": a probability vector has ", probabilities.size(),
                         " entries but the reference has ", width));
    return;
  }
  double sum = 0;
  for (double p : probabilities) {
    if (!(p >= 0 && p <= 1)) {
      Drop(1, absl::StrCat("stream ", signal_, ": probability ", p, " is outside [0, 1]"));
      return;
    }
    sum += p;
  }
  if (std::fabs(sum - 1.0) > kProbabilitySumTolerance) {
    Drop(1, absl::StrCat("stream ", signal_, ": a probability vector sums to ", sum,
                         ", not 1 within ", kProbabilitySumTolerance));
    return;
  }
  if (pending_probabilities_.size() + width > max_buffered_) {
    Drop(1, absl::StrCat("stream ", signal_, ": ", max_buffered_,
                         " probability entries are already waiting to be sent"));
    return;
  }
  pending_probabilities_.insert(pending_probabilities_.end(), probabilities.begin(),
                                probabilities.end());
  ++pending_probability_vectors_;
}

void StreamAccumulator::BinBufferedValues() {
  if (buffered_values_.empty()) return;
  bins_->layout().AddValues(buffered_values_, absl::MakeSpan(counts_));
  counted_observations_ += buffered_values_.size();
  buffered_values_.clear();
}

void StreamAccumulator::DropCounts(absl::string_view reason) {
  Drop(counted_observations_ + pending_probability_vectors_, std::string(reason));
  std::fill(counts_.begin(), counts_.end(), 0.0);
  counted_observations_ = 0;
  pending_probabilities_.clear();
  pending_probability_vectors_ = 0;
  pending_rejections_ = 0;
}

void StreamAccumulator::SetBins(std::shared_ptr<const ReferenceBins> bins) {
  if (bins_ != nullptr && !bins_->SameBins(*bins)) {
    DropCounts(absl::StrCat("stream ", signal_, ": the reference's bins changed (version ",
                            bins_->version(), " to ", bins->version(),
                            ") before the data binned against them was sent"));
  }
  if (bins_ == nullptr || !bins_->SameBins(*bins)) counts_.assign(bins->layout().size(), 0.0);
  bins_ = std::move(bins);
  needs_refresh_ = false;
  const BinLayout::Kind kind = bins_->layout().kind();

  // Raw observations buffered while the bins were unknown.
  if (kind == BinLayout::Kind::kNumeric) {
    BinBufferedValues();
  } else if (!buffered_values_.empty()) {
    Drop(buffered_values_.size(), absl::StrCat("stream ", signal_, " has a ", KindName(kind),
                                               " reference, which takes no numeric values"));
    buffered_values_.clear();
  }
  std::vector<std::string> labels = std::move(buffered_labels_);
  buffered_labels_.clear();
  for (const std::string& label : labels) AddLabel(label);
  std::vector<double> probabilities = std::move(buffered_probabilities_);
  std::vector<size_t> sizes = std::move(buffered_probability_sizes_);
  buffered_probabilities_.clear();
  buffered_probability_sizes_.clear();
  size_t start = 0;
  for (size_t size : sizes) {
    AppendProbabilities(absl::MakeConstSpan(probabilities).subspan(start, size));
    start += size;
  }

  // Deltas the server rejected while the reference changed.
  std::vector<StreamDelta> requeued = std::move(requeued_);
  requeued_.clear();
  for (StreamDelta& delta : requeued) {
    if (delta.bins->SameBins(*bins_)) {
      Merge(std::move(delta));
    } else {
      Drop(delta.observations,
           absl::StrCat("stream ", signal_, ": the reference's bins changed (version ",
                        delta.bins->version(), " to ", bins_->version(),
                        ") and a batch binned against the old ones was rejected"));
    }
  }
}

void StreamAccumulator::ClearBins(absl::string_view reason) {
  DropCounts(reason);
  for (const StreamDelta& delta : requeued_) Drop(delta.observations, std::string(reason));
  requeued_.clear();
  // Numeric values not yet binned stay buffered for the next bins.
  bins_ = nullptr;
  needs_refresh_ = false;
  counts_.clear();
}

void StreamAccumulator::DropAll(absl::string_view reason) {
  DropCounts(reason);
  for (const StreamDelta& delta : requeued_) Drop(delta.observations, std::string(reason));
  requeued_.clear();
  Drop(buffered_values_.size() + buffered_labels_.size() + buffered_probability_sizes_.size(),
       std::string(reason));
  buffered_values_.clear();
  buffered_labels_.clear();
  buffered_probabilities_.clear();
  buffered_probability_sizes_.clear();
}

void StreamAccumulator::Requeue(StreamDelta delta) {
  if (delta.rejections + 1 >= kMaxRejections) {
    Drop(delta.observations, absl::StrCat("stream ", signal_,
                                          ": a batch was rejected again after its bins were "
                                          "fetched anew (version ",
                                          delta.bins->version(), ")"));
    return;
  }
  ++delta.rejections;
  requeued_.push_back(std::move(delta));
  needs_refresh_ = true;
}

void StreamAccumulator::Merge(StreamDelta delta) {
  pending_rejections_ = std::max(pending_rejections_, delta.rejections);
  if (delta.type == StreamDelta::Type::kCounts) {
    for (size_t i = 0; i < counts_.size() && i < delta.numbers.size(); ++i) {
      counts_[i] += delta.numbers[i];
    }
    counted_observations_ += delta.observations;
  } else {
    pending_probabilities_.insert(pending_probabilities_.end(), delta.numbers.begin(),
                                  delta.numbers.end());
    pending_probability_vectors_ += delta.observations;
  }
}

bool StreamAccumulator::HasDelta() const {
  if (bins_ == nullptr) return false;
  return counted_observations_ > 0 ||
         (!buffered_values_.empty() && bins_->layout().kind() == BinLayout::Kind::kNumeric) ||
         pending_probability_vectors_ > 0;
}

std::optional<StreamDelta> StreamAccumulator::TakeDelta() {
  if (bins_ == nullptr) return std::nullopt;
  if (bins_->layout().kind() == BinLayout::Kind::kNumeric) BinBufferedValues();
  StreamDelta delta;
  delta.signal = signal_;
  delta.bins = bins_;
  delta.rejections = pending_rejections_;
  if (counted_observations_ > 0) {
    delta.type = StreamDelta::Type::kCounts;
    delta.numbers = counts_;
    delta.observations = counted_observations_;
    std::fill(counts_.begin(), counts_.end(), 0.0);
    counted_observations_ = 0;
    if (pending_probability_vectors_ == 0) pending_rejections_ = 0;
    return delta;
  }
  if (pending_probability_vectors_ > 0) {
    delta.type = StreamDelta::Type::kProbabilities;
    delta.numbers = std::move(pending_probabilities_);
    delta.observations = pending_probability_vectors_;
    pending_probabilities_.clear();
    pending_probability_vectors_ = 0;
    pending_rejections_ = 0;
    return delta;
  }
  return std::nullopt;
}

uint64_t StreamAccumulator::waiting_observations() const {
  uint64_t waiting = buffered_labels_.size() + buffered_probability_sizes_.size();
  if (bins_ == nullptr) waiting += buffered_values_.size();
  for (const StreamDelta& delta : requeued_) waiting += delta.observations;
  return waiting;
}

}  // namespace kldrift::client_internal
