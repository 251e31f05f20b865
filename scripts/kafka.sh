#!/usr/bin/env bash
# A real Apache Kafka (KRaft, no ZooKeeper) for tests and local runs, from Maven Central jars alone.
#
#   scripts/kafka.sh fetch               copy Kafka's jars into the cache (idempotent); prints the jar dir
#   scripts/kafka.sh start 1|3 DIR       format and start a 1- or 3-node cluster on 127.0.0.1 in DIR;
#                                        prints the bootstrap servers (host:port,host:port,...)
#   scripts/kafka.sh stop DIR            stop every node of the cluster in DIR (SIGTERM, then SIGKILL)
#   scripts/kafka.sh kill DIR N          kill -9 node N (1-based), as a crash test needs
#   scripts/kafka.sh restart DIR N       start node N again on its own ports and storage
#   scripts/kafka.sh bootstrap DIR       print the bootstrap servers of the cluster in DIR
#
# Every node also has a SASL_PLAINTEXT listener (SCRAM-SHA-512) with one user, "gputel", whose
# random password is in DIR/scram-password (mode 600); its servers are in DIR/bootstrap-sasl. It
# is a throwaway test credential: StorageTool takes it on its command line at format time.
#
# The jars live in ~/.cache/gputel/kafka-<version>/libs, fetched once through Maven (a throwaway
# pom, `dependency:copy-dependencies`, a private local repository beside them). Each node of a
# cluster has DIR/nodeN/{server.properties,data,kafka.log,pid}; DIR/bootstrap holds the servers.
set -euo pipefail

VERSION="${GPUTEL_KAFKA_VERSION:-4.4.0}"
# Kafka 4.4 logs through slf4j-api 1.7: the binding is log4j-slf4j-impl, not log4j-slf4j2-impl.
LOG4J_VERSION="${GPUTEL_LOG4J_VERSION:-2.25.5}"
CACHE="${GPUTEL_CACHE_DIR:-$HOME/.cache/gputel}/kafka-$VERSION"
LIBS="$CACHE/libs"
HEAP="${GPUTEL_KAFKA_HEAP:--Xms256m -Xmx512m}"
START_TIMEOUT_S="${GPUTEL_KAFKA_START_TIMEOUT_S:-90}"

log() { printf '[kafka.sh] %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

write_pom() {
    local dep
    {
        printf '<project xmlns="http://maven.apache.org/POM/4.0.0">\n'
        printf '<modelVersion>4.0.0</modelVersion><groupId>gputel</groupId>\n'
        printf '<artifactId>kafka-jars</artifactId><version>1</version><packaging>pom</packaging>\n'
        printf '<dependencies>\n'
        for dep in kafka_2.13 kafka-server kafka-storage kafka-tools; do
            printf '<dependency><groupId>org.apache.kafka</groupId><artifactId>%s</artifactId>' "$dep"
            printf '<version>%s</version></dependency>\n' "$VERSION"
        done
        for dep in log4j-slf4j-impl log4j-core; do
            printf '<dependency><groupId>org.apache.logging.log4j</groupId><artifactId>%s</artifactId>' "$dep"
            printf '<version>%s</version></dependency>\n' "$LOG4J_VERSION"
        done
        printf '</dependencies></project>\n'
    } >"$1"
}

# Command $1 from Debian package $2 when it is missing (a fresh CI machine; root or sudo).
need() {
    command -v "$1" >/dev/null && return 0
    log "installing Debian $2 (for $1)"
    if [ "$(id -u)" = 0 ]; then apt-get install -y "$2" >&2
    else sudo apt-get install -y "$2" >&2; fi
    command -v "$1" >/dev/null || die "$1 not found after installing $2"
}

fetch() {
    if [ -f "$LIBS/.complete" ]; then log "cached: $LIBS"; echo "$LIBS"; return 0; fi
    need mvn maven
    need java openjdk-17-jre-headless
    local work
    work="$(mktemp -d)"
    mkdir -p "$CACHE"
    write_pom "$work/pom.xml"
    log "fetching Kafka $VERSION jars through Maven into $LIBS"
    rm -rf "$LIBS.tmp"
    # A private local repository keeps the download keyed by version and out of ~/.m2.
    (cd "$work" && mvn -q -B dependency:copy-dependencies -DincludeScope=runtime \
        -Dmaven.repo.local="$CACHE/m2" -DoutputDirectory="$LIBS.tmp") >&2
    # The jars are the cache; the private Maven repository is only needed to fetch them.
    rm -rf "$work" "$LIBS" "$CACHE/m2"
    mv "$LIBS.tmp" "$LIBS"
    touch "$LIBS/.complete"
    log "$(find "$LIBS" -name '*.jar' | wc -l) jars"
    echo "$LIBS"
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# server.properties of node $2 (of $1) in $3: broker port $4, quorum voters $5, controller
# port $6, SASL port $7.
write_properties() {
    local n="$1" id="$2" dir="$3" port="$4" voters="$5" cport="$6" sport="$7"
    local rf=1 isr=1
    if [ "$n" -ge 3 ]; then rf=3; isr=2; fi
    cat >"$dir/server.properties" <<EOF
process.roles=broker,controller
node.id=$id
controller.quorum.voters=$voters
listeners=PLAINTEXT://127.0.0.1:$port,SASL_PLAINTEXT://127.0.0.1:$sport,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port,SASL_PLAINTEXT://127.0.0.1:$sport
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:PLAINTEXT
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
log.dirs=$dir/data
num.partitions=1
default.replication.factor=$rf
min.insync.replicas=$isr
offsets.topic.replication.factor=$rf
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$isr
# Test clusters: the streamer's first transaction creates this topic; 50 partitions x RF 3 took
# 10-60 s on 2 shared cores (NOT_COORDINATOR meanwhile), 4 take about a second.
transaction.state.log.num.partitions=4
offsets.topic.num.partitions=4
share.coordinator.state.topic.replication.factor=$rf
share.coordinator.state.topic.min.isr=$isr
# Tests: no 3 s wait before the first rebalance; a dead broker is fenced in ~3 s, not 9-18 s.
group.initial.rebalance.delay.ms=0
broker.session.timeout.ms=3000
broker.heartbeat.interval.ms=500
# gputel creates its topics itself (docs/transport.md); a typo must not make a new topic.
auto.create.topics.enable=false
EOF
}

# Without a configuration log4j2 prints errors only, and "Kafka Server started" is INFO.
write_log4j() {
    cat >"$1/log4j2.properties" <<'EOF'
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = out
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
logger.state.name = state.change.logger
logger.state.level = WARN
EOF
}

# Start node directory $1 in the background; its pid goes to $1/pid.
launch() {
    local dir="$1"
    # `exec` makes the recorded pid the JVM itself, so `kill -9 $(cat pid)` kills the broker.
    # shellcheck disable=SC2086
    (exec java $HEAP -XX:+UseG1GC -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$dir/log4j2.properties" -cp "$LIBS/*" kafka.Kafka \
        "$dir/server.properties" >>"$dir/kafka.log" 2>&1 </dev/null) &
    echo $! >"$dir/pid"
}

wait_started() {
    local dir="$1" deadline=$((SECONDS + START_TIMEOUT_S)) pid
    pid="$(cat "$dir/pid")"
    while ! grep -q "Kafka Server started" "$dir/kafka.log" 2>/dev/null; do
        kill -0 "$pid" 2>/dev/null || { tail -20 "$dir/kafka.log" >&2; die "node in $dir exited"; }
        [ "$SECONDS" -lt "$deadline" ] || { tail -20 "$dir/kafka.log" >&2; die "node in $dir: not started after ${START_TIMEOUT_S}s"; }
        sleep 0.2
    done
}

start() {
    local n="$1" dir="$2" i voters="" servers="" cid
    [ "$n" = 1 ] || [ "$n" = 3 ] || die "start: 1 or 3 nodes, not $n"
    [ -n "$dir" ] || die "start: DIR missing"
    fetch >/dev/null
    need java openjdk-17-jre-headless
    mkdir -p "$dir"
    dir="$(cd "$dir" && pwd)"
    [ ! -e "$dir/bootstrap" ] || die "$dir already holds a cluster (stop it, or use another DIR)"
    local ports=() cports=() sports=() sasl="" password
    for i in $(seq 1 "$n"); do
        ports+=("$(free_port)"); cports+=("$(free_port)"); sports+=("$(free_port)")
        voters+="${voters:+,}$i@127.0.0.1:${cports[$((i - 1))]}"
        servers+="${servers:+,}127.0.0.1:${ports[$((i - 1))]}"
        sasl+="${sasl:+,}127.0.0.1:${sports[$((i - 1))]}"
    done
    password="$(python3 -c 'import secrets; print(secrets.token_urlsafe(18))')"
    (umask 077 && printf '%s\n' "$password" >"$dir/scram-password")
    # A cluster id is 16 random bytes in base64url without padding, not starting with "-"
    # (the tool would read it as an option; Kafka's own Uuid.randomUuid() draws again too).
    cid="$(python3 -c 'import base64,os
while (c := base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")).startswith("-"): pass
print(c)')"
    for i in $(seq 1 "$n"); do
        mkdir -p "$dir/node$i/data"
        write_properties "$n" "$i" "$dir/node$i" "${ports[$((i - 1))]}" "$voters" \
            "${cports[$((i - 1))]}" "${sports[$((i - 1))]}"
        write_log4j "$dir/node$i"
        java -cp "$LIBS/*" kafka.tools.StorageTool format -t "$cid" \
            -c "$dir/node$i/server.properties" \
            --add-scram "SCRAM-SHA-512=[name=gputel,password=$password]" >>"$dir/node$i/kafka.log" 2>&1 \
            || { tail -20 "$dir/node$i/kafka.log" >&2; die "format of node $i failed"; }
    done
    for i in $(seq 1 "$n"); do launch "$dir/node$i"; done
    for i in $(seq 1 "$n"); do wait_started "$dir/node$i"; done
    echo "$sasl" >"$dir/bootstrap-sasl"
    echo "$servers" >"$dir/bootstrap"
    log "started $n node(s) in $dir: $servers"
    echo "$servers"
}

node_dir() {
    local dir="$1" i="$2"
    [ -f "$dir/node$i/server.properties" ] || die "no node $i in $dir"
    echo "$dir/node$i"
}

kill_node() {
    local nd pid
    nd="$(node_dir "$1" "$2")"
    pid="$(cat "$nd/pid" 2>/dev/null || true)"
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill -9 "$pid"
        while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
        log "node $2 (pid $pid) killed with SIGKILL"
    fi
    rm -f "$nd/pid"
}

restart_node() {
    local nd
    nd="$(node_dir "$1" "$2")"
    if [ -f "$nd/pid" ] && kill -0 "$(cat "$nd/pid")" 2>/dev/null; then die "node $2 is running"; fi
    # Only lines written after this restart count as "started".
    mv -f "$nd/kafka.log" "$nd/kafka.log.$(date +%s%N)" 2>/dev/null || true
    launch "$nd"
    wait_started "$nd"
    log "node $2 restarted"
}

stop_node() {
    local nd="$1" pid i
    pid="$(cat "$nd/pid" 2>/dev/null || true)"
    [ -n "$pid" ] || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$nd/pid"
}

stop() {
    local dir="$1" nd
    [ -d "$dir" ] || return 0
    # Stop every node at once: a controller quorum that loses its peers one by one waits on them.
    for nd in "$dir"/node*; do [ -d "$nd" ] && [ -f "$nd/pid" ] && kill -TERM "$(cat "$nd/pid")" 2>/dev/null || true; done
    for nd in "$dir"/node*; do [ -d "$nd" ] && stop_node "$nd"; done
    rm -f "$dir/bootstrap" "$dir/bootstrap-sasl"
    log "stopped the cluster in $dir"
}

case "${1:-}" in
    fetch) fetch ;;
    start) start "${2:-}" "${3:-}" ;;
    stop) stop "${2:?DIR}" ;;
    kill) kill_node "${2:?DIR}" "${3:?N}" ;;
    restart) restart_node "${2:?DIR}" "${3:?N}" ;;
    bootstrap) cat "${2:?DIR}/bootstrap" ;;
    *) sed -n '2,17p' "$0" >&2; exit 2 ;;
esac
