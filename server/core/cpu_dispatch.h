// KLDRIFT_TARGET_CLONES_AVX2: compiles a function for AVX2 as well as the baseline x86-64, the
// copy chosen once when the program loads (GCC and Clang `target_clones`, an ifunc). For the few
// plain loops of the ingest path that the compiler vectorizes by itself; the drift kernels use
// Highway's dynamic dispatch (server/kernels).
//
// Off in sanitizer builds, and elsewhere than x86-64: an ifunc resolver runs while the dynamic
// loader relocates the program, before a sanitizer's runtime has started, and an instrumented
// resolver crashes there. Those builds run the baseline copy.
#ifndef KLDRIFT_SERVER_CORE_CPU_DISPATCH_H_
#define KLDRIFT_SERVER_CORE_CPU_DISPATCH_H_

#if defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) || \
    __has_feature(memory_sanitizer)
#define KLDRIFT_SANITIZED_BUILD 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define KLDRIFT_SANITIZED_BUILD 1
#endif

#if defined(__x86_64__) && !defined(KLDRIFT_SANITIZED_BUILD)
#define KLDRIFT_TARGET_CLONES_AVX2 __attribute__((target_clones("avx2", "default")))
#else
#define KLDRIFT_TARGET_CLONES_AVX2
#endif

#endif  // KLDRIFT_SERVER_CORE_CPU_DISPATCH_H_
