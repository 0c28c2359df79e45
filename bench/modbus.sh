#!/usr/bin/env bash
# Modbus poller benchmark: DEVICES Modbus TCP devices x POINTS points each, polled every second
# by the release build of holdfast with the [modbus] defaults (interval 1s, merging with
# max_registers_per_request 125 and max_gap 10, publish on change, QoS 1), against pymodbus
# simulators (tests/modbus/sim.py, one process serving every device's port) on loopback.
#
#   bash bench/modbus.sh                       # 100 devices x 100 points, 30 s
#   DEVICES=20 POINTS=50 DURATION=10 bash bench/modbus.sh
#
# Reports: the gateway's CPU (percent of one core, from /proc/PID/stat over the measured
# window), the simulator's CPU (to show the devices were not the bottleneck), polls made vs
# polls scheduled, lateness of poll starts (p50/p99/max over all devices, from
# `holdfast ctl --json modbus`), read requests per poll cycle after merging vs one per point,
# and the gateway's RSS. There is no mosquitto ratio here: mosquitto does not poll Modbus.
# Every point's value changes at every poll (the simulator's registers are rewritten each
# second), so every sample is also published: the publish path is loaded too.
set -euo pipefail
cd "$(dirname "$0")/.."

DEVICES=${DEVICES:-100}
POINTS=${POINTS:-100}
DURATION=${DURATION:-30}
WARMUP=${WARMUP:-5}
BIN=${HOLDFAST_BIN:-target/release/holdfast}
[[ -x $BIN ]] || cargo build --release --locked -p holdfast >&2

work=$(mktemp -d /tmp/holdfast-bench-modbus.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

mqtt=$(free_port)
base=$(python3 -c 'import random; print(random.randint(20000, 50000))')

# One register map for every device: POINTS holding registers from 0.
map=$(python3 -c "import json; print(json.dumps({'1': {'hr': {str(i): i for i in range($POINTS)}}}))")
tcp_args=()
for ((i = 0; i < DEVICES; i++)); do tcp_args+=(--tcp "127.0.0.1:$((base + i))"); done
mkfifo "$work/sim-in"
python3 tests/modbus/sim.py "${tcp_args[@]}" --map "$map" <"$work/sim-in" >"$work/sim-out" 2>"$work/sim-err" &
sim=$!
pids+=("$sim")
exec 3>"$work/sim-in"
for _ in $(seq 200); do grep -q ready "$work/sim-out" 2>/dev/null && break; sleep 0.1; done
grep -q ready "$work/sim-out" || { echo "simulator did not start: $(cat "$work/sim-err")" >&2; exit 1; }

{
    printf '[node]\nname = "bench"\ndata_dir = "%s/data"\n\n' "$work"
    printf '[[listeners]]\nkind = "tcp"\nbind = "127.0.0.1:%s"\n\n[auth]\nallow_anonymous = true\n\n[modbus]\n' "$mqtt"
    for ((i = 0; i < DEVICES; i++)); do
        printf '\n[[modbus.devices]]\nname = "d%s"\naddress = "127.0.0.1:%s"\npoints = [\n' "$i" "$((base + i))"
        for ((p = 0; p < POINTS; p++)); do
            printf '  { name = "p%s", kind = "holding", address = %s },\n' "$p" "$p"
        done
        printf ']\n'
    done
} >"$work/holdfast.toml"
mkdir -p "$work/data"
"$BIN" run --config "$work/holdfast.toml" >"$work/gw.log" 2>&1 &
gw=$!
pids+=("$gw")
for _ in $(seq 100); do [[ -S $work/data/ctl.sock ]] && break; sleep 0.1; done

# Every second, every register changes (as a live process would), so every sample publishes.
(
    v=0
    while kill -0 "$gw" 2>/dev/null; do
        v=$(((v + 1) % 1000))
        values=$(python3 -c "print(','.join(str($v + i) for i in range($POINTS)))")
        echo "set 1 hr 0 $values" >&3
        sleep 1
    done
) 2>/dev/null &
pids+=($!)

# A subscriber counting what is published.
mosquitto_sub -h 127.0.0.1 -p "$mqtt" -t 'modbus/#' -q 1 -F '%t' >"$work/received" 2>/dev/null &
pids+=($!)

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
sleep "$WARMUP"
ctl() { "$BIN" ctl --socket "$work/data/ctl.sock" --json modbus; }
before=$(ctl)
g0=$(cpu_ticks "$gw"); s0=$(cpu_ticks "$sim"); r0=$(wc -l <"$work/received"); t0=$(date +%s.%N)
sleep "$DURATION"
g1=$(cpu_ticks "$gw"); s1=$(cpu_ticks "$sim"); r1=$(wc -l <"$work/received"); t1=$(date +%s.%N)
after=$(ctl)
rss=$(awk '/VmRSS/ {print $2}' "/proc/$gw/status")
hz=$(getconf CLK_TCK)

python3 - "$before" "$after" "$g0" "$g1" "$s0" "$s1" "$t0" "$t1" "$hz" "$r0" "$r1" "$rss" "$DEVICES" "$POINTS" <<'EOF'
import json, sys
before, after = json.loads(sys.argv[1]), json.loads(sys.argv[2])
g0, g1, s0, s1 = map(int, sys.argv[3:7])
t0, t1 = float(sys.argv[7]), float(sys.argv[8])
hz, r0, r1, rss, devices, points = map(int, sys.argv[9:15])
wall = t1 - t0
polls = sum(d["polls"] for d in after["devices"]) - sum(d["polls"] for d in before["devices"])
reads = sum(d["reads_per_poll"] for d in after["devices"])
late99 = sorted(d["lateness_p99_ms"] for d in after["devices"])
late50 = sorted(d["lateness_p50_ms"] for d in after["devices"])
latemax = max(d["lateness_max_ms"] for d in after["devices"])
failing = [d["name"] for d in after["devices"] if d["state"] != "ok"]
stats = after["stats"]
report = {
    "devices": devices,
    "points_per_device": points,
    "seconds": round(wall, 1),
    "gateway_cpu_pct_of_one_core": round(100.0 * (g1 - g0) / hz / wall, 2),
    "simulator_cpu_pct_of_one_core": round(100.0 * (s1 - s0) / hz / wall, 2),
    "polls": polls,
    "polls_scheduled": round(devices * wall),
    "polls_skipped_total": stats["polls_skipped"],
    "lateness_ms_p50_median_device": late50[len(late50) // 2],
    "lateness_ms_p99_median_device": late99[len(late99) // 2],
    "lateness_ms_p99_worst_device": late99[-1],
    "lateness_ms_max": latemax,
    "reads_per_cycle_merged": reads,
    "reads_per_cycle_one_per_point": devices * points,
    "published_per_s": round((r1 - r0) / wall),
    "timeouts": stats["timeouts"],
    "devices_not_ok": failing,
    "rss_kb": rss,
}
print(json.dumps(report, indent=2))
EOF
