#!/bin/sh
# Usage: prefetch_codegen_test.sh OBJDUMP LIBRARY
# Checks that the prefetching functions of the built core library (LIBRARY, libkldrift_core.a)
# still contain prefetch instructions. GCC deleted every prefetch of a helper that returned early
# for an empty range, silently, in the Release build (see server/core/prefetch.h): the code read
# as prefetching and the tick and ingest benchmarks measured it as if it did not.
set -eu
objdump=$1
library=$2
listing=$(mktemp)
trap 'rm -f "$listing"' EXIT
"$objdump" -d --no-show-raw-insn -C "$library" > "$listing"

status=0
# FUNCTION MINIMUM: the least number of prefetch instructions FUNCTION must contain (each one's
# ranges are loops over lines, so one instruction per range at least).
check() {
  count=$(awk -v name="$1" '
    /^[0-9a-f]+ <.*>:$/ { inside = index($0, "<" name "(") > 0; next }
    inside && /prefetch/ { n++ }
    END { print n + 0 }' "$listing")
  if [ "$count" -lt "$2" ]; then
    echo "FAIL: $1 has $count prefetch instructions, expected at least $2" >&2
    status=1
  else
    echo "ok: $1 has $count prefetch instructions (at least $2)"
  fi
}
# Prefetch: the object (kObject); the windows, the version's slot, the pending sums and the
# profile (kWindows); the reference and the profile's arrays (kWindowData).
check 'kldrift::DriftEngine::StreamState::Prefetch' 6
# PrefetchForIngest: the version's slot, the windows or the pending sums, the ingest counters
# (kIngestLists); the reference (kIngestData).
check 'kldrift::DriftEngine::StreamState::PrefetchForIngest' 4
check 'kldrift::CompactSubBuckets::Prefetch' 2
check 'kldrift::CompactSubBuckets::PrefetchBlock' 1
exit $status
