#!/usr/bin/env bash
# Runs end-to-end suites (real gRPC, real RocksDB, every RPC, streaming, the validation
# catalogue, TLS and tokens, kill -9 and restarts, the client library's Recorder) against a
# kldriftd built with ThreadSanitizer. The test programs are the Release build's; every server they
# start is the TSan one. Their deadlines and waits are multiplied by KLDRIFT_TEST_TIME_SCALE
# (testing::TimeScaled) to survive TSan's 5-15x slowdown on a loaded 2-core machine. Fails if any
# test fails or any server wrote a TSan report.
#
#   tests/tsan/run_e2e_under_tsan.sh BUILD_RELEASE BUILD_TSAN
set -euo pipefail
release=$(realpath "$1")
tsan=$(realpath "$2")
here=$(dirname "$(realpath "$0")")
reports=$(mktemp -d /tmp/kldrift-tsan-XXXXXX)
export KLDRIFTD="$tsan/server/kldriftd"
export KLDRIFT_CLI="$release/client/cli/kldrift"
export KLDRIFT_TEST_TIME_SCALE="${KLDRIFT_TEST_TIME_SCALE:-10}"
export TSAN_OPTIONS="suppressions=$here/suppressions.txt:log_path=$reports/report:second_deadlock_stack=1"
status=0
# Left out: tests whose batches carry more than 64 streams. Applying a batch holds its streams'
# locks at once (from taking the log position until applied), and TSan's deadlock detector tracks
# at most 64 held locks: past that it fails an internal CHECK ("n_all_locks_ < 64") and kills the
# server, and near it it runs in quadratic time (durability's 600-stream batches: no batch
# acknowledged in 10 minutes). The kill -9 and corrupted-folder durability tests run.
declare -A filters=(
  [tests/e2e/durability_test]="-RestartTest.ThousandsOfStreamsRestoreEveryWindowExactly"
  [tests/e2e/service_e2e_test]="-ServiceE2eTest.LargeModelImportIsSentInParts"
)
for test in tests/e2e/service_e2e_test tests/e2e/validation_catalogue_test \
  tests/e2e/security_e2e_test tests/e2e/durability_test client/recorder_e2e_test; do
  echo "== $test against the TSan kldriftd"
  (cd "$release" && "./$test" --gtest_filter="${filters[$test]:-*}") || status=1
done
if compgen -G "$reports/report*" > /dev/null; then
  echo "ThreadSanitizer reports from kldriftd:"
  cat "$reports"/report*
  status=1
else
  echo "no ThreadSanitizer report from any kldriftd"
fi
rm -rf "$reports"
exit "$status"
