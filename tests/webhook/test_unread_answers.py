"""The webhook's largest answers over TLS to clients that read them late, slowly, or never.

The HTTP/1.1 server hands an answer to asyncio's TLS layer a slice at a time
(``sidecar.wire.http1.connection._TLS_SLICE``): given all of it, the TLS layer encrypted it at
once into a buffer that kept that size for the connection's life and passed it all to the TCP
transport below, where an answer nobody read waited without pausing the server. The process-level
attack is tests/bounds/test_webhook_unread_answers.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from sidecar.tls.acceptor import tls_wrapper
from sidecar.webhook.config import WebhookConfig
from sidecar.webhook.inject import Scope
from sidecar.webhook.metrics import WebhookMetrics
from sidecar.webhook.review import review
from sidecar.webhook.server import HEADER_TIMEOUT, WebhookServer, serving_tls
from sidecar.wire.http1 import _Connection
from sidecar.wire.http1.connection import _TLS_SLICE
from tests.tls.pki import make_pki
from tests.webhook.conftest import largest_review

pytestmark = pytest.mark.timeout(60)


@contextlib.asynccontextmanager
async def serving(
    tmp_path: Path, body_timeout: float | None = None,
) -> AsyncIterator[tuple[WebhookServer, int, ssl.SSLContext]]:
    """The webhook's server over TLS as ``running`` starts it, with its write-pause timeout
    (``body_timeout``) shortened if given; (server, port, a client's TLS context)."""
    pki = make_pki(tmp_path)
    defaults = WebhookConfig()
    config = dataclasses.replace(defaults, server=dataclasses.replace(
        defaults.server, listen="127.0.0.1:0", cert_file=pki.server_cert, key_file=pki.server_key))
    metrics = WebhookMetrics()
    webhook = WebhookServer(config, metrics)
    if body_timeout is not None:
        webhook.server.limits = dataclasses.replace(webhook.limits, body_timeout=body_timeout)
        webhook.server.tick = 0.05
    wrap = tls_wrapper(serving_tls(config.server, metrics), handshake_timeout=HEADER_TIMEOUT,
                       max_handshakes=config.server.max_connections)
    _, port = await webhook.server.start("127.0.0.1", 0, wrap)
    try:
        yield webhook, port, ssl.create_default_context(cafile=pki.ca_cert)
    finally:
        await webhook.server.close(1.0)


async def connect(port: int, context: ssl.SSLContext) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TLS client whose socket takes in next to nothing it does not read."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return await asyncio.open_connection(sock=sock, ssl=context, server_hostname="localhost", limit=4096)


def post(body: bytes) -> bytes:
    return (f"POST /mutate HTTP/1.1\r\nHost: w\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


async def answer(reader: asyncio.StreamReader, chunk: int = 0, pause: float = 0.0) -> tuple[int, bytes]:
    """Read one answer; with ``chunk``, its body that many bytes at a time, ``pause`` s apart."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    body = b""
    while len(body) < length:
        body += await asyncio.wait_for(reader.readexactly(min(chunk or length, length - len(body))), 10)
        await asyncio.sleep(pause)
    return int(head.split(b" ", 2)[1]), body


async def until(condition: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


def backed_up(webhook: WebhookServer) -> _Connection | None:
    """The connection whose answer waits for its client, if any."""
    for connection in webhook.server._connections:
        if connection.write_paused_at and connection._unsent is not None:
            return connection
    return None


async def test_pipelined_largest_answers_read_late_arrive_whole(tmp_path: Path) -> None:
    body = largest_review()
    expected = review(body, Scope.POD, WebhookConfig())[1]
    async with serving(tmp_path) as (webhook, port, context):
        reader, writer = await connect(port, context)
        writer.write(post(body) * 3)
        await until(lambda: backed_up(webhook) is not None)
        connection = backed_up(webhook)
        assert connection is not None and connection._transport is not None
        # the TLS layer holds a slice past its mark, not the answer (1.4 MB)
        assert connection._transport.get_write_buffer_size() <= 2 * _TLS_SLICE
        tcp = getattr(getattr(connection._transport, "_ssl_protocol", None), "_transport", None)  # asyncio's
        if tcp is not None:
            assert tcp.get_write_buffer_size() <= 3 * _TLS_SLICE
        assert len(webhook.server._connections) == 1
        await asyncio.sleep(0.3)
        for _ in range(3):
            status, answered = await answer(reader)
            assert status == 200 and json.loads(answered) == expected
        writer.write(post(body))  # the connection goes on
        status, answered = await answer(reader)
        assert status == 200 and json.loads(answered) == expected
        writer.close()


async def test_a_slow_reader_that_keeps_reading_is_not_cut(tmp_path: Path) -> None:
    body = largest_review()
    expected = review(body, Scope.POD, WebhookConfig())[1]
    async with serving(tmp_path, body_timeout=1.0) as (webhook, port, context):
        reader, writer = await connect(port, context)
        writer.write(post(body) * 3)
        await until(lambda: backed_up(webhook) is not None)
        for _ in range(3):  # 4.2 MB in about 3 s, more than the write-pause timeout, never stalled
            status, answered = await answer(reader, chunk=64 * 1024, pause=0.05)
            assert status == 200 and json.loads(answered) == expected
        writer.close()
    assert webhook.metrics.registry.get_sample_value(
        "otlp_sidecar_webhook_overload_actions_total", {"action": "idle_timeout"}) == 0


async def test_a_client_that_never_reads_is_cut_at_the_write_pause_timeout(tmp_path: Path) -> None:
    body = largest_review()
    async with serving(tmp_path, body_timeout=0.5) as (webhook, port, context):
        _, writer = await connect(port, context)
        writer.write(post(body) * 3)
        await until(lambda: backed_up(webhook) is not None)
        await until(lambda: not webhook.server._connections, timeout=3.0)
        # counted as the plaintext path counts it: the connection waited for its next request
        assert webhook.metrics.registry.get_sample_value(
            "otlp_sidecar_webhook_overload_actions_total", {"action": "idle_timeout"}) == 1
        writer.close()
