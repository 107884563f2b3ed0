#!/usr/bin/env bash
# The whole test suite: installs missing packages, builds Release and runs every test with CTest,
# then builds again with AddressSanitizer + UndefinedBehaviorSanitizer and runs the suite again,
# runs the engine's tests once more under ThreadSanitizer, runs the end-to-end suites against a
# ThreadSanitizer kldriftd, and fuzzes the request and file parsers.
# .ci/run calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc)

bash deploy/build.sh
echo "== Release suite"
ctest --test-dir build/release --output-on-failure -j "$jobs"

echo "== ASan+UBSan suite"
cmake -S . -B build/asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKLDRIFT_SANITIZE=ON \
  -DKLDRIFT_BUILD_BENCHMARKS=OFF
cmake --build build/asan -j "$jobs"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --test-dir build/asan --output-on-failure -j "$jobs"

echo "== ThreadSanitizer suite (tests labelled tsan: server/core, see kldrift_test in CMakeLists.txt)"
CC=clang CXX=clang++ cmake -S . -B build/tsan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DKLDRIFT_TSAN=ON -DKLDRIFT_BUILD_BENCHMARKS=OFF
cmake --build build/tsan -j "$jobs" --target tsan_tests
TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 \
  ctest --test-dir build/tsan --output-on-failure -j "$jobs" -L tsan
echo "== End-to-end suites against a ThreadSanitizer kldriftd (tests/tsan/run_e2e_under_tsan.sh)"
cmake --build build/tsan -j "$jobs" --target kldriftd
bash tests/tsan/run_e2e_under_tsan.sh build/release build/tsan

echo "== Fuzzing (libFuzzer + ASan/UBSan, ~1 minute per fuzzer; see tests/fuzz/CMakeLists.txt)"
CC=clang CXX=clang++ cmake -S . -B build/fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DKLDRIFT_FUZZ=ON -DKLDRIFT_BUILD_BENCHMARKS=OFF
cmake --build build/fuzz -j "$jobs" --target fuzz_tests
ctest --test-dir build/fuzz --output-on-failure -j "$jobs" -L fuzz
