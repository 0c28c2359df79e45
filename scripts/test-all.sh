#!/usr/bin/env bash
# Runs the whole Holdfast test suite on a Debian machine with Rust: installs the third-party
# peers the black-box tests drive (mosquitto, mosquitto-clients, socat, openssl, python3,
# faketime, libcoap3-bin, chromium, nodejs and npm with the LwM2M client, Playwright and axe-core from
# npm, pymodbus, prometheus-client, schemathesis and aiocoap from PyPI)
# when missing, builds the gateway, then runs every unit, property and integration test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v mosquitto_pub >/dev/null 2>&1 || need+=(mosquitto-clients)
command -v socat >/dev/null 2>&1 || need+=(socat)
# The bridge's TLS tests make their own CA and certificates with the openssl CLI.
command -v openssl >/dev/null 2>&1 || need+=(openssl)
# The webhook tests' HTTP endpoint is a python3 http.server script (tests/webhook_sink.py).
command -v python3 >/dev/null 2>&1 || need+=(python3)
# The CoAP tests drive the gateway with libcoap's client.
command -v coap-client-notls >/dev/null 2>&1 || need+=(libcoap3-bin)
# The LwM2M tests drive a real LwM2M client on Node (npm coap-node, tests/lwm2m).
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
# The web UI test drives Debian's Chromium (with Playwright from npm, tests/web-e2e).
command -v chromium >/dev/null 2>&1 || need+=(chromium)
# The clock-jump tests run the gateway under libfaketime.
command -v faketime >/dev/null 2>&1 || need+=(faketime)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing test peers: ${need[*]}"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi

# The Modbus devices the tests poll: pymodbus (with pyserial for RTU on pty pairs), pinned: its
# datastore API changes between minor versions.
# The web API tests parse /metrics with Prometheus's own parser (prometheus_client) and check
# every route against the OpenAPI document with schemathesis. The LwM2M block-wise test's
# device runs on aiocoap's block-wise code.
if ! python3 -c 'import pymodbus, serial, prometheus_client, aiocoap, sys; sys.exit(pymodbus.__version__ != "3.8.6")' 2>/dev/null \
    || ! command -v schemathesis >/dev/null 2>&1; then
    pip_pkgs=("pymodbus==3.8.6" "pyserial==3.5" "prometheus-client==0.26.0" "schemathesis==4.32.5" "aiocoap==0.4.14")
    python3 -m pip install --quiet --disable-pip-version-check "${pip_pkgs[@]}" \
        || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages "${pip_pkgs[@]}"
fi

# The LwM2M client the tests drive, at the versions of tests/lwm2m/package-lock.json.
[ -d tests/lwm2m/node_modules/coap-node ] || npm ci --prefix tests/lwm2m --no-audit --no-fund
# Playwright (without its browser download: the test uses Debian's chromium) and axe-core.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
[ -d tests/web-e2e/node_modules/playwright-core ] || npm ci --prefix tests/web-e2e --no-audit --no-fund

cargo build --locked -p holdfast
cargo test --locked --workspace --no-fail-fast -- --test-threads="${HOLDFAST_TEST_THREADS:-4}"
