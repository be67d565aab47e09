"""The transport floor: the OTLP servers the sidecar uses (``sidecar.wire.http1`` and
``sidecar.wire.http2``) answering every request without looking at it. What receiving costs
before any policy work.

With ``--libraries``: aiohttp and a grpclib server instead, the servers the sidecar used before
its own, for comparison in the same run.

``python -m bench.baselines.transport_floor [--libraries]`` prints ``grpc=<port> http=<port>``
once listening.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from aiohttp import web
from grpclib.const import Cardinality, Handler

from bench import grpclib_server as grpcwire
from bench.serving import serve_until_terminated, terminated
from sidecar.signals import Signal
from sidecar.wire.http1 import Http1Server, Request, Response
from sidecar.wire.http1 import Limits as HttpLimits
from sidecar.wire.http2 import GrpcServer, UnaryCall
from sidecar.wire.http2 import Limits as GrpcLimits

EMPTY = Response(200, b"", "application/x-protobuf")


async def grpc_export(call: UnaryCall) -> bytes:
    return b""


async def http_export(request: Request) -> Response:
    return EMPTY


async def serve_ours() -> None:
    grpc = GrpcServer({s.grpc_path: grpc_export for s in Signal}, GrpcLimits(max_message_bytes=1 << 30))
    http = Http1Server(http_export, limits=HttpLimits(max_request_bytes=1 << 30))
    _, grpc_port = await grpc.start("127.0.0.1", 0)
    _, http_port = await http.start("127.0.0.1", 0)
    print(f"grpc={grpc_port} http={http_port}", flush=True)
    try:
        await terminated()
    finally:
        await grpc.close(1.0)
        await http.close(1.0)


class LibraryFloor:
    """aiohttp and grpclib (with our raw-bytes extension) answering without looking."""

    def __mapping__(self) -> dict[str, Handler]:
        async def export(stream: Any) -> None:
            await grpcwire.recv_unary(stream, 1 << 30, 1 << 30)
            await grpcwire.send_unary(stream, b"")

        return {s.grpc_path: Handler(export, Cardinality.UNARY_UNARY, bytes, bytes) for s in Signal}

    async def http_export(self, request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=b"", content_type="application/x-protobuf")


async def serve_libraries() -> None:
    floor = LibraryFloor()
    app = web.Application(client_max_size=1 << 30)
    for each in Signal:
        app.router.add_post(each.http_path, floor.http_export)
    await serve_until_terminated(floor, app)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--libraries", action="store_true", help="aiohttp and grpclib instead of ours")
    args = parser.parse_args()
    asyncio.run(serve_libraries() if args.libraries else serve_ours())


if __name__ == "__main__":
    main()
