#!/usr/bin/env bash
# Local single-node Apache Kafka (KRaft combined mode) from Maven Central's jars and Java 17.
#
#   tools/kafka/kafka.sh up     start (or reuse) a broker on 127.0.0.1:${KAFKA_PORT:-9092};
#                               returns when it answers Metadata requests
#   tools/kafka/kafka.sh down   stop the broker on that port (no-op when none runs)
#   tools/kafka/kafka.sh jars   only resolve the jars into the cache
#
# Cache and state live outside the repository, in ${GHL_KAFKA_HOME:-~/.cache/ghl-consumer/kafka}:
#   jars-<version>/        the broker's runtime classpath (mvn dependency:copy-dependencies)
#   port-<port>/           server.properties, data/, broker.log, broker.pid
# Environment: KAFKA_PORT (9092), KAFKA_CONTROLLER_PORT (KAFKA_PORT+1), KAFKA_HEAP (512m),
# KAFKA_START_TIMEOUT seconds (90), GHL_KAFKA_HOME, KAFKA_STATE_DIR (port-<port>/ above; the test
# fixtures point it at a temporary directory so every test session starts from an empty broker).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
version=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$here/pom.xml")
home=${GHL_KAFKA_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/ghl-consumer/kafka}
port=${KAFKA_PORT:-9092}
controller_port=${KAFKA_CONTROLLER_PORT:-$((port + 1))}
jars="$home/jars-$version"
state=${KAFKA_STATE_DIR:-$home/port-$port}
log="$state/broker.log"
pidfile="$state/broker.pid"
timeout=${KAFKA_START_TIMEOUT:-90}

say() { printf 'kafka: %s\n' "$*" >&2; }

# The log's last lines without the broker's multi-line configuration dumps.
log_tail() { grep -v "$(printf '^\t')" "$log" | tail -n 25 >&2; }

answers() { python3 "$here/probe.py" "127.0.0.1:$port"; }

running_pid() {
  [ -f "$pidfile" ] || return 1
  local pid
  pid=$(cat "$pidfile")
  kill -0 "$pid" 2>/dev/null && printf '%s' "$pid"
}

resolve_jars() {
  if [ -f "$jars/.complete" ]; then return 0; fi
  command -v mvn >/dev/null || { say "Maven (mvn) is required to fetch Kafka $version"; exit 1; }
  say "resolving Apache Kafka $version jars from Maven Central into $jars"
  rm -rf "$jars.tmp"
  mvn -q -B -f "$here/pom.xml" dependency:copy-dependencies \
    -DoutputDirectory="$jars.tmp" -DincludeScope=runtime >&2
  rm -rf "$jars" && mv "$jars.tmp" "$jars" && touch "$jars/.complete"
}

write_config() {
  mkdir -p "$state/data"
  cat >"$state/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$controller_port
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller_port
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$state/data
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
group.consumer.min.session.timeout.ms=6000
group.consumer.session.timeout.ms=10000
group.consumer.heartbeat.interval.ms=1000
group.consumer.min.heartbeat.interval.ms=500
auto.create.topics.enable=true
log.retention.hours=24
log.segment.bytes=67108864
PROPS
}

java_opts=("-Xmx${KAFKA_HEAP:-512m}" "-Xms${KAFKA_HEAP:-512m}" -XX:+UseG1GC -Djava.awt.headless=true
  "-Dlog4j2.configurationFile=$here/log4j2.properties" -cp "$jars/*")

up() {
  if answers; then
    say "reusing the broker already answering on 127.0.0.1:$port (log: $log)"
    return 0
  fi
  if pid=$(running_pid); then
    say "a broker process ($pid) exists but does not answer yet; waiting for it"
  else
    command -v java >/dev/null || { say "Java 17 (java) is required"; exit 1; }
    resolve_jars
    write_config
    [ -f "$log" ] && mv -f "$log" "$log.1"
    if [ ! -f "$state/data/meta.properties" ]; then
      java "${java_opts[@]}" kafka.tools.StorageTool format --standalone --ignore-formatted \
        -t "$(java "${java_opts[@]}" kafka.tools.StorageTool random-uuid)" -c "$state/server.properties" >>"$log" 2>&1 \
        || { say "storage format failed; last lines of $log:"; log_tail; exit 1; }
    fi
    say "starting Kafka $version on 127.0.0.1:$port (log: $log)"
    nohup java "${java_opts[@]}" kafka.Kafka "$state/server.properties" >>"$log" 2>&1 </dev/null &
    echo $! >"$pidfile"
  fi
  local deadline=$((SECONDS + timeout))
  until answers; do
    if ! running_pid >/dev/null; then
      say "broker exited during start-up; last lines of $log:"
      log_tail
      rm -f "$pidfile"
      exit 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      say "broker did not answer within ${timeout}s; last lines of $log:"
      log_tail
      down
      exit 1
    fi
    sleep 0.3
  done
  say "ready on 127.0.0.1:$port (log: $log)"
}

down() {
  local pid
  if ! pid=$(running_pid); then
    rm -f "$pidfile"
    say "no broker of ours runs on port $port"
    return 0
  fi
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$pidfile"
  say "stopped the broker on port $port"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  jars) resolve_jars ;;
  *) echo "usage: $0 up|down|jars" >&2; exit 2 ;;
esac
