#!/usr/bin/env bash
# PostgreSQL, Redis and Kafka for benchmarks only, on their own ports and data, so that
# fault tests stopping and killing the shared services of scripts/services.sh (they do:
# tests/faults) cannot disturb a measurement, and a benchmark cannot disturb them.
# Needs what scripts/services.sh installs (run `scripts/services.sh start` once first).
#
#   benches/private-services.sh start   start all three; prints the URLs
#   benches/private-services.sh env     `export …` lines for eval, as benches/cluster.sh wants
#   benches/private-services.sh stop
#
# Ports: PostgreSQL 5433 (cluster 15/bench), Redis 6380, Kafka 9094 (controller 9095).
set -euo pipefail
CACHE="${CHAT_CACHE:-$HOME/.cache/chat}"
RUN="$CACHE/bench-services"
KAFKA_LIBS="$(ls -d "$CACHE"/kafka-*/libs | tail -1)"
PG_PORT=5433 REDIS_PORT=6380 KAFKA_PORT=9094 KAFKA_CTL=9095
mkdir -p "$RUN"

urls() {
  echo "export DATABASE_URL=postgres://postgres:postgres@127.0.0.1:$PG_PORT/postgres"
  echo "export REDIS_URL=redis://127.0.0.1:$REDIS_PORT"
  echo "export KAFKA_BROKERS=127.0.0.1:$KAFKA_PORT"
}

pg_ver() { pg_lsclusters -h | awk 'NR==1{print $1}'; }

start() {
  local v
  v="$(pg_ver)"
  if ! pg_lsclusters -h | awk '{print $2}' | grep -qx bench; then
    pg_createcluster "$v" bench -p "$PG_PORT" >/dev/null
  fi
  pg_ctlcluster --skip-systemctl-redirect "$v" bench start 2>/dev/null || true
  for _ in $(seq 60); do pg_isready -q -h 127.0.0.1 -p "$PG_PORT" && break; sleep 0.5; done
  (cd / && runuser -u postgres -- psql -Xq -p "$PG_PORT" -c "ALTER USER postgres WITH PASSWORD 'postgres'")

  if [ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" != PONG ]; then
    redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
      --dir "$RUN" --pidfile "$RUN/redis.pid" --logfile "$RUN/redis.log"
  fi

  if ! (exec 3<>"/dev/tcp/127.0.0.1/$KAFKA_PORT") 2>/dev/null; then
    mkdir -p "$RUN/kafka-data"
    cat >"$RUN/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CTL
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CTL
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$RUN/kafka-data
num.partitions=8
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
num.network.threads=2
num.io.threads=4
log.retention.hours=24
EOF
    if [ ! -f "$RUN/kafka-data/meta.properties" ]; then
      java -cp "$KAFKA_LIBS/*" kafka.tools.StorageTool format \
        -t "$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')" \
        -c "$RUN/server.properties" >"$RUN/kafka-format.log" 2>&1
    fi
    setsid nohup java -Xms256m -Xmx512m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
      -Djava.awt.headless=true -Dkafka.logs.dir="$RUN" -cp "$KAFKA_LIBS/*" kafka.Kafka \
      "$RUN/server.properties" >"$RUN/kafka.out" 2>&1 </dev/null &
    echo $! >"$RUN/kafka.pid"
    for _ in $(seq 120); do
      (exec 3<>"/dev/tcp/127.0.0.1/$KAFKA_PORT") 2>/dev/null && break
      sleep 0.5
    done
    sleep 3 # the port opens a little before the broker serves
  fi
  urls
}

stop() {
  [ -f "$RUN/kafka.pid" ] && kill -TERM "$(cat "$RUN/kafka.pid")" 2>/dev/null || true
  redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
  pg_ctlcluster --skip-systemctl-redirect "$(pg_ver)" bench stop 2>/dev/null || true
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  env) urls ;;
  *) echo "usage: $0 start|stop|env" >&2; exit 2 ;;
esac
