#!/usr/bin/env bash
# A real single-node Apache Kafka broker (KRaft, broker+controller in one JVM) for tests,
# CI and local runs, built from Maven Central jars -- no tarball download, no Docker.
#
#   scripts/kafka.sh install                          fetch the pinned jars into the cache (idempotent)
#   scripts/kafka.sh start   [--port N] [--dir DIR]   format (first time) + start, wait until ready
#   scripts/kafka.sh stop    [--dir DIR]              SIGTERM, wait up to 30 s, then SIGKILL (idempotent)
#   scripts/kafka.sh restart [--port N] [--dir DIR]   stop + start on the same DIR and port, data kept
#   scripts/kafka.sh status  [--dir DIR]              exit 0 when running, 3 when not
#   scripts/kafka.sh clean   [--dir DIR]              stop and delete DIR (all topics and data)
#   scripts/kafka.sh logs    [--dir DIR] [-n LINES]   tail of the broker log
#
# The stock Kafka CLI tools, from the same jars (the jars-only install has no kafka-*.sh):
#   scripts/kafka.sh topics           [--dir DIR] ARGS...   kafka-topics.sh           (TopicCommand)
#   scripts/kafka.sh consumer-groups  [--dir DIR] ARGS...   kafka-consumer-groups.sh  (ConsumerGroupCommand)
#   scripts/kafka.sh console-consumer [--dir DIR] ARGS...   kafka-console-consumer.sh
#   scripts/kafka.sh console-producer [--dir DIR] ARGS...   kafka-console-producer.sh
#   scripts/kafka.sh get-offsets      [--dir DIR] ARGS...   kafka-get-offsets.sh      (GetOffsetShell)
#   scripts/kafka.sh configs          [--dir DIR] ARGS...   kafka-configs.sh          (ConfigCommand)
# They talk to the broker of DIR unless ARGS name one (--bootstrap-server HOST:PORT, any
# cluster), e.g.
#   scripts/kafka.sh consumer-groups --describe --group callscribe-worker
#   scripts/kafka.sh topics --bootstrap-server kafka:9092 --describe --topic callscribe.audio
#
# `start` prints exactly one line on stdout, `KAFKA_BOOTSTRAP=127.0.0.1:PORT` (progress goes to
# stderr), so `eval "$(scripts/kafka.sh start)"` works.
#
# Environment:
#   CALLSCRIBE_KAFKA_HOME           cache dir for the jars  (default ~/.cache/callscribe/kafka-<version>)
#   CALLSCRIBE_KAFKA_DIR            state/data dir           (default /tmp/callscribe-kafka)
#   CALLSCRIBE_KAFKA_PORT           client port              (default: the port DIR last used, else 9092)
#   CALLSCRIBE_KAFKA_START_TIMEOUT  seconds to wait for readiness (default 60)
#   CALLSCRIBE_KAFKA_STOP_TIMEOUT   seconds between SIGTERM and SIGKILL (default 30)
#   CALLSCRIBE_KAFKA_HEAP_OPTS      JVM heap (default "-Xms256m -Xmx512m")
#   CALLSCRIBE_KAFKA_JAVA_OPTS      extra JVM options
#   CALLSCRIBE_KAFKA_EXTRA_PROPS    extra server.properties lines (newline separated key=value)
#   CALLSCRIBE_KAFKA_MAVEN_REPO     Maven local repository for `install` (default: Maven's, ~/.m2/repository)
#   CALLSCRIBE_PYTHON               python used for the readiness probe (default python3; optional)
#
# After a SIGKILL (or a crash) the next start takes ~10 s longer: the controller refuses the new
# broker registration (DUPLICATE_BROKER_REGISTRATION) until the old session times out (9 s).
# `stop` and `restart` use SIGTERM first, so this only happens when the 30 s budget runs out.
#
# DIR layout: server.properties, log4j2.properties, state.env (port, controller port, cluster id),
# kafka.pid, data/ (log.dirs), logs/server.log, kafka.out (JVM stdout/stderr).
set -euo pipefail

# ---- pinned versions ---------------------------------------------------------------------------
# Kafka 4.1.1: KRaft only, Java 17+; aiokafka 0.14 talks to it (KIP-896 removed only very old
# protocol versions).  log4j matches what kafka-server 4.1.1 itself depends on; Kafka 4.x logs
# through slf4j 1.7 -> log4j-slf4j-impl -> log4j2.
KAFKA_VERSION="4.1.1"
SCALA_BINARY_VERSION="2.13"
LOG4J_VERSION="2.24.3"
MAVEN_DEPENDENCY_PLUGIN_VERSION="3.8.1"

KAFKA_HOME="${CALLSCRIBE_KAFKA_HOME:-$HOME/.cache/callscribe/kafka-$KAFKA_VERSION}"
LIBS="$KAFKA_HOME/libs"
MARKER="$LIBS/.complete"
MARKER_CONTENT="kafka_${SCALA_BINARY_VERSION}-${KAFKA_VERSION} log4j-${LOG4J_VERSION}"

DEFAULT_DIR="${CALLSCRIBE_KAFKA_DIR:-/tmp/callscribe-kafka}"
START_TIMEOUT="${CALLSCRIBE_KAFKA_START_TIMEOUT:-60}"
STOP_TIMEOUT="${CALLSCRIBE_KAFKA_STOP_TIMEOUT:-30}"
HEAP_OPTS="${CALLSCRIBE_KAFKA_HEAP_OPTS:--Xms256m -Xmx512m}"

log() { printf '[kafka.sh] %s\n' "$*" >&2; }
die() { printf '[kafka.sh] ERROR: %s\n' "$*" >&2; exit 1; }

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
    exit "${1:-2}"
}

need() { command -v "$1" >/dev/null 2>&1 || die "'$1' is not on PATH ($2)"; }

python_bin() {
    local p="${CALLSCRIBE_PYTHON:-}"
    if [[ -n "$p" ]] && command -v "$p" >/dev/null 2>&1; then echo "$p"; return 0; fi
    if command -v python3 >/dev/null 2>&1; then echo python3; return 0; fi
    return 1
}

# ---- install -----------------------------------------------------------------------------------
is_installed() {
    [[ -f "$MARKER" ]] && [[ "$(cat "$MARKER" 2>/dev/null)" == "$MARKER_CONTENT" ]]
}

write_pom() {
    local k="org.apache.kafka"
    cat >"$1" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<!-- generated by callscribe scripts/kafka.sh: the jars of a Kafka ${KAFKA_VERSION} broker -->
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>callscribe.local</groupId>
  <artifactId>kafka-broker-libs</artifactId>
  <version>${KAFKA_VERSION}</version>
  <packaging>pom</packaging>
  <dependencies>
    <!-- the broker (kafka.Kafka, kafka.tools.StorageTool) and, transitively, server/raft/storage/
         metadata/coordinators, kafka-clients, scala-library, jackson, slf4j-api, log4j-core -->
    <dependency><groupId>${k}</groupId><artifactId>kafka_${SCALA_BINARY_VERSION}</artifactId><version>${KAFKA_VERSION}</version></dependency>
    <!-- command line tools (TopicCommand, ConsumerGroupCommand, ...), without Kafka Connect's runtime -->
    <dependency>
      <groupId>${k}</groupId><artifactId>kafka-tools</artifactId><version>${KAFKA_VERSION}</version>
      <exclusions>
        <exclusion><groupId>${k}</groupId><artifactId>connect-runtime</artifactId></exclusion>
        <exclusion><groupId>com.fasterxml.jackson.jakarta.rs</groupId><artifactId>*</artifactId></exclusion>
      </exclusions>
    </dependency>
    <!-- logging backend: slf4j 1.7 binding for log4j2, so the broker logs to a file -->
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>${LOG4J_VERSION}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>${LOG4J_VERSION}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-api</artifactId><version>${LOG4J_VERSION}</version></dependency>
  </dependencies>
</project>
EOF
}

cmd_install() {
    if is_installed; then
        log "Kafka ${KAFKA_VERSION} already installed in $LIBS"
        return 0
    fi
    need java "Java 17+ is needed to run Kafka ${KAFKA_VERSION}"
    need mvn "Maven fetches the Kafka jars from Maven Central"
    mkdir -p "$KAFKA_HOME"
    # Two installs at once (parallel CI jobs, two engineers) must not interleave.
    exec 9>"$KAFKA_HOME/.install.lock"
    if command -v flock >/dev/null 2>&1; then flock 9; fi
    if is_installed; then
        exec 9>&-
        log "Kafka ${KAFKA_VERSION} already installed in $LIBS"
        return 0
    fi
    local build="$KAFKA_HOME/build" tmp="$KAFKA_HOME/libs.tmp.$$"
    rm -rf "$build" "$tmp"
    mkdir -p "$build"
    write_pom "$build/pom.xml"
    local -a mvn_args=(-B -f "$build/pom.xml"
        "org.apache.maven.plugins:maven-dependency-plugin:${MAVEN_DEPENDENCY_PLUGIN_VERSION}:copy-dependencies"
        -DincludeScope=runtime -DoutputDirectory="$tmp")
    if [[ -n "${CALLSCRIBE_KAFKA_MAVEN_REPO:-}" ]]; then
        mvn_args+=(-Dmaven.repo.local="$CALLSCRIBE_KAFKA_MAVEN_REPO")
    fi
    log "fetching Kafka ${KAFKA_VERSION} (kafka_${SCALA_BINARY_VERSION}) and its runtime dependencies with Maven..."
    if ! mvn "${mvn_args[@]}" >"$build/mvn.log" 2>&1; then
        tail -n 40 "$build/mvn.log" >&2
        rm -rf "$tmp"
        die "mvn failed (full log: $build/mvn.log)"
    fi
    local j
    for j in "kafka_${SCALA_BINARY_VERSION}-${KAFKA_VERSION}.jar" "kafka-clients-${KAFKA_VERSION}.jar" \
             "kafka-server-${KAFKA_VERSION}.jar" "kafka-storage-${KAFKA_VERSION}.jar" \
             "kafka-tools-${KAFKA_VERSION}.jar" "log4j-slf4j-impl-${LOG4J_VERSION}.jar"; do
        [[ -f "$tmp/$j" ]] || { rm -rf "$tmp"; die "expected $j among the copied jars"; }
    done
    # scala-library's exact version follows Kafka's pom; only check that it is there.
    compgen -G "$tmp/scala-library-*.jar" >/dev/null || { rm -rf "$tmp"; die "scala-library missing"; }
    rm -rf "$LIBS"
    mv "$tmp" "$LIBS"
    echo "$MARKER_CONTENT" >"$MARKER"
    exec 9>&-   # release the lock; a broker started next must not inherit it
    log "installed $(ls "$LIBS"/*.jar | wc -l) jars ($(du -sh "$LIBS" | cut -f1)) into $LIBS"
}

# ---- helpers for a broker directory -----------------------------------------------------------
port_in_use() {  # something accepts connections on 127.0.0.1:$1
    timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

free_port() {
    local py p
    if py="$(python_bin)"; then
        "$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
        return 0
    fi
    for _ in $(seq 1 200); do
        p=$((20000 + RANDOM % 40000))
        if ! port_in_use "$p"; then echo "$p"; return 0; fi
    done
    die "no free port found"
}

random_cluster_id() {  # Kafka Uuid: 16 random bytes, URL-safe base64 without padding, 22 chars
    local id
    while :; do
        id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
        [[ "$id" == -* ]] || { echo "$id"; return 0; }  # Kafka never hands out ids starting with '-'
    done
}

pid_alive() {  # $1 = pid; a zombie counts as dead
    local pid="$1" state
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 1
    state="$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || echo "?")"
    [[ "$state" != "Z" ]]
}

broker_pid() {  # prints the pid of DIR's running broker, or fails
    local dir="$1" pid
    [[ -f "$dir/kafka.pid" ]] || return 1
    pid="$(cat "$dir/kafka.pid" 2>/dev/null || true)"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    pid_alive "$pid" || return 1
    # guard against a recycled pid: the process must be our kafka.Kafka with DIR's config
    if [[ -r "/proc/$pid/cmdline" ]]; then
        tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "$dir/server.properties" || return 1
    fi
    echo "$pid"
}

load_state() {  # sets PORT CONTROLLER_PORT CLUSTER_ID from DIR/state.env when present
    local dir="$1"
    STATE_PORT="" STATE_CONTROLLER_PORT="" STATE_CLUSTER_ID=""
    if [[ -f "$dir/state.env" ]]; then
        STATE_PORT="$(sed -n 's/^PORT=//p' "$dir/state.env")"
        STATE_CONTROLLER_PORT="$(sed -n 's/^CONTROLLER_PORT=//p' "$dir/state.env")"
        STATE_CLUSTER_ID="$(sed -n 's/^CLUSTER_ID=//p' "$dir/state.env")"
    fi
}

write_config() {  # dir port controller_port
    local dir="$1" port="$2" cport="$3"
    cat >"$dir/server.properties" <<EOF
# generated by scripts/kafka.sh at each start; edit the script, not this file
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:${cport}
listeners=PLAINTEXT://127.0.0.1:${port},CONTROLLER://127.0.0.1:${cport}
advertised.listeners=PLAINTEXT://127.0.0.1:${port}
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
log.dirs=${dir}/data
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
# a 2-core machine: fewer threads than the defaults (3 network, 8 io)
num.network.threads=2
num.io.threads=4
EOF
    if [[ -n "${CALLSCRIBE_KAFKA_EXTRA_PROPS:-}" ]]; then
        printf '# CALLSCRIBE_KAFKA_EXTRA_PROPS\n%s\n' "$CALLSCRIBE_KAFKA_EXTRA_PROPS" >>"$dir/server.properties"
    fi
    cat >"$dir/log4j2.properties" <<'EOF'
# generated by scripts/kafka.sh
status = warn
name = callscribe-kafka
# keep logging through the broker's own shutdown (Kafka stops itself from a JVM shutdown hook)
shutdownHook = disable
appender.file.type = RollingFile
appender.file.name = FILE
appender.file.fileName = ${sys:kafka.logs.dir}/server.log
appender.file.filePattern = ${sys:kafka.logs.dir}/server.log.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 100MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 2
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.request.name = kafka.request.logger
logger.request.level = WARN
EOF
}

java_cmd() {  # common JVM options; "$@" = main class and arguments
    local dir="$1"; shift
    # shellcheck disable=SC2086  # heap/java opts are word lists on purpose
    exec java $HEAP_OPTS -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
        -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true \
        -Dkafka.logs.dir="$dir/logs" -Dlog4j2.configurationFile="$dir/log4j2.properties" \
        ${CALLSCRIBE_KAFKA_JAVA_OPTS:-} -cp "$LIBS/*" "$@"
}

# Kafka protocol probe: ApiVersions v0 must come back with error_code 0 (stdlib only).
PROBE_PY='
import socket, struct, sys
port = int(sys.argv[1])
try:
    s = socket.create_connection(("127.0.0.1", port), timeout=3)
    cid = b"callscribe-probe"
    body = struct.pack(">hhih", 18, 0, 7, len(cid)) + cid
    s.sendall(struct.pack(">i", len(body)) + body)
    def read(n):
        b = b""
        while len(b) < n:
            c = s.recv(n - len(b))
            if not c:
                raise EOFError
            b += c
        return b
    size = struct.unpack(">i", read(4))[0]
    resp = read(size)
    corr, err = struct.unpack(">ih", resp[:6])
    sys.exit(0 if corr == 7 and err == 0 else 1)
except Exception:
    sys.exit(1)
'

protocol_ready() {
    local py
    py="$(python_bin)" || return 0   # no python: the log line is all we check
    "$py" -c "$PROBE_PY" "$1"
}

log_tail() {
    local dir="$1" n="${2:-40}"
    if [[ -f "$dir/logs/server.log" ]]; then
        echo "----- tail of $dir/logs/server.log -----" >&2
        tail -n "$n" "$dir/logs/server.log" >&2
    fi
    if [[ -s "$dir/kafka.out" ]]; then
        echo "----- tail of $dir/kafka.out -----" >&2
        tail -n "$n" "$dir/kafka.out" >&2
    fi
}

# ---- start / stop / status ---------------------------------------------------------------------
cmd_start() {
    local dir="$1" port="$2"
    cmd_install
    need java "Java 17+ runs the broker"
    mkdir -p "$dir"
    dir="$(cd "$dir" && pwd -P)"
    load_state "$dir"
    [[ -n "$port" ]] || port="${CALLSCRIBE_KAFKA_PORT:-${STATE_PORT:-9092}}"
    [[ "$port" =~ ^[0-9]+$ ]] || die "bad port: $port"

    local pid
    if pid="$(broker_pid "$dir")"; then
        if [[ "$STATE_PORT" == "$port" ]]; then
            log "already running (pid $pid) in $dir"
            echo "KAFKA_BOOTSTRAP=127.0.0.1:$port"
            return 0
        fi
        die "a broker is already running in $dir on port ${STATE_PORT:-?} (pid $pid); stop it first"
    fi
    port_in_use "$port" && die "port $port on 127.0.0.1 is already in use (choose another with --port)"

    local cport="$STATE_CONTROLLER_PORT"
    if [[ -z "$cport" || "$cport" == "$port" ]] || port_in_use "$cport"; then
        cport="$(free_port)"
        [[ "$cport" != "$port" ]] || cport="$(free_port)"
    fi
    local cluster_id="${STATE_CLUSTER_ID:-}"
    mkdir -p "$dir/data" "$dir/logs"
    write_config "$dir" "$port" "$cport"

    if [[ ! -f "$dir/data/meta.properties" ]]; then
        cluster_id="$(random_cluster_id)"
        log "formatting $dir/data (cluster id $cluster_id)"
        # Kafka 4.x: kafka.tools.StorageTool in kafka_2.13; static controller.quorum.voters needs
        # no --standalone (that flag is for a dynamic quorum, controller.quorum.bootstrap.servers).
        if ! (java_cmd "$dir" kafka.tools.StorageTool format -t "$cluster_id" -c "$dir/server.properties") \
                >"$dir/format.log" 2>&1; then
            cat "$dir/format.log" >&2
            die "formatting the storage failed"
        fi
    elif [[ -z "$cluster_id" ]]; then
        cluster_id="$(sed -n 's/^cluster.id=//p' "$dir/data/meta.properties")"
    fi
    printf 'PORT=%s\nCONTROLLER_PORT=%s\nCLUSTER_ID=%s\nKAFKA_VERSION=%s\n' \
        "$port" "$cport" "$cluster_id" "$KAFKA_VERSION" >"$dir/state.env"

    local log_file="$dir/logs/server.log" offset=0
    [[ -f "$log_file" ]] && offset="$(stat -c %s "$log_file")"

    log "starting Kafka ${KAFKA_VERSION} on 127.0.0.1:$port (controller 127.0.0.1:$cport), dir $dir"
    (cd "$dir" && java_cmd "$dir" kafka.Kafka "$dir/server.properties") </dev/null >"$dir/kafka.out" 2>&1 &
    pid=$!
    echo "$pid" >"$dir/kafka.pid"

    local t0=$SECONDS started=""
    while :; do
        if ! pid_alive "$pid"; then
            log_tail "$dir" 60
            rm -f "$dir/kafka.pid"
            die "the broker exited during startup"
        fi
        if [[ -z "$started" && -f "$log_file" ]]; then
            local size; size="$(stat -c %s "$log_file")"
            (( size >= offset )) || offset=0   # the log rolled over
            if tail -c +"$((offset + 1))" "$log_file" | grep -q "Kafka Server started"; then
                started=1
            fi
        fi
        if [[ -n "$started" ]] && protocol_ready "$port"; then
            break
        fi
        if (( SECONDS - t0 >= START_TIMEOUT )); then
            log_tail "$dir" 60
            log "not ready after ${START_TIMEOUT}s; stopping it"
            cmd_stop "$dir" >/dev/null 2>&1 || true
            die "the broker did not become ready within ${START_TIMEOUT}s"
        fi
        sleep 0.2
    done
    log "ready after $((SECONDS - t0))s (pid $pid)"
    echo "KAFKA_BOOTSTRAP=127.0.0.1:$port"
}

cmd_stop() {
    local dir="$1" pid
    [[ -d "$dir" ]] || { log "not running ($dir does not exist)"; return 0; }
    dir="$(cd "$dir" && pwd -P)"
    if ! pid="$(broker_pid "$dir")"; then
        rm -f "$dir/kafka.pid"
        log "not running ($dir)"
        return 0
    fi
    log "stopping broker pid $pid (SIGTERM, up to ${STOP_TIMEOUT}s)"
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + STOP_TIMEOUT))
    while pid_alive "$pid" && (( SECONDS < deadline )); do sleep 0.1; done
    if pid_alive "$pid"; then
        log "still alive after ${STOP_TIMEOUT}s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        local i
        for i in $(seq 1 100); do pid_alive "$pid" || break; sleep 0.1; done
    fi
    rm -f "$dir/kafka.pid"
    if [[ -f "$dir/data/.kafka_cleanshutdown" ]]; then
        log "stopped (clean shutdown)"
    else
        log "stopped (no clean-shutdown marker: the next start recovers the logs)"
    fi
}

cmd_status() {
    local dir="$1" pid
    if [[ -d "$dir" ]] && dir="$(cd "$dir" && pwd -P)" && pid="$(broker_pid "$dir")"; then
        load_state "$dir"
        echo "running pid=$pid KAFKA_BOOTSTRAP=127.0.0.1:${STATE_PORT} dir=$dir version=$KAFKA_VERSION"
        return 0
    fi
    echo "stopped dir=$dir"
    return 3
}

cmd_restart() {
    local dir="$1" port="$2"
    if [[ -z "$port" && -d "$dir" ]]; then
        load_state "$dir"
        port="$STATE_PORT"
    fi
    cmd_stop "$dir"
    cmd_start "$dir" "$port"
}

cmd_clean() {
    local dir="$1"
    cmd_stop "$dir"
    [[ -d "$dir" ]] || return 0
    if [[ -f "$dir/state.env" || -f "$dir/server.properties" || -z "$(ls -A "$dir")" ]]; then
        rm -rf "$dir"
        log "removed $dir"
    else
        die "$dir does not look like a kafka.sh directory; not removing it"
    fi
}

tool_class() {
    case "$1" in
        topics) echo org.apache.kafka.tools.TopicCommand ;;
        consumer-groups) echo org.apache.kafka.tools.consumer.group.ConsumerGroupCommand ;;
        console-consumer) echo org.apache.kafka.tools.consumer.ConsoleConsumer ;;
        console-producer) echo org.apache.kafka.tools.ConsoleProducer ;;
        get-offsets) echo org.apache.kafka.tools.GetOffsetShell ;;
        configs) echo kafka.admin.ConfigCommand ;;
        *) return 1 ;;
    esac
}

cmd_tool() {  # a stock CLI tool; --bootstrap-server of DIR's broker unless ARGS give one
    local tool="$1" dir="$2"; shift 2
    local cls; cls="$(tool_class "$tool")"
    is_installed || die "not installed; run: $0 install"
    local bootstrap=() a logcfg=()
    for a in "$@"; do [[ "$a" == --bootstrap-server* ]] && bootstrap=(--skip); done
    if [[ ${#bootstrap[@]} -eq 0 ]]; then
        load_state "$dir"
        [[ -n "$STATE_PORT" ]] || die "no broker state in $dir (or pass --bootstrap-server HOST:PORT)"
        bootstrap=(--bootstrap-server "127.0.0.1:$STATE_PORT")
    else
        bootstrap=()
    fi
    [[ -f "$dir/log4j2.properties" ]] && logcfg=(-Dlog4j2.configurationFile="$dir/log4j2.properties" -Dkafka.logs.dir="$dir/logs")
    java -Xmx256m "${logcfg[@]}" -cp "$LIBS/*" "$cls" "${bootstrap[@]}" "$@"
}

# ---- main --------------------------------------------------------------------------------------
main() {
    [[ $# -ge 1 ]] || usage
    local cmd="$1"; shift
    local dir="$DEFAULT_DIR" port="" lines=40
    local -a rest=()
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --port) port="${2:?--port needs a value}"; shift 2 ;;
            --port=*) port="${1#*=}"; shift ;;
            --dir) dir="${2:?--dir needs a value}"; shift 2 ;;
            --dir=*) dir="${1#*=}"; shift ;;
            -n) lines="${2:?-n needs a value}"; shift 2 ;;
            -h|--help) usage 0 ;;
            *) rest+=("$1"); shift ;;
        esac
    done
    if ! tool_class "$cmd" >/dev/null && [[ ${#rest[@]} -gt 0 ]]; then
        die "unknown argument(s): ${rest[*]}"
    fi
    case "$cmd" in
        install) cmd_install ;;
        start) cmd_start "$dir" "$port" ;;
        stop) cmd_stop "$dir" ;;
        restart) cmd_restart "$dir" "$port" ;;
        status) cmd_status "$dir" ;;
        clean) cmd_clean "$dir" ;;
        logs) [[ -d "$dir" ]] && log_tail "$(cd "$dir" && pwd -P)" "$lines" ;;
        topics|consumer-groups|console-consumer|console-producer|get-offsets|configs)
            cmd_tool "$cmd" "$dir" "${rest[@]}" ;;
        version) echo "$KAFKA_VERSION" ;;
        -h|--help|help) usage 0 ;;
        *) log "unknown command: $cmd"; usage ;;
    esac
}

main "$@"
