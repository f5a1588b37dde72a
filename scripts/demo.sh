#!/usr/bin/env bash
# Walbrook's demo command (`make demo`): installs what is missing, builds, and runs
# `walbrook demo` next to a throwaway PostgreSQL and NATS JetStream (walbrook-sandbox
# starts them and removes them afterwards).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
cargo build --quiet -p walbrook-cli -p walbrook-harness
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
exec "$TARGET/debug/walbrook-sandbox" -- "$TARGET/debug/walbrook" demo "$@"
