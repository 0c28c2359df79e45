#!/usr/bin/env bash
# Footprint report of the firmware: binary size per target, start-up time to the first accepted
# connection under qemu-user, resident memory idle and with 1,000 connected idle clients.
#
#   bash cross/footprint.sh [aarch64|armv7|all]      (default all; builds what is missing)
#
# Memory is measured twice, because qemu-user's own memory (its translator and code cache) is
# part of the emulated process's RSS:
#   - "native": the same code, profile and libc (musl) built for this machine
#     (x86_64-unknown-linux-musl): the figure that stands for the board;
#   - "qemu": the RSS of the qemu-user process running the ARM binary, an upper bound.
# 1,000 idle clients are held by `target/release/holdfast-bench idle` when it is built, else by
# a small Python client (MQTT 3.1.1 CONNECT, wait for CONNACK, then hold the socket);
# HOLDFAST_FOOTPRINT_CLIENT=python forces the latter.
# Writes the report to stdout and dist/footprint.md.
set -euo pipefail
cd "$(dirname "$0")/.."

ARMV7_TARGET="${HOLDFAST_ARMV7_TARGET:-armv7-unknown-linux-gnueabihf}"
case "${1:-all}" in
    aarch64) arches=(aarch64) ;;
    armv7) arches=(armv7) ;;
    all) arches=(aarch64 armv7) ;;
    *) echo "usage: bash cross/footprint.sh [aarch64|armv7|all]" >&2; exit 2 ;;
esac
CLIENTS="${HOLDFAST_FOOTPRINT_CLIENTS:-1000}"
STARTS="${HOLDFAST_FOOTPRINT_STARTS:-5}"
version="$(awk -F'"' '/^\[workspace.package\]/{p=1} p && /^version *=/{print $2; exit}' Cargo.toml)"
triple_of() { case "$1" in aarch64) echo aarch64-unknown-linux-musl ;; armv7) echo "$ARMV7_TARGET" ;; esac; }
qemu_of() { case "$1" in aarch64) echo qemu-aarch64-static ;; armv7) echo qemu-arm-static ;; esac; }

for arch in "${arches[@]}"; do
    [ -x "dist/holdfast-$version-$(triple_of "$arch")" ] || bash cross/build.sh "$arch"
done

# The native stand-in: same profile, musl.
native_triple=x86_64-unknown-linux-musl
if [ "$(uname -m)" = x86_64 ]; then
    rustup target list --installed | grep -qx "$native_triple" || rustup target add "$native_triple"
    cargo build --locked --profile firmware --target "$native_triple" -p holdfast --bin holdfast
    native_bin="${CARGO_TARGET_DIR:-target}/$native_triple/firmware/holdfast"
else
    native_bin=""
fi

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
work="$(mktemp -d -t holdfast-footprint.XXXXXX)"
gw_pid=""
cleanup() {
    [ -n "$gw_pid" ] && kill -KILL "$gw_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# start LAUNCHER... : starts the gateway on a fresh port; sets gw_pid, port and started_ms (the
# milliseconds from spawn to the first accepted TCP connection). Not in a subshell: the
# globals must survive.
start() {
    port="$(free_port)"
    mkdir -p "$work/data"
    cat >"$work/holdfast.toml" <<TOML
[node]
name = "footprint"
data_dir = "$work/data"

[mqtt]
sys_interval = "0s"

[[listeners]]
bind = "127.0.0.1:$port"

[auth]
allow_anonymous = true

[log]
level = "warn"
TOML
    local t0
    t0=$(date +%s%N)
    "$@" run --config "$work/holdfast.toml" >"$work/log" 2>&1 &
    gw_pid=$!
    started_ms="$(python3 - "$port" "$t0" <<'PY'
import socket, sys, time
port, t0 = int(sys.argv[1]), int(sys.argv[2])
deadline = time.time() + 60
while time.time() < deadline:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        print((time.time_ns() - t0) // 1_000_000)
        sys.exit(0)
    except OSError:
        time.sleep(0.005)
sys.exit("no connection accepted within 60 s")
PY
)" || { echo "error: $* did not start; log:" >&2; cat "$work/log" >&2; exit 1; }
}

stop() {
    kill -TERM "$gw_pid"
    wait "$gw_pid" || true
    gw_pid=""
}

# hold_clients PORT PID: connects $CLIENTS idle clients, prints the gateway's RSS (KiB) once
# they have sat idle for 3 s, then lets them go.
hold_clients() {
    local bench="${CARGO_TARGET_DIR:-target}/release/holdfast-bench"
    if [ -x "$bench" ] && [ "${HOLDFAST_FOOTPRINT_CLIENT:-}" != python ]; then
        local out
        if out="$("$bench" idle --connections "$CLIENTS" --port "$1" --pid "$2" --json 2>/dev/null)"; then
            python3 -c 'import json,sys; r=json.loads(sys.argv[1]); assert r["established"]==int(sys.argv[2]), r; print(r["rss_after_kb"])' "$out" "$CLIENTS" && return 0
        fi
        echo "(holdfast-bench idle failed; using the Python client)" >&2
    fi
    python3 - "$1" "$2" "$CLIENTS" <<'PY'
import socket, sys, time
port, pid, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
def connect_packet(cid):
    cid = cid.encode()
    var = b"\x00\x04MQTT\x04\x02\x02\x58"            # MQTT 3.1.1, clean session, keepalive 600 s
    payload = len(cid).to_bytes(2, "big") + cid
    body = var + payload
    return b"\x10" + bytes([len(body)]) + body        # bodies here are < 128 bytes
socks = []
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(connect_packet(f"fp-{i}"))
    ack = b""
    while len(ack) < 4:
        chunk = s.recv(4 - len(ack))
        if not chunk:
            sys.exit(f"client {i}: connection closed before CONNACK")
        ack += chunk
    if ack != b"\x20\x02\x00\x00":
        sys.exit(f"client {i}: CONNACK {ack!r}")
    socks.append(s)
time.sleep(3)
for line in open(f"/proc/{pid}/status"):
    if line.startswith("VmRSS:"):
        print(line.split()[1])
for s in socks:
    s.close()
PY
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

report="$work/report.md"
{
    echo "# Holdfast $version footprint ($(date -u +%Y-%m-%d), $CLIENTS idle clients, $(nproc) cores)"
    echo
    echo "| target | binary | start-up to first accept (qemu, median of $STARTS) | idle RSS | RSS, $CLIENTS clients | per client |"
    echo "|---|---|---|---|---|---|"
} >"$report"

measure_rss() { # LAUNCHER... ; sets idle and loaded (KiB)
    start "$@"
    sleep 2
    idle="$(rss_kib "$gw_pid")"
    loaded="$(hold_clients "$port" "$gw_pid")"
    stop
}

fmt_mib() { awk -v k="$1" 'BEGIN { printf "%.1f MiB", k / 1024 }'; }
per_client() { awk -v a="$1" -v b="$2" -v n="$CLIENTS" 'BEGIN { printf "%.1f KiB", (b - a) / n }'; }

if [ -n "$native_bin" ]; then
    measure_rss "$native_bin"
    size=$(stat -c %s "$native_bin")
    echo "| $native_triple (native stand-in for the board's RSS) | $(fmt_mib $((size / 1024))) | - | $(fmt_mib "$idle") | $(fmt_mib "$loaded") | $(per_client "$idle" "$loaded") |" >>"$report"
fi
for arch in "${arches[@]}"; do
    t="$(triple_of "$arch")"
    bin="dist/holdfast-$version-$t"
    qemu="$(qemu_of "$arch")"
    size=$(stat -c %s "$bin")
    times=()
    for _ in $(seq "$STARTS"); do
        start "$qemu" "$bin"
        times+=("$started_ms")
        stop
    done
    startup="$(printf '%s\n' "${times[@]}" | median)"
    measure_rss "$qemu" "$bin"
    echo "| $t | $(fmt_mib $((size / 1024))) ($size B) | $startup ms | $(fmt_mib "$idle") (qemu) | $(fmt_mib "$loaded") (qemu) | $(per_client "$idle" "$loaded") |" >>"$report"
done
{
    echo
    echo "RSS marked (qemu) is the qemu-user process, emulator included: an upper bound. The native"
    echo "row is the same code and libc (musl) built for this machine, which stands for the board."
    echo "Targets (issue 5): aarch64 binary <= 8 MB, idle RSS <= 10 MB, $CLIENTS idle clients <= 20 MB."
} >>"$report"
mkdir -p dist
cp "$report" dist/footprint.md
cat "$report"
