#include "server/allocator.h"

#include <cstddef>

// gperftools' C interface (gperftools/malloc_extension_c.h), declared weak: null when the process
// runs without tcmalloc, so this file builds and links in every configuration.
extern "C" int MallocExtension_SetNumericProperty(const char* property, size_t value)
    __attribute__((weak));

namespace kldrift {

const char* ConfigureAllocator() {
  if (MallocExtension_SetNumericProperty == nullptr) return "glibc malloc";
  // Measured after the scrape that ends a service-bench run (10,000 streams): resident 390 -> 148
  // MB, peak 390 -> 288 MB, ingest unchanged within noise.
  MallocExtension_SetNumericProperty("tcmalloc.aggressive_memory_decommit", 1);
  return "tcmalloc";
}

}  // namespace kldrift
