"""A TLS connection's memory goes back when it closes, not at the next full collection.

asyncio's TLS protocol keeps bound methods of the server's protocol after the connection is lost,
and the server's protocol kept the transport: a reference cycle holding 256 KiB of TLS buffers
that only the cyclic collector frees, and it runs rarely when the garbage is few large objects
(500 idle TLS connections closed at the webhook's cap held 100 MiB). The tests disable the
collector, close connections, and check that the servers' connection objects are gone.

Also: handshakes in progress are capped (each holds those buffers until its timeout).
"""

from __future__ import annotations

import asyncio
import gc
import ssl
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.tls.acceptor import EVICT_AFTER, tls_wrapper
from sidecar.tls.server import ServerTLS
from sidecar.wire.http1 import Http1Server, Limits, Request, Response
from sidecar.wire.http1 import _Connection as Http1Connection
from sidecar.wire.http2.connection import Connection as Http2Connection
from sidecar.wire.http2.server import GrpcServer
from tests.tls.pki import make_pki


@pytest.fixture
def no_collector() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _track(cls: type, alive: list[weakref.ref[object]]) -> object:
    """Record a weak reference to every instance of ``cls`` made from now on."""
    original = cls.__init__

    def init(self: object, *args: object, **kwargs: object) -> None:
        original(self, *args, **kwargs)  # type: ignore[misc]
        alive.append(weakref.ref(self))

    cls.__init__ = init  # type: ignore[misc]
    return original


async def _open_and_close(port: int, context: ssl.SSLContext, count: int) -> None:
    writers = []
    for _ in range(count):
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="localhost")
        writers.append(writer)
    await asyncio.sleep(0.05)
    for writer in writers:
        writer.close()
    await asyncio.sleep(0.3)  # the server sees the close_notify and the FIN


async def _ok(request: Request) -> Response:
    return Response(200, b"ok")


@pytest.mark.usefixtures("no_collector")
async def test_http1_tls_connections_are_freed_when_they_close(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    tls = ServerTLS(cert_file=pki.server_cert, key_file=pki.server_key)
    alive: list[weakref.ref[object]] = []
    original = _track(Http1Connection, alive)
    server = Http1Server(_ok, limits=Limits())
    try:
        _, port = await server.start("127.0.0.1", 0, tls_wrapper(tls))
        await _open_and_close(port, ssl.create_default_context(cafile=pki.ca_cert), 20)
        assert server.connections == 0
        assert len(alive) == 20
        assert [ref for ref in alive if ref() is not None] == []
    finally:
        Http1Connection.__init__ = original  # type: ignore[misc]
        await server.close(1.0)


@pytest.mark.usefixtures("no_collector")
async def test_http2_tls_connections_are_freed_when_they_close(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    tls = ServerTLS(cert_file=pki.server_cert, key_file=pki.server_key, alpn=("h2",))
    alive: list[weakref.ref[object]] = []
    original = _track(Http2Connection, alive)
    server = GrpcServer({})
    try:
        _, port = await server.start("127.0.0.1", 0, tls_wrapper(tls))
        context = ssl.create_default_context(cafile=pki.ca_cert)
        context.set_alpn_protocols(["h2"])
        await _open_and_close(port, context, 20)
        assert len(alive) == 20
        assert [ref for ref in alive if ref() is not None] == []
    finally:
        Http2Connection.__init__ = original  # type: ignore[misc]
        await server.close(1.0)


async def test_handshakes_in_progress_are_capped(tmp_path: Path) -> None:
    """Over the cap a new connection closes the oldest one that has sent nothing, however young
    (silent connections only close each other, and a TLS client is served at once); when every
    handshake in progress has had bytes, the new connection is closed while they are young (a
    burst) and once they waited a second the oldest is closed for a new client instead."""
    pki = make_pki(tmp_path)
    tls = ServerTLS(cert_file=pki.server_cert, key_file=pki.server_key)
    context = ssl.create_default_context(cafile=pki.ca_cert)
    refused: list[None] = []
    server = Http1Server(_ok, limits=Limits())
    wrap = tls_wrapper(tls, handshake_timeout=30.0, max_handshakes=5, refused=lambda: refused.append(None))
    _, port = await server.start("127.0.0.1", 0, wrap)
    held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def closed(reader: asyncio.StreamReader) -> bool:
        try:
            return await asyncio.wait_for(reader.read(), 0.3) == b""
        except TimeoutError:
            return False  # waiting for its handshake
        except ConnectionError:
            return True

    async def served() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="localhost")
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await reader.readuntil(b"\r\n")).startswith(b"HTTP/1.1 200")
        writer.close()

    try:
        for _ in range(12):
            held.append(await asyncio.open_connection("127.0.0.1", port))
        silent = held[:]
        assert await asyncio.gather(*(closed(reader) for reader, _ in silent)) == [True] * 7 + [False] * 5
        assert len(refused) == 7
        await served()  # at once: the oldest silent connection made room for it
        assert len(refused) == 8
        assert await closed(silent[7][0])

        # five connections that send the first bytes of a ClientHello and stall: each closes a silent one
        partial = []
        for _ in range(5):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"\x16\x03\x01")
            await asyncio.sleep(0.02)  # read by the server
            partial.append((reader, writer))
        held += partial
        assert len(refused) == 12
        assert await asyncio.gather(*(closed(reader) for reader, _ in silent[8:])) == [True] * 4
        # all five have sent something and are young: the new connection is the one closed
        held.append(await asyncio.open_connection("127.0.0.1", port))
        assert await closed(held[-1][0])
        assert len(refused) == 13
        await asyncio.sleep(EVICT_AFTER)
        await served()  # the oldest, past EVICT_AFTER, made room for it
        assert len(refused) == 14
        assert await asyncio.gather(*(closed(reader) for reader, _ in partial)) == [True] + [False] * 4
    finally:
        for _, writer in held:
            writer.close()
        await server.close(1.0)
