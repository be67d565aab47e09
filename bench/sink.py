"""The benchmark's upstream: an OTLP sink (gRPC and HTTP) that counts what it receives, cheaply.

Run in its own process: ``python -m bench.sink``. It prints ``grpc=<port> http=<port>`` on
stdout once listening, and on SIGTERM prints a JSON line with its counts.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import sys
from typing import Any

import zstandard
from aiohttp import web
from grpclib.const import Cardinality, Handler

from bench import grpclib_server as grpcwire
from bench.serving import serve_until_terminated
from sidecar.rewrite import count_items
from sidecar.signals import Signal


class Sink:
    def __init__(self) -> None:
        self.requests = 0
        self.items = 0
        self.bytes = 0

    def take(self, signal: Signal, body: bytes) -> bytes:
        self.requests += 1
        self.bytes += len(body)
        self.items += count_items(signal, body)
        return b""

    def __mapping__(self) -> dict[str, Handler]:
        def handler(signal: Signal) -> Any:
            async def handle(stream: Any) -> None:
                body = await grpcwire.recv_unary(stream, 1 << 30, 1 << 30)
                await grpcwire.send_unary(stream, self.take(signal, body))

            return handle

        return {s.grpc_path: Handler(handler(s), Cardinality.UNARY_UNARY, bytes, bytes) for s in Signal}

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1 << 30)
        for each in Signal:
            app.router.add_post(each.http_path, self._http(each))
        return app

    def _http(self, signal: Signal) -> Any:
        async def handle(request: web.Request) -> web.Response:
            body = await request.read()
            encoding = request.headers.get("Content-Encoding", "")
            if encoding == "zstd":
                body = zstandard.ZstdDecompressor().decompressobj().decompress(body)
            elif encoding == "gzip":
                body = gzip.decompress(body)
            self.take(signal, body)
            return web.Response(body=b"", content_type="application/x-protobuf")

        return handle


async def main() -> None:
    sink = Sink()
    await serve_until_terminated(sink, sink.app())
    print(json.dumps({"requests": sink.requests, "items": sink.items, "bytes": sink.bytes}), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
    sys.exit(0)
