#!/usr/bin/env bash
# Walbrook's test command (`make test`): installs what is missing, checks formatting and
# lints, runs every Rust and Python test against real servers and a short run of every fuzz
# target, checks that no server was left behind, and fails if no test ran at all.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
LOGS="$(mktemp -d -t walbrook-test-logs.XXXXXX)"
trap 'rm -rf "$LOGS"' EXIT

# Harness servers already running belong to someone else (a benchmark or another checkout
# on this machine); the leftover check at the end ignores them. (Not exported: the
# producer refuses unknown WALBROOK_* variables.)
leftover_baseline="$(pgrep -f 'walbrook-test-' | tr '\n' ' ' || true)"

bash scripts/setup.sh

echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings

echo "== cargo test (Rust)"
cargo test --workspace 2>&1 | tee "$LOGS/rust.log"

echo "== fuzz smoke run (scripts/fuzz-smoke.sh, docs/fuzzing.md)"
bash scripts/fuzz-smoke.sh

echo "== pytest (Python)"
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

echo "== leftovers"
WALBROOK_LEFTOVER_BASELINE="$leftover_baseline" bash scripts/check-leftovers.sh

rust_passed=$(grep -Eo 'test result: ok\. [0-9]+ passed' "$LOGS/rust.log" | awk '{s+=$4} END {print s+0}')
python_passed=$(grep -Eo '[0-9]+ passed' "$LOGS/python.log" | tail -1 | awk '{print $1+0}')
python_passed=${python_passed:-0}
if [ "$rust_passed" -eq 0 ] || [ "$python_passed" -eq 0 ]; then
  echo "no tests ran (rust: $rust_passed, python: $python_passed): that is a failure" >&2
  exit 1
fi
echo "== summary: rust $rust_passed passed, python $python_passed passed"
echo "$((rust_passed + python_passed)) passed, 0 failed"
