#!/usr/bin/env bash
# Writes the ingest fuzzer's seed corpus: each tests/fuzz/seeds/ingest/NAME.txtpb (a FuzzInput in
# protobuf text format) becomes the binary tests/fuzz/corpus/ingest/NAME. Run it after editing a
# seed or fuzz_input.proto, and commit both. Needs protoc (protobuf-compiler).
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p corpus/ingest
for seed in seeds/ingest/*.txtpb; do
  name=$(basename "$seed" .txtpb)
  protoc -I . -I ../../proto --encode=kldrift.fuzz.FuzzInput fuzz_input.proto \
    <"$seed" >"corpus/ingest/$name"
  echo "corpus/ingest/$name: $(wc -c <"corpus/ingest/$name") bytes"
done
