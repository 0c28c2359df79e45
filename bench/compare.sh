#!/usr/bin/env bash
# Runs the same MQTT loads against mosquitto and holdfast on this machine, one broker at a
# time, and prints a table of absolute numbers and holdfast/mosquitto ratios.
#
#   bash bench/compare.sh                 # 10 s loads, 10,000 idle connections
#   BENCH_DURATION=30s bash bench/compare.sh
#   BENCH_QUICK=1 bash bench/compare.sh   # smoke run: 3 s loads, 1,000 idle connections
#
# Loads, per broker: fanin qos0 (100 -> 1), fanin qos1, fanout qos0 (1 -> 100), latency at
# 10,000 msg/s, idle connections (on a freshly started broker, so the RSS baseline is clean);
# then a flood on holdfast alone with its RSS. Raw JSON results and broker logs are copied to
# $BENCH_KEEP if set. mosquitto runs with its defaults, which leave TCP_NODELAY off (Nagle plus
# the client's delayed ACK shows in its latency tail); BENCH_MOSQUITTO_NODELAY=1 adds
# `set_tcp_nodelay true` to its config.
# Needs: cargo, jq, mosquitto (both apt-installed when missing and running as root).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DURATION=${BENCH_DURATION:-10s}
CONNECTIONS=${BENCH_CONNECTIONS:-10000}
if [[ ${BENCH_QUICK:-0} == 1 ]]; then
    DURATION=3s
    CONNECTIONS=1000
fi

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'compare.sh: %s\n' "$*" >&2; exit 1; }

# 10,000 sockets on each side need more than the usual 1,024 descriptors.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
log "open files limit: $(ulimit -n)"

apt_install() {
    [[ $(id -u) == 0 ]] || die "$1 is missing; install it (apt-get install $1)"
    log "installing $1"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null
}

MOSQUITTO=$(command -v mosquitto || true)
[[ -z $MOSQUITTO && -x /usr/sbin/mosquitto ]] && MOSQUITTO=/usr/sbin/mosquitto
if [[ -z $MOSQUITTO ]]; then
    apt_install mosquitto
    MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
fi
[[ -x $MOSQUITTO ]] || die "mosquitto not found"
command -v jq >/dev/null || apt_install jq

LOADAVG_START=$(cut -d' ' -f1-3 /proc/loadavg)
log "building"
(cd "$ROOT" && cargo build --release -p holdfast -p holdfast-bench)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BENCH=$TARGET_DIR/release/holdfast-bench
HOLDFAST=$TARGET_DIR/release/holdfast

WORK=$(mktemp -d "${TMPDIR:-/tmp}/holdfast-compare.XXXXXX")
BROKER_PID=
cleanup() {
    if [[ -n $BROKER_PID ]]; then kill "$BROKER_PID" 2>/dev/null || true; wait "$BROKER_PID" 2>/dev/null || true; fi
    if [[ -n ${BENCH_KEEP:-} ]]; then mkdir -p "$BENCH_KEEP" && cp -r "$WORK"/. "$BENCH_KEEP"/; fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A loopback port nobody listens on: ask the kernel for one, else probe.
free_port() {
    if command -v python3 >/dev/null; then
        python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
        return
    fi
    local p
    for _ in $(seq 100); do
        p=$((20000 + RANDOM % 20000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return; fi
    done
    die "no free port found"
}

wait_listening() { # port pid name
    for _ in $(seq 100); do
        kill -0 "$2" 2>/dev/null || die "$3 exited at start-up; its log: $(cat "$WORK/$3.log")"
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return; fi
        sleep 0.1
    done
    die "$3 is not listening on 127.0.0.1:$1 after 10 s"
}

start_broker() { # name -> sets BROKER_PID, PORT
    PORT=$(free_port)
    case $1 in
    mosquitto)
        printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_queued_messages 1000\n' "$PORT" >"$WORK/mosquitto.conf"
        if [[ ${BENCH_MOSQUITTO_NODELAY:-0} == 1 ]]; then echo "set_tcp_nodelay true" >>"$WORK/mosquitto.conf"; fi
        "$MOSQUITTO" -c "$WORK/mosquitto.conf" >>"$WORK/mosquitto.log" 2>&1 &
        ;;
    holdfast)
        mkdir -p "$WORK/holdfast-data"
        cat >"$WORK/holdfast.toml" <<TOML
[node]
name = "bench"
data_dir = "$WORK/holdfast-data"

[mqtt]
max_mqueue_len = 100000
sys_interval = "0s"

[[listeners]]
kind = "tcp"
bind = "127.0.0.1:$PORT"
max_connections = 200000
max_conn_rate = 100000

[auth]
allow_anonymous = true
TOML
        "$HOLDFAST" run --config "$WORK/holdfast.toml" >>"$WORK/holdfast.log" 2>&1 &
        ;;
    esac
    BROKER_PID=$!
    wait_listening "$PORT" "$BROKER_PID" "$1"
    log "$1 pid $BROKER_PID on 127.0.0.1:$PORT"
}

stop_broker() { # name
    if ! kill -0 "$BROKER_PID" 2>/dev/null; then
        echo "$1 (pid $BROKER_PID) was no longer running when it was to be stopped" >>"$WORK/problems"
    fi
    kill "$BROKER_PID" 2>/dev/null || true
    wait "$BROKER_PID" 2>/dev/null || true
    BROKER_PID=
}

run_bench() { # broker test args...
    local broker=$1 test=$2 rc=0
    shift 2
    log "$broker: $test ($*)"
    "$BENCH" --json --port "$PORT" --pid "$BROKER_PID" "$@" >"$WORK/$broker.$test.json" 2>>"$WORK/$broker.$test.err" || rc=$?
    if [[ ! -s $WORK/$broker.$test.json ]]; then
        jq -cn --arg e "exit $rc: $(tail -1 "$WORK/$broker.$test.err" 2>/dev/null)" '{error: $e}' >"$WORK/$broker.$test.json"
    fi
    if [[ $rc != 0 ]]; then echo "$broker $test: holdfast-bench exited $rc" >>"$WORK/problems"; fi
    if ! kill -0 "$BROKER_PID" 2>/dev/null; then
        echo "$broker $test: the broker process died during the test (see its log below)" >>"$WORK/problems"
        tail -20 "$WORK/$broker.log" >>"$WORK/problems" || true
        start_broker "$broker"
    fi
    jq -r --arg b "$broker" --arg t "$test" '
        if .error then "   \($b) \($t): ERROR \(.error)"
        elif .mode == "idle" then "   \($b) \($t): \(.established) connections, \(.kb_per_conn) KB each"
        else "   \($b) \($t): \(.recv_rate) msg/s received, lost \(.lost), reordered \(.reordered), dup \(.duplicates)" end' \
        "$WORK/$broker.$test.json" >&2
}

for broker in mosquitto holdfast; do
    start_broker "$broker"
    run_bench "$broker" fanin0 fanin --qos 0 --duration "$DURATION"
    run_bench "$broker" fanin1 fanin --qos 1 --duration "$DURATION"
    run_bench "$broker" fanout0 fanout --qos 0 --duration "$DURATION"
    run_bench "$broker" latency latency --rate 10000 --duration "$DURATION"
    stop_broker "$broker"
    start_broker "$broker"
    run_bench "$broker" idle idle --connections "$CONNECTIONS" --settle 3s
    stop_broker "$broker"
done
start_broker holdfast
run_bench holdfast flood flood --duration "$DURATION" --sub-reads false
stop_broker holdfast

# ---- the table -----------------------------------------------------------------------------

get() { # broker test jq-path -> value or "-"
    jq -r "if .error then \"ERR\" else ($3 // \"-\") end | tostring" "$WORK/$1.$2.json" 2>/dev/null || echo "-"
}

ratio() {
    awk -v a="$1" -v b="$2" 'BEGIN {
        if (a ~ /^-?[0-9.]+$/ && b ~ /^-?[0-9.]+$/ && a + 0 != 0) printf "%.2f", b / a; else printf "-" }'
}

fmt() { # thousands separators for integers
    awk -v v="$1" 'BEGIN {
        if (v !~ /^[0-9]+$/) { printf "%s", v; exit }
        s = ""; n = length(v)
        for (i = 1; i <= n; i++) { s = s substr(v, i, 1); if ((n - i) % 3 == 0 && i < n) s = s "," }
        printf "%s", s }'
}

row() { # label test jq-path
    local m h
    m=$(get mosquitto "$2" "$3")
    h=$(get holdfast "$2" "$3")
    printf '%-44s %16s %16s %10s\n' "$1" "$(fmt "$m")" "$(fmt "$h")" "$(ratio "$m" "$h")"
}

BIN_SIZE=$(stat -c %s "$HOLDFAST")
echo
echo "holdfast vs mosquitto ($("$MOSQUITTO" -h 2>/dev/null | head -1 | sed 's/ running.*//')$([[ ${BENCH_MOSQUITTO_NODELAY:-0} == 1 ]] && echo ', set_tcp_nodelay true')), loads of $DURATION, $(nproc) CPUs, load average at start $LOADAVG_START, $(date -u +%Y-%m-%dT%H:%MZ)"
echo "hf/mosq = holdfast / mosquitto; lost = expected deliveries never received (after a 5 s drain)"
printf '%-44s %16s %16s %10s\n' "metric" "mosquitto" "holdfast" "hf/mosq"
printf '%s\n' "$(printf '%.0s-' $(seq 89))"
row "fanin qos0 100->1 msg/s (higher better)" fanin0 .recv_rate
row "fanin qos0 lost" fanin0 .lost
row "fanin qos0 reordered / duplicates" fanin0 '"\(.reordered)/\(.duplicates)"'
row "fanin qos0 latency p50 us" fanin0 .latency_us.p50
row "fanin qos0 latency p99 us" fanin0 .latency_us.p99
row "fanin qos1 100->1 msg/s (higher better)" fanin1 .recv_rate
row "fanin qos1 lost" fanin1 .lost
row "fanin qos1 reordered / duplicates" fanin1 '"\(.reordered)/\(.duplicates)"'
row "fanin qos1 PUBACKs" fanin1 .acked
row "fanin qos1 latency p99 us" fanin1 .latency_us.p99
row "fanout qos0 1->100 deliveries/s (higher)" fanout0 .recv_rate
row "fanout qos0 lost" fanout0 .lost
row "fanout qos0 latency p99 us" fanout0 .latency_us.p99
row "latency 10k msg/s p50 us (lower better)" latency .latency_us.p50
row "latency 10k msg/s p90 us" latency .latency_us.p90
row "latency 10k msg/s p99 us" latency .latency_us.p99
row "latency 10k msg/s p99.9 us" latency .latency_us.p999
row "latency 10k msg/s max us" latency .latency_us.max
row "latency 10k msg/s lost" latency .lost
row "idle $CONNECTIONS conns established" idle .established
row "idle conn/s (higher better)" idle .conn_rate
row "idle RSS KB per connection (lower better)" idle .kb_per_conn
row "idle RSS after, KB" idle .rss_after_kb
row "max RSS during fanin qos0, KB" fanin0 .rss.max_kb
row "max RSS during fanout, KB" fanout0 .rss.max_kb
printf '%s\n' "$(printf '%.0s-' $(seq 89))"
echo "holdfast binary (stripped release): $BIN_SIZE bytes  ($(ls -l "$HOLDFAST" | awk '{print $5, $9}'))"
echo "holdfast flood ($(get holdfast flood .publishers) publishers, qos0, subscriber not reading, $DURATION):" \
    "sent $(fmt "$(get holdfast flood .sent)") msg ($(fmt "$(get holdfast flood .send_rate)") msg/s), received $(fmt "$(get holdfast flood .received)")," \
    "RSS start $(fmt "$(get holdfast flood .rss.start_kb)") KB, max $(fmt "$(get holdfast flood .rss.max_kb)") KB," \
    "end $(fmt "$(get holdfast flood .rss.end_kb)") KB; subscriber closed by broker: $(get holdfast flood .subs_closed_by_broker)"

# Anything odd, in full: errors reported by the tool, loss, reordering, duplicates, crashes.
{
    for f in "$WORK"/*.json; do
        name=$(basename "$f" .json)
        jq -r --arg n "$name" '
            (if .error then "\($n): \(.error)" else empty end),
            (.errors // [] | .[] | "\($n): \(.)"),
            (if (.mode // "") != "idle" and (.mode // "") != "flood" and ((.lost // 0) > 0 or (.reordered // 0) > 0 or (.duplicates // 0) > 0)
             then "\($n): lost \(.lost), reordered \(.reordered), duplicates \(.duplicates) of \(.expected) expected" else empty end),
            (if (.foreign // 0) > 0 then "\($n): \(.foreign) foreign messages" else empty end),
            (if .rss.gone then "\($n): broker process disappeared during the run" else empty end)' "$f"
    done
    [[ -f $WORK/problems ]] && cat "$WORK/problems"
} >"$WORK/notes" || true
if [[ -s $WORK/notes ]]; then
    echo
    echo "notes:"
    sed 's/^/  /' "$WORK/notes"
fi
