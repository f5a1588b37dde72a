#!/usr/bin/env bash
# Fails if a server started by the test harness outlived the test run. Every harness
# server runs from a temporary directory named walbrook-test-*, so its command line
# (or its reaper's) contains that marker. Processes listed in WALBROOK_LEFTOVER_BASELINE
# (pids running before the tests started; scripts/test.sh sets it) are not ours.
set -euo pipefail
baseline=" ${WALBROOK_LEFTOVER_BASELINE:-} "
ours() {
  local pid
  for pid in $(pgrep -f 'walbrook-test-' || true); do
    [[ "$baseline" == *" $pid "* ]] || echo "$pid"
  done
}
for _ in $(seq 1 50); do
  if [[ -z "$(ours)" ]]; then
    echo "leftovers: no harness server process is left behind"
    exit 0
  fi
  sleep 0.2   # reapers poll every 0.2 s
done
echo "leftovers: harness processes still running after the tests:" >&2
for pid in $(ours); do
  ps -o pid=,args= -p "$pid" >&2 || true
done
exit 1
