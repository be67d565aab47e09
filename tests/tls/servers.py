"""Small real servers on 127.0.0.1 port 0 for TLS tests (aiohttp and grpclib), reusable.

The handlers are what a receiver does with the TLS helpers: authorize the peer per
request (answer 401/403 or UNAUTHENTICATED/PERMISSION_DENIED, counted), then use the
peer identity. They echo the peer and the server certificate's serial.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from grpclib.const import Cardinality, Handler, Status
from grpclib.events import RecvRequest, listen
from grpclib.exceptions import GRPCError
from grpclib.server import Server, Stream
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from sidecar.tls.acceptor import tls_protocol_factory
from sidecar.tls.server import PeerRefused, ServerTLS, format_address, peer_from_cert

TRACE_EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


def peer_cert_serial(ssl_object: Any) -> int:
    """The serial of the certificate the other side presented (0 if none)."""
    from cryptography import x509

    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    return x509.load_der_x509_certificate(der).serial_number if der else 0


def make_http_app(tls: ServerTLS | None, received: list[dict[str, Any]] | None = None) -> web.Application:
    """An aiohttp app whose POST /v1/traces authorizes the peer and records the request."""

    async def export(request: web.Request) -> web.Response:
        body = await request.read()
        if tls is not None:
            try:
                peer = tls.authorize_transport(request.transport)
            except PeerRefused as exc:
                return web.json_response({"error": exc.message}, status=exc.http_status)
        else:
            peer = None
        ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
        record = {
            "body": body,
            "spiffe_id": peer.spiffe_id if peer else "",
            "tls": bool(peer and peer.tls),
            "client_serial": peer_cert_serial(ssl_object),
        }
        if received is not None:
            received.append(record)
        return web.json_response({"spiffe_id": record["spiffe_id"], "client_serial": record["client_serial"]})

    app = web.Application()
    app.router.add_post("/v1/traces", export)
    return app


@contextlib.asynccontextmanager
async def serve_http(app: web.Application, ssl_context: ssl.SSLContext | None) -> AsyncIterator[int]:
    """Serve ``app`` on 127.0.0.1, an ephemeral port; yields the port."""
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def serve_http_accepting(app: web.Application, tls: ServerTLS) -> AsyncIterator[int]:
    """Serve ``app`` on 127.0.0.1 through the counting TLS acceptor; yields the port."""
    runner = web.AppRunner(app)
    await runner.setup()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(tls_protocol_factory(runner.server, tls), "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await runner.cleanup()
        await server.wait_closed()


@contextlib.asynccontextmanager
async def serve_https(app: web.Application, tls: ServerTLS, style: str) -> AsyncIterator[int]:
    """``style`` "ssl_context": TCPSite(ssl_context=tls.context()); "acceptor": the acceptor."""
    if style == "acceptor":
        async with serve_http_accepting(app, tls) as port:
            yield port
    else:
        async with serve_http(app, tls.context()) as port:
            yield port


class TraceService:
    """A grpclib OTLP trace service that records what it accepted."""

    def __init__(self) -> None:
        self.received: list[tuple[ExportTraceServiceRequest, str, int]] = []

    async def export(self, stream: Stream) -> None:  # type: ignore[type-arg]
        request = await stream.recv_message()
        assert request is not None
        cert = stream.peer.cert()
        peer = peer_from_cert(cert, "")
        serial = int(cert["serialNumber"], 16) if cert else 0
        self.received.append((request, peer.spiffe_id, serial))
        await stream.send_message(ExportTraceServiceResponse())

    def __mapping__(self) -> dict[str, Handler]:
        return {
            TRACE_EXPORT: Handler(
                self.export, Cardinality.UNARY_UNARY, ExportTraceServiceRequest, ExportTraceServiceResponse
            )
        }


def authorize_grpc(server: Server, tls: ServerTLS) -> None:
    """Refuse peers ``tls`` does not authorize, before the handler runs (counted by ``tls``)."""

    async def on_request(event: RecvRequest) -> None:
        peer = event.peer
        try:
            tls.authorize_cert(peer.cert(), format_address(peer.addr()))
        except PeerRefused as exc:
            raise GRPCError(Status[exc.grpc_status], exc.message) from None

    listen(server, RecvRequest, on_request)


@contextlib.asynccontextmanager
async def serve_grpc(service: TraceService, tls: ServerTLS | None) -> AsyncIterator[int]:
    """Serve ``service`` with grpclib on 127.0.0.1, an ephemeral port; yields the port."""
    server = Server([service])
    if tls is not None:
        authorize_grpc(server, tls)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    await server.start(sock=sock, ssl=tls.context() if tls else None)
    try:
        yield port
    finally:
        server.close()
        await server.wait_closed()
