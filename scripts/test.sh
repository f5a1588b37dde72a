#!/usr/bin/env bash
# Walbrook's test command (`make test`): installs what is missing, checks formatting and
# lints, runs every Rust and Python test against real servers, every fuzz target on its
# committed inputs, short runs of `make chaos` and `make bench`, checks that no server was
# left behind, and fails if no test ran at all.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
LOGS="$(mktemp -d -t walbrook-test-logs.XXXXXX)"
trap 'rm -rf "$LOGS"' EXIT

# Harness servers already running belong to someone else (a benchmark or another checkout
# on this machine); the leftover check at the end ignores them. (Not exported: the
# producer refuses unknown WALBROOK_* variables.)
leftover_baseline="$(pgrep -f 'walbrook-test-' | tr '\n' ' ' || true)"

# Each phase prints its duration when it ends.
phase_start=$SECONDS
phase_name=""
phase() {
  if [ -n "$phase_name" ]; then
    echo "== $phase_name: $((SECONDS - phase_start)) s"
  fi
  phase_name="$1"
  phase_start=$SECONDS
  [ -n "$phase_name" ] && echo "== $phase_name"
  return 0
}

phase "setup (scripts/setup.sh)"
bash scripts/setup.sh

phase "cargo fmt --check"
cargo fmt --all --check
phase "cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings

phase "cargo test (Rust)"
cargo test --workspace 2>&1 | tee "$LOGS/rust.log"

# Positions past 800/0 (8 TiB of WAL): a long-lived database's. No position arithmetic of
# the SDK or a sink may overflow there.
phase "client and sink suites on a WAL past 800/0 (TEST_PG_WAL_START=900/0)"
TEST_PG_WAL_START=900/0 cargo test -p walbrook-client -p walbrook-pg-client \
  -p walbrook-es-client -p walbrook-webhook-client 2>&1 | tee "$LOGS/high-lsn.log"

# Every committed seed and crash reproducer through each fuzz target's own code, as ordinary
# tests (the coverage-guided campaigns with the sanitizer build are `make fuzz`).
phase "fuzz targets on their committed inputs (fuzz/tests, docs/fuzzing.md)"
cargo test --manifest-path fuzz/Cargo.toml 2>&1 | tee "$LOGS/fuzz.log"

# The documented commands run too, at reduced length, so they cannot rot unnoticed.
phase "make chaos, short (3 producer kill cycles, the cluster case, 2 sink kills each)"
make --no-print-directory chaos CHAOS_CYCLES=3 SINK_CHAOS_CYCLES=2 2>&1 | tee "$LOGS/chaos.log"
phase "make bench, smoke run (scripts/bench-smoke.sh)"
bash scripts/bench-smoke.sh

phase "pytest (Python)"
# The Python tests run the harness's walbrook-servers and `walbrook produce` as processes.
cargo build --quiet -p walbrook-cli -p walbrook-harness --bins
VIRTUAL_ENV="$ROOT/.venv" .venv/bin/maturin develop --quiet -m bindings/Cargo.toml
PY_DIRS=(bindings/tests)
for dir in pgtype-avro/tests/python; do
  [ -d "$dir" ] && PY_DIRS+=("$dir")
done
set +e
.venv/bin/pytest -q "${PY_DIRS[@]}" 2>&1 | tee "$LOGS/python.log"
status=${PIPESTATUS[0]}
set -e
if [ "$status" -ne 0 ]; then
  echo "pytest failed (exit $status)" >&2
  exit 1
fi

phase "leftovers"
WALBROOK_LEFTOVER_BASELINE="$leftover_baseline" bash scripts/check-leftovers.sh
phase ""

rust_passed=$(cat "$LOGS/rust.log" "$LOGS/fuzz.log" | grep -Eo 'test result: ok\. [0-9]+ passed' | awk '{s+=$4} END {print s+0}')
python_passed=$(grep -Eo '[0-9]+ passed' "$LOGS/python.log" | tail -1 | awk '{print $1+0}')
python_passed=${python_passed:-0}
if [ "$rust_passed" -eq 0 ] || [ "$python_passed" -eq 0 ]; then
  echo "no tests ran (rust: $rust_passed, python: $python_passed): that is a failure" >&2
  exit 1
fi
echo "== summary: rust $rust_passed passed, python $python_passed passed"
echo "$((rust_passed + python_passed)) passed, 0 failed"
