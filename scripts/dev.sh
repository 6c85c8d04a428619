#!/usr/bin/env bash
# Runs the whole chat on this machine: starts local PostgreSQL, Redis and Kafka
# (scripts/services.sh), then `chat serve --role all` on http://127.0.0.1:8080.
# Extra arguments go to `chat serve` (e.g. --listen 127.0.0.1:9000).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/services.sh start >/dev/null
eval "$(bash scripts/services.sh env)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${CHAT_CACHE:-$HOME/.cache/chat}/target}"
secret_file="${CHAT_CACHE:-$HOME/.cache/chat}/dev-jwt-secret"
if [ ! -s "$secret_file" ]; then
  mkdir -p "$(dirname "$secret_file")"
  head -c 48 /dev/urandom | base64 | tr -d '\n' > "$secret_file"
fi
export JWT_SECRET="${JWT_SECRET:-$(cat "$secret_file")}"
exec cargo run --release --locked -- serve --role all "$@"
