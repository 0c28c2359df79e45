#!/usr/bin/env python3
"""An LwM2M device on aiocoap (PyPI), for the block-wise tests: aiocoap's own block-wise code
(RFC 7959) sends what does not fit a block and reassembles what comes in blocks.

Usage: blockwise_device.py SERVER_PORT DEVICE_PORT EP INSTANCES

It binds 127.0.0.1:DEVICE_PORT and registers as EP with an object list of INSTANCES instances
of 3303 (a long list goes as Block1 blocks). It serves
  /5/0/0       Firmware Update's Package (PUT, TLV): the received package's length and SHA-256
               are printed as a "firmware" event
  /3303/0/5701 a text resource (GET) that stdin's `text N C` sets to N times C: longer than
               a block, it goes out in Block2 blocks (aiocoap's server does not send
               notifications block-wise, so this one is not observable)
and prints one JSON line per event. Commands on stdin: `text N C`, `exit`.
"""

import asyncio
import hashlib
import json
import sys

import aiocoap
import aiocoap.resource as resource
from aiocoap import Code, Message

TEXT = 0
TLV = 11542


def out(event, **extra):
    print(json.dumps({"event": event, **extra}), flush=True)


def tlv_resource_value(data):
    """The value of a single-resource TLV (OMA-TS-LightweightM2M section 6.4.3)."""
    kind = data[0]
    pos = 1 + (2 if kind & 0x20 else 1)
    length_type = (kind >> 3) & 0x03
    if length_type == 0:
        length = kind & 0x07
    else:
        length = int.from_bytes(data[pos : pos + length_type], "big")
        pos += length_type
    return data[pos : pos + length]


class Package(resource.Resource):
    async def render_put(self, request):
        value = tlv_resource_value(request.payload)
        out("firmware", bytes=len(value), sha256=hashlib.sha256(value).hexdigest())
        return Message(code=Code.CHANGED)


class Text(resource.Resource):
    def __init__(self):
        super().__init__()
        self.value = "short"

    async def render_get(self, request):
        return Message(payload=self.value.encode(), content_format=TEXT)


async def main():
    server_port, device_port, ep, instances = (
        int(sys.argv[1]),
        int(sys.argv[2]),
        sys.argv[3],
        int(sys.argv[4]),
    )
    text = Text()
    site = resource.Site()
    site.add_resource(["5", "0", "0"], Package())
    site.add_resource(["3303", "0", "5701"], text)
    ctx = await aiocoap.Context.create_server_context(site, bind=("127.0.0.1", device_port))
    links = ",".join(["</1/0>", "</3/0>", "</5/0>"] + [f"</3303/{i}>" for i in range(instances)])
    register = Message(
        code=Code.POST,
        uri=f"coap://127.0.0.1:{server_port}/rd?ep={ep}&lt=300&lwm2m=1.1&b=U",
        payload=links.encode(),
        content_format=40,
    )
    response = await ctx.request(register).response
    out(
        "registered",
        code=str(response.code),
        location="/".join(response.opt.location_path),
        links=len(links),
    )
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = (await reader.readline()).decode().split()
        if not line or line[0] == "exit":
            break
        if line[0] == "text":
            text.value = line[2] * int(line[1])
            out("text", length=len(text.value))
    await ctx.shutdown()


asyncio.run(main())
