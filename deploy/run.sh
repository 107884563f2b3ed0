#!/usr/bin/env bash
# Builds kldrift (Release) and runs it. Until the kldriftd service lands (issue 3) this runs
# `kldrift compare` on the bundled example histograms in deploy/examples/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/build.sh
./build/release/client/cli/kldrift compare \
  --reference deploy/examples/reference.json --current deploy/examples/current.json "$@"
