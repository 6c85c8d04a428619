#!/usr/bin/env bash
# shellcheck disable=SC2012 # (ls on directories this script fills or Debian owns)
# Local backing services for `chat` development and tests: PostgreSQL, Redis and
# Apache Kafka (KRaft, single combined node), as plain local processes.
# No Docker, no systemd.
#
#   scripts/services.sh start          start what is not already answering, wait, print URLs
#   scripts/services.sh stop           stop all three
#   scripts/services.sh status         up/down per service (exit 1 if any is down)
#   scripts/services.sh env            `export VAR=...` lines, for eval "$(scripts/services.sh env)"
#   scripts/services.sh start-one NAME start one service (postgres|redis|kafka)
#   scripts/services.sh stop-one NAME  stop one service cleanly
#   scripts/services.sh kill-one NAME  crash one service (SIGKILL; postgres: immediate stop)
#   scripts/services.sh start-tls      the TLS profile beside them: PostgreSQL (5441), Redis (6390)
#                                      and Kafka (9098, SASL_SSL) speaking only TLS, with
#                                      passwords; prints TLS_* URLs
#   scripts/services.sh stop-tls       stop the TLS profile
#   scripts/services.sh start-redis-cluster   a Redis Cluster beside them: 6 nodes on 7000-7005
#                                      (3 masters + 1 replica each, node timeout 2 s); reuses a
#                                      healthy one, re-creates a broken one; prints
#                                      CLUSTER_REDIS_NODES (which `env` prints while it is up; the
#                                      value for chat's REDIS_CLUSTER_NODES)
#   scripts/services.sh stop-redis-cluster    stop its nodes
#   scripts/services.sh redis-cluster-kill-master SLOT|PORT|key:NAME   SIGKILL the master owning
#                                      the slot (of the key); prints its port
#   scripts/services.sh redis-cluster-restart-node PORT   start a killed node again (it rejoins
#                                      as a replica of the master that took over)
#   scripts/services.sh start-kafka-cluster  three Kafka nodes (KRaft, each broker+controller) on
#                                      29092, 29192, 29292: replication factor 3, min ISR 2;
#                                      `env` then prints CLUSTER_KAFKA_BROKERS
#   scripts/services.sh stop-kafka-cluster   stop them
#   scripts/services.sh kafka-cluster-node start|stop|kill N   one node of it (fault tests)
#   scripts/services.sh kafka-class org.apache.kafka.tools.TopicCommand --bootstrap-server \
#       127.0.0.1:9092 --list          run a Kafka tool (TopicCommand, ConsoleConsumer, ...)
#
# State lives in ${CHAT_CACHE:-$HOME/.cache/chat}: run/ (pid files, logs, Kafka data),
# kafka-<version>/libs (broker jars from Maven Central, fetched once), m2/ (Maven's repo).
# PostgreSQL is Debian's cluster (data in /var/lib/postgresql, log in /var/log/postgresql).
#
# CHAT_SERVICES_PROFILE=bench runs a second, independent set for benchmarks (benches/), so a
# fault test stopping the shared services cannot disturb a measurement: PostgreSQL cluster
# `bench` on 5433, Redis on 6380, Kafka on 9094 (controller 9095), state in bench-services/.
# Progress goes to stderr; stdout carries only the URL lines, so it can be parsed.
set -euo pipefail

CACHE="${CHAT_CACHE:-$HOME/.cache/chat}"
case "${CHAT_SERVICES_PROFILE:-default}" in
  default)
    RUN="$CACHE/run" PG_CLUSTER=main
    PG_PORT=5432 REDIS_PORT=6379 KAFKA_PORT=9092 KAFKA_CONTROLLER_PORT=9093
    RC_FIRST_PORT=7000
    ;;
  bench)
    RUN="$CACHE/bench-services" PG_CLUSTER=bench
    PG_PORT=5433 REDIS_PORT=6380 KAFKA_PORT=9094 KAFKA_CONTROLLER_PORT=9095
    RC_FIRST_PORT=7100
    ;;
  *)
    echo "[services] ERROR: CHAT_SERVICES_PROFILE is default or bench" >&2
    exit 2
    ;;
esac
KAFKA_VERSION="4.1.1"
LOG4J_VERSION="2.24.3"   # the log4j2 that Kafka 4.1.1 itself ships with
KAFKA_HOME="$CACHE/kafka-$KAFKA_VERSION"
KAFKA_LIBS="$KAFKA_HOME/libs"
KAFKA_DIR="$RUN/kafka"             # config + data
KAFKA_DATA="$KAFKA_DIR/data"
KAFKA_PID="$RUN/kafka.pid"
KAFKA_LOG="$RUN/kafka.log"         # log4j2 output
KAFKA_OUT="$RUN/kafka.out"         # JVM stdout/stderr (crashes, GC trouble)
REDIS_PID="$RUN/redis.pid"
REDIS_LOG="$RUN/redis.log"
# What the TLS profile's broker (tls_kafka_env) sets besides the defaults. The main broker's
# heap can be set with KAFKA_HEAP_OPTS (Kafka's own name for it).
KAFKA_HEAP="${KAFKA_HEAP_OPTS:--Xms256m -Xmx512m}"
KAFKA_EXTRA_LISTENER="" KAFKA_EXTRA_PROTOCOL_MAP="" KAFKA_EXTRA_PROPS=""
KAFKA_FORMAT_EXTRA=()
# What a node of the Kafka cluster profile (kcl_env) sets besides the defaults.
KAFKA_NODE_ID=1 KAFKA_VOTERS="" KAFKA_RF=1 KAFKA_MIN_ISR=1 KAFKA_CLUSTER_ID=""

HOST=127.0.0.1

DATABASE_URL="postgres://postgres:postgres@$HOST:$PG_PORT/postgres"
REDIS_URL="redis://$HOST:$REDIS_PORT"
KAFKA_BROKERS="$HOST:$KAFKA_PORT"

START_TIMEOUT="${CHAT_SERVICES_TIMEOUT:-120}" # seconds, per service

log() { printf '[services] %s\n' "$*" >&2; }
die() { printf '[services] ERROR: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}
as_postgres() { # from /, which the postgres user can always enter
  if [ "$(id -u)" -eq 0 ]; then
    (cd / && runuser -u postgres -- "$@")
  else
    (cd / && sudo -u postgres "$@")
  fi
}

# Install Debian packages that are missing. `apt-get update` only when the package lists are
# empty or an install fails; waits for another apt/dpkg instead of failing on its lock.
apt_install() {
  local missing=() p
  for p in "$@"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  log "installing Debian packages: ${missing[*]}"
  local apt=(env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 -y -q)
  if ! compgen -G '/var/lib/apt/lists/*_Packages' >/dev/null; then
    as_root "${apt[@]}" update >&2
  fi
  if ! as_root "${apt[@]}" install --no-install-recommends "${missing[@]}" >&2; then
    as_root "${apt[@]}" update >&2
    as_root "${apt[@]}" install --no-install-recommends "${missing[@]}" >&2
  fi
}

port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# A process that exited but was not reaped yet (a zombie; PID 1 here reaps lazily) counts as dead.
proc_alive() { # pid
  local state
  kill -0 "$1" 2>/dev/null || return 1
  state="$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$1/status" 2>/dev/null || true)"
  [ "$state" != Z ] && [ "$state" != X ]
}

pid_alive() { # pidfile
  local pid
  [ -f "$1" ] || return 1
  pid="$(cat "$1" 2>/dev/null)" || return 1
  [ -n "$pid" ] && proc_alive "$pid"
}

# Error lines of log4j (Kafka), PostgreSQL, Redis and Java stack traces.
ERR_RE=' (ERROR|FATAL|PANIC):? |^Caused by|^[A-Za-z0-9_.$]+(Exception|Error)(:|$)| # (Warning: |Fatal|FATAL|Failed)'
tail_log() { # file...: its error lines first (a failing JVM logs pages of shutdown after them)
  local f
  for f in "$@"; do
    if [ -s "$f" ]; then
      if grep -qE "$ERR_RE" "$f"; then
        printf -- '----- errors in %s -----\n' "$f" >&2
        grep -E "$ERR_RE" "$f" | tail -n 12 | cut -c1-400 >&2 || true
      fi
      printf -- '----- last lines of %s -----\n' "$f" >&2
      tail -n 25 "$f" | cut -c1-400 >&2 || true
    fi
  done
}

# wait_for NAME CHECK_FN PIDCHECK_FN LOGFILE...: poll CHECK_FN until it succeeds or the timeout;
# PIDCHECK_FN (or "") fails fast when the process already died.
wait_for() {
  local name="$1" check="$2" alive="$3" start=$SECONDS
  shift 3
  while ! "$check"; do
    if [ -n "$alive" ] && ! "$alive"; then
      tail_log "$@"
      die "$name exited during startup (logs above)"
    fi
    if (( SECONDS - start >= START_TIMEOUT )); then
      tail_log "$@"
      die "$name did not answer within ${START_TIMEOUT}s (logs above)"
    fi
    sleep 0.2
  done
}

# ---------------------------------------------------------------------------------------------
# PostgreSQL (Debian cluster, started with pg_ctlcluster)

PG_VER=""
pg_version() {
  if [ -z "$PG_VER" ]; then
    PG_VER="$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1 || true)"
  fi
  [ -n "$PG_VER" ]
}
pg_log() { echo "/var/log/postgresql/postgresql-$PG_VER-$PG_CLUSTER.log"; }

pg_query_ok() { # connects with the password over TCP, as the tests will
  PGPASSWORD=postgres PGCONNECT_TIMEOUT=3 timeout 5 psql -h "$HOST" -p "$PG_PORT" -U postgres -d postgres \
    -XtAqc 'select 1' >/dev/null 2>&1
}
pg_ready() { pg_isready -q -h "$HOST" -p "$PG_PORT" -t 2 >/dev/null 2>&1; }
pg_running() { # the cluster's postmaster is alive (whatever it listens on)
  local pidfile="/var/lib/postgresql/$PG_VER/$PG_CLUSTER/postmaster.pid" pid
  [ -f "$pidfile" ] || return 1
  pid="$(head -n 1 "$pidfile" 2>/dev/null)" || return 1
  [ -n "$pid" ] && proc_alive "$pid"
}
pg_up() { pg_version && pg_query_ok; }

pg_install() {
  if ! command -v pg_ctlcluster >/dev/null 2>&1 || ! pg_version; then
    apt_install postgresql postgresql-client
  fi
  if ! pg_version || [ ! -d "/etc/postgresql/$PG_VER/$PG_CLUSTER" ]; then
    local v="$PG_VER"
    [ -n "$v" ] || v="$(ls /usr/lib/postgresql | sort -V | tail -n 1)"
    [ -n "$v" ] || die "postgresql is installed but /usr/lib/postgresql has no version"
    log "creating PostgreSQL cluster $v/$PG_CLUSTER"
    as_root pg_createcluster -p "$PG_PORT" "$v" "$PG_CLUSTER" >&2
    PG_VER=""
    pg_version || die "no PostgreSQL cluster under /etc/postgresql"
  fi
}

# Writes our settings (cheap when nothing changed); sets PG_CHANGED=1 when a restart is needed.
PG_CHANGED=0
pg_configure() {
  local confdir="/etc/postgresql/$PG_VER/$PG_CLUSTER" conf want
  conf="$confdir/conf.d/zz-chat.conf"
  # fsync and synchronous_commit keep their (durable) defaults: tests check durability.
  want="# written by scripts/services.sh (chat tests)
listen_addresses = '$HOST'
port = $PG_PORT
max_connections = 300
shared_buffers = 256MB
password_encryption = scram-sha-256
"
  as_root mkdir -p "$confdir/conf.d"
  if [ "$(cat "$conf" 2>/dev/null || true)" != "${want%$'\n'}" ]; then
    printf '%s' "$want" | as_root tee "$conf" >/dev/null
    as_root chown postgres:postgres "$conf"
    PG_CHANGED=1
  fi
  local hba="$confdir/pg_hba.conf"
  if ! grep -Eq "^[[:space:]]*host[[:space:]]+all[[:space:]]+all[[:space:]]+127\.0\.0\.1/32[[:space:]]+(scram-sha-256|md5)" "$hba"; then
    log "allowing password logins from 127.0.0.1 in $hba"
    # Before the first rule, so no earlier rule shadows it.
    as_root sed -i '0,/^[[:space:]]*\(local\|host\)/s//host    all             all             127.0.0.1\/32            scram-sha-256\n&/' "$hba"
    PG_CHANGED=1
  fi
}

pg_set_password() {
  if ! pg_query_ok; then
    log "setting the postgres role's password"
    as_postgres psql -p "$PG_PORT" -XqAt -c "ALTER USER postgres WITH PASSWORD 'postgres'" >/dev/null
  fi
}

pg_start() {
  pg_install
  pg_configure
  if [ "$PG_CHANGED" -eq 0 ] && pg_query_ok; then
    log "postgres: already up"
    return 0
  fi
  as_root install -d -o postgres -g postgres -m 2775 /var/run/postgresql
  if pg_running; then
    if [ "$PG_CHANGED" -eq 1 ]; then
      log "postgres: restarting cluster $PG_VER/$PG_CLUSTER to apply settings"
      as_root pg_ctlcluster --skip-systemctl-redirect "$PG_VER" "$PG_CLUSTER" restart >&2 9>&- \
        || { tail_log "$(pg_log)"; die "postgres restart failed"; }
    fi
  else
    log "postgres: starting cluster $PG_VER/$PG_CLUSTER"
    as_root pg_ctlcluster --skip-systemctl-redirect "$PG_VER" "$PG_CLUSTER" start >&2 9>&- \
      || { tail_log "$(pg_log)"; die "postgres failed to start"; }
  fi
  wait_for postgres pg_ready pg_running "$(pg_log)"
  pg_set_password
  wait_for postgres pg_query_ok pg_running "$(pg_log)"
  log "postgres: up on $HOST:$PG_PORT"
}

pg_stop() { # mode: fast (clean) or immediate (crash-like)
  local mode="${1:-fast}"
  pg_version || { log "postgres: not installed"; return 0; }
  if pg_running; then
    log "postgres: stopping ($mode)"
    as_root pg_ctlcluster --skip-systemctl-redirect "$PG_VER" "$PG_CLUSTER" stop -m "$mode" >&2 || true
  else
    log "postgres: not running"
  fi
}

# ---------------------------------------------------------------------------------------------
# Redis

redis_up() { [ "$(timeout 2 redis-cli -h "$HOST" -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]; }
redis_alive() { pid_alive "$REDIS_PID"; }

redis_start() {
  if command -v redis-cli >/dev/null 2>&1 && redis_up; then
    log "redis: already up"
    return 0
  fi
  command -v redis-server >/dev/null 2>&1 || apt_install redis-server
  mkdir -p "$RUN/redis"
  log "redis: starting"
  rm -f "$REDIS_PID"
  [ -f "$REDIS_LOG" ] && mv -f "$REDIS_LOG" "$REDIS_LOG.1"  # one run per log file
  redis-server --daemonize yes --bind "$HOST" --port "$REDIS_PORT" --save "" --appendonly no \
    --dir "$RUN/redis" --pidfile "$REDIS_PID" --logfile "$REDIS_LOG" >&2 9>&- \
    || { tail_log "$REDIS_LOG"; die "redis-server failed to start"; }
  # The pid file appears right after daemonizing; until then don't judge liveness by it.
  local t=$SECONDS
  while [ ! -f "$REDIS_PID" ] && (( SECONDS - t < 5 )); do sleep 0.05; done
  wait_for redis redis_up redis_alive "$REDIS_LOG"
  log "redis: up on $HOST:$REDIS_PORT"
}

redis_stop() { # mode: clean or kill
  local mode="${1:-clean}" pid=""
  [ -f "$REDIS_PID" ] && pid="$(cat "$REDIS_PID" 2>/dev/null || true)"
  if [ "$mode" = kill ]; then
    if [ -n "$pid" ] && proc_alive "$pid"; then
      log "redis: SIGKILL $pid"
      kill -9 "$pid" 2>/dev/null || true
    else
      log "redis: no pid to kill"
    fi
  elif redis_up; then
    log "redis: stopping"
    redis-cli -h "$HOST" -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
  else
    log "redis: not running"
  fi
  local t=$SECONDS
  while { redis_up || { [ -n "$pid" ] && proc_alive "$pid"; }; } && (( SECONDS - t < 20 )); do
    sleep 0.1
  done
  if [ -n "$pid" ] && proc_alive "$pid"; then kill -9 "$pid" 2>/dev/null || true; fi
  rm -f "$REDIS_PID"
}

# ---------------------------------------------------------------------------------------------
# Apache Kafka (KRaft, combined broker+controller)

kafka_java() { java -Xmx256m -XX:TieredStopAtLevel=1 -cp "$KAFKA_LIBS/*" "$@"; }

kafka_pom() {
  cat <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<!-- Generated by scripts/services.sh: only used to fetch the Kafka broker's classpath. -->
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.chat</groupId>
  <artifactId>kafka-broker-classpath</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>$KAFKA_VERSION</version>
    </dependency>
    <dependency>
      <!-- The published poms carry slf4j-api 1.7 but no binding (the release tarball ships
           one): without it the broker logs nothing at all (slf4j NOP logger). -->
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>$LOG4J_VERSION</version>
    </dependency>
    <dependency>
      <!-- kafka-topics & co. (org.apache.kafka.tools.*), handy for tests and debugging -->
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka-tools</artifactId>
      <version>$KAFKA_VERSION</version>
      <exclusions>
        <!-- Kafka Connect (Jetty, Jersey, ...) only serves the connect-plugin-path tool -->
        <exclusion>
          <groupId>org.apache.kafka</groupId>
          <artifactId>connect-runtime</artifactId>
        </exclusion>
      </exclusions>
    </dependency>
  </dependencies>
</project>
EOF
}

kafka_fetch_libs() {
  # The marker holds the pom's checksum: changing the pom (or a version) refetches.
  local pom_sum
  pom_sum="$(kafka_pom | sha256sum | cut -c1-16)"
  [ "$(cat "$KAFKA_LIBS/.complete" 2>/dev/null || true)" = "$pom_sum" ] && return 0
  if ! command -v java >/dev/null 2>&1 || ! command -v mvn >/dev/null 2>&1; then
    apt_install default-jre-headless maven
  fi
  local jv
  jv="$(java -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = //p')"
  [ "${jv%%.*}" -ge 17 ] 2>/dev/null || die "Kafka $KAFKA_VERSION needs Java 17+, found '$jv'"
  log "kafka: fetching Kafka $KAFKA_VERSION jars from Maven Central (once) into $KAFKA_LIBS"
  mkdir -p "$KAFKA_HOME"
  kafka_pom >"$KAFKA_HOME/pom.xml"
  rm -rf "$KAFKA_LIBS.tmp"
  mvn -B -Dstyle.color=never -f "$KAFKA_HOME/pom.xml" -Dmaven.repo.local="$CACHE/m2" \
    dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$KAFKA_LIBS.tmp" \
    >"$KAFKA_HOME/mvn.log" 2>&1 \
    || { tail_log "$KAFKA_HOME/mvn.log"; die "mvn could not fetch the Kafka jars (is Maven Central reachable?)"; }
  ls "$KAFKA_LIBS.tmp/kafka_2.13-$KAFKA_VERSION.jar" >/dev/null 2>&1 \
    || die "mvn ran but kafka_2.13-$KAFKA_VERSION.jar is missing from $KAFKA_LIBS.tmp"
  echo "$pom_sum" >"$KAFKA_LIBS.tmp/.complete"
  rm -rf "$KAFKA_LIBS"
  mv "$KAFKA_LIBS.tmp" "$KAFKA_LIBS"
  log "kafka: $(ls "$KAFKA_LIBS" | wc -l) jars, $(du -sh "$KAFKA_LIBS" | cut -f1)"
}

kafka_write_config() {
  mkdir -p "$KAFKA_DATA"
  cat >"$KAFKA_DIR/server.properties" <<EOF
# Generated by scripts/services.sh: a KRaft node (broker+controller) for tests.
process.roles=broker,controller
node.id=$KAFKA_NODE_ID
controller.quorum.voters=${KAFKA_VOTERS:-1@$HOST:$KAFKA_CONTROLLER_PORT}
listeners=PLAINTEXT://$HOST:$KAFKA_PORT,CONTROLLER://$HOST:$KAFKA_CONTROLLER_PORT${KAFKA_EXTRA_LISTENER:+,$KAFKA_EXTRA_LISTENER}
advertised.listeners=PLAINTEXT://$HOST:$KAFKA_PORT${KAFKA_EXTRA_LISTENER:+,$KAFKA_EXTRA_LISTENER}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT${KAFKA_EXTRA_PROTOCOL_MAP:+,$KAFKA_EXTRA_PROTOCOL_MAP}
log.dirs=$KAFKA_DATA
num.partitions=8
default.replication.factor=$KAFKA_RF
min.insync.replicas=$KAFKA_MIN_ISR
offsets.topic.replication.factor=$KAFKA_RF
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=$KAFKA_RF
transaction.state.log.min.isr=$KAFKA_MIN_ISR
transaction.state.log.num.partitions=8
share.coordinator.state.topic.replication.factor=$KAFKA_RF
share.coordinator.state.topic.min.isr=$KAFKA_MIN_ISR
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
delete.topic.enable=true
num.network.threads=${KAFKA_NETWORK_THREADS:-2}
num.io.threads=${KAFKA_IO_THREADS:-4}
log.retention.hours=24
log.segment.bytes=104857600
# After a crash (kill-one kafka) the new incarnation can only register once the old one's
# session expired: 9 s by default. Heartbeats stay frequent so a busy box does not fence it.
broker.session.timeout.ms=4000
broker.heartbeat.interval.ms=500
EOF
  [ -z "${KAFKA_EXTRA_PROPS:-}" ] || printf '%s\n' "$KAFKA_EXTRA_PROPS" >>"$KAFKA_DIR/server.properties"
  cat >"$KAFKA_DIR/log4j2.properties" <<EOF
# Generated by scripts/services.sh
status = warn
name = chat-kafka
# Kafka logs its own shutdown from a JVM shutdown hook: keep the appender open for it.
shutdownHook = disable
appender.file.type = File
appender.file.name = file
appender.file.fileName = $KAFKA_LOG
appender.file.append = true
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
logger.cleaner.name = kafka.log.LogCleaner
logger.cleaner.level = WARN
logger.authorizer.name = kafka.authorizer.logger
logger.authorizer.level = WARN
EOF
}

# A Kafka cluster id is 16 random bytes, base64url without padding (org.apache.kafka.common.Uuid);
# made here to spare a JVM start.
kafka_random_uuid() {
  local id
  while :; do
    id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
    [ "${id:0:1}" != "-" ] && [ "$id" != "AAAAAAAAAAAAAAAAAAAAAA" ] && [ "$id" != "AAAAAAAAAAAAAAAAAAAAAQ" ] && break
  done
  printf '%s' "$id"
}

# Sends a Metadata v4 request (no topics) over bash's /dev/tcp and checks that the answer lists
# at least one broker: the port is open AND the broker serves requests, without a JVM.
kafka_serving() {
  local out
  # shellcheck disable=SC2016 # $0/$1 expand in the inner shell
  out="$(timeout 3 bash -c '
    exec 3<>"/dev/tcp/$0/$1" || exit 1
    # size=18 | api_key=3 (Metadata) | version=4 | correlation_id=7 | client_id="svc"
    # | topics=[] (empty, not null: no topic data) | allow_auto_topic_creation=false
    printf "\x00\x00\x00\x12\x00\x03\x00\x04\x00\x00\x00\x07\x00\x03svc\x00\x00\x00\x00\x00" >&3
    od -An -tx1 -N16 <&3' "$HOST" "$KAFKA_PORT" 2>/dev/null)" || return 1
  # response: size(4) correlation_id(4) throttle_time_ms(4) broker_count(4)
  # shellcheck disable=SC2086 # split the hex bytes into $1..$16
  set -- $out
  [ "$#" -eq 16 ] || return 1
  [ "$5$6$7$8" = 00000007 ] || return 1
  [ "${13}${14}${15}${16}" != 00000000 ]
}
kafka_up() { port_open "$KAFKA_PORT" && kafka_serving; }
kafka_alive() { pid_alive "$KAFKA_PID"; }

kafka_start() {
  if kafka_up; then
    log "kafka: already up"
    return 0
  fi
  if kafka_alive; then
    log "kafka: process $(cat "$KAFKA_PID") is alive but not serving yet; waiting"
  else
    kafka_fetch_libs
    kafka_write_config
    if [ ! -f "$KAFKA_DATA/meta.properties" ]; then
      local id="$KAFKA_CLUSTER_ID"
      [ -n "$id" ] || id="$(kafka_random_uuid)"
      log "kafka: formatting storage (cluster id $id)"
      kafka_java kafka.tools.StorageTool format -t "$id" -c "$KAFKA_DIR/server.properties" \
        --ignore-formatted "${KAFKA_FORMAT_EXTRA[@]}" >"$RUN/kafka-format.log" 2>&1 \
        || { tail_log "$RUN/kafka-format.log"; die "kafka storage format failed"; }
    fi
    log "kafka: starting broker $KAFKA_VERSION"
    rm -f "$KAFKA_PID"
    # One run per log file; the previous run's stays in *.1.
    [ -f "$KAFKA_LOG" ] && mv -f "$KAFKA_LOG" "$KAFKA_LOG.1"
    [ -f "$KAFKA_OUT" ] && mv -f "$KAFKA_OUT" "$KAFKA_OUT.1"
    : >"$KAFKA_OUT"
    # setsid: own session, so the broker outlives the shell/job that started it.
    # shellcheck disable=SC2016 # expanded by the inner shell, from the environment
    KAFKA_LIBS="$KAFKA_LIBS" KAFKA_DIR="$KAFKA_DIR" KAFKA_PID="$KAFKA_PID" RUN="$RUN" \
      KAFKA_HEAP="$KAFKA_HEAP" \
      setsid nohup bash -c 'cd "$RUN" || exit 1; echo $$ >"$KAFKA_PID"; exec java $KAFKA_HEAP -XX:+UseG1GC \
        -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$KAFKA_DIR/log4j2.properties" -Dkafka.logs.dir="$RUN" \
        -cp "$KAFKA_LIBS/*" kafka.Kafka "$KAFKA_DIR/server.properties"' \
      >>"$KAFKA_OUT" 2>&1 </dev/null 9>&- &
    local t=$SECONDS
    while [ ! -s "$KAFKA_PID" ] && (( SECONDS - t < 5 )); do sleep 0.05; done
  fi
  wait_for kafka kafka_up kafka_alive "$KAFKA_OUT" "$KAFKA_LOG"
  log "kafka: up on $KAFKA_BROKERS"
}

kafka_stop() { # mode: clean or kill
  local mode="${1:-clean}" pid
  if ! kafka_alive; then
    if port_open "$KAFKA_PORT"; then
      log "kafka: something answers on $KAFKA_PORT but $KAFKA_PID has no live pid; not touching it"
    else
      log "kafka: not running"
    fi
    rm -f "$KAFKA_PID"
    return 0
  fi
  pid="$(cat "$KAFKA_PID")"
  if [ "$mode" = kill ]; then
    log "kafka: SIGKILL $pid"
    kill -9 "$pid" 2>/dev/null || true
  else
    log "kafka: stopping (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
  fi
  local t=$SECONDS
  while proc_alive "$pid"; do
    if (( SECONDS - t >= 60 )); then
      log "kafka: still alive after 60s, SIGKILL"
      kill -9 "$pid" 2>/dev/null || true
    fi
    sleep 0.2
  done
  rm -f "$KAFKA_PID"
}

# ---------------------------------------------------------------------------------------------
# TLS profile: beside the plain services, PostgreSQL, Redis and Kafka that speak only TLS
# and only with a password, as managed services do. One test CA and one
# server certificate for 127.0.0.1 (IP SAN only, so a connection by `localhost` fails the host
# name check), made with openssl under $TLS_DIR/certs; a second, unrelated CA for the tests of
# a wrong CA file.
#   PostgreSQL: Debian cluster `tls` on $TLS_PG_PORT, ssl=on, `hostssl … scram-sha-256` only
#               (plaintext rejected), superuser postgres / postgres.
#   Redis:      TLS port $TLS_REDIS_PORT only (--port 0), --tls-auth-clients no (password
#               auth, no client certificates), ACL file: `default` (admin, all keys) and
#               `chat`, limited to keys and channels `tls*` and to the commands chat needs
#               (README, "Redis ACL").
#   Kafka:      a broker of its own (KRaft, state in $TLS_DIR/kafka-run), SASL_SSL on
#               $TLS_KAFKA_PORT (the same server certificate, in a PKCS12 keystore; PLAIN,
#               SCRAM-SHA-256 and SCRAM-SHA-512, user `chat`, SCRAM credentials made when the
#               storage is formatted); its plaintext listener ($TLS_KAFKA_INTERNAL_PORT) is
#               for the broker itself (and the health check) only.

TLS_DIR="$CACHE/run-tls"
TLS_CERTS="$TLS_DIR/certs"
TLS_PG_CLUSTER=tls
TLS_PG_PORT=5441
TLS_REDIS_PORT=6390
TLS_REDIS_DIR="$TLS_DIR/redis"
TLS_REDIS_PID="$TLS_REDIS_DIR/redis.pid"
TLS_REDIS_LOG="$TLS_REDIS_DIR/redis.log"
TLS_KAFKA_PORT=9098
TLS_KAFKA_INTERNAL_PORT=9096
TLS_KAFKA_CONTROLLER_PORT=9097
TLS_KAFKA_RUN="$TLS_DIR/kafka-run"
TLS_KAFKA_USER=chat
TLS_KAFKA_PASS=chat-kafka-secret
TLS_KAFKA_KEYSTORE_PASS=chat-keystore
TLS_REDIS_ADMIN_PASS=chat-admin-secret
TLS_REDIS_CHAT_PASS=chat-redis-secret
# What chat sends (src/bus, src/coord and their Lua scripts): README lists the same.
TLS_REDIS_CHAT_COMMANDS="+hello +auth +ping +publish +subscribe +unsubscribe +evalsha +script|load \
+get +set +del +exists +incr +pexpire +zadd +zcard +zcount +zrange +zrem +zremrangebyscore"

tls_certs() {
  [ -s "$TLS_CERTS/server.pem" ] && [ -s "$TLS_CERTS/other-ca.pem" ] \
    && openssl x509 -checkend 86400 -noout -in "$TLS_CERTS/server.pem" >/dev/null 2>&1 && return 0
  command -v openssl >/dev/null 2>&1 || apt_install openssl
  log "tls: making a test CA and a server certificate for $HOST in $TLS_CERTS"
  rm -rf "$TLS_CERTS.tmp" && mkdir -p "$TLS_CERTS.tmp"
  (
    cd "$TLS_CERTS.tmp"
    openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj "/CN=chat-test-ca" \
      -keyout ca.key -out ca.pem 2>/dev/null
    openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj "/CN=chat-other-ca" \
      -keyout other-ca.key -out other-ca.pem 2>/dev/null
    printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:%s\n' \
      "$HOST" >server.ext
    openssl req -newkey rsa:2048 -nodes -subj "/CN=$HOST" -keyout server.key -out server.csr 2>/dev/null
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 365 \
      -extfile server.ext -out server.pem 2>/dev/null
    chmod 600 ./*.key
  ) || die "openssl could not make the test certificates"
  rm -rf "$TLS_CERTS" && mv "$TLS_CERTS.tmp" "$TLS_CERTS"
  TLS_CERTS_NEW=1
}
TLS_CERTS_NEW=0

tls_pg_query_ok() {
  PGPASSWORD=postgres PGCONNECT_TIMEOUT=3 timeout 5 psql \
    "host=$HOST port=$TLS_PG_PORT user=postgres dbname=postgres sslmode=verify-full sslrootcert=$TLS_CERTS/ca.pem" \
    -XtAqc 'select 1' >/dev/null 2>&1
}
tls_pg_running() {
  local pidfile="/var/lib/postgresql/$PG_VER/$TLS_PG_CLUSTER/postmaster.pid" pid
  [ -f "$pidfile" ] || return 1
  pid="$(head -n 1 "$pidfile" 2>/dev/null)" || return 1
  [ -n "$pid" ] && proc_alive "$pid"
}
tls_pg_ready() { pg_isready -q -h "$HOST" -p "$TLS_PG_PORT" -t 2 >/dev/null 2>&1; }
tls_pg_log() { echo "/var/log/postgresql/postgresql-$PG_VER-$TLS_PG_CLUSTER.log"; }

tls_pg_start() {
  pg_install # the packages and the main cluster's version
  local confdir="/etc/postgresql/$PG_VER/$TLS_PG_CLUSTER" changed=0 want
  if [ ! -d "$confdir" ]; then
    log "creating PostgreSQL cluster $PG_VER/$TLS_PG_CLUSTER (TLS only)"
    as_root pg_createcluster -p "$TLS_PG_PORT" "$PG_VER" "$TLS_PG_CLUSTER" >&2
  fi
  # The server's certificate and key, readable by postgres only (PostgreSQL insists).
  if [ "$TLS_CERTS_NEW" -eq 1 ] || ! as_root cmp -s "$TLS_CERTS/server.pem" "$confdir/server.pem"; then
    as_root install -o postgres -g postgres -m 0644 "$TLS_CERTS/server.pem" "$confdir/server.pem"
    as_root install -o postgres -g postgres -m 0600 "$TLS_CERTS/server.key" "$confdir/server.key"
    changed=1
  fi
  want="# written by scripts/services.sh (chat TLS tests)
listen_addresses = '$HOST'
port = $TLS_PG_PORT
max_connections = 200
shared_buffers = 64MB
password_encryption = scram-sha-256
ssl = on
ssl_cert_file = '$confdir/server.pem'
ssl_key_file = '$confdir/server.key'
ssl_min_protocol_version = 'TLSv1.2'
"
  as_root mkdir -p "$confdir/conf.d"
  if [ "$(cat "$confdir/conf.d/zz-chat.conf" 2>/dev/null || true)" != "${want%$'\n'}" ]; then
    printf '%s' "$want" | as_root tee "$confdir/conf.d/zz-chat.conf" >/dev/null
    changed=1
  fi
  want="# written by scripts/services.sh: TLS and a password, or nothing
local   all all                peer
hostssl all all 127.0.0.1/32   scram-sha-256
host    all all 127.0.0.1/32   reject
host    all all ::1/128        reject"
  if [ "$(cat "$confdir/pg_hba.conf" 2>/dev/null || true)" != "$want" ]; then
    printf '%s\n' "$want" | as_root tee "$confdir/pg_hba.conf" >/dev/null
    as_root chown postgres:postgres "$confdir/pg_hba.conf"
    changed=1
  fi
  if [ "$changed" -eq 0 ] && tls_pg_query_ok; then
    log "postgres-tls: already up"
    return 0
  fi
  as_root install -d -o postgres -g postgres -m 2775 /var/run/postgresql
  if tls_pg_running; then
    log "postgres-tls: restarting to apply settings"
    as_root pg_ctlcluster --skip-systemctl-redirect "$PG_VER" "$TLS_PG_CLUSTER" restart >&2 9>&- \
      || { tail_log "$(tls_pg_log)"; die "postgres-tls restart failed"; }
  else
    log "postgres-tls: starting cluster $PG_VER/$TLS_PG_CLUSTER"
    as_root pg_ctlcluster --skip-systemctl-redirect "$PG_VER" "$TLS_PG_CLUSTER" start >&2 9>&- \
      || { tail_log "$(tls_pg_log)"; die "postgres-tls failed to start"; }
  fi
  wait_for postgres-tls tls_pg_ready tls_pg_running "$(tls_pg_log)"
  if ! tls_pg_query_ok; then
    as_postgres psql -p "$TLS_PG_PORT" -XqAt -c "ALTER USER postgres WITH PASSWORD 'postgres'" >/dev/null
  fi
  wait_for postgres-tls tls_pg_query_ok tls_pg_running "$(tls_pg_log)"
  log "postgres-tls: up on $HOST:$TLS_PG_PORT (TLS only)"
}

tls_redis_cli() { # as the admin user
  timeout 3 redis-cli --tls --cacert "$TLS_CERTS/ca.pem" -h "$HOST" -p "$TLS_REDIS_PORT" \
    --user default --pass "$TLS_REDIS_ADMIN_PASS" --no-auth-warning "$@"
}
tls_redis_up() { [ "$(tls_redis_cli ping 2>/dev/null)" = PONG ]; }
tls_redis_alive() { pid_alive "$TLS_REDIS_PID"; }

tls_redis_start() {
  command -v redis-server >/dev/null 2>&1 || apt_install redis-server
  mkdir -p "$TLS_REDIS_DIR"
  local acl="$TLS_REDIS_DIR/users.acl" want
  want="user default on >$TLS_REDIS_ADMIN_PASS ~* &* +@all
user chat on >$TLS_REDIS_CHAT_PASS resetkeys ~tls*:* resetchannels &tls*:* -@all $TLS_REDIS_CHAT_COMMANDS"
  if [ "$TLS_CERTS_NEW" -eq 0 ] && [ "$(cat "$acl" 2>/dev/null || true)" = "$want" ] && tls_redis_up; then
    log "redis-tls: already up"
    return 0
  fi
  if tls_redis_alive; then
    log "redis-tls: restarting to apply settings"
    kill "$(cat "$TLS_REDIS_PID")" 2>/dev/null || true
    local t=$SECONDS
    while tls_redis_alive && (( SECONDS - t < 10 )); do sleep 0.1; done
  fi
  printf '%s\n' "$want" >"$acl"
  rm -f "$TLS_REDIS_PID"
  [ -f "$TLS_REDIS_LOG" ] && mv -f "$TLS_REDIS_LOG" "$TLS_REDIS_LOG.1"
  log "redis-tls: starting"
  redis-server --daemonize yes --bind "$HOST" --port 0 --tls-port "$TLS_REDIS_PORT" \
    --tls-cert-file "$TLS_CERTS/server.pem" --tls-key-file "$TLS_CERTS/server.key" \
    --tls-ca-cert-file "$TLS_CERTS/ca.pem" --tls-auth-clients no --aclfile "$acl" \
    --save "" --appendonly no --dir "$TLS_REDIS_DIR" --pidfile "$TLS_REDIS_PID" \
    --logfile "$TLS_REDIS_LOG" >&2 9>&- \
    || { tail_log "$TLS_REDIS_LOG"; die "redis-server (TLS) failed to start"; }
  local t=$SECONDS
  while [ ! -f "$TLS_REDIS_PID" ] && (( SECONDS - t < 5 )); do sleep 0.05; done
  wait_for redis-tls tls_redis_up tls_redis_alive "$TLS_REDIS_LOG"
  log "redis-tls: up on $HOST:$TLS_REDIS_PORT (TLS only)"
}

# The TLS broker: kafka_start with its own ports, state and listeners (in a subshell, so the
# plain broker's settings stay as they are).
tls_kafka_env() {
  RUN="$TLS_KAFKA_RUN"
  KAFKA_DIR="$RUN/kafka" KAFKA_DATA="$RUN/kafka/data" KAFKA_PID="$RUN/kafka.pid"
  KAFKA_LOG="$RUN/kafka.log" KAFKA_OUT="$RUN/kafka.out"
  KAFKA_PORT=$TLS_KAFKA_INTERNAL_PORT KAFKA_CONTROLLER_PORT=$TLS_KAFKA_CONTROLLER_PORT
  KAFKA_BROKERS="$HOST:$TLS_KAFKA_PORT (SASL_SSL)"
  KAFKA_HEAP="-Xms128m -Xmx384m"
  KAFKA_EXTRA_LISTENER="SASL_SSL://$HOST:$TLS_KAFKA_PORT"
  KAFKA_EXTRA_PROTOCOL_MAP="SASL_SSL:SASL_SSL"
  KAFKA_EXTRA_PROPS="ssl.keystore.type=PKCS12
ssl.keystore.location=$RUN/broker.p12
ssl.keystore.password=$TLS_KAFKA_KEYSTORE_PASS
ssl.key.password=$TLS_KAFKA_KEYSTORE_PASS
sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512
listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_$TLS_KAFKA_USER=\"$TLS_KAFKA_PASS\";
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;"
  KAFKA_FORMAT_EXTRA=(
    --add-scram "SCRAM-SHA-256=[name=$TLS_KAFKA_USER,password=$TLS_KAFKA_PASS]"
    --add-scram "SCRAM-SHA-512=[name=$TLS_KAFKA_USER,password=$TLS_KAFKA_PASS]"
  )
}

tls_kafka_start() (
  tls_kafka_env
  mkdir -p "$RUN"
  # The server certificate and key of the other TLS services, as a PKCS12 keystore with
  # the CA in its chain.
  if [ "$TLS_CERTS_NEW" -eq 1 ] || [ ! -s "$RUN/broker.p12" ]; then
    if kafka_alive; then kafka_stop clean; fi
    openssl pkcs12 -export -in "$TLS_CERTS/server.pem" -inkey "$TLS_CERTS/server.key" \
      -certfile "$TLS_CERTS/ca.pem" -name broker -out "$RUN/broker.p12.tmp" \
      -passout "pass:$TLS_KAFKA_KEYSTORE_PASS" \
      || die "openssl could not make the Kafka keystore"
    mv "$RUN/broker.p12.tmp" "$RUN/broker.p12"
  fi
  kafka_start
)

tls_kafka_stop() (
  tls_kafka_env
  kafka_stop clean
)

tls_kafka_up() (
  tls_kafka_env
  kafka_up && port_open "$TLS_KAFKA_PORT"
)

tls_start() {
  tls_certs
  tls_pg_start
  tls_redis_start
  tls_kafka_start
}

tls_stop() {
  if pg_version && tls_pg_running; then
    log "postgres-tls: stopping"
    as_root pg_ctlcluster --skip-systemctl-redirect "$PG_VER" "$TLS_PG_CLUSTER" stop -m fast >&2 || true
  fi
  if tls_redis_alive; then
    log "redis-tls: stopping"
    kill "$(cat "$TLS_REDIS_PID")" 2>/dev/null || true
  fi
  tls_kafka_stop
}

print_tls_urls() {
  [ -s "$TLS_CERTS/ca.pem" ] || return 0
  echo "TLS_DATABASE_URL=postgres://postgres:postgres@$HOST:$TLS_PG_PORT/postgres?sslmode=verify-full"
  echo "TLS_REDIS_URL=rediss://chat:$TLS_REDIS_CHAT_PASS@$HOST:$TLS_REDIS_PORT"
  echo "TLS_REDIS_ADMIN_URL=rediss://default:$TLS_REDIS_ADMIN_PASS@$HOST:$TLS_REDIS_PORT"
  echo "TLS_CA_FILE=$TLS_CERTS/ca.pem"
  echo "TLS_OTHER_CA_FILE=$TLS_CERTS/other-ca.pem"
  echo "TLS_KAFKA_BROKERS=$HOST:$TLS_KAFKA_PORT"
  echo "TLS_KAFKA_USERNAME=$TLS_KAFKA_USER"
  echo "TLS_KAFKA_PASSWORD=$TLS_KAFKA_PASS"
  echo "TLS_KAFKA_ADMIN_BROKERS=$HOST:$TLS_KAFKA_INTERNAL_PORT"
}

# ---------------------------------------------------------------------------------------------
# Redis Cluster: 6 local nodes (3 masters + 1 replica each) on $RC_FIRST_PORT.. (7000-7005),
# for `--redis-cluster-nodes`. Fast failover (node timeout 2 s), no persistence; state in
# $RUN/redis-cluster/<port>/. Its own lock, so a fault test can kill and restart a node while
# another services.sh command holds the main lock. Never touches the single Redis or the TLS one.

RC_DIR="$RUN/redis-cluster"
RC_PORTS=()
for ((i = 0; i < 6; i++)); do RC_PORTS+=($((RC_FIRST_PORT + i))); done

rc_cli() { timeout 3 redis-cli -h "$HOST" -p "$@"; }
rc_node_up() { [ "$(rc_cli "$1" ping 2>/dev/null)" = PONG ]; }
rc_node_alive() { pid_alive "$RC_DIR/$1/redis.pid"; }
rc_state_ok() { rc_cli "$1" cluster info 2>/dev/null | grep -q '^cluster_state:ok'; }

# Healthy: every node answers and sees the cluster ok, with 3 masters that each have a replica.
rc_healthy() {
  local p masters
  for p in "${RC_PORTS[@]}"; do
    rc_node_up "$p" && rc_state_ok "$p" || return 1
  done
  masters="$(rc_cli "${RC_PORTS[0]}" cluster nodes 2>/dev/null | grep -v fail | grep -c master || true)"
  [ "$masters" = 3 ] || return 1
  [ "$(rc_cli "${RC_PORTS[0]}" cluster nodes 2>/dev/null | grep -v fail | grep -c slave || true)" = 3 ]
}

rc_all_ok() {
  local p
  for p in "${RC_PORTS[@]}"; do rc_state_ok "$p" || return 1; done
}

rc_node_start() { # port: starts it with its existing nodes.conf (it rejoins as it was, or as a replica)
  local p="$1"
  mkdir -p "$RC_DIR/$p"
  rm -f "$RC_DIR/$p/redis.pid"
  [ -f "$RC_DIR/$p/redis.log" ] && mv -f "$RC_DIR/$p/redis.log" "$RC_DIR/$p/redis.log.1"
  redis-server --daemonize yes --bind "$HOST" --port "$p" --cluster-enabled yes \
    --cluster-config-file nodes.conf --cluster-node-timeout 2000 \
    --cluster-require-full-coverage no --save "" --appendonly no \
    --dir "$RC_DIR/$p" --pidfile "$RC_DIR/$p/redis.pid" --logfile "$RC_DIR/$p/redis.log" >&2 8>&- 9>&- \
    || { tail_log "$RC_DIR/$p/redis.log"; die "redis-cluster: node $p failed to start"; }
  local t=$SECONDS
  while [ ! -f "$RC_DIR/$p/redis.pid" ] && (( SECONDS - t < 5 )); do sleep 0.05; done
  # shellcheck disable=SC2317 # (called through wait_for)
  rc_this_up() { rc_node_up "$p"; }
  rc_this_alive() { rc_node_alive "$p"; }
  wait_for "redis-cluster node $p" rc_this_up rc_this_alive "$RC_DIR/$p/redis.log"
}

rc_node_kill() { # port
  local p="$1" pid=""
  [ -f "$RC_DIR/$p/redis.pid" ] && pid="$(cat "$RC_DIR/$p/redis.pid" 2>/dev/null || true)"
  if [ -n "$pid" ] && proc_alive "$pid"; then
    log "redis-cluster: SIGKILL node $p (pid $pid)"
    kill -9 "$pid" 2>/dev/null || true
    local t=$SECONDS
    while proc_alive "$pid" && (( SECONDS - t < 10 )); do sleep 0.05; done
  fi
  rm -f "$RC_DIR/$p/redis.pid"
}

rc_stop() { # cleanly (SHUTDOWN NOSAVE), a node that does not go within 5 s with SIGKILL
  local p pid t
  for p in "${RC_PORTS[@]}"; do
    pid="$(cat "$RC_DIR/$p/redis.pid" 2>/dev/null || true)"
    if [ -n "$pid" ] && proc_alive "$pid"; then
      rc_cli "$p" shutdown nosave >/dev/null 2>&1 || true
      t=$SECONDS
      while proc_alive "$pid" && (( SECONDS - t < 5 )); do sleep 0.05; done
    fi
    rc_node_kill "$p"
  done
}

rc_start() {
  command -v redis-server >/dev/null 2>&1 || apt_install redis-server
  if rc_healthy; then
    log "redis-cluster: already up"
    return 0
  fi
  local p addrs=()
  # Half there (a node down, not formed, a failed create): wipe and form it afresh.
  log "redis-cluster: (re)creating on $HOST:${RC_PORTS[0]}-${RC_PORTS[5]}"
  rc_stop
  rm -rf "$RC_DIR"
  mkdir -p "$RC_DIR"
  for p in "${RC_PORTS[@]}"; do
    rc_node_start "$p"
    addrs+=("$HOST:$p")
  done
  redis-cli --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes >"$RC_DIR/create.log" 2>&1 \
    || { cat "$RC_DIR/create.log" >&2; die "redis-cluster: create failed"; }
  wait_for redis-cluster rc_healthy "" "$RC_DIR/${RC_PORTS[0]}/redis.log"
  wait_for redis-cluster rc_all_ok "" "$RC_DIR/${RC_PORTS[0]}/redis.log"
  log "redis-cluster: up ($(rc_nodes_url))"
}

rc_nodes_url() {
  local p out=""
  for p in "${RC_PORTS[@]}"; do out="${out:+$out,}redis://$HOST:$p"; done
  echo "$out"
}

# The master port that owns a slot, a key's slot, or a port given as is.
rc_master_of() { # SLOT | PORT | key:NAME
  local arg="$1" slot="" p
  case "$arg" in
    key:*)
      for p in "${RC_PORTS[@]}"; do
        slot="$(rc_cli "$p" cluster keyslot "${arg#key:}" 2>/dev/null)" && break
      done
      ;;
    *)
      if (( arg >= RC_FIRST_PORT && arg < RC_FIRST_PORT + 6 )); then echo "$arg"; return 0; fi
      slot="$arg"
      ;;
  esac
  [ -n "$slot" ] || return 1
  for p in "${RC_PORTS[@]}"; do
    rc_node_up "$p" || continue
    # CLUSTER NODES: id ip:port@bus flags master ping pong epoch link slot-range...
    rc_cli "$p" cluster nodes 2>/dev/null | awk -v s="$slot" '
      $3 ~ /master/ && $3 !~ /fail/ {
        for (i = 9; i <= NF; i++) {
          if ($i ~ /^\[/) continue
          n = split($i, r, "-"); lo = r[1]; hi = (n == 2 ? r[2] : r[1])
          if (s + 0 >= lo + 0 && s + 0 <= hi + 0) { split($2, a, "@"); split(a[1], h, ":"); print h[2]; exit }
        }
      }' | grep . && return 0
  done
  return 1
}

rc_print_url() {
  # Not under chat's own name: every chat started from an environment that evals `env`
  # would pick it up (beside REDIS_URL, which it refuses). As CLUSTER_KAFKA_BROKERS.
  rc_all_ok 2>/dev/null && echo "CLUSTER_REDIS_NODES=$(rc_nodes_url)"
  return 0
}

rc_status() {
  if rc_healthy; then
    echo "redis-cluster: up ($HOST:${RC_PORTS[0]}-${RC_PORTS[5]}, 3 masters + 3 replicas)"
  else
    local p up=0
    for p in "${RC_PORTS[@]}"; do rc_node_up "$p" && up=$((up + 1)); done
    echo "redis-cluster: down ($up of 6 nodes answer)"
  fi
}

rc_main() { # the redis-cluster commands, under their own lock
  mkdir -p "$RC_DIR"
  exec 8>"$RUN/.redis-cluster.lock"
  flock -w 120 8 || die "another scripts/services.sh holds $RUN/.redis-cluster.lock"
  case "$1" in
    start-redis-cluster) rc_start; rc_print_url ;;
    stop-redis-cluster) rc_stop; log "redis-cluster: stopped" ;;
    redis-cluster-kill-master)
      [ -n "${2:-}" ] || die "usage: $0 redis-cluster-kill-master SLOT|PORT|key:NAME"
      local port
      port="$(rc_master_of "$2")" || die "redis-cluster: no master found for $2"
      [ -n "$port" ] || die "redis-cluster: no master found for $2"
      rc_node_kill "$port"
      echo "$port"
      ;;
    redis-cluster-restart-node)
      [ -n "${2:-}" ] || die "usage: $0 redis-cluster-restart-node PORT"
      rc_node_alive "$2" && { log "redis-cluster: node $2 already running"; return 0; }
      log "redis-cluster: restarting node $2 (it rejoins as a replica)"
      rc_node_start "$2"
      ;;
  esac
}

# ---------------------------------------------------------------------------------------------
# Kafka cluster profile: three KRaft nodes, each broker and controller (as a small production
# cluster runs), replication factor 3 and min.insync.replicas=2, beside the single broker.
# Node n (1..3) serves clients on 290n2-style ports: 29092, 29192, 29292 (controllers on
# 29093, 29193, 29293); state in $KCL_DIR/n<n>. Used by the fault tests at N (tests/faults,
# `at_n`) and the cluster bench.
KCL_DIR="$RUN/kafka-cluster"
KCL_NODES="1 2 3"
kcl_port() { echo $((29092 + ($1 - 1) * 100)); }
kcl_brokers() {
  local n out=""
  for n in $KCL_NODES; do out="${out:+$out,}$HOST:$(kcl_port "$n")"; done
  echo "$out"
}
kcl_voters() {
  local n out=""
  for n in $KCL_NODES; do out="${out:+$out,}$n@$HOST:$(( $(kcl_port "$n") + 1 ))"; done
  echo "$out"
}

# Node n's settings for kafka_start/kafka_stop (call in a subshell).
kcl_env() {
  local n="$1"
  RUN="$KCL_DIR/n$n"
  KAFKA_DIR="$RUN/kafka" KAFKA_DATA="$RUN/kafka/data" KAFKA_PID="$RUN/kafka.pid"
  KAFKA_LOG="$RUN/kafka.log" KAFKA_OUT="$RUN/kafka.out"
  KAFKA_PORT="$(kcl_port "$n")" KAFKA_CONTROLLER_PORT=$(( $(kcl_port "$n") + 1 ))
  KAFKA_BROKERS="$HOST:$KAFKA_PORT"
  KAFKA_HEAP="-Xms128m -Xmx384m"
  KAFKA_NODE_ID="$n" KAFKA_VOTERS="$(kcl_voters)" KAFKA_RF=3 KAFKA_MIN_ISR=2
  KAFKA_NETWORK_THREADS=1 KAFKA_IO_THREADS=2
  mkdir -p "$RUN"
  # One cluster id for the three, made once (formatting is per node, with the same id).
  [ -s "$KCL_DIR/cluster.id" ] || kafka_random_uuid >"$KCL_DIR/cluster.id"
  KAFKA_CLUSTER_ID="$(cat "$KCL_DIR/cluster.id")"
}

kcl_node_up() ( kcl_env "$1"; kafka_up )

# Starts the nodes that are not serving, all at once (a node serves only once a quorum of
# controllers is there, so they cannot be started one after another), and waits for each.
kcl_start() {
  mkdir -p "$KCL_DIR"
  kafka_fetch_libs
  local n pids=() rc=0 nodes="${*:-$KCL_NODES}"
  for n in $nodes; do
    ( kcl_env "$n"; kafka_start ) &
    pids+=($!)
  done
  for n in "${pids[@]}"; do wait "$n" || rc=1; done
  [ "$rc" -eq 0 ] || die "kafka cluster: a node did not start (logs in $KCL_DIR/n*/kafka.out, kafka.log)"
  log "kafka cluster: up on $(kcl_brokers)"
}

# mode: clean or kill. Without a quorum, a clean stop waits for the controller forever: the
# nodes are stopped all at once, and kafka_stop turns to SIGKILL after its bounded wait.
kcl_stop() {
  local mode="$1" n pids=() nodes
  shift
  nodes="${*:-$KCL_NODES}"
  for n in $nodes; do
    ( kcl_env "$n"; kafka_stop "$mode" ) &
    pids+=($!)
  done
  for n in "${pids[@]}"; do wait "$n" || true; done
}

kcl_check_node() {
  case " $KCL_NODES " in *" ${1:-} "*) ;; *) die "unknown cluster node '${1:-}' (1|2|3)" ;; esac
}

# ---------------------------------------------------------------------------------------------

print_urls() {
  echo "DATABASE_URL=$DATABASE_URL"
  echo "REDIS_URL=$REDIS_URL"
  echo "KAFKA_BROKERS=$KAFKA_BROKERS"
}

check_name() {
  case "${1:-}" in
    postgres | redis | kafka) ;;
    *) die "unknown service '${1:-}' (postgres|redis|kafka)" ;;
  esac
}

cmd_status() {
  local rc=0
  if pg_up; then echo "postgres: up ($HOST:$PG_PORT)"; else echo "postgres: down"; rc=1; fi
  if command -v redis-cli >/dev/null 2>&1 && redis_up; then
    echo "redis: up ($HOST:$REDIS_PORT)"
  else
    echo "redis: down"; rc=1
  fi
  if kafka_up; then
    echo "kafka: up ($KAFKA_BROKERS)"
  elif kafka_alive; then
    echo "kafka: down (process $(cat "$KAFKA_PID") alive, not serving)"; rc=1
  else
    echo "kafka: down"; rc=1
  fi
  return $rc
}

main() {
  local cmd="${1:-}"
  mkdir -p "$RUN"
  case "$cmd" in
    start | stop | start-one | stop-one | kill-one | start-tls | stop-tls | start-kafka-cluster | stop-kafka-cluster)
      # One of these at a time (parallel test runs would otherwise race to start a second broker).
      # Daemons are started with 9>&- so they do not inherit (and hold) this lock.
      exec 9>"$RUN/.lock"
      flock -w 300 9 || die "another scripts/services.sh holds $RUN/.lock"
      ;;
  esac
  case "$cmd" in
    start)
      pg_start
      redis_start
      kafka_start
      print_urls
      ;;
    stop)
      kafka_stop
      redis_stop
      pg_stop fast
      ;;
    status)
      cmd_status || rc=$?
      if [ -s "$TLS_CERTS/ca.pem" ]; then
        if pg_version && tls_pg_query_ok; then echo "postgres-tls: up ($HOST:$TLS_PG_PORT)"; else echo "postgres-tls: down"; fi
        if tls_redis_up; then echo "redis-tls: up ($HOST:$TLS_REDIS_PORT)"; else echo "redis-tls: down"; fi
        if tls_kafka_up; then echo "kafka-tls: up ($HOST:$TLS_KAFKA_PORT, SASL_SSL)"; else echo "kafka-tls: down"; fi
      fi
      [ -d "$RC_DIR" ] && rc_status
      if [ -d "$KCL_DIR" ]; then
        for n in $KCL_NODES; do
          if kcl_node_up "$n"; then echo "kafka-cluster node $n: up ($HOST:$(kcl_port "$n"))"; else echo "kafka-cluster node $n: down"; fi
        done
      fi
      return "${rc:-0}"
      ;;
    env)
      {
        print_urls
        print_tls_urls
        if kcl_node_up 1 || kcl_node_up 2 || kcl_node_up 3; then
          echo "CLUSTER_KAFKA_BROKERS=$(kcl_brokers)"
        fi
        rc_print_url
      } | sed 's/^/export /'
      ;;
    start-kafka-cluster) kcl_start ;;
    stop-kafka-cluster) kcl_stop clean ;;
    kafka-cluster-node)
      # kafka-cluster-node start|stop|kill N: one node of the cluster (fault tests).
      kcl_check_node "${3:-}"
      case "${2:-}" in
        start) kcl_start "$3" ;;
        stop) kcl_stop clean "$3" ;;
        kill) kcl_stop kill "$3" ;;
        *) die "usage: $0 kafka-cluster-node start|stop|kill N" ;;
      esac
      ;;
    start-tls)
      tls_start
      print_tls_urls
      ;;
    stop-tls) tls_stop ;;
    start-redis-cluster | stop-redis-cluster | redis-cluster-kill-master | redis-cluster-restart-node)
      rc_main "$@"
      ;;
    start-one)
      check_name "${2:-}"
      case "$2" in postgres) pg_start ;; redis) redis_start ;; kafka) kafka_start ;; esac
      ;;
    stop-one)
      check_name "${2:-}"
      case "$2" in postgres) pg_stop fast ;; redis) redis_stop clean ;; kafka) kafka_stop clean ;; esac
      ;;
    kill-one)
      check_name "${2:-}"
      case "$2" in postgres) pg_stop immediate ;; redis) redis_stop kill ;; kafka) kafka_stop kill ;; esac
      ;;
    kafka-class)
      # e.g. kafka-class org.apache.kafka.tools.TopicCommand --bootstrap-server 127.0.0.1:9092 --list
      [ -n "${2:-}" ] || die "usage: $0 kafka-class CLASS [ARGS...]"
      kafka_fetch_libs
      shift
      exec java -cp "$KAFKA_LIBS/*" "$@"
      ;;
    *)
      echo "usage: $0 start|stop|status|env|start-one NAME|stop-one NAME|kill-one NAME" >&2
      echo "       $0 start-tls|stop-tls   (the TLS profile: PostgreSQL, Redis and Kafka over TLS with auth)" >&2
      echo "       $0 kafka-class CLASS [ARGS...]   (a Kafka tool on the broker's classpath)" >&2
      echo "       $0 start-redis-cluster|stop-redis-cluster   (Redis Cluster, 3+3 nodes on 7000-7005)" >&2
      echo "       $0 redis-cluster-kill-master SLOT|PORT|key:NAME   (SIGKILL; prints its port)" >&2
      echo "       $0 redis-cluster-restart-node PORT   (it rejoins as a replica)" >&2
      echo "       $0 start-kafka-cluster|stop-kafka-cluster   (three KRaft nodes, RF 3, min ISR 2)" >&2
      echo "       $0 kafka-cluster-node start|stop|kill N     (one node of that cluster, N: 1|2|3)" >&2
      echo "       NAME: postgres|redis|kafka" >&2
      exit 2
      ;;
  esac
}

main "$@"
