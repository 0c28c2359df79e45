#!/usr/bin/env bash
# Web UI and API benchmark, on the release build with the default config plus [web], a bridge
# to a "cloud" mosquitto (so the Bridges page has a live graph) and anonymous access:
#
#   1. Broker cost of the UI: fanin qos0 (100 -> 1) and fanout qos0 (1 -> 100) with
#      holdfast-bench, ROUNDS (4) times without and with the UI open in headless Chromium (the
#      Bridges page with its live graph and the Logs page with its live tail, both polling
#      every 2 s; bench/web_ui_load.mjs) and /metrics scraped every second; the median of each
#      and the with/without ratio (the target: within 5%), and the gateway's own CPU time per
#      message (from /proc/PID/stat), which Chromium running on the same cores cannot skew.
#   2. API latency: CONNECTIONS (10,000) idle MQTT connections held open, then 100 requests/s
#      for 20 s over the UI's and a scraper's routes (a page of clients, a client search,
#      stats, listeners, bridges, board, log tail, /metrics), open loop; p50/p99/max
#      (bench/web_api_load.py).
#   3. Routing while the API searches: with those connections still open, QoS 0 latency
#      (10 publishers -> 1 subscriber, 10,000 msg/s open loop, 8 s) alone and while client
#      searches over every session run at 100 requests/s, 3 alternating rounds; the medians'
#      p99 ratio (a search must not hold routing up: it copies the sessions' keys under the
#      router lock and searches without it).
#
#   bash bench/web.sh                        # 4 rounds of 10 s, 10,000 connections
#   ROUNDS=1 DURATION=5s CONNECTIONS=2000 bash bench/web.sh
#   UI=replay bash bench/web.sh              # the pages' requests replayed without a browser
#
# Needs: Debian's chromium and tests/web-e2e's npm packages (scripts/test-all.sh installs
# both), mosquitto, jq, curl, python3. Binary sizes are measured by cross/build.sh (README).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-4}
CONNECTIONS=${CONNECTIONS:-10000}
PASSWORD="bench admin password"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

log() { printf '==> %s\n' "$*" >&2; }
cargo build --release --locked -p holdfast -p holdfast-bench >&2
BIN=target/release/holdfast
BENCH=target/release/holdfast-bench
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
[[ -d tests/web-e2e/node_modules/playwright-core ]] || npm ci --prefix tests/web-e2e --no-audit --no-fund >&2

work=$(mktemp -d /tmp/holdfast-bench-web.XXXXXX)
pids=()
cleanup() {
    exec 4>&- 2>/dev/null || true
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}
wait_port() {
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return; fi
        sleep 0.1
    done
    echo "nothing listens on $1" >&2
    exit 1
}

cloud=$(free_port)
printf 'listener %s 127.0.0.1\nallow_anonymous true\n' "$cloud" >"$work/cloud.conf"
"$MOSQUITTO" -c "$work/cloud.conf" >"$work/cloud.log" 2>&1 &
pids+=($!)
wait_port "$cloud"

mqtt=$(free_port)
web=$(free_port)
cat >"$work/holdfast.toml" <<TOML
[node]
name = "bench-web"
data_dir = "$work/data"

[[listeners]]
kind = "tcp"
bind = "127.0.0.1:$mqtt"
max_connections = 200000
max_conn_rate = 100000

[auth]
allow_anonymous = true

[[bridges]]
name = "cloud"
server = "mqtt://127.0.0.1:$cloud"
client_id = "bench-edge"
forward = ["sensors/#"]

[web]
bind = "127.0.0.1:$web"
TOML
"$BIN" run --config "$work/holdfast.toml" >"$work/holdfast.log" 2>&1 &
gw=$!
pids+=("$gw")
wait_port "$mqtt"
wait_port "$web"

api() { curl -sS --max-time 10 "$@"; }
token=$(cat "$work/data/setup-token")
csrf=$(api -c "$work/jar" -H 'Content-Type: application/json' \
    -d "{\"token\":\"$token\",\"password\":\"$PASSWORD\"}" "http://127.0.0.1:$web/api/v1/setup" | jq -r .csrf)
bearer=$(api -b "$work/jar" -H "X-CSRF-Token: $csrf" -H 'Content-Type: application/json' \
    -d '{"name":"bench","scope":"read"}' "http://127.0.0.1:$web/api/v1/tokens" | jq -r .token)

ticks() { python3 -c 'import sys; f=open("/proc/%s/stat" % sys.argv[1]).read().rsplit(")", 1)[1].split(); print(int(f[11]) + int(f[12]))' "$1"; }
load() { # label test args... -> prints the received rate; the gateway's CPU us per message to $work/$1.cpu
    local t0 t1
    t0=$(ticks "$gw")
    "$BENCH" --json --port "$mqtt" --pid "$gw" "${@:2}" >"$work/$1.json" 2>>"$work/bench.err" || true
    t1=$(ticks "$gw")
    jq -r --argjson t "$((t1 - t0))" --argjson hz "$(getconf CLK_TCK)" \
        'if (.received // 0) > 0 then ($t / $hz * 1e6 / .received * 1000 | round / 1000) else "-" end' \
        "$work/$1.json" >"$work/$1.cpu"
    jq -r '.recv_rate // "ERR"' "$work/$1.json"
}

ui_on() {
    if [[ ${UI:-chromium} == replay ]]; then
        # The requests the two open pages make (every 2 s), without a browser on these cores.
        python3 -c 'import http.client, sys, time
conn = None
after = 0
while True:
    for path in ("/api/v1/bridges", "/api/v1/logs?after=%d" % after, "/api/v1/session"):
        try:
            conn = conn or http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=10)
            conn.request("GET", path, headers={"Authorization": "Bearer " + sys.argv[2]})
            conn.getresponse().read()
        except (OSError, http.client.HTTPException):
            conn = None
    time.sleep(2)' "$web" "$bearer" &
        ui=$!
        start_scraper
        return
    fi
    mkfifo "$work/ui.in"
    node bench/web_ui_load.mjs "http://127.0.0.1:$web/" "$PASSWORD" <"$work/ui.in" >"$work/ui.out" 2>>"$work/ui.err" &
    ui=$!
    exec 4>"$work/ui.in"
    for _ in $(seq 300); do grep -q READY "$work/ui.out" 2>/dev/null && break; sleep 0.1; done
    grep -q READY "$work/ui.out" || { echo "the UI did not open: $(cat "$work/ui.err")" >&2; exit 1; }
    start_scraper
}
start_scraper() {
    # As Prometheus scrapes: one kept-alive connection, every second.
    python3 -c 'import http.client, sys, time
conn = None
while True:
    try:
        conn = conn or http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=10)
        conn.request("GET", "/metrics", headers={"Authorization": "Bearer " + sys.argv[2]})
        conn.getresponse().read()
    except (OSError, http.client.HTTPException):
        conn = None
    time.sleep(1)' "$web" "$bearer" &
    scraper=$!
}
ui_off() {
    kill "$scraper" 2>/dev/null || true
    if [[ ${UI:-chromium} == replay ]]; then
        kill "$ui" 2>/dev/null || true
        wait "$ui" 2>/dev/null || true
        return
    fi
    exec 4>&-
    wait "$ui" 2>/dev/null || true
    rm -f "$work/ui.in" "$work/ui.out"
}

median() { sort -n | awk '{a[NR]=$1} END {if (NR==0) {print "-"; exit} print a[int((NR+1)/2)]}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a+0 > 0 && b ~ /^[0-9.]+$/) printf "%.3f", b/a; else printf "-" }'; }

: >"$work/fanin.off"; : >"$work/fanin.on"; : >"$work/fanout.off"; : >"$work/fanout.on"
without() {
    log "round $1: without the UI"
    load "fanin-off-$1" fanin --qos 0 --duration "$DURATION" >>"$work/fanin.off"
    load "fanout-off-$1" fanout --qos 0 --duration "$DURATION" >>"$work/fanout.off"
}
with_ui() {
    log "round $1: with the UI open and /metrics scraped every second"
    ui_on
    load "fanin-on-$1" fanin --qos 0 --duration "$DURATION" >>"$work/fanin.on"
    load "fanout-on-$1" fanout --qos 0 --duration "$DURATION" >>"$work/fanout.on"
    ui_off
}
# Alternating which goes first, so a machine that drifts over the run favours neither.
for r in $(seq "$ROUNDS"); do
    if (( r % 2 )); then without "$r"; with_ui "$r"; else with_ui "$r"; without "$r"; fi
done
cpu_median() { cat "$work"/$1-*.cpu | median; }
fi_off=$(median <"$work/fanin.off"); fi_on=$(median <"$work/fanin.on")
fo_off=$(median <"$work/fanout.off"); fo_on=$(median <"$work/fanout.on")

log "API latency with $CONNECTIONS idle connections"
"$BENCH" --json --port "$mqtt" --pid "$gw" idle --connections "$CONNECTIONS" --settle 300s >"$work/idle.json" 2>>"$work/bench.err" &
idle=$!
pids+=("$idle")
for _ in $(seq 600); do
    n=$(api -H "Authorization: Bearer $bearer" "http://127.0.0.1:$web/api/v1/stats" | jq -r '.stats["connections/count"]')
    [[ $n -ge $CONNECTIONS ]] && break
    sleep 0.2
done
python3 bench/web_api_load.py "$web" "$bearer" 100 20 >"$work/api.json"
log "routing latency alone and while the API searches every session"
latency() { "$BENCH" --json --port "$mqtt" latency --rate 10000 --duration 8s 2>>"$work/bench.err" | jq -r '.latency_us.p99'; }
: >"$work/lat.alone"; : >"$work/lat.search"
searched() {
    ROUTES="/api/v1/clients?search=bench-idle-99&limit=50 /api/v1/clients?search=nomatch&limit=50" \
        python3 bench/web_api_load.py "$web" "$bearer" 100 10 >"$work/search-$1.json" &
    local searching=$!
    sleep 1
    latency >>"$work/lat.search"
    wait "$searching" || true
}
for r in 1 2 3; do
    if (( r % 2 )); then latency >>"$work/lat.alone"; searched "$r"; else searched "$r"; latency >>"$work/lat.alone"; fi
done
lat_alone=$(median <"$work/lat.alone"); lat_search=$(median <"$work/lat.search")
kill "$idle" 2>/dev/null || true

echo
echo "Web benchmark (holdfast release, default config + [web] + one bridge; UI=${UI:-chromium}; $ROUNDS rounds of $DURATION, medians)"
printf '%-52s %14s %14s %8s\n' "" "without UI" "with UI" "ratio"
printf '%-52s %14s %14s %8s\n' "fanin qos0 100->1 msg/s received" "$fi_off" "$fi_on" "$(ratio "$fi_off" "$fi_on")"
printf '%-52s %14s %14s %8s\n' "fanout qos0 1->100 msg/s delivered" "$fo_off" "$fo_on" "$(ratio "$fo_off" "$fo_on")"
printf '%-52s %14s %14s %8s\n' "fanin: gateway CPU us per message" "$(cpu_median fanin-off)" "$(cpu_median fanin-on)" "$(ratio "$(cpu_median fanin-off)" "$(cpu_median fanin-on)")"
printf '%-52s %14s %14s %8s\n' "fanout: gateway CPU us per message" "$(cpu_median fanout-off)" "$(cpu_median fanout-on)" "$(ratio "$(cpu_median fanout-off)" "$(cpu_median fanout-on)")"
echo "  each round (without | with): fanin $(paste -sd' ' "$work/fanin.off") | $(paste -sd' ' "$work/fanin.on")"
echo "                                fanout $(paste -sd' ' "$work/fanout.off") | $(paste -sd' ' "$work/fanout.on")"
echo
echo "API at 100 requests/s for 20 s with $n MQTT connections open:"
jq -r '"  sent \(.sent) at \(.rate)/s, answered \(.answered), errors \(.errors); latency ms p50 \(.latency_ms.p50) p99 \(.latency_ms.p99) max \(.latency_ms.max)",
       (.by_route | to_entries[] | "    \(.key): p50 \(.value.p50) p99 \(.value.p99) max \(.value.max) ms")' "$work/api.json"
echo "  gateway RSS: $(awk '/VmRSS/ {print $2, $3}' "/proc/$gw/status")"
echo
echo "QoS 0 latency p99 (us), 10,000 msg/s, with $n connections open, medians of 3: alone" \
     "$lat_alone, while client searches run at 100/s $lat_search (ratio $(ratio "$lat_alone" "$lat_search"))"
echo "  each round: alone $(paste -sd' ' "$work/lat.alone") | searching $(paste -sd' ' "$work/lat.search");" \
     "search p99 ms $(jq -rs 'map(.latency_ms.p99) | map(tostring) | join(" ")' "$work"/search-*.json)"
