#include "server/core/sliding_window.h"

#include <algorithm>
#include <limits>

namespace kldrift {

SlidingWindow::SlidingWindow(absl::Duration length, int sub_buckets, size_t width)
    : length_(length),
      step_(length / sub_buckets),
      sub_buckets_(sub_buckets),
      step_nanos_(absl::Nanoseconds(absl::ToInt64Nanoseconds(step_)) == step_
                      ? absl::ToInt64Nanoseconds(step_)
                      : 0),
      ring_(sub_buckets, width),
      totals_(1, width) {}

std::vector<double> SlidingWindow::totals() const {
  std::vector<double> totals(width());
  ReadTotals(absl::MakeSpan(totals));
  return totals;
}

int64_t SlidingWindow::SubBucketIndex(absl::Time t) const {
  if (InHead(t)) return head_;
  // An evaluation tick advances every window of every stream to the same time, through a few
  // distinct steps: remember this thread's last answers (the division below is several integer
  // divisions, a tenth of a tick over 100k streams when the heads move).
  struct Memo {
    int64_t step_nanos = 0;
    absl::Time t;
    int64_t index = 0;
  };
  constexpr int kMemos = 4;
  thread_local Memo memos[kMemos];
  thread_local int next_memo = 0;
  if (step_nanos_ > 0) {
    for (const Memo& m : memos) {
      if (m.step_nanos == step_nanos_ && m.t == t) return m.index;
    }
  }
  const int64_t index = DivideTime(t);
  if (step_nanos_ > 0) {
    memos[next_memo] = Memo{step_nanos_, t, index};
    next_memo = (next_memo + 1) % kMemos;
  }
  return index;
}

int64_t SlidingWindow::DivideTime(absl::Time t) const {
  const absl::Duration since = t - absl::UnixEpoch();
  // Whole nanoseconds within ~200 years of the epoch (every real time): integer division, which
  // costs a fraction of IDivDuration's and gives the same floor.
  constexpr absl::Duration kIntegerRange = absl::Hours(24 * 365 * 200);
  if (step_nanos_ > 0 && since > -kIntegerRange && since < kIntegerRange) {
    const int64_t nanos = absl::ToInt64Nanoseconds(since);
    if (absl::Nanoseconds(nanos) == since) {
      const int64_t index = nanos / step_nanos_;
      return nanos % step_nanos_ < 0 ? index - 1 : index;
    }
  }
  absl::Duration remainder;
  int64_t index = absl::IDivDuration(t - absl::UnixEpoch(), step_, &remainder);
  // IDivDuration truncates toward zero; floor it so times before the epoch bucket consistently.
  // (InfinitePast() divides to INT64_MIN already.)
  if (remainder < absl::ZeroDuration() && index > std::numeric_limits<int64_t>::min()) --index;
  return index;
}

std::vector<double> SlidingWindow::SubBucketValues(absl::Time t) const {
  std::vector<double> values(width());
  ring_.Read(Slot(SubBucketIndex(t)), absl::MakeSpan(values));
  return values;
}

void SlidingWindow::RecomputeTotals() {
  // Slot order, as a ring of doubles summed it (empty slots add nothing).
  std::vector<double> totals(width(), 0.0);
  for (int s = 0; s < sub_buckets_; ++s) ring_.AddTo(s, absl::MakeSpan(totals));
  totals_.Clear(0);
  totals_.Add(0, totals);  // 0 + x == x: the sums exactly.
}

void SlidingWindow::SetHead(int64_t head) {
  head_ = head;
  // Whole-nanosecond steps: SubBucketIndex divides nanoseconds exactly, so its sub-bucket `head`
  // is exactly [start, start + step) (real times: far from overflowing). Otherwise no shortcut.
  constexpr int64_t kIntegerRange = int64_t{24} * 365 * 200 * 3600 * 1'000'000'000 / 2;
  if (step_nanos_ > 0 && head > -kIntegerRange / step_nanos_ &&
      head < kIntegerRange / step_nanos_) {
    head_start_ = absl::UnixEpoch() + absl::Nanoseconds(head * step_nanos_);
    head_end_ = head_start_ + absl::Nanoseconds(step_nanos_);
  } else {
    head_start_ = head_end_ = absl::InfinitePast();
  }
}

void SlidingWindow::Advance(absl::Time now, const ExpireCallback& on_expire) {
  const int64_t new_head = SubBucketIndex(now);
  if (head_ == INT64_MIN) {
    SetHead(new_head);
    return;
  }
  if (new_head <= head_) return;  // Time never moves the window backwards.
  // Sub-buckets head_-S+1 .. new_head-S fall out; at most S of them hold data.
  const int64_t first_expired = head_ - sub_buckets_ + 1;
  const int64_t last_expired = std::min(new_head - sub_buckets_, head_);
  bool expired_any = false;
  std::vector<double> expired;
  for (int64_t index = std::max(first_expired, last_expired - sub_buckets_ + 1);
       index <= last_expired; ++index) {
    const int slot = Slot(index);
    if (ring_.AllZero(slot)) {
      ring_.Clear(slot);
      continue;
    }
    if (on_expire) {
      expired.resize(width());
      ring_.Read(slot, absl::MakeSpan(expired));
      on_expire(expired);
    }
    ring_.Clear(slot);
    expired_any = true;
  }
  SetHead(new_head);
  if (expired_any) {
    RecomputeTotals();
    ++generation_;
  }
}

bool SlidingWindow::Covers(absl::Time event_time) const {
  if (head_ == INT64_MIN) return false;
  const int64_t index = SubBucketIndex(event_time);
  return index <= head_ && index > head_ - sub_buckets_;
}

void SlidingWindow::Add(absl::Time event_time, absl::Span<const double> delta) {
  Add(event_time, delta, CompactSubBuckets::Summarize(delta));
}

void SlidingWindow::Add(absl::Time event_time, absl::Span<const double> delta,
                        const CompactSubBuckets::DeltaSummary& summary) {
  ring_.Add(Slot(SubBucketIndex(event_time)), delta, summary);
  totals_.Add(0, delta, summary);
  ++generation_;
}

void SlidingWindow::PrefetchForAdd(absl::Time event_time) const {
  ring_.Prefetch(Slot(SubBucketIndex(event_time)));
  totals_.Prefetch(0);
}

std::vector<SlidingWindow::SubBucket> SlidingWindow::LiveSubBuckets() const {
  std::vector<SubBucket> live;
  if (head_ == INT64_MIN) return live;
  for (int64_t index = head_ - sub_buckets_ + 1; index <= head_; ++index) {
    SubBucket bucket{absl::UnixEpoch() + step_ * index, std::vector<double>(width())};
    ring_.Read(Slot(index), absl::MakeSpan(bucket.values));
    live.push_back(std::move(bucket));
  }
  return live;
}

}  // namespace kldrift
