#!/usr/bin/env bash
# Runs end-to-end suites (real gRPC, real RocksDB, every RPC, streaming, the 123-row validation
# catalogue) against a kldriftd built with ThreadSanitizer. The test programs are the Release
# build's; every server they start is the TSan one. Fails if any test fails or any server wrote a
# TSan report. Left out because their fixed deadlines of a few seconds do not survive TSan's 5-15x
# slowdown on a loaded 2-core machine (they pass on an idle one): durability_test (kill -9 timings,
# a 3000-stream restart), security_e2e_test (TLS handshakes) and recorder_e2e_test. Run them by
# hand with: KLDRIFTD=build/tsan/server/kldriftd TSAN_OPTIONS=suppressions=tests/tsan/... .
#
#   tests/tsan/run_e2e_under_tsan.sh BUILD_RELEASE BUILD_TSAN
set -euo pipefail
release=$(realpath "$1")
tsan=$(realpath "$2")
here=$(dirname "$(realpath "$0")")
reports=$(mktemp -d /tmp/kldrift-tsan-XXXXXX)
export KLDRIFTD="$tsan/server/kldriftd"
export KLDRIFT_CLI="$release/client/cli/kldrift"
export TSAN_OPTIONS="suppressions=$here/suppressions.txt:log_path=$reports/report:second_deadlock_stack=1"
status=0
for test in tests/e2e/service_e2e_test tests/e2e/validation_catalogue_test; do
  echo "== $test against the TSan kldriftd"
  (cd "$release" && "./$test") || status=1
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
