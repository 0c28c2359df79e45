#!/usr/bin/env bash
# Modbus RTU line benchmark: UNITS unit ids (default 4) on one serial line at BAUD (default
# 115200), each asked for REGISTERS holding registers (default 10) as often as the line allows
# (interval 10ms, far more than the line carries), for DURATION seconds. The line is two socat
# pty pairs joined by tests/modbus/line.py, which carries bytes no faster than BAUD and one
# direction at a time (a pty pair alone moves bytes instantly); the devices are one pymodbus RTU
# simulator. Reports polls/s on the line against the theoretical rate (request + answer on the
# wire and two 1.75 ms inter-frame gaps per transaction, no device turnaround), and each unit's
# share (fairness).
#
#   bash bench/modbus_rtu.sh
set -euo pipefail
cd "$(dirname "$0")/.."

UNITS=${UNITS:-4}
BAUD=${BAUD:-115200}
REGISTERS=${REGISTERS:-10}
DURATION=${DURATION:-20}
WARMUP=${WARMUP:-3}
BIN=${HOLDFAST_BIN:-target/release/holdfast}
[[ -x $BIN ]] || cargo build --release --locked -p holdfast >&2

work=$(mktemp -d /tmp/holdfast-bench-rtu.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

socat pty,raw,echo=0,link="$work/gw" pty,raw,echo=0,link="$work/gw-far" 2>/dev/null &
pids+=($!)
socat pty,raw,echo=0,link="$work/dev-far" pty,raw,echo=0,link="$work/dev" 2>/dev/null &
pids+=($!)
for _ in $(seq 100); do [[ -e $work/gw && -e $work/dev ]] && break; sleep 0.05; done
python3 tests/modbus/line.py "$work/gw-far" "$work/dev-far" "$BAUD" &
pids+=($!)

map=$(python3 -c "import json; print(json.dumps({str(u): {'hr': {str(i): i for i in range($REGISTERS)}} for u in range(1, $UNITS + 1)}))")
python3 tests/modbus/sim.py --serial "$work/dev" --baud "$BAUD" --map "$map" </dev/null >"$work/sim-out" 2>"$work/sim-err" &
sim=$!
pids+=("$sim")
for _ in $(seq 100); do grep -q ready "$work/sim-out" 2>/dev/null && break; sleep 0.1; done

mqtt=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')
{
    printf '[node]\nname = "bench"\ndata_dir = "%s/data"\n\n' "$work"
    printf '[[listeners]]\nkind = "tcp"\nbind = "127.0.0.1:%s"\n\n[modbus]\n' "$mqtt"
    for ((u = 1; u <= UNITS; u++)); do
        printf '\n[[modbus.devices]]\nname = "u%s"\ntransport = "rtu"\nport = "%s/gw"\nbaud = %s\nparity = "none"\nunit_id = %s\ninterval = "10ms"\ntimeout = "200ms"\npoints = [\n' "$u" "$work" "$BAUD" "$u"
        for ((p = 0; p < REGISTERS; p++)); do printf '  { name = "r%s", kind = "holding", address = %s },\n' "$p" "$p"; done
        printf ']\n'
    done
} >"$work/holdfast.toml"
mkdir -p "$work/data"
"$BIN" run --config "$work/holdfast.toml" >"$work/gw.log" 2>&1 &
gw=$!
pids+=("$gw")
for _ in $(seq 100); do [[ -S $work/data/ctl.sock ]] && break; sleep 0.1; done
ctl() { "$BIN" ctl --socket "$work/data/ctl.sock" --json modbus; }
sleep "$WARMUP"
before=$(ctl); t0=$(date +%s.%N)
sleep "$DURATION"
after=$(ctl); t1=$(date +%s.%N)

python3 - "$before" "$after" "$t0" "$t1" "$BAUD" "$REGISTERS" <<'PY'
import json, sys
before, after = json.loads(sys.argv[1]), json.loads(sys.argv[2])
wall = float(sys.argv[4]) - float(sys.argv[3])
baud, registers = int(sys.argv[5]), int(sys.argv[6])
per_unit = {d["name"]: d["polls"] - b["polls"] for d, b in zip(after["devices"], before["devices"])}
total = sum(per_unit.values()) / wall
frame = (8 + 5 + 2 * registers) * 11.0 / baud
gap = 0.00175 if baud > 19200 else 3.5 * 11.0 / baud
theory = 1.0 / (frame + 2 * gap)
print(json.dumps({
    "baud": baud,
    "units": len(per_unit),
    "registers_per_read": registers,
    "polls_per_s": round(total, 1),
    "theoretical_per_s": round(theory, 1),
    "ratio_to_theoretical": round(total / theory, 3),
    "polls_per_unit": per_unit,
    "fairness_min_over_max": round(min(per_unit.values()) / max(1, max(per_unit.values())), 3),
    "timeouts": after["stats"]["timeouts"] - before["stats"]["timeouts"],
    "bad_responses": after["stats"]["bad_responses"] - before["stats"]["bad_responses"],
}, indent=2))
PY
