// PrefetchLine and PrefetchRange: ask the CPU to bring memory into cache ahead of its use (a
// hint: nothing is read, no address is checked, a bad one does not fault).
//
// Why not `__builtin_prefetch` alone: GCC 12 at -O2 and above deletes prefetches it judges
// useless, and what it judges useless is not stable. A helper whose only effect is prefetching
// and that returns early for an empty range (`if (bytes == 0) return;` before the loop) compiled
// to nothing at all: from 2026-11-24 (9cc1453) until this header, every range the drift engine
// prefetched for a tick or a batch was an empty function in the Release build, while the same
// loop without the early return was kept (prefetch_codegen_test checks the built core library
// for the instructions). An `asm volatile`
// is never deleted or merged, so on x86-64 the instruction is written out here; elsewhere the
// builtin is followed by an empty `asm volatile` that uses the address, which keeps it too.
//
// Thread safety: none needed; a prefetch reads nothing the program can observe.
#ifndef KLDRIFT_SERVER_CORE_PREFETCH_H_
#define KLDRIFT_SERVER_CORE_PREFETCH_H_

#include <cstddef>
#include <cstdint>

namespace kldrift {

inline constexpr size_t kCacheLineBytes = 64;

// The line holding `address`. `for_write`: the line is about to be written (where the CPU has
// no write prefetch, or the build does not target it, a read prefetch).
inline void PrefetchLine(const void* address, bool for_write = false) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  const char* const byte = static_cast<const char*>(address);
#if defined(__PRFCHW__)
  if (for_write) {
    asm volatile("prefetchw %0" : : "m"(*byte));
    return;
  }
#endif
  asm volatile("prefetcht0 %0" : : "m"(*byte));
#else
  if (for_write) {
    __builtin_prefetch(address, /*rw=*/1);
  } else {
    __builtin_prefetch(address);
  }
  asm volatile("" : : "r"(address));
#endif
}

// Every line of [start, start + bytes); nothing when `bytes` is 0.
inline void PrefetchRange(const void* start, size_t bytes, bool for_write = false) {
  const uintptr_t first = reinterpret_cast<uintptr_t>(start) & ~uintptr_t{kCacheLineBytes - 1};
  const uintptr_t end = reinterpret_cast<uintptr_t>(start) + bytes;
  for (uintptr_t line = first; line < end; line += kCacheLineBytes) {
    PrefetchLine(reinterpret_cast<const void*>(line), for_write);
  }
}

}  // namespace kldrift

#endif  // KLDRIFT_SERVER_CORE_PREFETCH_H_
