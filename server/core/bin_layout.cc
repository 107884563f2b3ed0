#include "server/core/bin_layout.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
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
  BinLayout layout(Kind::kNumeric, edges.size() + 2);
  if (edges.size() > kPadOnEachCallEdges) {
    layout.search_edges_.resize(kernels::SearchEdgesSize(edges.size()));
    kernels::PadEdgesForSearch(edges.data(), edges.size(), layout.search_edges_.data());
  }
  layout.edges_ = std::move(edges);
  return layout;
}

absl::StatusOr<BinLayout> BinLayout::Categorical(std::vector<std::string> categories) {
  if (categories.empty()) {
    return absl::InvalidArgumentError("a categorical reference needs at least one category");
  }
  BinLayout layout(Kind::kCategorical, categories.size() + 1);
  for (size_t i = 0; i < categories.size(); ++i) {
    if (categories[i].empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("category ", i, " is an empty string; every category needs a label"));
    }
    auto [it, inserted] = layout.category_bins_.try_emplace(categories[i], i);
    if (!inserted) {
      return absl::InvalidArgumentError(absl::StrCat("category \"", categories[i],
                                                     "\" appears twice (positions ", it->second,
                                                     " and ", i, "); labels must be unique"));
    }
  }
  layout.categories_ = std::move(categories);
  return layout;
}

absl::StatusOr<BinLayout> BinLayout::PreBinned(size_t bins) {
  if (bins == 0) {
    return absl::InvalidArgumentError("a pre-binned reference needs at least one bin");
  }
  return BinLayout(Kind::kPreBinned, bins);
}

std::string BinLayout::BinLabel(size_t bin) const {
  switch (kind_) {
    case Kind::kNumeric: {
      const size_t num_edges = edges_.size();
      if (bin == 0) return absl::StrCat("< ", EdgeText(edges_.front()));
      if (bin == num_edges) return absl::StrCat(">= ", EdgeText(edges_.back()));
      if (bin == num_edges + 1) return "NaN";
      return absl::StrCat("[", EdgeText(edges_[bin - 1]), ", ", EdgeText(edges_[bin]), ")");
    }
    case Kind::kCategorical:
      return bin < categories_.size() ? categories_[bin] : std::string(kUnseenCategoryLabel);
    case Kind::kPreBinned:
      return absl::StrCat("bin ", bin);
  }
  return absl::StrCat("bin ", bin);
}

void BinLayout::AddValues(absl::Span<const double> values, absl::Span<double> counts) const {
  // Bin in fixed-size chunks so the index buffer stays on the stack and in L1.
  constexpr size_t kChunk = 512;
  uint32_t bins[kChunk];
  const double* search_edges = search_edges_.data();
  if (search_edges_.empty()) {
    thread_local std::vector<double> padded;
    padded.resize(kernels::SearchEdgesSize(edges_.size()));
    kernels::PadEdgesForSearch(edges_.data(), edges_.size(), padded.data());
    search_edges = padded.data();
  }
  for (size_t begin = 0; begin < values.size(); begin += kChunk) {
    const size_t n = std::min(kChunk, values.size() - begin);
    kernels::BinIndices(values.data() + begin, n, search_edges, edges_.size(), bins);
    for (size_t j = 0; j < n; ++j) {
      counts[bins[j]] += 1;
    }
  }
}

size_t BinLayout::CategoryBin(absl::string_view label) const {
  auto it = category_bins_.find(label);
  return it == category_bins_.end() ? categories_.size() : it->second;
}

}  // namespace kldrift
