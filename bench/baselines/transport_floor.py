"""The transport floor: the same OTLP servers the sidecar uses (aiohttp, our grpclib server),
answering every request without looking at it. What receiving costs before any policy work.

``python -m bench.baselines.transport_floor`` prints ``grpc=<port> http=<port>`` once listening.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from grpclib.const import Cardinality, Handler

from bench.serving import serve_until_terminated
from sidecar.signals import Signal
from sidecar.wire import grpc as grpcwire


class Floor:
    def __mapping__(self) -> dict[str, Handler]:
        async def export(stream: Any) -> None:
            await grpcwire.recv_unary(stream, 1 << 30, 1 << 30)
            await grpcwire.send_unary(stream, b"")

        return {Signal.TRACES.grpc_path: Handler(export, Cardinality.UNARY_UNARY, bytes, bytes)}

    async def http_export(self, request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=b"", content_type="application/x-protobuf")


async def main() -> None:
    floor = Floor()
    app = web.Application(client_max_size=1 << 30)
    app.router.add_post(Signal.TRACES.http_path, floor.http_export)
    await serve_until_terminated(floor, app)


if __name__ == "__main__":
    asyncio.run(main())
