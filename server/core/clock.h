// Clock: where the engine reads the time, so tests can drive windows and alerts with a fake clock.
//
// Thread safety: implementations are safe for concurrent use.
#ifndef KLDRIFT_SERVER_CORE_CLOCK_H_
#define KLDRIFT_SERVER_CORE_CLOCK_H_

#include "absl/base/thread_annotations.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "server/core/mutex.h"

namespace kldrift {

class Clock {
 public:
  virtual ~Clock() = default;
  virtual absl::Time Now() const = 0;
};

// The system clock.
class RealClock : public Clock {
 public:
  absl::Time Now() const override { return absl::Now(); }
};

// A clock that moves only when told to. Starts at a fixed, round instant.
class FakeClock : public Clock {
 public:
  explicit FakeClock(absl::Time start = absl::FromUnixSeconds(1'800'000'000)) : now_(start) {}
  absl::Time Now() const override {
    MutexLock lock(&mutex_);
    return now_;
  }
  void Advance(absl::Duration d) {
    MutexLock lock(&mutex_);
    now_ += d;
  }
  void Set(absl::Time t) {
    MutexLock lock(&mutex_);
    now_ = t;
  }

 private:
  mutable Mutex mutex_;
  absl::Time now_ ABSL_GUARDED_BY(mutex_);
};

}  // namespace kldrift

#endif  // KLDRIFT_SERVER_CORE_CLOCK_H_
