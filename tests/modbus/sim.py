#!/usr/bin/env python3
"""A Modbus device for the integration tests: pymodbus serving register maps over TCP or a
serial line (RTU), several unit ids on one line.

    sim.py --tcp 127.0.0.1:15020 --map '{"1": {"hr": {"0": 17}, "co": {"3": true}}}'
    sim.py --serial /tmp/x/dev --baud 115200 --map '{"1": {...}, "2": {...}}'

Tables: hr (holding registers), ir (input registers), co (coils), di (discrete inputs); each
is sparse, so an address that is not listed answers exception 2 (illegal data address).
Prints "ready" once serving. Reads commands on stdin, one per line, answering "ok":
    set UNIT TABLE ADDRESS VALUE[,VALUE...]    change values (as a process on the device would)
    get UNIT TABLE ADDRESS COUNT               print the values, comma-separated
"""
import argparse
import asyncio
import json
import logging
import socket
import sys
import threading

from pymodbus import FramerType
from pymodbus.datastore import (
    ModbusServerContext,
    ModbusSlaveContext,
    ModbusSparseDataBlock,
)
from pymodbus.server import ModbusSerialServer, ModbusTcpServer

TABLES = {"co": 1, "di": 2, "hr": 3, "ir": 4}


def block(values):
    parsed = {}
    for address, value in (values or {}).items():
        if isinstance(value, bool):
            value = int(value)
        # pymodbus keeps protocol address N under key N + 1.
        parsed[int(address) + 1] = value
    # An empty sparse block would take any address; a table not given has no addresses at all.
    return ModbusSparseDataBlock(parsed or {65536: 0})


def context(units):
    devices = {}
    for unit, tables in units.items():
        devices[int(unit)] = ModbusSlaveContext(
            co=block(tables.get("co")),
            di=block(tables.get("di")),
            hr=block(tables.get("hr")),
            ir=block(tables.get("ir")),
        )
    return ModbusServerContext(slaves=devices, single=False), devices


def serve_commands(loop, devices):
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        try:
            unit, table, address = int(words[1]), TABLES[words[2]], int(words[3])
            device = devices[unit]
            if words[0] == "set":
                values = [int(v) for v in words[4].split(",")]
                done = threading.Event()

                def apply():
                    device.setValues(table, address, values)
                    done.set()

                loop.call_soon_threadsafe(apply)
                done.wait(5)
                print("ok", flush=True)
            elif words[0] == "get":
                values = device.getValues(table, address, int(words[4]))
                print(",".join(str(int(v)) for v in values), flush=True)
        except Exception as e:  # a test's typo must show, not kill the device
            print(f"error {e}", flush=True)


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tcp", action="append", help="HOST:PORT; repeat to serve the same map on several ports (benchmarks)")
    parser.add_argument("--serial")
    parser.add_argument("--baud", type=int, default=19200)
    # A pty refuses parity settings (tcsetattr EINVAL): the tests run "none" on both ends.
    parser.add_argument("--parity", default="N")
    parser.add_argument("--map", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.CRITICAL)
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    ctx, devices = context(json.loads(args.map))
    servers = []
    if args.tcp:
        for address in args.tcp:
            host, port = address.rsplit(":", 1)
            servers.append(ModbusTcpServer(ctx, address=(host, int(port)), ignore_missing_slaves=True))
    else:
        servers.append(ModbusSerialServer(
            ctx,
            framer=FramerType.RTU,
            ignore_missing_slaves=True,
            port=args.serial,
            baudrate=args.baud,
            parity=args.parity,
            bytesize=8,
            stopbits=1,
        ))
    tasks = [asyncio.create_task(s.serve_forever()) for s in servers]
    for address in args.tcp or []:
        host, port = address.rsplit(":", 1)
        for _ in range(200):
            try:
                socket.create_connection((host, int(port)), timeout=0.2).close()
                break
            except OSError:
                await asyncio.sleep(0.05)
    if not args.tcp:
        await asyncio.sleep(0.3)
    for task in tasks:
        if task.done():
            task.result()  # raises what stopped a server (a port that cannot be opened...)
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    threading.Thread(target=serve_commands, args=(loop, devices), daemon=True).start()
    await asyncio.gather(*tasks)


if __name__ == "__main__":
    asyncio.run(main())
