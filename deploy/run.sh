#!/usr/bin/env bash
# Builds kldrift (Release) and runs kldriftd in the foreground on 127.0.0.1:50051.
# Extra arguments go to kldriftd, e.g. `bash deploy/run.sh --eval-interval 2s`.
# State lives in the embedded RocksDB store under ./kldrift-data (kept across restarts).
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/build.sh
echo "kldrift CLI: $PWD/build/release/client/cli/kldrift   (Ctrl-C stops the server)"
exec ./build/release/server/kldriftd --listen 127.0.0.1:50051 --data-dir "$PWD/kldrift-data" "$@"
