#!/usr/bin/env bash
# Runs a libFuzzer harness the way the suite does (see tests/fuzz/CMakeLists.txt).
#
#   run_fuzzer.sh fuzz FUZZER WORK_DIR SECONDS SEED_DIR [libFuzzer flags...]
#       Fuzzes for SECONDS. New inputs go to WORK_DIR/corpus, emptied first; SEED_DIR (the
#       repository's corpus) is only read. A crash, leak, UB report or slow input fails the run
#       and its input is left in WORK_DIR/artifacts.
#   run_fuzzer.sh regress FUZZER DIR...
#       Runs every file in the DIRs once (README files skipped); any report fails the run.
set -euo pipefail

mode=$1 fuzzer=$2
shift 2
name=$(basename "$fuzzer")
name=${name%_fuzzer}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1}

case "$mode" in
  fuzz)
    work=$1 seconds=$2 seeds=$3
    shift 3
    rm -rf "$work"
    mkdir -p "$work/corpus" "$work/artifacts"
    status=0
    "$fuzzer" -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
      -artifact_prefix="$work/artifacts/" "$@" "$work/corpus" "$seeds" || status=$?
    if ((status != 0)); then
      echo "run_fuzzer: $name failed (exit $status). Its input is in $work/artifacts:" >&2
      ls -l "$work/artifacts" >&2 || true
      echo "run_fuzzer: fix the bug, then copy the input into tests/fuzz/regressions/$name/" \
           "so ${name}_fuzz_regressions keeps it fixed." >&2
    fi
    exit "$status"
    ;;
  regress)
    inputs=()
    for dir in "$@"; do
      while IFS= read -r -d '' file; do
        inputs+=("$file")
      done < <(find "$dir" -type f ! -name 'README*' -print0 | sort -z)
    done
    if ((${#inputs[@]} == 0)); then
      echo "run_fuzzer: no inputs in $*"
      exit 0
    fi
    echo "run_fuzzer: running $name on ${#inputs[@]} inputs"
    exec "$fuzzer" -rss_limit_mb=2048 -timeout=10 "${inputs[@]}"
    ;;
  *)
    echo "usage: run_fuzzer.sh fuzz|regress FUZZER ..." >&2
    exit 2
    ;;
esac
