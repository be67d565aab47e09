"""sidecar.wire.http1 at the protocol level: raw loopback sockets, asserting what a client sees.

Framing, keep-alive and pipelining, chunked bodies, 100-continue, every malformed shape the
parser refuses (with its status, and the connection closed after it), request smuggling shapes,
limits, HTTP/1.0, timeouts, handler failures, graceful close, TLS through the acceptor, and
arbitrary splitting of the input (hypothesis, fed through the protocol's buffer interface).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import socket
import ssl
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.overload.memory import MMAP_THRESHOLD
from sidecar.overload.reasons import Action
from sidecar.tls.acceptor import tls_wrapper
from sidecar.tls.server import ServerTLS
from sidecar.wire import http1
from sidecar.wire.budget import ReceiveBudget
from sidecar.wire.http1 import Http1Server, Limits, Request, Response
from sidecar.wire.http1.buffers import _DISCARD, _HEAD_READ
from sidecar.wire.http1.connection import _LINGER
from tests.tls.pki import make_pki

#: short timeouts, so the timeout tests run fast
FAST = Limits(
    max_request_bytes=1 << 20,
    idle_timeout=0.4,
    header_timeout=0.4,
    body_timeout=0.4,
    linger_timeout=0.4,
)
WAIT = 5.0  # seconds a test waits for an answer before failing


# -- the server side ---------------------------------------------------------------------------


class Recorder:
    """The handler: answers with the body it got, and the request's facts in fields.

    ``/fail`` raises before suspending, ``/fail-later`` after; ``/slow`` sleeps first; ``/hold``
    waits for ``release``.
    """

    def __init__(self) -> None:
        self.requests: list[Request] = []
        #: each request's body as it reached the handler (a large one's is emptied afterwards)
        self.bodies: list[bytes] = []
        self.release = asyncio.Event()
        self.holding = asyncio.Event()

    async def __call__(self, request: Request) -> Response:
        self.requests.append(request)
        self.bodies.append(bytes(request.body))
        if request.path == "/fail":
            raise RuntimeError("the handler broke")
        if request.path == "/fail-later":
            await asyncio.sleep(0)
            raise RuntimeError("the handler broke later")
        if request.path == "/slow":
            await asyncio.sleep(float(request.headers.get("x-delay", "0.05")))
        if request.path == "/hold":
            self.holding.set()
            await self.release.wait()
        if request.path == "/big-answer":
            return Response(200, b"x" * (1 << 20))
        return Response(
            200,
            request.body,
            "application/octet-stream",
            {"X-Method": request.method, "X-Path": request.path, "X-Seq": str(len(self.requests))},
        )

    def paths(self) -> list[str]:
        return [r.path for r in self.requests]


def refuse_by_path(request: Request) -> Response | None:
    """A ``check``: /refused is refused from its head, like an unknown OTLP path."""
    if request.path == "/refused":
        return Response(404, b"no such endpoint\n")
    return None


@asynccontextmanager
async def serving(
    limits: Limits = FAST,
    *,
    tls: ServerTLS | None = None,
    check: Any = refuse_by_path,
    refuse: Any = None,
    budget: ReceiveBudget | None = None,
) -> AsyncIterator[tuple[Http1Server, int, Recorder]]:
    recorder = Recorder()
    server = Http1Server(recorder, check=check, refuse=refuse, limits=limits, budget=budget)
    _, port = await server.start("127.0.0.1", 0, None if tls is None else tls_wrapper(tls))
    try:
        yield server, port, recorder
    finally:
        recorder.release.set()
        await server.close(1.0)


# -- the client side ---------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    reason: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


class Client:
    """A raw HTTP/1.1 client on one connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int, ctx: ssl.SSLContext | None = None) -> Client:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=ctx, server_hostname="localhost" if ctx else None, limit=1 << 22
        )
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # small writes stay separate
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def send_in_pieces(self, data: bytes, size: int) -> None:
        """Write ``data`` ``size`` bytes at a time, letting the server read in between."""
        for at in range(0, len(data), size):
            self.writer.write(data[at:at + size])
            await self.writer.drain()
            await asyncio.sleep(0)

    async def answer(self, *, head: bool = False) -> Answer:
        """The next answer (a 1xx one too: it has no body)."""
        raw = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), WAIT)
        lines = raw[:-4].decode("latin-1").split("\r\n")
        version, status, reason = lines[0].split(" ", 2)
        assert version == "HTTP/1.1"
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            assert name.lower() not in headers, f"{name} twice"
            headers[name.lower()] = value.strip()
        answer = Answer(int(status), reason, headers)
        if answer.status >= 200 and not head:
            answer.body = await asyncio.wait_for(self.reader.readexactly(int(headers["content-length"])), WAIT)
        return answer

    async def closed(self, timeout: float = WAIT) -> bool:
        """True when the server closes the connection (EOF or reset) within ``timeout``."""
        try:
            rest = await asyncio.wait_for(self.reader.read(), timeout)
        except (ConnectionResetError, ssl.SSLError):
            return True
        except TimeoutError:
            return False
        assert rest == b"", rest
        return True

    async def close(self) -> None:
        self.writer.close()
        with suppress(ConnectionError, ssl.SSLError):
            await self.writer.wait_closed()


#: the start of a head, before more fields
PH = b"POST /echo HTTP/1.1\r\nHost: t\r\n"
#: the head of a chunked request
TE = PH + b"Transfer-Encoding: chunked\r\n\r\n"


def post(path: str = "/echo", body: bytes = b"", *extra: str, version: str = "HTTP/1.1") -> bytes:
    fields = "".join(f"{line}\r\n" for line in extra)
    head = f"POST {path} {version}\r\nHost: test\r\nContent-Length: {len(body)}\r\n{fields}\r\n"
    return head.encode() + body


def chunked(path: str, chunks: list[bytes], *, ext: str = "", trailers: tuple[str, ...] = ()) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
    body = b"".join(b"%x%s\r\n%s\r\n" % (len(c), ext.encode(), c) for c in chunks)
    tail = b"0\r\n" + "".join(f"{t}\r\n" for t in trailers).encode() + b"\r\n"
    return head + body + tail


async def exchange(port: int, raw: bytes, wait_close: float = 2.0) -> tuple[Answer, bool]:
    """Send ``raw`` on a new connection: the first answer, and whether the server closed after it
    (within ``wait_close`` seconds)."""
    client = await Client.connect(port)
    try:
        await client.send(raw)
        answer = await client.answer()
        return answer, await client.closed(timeout=wait_close)
    finally:
        await client.close()


# -- keep-alive, pipelining, bodies -----------------------------------------------------------


async def test_keep_alive_serves_several_requests_on_one_connection() -> None:
    async with serving() as (_, port, recorder):
        client = await Client.connect(port)
        for n in range(5):
            await client.send(post("/echo", b"body %d" % n))
            answer = await client.answer()
            assert (answer.status, answer.reason, answer.body) == (200, "OK", b"body %d" % n)
            assert answer.headers["content-type"] == "application/octet-stream"
            assert answer.headers["content-length"] == str(len(answer.body))
            assert answer.headers["date"].endswith(" GMT")
            assert "connection" not in answer.headers
            assert answer.headers["x-seq"] == str(n + 1)
        await client.close()
    assert len({id(r.transport) for r in recorder.requests}) == 1


async def test_pipelined_requests_are_answered_in_order() -> None:
    async with serving() as (_, port, recorder):
        client = await Client.connect(port)
        # the first is slow and the last fails: the answers still come in the order asked
        await client.send(
            post("/slow", b"one", "X-Delay: 0.1") + post("/echo", b"two") + chunked("/echo", [b"thr", b"ee"])
            + post("/fail", b"four") + post("/echo", b"five")
        )
        answers = [await client.answer() for _ in range(5)]
        assert [a.body for a in answers[:3]] == [b"one", b"two", b"three"]
        assert answers[3].status == 500
        assert answers[4].body == b"five"
        assert recorder.paths() == ["/slow", "/echo", "/echo", "/fail", "/echo"]
        await client.close()


async def test_pipelining_beyond_the_read_ahead_waits_and_loses_nothing() -> None:
    limits = Limits(read_ahead=16 * 1024, buffer_size=16 * 1024)
    async with serving(limits) as (_, port, recorder):
        client = await Client.connect(port)
        bodies = [bytes([65 + n]) * 50_000 for n in range(6)]
        await client.send(post("/hold") + b"".join(post("/echo", b) for b in bodies))
        await asyncio.wait_for(recorder.holding.wait(), WAIT)
        await asyncio.sleep(0.1)
        assert len(recorder.requests) == 1  # nothing is handled ahead of the held request
        recorder.release.set()
        assert (await client.answer()).status == 200
        for body in bodies:
            assert (await client.answer()).body == body
        await client.close()


async def test_a_client_that_does_not_read_its_answers_gets_them_all_later() -> None:
    async with serving(Limits(read_ahead=8 * 1024)) as (_, port, recorder):
        client = await Client.connect(port)
        await client.send(b"".join(post("/big-answer", b"%d" % n) for n in range(24)))
        await asyncio.sleep(0.3)
        assert len(recorder.requests) < 24  # the server stopped: its answers are not read
        for _ in range(24):
            answer = await client.answer()
            assert (answer.status, len(answer.body)) == (200, 1 << 20)
        assert len(recorder.requests) == 24
        await client.close()


@pytest.mark.parametrize("pieces", [1, 7, 4096], ids=["one write", "7-byte writes", "4 KiB writes"])
async def test_a_large_body_in_one_write_and_in_many(pieces: int) -> None:
    body = bytes(range(256)) * 2048  # 512 KiB
    async with serving() as (_, port, _recorder):
        client = await Client.connect(port)
        data = post("/echo", body) + post("/echo", b"after")
        if pieces == 1:
            await client.send(data)
        elif pieces == 7:
            await client.send_in_pieces(data[:3000], 7)  # the head and the start of the body
            await client.send_in_pieces(data[3000:], 65536)
        else:
            await client.send_in_pieces(data, pieces)
        assert (await client.answer()).body == body
        assert (await client.answer()).body == b"after"
        await client.close()


async def test_a_request_split_byte_by_byte() -> None:
    async with serving() as (_, port, recorder):
        client = await Client.connect(port)
        await client.send_in_pieces(post("/echo", b"abc", "X-Long: " + "v" * 300), 1)
        await client.send_in_pieces(chunked("/echo", [b"de", b"f"], ext=";a=b", trailers=("T: 1",)), 1)
        assert (await client.answer()).body == b"abc"
        assert (await client.answer()).body == b"def"
        assert recorder.requests[0].headers["x-long"] == "v" * 300
        await client.close()


async def test_chunked_bodies_with_extensions_and_trailers_in_small_writes() -> None:
    chunks = [b"a" * 1, b"b" * 4000, b"c" * 70_000, b"d" * 3]
    async with serving() as (_, port, recorder):
        client = await Client.connect(port)
        await client.send(chunked("/echo", chunks, ext=';name="quoted;value" ; other'))
        assert (await client.answer()).body == b"".join(chunks)
        await client.send_in_pieces(chunked("/echo", chunks, trailers=("Checksum: 1", "Other: x")), 5)
        assert (await client.answer()).body == b"".join(chunks)
        await client.send(chunked("/echo", []))  # no data at all
        assert (await client.answer()).body == b""
        await client.send(PH + b"Transfer-Encoding: Chunked\r\n\r\n00A\r\n0123456789\r\n0\r\n\r\n")
        assert (await client.answer()).body == b"0123456789"  # case-insensitive coding, hex with leading zeros
        await client.close()
    assert all(r.chunked and r.content_length is None for r in recorder.requests)
    assert "checksum" not in recorder.requests[1].headers  # trailers are discarded


async def test_headers_are_case_insensitive_and_repeated_fields_are_joined() -> None:
    async with serving() as (_, port, recorder):
        raw = b"POST /echo?a=1&b=%20 HTTP/1.1\r\nhOsT: t\r\nCONTENT-length: 2\r\nX-A: 1\r\nx-a:2\r\n"
        answer, _ = await exchange(port, raw + b"X-B: \t spaced \t\r\n\r\nok")
    assert answer.body == b"ok"
    request = recorder.requests[0]
    assert (request.path, request.target) == ("/echo", "/echo?a=1&b=%20")
    assert request.headers["x-a"] == "1, 2" and request.headers["x-b"] == "spaced"
    assert request.content_length == 2


async def test_empty_lines_before_a_request_and_the_absolute_form_and_head() -> None:
    async with serving() as (_, port, recorder):
        client = await Client.connect(port)
        await client.send(b"\r\n\r\n" + post("http://test:80/echo?q=1", b"abs"))
        assert (await client.answer()).headers["x-path"] == "/echo"
        await client.send(b"HEAD /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc")
        answer = await client.answer(head=True)  # Content-Length of the answer it would have sent; no body
        assert answer.status == 200 and answer.headers["content-length"] == "3"
        await client.send(post("/echo", b"next"))
        assert (await client.answer()).body == b"next"
        await client.close()
    assert [r.method for r in recorder.requests] == ["POST", "HEAD", "POST"]


async def test_connection_close_is_honoured() -> None:
    async with serving() as (_, port, _recorder):
        answer, closed = await exchange(port, post("/echo", b"x", "Connection: close") + post("/echo"))
    assert answer.status == 200 and answer.headers["connection"] == "close" and closed


async def test_eof_after_a_request_still_gets_the_answer() -> None:
    async with serving() as (_, port, _recorder):
        client = await Client.connect(port)
        await client.send(post("/slow", b"half-closed") + post("/echo", b"pipelined"))
        client.writer.write_eof()
        assert (await client.answer()).body == b"half-closed"
        assert (await client.answer()).body == b"pipelined"
        assert await client.closed()
        await client.close()


# -- HTTP/1.0 -----------------------------------------------------------------------------------


async def test_http10_closes_unless_keep_alive() -> None:
    async with serving() as (_, port, recorder):
        answer, closed = await exchange(port, post("/echo", b"old", version="HTTP/1.0"))
        assert answer.body == b"old" and answer.headers["connection"] == "close" and closed
        client = await Client.connect(port)
        for n in range(2):
            await client.send(post("/echo", b"%d" % n, "Connection: keep-alive", version="HTTP/1.0"))
            answer = await client.answer()
            assert answer.body == b"%d" % n and answer.headers["connection"] == "keep-alive"
        await client.send(b"GET /echo HTTP/1.0\r\n\r\n")  # no Host needed in HTTP/1.0
        assert (await client.answer()).status == 200
        assert await client.closed()
        await client.close()
    assert {r.version for r in recorder.requests} == {"HTTP/1.0"}


async def test_http10_ignores_expect() -> None:
    async with serving() as (_, port, _recorder):
        answer, _ = await exchange(port, post("/echo", b"x", "Expect: 100-continue", version="HTTP/1.0"))
    assert answer.status == 200


# -- 100-continue -------------------------------------------------------------------------------


async def test_expect_100_continue() -> None:
    async with serving() as (_, port, _recorder):
        client = await Client.connect(port)
        await client.send(PH + b"Content-Length: 5\r\nExpect: 100-Continue\r\n\r\n")
        interim = await client.answer()
        assert (interim.status, interim.reason, interim.headers) == (100, "Continue", {})
        await client.send(b"hello")
        assert (await client.answer()).body == b"hello"
        # the body sent at once with the head: no 100 needed
        await client.send(post("/echo", b"eager", "Expect: 100-continue"))
        assert (await client.answer()).status == 200
        # no body: nothing to continue
        await client.send(post("/echo", b"", "Expect: 100-continue"))
        assert (await client.answer()).status == 200
        await client.close()


@pytest.mark.parametrize(
    ("extra", "status"),
    [
        ("Content-Length: 2000000", 413),  # over max_request_bytes
        ("Content-Length: 99999999999999999999999999", 413),
        ("Content-Length: 5", 404),  # refused by the check (an unknown path)
    ],
)
async def test_expect_100_continue_refused_early_never_gets_continue(extra: str, status: int) -> None:
    path = "/refused" if status == 404 else "/echo"
    async with serving() as (_, port, recorder):
        client = await Client.connect(port)
        await client.send(f"POST {path} HTTP/1.1\r\nHost: t\r\n{extra}\r\nExpect: 100-continue\r\n\r\n".encode())
        answer = await client.answer()
        assert answer.status == status and answer.headers["connection"] == "close"
        assert await client.closed()
        await client.close()
    assert recorder.requests == []


async def test_other_expectations_get_417() -> None:
    async with serving() as (_, port, recorder):
        answer, closed = await exchange(port, post("/echo", b"x", "Expect: teapot"))
    assert (answer.status, closed, recorder.requests) == (417, True, [])


# -- refusals and limits ----------------------------------------------------------------------


async def test_a_body_over_the_limit_is_refused_from_content_length_and_the_answer_is_not_lost() -> None:
    limits = Limits(max_request_bytes=64 * 1024, linger_timeout=2.0)
    async with serving(limits) as (_, port, recorder):
        client = await Client.connect(port)
        await client.send(post("/echo", b"")[:-2].replace(b"Content-Length: 0", b"Content-Length: 3000000") + b"\r\n")
        answer = await client.answer()  # before any of the body was sent
        assert answer.status == 413 and answer.headers["connection"] == "close"
        assert b"3000000" in answer.body and b"65536" in answer.body
        # the client sends the body anyway: the server drains it rather than resetting the connection
        for _ in range(10):
            client.writer.write(b"\0" * 300_000)
        await client.closed()
        await client.close()
        # exactly at the limit is fine
        answer, closed = await exchange(port, post("/echo", b"\1" * (64 * 1024)), wait_close=0.2)
        assert (answer.status, closed) == (200, False)
    assert len(recorder.requests) == 1


async def test_a_chunked_body_over_the_limit_is_refused_once_it_passes() -> None:
    async with serving(Limits(max_request_bytes=10_000)) as (_, port, recorder):
        answer, closed = await exchange(port, chunked("/echo", [b"a" * 6000, b"b" * 6000]))
        assert (answer.status, closed) == (413, True)
        answer, closed = await exchange(port, chunked("/echo", [b"a" * 6000, b"b" * 4000]), wait_close=0.2)
        assert (answer.status, closed) == (200, False)
    assert len(recorder.requests) == 1


async def test_the_refusal_hook_formats_the_servers_late_refusals() -> None:
    seen: list[tuple[str, int, str]] = []

    def refuse(request: Request, status: int, message: str) -> Response:
        seen.append((request.path, status, message))
        return Response(status, b"formatted", "application/json")

    async with serving(Limits(max_request_bytes=1000), refuse=refuse) as (_, port, _recorder):
        answer, _ = await exchange(port, post("/echo", b"x" * 1001))
        assert (answer.status, answer.body, answer.headers["content-type"]) == (413, b"formatted", "application/json")
        answer, _ = await exchange(port, chunked("/echo", [b"x" * 1001]))
        assert (answer.status, answer.body) == (413, b"formatted")
        answer, _ = await exchange(port, post("/echo", b"", "Expect: nothing"))
        assert (answer.status, answer.body) == (417, b"formatted")
    assert seen == [
        ("/echo", 413, "body of 1001 bytes exceeds the limit of 1000 bytes"),
        ("/echo", 413, "body exceeds the limit of 1000 bytes"),
        ("/echo", 417, "unsupported expectation 'nothing'"),
    ]


async def test_a_refusal_from_the_check_without_a_body_keeps_the_connection() -> None:
    async with serving() as (_, port, recorder):
        client = await Client.connect(port)
        await client.send(b"GET /refused HTTP/1.1\r\nHost: t\r\n\r\n" + post("/echo", b"then"))
        answer = await client.answer()
        assert answer.status == 404 and "connection" not in answer.headers
        assert (await client.answer()).body == b"then"
        # with a body it was not read: answer, then close
        await client.send(post("/refused", b"unread") + post("/echo", b"never"))
        assert (await client.answer()).status == 404
        assert await client.closed()
        await client.close()
    assert recorder.paths() == ["/echo"]


MALFORMED = [
    # request line
    ("no version", b"GET /\r\n" + b"Host: t\r\n" + b"\r\n", 400),
    ("two spaces", b"GET  / HTTP/1.1\r\n\r\n", 400),
    ("trailing space", b"GET / HTTP/1.1 \r\n\r\n", 400),
    ("tab separator", b"GET\t/ HTTP/1.1\r\n\r\n", 400),
    ("method not a token", b"GE(T / HTTP/1.1\r\n\r\n", 400),
    ("lower-case version", b"GET / http/1.1\r\n\r\n", 400),
    ("HTTP/2.0", b"GET / HTTP/2.0\r\n\r\n", 505),
    ("HTTP/1.2", b"GET / HTTP/1.2\r\n\r\n", 505),
    ("HTTP/0.9 style", b"GET /\r\n\r\n", 400),
    ("version with junk", b"GET / HTTP/1.1x\r\n\r\n", 400),
    ("target not origin-form", b"GET echo HTTP/1.1\r\n\r\n", 400),
    ("fragment in target", b"GET /a#b HTTP/1.1\r\n\r\n", 400),
    ("non-ASCII target", "GET /é HTTP/1.1\r\n\r\n".encode(), 400),
    ("asterisk for GET", b"GET * HTTP/1.1\r\n\r\n", 400),
    ("request line too long", b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", 414),
    ("request line too long, unfinished", b"GET /" + b"a" * 40_000, 414),
    # header fields
    ("obs-fold", b"POST /echo HTTP/1.1\r\nHost: t\r\nX-A: 1\r\n  continued\r\n\r\n", 400),
    ("obs-fold with a colon", b"POST /echo HTTP/1.1\r\nHost: t\r\nX-A: 1\r\n\tX-B: 2\r\n\r\n", 400),
    ("space before colon", b"POST /echo HTTP/1.1\r\nHost : t\r\n\r\n", 400),
    ("tab before colon", b"POST /echo HTTP/1.1\r\nHost\t: t\r\n\r\n", 400),
    ("space in name", b"POST /echo HTTP/1.1\r\nHost: t\r\nX A: 1\r\n\r\n", 400),
    ("invalid name char", b"POST /echo HTTP/1.1\r\nHost: t\r\nX(A): 1\r\n\r\n", 400),
    ("empty name", b"POST /echo HTTP/1.1\r\nHost: t\r\n: 1\r\n\r\n", 400),
    ("no colon", b"POST /echo HTTP/1.1\r\nHost: t\r\nnocolon\r\n\r\n", 400),
    ("CR in value", b"POST /echo HTTP/1.1\r\nHost: t\r\nX-A: a\rb\r\n\r\n", 400),
    ("NUL in value", b"POST /echo HTTP/1.1\r\nHost: t\r\nX-A: a\0b\r\n\r\n", 400),
    ("control char in value", b"POST /echo HTTP/1.1\r\nHost: t\r\nX-A: a\x7fb\r\n\r\n", 400),
    ("bare LF in value", b"POST /echo HTTP/1.1\r\nHost: t\r\nX-A: a\nb\r\n\r\n", 400),
    ("bare LF line endings", b"POST /echo HTTP/1.1\nHost: t\n\n", 400),
    ("bare LF, unfinished", b"POST /echo HTTP/1.1\nHost: t\n", 400),
    ("bare LF ending the head", b"POST /echo HTTP/1.1\r\nHost: t\r\n\n\r\n\r\n", 400),
    ("header section too large", b"POST /echo HTTP/1.1\r\nHost: t\r\nX-A: " + b"a" * 40_000 + b"\r\n\r\n", 431),
    ("header section too large, unfinished", b"POST /echo HTTP/1.1\r\nHost: t\r\nX-A: " + b"a" * 40_000, 431),
    ("too many fields", b"POST /echo HTTP/1.1\r\nHost: t\r\n" + b"X-A: 1\r\n" * 100 + b"\r\n", 431),
    ("no Host", b"POST /echo HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 400),
    ("two Host fields", b"POST /echo HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", 400),
    # framing
    ("Content-Length not a number", PH + b"Content-Length: abc\r\n\r\n", 400),
    ("negative Content-Length", PH + b"Content-Length: -1\r\n\r\n", 400),
    ("signed Content-Length", PH + b"Content-Length: +1\r\n\r\nx", 400),
    ("hex Content-Length", PH + b"Content-Length: 0x1\r\n\r\nx", 400),
    ("underscored Content-Length", PH + b"Content-Length: 1_0\r\n\r\n", 400),
    ("superscript Content-Length", PH + "Content-Length: ²\r\n\r\n".encode("latin-1"), 400),
    ("Content-Length list", PH + b"Content-Length: 1, 1\r\n\r\nx", 400),
    ("empty Content-Length", PH + b"Content-Length:\r\n\r\n", 400),
    ("Transfer-Encoding gzip", PH + b"Transfer-Encoding: gzip\r\n\r\n", 501),
    ("Transfer-Encoding identity", PH + b"Transfer-Encoding: identity\r\n\r\n", 501),
    ("gzip, chunked", PH + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
    ("empty Transfer-Encoding", PH + b"Transfer-Encoding: \r\n\r\n", 400),
    ("Transfer-Encoding in HTTP/1.0", b"POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    # chunked bodies
    ("chunk size not hex", TE + b"zz\r\n", 400),
    ("chunk size 0x", TE + b"0x5\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk size empty", TE + b"\r\n", 400),
    ("chunk size negative", TE + b"-5\r\n", 400),
    ("chunk size with space", TE + b"5 \r\nhello\r\n", 400),
    ("chunk size huge", TE + b"f" * 20 + b"\r\n", 400),
    ("chunk ext with LF", TE + b"5;a\nb\r\nhello\r\n", 400),
    ("chunk size line too long", TE + b"5;" + b"e" * 5000, 400),
    ("no CRLF after chunk data", TE + b"5\r\nhelloXX0\r\n\r\n", 400),
    ("bare LF after chunk data", TE + b"5\r\nhello\n0\r\n\r\n", 400),
    ("invalid trailer", TE + b"0\r\nbad trailer\r\n\r\n", 400),
    ("trailer too large", TE + b"0\r\nT: " + b"a" * 40_000, 431),
    ("too many trailers", TE + b"0\r\n" + b"T: 1\r\n" * 101, 431),
    ("too many chunks", TE + b"1\r\nx\r\n" * 20_000, 400),
]


@pytest.mark.parametrize(("name", "raw", "status"), MALFORMED, ids=[m[0] for m in MALFORMED])
async def test_malformed_requests_get_their_status_and_the_connection_closes(name: str, raw: bytes, status: int):
    async with serving() as (_, port, recorder):
        answer, closed = await exchange(port, raw + post("/echo", b"smuggled?"))
    assert answer.status == status, answer
    assert answer.headers["connection"] == "close" and answer.headers["content-type"].startswith("text/plain")
    assert 0 < len(answer.body) < 100 and b"Traceback" not in answer.body
    assert closed
    assert recorder.requests == []


async def test_the_limits_are_inclusive() -> None:
    async with serving() as (_, port, _recorder):
        fields = "".join(f"X-{n}: 1\r\n" for n in range(99))  # with Host: exactly 100 fields
        answer, _ = await exchange(port, f"GET /echo HTTP/1.1\r\nHost: t\r\n{fields}\r\n".encode())
        assert answer.status == 200
        line = b"GET /" + b"a" * (8 * 1024 - 14) + b" HTTP/1.1"  # exactly max_request_line
        answer, _ = await exchange(port, line + b"\r\nHost: t\r\n\r\n")
        assert answer.status == 200


SMUGGLING = [
    ("CL and TE", b"Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    ("TE and CL", b"Transfer-Encoding: chunked\r\nContent-Length: 6\r\n\r\n0\r\n\r\n"),
    ("two different CL", b"Content-Length: 0\r\nContent-Length: 49\r\n\r\n"),
    ("chunked, identity", b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n"),
    ("chunked twice", b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    ("space before the TE colon", b"Transfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n"),
    ("TE folded", b"Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n"),
    ("TE with a CR", b"Transfer-Encoding: \rchunked\r\n\r\n0\r\n\r\n"),
    ("xchunked", b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"),
    ("CL with a trailing letter", b"Content-Length: 5a\r\n\r\n"),
]


@pytest.mark.parametrize(("name", "fields"), SMUGGLING, ids=[s[0] for s in SMUGGLING])
async def test_request_smuggling_shapes_are_refused(name: str, fields: bytes) -> None:
    hidden = b"GET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n"
    async with serving() as (_, port, recorder):
        answer, closed = await exchange(port, b"POST /echo HTTP/1.1\r\nHost: t\r\n" + fields + hidden)
    assert answer.status in (400, 501) and closed
    assert recorder.requests == []


async def test_identical_repeated_content_length_is_one() -> None:
    async with serving() as (_, port, _recorder):
        client = await Client.connect(port)
        await client.send(PH + b"Content-Length: 2\r\nContent-Length: 2\r\n\r\nok" + post("/echo", b"next"))
        assert (await client.answer()).body == b"ok"
        assert (await client.answer()).body == b"next"
        await client.close()


# -- handler failures ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/fail", "/fail-later"])
async def test_a_handler_exception_is_a_500_logged_once_and_the_server_keeps_serving(path: str, caplog) -> None:
    caplog.set_level(logging.ERROR, logger="sidecar.http")
    async with serving() as (_, port, _recorder):
        client = await Client.connect(port)
        await client.send(post(path, b"secret body bytes"))
        answer = await client.answer()
        assert (answer.status, answer.body) == (500, b"internal error\n")
        assert "connection" not in answer.headers
        await client.send(post("/echo", b"still here"))
        assert (await client.answer()).body == b"still here"
        await client.close()
    records = [r for r in caplog.records if r.name == "sidecar.http"]
    assert len(records) == 1 and records[0].exc_info is not None
    assert f"POST {path}" in records[0].getMessage()
    assert "secret body bytes" not in caplog.text


async def test_an_answer_that_cannot_be_sent_is_a_500() -> None:
    async def bad(request: Request) -> Response:
        return Response(200, b"", headers={"X-Injected": "a\r\nSet-Cookie: x"})

    server = Http1Server(bad, limits=FAST)
    _, port = await server.start("127.0.0.1", 0)
    try:
        answer, _ = await exchange(port, post("/x"))
    finally:
        await server.close(1.0)
    assert answer.status == 500 and "set-cookie" not in answer.headers


async def test_the_handler_runs_in_its_own_context_and_may_use_task_features() -> None:
    import contextvars

    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    seen: list[str] = []

    async def handler(request: Request) -> Response:
        async with asyncio.timeout(1):  # needs a current task, from the handler's first line
            seen.append(var.get())
            var.set(request.path)
            await asyncio.sleep(0)
        return Response(200)

    server = Http1Server(handler, limits=FAST)
    _, port = await server.start("127.0.0.1", 0)
    try:
        client = await Client.connect(port)
        for _ in range(3):
            await client.send(post("/a"))
            assert (await client.answer()).status == 200
        await client.close()
    finally:
        await server.close(1.0)
    assert seen == ["unset"] * 3


# -- timeouts ------------------------------------------------------------------------------------


async def test_an_idle_keep_alive_connection_is_closed() -> None:
    async with serving() as (server, port, _recorder):
        client = await Client.connect(port)
        await client.send(post("/echo", b"x"))
        assert (await client.answer()).status == 200
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await client.closed(timeout=3.0)
        assert 0.3 < loop.time() - started < 1.5
        await client.close()
        silent = await Client.connect(port)  # connected, never says anything
        assert await silent.closed(timeout=3.0)
        await silent.close()
        await asyncio.sleep(0.05)
        assert server.connections == 0


async def test_slowloris_headers_are_cut_off_even_while_bytes_trickle_in() -> None:
    async with serving() as (_, port, recorder):
        client = await Client.connect(port)
        loop = asyncio.get_running_loop()
        started = loop.time()
        eof = asyncio.ensure_future(client.reader.read())
        await client.send(b"POST /echo HTTP/1.1\r\nHost: t\r\n")
        for n in range(60):  # a field every 50 ms, for 3 s if nobody stops it
            if eof.done():
                break
            client.writer.write(b"X-%d: 1\r\n" % n)
            await asyncio.sleep(0.05)
        assert eof.done() and (eof.exception() is not None or eof.result() == b"")
        assert loop.time() - started < 1.5  # header_timeout (0.4 s), not idle_timeout
        await client.close()
    assert recorder.requests == []


async def test_a_stalled_body_is_cut_off() -> None:
    async with serving() as (_, port, recorder):
        client = await Client.connect(port)
        await client.send(PH + b"Content-Length: 100\r\n\r\nonly some")
        assert await client.closed(timeout=2.0)
        await client.close()
        client = await Client.connect(port)
        await client.send(TE + b"5\r\nab")
        assert await client.closed(timeout=2.0)
        await client.close()
    assert recorder.requests == []


async def test_a_body_arriving_slowly_but_steadily_is_not_cut_off() -> None:
    async with serving(dataclasses.replace(FAST, body_timeout=1.0)) as (_, port, _recorder):
        client = await Client.connect(port)
        await client.send(PH + b"Content-Length: 8\r\n\r\n")
        for byte in b"12345678":
            await asyncio.sleep(0.15)  # 1.2 s in all, each gap well below body_timeout (1 s)
            await client.send(bytes([byte]))
        assert (await client.answer()).body == b"12345678"
        await client.close()


async def test_large_bodies_borrow_pooled_buffers_so_connections_keep_only_a_small_one() -> None:
    async with serving() as (server, port, _recorder):
        clients = [await Client.connect(port) for _ in range(3)]
        before: set[int] = set()
        for round_ in range(3):
            for client in clients:
                await client.send(post("/echo", b"z" * 900_000))
            for client in clients:
                assert len((await client.answer()).body) == 900_000
            # between requests every connection is back to its own buffer (or none once idle a
            # tick); the large ones wait in the pool for the next large body instead of being
            # allocated again
            assert all(len(c._buf) in (0, FAST.buffer_size) for c in server._connections)
            assert len(server.buffers) >= 1
            pooled = {id(buf) for buf in server.buffers._free}
            if round_:
                assert pooled == before, "the same buffers are reused"
            before = pooled
        await clients[0].send(post("/echo", b"again"))  # and they still serve
        assert (await clients[0].answer()).body == b"again"
        for client in clients:
            await client.close()


async def test_a_large_body_reaches_the_handler_in_place_and_its_buffer_is_pooled_after_the_answer() -> None:
    """A body that outgrew the connection's buffer is not copied: the handler gets a view of the
    buffer it was received in, which is the connection's no more, and goes back to the pool only
    once the answer (here the body itself) is sent; a body held meanwhile stays intact."""
    seen: list[tuple[type, int | None]] = []

    async def handler(request: Request) -> Response:
        body = request.body
        seen.append((type(body), id(body.obj) if isinstance(body, memoryview) else None))
        if request.path == "/hold":
            await release.wait()
        return Response(200, body)  # the answer holds the body's view

    release = asyncio.Event()
    held_body, other_body = bytes(range(256)) * 1000, b"o" * 700_000
    server = Http1Server(handler, limits=FAST)
    _, port = await server.start("127.0.0.1", 0, None)
    try:
        holder, other = await Client.connect(port), await Client.connect(port)
        await holder.send(post("/hold", held_body))
        await until(lambda: len(seen) == 1)
        (holding,) = [c for c in server._connections if c._lent is not None]
        lent = holding._lent
        assert seen[0] == (memoryview, id(lent)) and holding._buf is not lent
        for _ in range(2):  # meanwhile other bodies come and go through the pool
            await other.send(post("/echo", other_body))
            assert (await other.answer()).body == other_body
        release.set()
        assert (await holder.answer()).body == held_body  # intact, and sent whole
        await until(lambda: holding._lent is None)
        assert any(buf is lent for buf in server.buffers._free)  # back in the pool
        await holder.send(post("/echo", b"small"))  # a small body fits the connection's own buffer
        assert (await holder.answer()).body == b"small" and seen[-1] == (bytes, None)
        for client in (holder, other):
            await client.close()
    finally:
        release.set()
        await server.close(1.0)


def test_the_buffer_pool_keeps_the_largest_and_hands_out_the_smallest_that_fits() -> None:
    pool = http1.BufferPool(max_buffers=2)
    for size in (100, 300, 200):
        pool.put(bytearray(size))
    assert sorted(len(b) for b in pool._free) == [200, 300]
    assert pool.take(400) is None
    assert len(pool.take(150) or b"") == 200
    assert len(pool.take(150) or b"") == 300
    assert pool.take(1) is None


# -- memory: buffers follow the bytes that arrive; the receive budget; deadlines -----------------


async def until(condition: Callable[[], bool], timeout: float = WAIT) -> None:
    """Wait until ``condition()`` holds (polling), or fail."""
    loop = asyncio.get_running_loop()
    stop = loop.time() + timeout
    while not condition():
        assert loop.time() < stop, "the condition never held"
        await asyncio.sleep(0.01)


def http1_bytes(snapshot: tracemalloc.Snapshot, base: tracemalloc.Snapshot) -> int:
    """Bytes allocated by the sidecar/wire/http1/ package between two snapshots, still held."""
    only = [tracemalloc.Filter(True, str(Path(http1.__file__).parent / "*"))]
    stats = snapshot.filter_traces(only).compare_to(base.filter_traces(only), "filename")
    return sum(stat.size_diff for stat in stats)


async def test_a_declared_size_allocates_nothing_until_the_bytes_arrive() -> None:
    """Content-Length 4 MiB (or a chunk of 4 MiB) and two bytes: before, the whole 4 MiB was
    allocated at once, so ~100 such connections trickling a byte now and then exhausted memory."""
    limits = Limits(max_request_bytes=16 << 20, body_timeout=5.0)
    async with serving(limits) as (server, port, _recorder):
        clients = [await Client.connect(port) for _ in range(20)]
        tracemalloc.start()
        try:
            base = tracemalloc.take_snapshot()
            for n, client in enumerate(clients):
                head = PH + b"Content-Length: %d\r\n\r\n" % (4 << 20) if n % 2 else TE + b"400000\r\n"
                await client.send(head + b"x")
            await until(lambda: all(c._state in (http1._BODY, http1._CHUNKED) for c in server._connections))
            for client in clients:  # the next byte: the buffer for the rest was allocated here
                await client.send(b"x")
            await asyncio.sleep(0.1)
            held = http1_bytes(tracemalloc.take_snapshot(), base)
        finally:
            tracemalloc.stop()
        assert held < 20 * 128 * 1024, f"{held} bytes for 20 bodies of two bytes each"  # was 80 MiB
        # the rest arrives: the body grows with it, and arrives whole
        await clients[1].send(b"y" * ((4 << 20) - 2))
        answer = await clients[1].answer()
        assert (answer.status, len(answer.body), answer.body[:3]) == (200, 4 << 20, b"xxy")
        await clients[0].send(b"z" * ((4 << 20) - 2) + b"\r\n0\r\n\r\n")
        assert len((await clients[0].answer()).body) == 4 << 20
        for client in clients:
            await client.close()


def test_a_large_body_moves_at_most_twice_and_repeated_bodies_reuse_one_pooled_buffer(monkeypatch) -> None:
    moves = 0
    shift = http1._Connection._shift

    def counted(self: http1._Connection, keep: int) -> None:
        nonlocal moves
        moves += self._end > keep  # bytes were copied (to the front, or into another buffer)
        shift(self, keep)

    monkeypatch.setattr(http1._Connection, "_shift", counted)
    body = bytes(range(256)) * 707  # 181 kB

    async def run() -> None:
        nonlocal moves
        recorder = Recorder()
        server = Http1Server(recorder, limits=Limits())
        protocol = http1._Connection(server)
        transport = _Transport()
        protocol.connection_made(transport)
        buffers: set[int] = set()
        for n in range(5):
            moves = 0
            data = post("/echo", body)
            while data:  # as asyncio reads a socket: into what get_buffer offers, 16 KiB at most
                buffer = protocol.get_buffer(-1)
                size = min(len(buffer), len(data), 16 * 1024)
                buffer[:size] = data[:size]
                protocol.buffer_updated(size)
                data = data[size:]
                buffers.add(id(protocol._buf))
            for _ in range(5):
                await asyncio.sleep(0)
            assert recorder.bodies[-1] == body
            assert moves <= (2 if n == 0 else 1), f"request {n}: {moves} moves"  # 1 and 1 here
            if n == 0:
                first = set(buffers)
        # the later requests took the first one's large buffer from the pool: nothing new
        assert buffers == first and len(server.buffers) == 1

    asyncio.run(run())


def test_a_large_body_already_in_the_socket_is_copied_in_buffers_at_most_a_head_read(monkeypatch) -> None:
    """On loopback a whole request waits in the socket: the read with the head takes what the
    connection offers. It offers a short read while a head is awaited, so only the start of the
    body read with it is copied into the body's (pooled) buffer, not a whole 64 KiB buffer of it."""
    copied: list[int] = []
    move = http1._Connection._move

    def counted(self: http1._Connection, new: bytearray, keep: int, live: int) -> None:
        copied.append(live)
        move(self, new, keep, live)

    monkeypatch.setattr(http1._Connection, "_move", counted)
    body = bytes(range(256)) * 707  # 181 kB: an SDK's batch of 512 spans

    async def run() -> None:
        recorder = Recorder()
        server = Http1Server(recorder, limits=Limits())
        protocol = http1._Connection(server)
        protocol.connection_made(_Transport())
        for n in range(3):
            copied.clear()
            data = post("/echo", body)
            while data:  # as asyncio reads a socket that holds it all: whatever get_buffer offers
                buffer = protocol.get_buffer(-1)
                size = min(len(buffer), len(data))
                buffer[:size] = data[:size]
                protocol.buffer_updated(size)
                data = data[size:]
            for _ in range(5):
                await asyncio.sleep(0)
            assert recorder.bodies[-1] == body
            if n:  # the first grows its buffer as the bytes arrive (memory follows them); the
                # later ones take it from the pool: only what came with the head is copied
                assert copied and max(copied) <= _HEAD_READ, copied

    asyncio.run(run())


async def test_the_receive_budget_refuses_what_does_not_fit_with_503_and_is_released() -> None:
    budget = ReceiveBudget(100_000)
    async with serving(budget=budget) as (_, port, recorder):
        holder = await Client.connect(port)
        await holder.send(post("/hold", b"h" * 60_000))
        await asyncio.wait_for(recorder.holding.wait(), WAIT)
        assert budget.in_use == 60_000  # the handler holds its body
        # a second body of that size does not fit: refused before 100 Continue
        client = await Client.connect(port)
        await client.send(PH + b"Content-Length: 60000\r\nExpect: 100-continue\r\n\r\n")
        answer = await client.answer()
        assert (answer.status, answer.headers["retry-after"], answer.headers["connection"]) == (503, "1", "close")
        assert await client.closed()
        await client.close()
        # one that fits is served meanwhile
        answer, _ = await exchange(port, post("/echo", b"s" * 30_000), wait_close=0.1)
        assert answer.status == 200
        recorder.release.set()
        assert (await holder.answer()).status == 200
        await until(lambda: budget.in_use == 0)
        await holder.close()
    assert budget.refusals == 1


async def test_connections_refused_for_the_budget_discard_input_without_a_buffer_of_their_own() -> None:
    """Each lingering connection kept its 64 KiB buffer to discard input into: 500 connections
    refused for want of budget held 31 MiB outside it (a real sidecar peaked at 136-140 MiB)."""
    budget = ReceiveBudget(200_000)
    limits = Limits(max_request_bytes=16 << 20, linger_timeout=5.0)
    async with serving(limits, budget=budget) as (server, port, _):
        clients = [await Client.connect(port) for _ in range(40)]
        for client in clients:  # 40 bodies of 150 kB: pushed until refused
            await client.send(PH + b"Content-Length: 150000\r\n\r\n" + b"x" * 60_000)
        answers = [await client.answer() for client in clients[5:]]  # at most 3 fit the budget
        assert {answer.status for answer in answers} == {503}
        for client in clients:  # more input, discarded by those refused
            with suppress(ConnectionError):
                await client.send(b"y" * 60_000)
        await until(lambda: sum(c._state == _LINGER for c in server._connections) >= 35)
        lingering = [c for c in server._connections if c._state == _LINGER]
        assert all(c._own is None and len(c._buf) == len(_DISCARD) for c in lingering)
        assert budget.in_use <= 200_000
        assert all(buf is not _DISCARD for buf in server.buffers._free)  # never pooled as a body's
        for client in clients:
            await client.close()
        await until(lambda: budget.in_use == 0 and server.own_bytes == 0)


async def test_a_large_body_grows_past_the_heaps_sizes_with_its_room_taken_from_the_budget() -> None:
    """Buffers below the mmap threshold stay resident in the heap once freed; a body that will
    outgrow them skips them (its room paid for), one that will not is sized to fit."""
    budget = ReceiveBudget(8 << 20)
    limits = dataclasses.replace(FAST, max_request_bytes=4 << 20, pool_bytes=0)
    async with serving(limits, budget=budget) as (server, port, _):
        large, small = await Client.connect(port), await Client.connect(port)
        await large.send(PH + b"Content-Length: 4000000\r\n\r\n" + b"x" * 70_000)
        await small.send(PH + b"Content-Length: 150000\r\n\r\n" + b"y" * 70_000)
        await until(lambda: sum(len(c._buf) > 100_000 for c in server._connections) == 2)  # both grew
        grown = {c._length: len(c._buf) for c in server._connections}
        assert grown[4_000_000] >= MMAP_THRESHOLD
        assert 150_000 <= grown[150_000] < MMAP_THRESHOLD  # sized to fit
        assert budget.in_use >= MMAP_THRESHOLD - 16 * 1024  # the large one's room, paid for
        await large.close()
        await small.close()
    await until(lambda: budget.in_use == 0)


async def test_the_connections_own_buffers_together_stay_within_their_bound() -> None:
    """Beyond ``own_buffer_bytes`` a connection's own buffer is small: it reads in smaller steps
    and is served the same."""
    limits = dataclasses.replace(FAST, buffer_size=64 * 1024, own_buffer_bytes=2 * 64 * 1024)
    async with serving(limits) as (server, port, _):
        counted: list[Action] = []
        server.count = counted.append
        clients = [await Client.connect(port) for _ in range(6)]
        for client in clients:  # a head each, its body to follow: each connection has a buffer now
            await client.send(PH + b"Content-Length: 40000\r\n\r\n")
        await until(lambda: sum(c._own is not None for c in server._connections) == 6)
        sizes = sorted(len(c._own) for c in server._connections if c._own is not None)
        assert sizes == [_HEAD_READ] * 4 + [64 * 1024] * 2 and server.own_bytes == 2 * 64 * 1024
        assert counted == [Action.small_buffer] * 4  # each counted (otlp_sidecar_overload_actions_total)
        for n, client in enumerate(clients):
            await client.send(bytes([65 + n]) * 40_000)
            answer = await client.answer()
            assert (answer.status, answer.body) == (200, bytes([65 + n]) * 40_000)
            await client.close()
        await until(lambda: server.own_bytes == 0 and not server._connections)


async def test_chunked_bodies_take_the_budget_as_they_arrive() -> None:
    budget = ReceiveBudget(10_000)
    async with serving(budget=budget) as (_, port, recorder):
        client = await Client.connect(port)
        await client.send(TE + b"1000\r\n" + b"a" * 4096 + b"\r\n")
        await until(lambda: budget.in_use == 4096 + 8)  # the bytes received: data and chunk framing
        await client.send(b"2000\r\n")  # 8 KiB more would not fit: refused before they arrive
        answer = await client.answer()
        assert (answer.status, answer.headers["retry-after"]) == (503, "1")
        assert await client.closed()
        assert budget.in_use == 0
        await client.close()
        # what fits (9,800 bytes and their framing) is served
        answer, _ = await exchange(port, chunked("/echo", [b"b" * 4900, b"c" * 4900]), wait_close=0.1)
        assert (answer.status, len(answer.body)) == (200, 9_800)
    await until(lambda: budget.in_use == 0)
    assert len(recorder.requests) == 1


ABANDONED = {
    "connection lost": (post("/echo", b"a" * 50_000)[:20_000], "close"),
    "stalled body": (post("/echo", b"a" * 50_000)[:20_000], "wait"),
    "client half-closes": (post("/echo", b"a" * 50_000)[:20_000], "eof"),
    "malformed chunk": (TE + b"1000\r\n" + b"a" * 4096 + b"XX", "answer"),
    "chunked over the limit": (TE + b"1000\r\n" + b"a" * 4096 + b"\r\n100000\r\n", "answer"),
    "chunk too long a line": (TE + b"1000\r\n" + b"a" * 4096 + b"\r\n1;" + b"e" * 5000, "answer"),
    "handler fails": (post("/fail", b"f" * 50_000), "answer"),
}


@pytest.mark.parametrize(("raw", "then"), ABANDONED.values(), ids=ABANDONED.keys())
async def test_the_budget_is_released_once_whatever_happens(raw: bytes, then: str) -> None:
    budget = ReceiveBudget(1 << 20)
    async with serving(Limits(max_request_bytes=100_000, body_timeout=0.3), budget=budget) as (_, port, _recorder):
        client = await Client.connect(port)
        await client.send(raw)
        if then == "answer":
            assert (await client.answer()).status in (400, 413, 500)
        else:
            await until(lambda: budget.in_use > 0)
            if then == "close":
                await client.close()
            else:
                if then == "eof":
                    client.writer.write_eof()
                assert await client.closed()  # the server gives up: timeout, or no more input
        await until(lambda: budget.in_use == 0)
        await client.close()
        answer, _ = await exchange(port, post("/echo", b"next"), wait_close=0.1)  # still serving
        assert answer.status == 200
    assert budget.in_use == 0


async def test_the_budget_of_a_request_in_flight_is_released_when_the_server_closes() -> None:
    budget = ReceiveBudget(1 << 20)
    recorder = Recorder()
    server = Http1Server(recorder, limits=FAST, budget=budget)
    _, port = await server.start("127.0.0.1", 0)
    client = await Client.connect(port)
    await client.send(post("/hold", b"held"))
    await asyncio.wait_for(recorder.holding.wait(), WAIT)
    assert budget.in_use == 4
    await server.close(grace=0.1)  # the handler is cancelled
    assert budget.in_use == 0
    await client.close()


async def test_a_trickled_body_is_cut_off_at_the_body_deadline() -> None:
    """A byte every 0.15 s never stalls for body_timeout (1 s), but the whole body has
    body_deadline (2 s); before, it held the connection (and its memory) as long as it trickled.
    The client is told: 408 and the connection closed."""
    async with serving(Limits(body_timeout=1.0, body_deadline=2.0)) as (_, port, recorder):
        client = await Client.connect(port)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await client.send(PH + b"Content-Length: 100\r\n\r\n")
        eof = asyncio.ensure_future(client.reader.read())
        for _ in range(40):  # 6 s if nobody stops it
            if eof.done():
                break
            client.writer.write(b"x")
            await asyncio.sleep(0.15)
        assert eof.done() and eof.exception() is None
        assert eof.result().startswith(b"HTTP/1.1 408 ")
        assert b"Connection: close" in eof.result() and b"not received within 2 s" in eof.result()
        assert 1.9 < loop.time() - started < 4.0
        await client.close()
    assert recorder.requests == []


async def test_pooled_buffers_are_dropped_when_unused() -> None:
    limits = Limits(max_request_bytes=1 << 20, pool_idle=0.3, idle_timeout=0.4)
    async with serving(limits) as (server, port, _recorder):
        client = await Client.connect(port)
        await client.send(post("/echo", b"p" * 900_000))
        assert len((await client.answer()).body) == 900_000
        assert len(server.buffers) >= 1 and 900_000 <= server.buffers.bytes <= limits.pool_bytes
        await until(lambda: len(server.buffers) == 0, timeout=2.0)
        assert server.buffers.bytes == 0
        await client.close()


def test_the_buffer_pool_is_capped_by_bytes_and_forgets_what_is_not_used() -> None:
    pool = http1.BufferPool(max_bytes=1000, max_idle=5.0)
    pool.put(bytearray(2000))  # larger than the cap: never kept
    assert (len(pool), pool.bytes) == (0, 0)
    for size in (400, 500, 300):
        pool.put(bytearray(size))
    assert sorted(len(b) for b in pool._free) == [400, 500] and pool.bytes == 900  # the smallest went
    pool.sweep(time.monotonic() + 4.0)
    assert len(pool) == 2
    assert len(pool.take(450) or b"") == 500 and pool.bytes == 400
    pool.sweep(time.monotonic() + 6.0)
    assert (len(pool), pool.bytes) == (0, 0)


async def test_chunk_framing_is_bounded_by_the_decoded_size() -> None:
    """6000 one-byte chunks (30 kB of framing for 6 kB of data) were accepted (the cap was
    max_request_bytes / 16); now framing may exceed a quarter of the data by 16 KiB only."""
    async with serving() as (_, port, _recorder):
        answer, closed = await exchange(port, chunked("/echo", [b"x"] * 6000))
        assert (answer.status, answer.body, closed) == (400, b"too many chunks\n", True)
        answer, _ = await exchange(port, chunked("/echo", [b"y" * 64] * 4000), wait_close=0.1)
        assert (answer.status, len(answer.body)) == (200, 256_000)  # 24 kB of framing for 256 kB
    async with serving(Limits(max_chunk_overhead=64 * 1024)) as (_, port, _recorder):
        answer, _ = await exchange(port, chunked("/echo", [b"x"] * 6000), wait_close=0.1)
        assert (answer.status, answer.body) == (200, b"x" * 6000)


@pytest.mark.parametrize("how", ["Connection: close", "shutdown"])
async def test_closing_with_pipelined_input_unread_lingers_so_the_answer_is_not_reset(how: str) -> None:
    """The server closes after this answer while the client still sends (a pipelined request
    it will not serve): closing at once made the kernel reset the connection."""
    async with serving() as (server, port, recorder):
        client = await Client.connect(port)
        first = post("/hold", b"first", *(["Connection: close"] if how == "Connection: close" else []))
        client.writer.write(first + post("/echo", b"n" * 3_000_000))  # not drained: the server pauses
        await asyncio.wait_for(recorder.holding.wait(), WAIT)
        if how == "shutdown":
            closing = asyncio.ensure_future(server.close(2.0))
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.1)
        recorder.release.set()
        await asyncio.sleep(0.2)  # the answer is sent and the server closes meanwhile
        answer = await client.answer()
        assert (answer.status, answer.body, answer.headers["connection"]) == (200, b"first", "close")
        assert await asyncio.wait_for(client.reader.read(), WAIT) == b""  # a clean close, no reset
        await client.close()
        if how == "shutdown":
            await closing
    assert recorder.paths() == ["/hold"]


async def test_idle_connections_hold_no_buffer() -> None:
    # idle and header timeouts long enough for 50 connects under tracemalloc on a slow machine;
    # the sweep still ticks every 0.1 s (a quarter of the shortest timeout)
    limits = dataclasses.replace(FAST, idle_timeout=30, header_timeout=30)
    async with serving(limits) as (server, port, _recorder):
        tracemalloc.start()
        try:
            base = tracemalloc.take_snapshot()
            clients = [await Client.connect(port) for _ in range(50)]
            await until(lambda: server.connections == 50)
            connected = http1_bytes(tracemalloc.take_snapshot(), base)
            for client in clients:
                await client.send(post("/echo", b"once"))
            for client in clients:
                assert (await client.answer()).body == b"once"
            # a tick of the sweep later, the buffers allocated for the requests are gone again
            await until(lambda: all(len(c._buf) == 0 for c in server._connections), timeout=2.0)
            idle = http1_bytes(tracemalloc.take_snapshot(), base)
        finally:
            tracemalloc.stop()
        assert connected < 50 * 4096 and idle < 50 * 4096, (connected, idle)  # was 64 KiB each
        # a busy connection keeps its buffer from request to request
        busy = clients[0]
        seen = set()
        for n in range(20):
            await busy.send(post("/echo", b"%d" % n))
            assert (await busy.answer()).body == b"%d" % n
            seen.update(id(c._buf) for c in server._connections if c._state == http1._IDLE and c._buf)
        assert len(seen) == 1
        for client in clients:
            await client.close()


# -- graceful close ------------------------------------------------------------------------------


async def test_close_lets_a_request_in_flight_finish_and_closes_idle_connections_at_once() -> None:
    recorder = Recorder()
    server = Http1Server(recorder, limits=Limits())
    _, port = await server.start("127.0.0.1", 0)
    busy = await Client.connect(port)
    idle = await Client.connect(port)
    await idle.send(post("/echo", b"done"))
    assert (await idle.answer()).status == 200
    await busy.send(post("/hold", b"in flight"))
    await asyncio.wait_for(recorder.holding.wait(), WAIT)
    closing = asyncio.create_task(server.close(grace=5.0))
    assert await idle.closed(timeout=1.0)  # idle: closed at once
    with pytest.raises(OSError):
        await Client.connect(port)  # no longer listening
    await asyncio.sleep(0.1)
    assert not closing.done()
    recorder.release.set()
    answer = await busy.answer()
    assert (answer.status, answer.body, answer.headers["connection"]) == (200, b"in flight", "close")
    assert await busy.closed()
    await asyncio.wait_for(closing, WAIT)
    await busy.close()
    await idle.close()


async def test_close_gives_up_on_a_stuck_request_after_the_grace() -> None:
    recorder = Recorder()
    server = Http1Server(recorder, limits=Limits())
    _, port = await server.start("127.0.0.1", 0)
    client = await Client.connect(port)
    await client.send(post("/hold"))
    await asyncio.wait_for(recorder.holding.wait(), WAIT)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await server.close(grace=0.3)
    assert 0.25 < loop.time() - started < 2.0
    assert await client.closed(timeout=1.0)
    assert server.connections == 0
    await client.close()


# -- TLS -------------------------------------------------------------------------------------------


async def test_tls_through_the_acceptor(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    tls = ServerTLS(cert_file=pki.server_cert, key_file=pki.server_key)
    ctx = ssl.create_default_context(cafile=pki.ca_cert)
    big = bytes(range(256)) * 4096  # 1 MiB
    async with serving(Limits(max_request_bytes=2 << 20), tls=tls) as (_, port, recorder):
        client = await Client.connect(port, ctx)
        # the first request usually arrives before the acceptor hands over (data_received), the
        # later ones through the buffered TLS path
        await client.send(post("/echo", b"first"))
        assert (await client.answer()).body == b"first"
        assert recorder.requests[0].transport.get_extra_info("peername")[0] == "127.0.0.1"
        await client.send(post("/echo", big) + chunked("/echo", [b"ab", b"cd"]))
        assert (await client.answer()).body == big
        assert (await client.answer()).body == b"abcd"
        await client.send_in_pieces(post("/echo", b"pieces"), 3)
        assert (await client.answer()).body == b"pieces"
        await client.close()
        answer, _ = await exchange_tls(port, ctx, post("/echo", b"x" * 3_000_000))
        assert answer.status == 413
    assert all(r.transport.get_extra_info("ssl_object") is not None for r in recorder.requests)


async def exchange_tls(port: int, ctx: ssl.SSLContext, raw: bytes) -> tuple[Answer, bool]:
    client = await Client.connect(port, ctx)
    try:
        client.writer.write(raw[:20_000])
        return await client.answer(), True
    finally:
        await client.close()


# -- any split of the input gives the same requests (hypothesis) ---------------------------------


class _Transport(asyncio.Transport):
    """What the protocol writes, for feeding it directly (no sockets)."""

    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.out += data

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


def _stream() -> tuple[bytes, list[bytes]]:
    """Requests of every framing, and their bodies."""
    bodies = [b"", b"a", b"bc" * 1000, b"def" * 30_000, b"g", b"hij" * 100, b"", b"k" * 5]
    raw = [
        post("/echo", bodies[0]),
        post("/echo", bodies[1]),
        chunked("/echo", [bodies[2][:1], bodies[2][1:999], bodies[2][999:]], ext=";x=1"),
        post("/echo", bodies[3], "X-Pad: " + "p" * 500),
        b"\r\n" + chunked("/echo", [bodies[4]], trailers=("T: 1", "U: 2")),
        post("/echo", bodies[5], "Expect: 100-continue"),
        b"GET /echo HTTP/1.1\r\nHost: t\r\n\r\n",
        post("/echo", bodies[7], version="HTTP/1.0"),
    ]
    return b"".join(raw), bodies


def _feed(data: bytes, cuts: list[int], via_data_received: bool) -> tuple[list[bytes], bool]:
    """Feed ``data`` cut at ``cuts`` to a connection; the bodies it handed over, and whether it closed."""

    async def run() -> tuple[list[bytes], bool]:
        recorder = Recorder()
        server = Http1Server(recorder, limits=Limits(buffer_size=4096))
        protocol = http1._Connection(server)
        transport = _Transport()
        protocol.connection_made(transport)
        edges = [0, *sorted(set(cuts)), len(data)]
        for start, stop in itertools.pairwise(edges):
            piece = data[start:stop]
            if via_data_received:
                protocol.data_received(piece)
                continue
            while piece:  # as asyncio does: fill what get_buffer returns
                buffer = protocol.get_buffer(-1)
                size = min(len(buffer), len(piece))
                buffer[:size] = piece[:size]
                protocol.buffer_updated(size)
                piece = piece[size:]
        for _ in range(100):  # each handler is a task: let them run, each answer lets the next in
            await asyncio.sleep(0)
        return recorder.bodies, transport.closed

    return asyncio.run(run())


_DATA, _BODIES = _stream()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cuts=st.lists(st.integers(min_value=1, max_value=len(_DATA) - 1), max_size=40),
    via_data_received=st.booleans(),
)
def test_any_split_of_a_request_stream_gives_the_same_requests(cuts: list[int], via_data_received: bool) -> None:
    bodies, closed = _feed(_DATA, cuts, via_data_received)
    assert bodies == _BODIES
    assert closed  # the HTTP/1.0 request at the end closes the connection


def test_a_stream_fed_byte_by_byte_gives_the_same_requests() -> None:
    head = _DATA[:200_000]
    bodies, _ = _feed(_DATA, list(range(1, len(head))), via_data_received=False)
    assert bodies == _BODIES


def _answers(out: bytes) -> list[int]:
    """The statuses of a stream of answers (checking each is well formed)."""
    statuses = []
    while out:
        head_end = out.index(b"\r\n\r\n")
        lines = out[:head_end].split(b"\r\n")
        version, status, _ = lines[0].split(b" ", 2)
        assert version == b"HTTP/1.1" and status.isdigit()
        fields = dict(line.split(b": ", 1) for line in lines[1:])
        body = 0 if status == b"100" else int(fields[b"Content-Length"])
        rest = out[head_end + 4:]
        if not rest or rest.startswith(b"HTTP/1.1 "):
            body = 0  # an answer to HEAD (the handler's bodies are empty, error texts never look so)
        statuses.append(int(status))
        out = out[head_end + 4 + body:]
    return statuses


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    edits=st.lists(st.tuples(st.integers(0, 3000), st.binary(min_size=0, max_size=3), st.integers(0, 3)), max_size=6),
    cuts=st.lists(st.integers(min_value=1, max_value=3000), max_size=10),
)
def test_mutated_input_never_breaks_the_connection(edits: list[tuple[int, bytes, int]], cuts: list[int]) -> None:
    """Bytes replaced, inserted or deleted anywhere in valid requests: no exception escapes the
    protocol, and what it writes is a sequence of well-formed answers."""
    data = bytearray(_DATA[:3000].replace(b"/echo", b"/e"))
    for at, new, remove in edits:
        data[at:at + remove] = new
    data = bytes(data)

    async def empty(request: Request) -> Response:
        return Response(200)

    async def run() -> bytes:
        protocol = http1._Connection(Http1Server(empty, limits=Limits(buffer_size=1024)))
        transport = _Transport()
        protocol.connection_made(transport)
        edges = [0, *sorted({c for c in cuts if c < len(data)}), len(data)]
        for start, stop in itertools.pairwise(edges):
            piece = data[start:stop]
            while piece and not transport.closed:
                buffer = protocol.get_buffer(-1)
                size = min(len(buffer), len(piece))
                buffer[:size] = piece[:size]
                protocol.buffer_updated(size)
                piece = piece[size:]
        protocol.eof_received()
        return bytes(transport.out)

    _answers(asyncio.run(run()))
