#!/usr/bin/env bash
# The project's test command (what the README and CI run), from any directory:
#
#   scripts/test.sh               services, fmt, clippy, build, cargo tests, client-library
#                                 tests, client core unit tests (node), browser tests,
#                                 Autobahn WebSocket suite
#   scripts/test.sh --no-browser  the same without the browser tests
#
# Starts PostgreSQL, Redis and Kafka, and the TLS profile (PostgreSQL and Redis over TLS), through
# scripts/services.sh (they stay up afterwards; stop them with `scripts/services.sh stop` and
# `stop-tls`). Build output goes to $CARGO_TARGET_DIR, by default
# ${CHAT_CACHE:-$HOME/.cache/chat}/target, outside the clone. Never downloads a browser: the
# browser tests use Debian's chromium.
set -euo pipefail

usage() { sed -n '2,13s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }

BROWSER=1
for arg in "$@"; do
  case "$arg" in
    --no-browser) BROWSER=0 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "scripts/test.sh: unknown option '$arg'" >&2; usage >&2; exit 2 ;;
  esac
done

cd "$(dirname "${BASH_SOURCE[0]}")/.."
T0=$SECONDS
STEP="setup"
STEP_T0=$SECONDS
TIMINGS=()

step_done() {
  [ "$STEP" = setup ] || TIMINGS+=("$(printf '%5ds  %s' "$((SECONDS - STEP_T0))" "$STEP")")
}
banner() {
  step_done
  STEP="$*"
  STEP_T0=$SECONDS
  printf '\n==== [%s +%ds] %s ====\n' "$(date +%H:%M:%S)" "$((SECONDS - T0))" "$STEP"
}
on_exit() {
  local rc=$?
  if [ "$rc" -ne 0 ]; then
    printf '\n==== FAILED: %s (exit %d) after %ds ====\n' "$STEP" "$rc" "$((SECONDS - T0))" >&2
  fi
}
trap on_exit EXIT

BROWSER_DIR="tests/browser"
RUN_BROWSER=0
if [ "$BROWSER" -eq 1 ] && [ -f "$BROWSER_DIR/package.json" ]; then RUN_BROWSER=1; fi

# ---------------------------------------------------------------------------------------------
banner "services: PostgreSQL, Redis, Kafka (scripts/services.sh start)"
bash scripts/services.sh start
# The TLS profile beside them: PostgreSQL, Redis and Kafka over TLS with passwords (tests/it/tls.rs
# and the `_over_tls` / `::tls` tests).
bash scripts/services.sh start-tls
banner "services: Redis Cluster, 3 masters + 3 replicas (scripts/services.sh start-redis-cluster)"
bash scripts/services.sh start-redis-cluster
# Three Kafka brokers (replication factor 3, min ISR 2) for the fault tests at N (tests/faults).
bash scripts/services.sh start-kafka-cluster
eval "$(bash scripts/services.sh env)"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${CHAT_CACHE:-$HOME/.cache/chat}/target}"
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"
echo "CARGO_TARGET_DIR=$CARGO_TARGET_DIR"

# ---------------------------------------------------------------------------------------------
banner "OS packages"
pkgs=(build-essential pkg-config)
# Node runs the client core's unit tests (tests/client-unit, no npm packages) and the browser tests.
command -v node >/dev/null 2>&1 || pkgs+=(nodejs)
if [ "$RUN_BROWSER" -eq 1 ]; then
  pkgs+=(chromium)
  command -v npm >/dev/null 2>&1 || pkgs+=(npm)
fi
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ "${#missing[@]}" -eq 0 ]; then
  echo "all present: ${pkgs[*]}"
else
  echo "installing: ${missing[*]}"
  sudo_=()
  [ "$(id -u)" -eq 0 ] || sudo_=(sudo)
  apt=("${sudo_[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 -y -q)
  # `apt-get update` only when the lists are missing or the install fails without it.
  compgen -G '/var/lib/apt/lists/*_Packages' >/dev/null || "${apt[@]}" update
  "${apt[@]}" install --no-install-recommends "${missing[@]}" \
    || { "${apt[@]}" update && "${apt[@]}" install --no-install-recommends "${missing[@]}"; }
fi

if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
  # shellcheck disable=SC1091
  . "$HOME/.cargo/env"
fi
command -v cargo >/dev/null 2>&1 || { echo "cargo not found (install Rust with rustup)" >&2; exit 1; }
cargo --version
LOCKED=()
[ -f Cargo.lock ] && LOCKED=(--locked)

# ---------------------------------------------------------------------------------------------
banner "cargo fmt --all -- --check"
cargo fmt --all -- --check

banner "rust-version covers the locked dependencies (scripts/check_msrv.py)"
python3 scripts/check_msrv.py

banner "cargo clippy --all-targets ${LOCKED[*]} -- -D warnings"
cargo clippy --all-targets "${LOCKED[@]}" -- -D warnings

# The load generator `chat-bench` (src/bench) is built only with the feature `bench`.
banner "cargo clippy --all-targets --features bench ${LOCKED[*]} -- -D warnings"
cargo clippy --all-targets --features bench "${LOCKED[@]}" -- -D warnings

banner "cargo build --bins ${LOCKED[*]}"
cargo build --bins "${LOCKED[@]}"

# Against what the binary just built accepts (`chat config --list`, `chat config --check`).
banner "deploy files (scripts/check-deploy.sh --self-test)"
bash scripts/check-deploy.sh --self-test --chat-bin "$CARGO_TARGET_DIR/debug/chat" | tail -n 3

banner "cargo test --all-targets ${LOCKED[*]}"
cargo test --all-targets "${LOCKED[@]}"

# Only the bench's own tests: its unit tests and tests/bench.rs (real PostgreSQL).
banner "cargo test --features bench ${LOCKED[*]} --lib --bins --test bench -- bench persist_"
cargo test --features bench "${LOCKED[@]}" --lib --bins --test bench -- bench persist_

# ---------------------------------------------------------------------------------------------
banner "client libraries: Python websockets keepalive (tests/clients)"
# A virtualenv outside the clone; recreated when the pins change.
CLIENTS_VENV="${CHAT_CACHE:-$HOME/.cache/chat}/venv-clients"
CLIENT_PINS="websockets==17.4 pytest==9.2.0"
if [ "$(cat "$CLIENTS_VENV/.pins" 2>/dev/null)" != "$CLIENT_PINS" ]; then
  rm -rf "$CLIENTS_VENV"
  python3 -m venv "$CLIENTS_VENV"
  # shellcheck disable=SC2086 # (the pins are words)
  "$CLIENTS_VENV/bin/pip" install -q --disable-pip-version-check $CLIENT_PINS
  echo "$CLIENT_PINS" > "$CLIENTS_VENV/.pins"
fi
CHAT_BIN="$CARGO_TARGET_DIR/debug/chat" "$CLIENTS_VENV/bin/python" -m pytest -q tests/clients

# ---------------------------------------------------------------------------------------------
# The browser client's DOM-free core (static/js/core) under Node: no binary, no browser, no
# npm packages (node:test and fakes in tests/client-unit/fakes.mjs).
banner "client core unit tests: node --test (tests/client-unit)"
mapfile -t unit_files < <(find tests/client-unit -type f -name '*.test.mjs' | sort)
[ "${#unit_files[@]}" -gt 0 ] || { echo "no *.test.mjs under tests/client-unit" >&2; exit 1; }
node --test "${unit_files[@]}"

# ---------------------------------------------------------------------------------------------
if [ "$RUN_BROWSER" -eq 1 ]; then
  banner "browser tests: npm install ($BROWSER_DIR)"
  export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 PUPPETEER_SKIP_DOWNLOAD=1
  (
    cd "$BROWSER_DIR"
    # npm ci wipes node_modules: skip it when the lockfile did not change since the last one.
    if [ -f package-lock.json ]; then
      if cmp -s package-lock.json node_modules/.chat-installed-lock 2>/dev/null; then
        echo "node_modules up to date with package-lock.json"
      else
        npm ci --no-audit --no-fund
        mkdir -p node_modules && cp package-lock.json node_modules/.chat-installed-lock
      fi
    else
      npm install --no-audit --no-fund
    fi
  )

  banner "browser tests: node --test ($BROWSER_DIR)"
  export CHAT_BIN="$CARGO_TARGET_DIR/debug/chat"
  [ -x "$CHAT_BIN" ] || { echo "missing $CHAT_BIN (cargo build --bins should have made it)" >&2; exit 1; }
  CHROMIUM_BIN="${CHROMIUM_BIN:-$(command -v chromium || true)}"
  [ -n "$CHROMIUM_BIN" ] || { echo "chromium not found" >&2; exit 1; }
  export CHROMIUM_BIN
  # Node 20 takes files, not a directory, so list them (node's default test-file names).
  mapfile -t test_files < <(find "$BROWSER_DIR" -path "$BROWSER_DIR/node_modules" -prune -o \
    -type f \( -name '*.test.mjs' -o -name '*.test.js' -o -name '*.test.cjs' \) -print | sort)
  if [ "${#test_files[@]}" -eq 0 ]; then
    echo "$BROWSER_DIR/package.json exists but there is no *.test.mjs|js|cjs under $BROWSER_DIR" >&2
    exit 1
  fi
  echo "CHAT_BIN=$CHAT_BIN CHROMIUM_BIN=$CHROMIUM_BIN"
  node --test "${test_files[@]}"
elif [ "$BROWSER" -eq 0 ]; then
  banner "browser tests: skipped (--no-browser)"
else
  banner "browser tests: skipped (no $BROWSER_DIR/package.json)"
fi

# ---------------------------------------------------------------------------------------------
banner "Autobahn WebSocket test suite (scripts/autobahn.sh)"
# About a minute: the suite's Python 2.7 virtualenv (once), a build with the feature
# `autobahn`, ~260 cases in ~15 s. Skipped, loudly, where there is no Python 2.7; the raw-frame
# tests in tests/it/conformance.rs cover its ping, fragmentation, close-code and UTF-8 cases.
ab_rc=0
bash scripts/autobahn.sh || ab_rc=$?
if [ "$ab_rc" -eq 3 ]; then
  echo "SKIPPED: no Python 2.7 on this machine, so no Autobahn run (tests/it/conformance.rs ran)"
elif [ "$ab_rc" -ne 0 ]; then
  exit "$ab_rc"
fi

# ---------------------------------------------------------------------------------------------
banner "cleanup: the test topics on the Kafka broker"
# Each integration test makes its own topic (chat_t_…, chat_b_…) and none deletes it. Left to
# pile up (thousands of partitions after a few hundred runs), they made the broker's start
# take over the 120 s services.sh waits. This deletes every such topic on the broker: only
# after a passing run (a failed one keeps them to look at). Do not run two test runs against
# one broker at once: the first to finish would delete the other's topics.
bash scripts/services.sh kafka-class org.apache.kafka.tools.TopicCommand \
  --bootstrap-server "${KAFKA_BROKERS%%,*}" --delete --topic 'chat_(t|b)_.*' >/dev/null 2>&1 ||
  echo "could not delete the test topics (harmless)"

# ---------------------------------------------------------------------------------------------
step_done
STEP="summary"
printf '\n==== all steps passed in %ds ====\n' "$((SECONDS - T0))"
printf '%s\n' "${TIMINGS[@]}"
