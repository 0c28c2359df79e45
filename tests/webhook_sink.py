#!/usr/bin/env python3
"""A webhook endpoint for tests/tests/webhooks.rs (stdlib only).

Listens on 127.0.0.1, on a free port it picks itself and writes to --port-file once it is
listening (no race with another process over a "free" port). HTTP/1.1 with keep-alive.

Every POST is counted (the count is rewritten to --out + ".count" after each request). A request
answered 2xx has its body appended to --out as one line (the gateway posts compact JSON) and its
headers of interest to --out + ".headers" (one JSON object a line).

  --fail-first N   answer 500 to the first N requests (to test retries)
  --sleep S        wait S seconds before answering each request (to test the bounded queue)
  --cert F --key K serve HTTPS with this PEM certificate chain and key
  --close          close each connection after its response without saying so (a keep-alive
                   connection the endpoint dropped while idle)
"""

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--fail-first", type=int, default=0)
    ap.add_argument("--sleep", type=float, default=0.0)
    ap.add_argument("--close", action="store_true")
    ap.add_argument("--cert")
    ap.add_argument("--key")
    args = ap.parse_args()

    lock = threading.Lock()
    state = {"requests": 0}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def do_POST(self):
            length = int(self.headers.get("content-length", "0"))
            body = self.rfile.read(length)
            if args.sleep:
                time.sleep(args.sleep)
            with lock:
                state["requests"] += 1
                n = state["requests"]
                with open(args.out + ".count", "w") as f:
                    f.write(str(n))
                ok = n > args.fail_first
                if ok:
                    with open(args.out, "ab") as f:
                        f.write(body.replace(b"\n", b" ") + b"\n")
                    with open(args.out + ".headers", "a") as f:
                        f.write(json.dumps({
                            "content-type": self.headers.get("content-type"),
                            "authorization": self.headers.get("authorization"),
                            "host": self.headers.get("host"),
                            "path": self.path,
                            "peer_port": self.client_address[1],
                        }) + "\n")
            reply = b"ok" if ok else b"try again"
            self.send_response(200 if ok else 500)
            self.send_header("content-length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)
            if args.close:
                self.close_connection = True

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    if args.cert:
        import ssl
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.cert, args.key)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(server.server_address[1]))
    import os
    os.replace(tmp, args.port_file)
    server.serve_forever()


if __name__ == "__main__":
    main()
