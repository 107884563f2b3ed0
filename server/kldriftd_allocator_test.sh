#!/bin/sh
# kldriftd_allocator_test.sh KLDRIFTD MALLOC: kldriftd is linked with, and reports serving with,
# MALLOC ("tcmalloc" or "glibc malloc"). Starts it on a loopback port picked by the kernel, in
# memory, and stops it. Bounded: 30 s for the port file.
set -eu
kldriftd=$1
want=$2
dir=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$dir"' EXIT
if [ "$want" = tcmalloc ] && ! ldd "$kldriftd" | grep -q 'libtcmalloc_minimal\.so'; then
  echo "FAIL: $kldriftd is not linked with libtcmalloc_minimal" >&2
  exit 1
fi
"$kldriftd" --storage=memory --listen 127.0.0.1:0 --port-file "$dir/port" \
  --metrics-listen 127.0.0.1:0 2>"$dir/log" &
pid=$!
i=0
while [ ! -s "$dir/port" ]; do
  i=$((i + 1))
  if [ $i -gt 300 ] || ! kill -0 "$pid" 2>/dev/null; then
    echo "FAIL: kldriftd did not start:" >&2
    cat "$dir/log" >&2
    exit 1
  fi
  sleep 0.1
done
# The serving line is written right after the port file: wait for it too.
i=0
until grep -q "serving on" "$dir/log"; do
  i=$((i + 1))
  [ $i -gt 100 ] && break
  sleep 0.1
done
if ! grep "serving on" "$dir/log" | grep -q ", $want)"; then
  echo "FAIL: kldriftd's serving line does not end with \", $want)\":" >&2
  cat "$dir/log" >&2
  exit 1
fi
echo "ok: $(grep 'serving on' "$dir/log")"
