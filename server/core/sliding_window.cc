#include "server/core/sliding_window.h"

#include <algorithm>
#include <limits>

namespace kldrift {

SlidingWindow::SlidingWindow(absl::Duration length, int sub_buckets, size_t width)
    : length_(length),
      step_(length / sub_buckets),
      sub_buckets_(sub_buckets),
      ring_(static_cast<size_t>(sub_buckets) * width, 0.0),
      totals_(width, 0.0) {}

int64_t SlidingWindow::SubBucketIndex(absl::Time t) const {
  absl::Duration remainder;
  int64_t index = absl::IDivDuration(t - absl::UnixEpoch(), step_, &remainder);
  // IDivDuration truncates toward zero; floor it so times before the epoch bucket consistently.
  // (InfinitePast() divides to INT64_MIN already.)
  if (remainder < absl::ZeroDuration() && index > std::numeric_limits<int64_t>::min()) --index;
  return index;
}

absl::Span<double> SlidingWindow::Slot(int64_t index) {
  const int64_t slot = ((index % sub_buckets_) + sub_buckets_) % sub_buckets_;
  return absl::MakeSpan(ring_).subspan(static_cast<size_t>(slot) * width(), width());
}

void SlidingWindow::RecomputeTotals() {
  std::fill(totals_.begin(), totals_.end(), 0.0);
  for (int s = 0; s < sub_buckets_; ++s) {
    const double* slot = ring_.data() + static_cast<size_t>(s) * width();
    for (size_t i = 0; i < width(); ++i) totals_[i] += slot[i];
  }
}

void SlidingWindow::Advance(absl::Time now, const ExpireCallback& on_expire) {
  const int64_t new_head = SubBucketIndex(now);
  if (head_ == INT64_MIN) {
    head_ = new_head;
    return;
  }
  if (new_head <= head_) return;  // Time never moves the window backwards.
  // Sub-buckets head_-S+1 .. new_head-S fall out; at most S of them hold data.
  const int64_t first_expired = head_ - sub_buckets_ + 1;
  const int64_t last_expired = std::min(new_head - sub_buckets_, head_);
  bool expired_any = false;
  for (int64_t index = std::max(first_expired, last_expired - sub_buckets_ + 1);
       index <= last_expired; ++index) {
    absl::Span<double> slot = Slot(index);
    if (std::all_of(slot.begin(), slot.end(), [](double v) { return v == 0; })) continue;
    if (on_expire) on_expire(slot);
    std::fill(slot.begin(), slot.end(), 0.0);
    expired_any = true;
  }
  head_ = new_head;
  if (expired_any) RecomputeTotals();
}

bool SlidingWindow::Covers(absl::Time event_time) const {
  if (head_ == INT64_MIN) return false;
  const int64_t index = SubBucketIndex(event_time);
  return index <= head_ && index > head_ - sub_buckets_;
}

void SlidingWindow::Add(absl::Time event_time, absl::Span<const double> delta) {
  absl::Span<double> slot = Slot(SubBucketIndex(event_time));
  for (size_t i = 0; i < delta.size(); ++i) {
    slot[i] += delta[i];
    totals_[i] += delta[i];
  }
}

std::vector<SlidingWindow::SubBucket> SlidingWindow::LiveSubBuckets() const {
  std::vector<SubBucket> live;
  if (head_ == INT64_MIN) return live;
  for (int64_t index = head_ - sub_buckets_ + 1; index <= head_; ++index) {
    const int64_t slot = ((index % sub_buckets_) + sub_buckets_) % sub_buckets_;
    live.push_back(SubBucket{
        absl::UnixEpoch() + step_ * index,
        absl::MakeConstSpan(ring_).subspan(static_cast<size_t>(slot) * width(), width())});
  }
  return live;
}

}  // namespace kldrift
