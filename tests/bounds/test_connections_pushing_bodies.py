"""Many connections pushing large OTLP/HTTP bodies at once, plaintext and with TLS on
(receivers_tls), against a real sidecar process.

A body's buffer grows ahead of the bytes (by up to twice what arrived), and the room it grows by
is now taken from the receive budget before it is allocated; a body refused for want of budget
gives its buffer back as the connection lingers. Before, neither: 100 plaintext connections
pushing 16 MB bodies (and 100 idle gRPC ones) peaked at 365 MiB. Then, at the listeners' caps
(500 and 500), 136-140 MiB: each lingering connection kept its own 64 KiB buffer to discard
input into (now one buffer serves them all), the own buffers had no bound together (now 8 MiB,
then 16 KiB ones), and a body's first grown buffer (~200 KiB) stayed resident in the heap once
freed (a body that will outgrow the heap's sizes now skips them): 105-111 MiB.

A TLS connection also holds buffers outside the budget (asyncio's read buffer and incoming queue,
OpenSSL's): each TLS listener keeps ``limits.tls_max_connections`` connections and as many
handshakes in progress. Before: 400 TLS connections pushing bodies peaked at 500 MiB, 1,000 idle
TLS connections at 199 MiB.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest

from tests.bounds.harness import CEILING, SMALL_TRACES, BoundedSidecar, http_post, read_response
from tests.tls.pki import make_pki

pytestmark = pytest.mark.timeout(180)

#: limits.tls_max_connections (default)
TLS_CAP = 16


async def _post_traces(port: int, context: ssl.SSLContext) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="localhost")
    try:
        writer.write(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(SMALL_TRACES) + SMALL_TRACES)
        status, _ = await asyncio.wait_for(read_response(reader), 10)
        return status
    finally:
        writer.close()


async def _push_a_large_body(writer: asyncio.StreamWriter) -> None:
    """Declare a 16 MB body and send up to 6.4 MB of it, as fast as the sidecar takes it."""
    writer.write(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
                 b"Content-Length: 16000000\r\n\r\n")
    try:
        for _ in range(100):
            writer.write(b"\0" * 65536)
            await asyncio.wait_for(writer.drain(), 2)
    except (OSError, ssl.SSLError, TimeoutError):
        pass  # refused (503, then closed), or held back by flow control


async def test_plaintext_connections_pushing_bodies_stay_under_the_ceiling() -> None:
    """500 connections (the HTTP listener's cap is 512) each declare a 16 MB body and push it
    while 500 more sit on the gRPC port; most are refused 503 for want of budget; then a normal
    client is served."""
    async with BoundedSidecar() as sidecar:
        held: list[asyncio.StreamWriter] = []

        async def push() -> None:
            _, writer = await asyncio.open_connection("127.0.0.1", sidecar.http)
            held.append(writer)
            await _push_a_large_body(writer)

        async def idle() -> None:
            _, writer = await asyncio.open_connection("127.0.0.1", sidecar.grpc)
            held.append(writer)

        await asyncio.gather(*(push() for _ in range(500)), *(idle() for _ in range(500)))
        await asyncio.sleep(1.0)
        for writer in held:
            writer.close()
        assert await sidecar.action("otlp_http", "budget_full") >= 400
        status, _ = await http_post(sidecar.http, "/v1/traces", SMALL_TRACES)
        assert status == 200
        sidecar.assert_peak_under(CEILING)


async def test_tls_connections_pushing_bodies_and_idle_ones_stay_under_the_ceiling(tmp_path: Path) -> None:
    """100 TLS connections each declare a 16 MB body and push it, while 100 more open idle TLS
    connections to the gRPC port; then a normal client is served."""
    pki = make_pki(tmp_path)
    async with BoundedSidecar(SIDECAR_RECEIVERS_TLS_CERT_FILE=pki.server_cert,
                              SIDECAR_RECEIVERS_TLS_KEY_FILE=pki.server_key) as sidecar:
        context = ssl.create_default_context(cafile=pki.ca_cert)
        h2 = ssl.create_default_context(cafile=pki.ca_cert)
        h2.set_alpn_protocols(["h2"])
        assert await _post_traces(sidecar.http, context) == 200
        held: list[asyncio.StreamWriter] = []
        peak_fds = 0

        async def push() -> None:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", sidecar.http, ssl=context,
                                                          server_hostname="localhost")
            except (OSError, ssl.SSLError):
                return  # closed over the cap
            held.append(writer)
            await _push_a_large_body(writer)

        async def idle() -> None:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", sidecar.grpc, ssl=h2,
                                                          server_hostname="localhost")
            except (OSError, ssl.SSLError):
                return
            held.append(writer)

        async def watch_fds() -> None:
            nonlocal peak_fds
            while True:
                peak_fds = max(peak_fds, sidecar.open_fds())
                await asyncio.sleep(0.05)

        watcher = asyncio.create_task(watch_fds())
        try:
            await asyncio.gather(*(push() for _ in range(100)), *(idle() for _ in range(100)))
            await asyncio.sleep(1.0)
            for writer in held:
                writer.close()
            await asyncio.sleep(0.5)
            assert await _post_traces(sidecar.http, context) == 200
        finally:
            watcher.cancel()
        assert await sidecar.action("otlp_http", "connection_limit") + await sidecar.action(
            "otlp_grpc", "connection_limit") >= 100
        # the caps' connections, their handshakes and a burst accepted at once
        assert peak_fds <= 4 * 2 * TLS_CAP + 40, peak_fds
        sidecar.assert_peak_under(CEILING)
