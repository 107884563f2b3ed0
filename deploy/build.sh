#!/usr/bin/env bash
# Installs missing Debian packages and builds kldrift in Release into build/release.
# Used by deploy/run.sh, deploy/test.sh and the Dockerfile, so all three build the same way.
#   deploy/build.sh [extra cmake -D options]
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/install-deps.sh
cmake -S . -B build/release -G Ninja -DCMAKE_BUILD_TYPE=Release "$@"
cmake --build build/release -j "$(nproc)"
