#!/usr/bin/env bash
# A tiny run of `make bench` on the debug build: every benchmark part must run to its end
# and write its JSON (the figures of such a run mean nothing). The test command runs it so
# that `make bench` cannot rot unnoticed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="$(mktemp -d -t walbrook-bench-smoke.XXXXXX)"
trap 'rm -rf "$OUT"' EXIT

make --no-print-directory bench BENCH_PROFILE=dev BENCH_OUT="$OUT" ROWS=3000 \
  BENCH_ARGS="--rows-per-tx 100 --apply-changes 3000 --memory-rows 2000 --sink-events 1000 --latency-rate 200 --latency-seconds 3" \
  DECODE_ARGS="--events 2000"

status=0
for part in backlog snapshot latency apply apply-inserts memory sinks summary decode-rust decode-python; do
  file="$OUT/$part.json"
  if ! [ -s "$file" ]; then
    echo "bench smoke: $part.json was not written" >&2
    status=1
  elif ! python3 -c 'import json, sys; json.load(open(sys.argv[1]))' "$file"; then
    echo "bench smoke: $part.json is not valid JSON" >&2
    status=1
  fi
done
for file in summary.txt chart.png; do
  if ! [ -s "$OUT/$file" ]; then
    echo "bench smoke: $file was not written" >&2
    status=1
  fi
done
[ "$status" -eq 0 ] && echo "bench smoke: every part wrote its results"
exit "$status"
