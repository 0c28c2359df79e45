"""Fixed-rate load on the web API: RATE requests per second for DURATION seconds, spread over a
mix of routes, each sent on time whether or not the previous ones have answered (an open loop,
so a slow answer shows in the latency instead of lowering the rate). Prints one JSON object:
requests sent, errors, and latency percentiles in milliseconds overall and per route.

    python3 bench/web_api_load.py PORT TOKEN [RATE] [DURATION]

ROUTES (space-separated paths) replaces the mix, e.g. only client searches.
"""
import json
import os
import sys
import threading
import time
import http.client

PORT = int(sys.argv[1])
TOKEN = sys.argv[2]
RATE = float(sys.argv[3]) if len(sys.argv) > 3 else 100.0
DURATION = float(sys.argv[4]) if len(sys.argv) > 4 else 20.0
# What the UI and a Prometheus scrape ask for, weighted as a technician's browser would.
ROUTES = [
    "/api/v1/clients?offset=0&limit=50",
    "/api/v1/clients?search=bench-idle-99&limit=50",
    "/api/v1/stats",
    "/api/v1/listeners",
    "/api/v1/bridges",
    "/api/v1/board",
    "/api/v1/logs?after=0&limit=200",
    "/metrics",
]
if os.environ.get("ROUTES"):
    ROUTES = os.environ["ROUTES"].split()

results = []
lock = threading.Lock()


def one(path):
    start = time.perf_counter()
    ok = False
    try:
        conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=10)
        conn.request("GET", path, headers={"Authorization": "Bearer " + TOKEN})
        response = conn.getresponse()
        response.read()
        ok = response.status == 200
        conn.close()
    except OSError:
        ok = False
    elapsed = (time.perf_counter() - start) * 1000.0
    with lock:
        results.append((path, elapsed, ok))


def percentile(values, p):
    if not values:
        return None
    values = sorted(values)
    k = min(len(values) - 1, max(0, int(round(p / 100.0 * len(values) + 0.5)) - 1))
    return round(values[k], 2)


def summary(values):
    return {"n": len(values), "p50": percentile(values, 50), "p99": percentile(values, 99),
            "max": round(max(values), 2) if values else None}


threads = []
begin = time.perf_counter()
n = int(RATE * DURATION)
for i in range(n):
    due = begin + i / RATE
    delay = due - time.perf_counter()
    if delay > 0:
        time.sleep(delay)
    t = threading.Thread(target=one, args=(ROUTES[i % len(ROUTES)],), daemon=True)
    t.start()
    threads.append(t)
for t in threads:
    t.join(15)
elapsed = time.perf_counter() - begin
out = {
    "sent": n,
    "answered": len(results),
    "errors": sum(1 for r in results if not r[2]),
    "rate": round(n / elapsed, 1),
    "latency_ms": summary([r[1] for r in results]),
    "by_route": {p: summary([r[1] for r in results if r[0] == p]) for p in ROUTES},
}
print(json.dumps(out))
