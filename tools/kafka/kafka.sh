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
#
# Optional secured listeners beside the PLAINTEXT one, off unless their port is set:
#   KAFKA_SECURE_PORT  SASL_SSL on 127.0.0.1:$KAFKA_SECURE_PORT, SCRAM-SHA-512, one user
#                      ${KAFKA_SASL_USERNAME:-ghl-consumer} whose password is $KAFKA_SASL_PASSWORD
#                      (required then); the user is created when the storage is formatted (the
#                      first start of a state directory), later starts keep it. With
#                      $KAFKA_PLAIN_PASSWORD set, SASL/PLAIN on the same listener too, one user
#                      ${KAFKA_PLAIN_USERNAME:-ghl-plain} (listed in the broker's JAAS config).
#                      The listener's broker runs an ACL authorizer (StandardAuthorizer): the
#                      PLAINTEXT and controller principal (ANONYMOUS), the SCRAM user and the
#                      mutual-TLS client are super users; the PLAIN user may do only what ACLs
#                      grant it (tests grant them through the PLAINTEXT listener).
#   KAFKA_TLS_PORT     SSL on 127.0.0.1:$KAFKA_TLS_PORT with client certificates required (mutual
#                      TLS); the client's certificate and key: $state/tls/client.pem, client.key.
# TLS: a CA, a broker certificate (for localhost and 127.0.0.1) and a client certificate, made
# with openssl in $state/tls/ on first start; clients trust $state/tls/ca.pem.
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
secure_port=${KAFKA_SECURE_PORT:-}
tls_port=${KAFKA_TLS_PORT:-}
sasl_user=${KAFKA_SASL_USERNAME:-ghl-consumer}
plain_user=${KAFKA_PLAIN_USERNAME:-ghl-plain}
plain_password=${KAFKA_PLAIN_PASSWORD:-}
tls="$state/tls"

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
  local listeners="PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller_port"
  local advertised="PLAINTEXT://127.0.0.1:$port"
  local protocols="PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
  if [ -n "$secure_port" ]; then
    listeners="$listeners,SECURED://127.0.0.1:$secure_port"
    advertised="$advertised,SECURED://127.0.0.1:$secure_port"
    protocols="$protocols,SECURED:SASL_SSL"
  fi
  if [ -n "$tls_port" ]; then
    listeners="$listeners,TLS://127.0.0.1:$tls_port"
    advertised="$advertised,TLS://127.0.0.1:$tls_port"
    protocols="$protocols,TLS:SSL"
  fi
  cat >"$state/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$controller_port
listeners=$listeners
advertised.listeners=$advertised
controller.listener.names=CONTROLLER
listener.security.protocol.map=$protocols
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
  if [ -n "$secure_port" ]; then
    local mechanisms=SCRAM-SHA-512
    [ -n "$plain_password" ] && mechanisms="SCRAM-SHA-512,PLAIN"
    cat >>"$state/server.properties" <<PROPS
listener.name.secured.sasl.enabled.mechanisms=$mechanisms
listener.name.secured.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.secured.ssl.keystore.type=PEM
listener.name.secured.ssl.keystore.location=$tls/broker-keystore.pem
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:ANONYMOUS;User:$sasl_user;User:CN=ghl-consumer
PROPS
    if [ -n "$plain_password" ]; then
      # The password sits in the state directory's server.properties (a test broker's).
      printf '%s\n' "listener.name.secured.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_$plain_user=\"$plain_password\";" \
        >>"$state/server.properties"
    fi
  fi
  if [ -n "$tls_port" ]; then
    cat >>"$state/server.properties" <<PROPS
listener.name.tls.ssl.client.auth=required
listener.name.tls.ssl.keystore.type=PEM
listener.name.tls.ssl.keystore.location=$tls/broker-keystore.pem
listener.name.tls.ssl.truststore.type=PEM
listener.name.tls.ssl.truststore.location=$tls/ca.pem
PROPS
  fi
}

# A private CA, the broker's key and certificate (SAN localhost, 127.0.0.1) and a client's, once
# per state.
make_tls() {
  [ -f "$tls/client.pem" ] && return 0
  command -v openssl >/dev/null || { say "openssl is required for KAFKA_SECURE_PORT / KAFKA_TLS_PORT"; exit 1; }
  mkdir -p "$tls"
  (
    cd "$tls"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 3650 \
      -subj "/CN=ghl-consumer local Kafka CA"
    openssl req -newkey rsa:2048 -nodes -keyout broker.key -out broker.csr -subj "/CN=localhost"
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >broker.ext
    openssl x509 -req -in broker.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile broker.ext -out broker.pem
    cat broker.key broker.pem >broker-keystore.pem
    openssl req -newkey rsa:2048 -nodes -keyout client.key -out client.csr -subj "/CN=ghl-consumer"
    openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 \
      -out client.pem
    chmod 600 ca.key broker.key broker-keystore.pem client.key
  ) >>"$log" 2>&1 || { say "making the TLS certificates failed; last lines of $log:"; log_tail; exit 1; }
}

# The --add-scram argument of the storage format: the salted password, so the password itself
# never appears on a command line.
scram_credential() {
  KAFKA_SASL_USERNAME="$sasl_user" python3 - <<'PY'
import base64, hashlib, os
salt, iterations = os.urandom(16), 8192
salted = hashlib.pbkdf2_hmac("sha512", os.environ["KAFKA_SASL_PASSWORD"].encode(), salt, iterations)
b64 = lambda raw: base64.b64encode(raw).decode()
print(f'SCRAM-SHA-512=[name={os.environ["KAFKA_SASL_USERNAME"]},iterations={iterations},'
      f'salt="{b64(salt)}",saltedpassword="{b64(salted)}"]')
PY
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
    if [ -n "$secure_port" ] && [ -z "${KAFKA_SASL_PASSWORD:-}" ]; then
      say "KAFKA_SECURE_PORT needs KAFKA_SASL_PASSWORD (the SCRAM user's password)"
      exit 1
    fi
    write_config
    [ -f "$log" ] && mv -f "$log" "$log.1"
    local scram=()
    if [ -n "$secure_port$tls_port" ]; then
      make_tls
    fi
    if [ -n "$secure_port" ]; then
      scram=(--add-scram "$(scram_credential)")
    fi
    if [ ! -f "$state/data/meta.properties" ]; then
      java "${java_opts[@]}" kafka.tools.StorageTool format --standalone --ignore-formatted "${scram[@]}" \
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
  if [ -n "$secure_port" ]; then
    say "SASL_SSL (SCRAM-SHA-512, user $sasl_user${plain_password:+; PLAIN, user $plain_user}) on 127.0.0.1:$secure_port; CA: $tls/ca.pem"
  fi
  if [ -n "$tls_port" ]; then
    say "SSL with client certificates ($tls/client.pem, client.key) on 127.0.0.1:$tls_port; CA: $tls/ca.pem"
  fi
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
