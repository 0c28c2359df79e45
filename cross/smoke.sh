#!/usr/bin/env bash
# Smoke test of the firmware binaries under qemu-user: for each target, start
# dist/holdfast-<version>-<target> under qemu-aarch64-static / qemu-arm-static on a free
# loopback port (anonymous access, loopback only), then from the host with mosquitto_pub/sub:
#   - the binary runs at all (`--version`) and resolves names as a bridge to broker.example.com
#     would: `resolve localhost` through /etc/hosts, and, where a private mount namespace can
#     be made (root), `resolve broker.example.com` through DNS, against a tiny DNS server on
#     127.0.0.1:53 named by a bind-mounted /etc/resolv.conf (skipped with a message otherwise);
#     and with an nsswitch.conf naming NSS modules (mdns4_minimal, resolve), `resolve localhost`
#     still answers from /etc/hosts without trying to load one (qemu -strace shows every open);
#   - a retained message reaches a subscriber that arrives later;
#   - QoS 1 messages are acknowledged (PUBACK) and delivered at QoS 1, in order;
#   - SIGTERM stops it with exit code 0.
# Exits non-zero with a message naming the target and the failed check.
#
#   bash cross/smoke.sh aarch64|armv7|all        (after bash cross/build.sh ...)
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
    echo "usage: bash cross/smoke.sh aarch64|armv7|all" >&2
    exit 2
}
[ $# -eq 1 ] || usage
ARMV7_TARGET="${HOLDFAST_ARMV7_TARGET:-armv7-unknown-linux-gnueabihf}"
case "$1" in
    aarch64) arches=(aarch64) ;;
    armv7) arches=(armv7) ;;
    all) arches=(aarch64 armv7) ;;
    *) usage ;;
esac

need=()
command -v mosquitto_pub >/dev/null 2>&1 || need+=(mosquitto-clients)
command -v qemu-aarch64-static >/dev/null 2>&1 || need+=(qemu-user-static)
command -v python3 >/dev/null 2>&1 || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "== installing with apt: ${need[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

version="$(awk -F'"' '/^\[workspace.package\]/{p=1} p && /^version *=/{print $2; exit}' Cargo.toml)"
work="$(mktemp -d -t holdfast-smoke.XXXXXX)"
gw_pid=""
dns_pid=""
cleanup() {
    [ -n "$dns_pid" ] && kill "$dns_pid" 2>/dev/null || true
    if [ -n "$gw_pid" ] && kill -0 "$gw_pid" 2>/dev/null; then
        kill -KILL "$gw_pid" 2>/dev/null || true
    fi
    # Background mosquitto_sub processes started by this script.
    jobs -p | xargs -r kill 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

fail() {
    echo "SMOKE FAIL [$current]: $*" >&2
    if [ -f "$work/$current.log" ]; then
        echo "---- holdfast log (last 40 lines) ----" >&2
        tail -n 40 "$work/$current.log" >&2
    fi
    exit 1
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# Waits until 127.0.0.1:$1 accepts a TCP connection; prints the milliseconds it took since $2
# (a `date +%s%N` stamp). Returns non-zero after $3 seconds.
wait_port() {
    python3 - "$1" "$2" "$3" <<'PY'
import socket, sys, time
port, start_ns, limit = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
deadline = time.time() + limit
while time.time() < deadline:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        print((time.time_ns() - start_ns) // 1_000_000)
        sys.exit(0)
    except OSError:
        time.sleep(0.02)
sys.exit(1)
PY
}

# Waits until file $1 contains $2, for up to $3 seconds.
wait_for_text() {
    local deadline=$((SECONDS + $3))
    while [ $SECONDS -lt $deadline ]; do
        grep -q -- "$2" "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

# A DNS server for one name, broker.example.com -> 127.0.0.7 (A only; NXDOMAIN for others).
dns_ok=""
if [ "$(id -u)" -eq 0 ] && command -v unshare >/dev/null 2>&1 \
    && unshare -m true 2>/dev/null; then
    python3 - >"$work/dns.log" 2>&1 <<'PY' &
import socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 53))
print("ready", flush=True)
while True:
    data, peer = s.recvfrom(512)
    if len(data) < 12:
        continue
    i, labels = 12, []
    while i < len(data) and data[i] != 0:
        n = data[i]
        labels.append(data[i + 1:i + 1 + n].decode(errors="replace"))
        i += 1 + n
    qtype, _ = struct.unpack(">HH", data[i + 1:i + 5])
    question = data[12:i + 5]
    name = ".".join(labels).lower()
    answer, rcode = b"", 0
    if name == "broker.example.com":
        if qtype == 1:
            answer = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + socket.inet_aton("127.0.0.7")
    else:
        rcode = 3
    header = data[:2] + struct.pack(">HHHHH", 0x8180 | rcode, 1, 1 if answer else 0, 0, 0)
    s.sendto(header + question + answer, peer)
PY
    dns_pid=$!
    for _ in $(seq 50); do grep -q ready "$work/dns.log" 2>/dev/null && break; sleep 0.1; done
    if grep -q ready "$work/dns.log"; then
        echo "nameserver 127.0.0.1" >"$work/resolv.conf"
        dns_ok=1
    else
        echo "note: cannot serve DNS on 127.0.0.1:53 ($(head -c 200 "$work/dns.log")); skipping the DNS check"
    fi
else
    echo "note: no private mount namespace (needs root and unshare); skipping the DNS check"
fi

for arch in "${arches[@]}"; do
    case "$arch" in
        aarch64) triple=aarch64-unknown-linux-musl qemu=qemu-aarch64-static ;;
        armv7) triple="$ARMV7_TARGET" qemu=qemu-arm-static ;;
    esac
    current="$triple"
    bin="dist/holdfast-$version-$triple"
    [ -x "$bin" ] || fail "$bin not found: run bash cross/build.sh $arch first"
    echo "== smoke test $bin under $qemu"

    out="$("$qemu" "$bin" --version 2>&1)" || fail "--version failed: $out"
    [ "$out" = "holdfast $version" ] || fail "--version printed '$out', expected 'holdfast $version'"
    out="$("$qemu" "$bin" resolve localhost 2>&1)" || fail "name resolution failed: $out"
    grep -qE '^(127\.0\.0\.1|::1)$' <<<"$out" || fail "resolve localhost gave '$out'"
    echo "   --version and resolve localhost ($(tr '\n' ' ' <<<"$out")) ok"
    # A board whose nsswitch.conf names NSS modules (mDNS, systemd-resolved): the static binary
    # must resolve through /etc/hosts without loading any of them (a static glibc would dlopen
    # the board's libnss_*.so). qemu's -L prefix stands in for the board's /etc.
    nss="$work/nss-root"
    mkdir -p "$nss/etc"
    echo "hosts: mdns4_minimal [NOTFOUND=return] resolve [!UNAVAIL=return] files myhostname dns" >"$nss/etc/nsswitch.conf"
    echo "127.0.0.1 localhost" >"$nss/etc/hosts"
    "$qemu" -L "$nss" -strace "$bin" resolve localhost >"$nss/out" 2>"$nss/strace" ||
        fail "resolve with NSS modules configured failed: $(cat "$nss/out"; grep -v '^[0-9]* ' "$nss/strace" | tail -3)"
    if grep -q "libnss_" "$nss/strace"; then
        fail "name lookup tried to load the board's NSS modules: $(grep -m3 -o '"[^"]*libnss_[^"]*"' "$nss/strace" | tr '\n' ' ')"
    fi
    grep -qx "127.0.0.1" "$nss/out" || fail "resolve localhost with NSS modules configured gave '$(cat "$nss/out")'"
    echo "   no NSS module loaded with mdns4_minimal/resolve in nsswitch.conf ok"
    if [ -n "$dns_ok" ]; then
        out="$(unshare -m sh -c 'mount --bind "$1" /etc/resolv.conf && exec "$2" "$3" resolve broker.example.com' \
            sh "$work/resolv.conf" "$qemu" "$bin" 2>&1)" || fail "DNS resolution failed: $out"
        [ "$out" = "127.0.0.7" ] || fail "resolve broker.example.com via DNS gave '$out', expected 127.0.0.7"
        echo "   resolve broker.example.com through DNS ($out) ok"
    fi

    port="$(free_port)"
    dir="$work/$arch"
    mkdir -p "$dir/data"
    cat >"$dir/holdfast.toml" <<TOML
[node]
name = "smoke-$arch"
data_dir = "$dir/data"

[[listeners]]
kind = "tcp"
bind = "127.0.0.1:$port"

[auth]
allow_anonymous = true
TOML
    "$qemu" "$bin" check --config "$dir/holdfast.toml" >/dev/null || fail "holdfast check rejected the smoke config"

    start_ns=$(date +%s%N)
    "$qemu" "$bin" run --config "$dir/holdfast.toml" >"$work/$current.log" 2>&1 &
    gw_pid=$!
    ms="$(wait_port "$port" "$start_ns" 60)" || fail "did not accept connections on 127.0.0.1:$port within 60 s"
    echo "   listening on 127.0.0.1:$port after ${ms} ms"

    # Retained: publish, then a new subscriber must get it.
    timeout 20 mosquitto_pub -h 127.0.0.1 -p "$port" -q 1 -r -t "smoke/retained" -m "kept-$arch" \
        || fail "retained publish failed"
    got="$(timeout 20 mosquitto_sub -h 127.0.0.1 -p "$port" -t "smoke/retained" -C 1 -W 15 2>&1)" \
        || fail "no retained message for a late subscriber (got '$got')"
    [ "$got" = "kept-$arch" ] || fail "retained message was '$got', expected 'kept-$arch'"
    echo "   retained message ok"

    # QoS 1: a subscriber at QoS 1, three QoS 1 publishes, each acknowledged and delivered in order.
    sub_out="$dir/sub.out"
    timeout 40 stdbuf -oL mosquitto_sub -h 127.0.0.1 -p "$port" -q 1 -t "smoke/q1" -C 3 -W 30 -d \
        >"$sub_out" 2>&1 &
    sub_pid=$!
    wait_for_text "$sub_out" "SUBACK" 15 || fail "QoS 1 subscriber got no SUBACK: $(cat "$sub_out")"
    for i in 1 2 3; do
        pub="$(timeout 20 mosquitto_pub -h 127.0.0.1 -p "$port" -q 1 -t "smoke/q1" -m "m$i" -d 2>&1)" \
            || fail "QoS 1 publish m$i failed: $pub"
        grep -q "received PUBACK" <<<"$pub" || fail "QoS 1 publish m$i got no PUBACK: $pub"
    done
    wait "$sub_pid" || fail "QoS 1 subscriber did not get 3 messages: $(cat "$sub_out")"
    msgs="$(grep -vE '^Client |^Subscribed' "$sub_out" | tr '\n' ' ')"
    [ "$msgs" = "m1 m2 m3 " ] || fail "QoS 1 messages were '$msgs', expected 'm1 m2 m3'"
    [ "$(grep -c 'received PUBLISH (d0, q1' "$sub_out")" -eq 3 ] \
        || fail "messages were not delivered at QoS 1: $(cat "$sub_out")"
    echo "   QoS 1 publish/ack/deliver in order ok"

    # SIGTERM: a clean stop, exit code 0.
    kill -TERM "$gw_pid"
    deadline=$((SECONDS + 20))
    while kill -0 "$gw_pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
    kill -0 "$gw_pid" 2>/dev/null && fail "still running 20 s after SIGTERM"
    set +e
    wait "$gw_pid"
    code=$?
    set -e
    gw_pid=""
    [ "$code" -eq 0 ] || fail "exit code $code after SIGTERM, expected 0"
    grep -q "stopped" "$work/$current.log" || fail "no 'stopped' line in the log after SIGTERM"
    echo "   SIGTERM -> exit 0 ok"
    echo "== $triple: smoke test passed"
done
echo "smoke: ${#arches[@]} passed, 0 failed"
