#include "server/core/reference.h"

#include <cmath>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace kldrift {
namespace {

absl::Status CheckIntegerCounts(const std::vector<double>& counts) {
  for (size_t i = 0; i < counts.size(); ++i) {
    const double c = counts[i];
    if (!std::isfinite(c) || c < 0 || c != std::floor(c)) {
      return absl::InvalidArgumentError(
          absl::StrCat("reference count for bin ", i, " is ", c, "; counts are integers >= 0"));
    }
  }
  return absl::OkStatus();
}

// Reference counts in the full layout, from the layout and the counts as given.
absl::StatusOr<std::vector<double>> ExpandCounts(const BinLayout& layout,
                                                 const std::vector<double>& counts) {
  const size_t k = layout.size();
  if (counts.size() == k) return counts;
  if (layout.kind() == BinLayout::Kind::kNumeric && counts.size() == layout.edges().size() - 1) {
    std::vector<double> full(k, 0.0);
    std::copy(counts.begin(), counts.end(), full.begin() + 1);
    return full;
  }
  if (layout.kind() == BinLayout::Kind::kCategorical &&
      counts.size() == layout.categories().size()) {
    std::vector<double> full = counts;
    full.push_back(0.0);
    return full;
  }
  std::string expected = absl::StrCat(k);
  if (layout.kind() == BinLayout::Kind::kNumeric) {
    expected = absl::StrCat(layout.edges().size() - 1, " (one per bin) or ", k,
                            " (underflow, bins, overflow, NaN)");
  } else if (layout.kind() == BinLayout::Kind::kCategorical) {
    expected = absl::StrCat(layout.categories().size(), " (one per category) or ", k,
                            " (with the unseen count last)");
  }
  return absl::InvalidArgumentError(
      absl::StrCat("got ", counts.size(), " counts; expected ", expected));
}

}  // namespace

absl::string_view ReferenceKindName(ReferenceKind kind) {
  switch (kind) {
    case ReferenceKind::kNumeric:
      return "numeric";
    case ReferenceKind::kCategorical:
      return "categorical";
    case ReferenceKind::kPreBinned:
      return "pre_binned";
    case ReferenceKind::kGaussian:
      return "gaussian";
    case ReferenceKind::kPairedLogProbs:
      return "paired_log_probs";
  }
  return "unknown";
}

size_t Reference::window_width() const {
  switch (kind) {
    case ReferenceKind::kGaussian:
      return 1 + 2 * gaussian.mean.size();
    case ReferenceKind::kPairedLogProbs:
      return kPolicyWindowWidth;
    default:
      return layout->size();
  }
}

bool Reference::SameBins(const Reference& other) const {
  if (kind != other.kind) return false;
  switch (kind) {
    case ReferenceKind::kNumeric:
      return layout->edges() == other.layout->edges();
    case ReferenceKind::kCategorical:
      return layout->categories() == other.layout->categories();
    case ReferenceKind::kPreBinned:
      return layout->size() == other.layout->size();
    case ReferenceKind::kGaussian:
      return gaussian.mean.size() == other.gaussian.mean.size();
    case ReferenceKind::kPairedLogProbs:
      return true;
  }
  return false;
}

absl::StatusOr<BinLayout> LayoutForSpec(const ReferenceSpec& spec, const ReferenceLimits& limits) {
  switch (spec.kind) {
    case ReferenceKind::kNumeric:
      if (spec.edges.size() + 2 > limits.max_bins) {
        return absl::ResourceExhaustedError(
            absl::StrCat(spec.edges.size(), " edges make ", spec.edges.size() + 2,
                         " bins (with the underflow, overflow and NaN buckets), over the server's "
                         "limit of ",
                         limits.max_bins, " bins per reference (--max-bins)"));
      }
      return BinLayout::Numeric(spec.edges);
    case ReferenceKind::kCategorical:
      if (spec.categories.size() + 1 > limits.max_bins) {
        return absl::ResourceExhaustedError(
            absl::StrCat(spec.categories.size(), " categories make ", spec.categories.size() + 1,
                         " bins (with the unseen bucket), over the server's limit of ",
                         limits.max_bins, " bins per reference (--max-bins)"));
      }
      return BinLayout::Categorical(spec.categories);
    case ReferenceKind::kPreBinned:
      if (spec.bins > limits.max_bins) {
        return absl::ResourceExhaustedError(absl::StrCat(
            spec.bins, " bins exceed the server's limit of ", limits.max_bins, " (--max-bins)"));
      }
      return BinLayout::PreBinned(spec.bins);
    default:
      return absl::InvalidArgumentError("not a histogram reference");
  }
}

absl::StatusOr<std::shared_ptr<const Reference>> BuildReference(
    const ReferenceSpec& spec, uint64_t version, absl::Time now, const ReferenceLimits& limits,
    const std::vector<double>* window_counts) {
  if (absl::Status s = ValidateStreamKey(spec.stream); !s.ok()) return s;
  if (absl::Status s = ValidatePolicy(spec.policy); !s.ok()) return s;
  auto ref = std::make_shared<Reference>();
  ref->stream = spec.stream;
  ref->version = version;
  ref->kind = spec.kind;
  ref->policy = spec.policy;
  ref->created_at = now;

  const int data_sources = spec.counts.has_value() + spec.values.has_value() +
                           spec.labels.has_value() + spec.from_window.has_value();
  if (spec.kind == ReferenceKind::kGaussian) {
    if (data_sources > 0) {
      return absl::InvalidArgumentError(
          "a Gaussian reference takes its mean and variance, not counts, values or labels");
    }
    const GaussianParams& g = spec.gaussian;
    if (g.mean.empty()) {
      return absl::InvalidArgumentError("a Gaussian reference needs at least one dimension");
    }
    if (g.mean.size() > limits.max_dimensions) {
      return absl::ResourceExhaustedError(
          absl::StrCat(g.mean.size(), " dimensions exceed the server's limit of ",
                       limits.max_dimensions, " (--max-dimensions)"));
    }
    if (g.var.size() != g.mean.size()) {
      return absl::InvalidArgumentError(
          absl::StrCat("mean has ", g.mean.size(), " dimensions but var has ", g.var.size()));
    }
    for (size_t i = 0; i < g.mean.size(); ++i) {
      if (!std::isfinite(g.mean[i])) {
        return absl::InvalidArgumentError(absl::StrCat("mean[", i, "] is not finite"));
      }
      if (!std::isfinite(g.var[i]) || !(g.var[i] > 0)) {
        return absl::InvalidArgumentError(
            absl::StrCat("var[", i, "] = ", g.var[i], "; variances must be finite and > 0"));
      }
    }
    ref->gaussian = g;
    return ref;
  }
  if (spec.kind == ReferenceKind::kPairedLogProbs) {
    if (data_sources > 0) {
      return absl::InvalidArgumentError(
          "a paired-log-prob reference has no distribution; production sends both log-probs");
    }
    return ref;
  }

  absl::StatusOr<BinLayout> layout = LayoutForSpec(spec, limits);
  if (!layout.ok()) return layout.status();
  if (data_sources != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("a ", ReferenceKindName(spec.kind),
                     " reference needs exactly one of counts, values, labels or from_window; got ",
                     data_sources));
  }
  std::vector<double> counts(layout->size(), 0.0);
  if (spec.counts) {
    if (absl::Status s = CheckIntegerCounts(*spec.counts); !s.ok()) return s;
    absl::StatusOr<std::vector<double>> full = ExpandCounts(*layout, *spec.counts);
    if (!full.ok()) return full.status();
    counts = *std::move(full);
  } else if (spec.values) {
    if (layout->kind() != BinLayout::Kind::kNumeric) {
      return absl::InvalidArgumentError("raw values need a numeric reference (edges)");
    }
    layout->AddValues(*spec.values, absl::MakeSpan(counts));
  } else if (spec.labels) {
    if (layout->kind() != BinLayout::Kind::kCategorical) {
      return absl::InvalidArgumentError("labels need a categorical reference (categories)");
    }
    for (const std::string& label : *spec.labels) counts[layout->CategoryBin(label)] += 1;
  } else {
    if (window_counts == nullptr || window_counts->size() != counts.size()) {
      return absl::FailedPreconditionError(
          "the source window's bins do not match this reference's bins");
    }
    counts = *window_counts;
  }
  absl::StatusOr<ReferenceProfile> profile =
      ReferenceProfile::Create(std::move(counts), spec.policy.alpha);
  if (!profile.ok()) return profile.status();
  ref->profile = std::make_shared<const ReferenceProfile>(*std::move(profile));
  ref->counts = ref->profile->counts();
  ref->layout = *std::move(layout);
  return ref;
}

}  // namespace kldrift
