#!/usr/bin/env bash
# Record of the issue 17 (item 7) runs: VARIANT is a directory holding that build's `chat`; the
# bench is always the base build's chat-bench. Usage: run.sh VARIANT TAG (paths under /tmp/http-bench).
# usage: run.sh VARIANT TAG  -> /tmp/http-bench/VARIANT-TAG.json
set -u
V=$1; T=$2; D=/tmp/http-bench
data=$(mktemp -d /tmp/http-bench/data-XXXX)
ulimit -n "$(ulimit -Hn)"
env -u DATABASE_URL -u REDIS_URL -u KAFKA_BROKERS -u JWT_SECRET -u DATA_DIR \
  RUST_LOG=warn REGISTER_RATE_PER_ADDRESS=1000000 REGISTER_BURST_PER_ADDRESS=1000000 HASH_QUEUE=100000 \
  MAX_CONNECTIONS_PER_USER=1000000 ROOM_CREATE_PER_MINUTE=1000000 HTTP_WORKERS=1 \
  $D/$V/chat serve --listen 127.0.0.1:0 --data-dir "$data" > $D/serve-$V-$T.log 2>&1 &
pid=$!
for i in $(seq 100); do grep -q "chat listening on" $D/serve-$V-$T.log && break; sleep 0.2; done
addr=$(grep -o "http://[0-9.:]*" $D/serve-$V-$T.log | head -1)
$D/base/chat-bench --scenario connections --connections 10000 --users 1 --rooms 1 --duration 10 --gateway "$addr" --pid $pid --out $D/$V-$T.json > $D/bench-$V-$T.log 2>&1
echo "rc=$? $V $T $(grep -i 'per conn' $D/bench-$V-$T.log | tail -2 | tr '\n' ' ')"
kill -TERM $pid; wait $pid
rm -rf "$data"
