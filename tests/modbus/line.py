#!/usr/bin/env python3
"""An RS-485 line at a real baud rate between two ttys (for benchmarks): bytes read from either
end are written to the other no faster than the line would carry them (11 bits per byte: start,
8 data, parity or a second stop bit, stop), and the two directions share the one medium, as on
a half-duplex RS-485 bus. A socat pty pair alone moves bytes instantly.

    line.py /tmp/x/gw-far /tmp/x/dev-far 115200
"""
import os
import select
import sys
import time
import tty


def main():
    a_path, b_path, baud = sys.argv[1], sys.argv[2], int(sys.argv[3])
    a = os.open(a_path, os.O_RDWR | os.O_NOCTTY)
    b = os.open(b_path, os.O_RDWR | os.O_NOCTTY)
    for fd in (a, b):
        tty.setraw(fd)
    per_byte = 11.0 / baud
    busy_until = 0.0
    while True:
        ready, _, _ = select.select([a, b], [], [])
        for fd in ready:
            data = os.read(fd, 4096)
            if not data:
                return
            now = time.monotonic()
            start = max(now, busy_until)
            busy_until = start + len(data) * per_byte
            delay = busy_until - now
            if delay > 0:
                time.sleep(delay)
            os.write(b if fd == a else a, data)


if __name__ == "__main__":
    main()
