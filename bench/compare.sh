#!/usr/bin/env bash
# Runs the same MQTT loads against mosquitto and holdfast on this machine, one broker at a
# time, and prints a table of absolute numbers and holdfast/mosquitto ratios.
#
#   bash bench/compare.sh                 # 10 s loads, 10,000 idle connections
#   BENCH_DURATION=30s bash bench/compare.sh
#   BENCH_QUICK=1 bash bench/compare.sh   # smoke run: 3 s loads, 1,000 idle connections
#   BENCH_ONLY=tls bash bench/compare.sh  # only the TLS section (also: broker, durable, idle, musl)
#
# Loads, per broker: fanin qos0 (100 -> 1), fanin qos1 (closed loop, and open loop: publishers
# limited only by their PUBACKs), fanout qos0 (1 -> 100), latency at
# 10,000 msg/s, idle connections (on a freshly started broker, so the RSS baseline is clean);
# then a flood on holdfast alone with its RSS. Raw JSON results and broker logs are copied to
# $BENCH_KEEP if set. mosquitto runs with its defaults, which leave TCP_NODELAY off (Nagle plus
# the client's delayed ACK shows in its latency tail); BENCH_MOSQUITTO_NODELAY=1 adds
# `set_tcp_nodelay true` to its config.
# Store-and-forward (after the broker loads; BENCH_ONLY=durable runs only these): the edge
# broker bridges sensors/# to a "cloud" mosquitto on another port, through its queue.
#   - durable ingest: 100 QoS 1 publishers (8 in flight each) with the uplink down, PUBACK rate and p99, and the
#     bytes the edge broker wrote to disk per payload byte (/proc/PID/io write_bytes), for
#     holdfast flush = group | every | interval:500ms, and for mosquitto (its bridge queue is
#     in memory; `persistence true` only saves it every autosave_interval, so not durable);
#   - backlog drain: BENCH_DRAIN_COUNT (default 1,000,000) 64-byte messages queued while the
#     uplink is down, then the cloud broker starts and a subscriber there times the drain;
#     and 200 MB of 4 KB messages the same way.
# ACL cost (BENCH_ONLY=acl runs only this; BENCH_ACL=1 adds it to the rest): fanin qos0 on
# holdfast without an ACL and with a generated 10,000-rule one, and the ratio.
# TLS (after the store-and-forward section; BENCH_ONLY=tls runs only these): both brokers on
# one TLS listener with a P-256 certificate from a CA made here by openssl:
#   - handshakes/s: 32 loops of TCP connect + full TLS handshake + CONNECT + CONNACK + close,
#     and the same with session resumption (rustls client session cache / tickets);
#   - fanin qos0 100 -> 1 over TLS (the bench client encrypts in its own proxy task per
#     connection, the same for both brokers).
# Idle by transport (after TLS; BENCH_ONLY=idle runs these and the plain idle test): idle
# connections over TLS and over WebSocket (holdfast-bench --ws) on a fresh broker each, RSS per
# connection. A mosquitto built without websockets gets an error row instead of a number.
# The bench client spends 3 descriptors on each TLS/WS connection (socket + its proxy's
# socketpair), so these use min(BENCH_CONNECTIONS, open-files limit / 4) connections
# (BENCH_TRANSPORT_CONNECTIONS overrides).
# musl (last; BENCH_ONLY=musl runs only this): the same code built for x86_64-unknown-linux-musl
# (the firmware's libc, static-pie, mimalloc) against the glibc build, with the broker's CPU %.
# CoAP (BENCH_ONLY=coap runs only this; part of a full run): holdfast with [coap] on its
# defaults, CoAP devices (holdfast-bench coap, UDP) publishing to ps/coapbench/{i} and one MQTT
# subscriber counting: NON as fast as the sockets take them, the same declining the 2.04 with
# No-Response (RFC 7967, fire-and-forget telemetry), NON paced at 100,000/s, CON with
# one request outstanding per device (NSTART = 1) from 64 devices; the broker's CPU time per
# delivered message against an MQTT QoS 0 fan-in on the same broker (mosquitto has no CoAP),
# unpaced (100 -> 1) and under the same load as the CoAP rows: NON against 64 QoS 0
# publishers at 100,000/s in all, CON against 64 QoS 1 publishers with one PUBLISH in flight.
# LwM2M (BENCH_ONLY=lwm2m runs only this; part of a full run): holdfast with [lwm2m] on its
# defaults, BENCH_LWM2M_ENDPOINTS (10,000) simulated devices registering at once, each observed
# through an MQTT command, then notifying at 20,000/s in all; registrations/s, notifications/s
# delivered to MQTT, and the broker's RSS.
# Modbus (BENCH_ONLY=modbus runs only this; part of a full run): bench/modbus.sh (100 Modbus TCP
# devices x 100 points at 1 s against pymodbus: gateway CPU, lateness, reads per cycle) and
# bench/modbus_rtu.sh (4 unit ids on a 115,200 baud line emulated at its real rate: polls/s
# against the theoretical rate, fairness). No mosquitto ratio: mosquitto does not poll Modbus.
# Needs: cargo, jq, openssl, mosquitto (both apt-installed when missing and running as root).
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
TRANSPORT_CONNECTIONS=${BENCH_TRANSPORT_CONNECTIONS:-$(( CONNECTIONS < $(ulimit -n) / 4 ? CONNECTIONS : $(ulimit -n) / 4 ))}

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
        printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_queued_messages %s\n' "$PORT" "${MOSQ_QUEUE:-1000}" >"$WORK/mosquitto.conf"
        if [[ -n ${WS_MODE:-} ]]; then echo "protocol websockets" >>"$WORK/mosquitto.conf"; fi
        if [[ -n ${TLS_MODE:-} ]]; then
            printf 'certfile %s\nkeyfile %s\ncafile %s\n' "$PKI/server.pem" "$PKI/server.key" "$PKI/ca.pem" >>"$WORK/mosquitto.conf"
            # As root, mosquitto drops to the mosquitto user, which cannot read $WORK.
            if [[ $(id -u) == 0 ]]; then echo "user root" >>"$WORK/mosquitto.conf"; fi
        fi
        if [[ ${BENCH_MOSQUITTO_NODELAY:-0} == 1 ]]; then echo "set_tcp_nodelay true" >>"$WORK/mosquitto.conf"; fi
        if [[ -n ${BRIDGE_PORT:-} ]]; then
            mkdir -p "$WORK/mosquitto-data"
            cat >>"$WORK/mosquitto.conf" <<CONF
persistence true
persistence_location $WORK/mosquitto-data/
max_inflight_messages ${BRIDGE_INFLIGHT:-256}
connection cloud
address 127.0.0.1:$BRIDGE_PORT
clientid bench-edge
cleansession false
restart_timeout 1 1
topic sensors/# out 1 "" edge/bench/
CONF
        fi
        "$MOSQUITTO" -c "$WORK/mosquitto.conf" >>"$WORK/mosquitto.log" 2>&1 &
        ;;
    holdfast | holdfast-musl)
        local bin=$HOLDFAST
        [[ $1 == holdfast-musl ]] && bin=$HOLDFAST_MUSL
        mkdir -p "$WORK/holdfast-data"
        local listener_kind=tcp listener_tls=
        if [[ -n ${TLS_MODE:-} ]]; then
            listener_kind=tls
            listener_tls="tls = { cert = \"$PKI/server.pem\", key = \"$PKI/server.key\", ca = \"$PKI/ca.pem\" }"
        fi
        if [[ -n ${WS_MODE:-} ]]; then listener_kind=$([[ -n ${TLS_MODE:-} ]] && echo wss || echo ws); fi
        cat >"$WORK/holdfast.toml" <<TOML
[node]
name = "bench"
data_dir = "$WORK/holdfast-data"

[mqtt]
max_mqueue_len = 100000
sys_interval = "0s"

[[listeners]]
kind = "$listener_kind"
bind = "127.0.0.1:$PORT"
max_connections = 200000
max_conn_rate = 100000
$listener_tls

[auth]
allow_anonymous = true
$([[ -n ${ACL_FILE:-} ]] && printf 'acl_file = "%s"\nacl_nomatch = "deny"\n' "$ACL_FILE")
$([[ -n ${COAP_PORT:-} ]] && printf '\n[coap]\nbind = "127.0.0.1:%s"\n' "$COAP_PORT")
$([[ -n ${LWM2M_PORT:-} ]] && printf '\n[lwm2m]\nbind = "127.0.0.1:%s"\n' "$LWM2M_PORT")
TOML
        if [[ -n ${BRIDGE_PORT:-} ]]; then
            cat >>"$WORK/holdfast.toml" <<TOML

[[bridges]]
name = "cloud"
server = "mqtt://127.0.0.1:$BRIDGE_PORT"
client_id = "bench-edge"
remote_prefix = "edge/bench/"
forward = ["sensors/#"]
max_inflight = ${BRIDGE_INFLIGHT:-256}
backoff_min = "100ms"
backoff_max = "1s"
queue = { max_bytes = "2GB", flush = "${FLUSH:-group}" }
TOML
        fi
        rm -rf "$WORK/holdfast-data/bridges"
        "$bin" run --config "$WORK/holdfast.toml" >>"$WORK/$1.log" 2>&1 &
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
        elif .mode == "handshakes" then "   \($b) \($t): \(.handshake_rate) handshakes/s (\(.handshakes) in \(.seconds | floor) s, \(.failed) failed)"
        elif .mode == "lwm2m" then "   \($b) \($t): \(.registered) registered at \(.registrations_per_s)/s, \(.notify_per_s) notifications/s delivered, max RSS \(.rss.max_kb // "-") KB"
        elif .mode == "coap" then "   \($b) \($t): \(.type) sent \(.sent_per_s)/s, delivered \(.delivered_per_s)/s, lost \(.lost), p99 \(.latency_us.p99 // "-") us, CPU \(.broker_cpu_us_per_msg // "-") us/msg"
        elif .mode == "ingest" then "   \($b) \($t): \(.ack_rate) PUBACK/s, p99 \(.puback_latency_us.p99) us, disk \(.write_amplification // "-")x payload"
        else "   \($b) \($t): \(.recv_rate) msg/s received, lost \(.lost), reordered \(.reordered), dup \(.duplicates)" end' \
        "$WORK/$broker.$test.json" >&2
}

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

ONLY=${BENCH_ONLY:-all}
for broker in mosquitto holdfast; do
    [[ $ONLY == all || $ONLY == broker ]] || break
    start_broker "$broker"
    run_bench "$broker" fanin0 fanin --qos 0 --duration "$DURATION"
    run_bench "$broker" fanin1 fanin --qos 1 --duration "$DURATION"
    # Open loop: the publishers do not wait for the subscriber, only for their PUBACKs, so a
    # broker that acknowledges faster than its subscriber reads must slow them down or drop.
    run_bench "$broker" fanin1open fanin --qos 1 --max-outstanding 0 --duration "$DURATION"
    run_bench "$broker" fanout0 fanout --qos 0 --duration "$DURATION"
    run_bench "$broker" latency latency --rate 10000 --duration "$DURATION"
    stop_broker "$broker"
    start_broker "$broker"
    run_bench "$broker" idle idle --connections "$CONNECTIONS" --settle 3s
    stop_broker "$broker"
done
if [[ $ONLY == all || $ONLY == broker ]]; then
    start_broker holdfast
    run_bench holdfast flood flood --duration "$DURATION" --sub-reads false
    stop_broker holdfast
fi

# ---- ACL cost (BENCH_ONLY=acl, or BENCH_ACL=1 with the rest) ----------------------------------
# fanin qos0 on holdfast without an ACL and with a generated 10,000-rule ACL (acl_nomatch deny)
# whose only rule that matches the bench clients is the last one (allow bench/#). The other
# 9,999 mix every kind of `who` (other users, other client ids, 10.x networks, all) with topics
# that share levels with the bench topics (`+/{i}/cmd`), so checks walk real trie branches.
# Rounds alternate (BENCH_ACL_ROUNDS, default 2) and the best of each side counts.

gen_acl() { # file
    local i who
    {
        for ((i = 0; i < 9999; i++)); do
            case $((i % 5)) in
            0) who="{ user = \"user-$i\" }" ;;
            1) who="{ clientid = \"dev-$i\" }" ;;
            2) who="{ ipaddr = \"10.$((i / 256 % 256)).$((i % 256)).0/24\" }" ;;
            *) who='{ all = true }' ;;
            esac
            printf '[[rules]]\npermission = "deny"\nwho = %s\naction = "all"\ntopics = ["devices/%d/#", "+/%d/cmd", "eq fleet/%d"]\n\n' "$who" "$i" "$i" "$i"
        done
        printf '[[rules]]\npermission = "allow"\nwho = { all = true }\naction = "all"\ntopics = ["bench/#"]\n'
    } >"$1"
}

if [[ $ONLY == acl || ${BENCH_ACL:-0} == 1 ]]; then
    gen_acl "$WORK/acl.toml"
    log "generated $WORK/acl.toml: $(grep -c '^\[\[rules\]\]' "$WORK/acl.toml") rules"
    for round in $(seq "${BENCH_ACL_ROUNDS:-2}"); do
        start_broker holdfast
        run_bench holdfast "acl-off-$round" fanin --qos 0 --duration "$DURATION"
        stop_broker holdfast
        ACL_FILE=$WORK/acl.toml start_broker holdfast
        run_bench holdfast "acl-on-$round" fanin --qos 0 --duration "$DURATION"
        stop_broker holdfast
    done
    best() { # prefix -> best recv_rate over the rounds
        for f in "$WORK"/holdfast."$1"-*.json; do jq -r '.recv_rate // 0' "$f"; done | sort -n | tail -1
    }
    ACL_OFF=$(best acl-off)
    ACL_ON=$(best acl-on)
    echo
    echo "ACL cost: holdfast fanin qos0 100->1, $DURATION, best of ${BENCH_ACL_ROUNDS:-2} alternating rounds"
    printf '%-44s %16s\n' "without ACL, msg/s" "$(fmt "$ACL_OFF")"
    printf '%-44s %16s\n' "10,000-rule ACL (match = last rule), msg/s" "$(fmt "$ACL_ON")"
    printf '%-44s %16s\n' "with / without" "$(ratio "$ACL_OFF" "$ACL_ON")"
    for f in "$WORK"/holdfast.acl-*.json; do
        printf '  %s: %s msg/s\n' "$(basename "$f" .json)" "$(jq -r '.recv_rate // .error' "$f")"
    done
fi

# ---- store-and-forward ---------------------------------------------------------------------

CLOUD_PID=
stop_cloud() {
    if [[ -n $CLOUD_PID ]]; then kill "$CLOUD_PID" 2>/dev/null || true; wait "$CLOUD_PID" 2>/dev/null || true; fi
    CLOUD_PID=
}
trap 'stop_cloud; cleanup' EXIT

durable_ingest() { # broker label [flush]: 100 QoS 1 publishers, uplink down
    BRIDGE_PORT=$(free_port) FLUSH=${3:-group} start_broker "$1"
    run_bench "$1" "ingest-$2" ingest --publishers 100 --inflight 8 --duration "$DURATION"
    stop_broker "$1"
}

cpu_ticks() { # pid -> user + system clock ticks so far (0 when it is gone)
    awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0
}

durable_drain() { # broker label count payload: fill with the uplink down, then time the drain
    local cloud_port run drain_pid=
    cloud_port=$(free_port)
    run=$((RANDOM * 32768 + RANDOM))
    local log_start
    log_start=$(wc -l <"$WORK/$1.log" 2>/dev/null || echo 0)
    BRIDGE_PORT=$cloud_port MOSQ_QUEUE=$(($3 + 1000)) start_broker "$1"
    run_bench "$1" "fill-$2" ingest --publishers 10 --inflight 64 --payload "$4" --count "$3" --run "$run"
    if [[ $2 != nosub* ]]; then
        log "$1: drain-$2 ($3 x $4 B to a cloud mosquitto, counted by a QoS 0 subscriber there)"
        "$BENCH" --json --port "$cloud_port" drain --filter 'edge/bench/#' --expect "$3" --publishers 10 \
            --run "$run" --qos 0 --idle-timeout 20s >"$WORK/$1.drain-$2.json" 2>>"$WORK/$1.drain-$2.err" &
        drain_pid=$!
    else
        log "$1: drain-$2 ($3 x $4 B to a cloud mosquitto without subscribers, timed by the gateway's log)"
    fi
    printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_queued_messages %s\nmax_inflight_messages 0\n' \
        "$cloud_port" "$(($3 + 1000))" >"$WORK/cloud.conf"
    local edge_ticks cloud_ticks
    edge_ticks=$(cpu_ticks "$BROKER_PID")
    "$MOSQUITTO" -c "$WORK/cloud.conf" >>"$WORK/cloud.log" 2>&1 &
    CLOUD_PID=$!
    if [[ -n $drain_pid ]]; then
        wait "$drain_pid" || echo "$1 drain-$2: holdfast-bench drain exited $?" >>"$WORK/problems"
        # CPU per drained message, edge broker and cloud mosquitto (the subscriber's time
        # is its own), in microseconds.
        edge_ticks=$(($(cpu_ticks "$BROKER_PID") - edge_ticks))
        cloud_ticks=$(cpu_ticks "$CLOUD_PID")
        local hz
        hz=$(getconf CLK_TCK)
        jq -c --argjson e "$edge_ticks" --argjson c "$cloud_ticks" --argjson hz "$hz" --argjson n "$3" \
            '. + {edge_cpu_us_per_msg: ($e * 1000000 / $hz / $n), cloud_cpu_us_per_msg: ($c * 1000000 / $hz / $n)}' \
            "$WORK/$1.drain-$2.json" >"$WORK/$1.drain-$2.json.tmp" && mv "$WORK/$1.drain-$2.json.tmp" "$WORK/$1.drain-$2.json"
    else
        # holdfast logs `bridge backlog drained messages=N seconds=S rate=R` when its queue empties.
        local line=
        for _ in $(seq 1200); do
            line=$(tail -n +"$((log_start + 1))" "$WORK/$1.log" | grep -a 'bridge backlog drained' | tail -1 || true)
            [[ -n $line ]] && break
            sleep 0.1
        done
        jq -cn --arg l "$line" '($l | capture("messages=(?<m>[0-9]+) seconds=\"?(?<s>[0-9.]+)\"? rate=(?<r>[0-9]+)")) as $c
            | {mode: "drain", unique: ($c.m | tonumber), expect: ($c.m | tonumber), span_s: ($c.s | tonumber),
               drain_rate: ($c.r | tonumber), lost: 0, duplicates: 0}' >"$WORK/$1.drain-$2.json" 2>/dev/null || true
        [[ -n $line ]] || echo "$1 drain-$2: no 'bridge backlog drained' line within 120 s" >>"$WORK/problems"
    fi
    [[ -s $WORK/$1.drain-$2.json ]] || jq -cn --arg e "$(tail -1 "$WORK/$1.drain-$2.err" 2>/dev/null)" '{error: $e}' >"$WORK/$1.drain-$2.json"
    jq -r --arg b "$1" --arg t "drain-$2" '"   \($b) \($t): \(.unique // "-") of \(.expect // "-") in \(.span_s // "-") s = \(.drain_rate // "-") msg/s, lost \(.lost // "-"), dup \(.duplicates // "-") \(.error // "")"' \
        "$WORK/$1.drain-$2.json" >&2
    stop_cloud
    stop_broker "$1"
}

if [[ $ONLY == all || $ONLY == durable ]]; then
    DRAIN_COUNT=${BENCH_DRAIN_COUNT:-1000000}
    BIG_COUNT=${BENCH_BIG_COUNT:-51200}
    if [[ ${BENCH_QUICK:-0} == 1 ]]; then DRAIN_COUNT=100000; BIG_COUNT=5120; fi
    durable_ingest mosquitto mem
    for flush in group every interval:500ms; do
        durable_ingest holdfast "${flush%%:*}" "$flush"
    done
    for broker in mosquitto holdfast; do
        durable_drain "$broker" 64b "$DRAIN_COUNT" 64
        durable_drain "$broker" 4kb "$BIG_COUNT" 4096
    done
    durable_drain holdfast nosub64b "$DRAIN_COUNT" 64
    durable_drain holdfast nosub4kb "$BIG_COUNT" 4096
fi

# ---- TLS -------------------------------------------------------------------------------------

make_pki() { # a CA and a P-256 server certificate for 127.0.0.1/localhost in $PKI, once
    [[ -n ${PKI:-} && -f $PKI/server.pem ]] && return
    command -v openssl >/dev/null || apt_install openssl
    PKI=$WORK/pki
    mkdir -p "$PKI"
    (
        cd "$PKI"
        ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
        openssl req -x509 -days 2 -subj /CN=bench-ca "${ec[@]}" -keyout ca.key -out ca.pem
        printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' >server.ext
        openssl req -subj /CN=localhost "${ec[@]}" -keyout server.key -out server.csr
        openssl x509 -req -days 2 -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -extfile server.ext -out server.pem
    ) >"$WORK/openssl.log" 2>&1 || die "openssl failed: $(cat "$WORK/openssl.log")"
}

if [[ $ONLY == all || $ONLY == tls ]]; then
    make_pki
    TLS_ARGS=(--tls-ca "$PKI/ca.pem" --tls-server-name localhost)
    for broker in mosquitto holdfast; do
        TLS_MODE=1 start_broker "$broker"
        run_bench "$broker" tls-hs handshakes --concurrency 32 --duration "$DURATION" "${TLS_ARGS[@]}"
        run_bench "$broker" tls-hs-resume handshakes --concurrency 32 --duration "$DURATION" --tls-resume "${TLS_ARGS[@]}"
        run_bench "$broker" tls-fanin0 fanin --qos 0 --duration "$DURATION" "${TLS_ARGS[@]}"
        stop_broker "$broker"
    done
fi

# ---- idle connections over TLS and WebSocket (BENCH_ONLY=idle runs only these) ---------------

# Debian's mosquitto may be built without websockets: it then reads `protocol websockets` but
# cannot open the listener. Probe once, so the table says so instead of the script dying.
mosquitto_has_websockets() {
    local port pid ok=1
    port=$(free_port)
    printf 'listener %s 127.0.0.1\nprotocol websockets\nallow_anonymous true\n' "$port" >"$WORK/mosquitto-ws-probe.conf"
    "$MOSQUITTO" -c "$WORK/mosquitto-ws-probe.conf" >"$WORK/mosquitto-ws-probe.log" 2>&1 &
    pid=$!
    for _ in $(seq 20); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then ok=0; break; fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    return $ok
}

if [[ $ONLY == all || $ONLY == idle ]]; then
    make_pki
    IDLE_TLS_ARGS=(--tls-ca "$PKI/ca.pem" --tls-server-name localhost)
    for broker in mosquitto holdfast; do
        if [[ $ONLY == idle ]]; then
            start_broker "$broker"
            run_bench "$broker" idle idle --connections "$CONNECTIONS" --settle 3s
            stop_broker "$broker"
        fi
        TLS_MODE=1 start_broker "$broker"
        run_bench "$broker" idle-tls idle --connections "$TRANSPORT_CONNECTIONS" --settle 3s "${IDLE_TLS_ARGS[@]}"
        stop_broker "$broker"
        if [[ $broker == mosquitto ]] && ! mosquitto_has_websockets; then
            log "mosquitto: no websockets support in this build; idle-ws skipped"
            jq -cn '{error: "this mosquitto cannot open a websockets listener (built without websockets)"}' >"$WORK/mosquitto.idle-ws.json"
            continue
        fi
        WS_MODE=1 start_broker "$broker"
        run_bench "$broker" idle-ws idle --connections "$TRANSPORT_CONNECTIONS" --settle 3s --ws
        stop_broker "$broker"
    done
fi

# ---- the table -----------------------------------------------------------------------------

row() { # label test jq-path
    local m h
    m=$(get mosquitto "$2" "$3")
    h=$(get holdfast "$2" "$3")
    printf '%-44s %16s %16s %10s\n' "$1" "$(fmt "$m")" "$(fmt "$h")" "$(ratio "$m" "$h")"
}

if [[ $ONLY == all || $ONLY == broker ]]; then
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
    row "fanin qos1 open loop delivered msg/s (higher)" fanin1open .recv_rate
    row "fanin qos1 open loop PUBACKed" fanin1open .acked
    row "fanin qos1 open loop acknowledged but lost" fanin1open .lost
    row "fanin qos1 open loop latency p99 us" fanin1open .latency_us.p99
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
fi

if [[ $ONLY == all || $ONLY == durable ]]; then
    drow() { # label mosquitto-file holdfast-file jq-path
        local m h
        m=$(get mosquitto "$2" "$4")
        h=$(get holdfast "$3" "$4")
        printf '%-44s %16s %16s %10s\n' "$1" "$(fmt "$m")" "$(fmt "$h")" "$(ratio "$m" "$h")"
    }
    echo
    echo "store-and-forward: edge broker bridging sensors/# to a cloud mosquitto; mosquitto's bridge queue is in memory (persistence true saves it only every autosave_interval), holdfast's is on disk."
    echo "drain = backlog filled while the uplink was down, counted by a QoS 0 subscriber on the cloud mosquitto (which then limits the rate); 'no cloud subscriber' = timed by the gateway until its queue is empty"
    printf '%-44s %16s %16s %10s\n' "metric" "mosquitto" "holdfast" "hf/mosq"
    printf '%s\n' "$(printf '%.0s-' $(seq 89))"
    for flush in group every interval; do
        drow "ingest qos1 100x8 inflight, flush=$flush PUBACK/s" ingest-mem "ingest-$flush" .ack_rate
        drow "ingest qos1 flush=$flush PUBACK p99 us" ingest-mem "ingest-$flush" .puback_latency_us.p99
        drow "ingest qos1 flush=$flush disk bytes/payload" ingest-mem "ingest-$flush" .write_amplification
    done
    drow "fill $DRAIN_COUNT x 64 B, PUBACK/s" fill-64b fill-64b .ack_rate
    drow "drain $DRAIN_COUNT x 64 B msg/s (higher)" drain-64b drain-64b .drain_rate
    drow "drain 64 B seconds" drain-64b drain-64b .span_s
    drow "drain 64 B lost / duplicates" drain-64b drain-64b '"\(.lost)/\(.duplicates)"'
    drow "drain 64 B edge broker CPU us/msg (lower)" drain-64b drain-64b '(.edge_cpu_us_per_msg * 100 | floor / 100)'
    drow "drain 64 B cloud mosquitto CPU us/msg" drain-64b drain-64b '(.cloud_cpu_us_per_msg * 100 | floor / 100)'
    drow "drain $BIG_COUNT x 4 KB msg/s (higher)" drain-4kb drain-4kb .drain_rate
    drow "drain 4 KB seconds" drain-4kb drain-4kb .span_s
    drow "drain 4 KB lost / duplicates" drain-4kb drain-4kb '"\(.lost)/\(.duplicates)"'
    drow "drain 4 KB edge broker CPU us/msg (lower)" drain-4kb drain-4kb '(.edge_cpu_us_per_msg * 100 | floor / 100)'
    drow "drain 4 KB cloud mosquitto CPU us/msg" drain-4kb drain-4kb '(.cloud_cpu_us_per_msg * 100 | floor / 100)'
    drow "drain 64 B, no cloud subscriber msg/s" - drain-nosub64b .drain_rate
    drow "drain 64 B, no cloud subscriber seconds" - drain-nosub64b .span_s
    drow "drain 4 KB, no cloud subscriber msg/s" - drain-nosub4kb .drain_rate
    drow "drain 4 KB, no cloud subscriber MB/s" - drain-nosub4kb '(.drain_rate * 4096 / 1048576 | floor)'
    printf '%s\n' "$(printf '%.0s-' $(seq 89))"
fi

if [[ $ONLY == all || $ONLY == tls ]]; then
    echo
    echo "TLS (P-256 server certificate, TLS 1.3 negotiated, $DURATION each, $(nproc) CPUs; hf/mosq = holdfast / mosquitto)"
    printf '%-44s %16s %16s %10s\n' "metric" "mosquitto" "holdfast" "hf/mosq"
    printf '%s\n' "$(printf '%.0s-' $(seq 89))"
    row "TLS full handshakes/s, 32 loops (higher)" tls-hs .handshake_rate
    row "TLS full handshakes failed" tls-hs .failed
    row "TLS resumed handshakes/s, 32 loops (higher)" tls-hs-resume .handshake_rate
    row "TLS fanin qos0 100->1 msg/s (higher)" tls-fanin0 .recv_rate
    row "TLS fanin qos0 lost" tls-fanin0 .lost
    row "TLS fanin qos0 latency p99 us" tls-fanin0 .latency_us.p99
    row "TLS max RSS during fanin qos0, KB" tls-fanin0 .rss.max_kb
    printf '%s\n' "$(printf '%.0s-' $(seq 89))"
fi

if [[ $ONLY == all || $ONLY == idle ]]; then
    echo
    echo "idle connections by transport (tcp $(fmt "$CONNECTIONS"), tls and ws $(fmt "$TRANSPORT_CONNECTIONS") each, 3 s settle, broker RSS; TLS: P-256, TLS 1.3; WS: path /mqtt, subprotocol mqtt; hf/mosq = holdfast / mosquitto)"
    printf '%-44s %16s %16s %10s\n' "metric" "mosquitto" "holdfast" "hf/mosq"
    printf '%s\n' "$(printf '%.0s-' $(seq 89))"
    for t in idle idle-tls idle-ws; do
        row "$t conns established" "$t" .established
        row "$t RSS KB per connection (lower better)" "$t" .kb_per_conn
        row "$t RSS after, KB" "$t" .rss_after_kb
    done
    printf '%s\n' "$(printf '%.0s-' $(seq 89))"
fi

# ---- CoAP devices into the broker (BENCH_ONLY=coap) -----------------------------------------
if [[ $ONLY == all || $ONLY == coap ]]; then
    COAP_PORT=$(free_port)
    start_broker holdfast
    mqtt_with_cpu() { # test args...: an MQTT load on holdfast, with the broker's CPU per message
        local test=$1 before after f
        before=$(cpu_ticks "$BROKER_PID")
        run_bench holdfast "$@"
        after=$(cpu_ticks "$BROKER_PID")
        f=$WORK/holdfast.$test.json
        jq --argjson t "$((after - before))" --argjson hz "$(getconf CLK_TCK)" \
            '. + {broker_cpu_us_per_msg: (if (.received // 0) > 0 then ($t * 1000000 / $hz / .received * 100 | floor / 100) else null end)}' \
            "$f" >"$f.tmp" && mv "$f.tmp" "$f"
    }
    mqtt_with_cpu mqtt-fanin0 fanin --qos 0 --duration "$DURATION"
    # The paced CoAP loads against the same load over MQTT: 64 QoS 0 publishers at 100,000/s
    # in all, so one message per read for both (unpaced MQTT reads a hundred per system call).
    mqtt_with_cpu mqtt-fanin0-paced fanin --qos 0 --publishers 64 --rate 100000 --duration "$DURATION"
    # ... and CON (one outstanding per device) against QoS 1 with one PUBLISH in flight each.
    mqtt_with_cpu mqtt-fanin1-window1 fanin --qos 1 --publishers 64 --inflight 1 --duration "$DURATION"
    run_bench holdfast coap-non coap --coap-port "$COAP_PORT" --devices 16 --duration "$DURATION"
    run_bench holdfast coap-quiet coap --coap-port "$COAP_PORT" --devices 16 --no-response --duration "$DURATION"
    run_bench holdfast coap-quiet-paced coap --coap-port "$COAP_PORT" --devices 64 --rate 100000 --no-response --duration "$DURATION"
    run_bench holdfast coap-non-paced coap --coap-port "$COAP_PORT" --devices 64 --rate 100000 --duration "$DURATION"
    run_bench holdfast coap-con coap --coap-port "$COAP_PORT" --devices 64 --confirmable --duration "$DURATION"
    stop_broker holdfast
    unset COAP_PORT
    mqtt_cpu=$(get holdfast mqtt-fanin0 .broker_cpu_us_per_msg)
    mqtt_paced_cpu=$(get holdfast mqtt-fanin0-paced .broker_cpu_us_per_msg)
    mqtt_window_cpu=$(get holdfast mqtt-fanin1-window1 .broker_cpu_us_per_msg)
    crow() { # label test [paced|window]
        local cpu paced=-
        cpu=$(get holdfast "$2" .broker_cpu_us_per_msg)
        [[ ${3:-} == paced ]] && paced=$(ratio "$mqtt_paced_cpu" "$cpu")
        [[ ${3:-} == window ]] && paced=$(ratio "$mqtt_window_cpu" "$cpu")
        printf '%-34s %12s %12s %10s %9s %9s %8s %8s\n' "$1" "$(fmt "$(get holdfast "$2" .sent_per_s)")" \
            "$(fmt "$(get holdfast "$2" .delivered_per_s)")" "$(fmt "$(get holdfast "$2" .lost)")" \
            "$(get holdfast "$2" .latency_us.p99)" "$cpu" "$(ratio "$mqtt_cpu" "$cpu")" "$paced"
    }
    echo
    echo "CoAP publish into holdfast ([coap] defaults), 64 B payloads, $DURATION loads, $(nproc) CPUs; CPU us per delivered message, and its ratio to MQTT QoS 0 on the same broker: xMQTT against fan-in 100 -> 1 unpaced ($mqtt_cpu us/msg), xLike against the same load over MQTT: NON rows against 64 QoS 0 publishers at 100,000/s ($mqtt_paced_cpu us/msg, $(fmt "$(get holdfast mqtt-fanin0-paced .recv_rate)") msg/s received, lost $(get holdfast mqtt-fanin0-paced .lost)), CON against 64 QoS 1 publishers with 1 in flight each ($mqtt_window_cpu us/msg, $(fmt "$(get holdfast mqtt-fanin1-window1 .recv_rate)") msg/s)"
    printf '%-34s %12s %12s %10s %9s %9s %8s %8s\n' "load" "sent/s" "delivered/s" "lost" "p99 us" "CPU us" "xMQTT" "xLike"
    printf '%s\n' "$(printf '%.0s-' $(seq 109))"
    crow "NON, 16 devices, unpaced" coap-non
    crow "NON + No-Response, 16, unpaced" coap-quiet
    crow "NON + No-Response, 64, 100,000/s" coap-quiet-paced paced
    crow "NON, 64 devices, 100,000/s" coap-non-paced paced
    crow "CON, 64 devices, 1 outstanding" coap-con window
    printf '%s\n' "$(printf '%.0s-' $(seq 109))"
fi

# ---- LwM2M devices (BENCH_ONLY=lwm2m) --------------------------------------------------------
if [[ $ONLY == all || $ONLY == lwm2m ]]; then
    LWM2M_PORT=$(free_port)
    start_broker holdfast
    run_bench holdfast lwm2m lwm2m --lwm2m-port "$LWM2M_PORT" --endpoints "${BENCH_LWM2M_ENDPOINTS:-10000}" --rate 20000 --duration "$DURATION"
    stop_broker holdfast
    unset LWM2M_PORT
    echo
    echo "LwM2M server ([lwm2m] defaults), ${BENCH_LWM2M_ENDPOINTS:-10000} devices on loopback, $(nproc) CPUs"
    printf '%-46s %14s\n' "metric" "holdfast"
    printf '%s\n' "$(printf '%.0s-' $(seq 61))"
    printf '%-46s %14s\n' "registrations/s (all at once)" "$(fmt "$(get holdfast lwm2m .registrations_per_s)")"
    printf '%-46s %14s\n' "observations answered, seconds for all" "$(get holdfast lwm2m .observe_s)"
    printf '%-46s %14s\n' "notifications/s delivered to MQTT (20,000 offered)" "$(fmt "$(get holdfast lwm2m .notify_per_s)")"
    printf '%-46s %14s\n' "notifications sent / delivered" "$(get holdfast lwm2m .notifications_sent) / $(get holdfast lwm2m .notifications_delivered)"
    printf '%-46s %14s\n' "broker RSS at start, KB" "$(fmt "$(get holdfast lwm2m .rss.start_kb)")"
    printf '%-46s %14s\n' "broker RSS, all registered, KB" "$(fmt "$(get holdfast lwm2m .rss.registered_kb)")"
    printf '%-46s %14s\n' "broker RSS, all registered and observed, KB" "$(fmt "$(get holdfast lwm2m .rss.observed_kb)")"
    printf '%-46s %14s\n' "broker max RSS (notifications too), KB" "$(fmt "$(get holdfast lwm2m .rss.max_kb)")"
    printf '%s\n' "$(printf '%.0s-' $(seq 61))"
fi

# ---- Modbus pollers (BENCH_ONLY=modbus) -------------------------------------------------------
if [[ $ONLY == all || $ONLY == modbus ]]; then
    echo
    echo "Modbus TCP: 100 devices x 100 points at 1 s ([modbus] defaults), pymodbus on loopback, $(nproc) CPUs"
    HOLDFAST_BIN=$TARGET_DIR/release/holdfast bash "$ROOT/bench/modbus.sh"
    echo
    echo "Modbus RTU: 4 unit ids on one 115,200 baud line (emulated at its real rate)"
    HOLDFAST_BIN=$TARGET_DIR/release/holdfast bash "$ROOT/bench/modbus_rtu.sh"
fi

# ---- the musl build (the firmware's libc) against the glibc build (BENCH_ONLY=musl) -------
# The same code built for x86_64-unknown-linux-musl (a fair proxy of the aarch64 firmware: musl
# libc, static-pie, mimalloc as its allocator) and for x86_64-unknown-linux-gnu, the same loads
# one after the other, with the broker's CPU use (user + system, % of one core) while each runs.
if [[ $ONLY == all || $ONLY == musl ]]; then
    command -v musl-gcc >/dev/null || apt_install musl-tools
    rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-musl ||
        rustup target add x86_64-unknown-linux-musl
    log "building the musl release"
    (cd "$ROOT" && CC_x86_64_unknown_linux_musl=musl-gcc \
        cargo build --release --target x86_64-unknown-linux-musl -p holdfast --bin holdfast)
    HOLDFAST_MUSL=$TARGET_DIR/x86_64-unknown-linux-musl/release/holdfast
    cpu_percent() { # broker test ticks-before ticks-after -> writes .cpu_percent into the result
        local secs hz f=$WORK/$1.$2.json
        hz=$(getconf CLK_TCK)
        secs=$(jq -r '.seconds // empty' "$f" 2>/dev/null || true)
        [[ -n $secs ]] || secs=${DURATION%s}
        jq --argjson c "$(awk -v a="$3" -v b="$4" -v hz="$hz" -v s="$secs" 'BEGIN { printf "%.0f", (b - a) * 100 / hz / s }')" \
            '. + {cpu_percent: $c}' "$f" >"$f.tmp" && mv "$f.tmp" "$f"
    }
    for broker in holdfast holdfast-musl; do
        start_broker "$broker"
        for t in fanout0:fanout:0 fanin0:fanin:0 fanin1:fanin:1; do
            IFS=: read -r name mode qos <<<"$t"
            before=$(cpu_ticks "$BROKER_PID")
            run_bench "$broker" "$name" "$mode" --qos "$qos" --duration "$DURATION"
            cpu_percent "$broker" "$name" "$before" "$(cpu_ticks "$BROKER_PID")"
        done
        stop_broker "$broker"
        start_broker "$broker"
        run_bench "$broker" idle idle --connections "$CONNECTIONS" --settle 3s
        stop_broker "$broker"
    done
    mrow() { # label test jq-path
        local g m
        g=$(get holdfast "$2" "$3")
        m=$(get holdfast-musl "$2" "$3")
        printf '%-44s %16s %16s %10s\n' "$1" "$(fmt "$g")" "$(fmt "$m")" "$(ratio "$g" "$m")"
    }
    echo
    echo "holdfast built for musl (x86_64-unknown-linux-musl, static-pie, mimalloc) vs for glibc, $DURATION loads, $(nproc) CPUs; musl/glibc = musl / glibc"
    printf '%-44s %16s %16s %10s\n' "metric" "glibc" "musl" "musl/glibc"
    printf '%s\n' "$(printf '%.0s-' $(seq 89))"
    mrow "fanout qos0 1->100 deliveries/s (higher)" fanout0 .recv_rate
    mrow "fanout qos0 broker CPU %" fanout0 .cpu_percent
    mrow "fanin qos0 100->1 msg/s (higher)" fanin0 .recv_rate
    mrow "fanin qos0 broker CPU %" fanin0 .cpu_percent
    mrow "fanin qos1 100->1 msg/s (higher)" fanin1 .recv_rate
    mrow "fanin qos1 broker CPU %" fanin1 .cpu_percent
    mrow "fanin qos0 latency p99 us" fanin0 .latency_us.p99
    mrow "max RSS during fanout, KB" fanout0 .rss.max_kb
    mrow "idle RSS KB per connection (lower better)" idle .kb_per_conn
    printf '%s\n' "$(printf '%.0s-' $(seq 89))"
    echo "binary sizes (stripped release): glibc $(stat -c %s "$HOLDFAST") bytes, musl $(stat -c %s "$HOLDFAST_MUSL") bytes"
fi

# Anything odd, in full: errors reported by the tool, loss, reordering, duplicates, crashes.
{
    for f in "$WORK"/*.json; do
        name=$(basename "$f" .json)
        jq -r --arg n "$name" '
            (if .error then "\($n): \(.error)" else empty end),
            (.errors // [] | .[] | "\($n): \(.)"),
            (if (.mode // "") != "idle" and (.mode // "") != "flood" and (.mode // "") != "coap" and (.mode // "") != "lwm2m" and ((.lost // 0) > 0 or (.reordered // 0) > 0 or (.duplicates // 0) > 0)
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
