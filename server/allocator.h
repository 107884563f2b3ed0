// The servers' malloc: which one a process runs with, and its settings.
//
// Release builds link gperftools' tcmalloc (minimal) into kldriftd and the echo server it is
// measured against (CMakeLists.txt, KLDRIFT_TCMALLOC); sanitizer builds keep the sanitizer's.
// Thread-safe; call ConfigureAllocator() once at start-up, before serving.
#ifndef KLDRIFT_SERVER_ALLOCATOR_H_
#define KLDRIFT_SERVER_ALLOCATOR_H_

namespace kldrift {

// With tcmalloc, has freed pages returned to the system at once rather than kept for reuse: a
// /metrics scrape of 10,000 streams builds ~80 MB of text, which tcmalloc's default would keep
// resident after the scrape (glibc's malloc gives such large blocks back). Returns what the
// process runs with, for the start-up log: "tcmalloc" or "glibc malloc".
const char* ConfigureAllocator();

}  // namespace kldrift

#endif  // KLDRIFT_SERVER_ALLOCATOR_H_
