"""An upstream URL whose port speaks the other protocol (gRPC sent to OTLP/HTTP's 4318, or
http/protobuf to gRPC's 4317) is the commonest misconfiguration: the export error says so and
names the setting, rather than "a frame of 4740180 bytes" (the bytes "HTT" read as a frame
length) or a dump of an HTTP/2 SETTINGS frame. Real servers of each protocol on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from aiohttp import web

from sidecar.config import load
from sidecar.export.grpc import GrpcExporter
from sidecar.export.http import HttpExporter
from sidecar.export.result import ExportError
from sidecar.signals import Signal
from sidecar.wire.http2 import GrpcServer


@asynccontextmanager
async def http1_server() -> AsyncIterator[int]:
    """An HTTP/1.1 server (aiohttp) answering OTLP/HTTP's path."""
    async def answer(request: web.Request) -> web.Response:
        return web.Response(body=b"")

    app = web.Application()
    app.router.add_post("/v1/traces", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    finally:
        await runner.cleanup()


@asynccontextmanager
async def grpc_server() -> AsyncIterator[int]:
    """An HTTP/2 gRPC server (the sidecar's own)."""
    async def handler(call: object) -> bytes:
        return b""

    server = GrpcServer({Signal.TRACES.grpc_path: handler})
    _, port = await server.start("127.0.0.1", 0)
    try:
        yield port
    finally:
        await server.close(1.0)


async def export_error(port: int, protocol: str) -> ExportError:
    """What one export to 127.0.0.1:``port`` over ``protocol`` fails with, as a user configures it."""
    config = load(None, env={"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
                             "OTEL_EXPORTER_OTLP_PROTOCOL": protocol, "OTEL_EXPORTER_OTLP_TIMEOUT": "3000"})
    exporter = GrpcExporter(config.exporter) if protocol == "grpc" else HttpExporter(config.exporter)
    await exporter.start()
    try:
        with pytest.raises(ExportError) as info:
            await exporter.export(Signal.TRACES, b"")
    finally:
        await exporter.stop()
    return info.value


async def test_grpc_sent_to_an_http1_port_is_named_as_such() -> None:
    async with http1_server() as port:
        error = await export_error(port, "grpc")
    assert "answered in HTTP/1.1, not HTTP/2" in error.message, error.message
    assert "OTEL_EXPORTER_OTLP_PROTOCOL" in error.message and "4740180" not in error.message
    assert error.retryable


async def test_http_protobuf_sent_to_a_grpc_port_is_named_as_such() -> None:
    async with grpc_server() as port:
        error = await export_error(port, "http/protobuf")
    assert "answered in HTTP/2, not HTTP/1.1" in error.message, error.message
    assert "OTEL_EXPORTER_OTLP_PROTOCOL" in error.message
