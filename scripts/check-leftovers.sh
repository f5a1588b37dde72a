#!/usr/bin/env bash
# Fails if a server started by the test harness outlived the test run. Every harness
# server runs from a temporary directory named walbrook-test-*, so its command line
# (or its reaper's) contains that marker.
set -euo pipefail
for _ in $(seq 1 50); do
  if ! pgrep -f 'walbrook-test-' >/dev/null; then
    echo "leftovers: no harness server process is left behind"
    exit 0
  fi
  sleep 0.2   # reapers poll every 0.2 s
done
echo "leftovers: harness processes still running after the tests:" >&2
pgrep -af 'walbrook-test-' >&2
exit 1
