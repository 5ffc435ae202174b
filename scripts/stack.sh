#!/usr/bin/env bash
# The Kafka pipeline on one machine: a broker, pipeline worker(s) and the gateway over Kafka.
#
#   scripts/stack.sh up       broker (scripts/kafka.sh) + `callscribe topics create` + `callscribe worker` + `callscribe serve --kafka`
#   scripts/stack.sh down     stop the gateway and the workers (SIGTERM, then SIGKILL after 30 s), then the broker
#   scripts/stack.sh status   what is running (exit 0 when all of it is)
#   scripts/stack.sh logs     tail of the worker and gateway logs
#
# Then: `callscribe produce --bootstrap 127.0.0.1:9092 --call-id C1 --realtime call.wav`, or a
# DashScope SDK / WebSocket client on ws://127.0.0.1:8080/api-ws/v1/inference.
#
# Environment:
#   CALLSCRIBE_STACK_DIR       logs, pid files and the broker's data (default /tmp/callscribe-stack)
#   CALLSCRIBE_STACK_WORKERS   number of workers (default 1; each loads the model)
#   CALLSCRIBE_KAFKA_PORT      broker port (default 9092)
#   CALLSCRIBE_PORT            gateway port (default 8080)
#   CALLSCRIBE_METRICS_PORT    first worker's /metrics port (default 9464; the next get +1, ...)
#   CALLSCRIBE_BIN             the callscribe command (default .venv/bin/callscribe, else
#                              callscribe on PATH, else scripts/callscribe which sets up .venv)
#   and any other CALLSCRIBE_* setting (topics, partitions, API keys, ...).
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
DIR="${CALLSCRIBE_STACK_DIR:-/tmp/callscribe-stack}"
WORKERS="${CALLSCRIBE_STACK_WORKERS:-1}"
KPORT="${CALLSCRIBE_KAFKA_PORT:-9092}"
PORT="${CALLSCRIBE_PORT:-8080}"
MPORT="${CALLSCRIBE_METRICS_PORT:-9464}"
export CALLSCRIBE_LOG_FORMAT="${CALLSCRIBE_LOG_FORMAT:-json}"

log() { printf '[stack.sh] %s\n' "$*" >&2; }
die() { printf '[stack.sh] ERROR: %s\n' "$*" >&2; exit 1; }

bin() {
    if [[ -n "${CALLSCRIBE_BIN:-}" ]]; then echo "$CALLSCRIBE_BIN"
    elif [[ -x "$here/.venv/bin/callscribe" ]]; then echo "$here/.venv/bin/callscribe"
    elif command -v callscribe >/dev/null 2>&1; then command -v callscribe
    else echo "$here/scripts/callscribe"; fi
}

alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

start_bg() {  # name, then the command
    local name="$1"; shift
    if alive "$DIR/$name.pid"; then log "$name already running (pid $(cat "$DIR/$name.pid"))"; return; fi
    nohup "$@" >"$DIR/$name.log" 2>&1 </dev/null &
    echo $! >"$DIR/$name.pid"
    log "$name started (pid $!), log $DIR/$name.log"
}

stop_pid() {  # name: SIGTERM, up to 30 s, then SIGKILL
    local f="$DIR/$1.pid"
    if ! alive "$f"; then rm -f "$f"; return; fi
    local pid; pid="$(cat "$f")"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    if kill -0 "$pid" 2>/dev/null; then log "$1 did not stop in 30 s: SIGKILL"; kill -KILL "$pid" || true; fi
    rm -f "$f"
    log "$1 stopped"
}

wait_for() {  # description, seconds, then a command that succeeds when ready
    local what="$1" secs="$2"; shift 2
    for _ in $(seq 1 $((secs * 2))); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.5
    done
    die "$what not ready after ${secs} s (see $DIR/*.log)"
}

worker_ready() { grep -q '"audio partitions assigned"' "$DIR/$1.log"; }
gateway_ready() {
    python3 - "$PORT" <<'EOF'
import sys, urllib.request
urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/readyz", timeout=2)
EOF
}

up() {
    mkdir -p "$DIR"
    local out bootstrap cmd
    out="$("$here/scripts/kafka.sh" start --port "$KPORT" --dir "$DIR/kafka")"
    bootstrap="${out#KAFKA_BOOTSTRAP=}"
    export CALLSCRIBE_KAFKA_BOOTSTRAP="$bootstrap"
    cmd="$(bin)"
    # the one place that creates the pipeline's topics; the worker and the gateway only check
    "$cmd" topics create >"$DIR/topics.log" 2>&1 || die "callscribe topics create failed: $(tail -n 5 "$DIR/topics.log")"
    for i in $(seq 1 "$WORKERS"); do
        start_bg "worker$i" "$cmd" worker --metrics-port $((MPORT + i - 1))
    done
    start_bg serve "$cmd" serve --kafka "$bootstrap" --port "$PORT"
    for i in $(seq 1 "$WORKERS"); do wait_for "worker$i" 120 worker_ready "worker$i"; done
    wait_for "gateway" 60 gateway_ready
    cat <<EOF
KAFKA_BOOTSTRAP=$bootstrap
CALLSCRIBE_WS=ws://127.0.0.1:$PORT/api-ws/v1/inference
CALLSCRIBE_WORKER_METRICS=http://127.0.0.1:$MPORT/metrics
EOF
}

down() {
    stop_pid serve
    for f in "$DIR"/worker*.pid; do [[ -e "$f" ]] && stop_pid "$(basename "$f" .pid)"; done
    if [[ -d "$DIR/kafka" ]]; then "$here/scripts/kafka.sh" stop --dir "$DIR/kafka"; fi
}

status() {
    local ok=0
    "$here/scripts/kafka.sh" status --dir "$DIR/kafka" >/dev/null 2>&1 && log "broker: running" \
        || { log "broker: stopped"; ok=3; }
    for f in "$DIR"/serve.pid "$DIR"/worker*.pid; do
        [[ -e "$f" ]] || continue
        if alive "$f"; then log "$(basename "$f" .pid): running (pid $(cat "$f"))"
        else log "$(basename "$f" .pid): stopped"; ok=3; fi
    done
    return $ok
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) status ;;
    logs) tail -n "${2:-40}" "$DIR"/worker*.log "$DIR"/serve.log ;;
    *) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
