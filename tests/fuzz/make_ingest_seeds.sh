#!/usr/bin/env bash
# Writes the ingest fuzzers' seed corpora: each tests/fuzz/seeds/ingest/NAME.txtpb (a FuzzInput in
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

# The ingest decoder fuzzer's: each tests/fuzz/seeds/ingest_decoder/NAME.txtpb (an IngestRequest)
# becomes corpus/ingest_decoder/NAME, its bytes after a first byte that says how to cut them into
# chunks (0: whole; each seed is also written cut every 7 bytes, as NAME-7).
mkdir -p corpus/ingest_decoder
for seed in seeds/ingest_decoder/*.txtpb; do
  name=$(basename "$seed" .txtpb)
  for cut in 0 7; do
    out=corpus/ingest_decoder/$name
    ((cut == 0)) || out=$out-$cut
    { printf "\\x$(printf %02x "$cut")"
      protoc -I ../../proto --encode=kldrift.v1.IngestRequest kldrift/v1/kldrift.proto <"$seed"; } >"$out"
    echo "$out: $(wc -c <"$out") bytes"
  done
done
