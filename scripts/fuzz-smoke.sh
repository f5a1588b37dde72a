#!/usr/bin/env bash
# Builds Walbrook's cargo-fuzz targets (fuzz/, see docs/fuzzing.md) and runs each one for a
# while on a copy of its committed seed corpus. `make test` runs it with the defaults (a smoke
# run of 10 s per target); the same script runs long campaigns.
#
#   scripts/fuzz-smoke.sh                          every target, 10 s each
#   scripts/fuzz-smoke.sh -t 600                   every target, 10 minutes each
#   scripts/fuzz-smoke.sh -t 3600 -k ~/fuzz-corpora text_parsers
#                                                  one target for an hour, keeping what it found
#
# Options:
#   -t SECONDS   fuzzing time per target (default: $WALBROOK_FUZZ_SECONDS, else 10)
#   -k DIR       keep each grown corpus in DIR/<target> (and resume from it next time)
#   -s SANITIZER address (default) or none (faster, finds fewer memory bugs)
#   TARGET...    only these targets (default: every target in fuzz/Cargo.toml)
#
# Environment: WALBROOK_TOOLS_DIR is where cargo-fuzz is installed (default
# ~/.cache/walbrook-tools); WALBROOK_FUZZ_TARGET_DIR is the build directory (default
# $WALBROOK_TOOLS_DIR/fuzz-target, outside the clone so that fresh clones build warm).
#
# Fails when any target crashes: a panic, a failed property, an input slower than 25 s or
# above 2 GB of memory. The input that did it is kept in fuzz/artifacts/<target>/ (ignored by
# git) and the command to replay it is printed. Nothing under fuzz/corpus is written.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

CARGO_FUZZ_VERSION=0.13.1
SECONDS_PER_TARGET="${WALBROOK_FUZZ_SECONDS:-10}"
KEEP=""
SANITIZER=address
while getopts "t:k:s:h" opt; do
  case "$opt" in
    t) SECONDS_PER_TARGET="$OPTARG" ;;
    k) KEEP="$OPTARG" ;;
    s) SANITIZER="$OPTARG" ;;
    *) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
case "$SECONDS_PER_TARGET" in
  '' | *[!0-9]*) echo "fuzz: -t needs whole seconds, got '$SECONDS_PER_TARGET'" >&2; exit 2 ;;
esac

TOOLS="${WALBROOK_TOOLS_DIR:-${HOME:-/tmp}/.cache/walbrook-tools}"
FUZZ_BIN="$TOOLS/cargo-fuzz-$CARGO_FUZZ_VERSION/bin"
TARGET_DIR="${WALBROOK_FUZZ_TARGET_DIR:-$TOOLS/fuzz-target}"
say() { printf 'fuzz: %s\n' "$*"; }

# --- cargo-fuzz (pinned; installed once into the tools cache) --------------------------------
if [ ! -x "$FUZZ_BIN/cargo-fuzz" ]; then
  say "installing cargo-fuzz $CARGO_FUZZ_VERSION into $TOOLS"
  mkdir -p "$TOOLS"
  env -u CARGO_TARGET_DIR cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked \
    --quiet --root "$TOOLS/cargo-fuzz-$CARGO_FUZZ_VERSION"
fi
export PATH="$FUZZ_BIN:$PATH"
# cargo-fuzz passes unstable -Z flags (sanitizer, coverage instrumentation) to rustc; the
# pinned stable toolchain accepts them with RUSTC_BOOTSTRAP (no nightly toolchain needed).
export RUSTC_BOOTSTRAP=1

ALL_TARGETS=$(cargo fuzz list)
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
  mapfile -t TARGETS <<<"$ALL_TARGETS"
fi
for t in "${TARGETS[@]}"; do
  grep -qx "$t" <<<"$ALL_TARGETS" || { echo "fuzz: no target '$t' (have: $ALL_TARGETS)" >&2; exit 2; }
done

FUZZ_FLAGS=(--sanitizer "$SANITIZER" --target-dir "$TARGET_DIR")
WORK="$(mktemp -d -t walbrook-fuzz.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
say "building ${TARGETS[*]} (sanitizer $SANITIZER, into $TARGET_DIR)"
started=$(date +%s)
for t in "${TARGETS[@]}"; do
  if ! cargo fuzz build "${FUZZ_FLAGS[@]}" "$t" >"$WORK/build.log" 2>&1; then
    tail -40 "$WORK/build.log" >&2
    echo "fuzz: building $t failed" >&2
    exit 1
  fi
done
say "built in $(($(date +%s) - started)) s"

failed=()
summary=()
for t in "${TARGETS[@]}"; do
  corpus="$WORK/corpus-$t"
  if [ -n "$KEEP" ]; then
    corpus="$KEEP/$t"
  fi
  mkdir -p "$corpus" "fuzz/artifacts/$t"
  for seed in fuzz/corpus/"$t"/*; do
    [ -e "$corpus/${seed##*/}" ] || cp "$seed" "$corpus/"
  done
  seeds=$(find "fuzz/corpus/$t" -type f | wc -l)
  log="$WORK/$t.log"
  say "running $t for $SECONDS_PER_TARGET s ($seeds seeds, corpus $corpus)"
  set +e
  cargo fuzz run "${FUZZ_FLAGS[@]}" "$t" "$corpus" -- \
    -max_total_time="$SECONDS_PER_TARGET" -timeout=25 -rss_limit_mb=2048 \
    -print_final_stats=1 >"$log" 2>&1
  status=$?
  set -e
  runs=$( (grep -Eo 'stat::number_of_executed_units: [0-9]+' "$log" || true) | awk '{print $2}' | tail -1)
  cov=$( (grep -Eo 'cov: [0-9]+' "$log" || true) | tail -1 | awk '{print $2}')
  grown=$(find "$corpus" -type f | wc -l)
  if [ "$status" -ne 0 ]; then
    failed+=("$t")
    echo "---- $t failed (exit $status); end of its log:" >&2
    grep -v '^"' "$log" | grep -v '# Uses:' | tail -60 >&2
    crash=$( (grep -Eo 'Test unit written to [^ ]+' "$log" || true) | tail -1 | awk '{print $NF}')
    if [ -n "$crash" ]; then
      echo "---- reproduce: RUSTC_BOOTSTRAP=1 PATH=$FUZZ_BIN:\$PATH cargo fuzz run ${FUZZ_FLAGS[*]} $t $crash" >&2
    fi
    summary+=("$(printf '%-16s FAILED  %12s executions  exit %s' "$t" "${runs:-?}" "$status")")
  else
    rate=$(( ${runs:-0} / (SECONDS_PER_TARGET > 0 ? SECONDS_PER_TARGET : 1) ))
    summary+=("$(printf '%-16s ok      %12s executions  %7s/s  coverage %s  corpus %s -> %s' \
      "$t" "${runs:-?}" "$rate" "${cov:-?}" "$seeds" "$grown")")
  fi
done

echo "== fuzz summary ($SECONDS_PER_TARGET s per target, sanitizer $SANITIZER)"
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -ne 0 ]; then
  echo "fuzz: crashes in ${failed[*]}" >&2
  exit 1
fi
