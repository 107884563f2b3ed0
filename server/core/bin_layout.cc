#include "server/core/bin_layout.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "server/core/mutex.h"
#include "server/kernels/binning.h"

namespace kldrift {
namespace {

// Shortest decimal that reads back as the same double, so nearby edges get
// distinct labels.
std::string EdgeText(double edge) {
  char buffer[32];
  const auto result = std::to_chars(buffer, buffer + sizeof(buffer), edge);
  return std::string(buffer, result.ptr);
}

}  // namespace

absl::StatusOr<BinLayout> BinLayout::Numeric(std::vector<double> edges) {
  if (edges.size() < 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        "a numeric reference needs at least 2 bin edges (one bin), got ", edges.size()));
  }
  for (size_t i = 0; i < edges.size(); ++i) {
    if (!std::isfinite(edges[i])) {
      return absl::InvalidArgumentError(
          absl::StrCat("edges[", i, "] = ", edges[i],
                       " is not finite; use finite edges (values beyond them go to the "
                       "underflow/overflow buckets automatically)"));
    }
    if (i > 0 && !(edges[i] > edges[i - 1])) {
      return absl::InvalidArgumentError(
          absl::StrCat("edges[", i, "] = ", edges[i], " is not greater than edges[", i - 1,
                       "] = ", edges[i - 1], "; edges must be strictly increasing"));
    }
  }
  auto data = std::make_unique<Data>();
  data->kind = Kind::kNumeric;
  data->size = edges.size() + 2;
  if (edges.size() > kPadOnEachCallEdges) {
    data->search_edges.resize(kernels::SearchEdgesSize(edges.size()));
    kernels::PadEdgesForSearch(edges.data(), edges.size(), data->search_edges.data());
  }
  data->edges = std::move(edges);
  return BinLayout(Intern(std::move(data)));
}

absl::StatusOr<BinLayout> BinLayout::Categorical(std::vector<std::string> categories) {
  if (categories.empty()) {
    return absl::InvalidArgumentError("a categorical reference needs at least one category");
  }
  auto data = std::make_unique<Data>();
  data->kind = Kind::kCategorical;
  data->size = categories.size() + 1;
  for (size_t i = 0; i < categories.size(); ++i) {
    if (categories[i].empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("category ", i, " is an empty string; every category needs a label"));
    }
    auto [it, inserted] = data->category_bins.try_emplace(categories[i], i);
    if (!inserted) {
      return absl::InvalidArgumentError(absl::StrCat("category \"", categories[i],
                                                     "\" appears twice (positions ", it->second,
                                                     " and ", i, "); labels must be unique"));
    }
  }
  data->categories = std::move(categories);
  return BinLayout(Intern(std::move(data)));
}

absl::StatusOr<BinLayout> BinLayout::PreBinned(size_t bins) {
  if (bins == 0) {
    return absl::InvalidArgumentError("a pre-binned reference needs at least one bin");
  }
  auto data = std::make_unique<Data>();
  data->kind = Kind::kPreBinned;
  data->size = bins;
  return BinLayout(Intern(std::move(data)));
}

std::string BinLayout::BinLabel(size_t bin) const {
  const std::vector<double>& edges = data_->edges;
  const std::vector<std::string>& categories = data_->categories;
  switch (data_->kind) {
    case Kind::kNumeric: {
      const size_t num_edges = edges.size();
      if (bin == 0) return absl::StrCat("< ", EdgeText(edges.front()));
      if (bin == num_edges) return absl::StrCat(">= ", EdgeText(edges.back()));
      if (bin == num_edges + 1) return "NaN";
      return absl::StrCat("[", EdgeText(edges[bin - 1]), ", ", EdgeText(edges[bin]), ")");
    }
    case Kind::kCategorical:
      return bin < categories.size() ? categories[bin] : std::string(kUnseenCategoryLabel);
    case Kind::kPreBinned:
      return absl::StrCat("bin ", bin);
  }
  return absl::StrCat("bin ", bin);
}

void BinLayout::AddValues(absl::Span<const double> values, absl::Span<double> counts) const {
  // Bin in fixed-size chunks so the index buffer stays on the stack and in L1.
  constexpr size_t kChunk = 512;
  uint32_t bins[kChunk];
  const std::vector<double>& edges = data_->edges;
  const double* search_edges = data_->search_edges.data();
  if (data_->search_edges.empty()) {
    thread_local std::vector<double> padded;
    padded.resize(kernels::SearchEdgesSize(edges.size()));
    kernels::PadEdgesForSearch(edges.data(), edges.size(), padded.data());
    search_edges = padded.data();
  }
  for (size_t begin = 0; begin < values.size(); begin += kChunk) {
    const size_t n = std::min(kChunk, values.size() - begin);
    kernels::BinIndices(values.data() + begin, n, search_edges, edges.size(), bins);
    for (size_t j = 0; j < n; ++j) {
      counts[bins[j]] += 1;
    }
  }
}

size_t BinLayout::CategoryBin(absl::string_view label) const {
  auto it = data_->category_bins.find(label);
  return it == data_->category_bins.end() ? data_->categories.size() : it->second;
}

absl::string_view BinLayout::CachedBinLabel(size_t bin, std::string& scratch) const {
  if (!data_->interned) {
    scratch = BinLabel(bin);
    return scratch;
  }
  absl::call_once(data_->labels_once, [this] {
    data_->labels.reserve(data_->size);
    for (size_t b = 0; b < data_->size; ++b) data_->labels.push_back(BinLabel(b));
  });
  return data_->labels[bin];
}

std::shared_ptr<const BinLayout::Data> BinLayout::Intern(std::unique_ptr<Data> data) {
  if (data->size > kMaxInternedBins) return std::shared_ptr<const Data>(std::move(data));
  // Keyed by the bytes that make a layout: its kind, then its size, edges or length-prefixed
  // categories (so -0 and 0 are different edges, as their labels are).
  std::string key(1, static_cast<char>(data->kind));
  switch (data->kind) {
    case Kind::kNumeric:
      key.append(reinterpret_cast<const char*>(data->edges.data()),
                 data->edges.size() * sizeof(double));
      break;
    case Kind::kCategorical:
      for (const std::string& category : data->categories) {
        absl::StrAppend(&key, category.size(), ":", category);
      }
      break;
    case Kind::kPreBinned:
      absl::StrAppend(&key, data->size);
      break;
  }
  static Mutex mutex;
  static auto& table = *new absl::flat_hash_map<std::string, std::weak_ptr<const Data>>();
  static size_t sweep_at = 64;  // Guarded by mutex.
  MutexLock lock(&mutex);
  std::weak_ptr<const Data>& slot = table[key];
  if (std::shared_ptr<const Data> alive = slot.lock(); alive != nullptr) return alive;
  data->interned = true;
  std::shared_ptr<const Data> shared(std::move(data));
  slot = shared;
  if (table.size() >= sweep_at) {
    // Forget layouts no stream holds any more; amortised over the table's doubling.
    absl::erase_if(table, [](const auto& entry) { return entry.second.expired(); });
    sweep_at = std::max<size_t>(64, 2 * table.size());
  }
  return shared;
}

}  // namespace kldrift
