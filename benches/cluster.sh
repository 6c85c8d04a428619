#!/usr/bin/env bash
# A distributed chat for `chat-bench` on this machine: 2 gateways + 1 consumer (release
# build) against benchmark-only PostgreSQL, Redis and Kafka
# (CHAT_SERVICES_PROFILE=bench scripts/services.sh; SERVICES=shared: the default set), on a fresh database, Kafka topic and
# Redis prefix each start.
#
#   benches/cluster.sh start     start (stops a previous one first); prints the pids
#   benches/cluster.sh stop      SIGTERM the processes of the last start
#   benches/cluster.sh pids      "--pid A --pid B --pid C" of the running cluster
#   benches/cluster.sh consumer  start the consumer later (after NO_CONSUMER=1 … start)
#
# Environment: GATEWAYS (default 2), BASE_PORT (8081: gateways on 8081, 8082, …; the
# consumer on BASE_PORT+100), SEND_RATE (per-connection send limit, default 1000 so one
# sender can drive the fanout scenario; the server's own default is 20), NO_CONSUMER=1
# (start only the gateways: the persist scenario can then time the consumer alone, see
# benches/README.md), HTTP_WORKERS and RUNTIME_THREADS (default: the server's own), RUST_LOG
# (default warn),
# KAFKA=cluster (the three-broker cluster of `scripts/services.sh start-kafka-cluster`,
# replication factor 3, instead of the single broker), REDIS=cluster (the Redis Cluster of
# `scripts/services.sh start-redis-cluster`, 3 masters + 3 replicas, instead of one Redis).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
CACHE="${CHAT_CACHE:-$HOME/.cache/chat}"
DIR="$CACHE/bench"
PIDS="$DIR/cluster.pids"
BIN="${CHAT_BIN:-${CARGO_TARGET_DIR:-$CACHE/target}/release/chat}"
GATEWAYS="${GATEWAYS:-2}"
BASE_PORT="${BASE_PORT:-8081}"
SEND_RATE="${SEND_RATE:-1000}"
mkdir -p "$DIR"

stop() {
  [ -f "$PIDS" ] || return 0
  for p in $(cat "$PIDS"); do kill -TERM "$p" 2>/dev/null || true; done
  for p in $(cat "$PIDS"); do
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.3; done
  done
  rm -f "$PIDS"
}

wait_up() { # port log
  for _ in $(seq 120); do
    curl -fsS "http://127.0.0.1:$1/healthz" >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  echo "not up on port $1; see $2" >&2
  tail -20 "$2" >&2
  exit 1
}

start() {
  stop
  [ -x "$BIN" ] || { echo "no $BIN: cargo build --release --locked --features bench" >&2; exit 1; }
  local profile=bench
  [ "${SERVICES:-private}" = shared ] && profile=default
  CHAT_SERVICES_PROFILE=$profile bash scripts/services.sh start >/dev/null
  eval "$(CHAT_SERVICES_PROFILE=$profile bash scripts/services.sh env)"
  if [ "$profile" = bench ]; then
    # The benchmark-only services start each run clean: earlier runs' topics (hundreds of
    # idle partitions after a day of runs cost the broker CPU) and Redis keys go.
    CHAT_SERVICES_PROFILE=bench bash scripts/services.sh kafka-class org.apache.kafka.tools.TopicCommand \
      --bootstrap-server "$KAFKA_BROKERS" --delete --topic 'chat\.bench\..*' >/dev/null 2>&1 || true
    redis-cli -u "$REDIS_URL" flushall >/dev/null 2>&1 || true
  fi
  if [ "${KAFKA:-single}" = cluster ]; then
    bash scripts/services.sh start-kafka-cluster >/dev/null
    KAFKA_BROKERS="$(bash scripts/services.sh env | sed -n 's/^export CLUSTER_KAFKA_BROKERS=//p')"
    [ -n "$KAFKA_BROKERS" ] || { echo "the Kafka cluster is not up" >&2; exit 1; }
    bash scripts/services.sh kafka-class org.apache.kafka.tools.TopicCommand \
      --bootstrap-server "${KAFKA_BROKERS%%,*}" --delete --topic 'chat\.bench\..*' >/dev/null 2>&1 || true
  fi
  unset REDIS_CLUSTER_NODES
  if [ "${REDIS:-single}" = cluster ]; then
    bash scripts/services.sh start-redis-cluster >/dev/null
    REDIS_CLUSTER_NODES="$(bash scripts/services.sh env | sed -n 's/^export CLUSTER_REDIS_NODES=//p')"
    [ -n "$REDIS_CLUSTER_NODES" ] || { echo "the Redis Cluster is not up" >&2; exit 1; }
    export REDIS_CLUSTER_NODES
    unset REDIS_URL
  fi
  local tag db
  tag="b$(date +%s)"
  db="chat_bench"
  psql -Xq "$DATABASE_URL" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db"
  local url="${DATABASE_URL%/*}/$db"
  echo "$url" >"$DIR/database_url"
  "$BIN" migrate --database-url "$url" >/dev/null
  # Mark it as the bench's own, so that chat-bench's persist scenario accepts it even after
  # other scenarios filled it (src/bench/persist.rs, `claim`: the same statement).
  psql -Xq "$url" -c "CREATE TABLE IF NOT EXISTS chat_bench_marker (marked_at timestamptz NOT NULL DEFAULT now())"
  export DATABASE_URL="$url" KAFKA_TOPIC="chat.bench.$tag" REDIS_PREFIX="$tag" NO_MIGRATE=true
  export JWT_SECRET="${JWT_SECRET:-$(head -c 48 /dev/urandom | base64 | tr -d '\n')}"
  export SEND_RATE_PER_SEC="$SEND_RATE" SEND_RATE_BURST="$SEND_RATE" RUST_LOG="${RUST_LOG:-warn}"
  # `chat-bench` registers all its users from this machine at once: lift the per-address
  # registration limit and the hashing queue (defaults 5/min burst 10, 4 per core).
  export REGISTER_RATE_PER_ADDRESS=1000000 REGISTER_BURST_PER_ADDRESS=1000000 HASH_QUEUE=100000
  # Its connections share --users users (the `connections` scenario: 100 per user): lift the
  # per-user connection cap (default 32 per gateway) and the room creation limit.
  export MAX_CONNECTIONS_PER_USER=1000000 ROOM_CREATE_PER_MINUTE=1000000
  # The server's own thread counts unless HTTP_WORKERS / RUNTIME_THREADS are given: what a
  # user gets from `chat serve --role …` (benches/README.md, "Issue 21"). Before 2026-12-07
  # this script set one HTTP worker per gateway.
  [ -z "${HTTP_WORKERS:-}" ] || export HTTP_WORKERS
  [ -z "${RUNTIME_THREADS:-}" ] || export RUNTIME_THREADS
  [ -z "${REDIS_URL:-}" ] || export REDIS_URL
  export KAFKA_BROKERS
  export -p | grep -E ' (DATABASE_URL|REDIS_URL|REDIS_CLUSTER_NODES|KAFKA_BROKERS|KAFKA_TOPIC|REDIS_PREFIX|NO_MIGRATE|JWT_SECRET|SEND_RATE_PER_SEC|SEND_RATE_BURST|REGISTER_RATE_PER_ADDRESS|REGISTER_BURST_PER_ADDRESS|HASH_QUEUE|MAX_CONNECTIONS_PER_USER|ROOM_CREATE_PER_MINUTE|RUST_LOG|HTTP_WORKERS|RUNTIME_THREADS)=' >"$DIR/env"
  # 20,000 connections need more than the default open-file limit.
  ulimit -Hn 1048576 2>/dev/null || true
  ulimit -n "$(ulimit -Hn)"
  : >"$PIDS"
  local i port
  for i in $(seq 0 $((GATEWAYS - 1))); do
    port=$((BASE_PORT + i))
    "$BIN" serve --role gateway --listen "127.0.0.1:$port" >"$DIR/gw-$i.log" 2>&1 &
    echo $! >>"$PIDS"
    wait_up "$port" "$DIR/gw-$i.log"
  done
  [ -n "${NO_CONSUMER:-}" ] || consumer
  echo "gateways: $(seq -s ' ' "$BASE_PORT" $((BASE_PORT + GATEWAYS - 1))); pids: $(tr '\n' ' ' <"$PIDS")"
  echo "database: $url  topic: $KAFKA_TOPIC  prefix: $REDIS_PREFIX  logs: $DIR"
}

# Starts the consumer of the last start (after the fact, with NO_CONSUMER=1).
consumer() {
  # shellcheck disable=SC1091
  . "$DIR/env"
  local port=$((BASE_PORT + 100))
  "$BIN" serve --role consumer --listen "127.0.0.1:$port" >"$DIR/consumer.log" 2>&1 &
  echo $! >>"$PIDS"
  wait_up "$port" "$DIR/consumer.log"
}

case "${1:-}" in
  start) start ;;
  consumer) consumer; echo "consumer pid $(tail -1 "$PIDS")" ;;
  stop) stop ;;
  pids) sed 's/^/--pid /' "$PIDS" | tr '\n' ' '; echo ;;
  *) echo "usage: $0 start|stop|pids|consumer" >&2; exit 2 ;;
esac
