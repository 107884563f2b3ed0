#include "server/core/mutex.h"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace kldrift {
namespace {

// Several threads increment a plain counter under MutexLock, and count how many are inside at
// once: a lock that let two in would show as a lost increment, an overlap, or (under TSan) a race.
template <typename M>
void ExpectExclusive(int threads, int rounds, bool sleep_inside) {
  M mutex;
  int64_t counter = 0;
  std::atomic<int> inside{0};
  std::atomic<int> max_inside{0};
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&] {
      for (int i = 0; i < rounds; ++i) {
        MutexLock lock(&mutex);
        const int now_inside = inside.fetch_add(1) + 1;
        int seen = max_inside.load();
        while (now_inside > seen && !max_inside.compare_exchange_weak(seen, now_inside)) {
        }
        ++counter;
        // Held long enough that the others block rather than spin.
        if (sleep_inside) std::this_thread::sleep_for(std::chrono::microseconds(200));
        inside.fetch_sub(1);
      }
    });
  }
  for (std::thread& w : workers) w.join();
  EXPECT_EQ(counter, int64_t{threads} * rounds);
  EXPECT_EQ(max_inside.load(), 1);
}

TEST(ExclusiveMutexTest, OneHolderAtATimeWhenHeldBriefly) {
  ExpectExclusive<ExclusiveMutex>(4, 100000, false);
}

TEST(ExclusiveMutexTest, OneHolderAtATimeWhenWaitersSleep) {
  ExpectExclusive<ExclusiveMutex>(4, 200, true);
}

TEST(MutexTest, MutexLockHoldsTheReaderWriterLockExclusively) {
  ExpectExclusive<Mutex>(4, 20000, false);
}

}  // namespace
}  // namespace kldrift
