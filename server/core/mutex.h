// Mutex: a reader-writer lock over std::shared_mutex with Abseil's thread-safety annotations.
//
// Why not absl::Mutex: Debian's Abseil is not built with ThreadSanitizer, so TSan cannot see
// absl::Mutex and reports every access it protects as a race. std::shared_mutex goes through
// pthread, which TSan intercepts, and the annotations keep clang's -Wthread-safety analysis.
//
// ExclusiveMutex: the same annotations over std::mutex, for locks never held shared that every
// ingest batch takes: the engine's streams (a batch locks each of its hundred), the store's
// client map and the batch log's append lock.
// Uncontended, std::mutex locks with one atomic operation and unlocks with one, where
// std::shared_mutex (pthread_rwlock_t) takes several each way: ingest_bench's apply of a batch of
// 100 streams 15.4-16.3 -> 14.7-14.9 us (README, "What changed").
//
// Thread safety: they are the locks.
#ifndef KLDRIFT_SERVER_CORE_MUTEX_H_
#define KLDRIFT_SERVER_CORE_MUTEX_H_

#include <condition_variable>
#include <mutex>
#include <shared_mutex>

#include "absl/base/thread_annotations.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace kldrift {

class ABSL_LOCKABLE Mutex {
 public:
  void Lock() ABSL_EXCLUSIVE_LOCK_FUNCTION() { mutex_.lock(); }
  void Unlock() ABSL_UNLOCK_FUNCTION() { mutex_.unlock(); }
  void ReaderLock() ABSL_SHARED_LOCK_FUNCTION() { mutex_.lock_shared(); }
  void ReaderUnlock() ABSL_UNLOCK_FUNCTION() { mutex_.unlock_shared(); }

  // BasicLockable, for std::condition_variable_any (used by CondVar only).
  void lock() ABSL_EXCLUSIVE_LOCK_FUNCTION() { mutex_.lock(); }
  void unlock() ABSL_UNLOCK_FUNCTION() { mutex_.unlock(); }

 private:
  std::shared_mutex mutex_;
};

class ABSL_LOCKABLE ExclusiveMutex {
 public:
  void Lock() ABSL_EXCLUSIVE_LOCK_FUNCTION() { mutex_.lock(); }
  void Unlock() ABSL_UNLOCK_FUNCTION() { mutex_.unlock(); }

 private:
  std::mutex mutex_;
};

// A condition variable used with Mutex, in the shape of absl::CondVar.
class CondVar {
 public:
  // REQUIRES: *mutex held exclusively; it is released while waiting and held again on return.
  void Wait(Mutex* mutex) { cv_.wait(*mutex); }
  // As Wait, until `deadline` at the latest. Returns true if the deadline passed.
  bool WaitWithDeadline(Mutex* mutex, absl::Time deadline) {
    if (deadline == absl::InfiniteFuture()) {
      Wait(mutex);
      return false;
    }
    return cv_.wait_until(*mutex, absl::ToChronoTime(deadline)) == std::cv_status::timeout;
  }
  bool WaitWithTimeout(Mutex* mutex, absl::Duration timeout) {
    return WaitWithDeadline(mutex, absl::Now() + timeout);
  }
  void Signal() { cv_.notify_one(); }
  void SignalAll() { cv_.notify_all(); }

 private:
  std::condition_variable_any cv_;
};

// Holds `mutex` (a Mutex or an ExclusiveMutex) exclusively for the scope.
template <typename M>
class ABSL_SCOPED_LOCKABLE MutexLock {
 public:
  explicit MutexLock(M* mutex) ABSL_EXCLUSIVE_LOCK_FUNCTION(mutex) : mutex_(mutex) {
    mutex_->Lock();
  }
  ~MutexLock() ABSL_UNLOCK_FUNCTION() { mutex_->Unlock(); }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

 private:
  M* const mutex_;
};
template <typename M>
MutexLock(M*) -> MutexLock<M>;

// Holds `mutex` shared for the scope.
class ABSL_SCOPED_LOCKABLE ReaderMutexLock {
 public:
  explicit ReaderMutexLock(Mutex* mutex) ABSL_SHARED_LOCK_FUNCTION(mutex) : mutex_(mutex) {
    mutex_->ReaderLock();
  }
  ~ReaderMutexLock() ABSL_UNLOCK_FUNCTION() { mutex_->ReaderUnlock(); }
  ReaderMutexLock(const ReaderMutexLock&) = delete;
  ReaderMutexLock& operator=(const ReaderMutexLock&) = delete;

 private:
  Mutex* const mutex_;
};

}  // namespace kldrift

#endif  // KLDRIFT_SERVER_CORE_MUTEX_H_
