"""Run the bench's servers on loopback ports until SIGTERM: a grpclib servable and an aiohttp app."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

from aiohttp import web

from bench import grpclib_server as grpcwire


async def serve_until_terminated(servable: Any, app: web.Application, *, max_frame_size: int = 1 << 20) -> None:
    """Listen on free loopback ports, print ``grpc=<port> http=<port>``, return on SIGTERM/SIGINT."""
    server = grpcwire.Server([servable], max_frame_size=max_frame_size)
    await server.start("127.0.0.1", 0)
    runner = web.AppRunner(app, access_log=None, auto_decompress=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    grpc_port = server._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    http_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"grpc={grpc_port} http={http_port}", flush=True)
    try:
        await terminated()
    finally:
        server.close()
        await runner.cleanup()


async def terminated() -> None:
    """Return on SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
