#include "server/core/incremental_kl.h"

#include <cmath>
#include <limits>
#include <utility>

#include "server/kernels/divergence.h"

namespace kldrift {

void CompensatedSum::Add(double x) {
  const double t = sum_ + x;
  if (std::fabs(sum_) >= std::fabs(x)) {
    compensation_ += (sum_ - t) + x;
  } else {
    compensation_ += (x - t) + sum_;
  }
  sum_ = t;
}

IncrementalKl::IncrementalKl(std::shared_ptr<const ReferenceProfile> reference)
    : reference_(std::move(reference)), counts_(reference_->size(), 0.0) {
  Resync();
  empty_sum_c_log_c_ = sum_c_log_c_;
  empty_sum_c_log_q_ = sum_c_log_q_;
}

double IncrementalKl::EntropyTerm(double count) const {
  const double c = count + reference_->alpha();
  return c > 0 ? c * std::log(c) : 0.0;
}

double IncrementalKl::CrossTerm(size_t bin, double count) const {
  const double c = count + reference_->alpha();
  // Impossible bins (c > 0 = q) are tracked apart; their -inf would poison the
  // sum.
  return c > 0 && reference_->shares()[bin] > 0 ? c * reference_->log_shares()[bin] : 0.0;
}

bool IncrementalKl::Impossible(size_t bin, double count) const {
  return count + reference_->alpha() > 0 && reference_->shares()[bin] == 0;
}

void IncrementalKl::Add(size_t bin, double delta) {
  const double old_count = counts_[bin];
  double new_count = old_count + delta;
  if (new_count < 0) new_count = 0;  // REQUIRES allows only rounding-sized negatives.
  sum_c_log_c_.Add(EntropyTerm(new_count) - EntropyTerm(old_count));
  sum_c_log_q_.Add(CrossTerm(bin, new_count) - CrossTerm(bin, old_count));
  impossible_bins_ += Impossible(bin, new_count);
  impossible_bins_ -= Impossible(bin, old_count);
  samples_.Add(new_count - old_count);
  nonzero_bins_ += new_count != 0;
  nonzero_bins_ -= old_count != 0;
  counts_[bin] = new_count;
  if (nonzero_bins_ == 0) {
    samples_.Reset();
    sum_c_log_c_ = empty_sum_c_log_c_;
    sum_c_log_q_ = empty_sum_c_log_q_;
    impossible_bins_ = 0;
  }
}

double IncrementalKl::KlCurrentReference() const {
  const double total = samples_.value() + static_cast<double>(counts_.size()) * reference_->alpha();
  if (nonzero_bins_ == 0 || samples_.value() <= 0 || total <= 0) return 0.0;
  if (impossible_bins_ > 0) return std::numeric_limits<double>::infinity();
  const double kl = (sum_c_log_c_.value() - sum_c_log_q_.value()) / total - std::log(total);
  return kl > 0 ? kl : 0.0;
}

void IncrementalKl::Resync() {
  sum_c_log_c_.Reset();
  sum_c_log_q_.Reset();
  samples_.Reset();
  impossible_bins_ = 0;
  nonzero_bins_ = 0;
  for (size_t i = 0; i < counts_.size(); ++i) {
    sum_c_log_c_.Add(EntropyTerm(counts_[i]));
    sum_c_log_q_.Add(CrossTerm(i, counts_[i]));
    samples_.Add(counts_[i]);
    impossible_bins_ += Impossible(i, counts_[i]);
    nonzero_bins_ += counts_[i] != 0;
  }
}

}  // namespace kldrift
