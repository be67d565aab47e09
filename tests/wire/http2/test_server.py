"""The HTTP/2 gRPC server (sidecar.wire.http2) at the protocol level, on loopback.

Well-formed traffic comes from real clients (grpcio, the exporter's own client, and the ``h2`` library driven by
hand where a test needs control of frames, windows or header compression); malformed traffic
is written frame by frame. Each test asserts what a client sees: answers, status codes, GOAWAY
and RST_STREAM codes, a connection that stays usable or is closed.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sidecar.export.grpc_client import CallError, Channel, call_framed, call_unary, frame_message
from sidecar.overload.budget import MemoryBudget as ReceiveBudget
from sidecar.overload.reasons import Action
from sidecar.wire.http2 import GrpcError, GrpcServer, Limits, UnaryCall
from sidecar.wire.http2.calls import grpc_message_text
from sidecar.wire.http2.connection import Connection
from sidecar.wire.http2.frames import PREFACE, HeaderCache
from tests.wire.http2.raw import (
    CONTINUATION,
    DATA,
    GOAWAY,
    HEAD,
    HEADERS,
    PATH,
    PING,
    PRIORITY,
    PUSH_PROMISE,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    Raw,
    fields_held,
    frame,
    request_headers,
)


class Echo:
    """Handlers that record calls; ``gate`` holds calls until a test opens it."""

    def __init__(self) -> None:
        self.calls: list[UnaryCall] = []
        self.gate: asyncio.Event | None = None
        self.refusals: list[tuple[str, str]] = []
        self.actions: list[Action] = []  # the protective actions the server counted

    async def call(self, call: UnaryCall) -> bytes:
        self.calls.append(call)
        if self.gate is not None:
            await self.gate.wait()
        message = bytes(call.message)  # a view of its own buffer when it spanned frames
        if message.startswith(b"fail:"):
            raise GrpcError(int(message[5:7]), "refused: caf\u00e9 100%")
        if message == b"crash":
            raise RuntimeError("a bug in the handler")
        if message.startswith(b"big:"):
            return b"r" * int(message[4:])
        return b"echo:" + message


@asynccontextmanager
async def serving(limits: Limits | None = None) -> AsyncIterator[tuple[GrpcServer, Echo, int]]:
    echo = Echo()
    server = GrpcServer(
        {PATH: echo.call}, limits, on_refusal=lambda path, why: echo.refusals.append((path, why)),
        count=echo.actions.append,
    )
    _, port = await server.start("127.0.0.1", 0)
    try:
        yield server, echo, port
    finally:
        await server.close(1.0)


# -- real clients --------------------------------------------------------------------------


def _grpcio_call(port: int, message: bytes, compression: grpc.Compression | None = None) -> tuple[Any, bytes]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        method = channel.unary_unary(PATH, request_serializer=None, response_deserializer=None)
        try:
            return grpc.StatusCode.OK, method(message, timeout=10, compression=compression)
        except grpc.RpcError as exc:
            return exc.code(), exc.details().encode()


async def test_grpcio_calls_one_large_message_and_errors() -> None:
    async with serving() as (_, _echo, port):
        big = bytes(range(256)) * 8192  # 2 MiB: many frames and window updates
        code, reply = await asyncio.to_thread(_grpcio_call, port, big)
        assert code is grpc.StatusCode.OK and reply == b"echo:" + big
        code, details = await asyncio.to_thread(_grpcio_call, port, b"fail:09")
        assert code is grpc.StatusCode.FAILED_PRECONDITION
        assert details.decode() == "refused: caf\u00e9 100%"
        code, details = await asyncio.to_thread(_grpcio_call, port, b"crash")
        assert code is grpc.StatusCode.INTERNAL and details == b"internal error"
        code, reply = await asyncio.to_thread(_grpcio_call, port, b"after the crash")
        assert code is grpc.StatusCode.OK and reply == b"echo:after the crash"


async def test_grpcio_gzip_message_is_flagged_compressed() -> None:
    async with serving() as (_, echo, port):
        code, _ = await asyncio.to_thread(_grpcio_call, port, b"x" * 1000, grpc.Compression.Gzip)
        assert code is grpc.StatusCode.OK
        assert echo.calls[-1].compressed and echo.calls[-1].headers["grpc-encoding"] == "gzip"


async def test_exporter_client_many_concurrent_calls_on_one_connection() -> None:
    async with serving() as (_, echo, port):
        channel = Channel("127.0.0.1", port)
        try:
            replies = await asyncio.gather(
                *(call_unary(channel, PATH, f"m{i}".encode() * 1000, timeout=10) for i in range(50))
            )
            assert replies == [b"echo:" + f"m{i}".encode() * 1000 for i in range(50)]
            with pytest.raises(CallError) as info:
                await call_unary(channel, "/no.Such/Method", b"", timeout=5)
            assert info.value.status.name == "UNIMPLEMENTED"
        finally:
            channel.close()
        assert ("/no.Such/Method", "unimplemented") in echo.refusals


async def test_oversized_message_is_refused_from_its_prefix_and_the_connection_goes_on() -> None:
    async with serving(Limits(max_message_bytes=1000)) as (_, echo, port):
        channel = Channel("127.0.0.1", port)
        try:
            with pytest.raises(CallError) as info:
                await call_unary(channel, PATH, b"x" * 5000, timeout=5)
            assert info.value.status.name == "RESOURCE_EXHAUSTED"
            assert "5000 bytes exceeds the limit of 1000" in info.value.message
            assert await call_unary(channel, PATH, b"ok", timeout=5) == b"echo:ok"
        finally:
            channel.close()
        assert echo.refusals == [(PATH, "too_large")]
        assert [c.message for c in echo.calls] == [b"ok"]


async def test_framing_errors_of_the_grpc_message() -> None:
    async with serving() as (_, echo, port):
        channel = Channel("127.0.0.1", port)
        try:
            cases = [
                (b"", "no complete gRPC message"),
                (b"\x00\x00\x00", "no complete gRPC message"),
                (frame_message(b"abcdef", compressed=False)[:-2], "truncated: 4 of 6 bytes"),
                (frame_message(b"a", compressed=False) * 2, "one message"),
            ]
            for body, text in cases:
                with pytest.raises(CallError) as info:
                    await call_framed(channel, PATH, body, encoding="identity", timeout=5)
                assert info.value.status.name == "INVALID_ARGUMENT", body
                assert text in info.value.message
        finally:
            channel.close()
        assert echo.calls == []


# -- frames written by hand ------------------------------------------------------------------


async def test_settings_ping_and_a_call_split_into_padded_frames_and_continuations() -> None:
    async with serving() as (_, echo, port), Raw.open(port) as client:
        _kind, _, _, payload = await client.until(SETTINGS)
        advertised = dict(struct.unpack(">HL", payload[i : i + 6]) for i in range(0, len(payload), 6))
        assert advertised[5] == 1 << 20 and advertised[3] == 100  # MAX_FRAME_SIZE, MAX_CONCURRENT_STREAMS
        client.send(frame(PING, 0, 0, b"12345678"))
        assert (await client.until(PING))[1:] == (0x1, 0, b"12345678")
        block = client.encoder.encode(request_headers())
        # HEADERS padded with a priority, then two CONTINUATIONs; DATA padded, in three frames
        client.send(frame(HEADERS, 0x8 | 0x20, 1, b"\x03" + b"\x00\x00\x00\x00\x10" + block[:5] + b"\0\0\0"))
        client.send(frame(CONTINUATION, 0, 1, block[5:9]) + frame(CONTINUATION, 0x4, 1, block[9:]))
        body = frame_message(b"hello world", compressed=False)
        client.send(frame(DATA, 0x8, 1, b"\x02" + body[:4] + b"\0\0"))
        client.send(frame(DATA, 0, 1, body[4:9]) + frame(DATA, 0x1, 1, body[9:]))
        fields, message = await client.answer(1)
        assert fields[":status"] == "200" and fields["grpc-status"] == "0"
        assert message == b"echo:hello world"
        assert echo.calls[0].headers["te"] == "trailers"


async def test_http_errors_before_any_grpc() -> None:
    async with serving() as (_, _echo, port), Raw.open(port) as client:
        client.headers(1, [(":method", "GET"), (":scheme", "http"), (":path", PATH)], flags=0x5)
        assert (await client.answer(1))[0][":status"] == "405"
        headers = [h if h[0] != "content-type" else ("content-type", "application/json") for h in request_headers()]
        client.headers(3, headers)
        fields, _ = await client.answer(3)
        assert fields[":status"] == "415"
        # the client was still sending: it is asked to stop with RST_STREAM(NO_ERROR)
        assert (await client.until(RST_STREAM, 3))[3] == b"\0\0\0\0"
        client.call(5, b"still fine")
        assert (await client.answer(5))[1] == b"echo:still fine"


@pytest.mark.parametrize(
    ("headers", "why"),
    [
        ([(":method", "POST"), (":path", PATH)], "no :scheme"),
        ([*request_headers(), (":authority", "again")], "pseudo-header after fields"),
        ([*request_headers(), ("X-Upper", "1")], "upper-case name"),
        ([*request_headers(), ("connection", "keep-alive")], "connection-specific field"),
        ([*request_headers()[:-1], ("te", "gzip")], "te other than trailers"),
        ([*request_headers(), ("x-bad", "a\r\nb")], "CR LF in a value"),
    ],
)
async def test_malformed_request_headers_reset_the_stream_only(headers, why) -> None:
    async with serving() as (_, echo, port), Raw.open(port) as client:
        client.headers(1, headers)
        _, _, _, payload = await client.until(RST_STREAM, 1)
        assert payload == b"\0\0\0\x01", why  # PROTOCOL_ERROR
        client.call(3, b"next")
        assert (await client.answer(3))[1] == b"echo:next"
        assert echo.calls[0].message == b"next"


@pytest.mark.parametrize(
    ("data", "code", "why"),
    [
        (b"GET / HTTP/1.1\r\n\r\n" + b"x" * 30, 1, "HTTP/1.1 on the gRPC port"),
        (PREFACE + frame(PING, 0, 0, b"12345678"), 1, "first frame not SETTINGS"),
        (PREFACE + frame(SETTINGS, 0, 0) + frame(DATA, 0, 0, b"x"), 1, "DATA on stream 0"),
        (PREFACE + frame(SETTINGS, 0, 0) + frame(DATA, 0, 7, b"x"), 1, "DATA on an idle stream"),
        (PREFACE + frame(SETTINGS, 0, 0) + frame(HEADERS, 0x4, 2, b"\x83"), 1, "even stream id"),
        (PREFACE + frame(SETTINGS, 0, 0) + frame(HEADERS, 0x4, 1, b"\xff\xff\xff\x7f"), 9, "HPACK garbage"),
        (PREFACE + frame(SETTINGS, 0, 0) + frame(HEADERS, 0, 1, b"\x83") + frame(PING, 0, 0, b"8" * 8), 1,
         "header block interrupted"),
        (PREFACE + frame(SETTINGS, 0, 0) + frame(CONTINUATION, 0x4, 1, b"\x83"), 1, "stray CONTINUATION"),
        (PREFACE + frame(SETTINGS, 0, 0) + frame(HEADERS, 0, 1, b"\x83") + frame(CONTINUATION, 0, 1) * 40, 11,
         "a flood of empty CONTINUATION frames"),
        (PREFACE + frame(SETTINGS, 0, 0, b"\x00\x05\x00\x00\x00\x01"), 1, "MAX_FRAME_SIZE too small"),
        (PREFACE + frame(SETTINGS, 0, 0, b"\x00\x04\x80\x00\x00\x00"), 3, "window over 2^31-1"),
        (PREFACE + frame(SETTINGS, 0, 0, b"\x00"), 6, "SETTINGS not a multiple of 6"),
        (PREFACE + frame(SETTINGS, 0, 0) + frame(PING, 0, 0, b"1234"), 6, "short PING"),
        (PREFACE + frame(SETTINGS, 0, 0) + frame(WINDOW_UPDATE, 0, 0, b"\0\0\0\0"), 1, "window update of 0"),
        (PREFACE + frame(SETTINGS, 0, 0) + frame(WINDOW_UPDATE, 0, 0, b"\x7f\xff\xff\xff"), 3,
         "connection window overflow"),
        (PREFACE + frame(SETTINGS, 0, 0) + frame(PUSH_PROMISE, 0x4, 1, b"\0\0\0\x02\x83"), 1, "client push"),
        (PREFACE + frame(SETTINGS, 0, 0) + frame(RST_STREAM, 0, 0, b"\0\0\0\0"), 1, "RST_STREAM on stream 0"),
    ],
)
async def test_connection_errors_end_with_goaway(data, code, why) -> None:
    async with serving() as (_, _, port), Raw.open(port, handshake=False) as client:
        client.send(data)
        got, _ = await client.goaway()
        assert got == code, why


async def test_frame_over_the_advertised_size_and_header_flood() -> None:
    limits = Limits(max_frame_size=16384, max_header_list_bytes=4096)
    async with serving(limits) as (_, _, port):
        async with Raw.open(port) as client:
            client.send(HEAD.pack(0, 16385, DATA, 0, 1))
            assert (await client.goaway())[0] == 6  # FRAME_SIZE_ERROR, before the body arrives
        async with Raw.open(port) as client:
            client.send(frame(HEADERS, 0, 1, client.encoder.encode(request_headers())))
            for _ in range(5):
                client.send(frame(CONTINUATION, 0, 1, b"\x00" * 1000))
            assert (await client.goaway())[0] == 11  # ENHANCE_YOUR_CALM


async def test_flow_control_a_large_answer_waits_for_the_client_window() -> None:
    async with serving() as (_, _, port), Raw.open(port, handshake=False) as client:
        # the client allows 1000 bytes per stream at first, in frames of at most 16 KiB
        client.send(PREFACE + frame(SETTINGS, 0, 0, struct.pack(">HL", 4, 1000)))
        client.call(1, b"big:40000")
        got = b""
        while len(got) < 1000:
            kind, _, _, payload = await client.until_any(1)
            if kind == DATA:
                got += payload
        assert len(got) == 1000  # no more than the window
        with pytest.raises(TimeoutError):  # and nothing more until the client gives window
            await client.until_any(1, timeout=0.3)
        client.send(frame(WINDOW_UPDATE, 0, 1, struct.pack(">L", 50000)))
        fields: dict[str, str] = {}
        while True:
            kind, flags, _, payload = await client.until_any(1)
            if kind == DATA:
                assert len(payload) <= 16384
                got += payload
            elif kind == HEADERS:
                fields.update(client.decoder.decode(payload))
                if flags & 0x1:
                    break
        assert got[5:] == b"r" * 40000 and fields["grpc-status"] == "0"


async def test_window_updates_let_a_client_send_more_than_the_windows() -> None:
    limits = Limits(window=100_000)
    async with serving(limits) as (_, _echo, port), Raw.open(port) as client:
        client.headers(1, request_headers())
        body = frame_message(b"z" * 300_000, compressed=False)
        sent = 0
        credit = {0: 100_000, 1: 100_000}
        while sent < len(body):
            while min(credit.values()) < 16384 and sent < len(body):
                _kind, _, sid, payload = await client.until(WINDOW_UPDATE)
                credit[sid] = credit.get(sid, 0) + struct.unpack(">L", payload)[0]
            chunk = body[sent : sent + 16384]
            sent += len(chunk)
            credit[0] -= len(chunk)
            credit[1] -= len(chunk)
            client.send(frame(DATA, 0x1 if sent == len(body) else 0, 1, chunk))
        assert (await client.answer(1))[1] == b"echo:" + b"z" * 300_000


async def test_data_beyond_the_window_is_a_flow_control_error() -> None:
    async with serving(Limits(window=65535)) as (_, _, port), Raw.open(port) as client:
        client.headers(1, request_headers())
        client.send(frame(DATA, 0, 1, b"\0" * 65535))  # the whole window: allowed
        client.send(frame(DATA, 0, 1, b"\0" * 70000))  # more than any window granted by now
        assert (await client.goaway())[0] == 3


async def test_concurrent_stream_limit_and_resets_keep_their_slot_until_the_handler_is_done() -> None:
    async with serving(Limits(max_concurrent_streams=2)) as (_, echo, port), Raw.open(port) as client:
        echo.gate = asyncio.Event()
        client.call(1, b"a")
        client.call(3, b"b")
        while len(echo.calls) < 2:
            await asyncio.sleep(0.01)
        client.send(frame(RST_STREAM, 0, 1, b"\0\0\0\x08"))  # CANCEL: the handler still runs
        client.call(5, b"c")
        assert (await client.until(RST_STREAM, 5))[3] == b"\0\0\0\x07"  # REFUSED_STREAM
        echo.gate.set()
        assert (await client.answer(3))[1] == b"echo:b"
        client.call(7, b"d")
        assert (await client.answer(7))[1] == b"echo:d"
        assert [c.message for c in echo.calls] == [b"a", b"b", b"d"]


async def test_graceful_close_answers_calls_in_flight_and_takes_no_new_ones() -> None:
    echo = Echo()
    echo.gate = asyncio.Event()
    server = GrpcServer({PATH: echo.call})
    _, port = await server.start("127.0.0.1", 0)
    async with Raw.open(port) as client:
        client.call(1, b"in flight")
        while not echo.calls:
            await asyncio.sleep(0.01)
        closing = asyncio.ensure_future(server.close(5.0))
        _, _, _, payload = await client.until(GOAWAY)
        assert struct.unpack(">LL", payload[:8]) == (1, 0)  # last stream 1, NO_ERROR
        echo.gate.set()
        fields, message = await client.answer(1)
        assert message == b"echo:in flight" and fields["grpc-status"] == "0"
        await closing
        assert await client.read_frame() is None
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)


@pytest.mark.parametrize("end", ["client GOAWAY", "protocol error"])
async def test_frames_behind_the_end_of_a_connection_do_not_reset_it(end: str) -> None:
    """The client's GOAWAY (h2spec http2/7/1) or a connection error ends the connection while
    more of the client's frames are on the way (here 340 kB of PINGs in the same write). Closing
    the socket with them unread made the kernel send a TCP reset, and the client saw "connection
    reset" instead of what the server had sent (its GOAWAY). Now the server half-closes, drops
    what still arrives, and the client reads everything, then a clean end."""
    async with serving(Limits(linger_timeout=0.5)) as (server, _, port), Raw.open(port) as client:
        ending = frame(GOAWAY, 0, 0, b"\0\0\0\0\0\0\0\xff") if end == "client GOAWAY" else frame(PING, 0, 0, b"1234")
        client.send(ending + frame(PING, 0, 0, b"h2spec\0\0") * 20_000)
        await client.writer.drain()  # the server reads (and drops) it all: no reset
        kinds = []
        while (got := await client.read_frame()) is not None:  # ConnectionResetError on a reset
            kinds.append(got[0])
        assert kinds[0] == SETTINGS, kinds
        if end == "protocol error":
            assert kinds[-1] == GOAWAY and PING not in kinds, kinds  # nothing answered after the error
        # the lingering socket is closed by the timeout even though the client never closes its side
        for _ in range(100):
            if not server.connections:
                break
            await asyncio.sleep(0.02)
        assert not server.connections


async def test_closing_a_connection_whose_client_left_unseen_is_clean() -> None:
    """A client closes its connection (grpcio closing its channel) and the server shuts down
    before its event loop has read the FIN. The GOAWAY then meets a closed socket, whose kernel
    answers with a reset, and half-closing fails with ENOTCONN: that raised out of
    ``server.close()``. Now such a connection is aborted."""
    server = GrpcServer({PATH: Echo().call})
    _, port = await server.start("127.0.0.1", 0)
    clients = []
    for _ in range(3):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(PREFACE + frame(SETTINGS, 0, 0))
        clients.append(sock)
    while len(server.connections) < len(clients):
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)  # the server's SETTINGS and ACK are sent
    for sock in clients:
        sock.recv(1 << 16)  # read: closing with unread bytes would send a reset, not a FIN
        sock.close()
    time.sleep(0.1)  # the FINs arrive; the server's loop (this one) does not run meanwhile
    await server.close(1.0)
    for _ in range(50):
        if not server.connections:
            break
        await asyncio.sleep(0.01)
    assert not server.connections


async def test_a_client_that_says_nothing_is_closed_after_the_handshake_timeout() -> None:
    async with serving(Limits(handshake_timeout=0.2)) as (_, _, port), Raw.open(port, handshake=False) as client:
        code, text = await client.goaway()
        assert code == 1 and b"preface" in text


async def test_header_compression_state_follows_every_block() -> None:
    """Indexed header blocks are decoded from a cache; it must never answer from a stale table."""
    async with serving() as (_, echo, port), Raw.open(port) as client:
        sent = []
        for i in range(12):
            extra = {"x-tenant": f"t{i % 3}", "x-seq": str(i // 4)}
            sent.append(extra)
            client.headers(2 * i + 1, request_headers(**extra))
            client.send(frame(DATA, 0x1, 2 * i + 1, frame_message(b"%d" % i, compressed=False)))
            await client.answer(2 * i + 1)
        seen = {int(c.message): {k: c.headers[k] for k in ("x-tenant", "x-seq")} for c in echo.calls}
        assert [seen[i] for i in range(12)] == sent


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cuts=st.lists(st.integers(min_value=1, max_value=400), min_size=1, max_size=40))
def test_any_split_of_the_byte_stream_gives_the_same_calls(cuts: list[int]) -> None:
    async def run() -> list[bytes]:
        async with serving() as (_, echo, port), Raw.open(port, handshake=False) as client:
            stream = bytearray(PREFACE + frame(SETTINGS, 0, 0))
            for sid, message in ((1, b"first" * 50), (3, b"second"), (5, b"x" * 3000)):
                stream += frame(HEADERS, 0x4, sid, client.encoder.encode(request_headers()))
                stream += frame(DATA, 0x1, sid, frame_message(message, compressed=False))
            at = 0
            for cut in cuts:
                client.send(bytes(stream[at : at + cut]))
                await client.writer.drain()
                await asyncio.sleep(0)
                at += cut
            client.send(bytes(stream[at:]))
            answers = [(await client.answer(sid))[1] for sid in (1, 3, 5)]
            assert answers == [b"echo:" + c.message for c in echo.calls]
            return [c.message for c in echo.calls]

    assert asyncio.run(run()) == [b"first" * 50, b"second", b"x" * 3000]


def test_grpc_message_text_is_percent_encoded_utf8() -> None:
    assert grpc_message_text("caf\u00e9 100%\n") == "caf%C3%A9 100%25%0A"
    assert grpc_message_text("plain text") == "plain text"


async def test_a_buffer_grown_for_a_large_frame_is_given_back_when_idle() -> None:
    async with serving() as (server, _, port), Raw.open(port) as client:
        # a message in two large frames: gathered from them (a message in one frame goes to the
        # handler in its read buffer instead: test_lent_buffers.py)
        message = frame_message(b"q" * 500_000, compressed=False)
        client.send(frame(HEADERS, 0x4, 1, client.encoder.encode(request_headers()))
                    + frame(DATA, 0, 1, message[:250_000]) + frame(DATA, 0x1, 1, message[250_000:]))
        assert (await client.answer(1))[1] == b"echo:" + b"q" * 500_000
        (connection,) = server.connections
        assert len(connection._buf) > 250_000
        # the buffer beyond its first size is held in the budget, the message is not any more
        assert server.budget.in_use == len(connection._buf) - connection.FIRST_READ
        connection.sweep(server.tick)  # there was traffic since the last sweep: kept
        assert len(connection._buf) > 250_000
        grown = connection._buf
        connection.sweep(server.tick)
        assert len(connection._buf) == 0 and server.budget.in_use == 0  # allocated again when bytes come
        assert len(server.buffers) == 1 and server.buffers.take(250_000) is grown  # kept for the next
        client.call(3, b"again")
        assert (await client.answer(3))[1] == b"echo:again"


async def test_a_declared_frame_length_costs_no_memory_until_its_bytes_arrive() -> None:
    async with serving() as (server, _, port), Raw.open(port) as client:
        client.call(1, b"warm")
        await client.answer(1)
        client.send(HEAD.pack(0x0F, 0xFFF0, 0xEE, 0, 0))  # an unknown frame type declaring ~1 MiB
        client.send(b"x" * 100)
        await client.writer.drain()
        await asyncio.sleep(0.2)
        (connection,) = server.connections
        assert len(connection._buf) <= 2 * connection.MIN_READ


@asynccontextmanager
async def fast_sweeps(limits: Limits) -> AsyncIterator[tuple[GrpcServer, Echo, int]]:
    """A server whose timeouts (counted in sweeps) run 20 times faster."""
    original = GrpcServer.SWEEP_EVERY
    GrpcServer.SWEEP_EVERY = 0.05
    try:
        async with serving(limits) as running:
            yield running
    finally:
        GrpcServer.SWEEP_EVERY = original


async def test_a_request_that_stops_arriving_is_ended_and_its_budget_freed() -> None:
    budget = ReceiveBudget(1 << 20)
    async with fast_sweeps(Limits(stall_timeout=3)) as (server, echo, port):
        server.budget = budget
        async with Raw.open(port) as client:
            client.headers(1, request_headers())
            client.send(frame(DATA, 0, 1, frame_message(b"x" * 1000, compressed=False)[:500]))
            fields, _ = await client.answer(1)
            assert fields["grpc-status"] == "4"  # DEADLINE_EXCEEDED
            assert "stopped arriving" in fields["grpc-message"]
            assert budget.in_use == 0 and echo.calls == []
            assert (PATH, "timeout") in echo.refusals


async def test_an_idle_connection_is_closed_with_goaway() -> None:
    async with fast_sweeps(Limits(idle_timeout=4)) as (_, _, port), Raw.open(port) as client:
        client.call(1, b"one call")
        await client.answer(1)
        code, _ = await client.goaway()
        assert code == 0  # NO_ERROR: the client reconnects when it has something to send


async def test_an_answer_the_client_gives_no_window_for_is_reset() -> None:
    async with fast_sweeps(Limits(stall_timeout=3)) as (server, _, port), Raw.open(port, handshake=False) as client:
        client.send(PREFACE + frame(SETTINGS, 0, 0, struct.pack(">HL", 4, 0)))  # zero stream windows
        client.call(1, b"big:100")
        _, _, _, payload = await client.until(RST_STREAM, 1)
        assert payload == struct.pack(">L", 8)  # CANCEL
        (connection,) = server.connections
        assert not connection.busy  # the slot is free again


async def test_the_receive_budget_refuses_what_does_not_fit_and_is_returned() -> None:
    # a read buffer of 64 KiB (60 KiB of it held in the budget), one message, not two
    budget = ReceiveBudget(210_000)

    def call_in_small_frames(client: Raw, stream_id: int, message: bytes) -> None:
        # frames smaller than the read buffer: only the message is held, not a grown buffer
        data = frame_message(message, compressed=False)
        client.headers(stream_id, request_headers())
        for offset in range(0, len(data), 16_384):
            last = offset + 16_384 >= len(data)
            client.send(frame(DATA, 0x1 if last else 0, stream_id, data[offset : offset + 16_384]))

    async with serving() as (server, echo, port):
        server.budget = budget
        async with Raw.open(port) as client:
            echo.gate = asyncio.Event()
            call_in_small_frames(client, 1, b"a" * 100_000)
            while not echo.calls:
                await asyncio.sleep(0.01)
            (connection,) = server.connections
            buffer = len(connection._buf) - connection.FIRST_READ
            assert buffer == 60 << 10
            # the message held while the handler has it (and its fields)
            assert budget.in_use == 100_005 + buffer + fields_held(server)
            call_in_small_frames(client, 3, b"b" * 100_000)  # does not fit beside the first
            fields, _ = await client.answer(3)
            assert fields["grpc-status"] == "14"  # UNAVAILABLE: the client retries
            assert "retry" in fields["grpc-message"]
            assert (PATH, "busy") in echo.refusals
            echo.gate.set()
            assert (await client.answer(1))[1] == b"echo:" + b"a" * 100_000
            assert budget.in_use == buffer
            call_in_small_frames(client, 5, b"c" * 100_000)  # fits again
            assert (await client.answer(5))[1].startswith(b"echo:c")
            # a message whose upload is abandoned returns what it holds too
            client.headers(7, request_headers())
            client.send(frame(DATA, 0, 7, frame_message(b"d" * 50_000, compressed=False)[:1000]))
            while budget.in_use != 1000 + buffer + fields_held(server):  # what arrived, not the 50,000 declared
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
    assert budget.in_use == 0  # the connection closed with the upload unfinished


async def test_authorization_refuses_a_call_before_its_message_is_read() -> None:
    echo = Echo()

    def authorize(path: str, transport: Any) -> None:
        raise GrpcError(7, "not on the allowlist")  # PERMISSION_DENIED

    server = GrpcServer({PATH: echo.call}, authorize=authorize)
    _, port = await server.start("127.0.0.1", 0)
    try:
        async with Raw.open(port) as client:
            client.headers(1, request_headers())
            fields, _ = await client.answer(1)
            assert fields["grpc-status"] == "7" and fields["grpc-message"] == "not on the allowlist"
            assert (await client.until(RST_STREAM, 1))[3] == b"\0\0\0\0"  # stop sending, no error
    finally:
        await server.close(1.0)
    assert echo.calls == []


async def test_a_compressed_flag_other_than_0_or_1_is_invalid() -> None:
    async with serving() as (_, echo, port), Raw.open(port) as client:
        client.headers(1, request_headers())
        client.send(frame(DATA, 0x1, 1, b"\x02" + struct.pack(">L", 3) + b"abc"))
        fields, _ = await client.answer(1)
        assert fields["grpc-status"] == "3" and "0 or 1" in fields["grpc-message"]
        assert echo.calls == []


async def test_handlers_get_read_only_headers() -> None:
    async with serving() as (_, echo, port), Raw.open(port) as client:
        for sid in (1, 3):  # the second call's headers come from the decoded-block cache
            client.call(sid, b"x")
            await client.answer(sid)
        assert echo.calls[0].headers == echo.calls[1].headers
        with pytest.raises(TypeError):
            echo.calls[1].headers["te"] = "changed"  # type: ignore[index]


def test_the_header_cache_keeps_only_small_blocks_that_decode_small() -> None:
    cache = HeaderCache()
    cache.put(b"\x82", "small", True, 100)
    cache.put(b"\x83", "decodes large", True, 100_000)
    cache.put(b"\x84" * 300, "a long block", True, 100)
    assert cache.get(b"\x82") == "small"
    assert cache.get(b"\x83") is None and cache.get(b"\x84" * 300) is None
    cache.put(b"\x40", "changes the table", False, 10)
    assert cache.get(b"\x82") is None


async def test_close_lets_an_upload_in_progress_finish() -> None:
    echo = Echo()
    server = GrpcServer({PATH: echo.call})
    _, port = await server.start("127.0.0.1", 0)
    async with Raw.open(port) as client:
        client.headers(1, request_headers())
        body = frame_message(b"u" * 10_000, compressed=False)
        client.send(frame(DATA, 0, 1, body[:5000]))
        await client.until(SETTINGS)
        await asyncio.sleep(0.05)
        closing = asyncio.ensure_future(server.close(5.0))
        _, _, _, payload = await client.until(GOAWAY)
        assert struct.unpack(">LL", payload[:8]) == (1, 0)
        client.send(frame(DATA, 0x1, 1, body[5000:]))  # the rest arrives during the grace
        fields, message = await client.answer(1)
        assert fields["grpc-status"] == "0" and message == b"echo:" + b"u" * 10_000
        await closing


class _Transport(asyncio.Transport):
    """Records writes (for a connection the test drives by hand)."""

    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closed = False

    def write(self, data: bytes) -> None:  # type: ignore[override]
        self.written += bytes(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def can_write_eof(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else default


async def test_a_connection_accepted_while_the_server_closes_takes_no_call() -> None:
    """A TLS handshake can finish after close() began: that connection is turned away."""
    server = GrpcServer({PATH: Echo().call})
    server.closing = True
    transport = _Transport()
    Connection(server).connection_made(transport)
    kinds = []
    data = transport.written
    while data:
        high, low, kind, _, _ = HEAD.unpack(data[:9])
        kinds.append(kind)
        data = data[9 + ((high << 16) | low) :]
    assert kinds[0] == SETTINGS and kinds[-1] == GOAWAY  # the preface, then goodbye
    assert transport.closed


_frames = st.tuples(
    st.integers(min_value=0, max_value=11),  # frame type, one past the known ones included
    st.integers(min_value=0, max_value=255),  # flags
    st.sampled_from([0, 1, 2, 3, 5, 0x7FFFFFFF]),  # stream id
    st.binary(max_size=40),
)


@settings(max_examples=150, deadline=None)
@given(frames=st.lists(_frames, max_size=8))
@example(frames=[(GOAWAY, 0, 0, b"\0" * 8)])  # the client's goodbye: closed without a GOAWAY of ours
def test_arbitrary_frames_never_break_the_server(frames: list[tuple[int, int, int, bytes]]) -> None:
    """Whatever a client sends after the preface, the server answers with frames or GOAWAY, raises
    nothing into the event loop, and keeps serving other connections."""

    async def run() -> None:
        loop = asyncio.get_running_loop()
        errors: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _, context: errors.append(context))
        async with serving() as (_, _, port):
            async with Raw.open(port) as client:
                for kind, flags, sid, payload in frames:
                    if kind in (HEADERS, CONTINUATION) and payload[:1] == b"h":
                        payload = client.encoder.encode(request_headers())  # a valid block too
                    client.send(frame(kind, flags, sid, payload))
                client.send(frame(PING, 0, 0, b"survived"))
                while (got := await client.read_frame()) is not None:
                    if (got[0] == PING and got[3] == b"survived") or got[0] == GOAWAY:
                        break
                said_goodbye = any(kind == GOAWAY and sid == 0 and len(data) >= 8 for kind, _, sid, data in frames)
                assert got is not None or said_goodbye, "closed without GOAWAY"
            async with Raw.open(port) as other:
                other.call(1, b"still serving")
                assert (await other.answer(1))[1] == b"echo:still serving"
        assert errors == []

    asyncio.run(run())


async def test_request_headers_never_reach_the_log_even_at_debug() -> None:
    from sidecar import logsetup

    root = logging.getLogger()
    saved = (root.level, root.handlers[:], {n: logging.getLogger(n).level for n in ("hpack", "h2", "grpclib")})
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    try:
        logsetup.configure("debug")
        root.addHandler(Keep())
        async with serving() as (_, echo, port), Raw.open(port) as client:
            client.headers(1, request_headers(authorization="Bearer s3cret-token"))
            client.send(frame(DATA, 0x1, 1, frame_message(b"x", compressed=False)))
            await client.answer(1)
        assert echo.calls[0].headers["authorization"] == "Bearer s3cret-token"
        logging.getLogger("sidecar.test").debug("probe")
        assert "probe" in records  # debug logging was on
        assert not [r for r in records if "s3cret" in r]
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]
        for name, level in saved[2].items():
            logging.getLogger(name).setLevel(level)


# -- RFC 9113 5.1 / 5.1.1: stream ids and closed streams ------------------------------------------


@pytest.mark.parametrize("reused", [1, 3], ids=["finished", "lower"])
async def test_headers_on_a_finished_or_lower_stream_id_is_a_protocol_error(reused: int) -> None:
    async with serving() as (_, echo, port), Raw.open(port) as client:
        client.call(1, b"one")
        await client.answer(1)
        client.call(5, b"two")
        await client.answer(5)
        client.call(reused, b"again")  # 1: finished; 3: never used, but below 5
        code, debug = await client.goaway()
        assert code == 1 and b"not above the last stream id" in debug  # PROTOCOL_ERROR
        assert [call.message for call in echo.calls] == [b"one", b"two"]
        assert echo.actions == [Action.protocol_error]


async def test_data_on_a_stream_the_client_ended_is_stream_closed() -> None:
    async with serving() as (_, _, port), Raw.open(port) as client:
        client.call(1, b"one")
        await client.answer(1)
        client.send(frame(DATA, 0x1, 1, frame_message(b"more", compressed=False)))
        code, _ = await client.goaway()
        assert code == 5  # STREAM_CLOSED


async def test_frames_in_flight_on_a_stream_we_reset_are_ignored_until_the_client_resets_it() -> None:
    async with serving(Limits(max_message_bytes=1000)) as (_, _, port), Raw.open(port) as client:
        client.headers(1, request_headers())
        client.send(frame(DATA, 0, 1, frame_message(b"x" * 5000, compressed=False)[:100]))
        fields, _ = await client.answer(1)
        assert fields["grpc-status"] == "8"  # refused from its prefix, RST_STREAM NO_ERROR follows
        assert (await client.until(RST_STREAM, 1))[3] == b"\0\0\0\0"
        client.send(frame(DATA, 0, 1, b"x" * 100))  # were on their way: ignored
        client.call(3, b"goes on")
        assert (await client.answer(3))[1] == b"echo:goes on"
        client.send(frame(RST_STREAM, 0, 1, struct.pack(">L", 8)))  # the client is done with it
        client.send(frame(DATA, 0, 1, b"x"))  # now a frame on a closed stream
        code, _ = await client.goaway()
        assert code == 5  # STREAM_CLOSED


async def test_priority_frames_are_checked_and_a_stream_cannot_depend_on_itself() -> None:
    async with serving() as (_, echo, port), Raw.open(port) as client:
        client.call(1, b"one")
        await client.answer(1)
        client.send(frame(PRIORITY, 0, 1, b"\0\0\0\0"))  # 4 bytes, not 5
        assert (await client.until(RST_STREAM, 1))[3] == struct.pack(">L", 6)  # FRAME_SIZE_ERROR
        client.send(frame(PRIORITY, 0, 1, struct.pack(">LB", 1, 16)))  # depends on itself
        assert (await client.until(RST_STREAM, 1))[3] == struct.pack(">L", 1)  # PROTOCOL_ERROR
        block = client.encoder.encode(request_headers())
        client.send(frame(HEADERS, 0x4 | 0x20, 3, struct.pack(">LB", 3, 16) + block))  # HEADERS, itself
        client.send(frame(DATA, 0x1, 3, frame_message(b"lost", compressed=False)))  # in flight: ignored
        assert (await client.until(RST_STREAM, 3))[3] == struct.pack(">L", 1)
        client.call(5, b"goes on")
        assert (await client.answer(5))[1] == b"echo:goes on"
        assert [call.message for call in echo.calls] == [b"one", b"goes on"]
        client.send(frame(WINDOW_UPDATE, 0, 1, struct.pack(">L", 0)))  # 0 on a closed stream
        assert (await client.until(RST_STREAM, 1))[3] == struct.pack(">L", 1)


# -- what a connection costs and holds ---------------------------------------------------------


async def test_connections_over_the_cap_are_told_and_closed_and_cost_no_buffer_until_bytes_come() -> None:
    async with serving(Limits(max_connections=2)) as (server, echo, port):
        first = await asyncio.open_connection("127.0.0.1", port)
        second = await asyncio.open_connection("127.0.0.1", port)
        await asyncio.sleep(0.1)
        assert server.open_connections == 2
        assert all(len(connection._buf) == 0 for connection in server.connections)  # said nothing yet
        async with Raw.open(port, handshake=False) as third:
            code, debug = await third.goaway()
            assert code == 11 and debug == b"too many connections"  # ENHANCE_YOUR_CALM
        assert echo.actions == [Action.connection_limit]
        first[1].close()
        await asyncio.sleep(0.1)
        async with Raw.open(port) as fourth:  # room again
            fourth.call(1, b"in")
            assert (await fourth.answer(1))[1] == b"echo:in"
        second[1].close()


async def test_a_slow_sender_holding_a_partial_frame_is_cut_and_gives_its_budget_back() -> None:
    budget = ReceiveBudget(1 << 30)
    async with fast_sweeps(Limits(min_receive_rate=1000, min_rate_grace=3)) as (server, echo, port):
        server.budget = budget
        async with Raw.open(port) as client:
            client.headers(1, request_headers())
            message = frame_message(b"x" * 200_000, compressed=False)
            client.send(frame(DATA, 0x1, 1, message)[:-1])  # all but its last byte
            while budget.in_use == 0:
                await asyncio.sleep(0.01)
            fields, _ = await client.answer(1)
            assert fields["grpc-status"] == "4" and "slower than 1000 bytes/s" in fields["grpc-message"]
            code, _ = await client.goaway()
            assert code == 11  # ENHANCE_YOUR_CALM
        await asyncio.sleep(0.05)
        assert budget.in_use == 0 and echo.calls == []
        assert Action.slow_body in echo.actions


async def test_a_request_arriving_steadily_but_too_long_meets_the_request_deadline() -> None:
    async with fast_sweeps(Limits(min_receive_rate=0, request_deadline=5)) as (_, echo, port):
        async with Raw.open(port) as client:
            client.headers(1, request_headers())
            client.send(frame(DATA, 0, 1, b"\0" + struct.pack(">L", 1000)))

            async def drip() -> None:
                while True:
                    await asyncio.sleep(0.02)
                    client.send(frame(DATA, 0, 1, b"x"))

            dripping = asyncio.create_task(drip())
            try:
                fields, _ = await client.answer(1)
            finally:
                dripping.cancel()
            assert fields["grpc-status"] == "4" and "did not arrive within 5 s" in fields["grpc-message"]
        assert Action.request_deadline in echo.actions


async def test_request_bytes_go_back_when_the_handler_is_done_not_when_the_answer_is_taken() -> None:
    budget = ReceiveBudget(1 << 30)
    async with serving() as (server, _, port):
        server.budget = budget
        async with Raw.open(port, handshake=False) as client:
            client.send(PREFACE + frame(SETTINGS, 0, 0, struct.pack(">HL", 4, 0)))  # zero stream windows
            client.call(1, b"big:1000")
            await client.until(HEADERS, 1)  # handled: the answer's message waits for window
            (connection,) = server.connections
            assert connection.busy and budget.in_use == 0
            client.send(frame(WINDOW_UPDATE, 0, 1, struct.pack(">L", 10_000)))
            assert (await client.answer(1))[1] == b"r" * 1000


async def test_answers_left_waiting_beyond_the_outbound_bound_close_the_connection() -> None:
    async with fast_sweeps(Limits(max_outbound_bytes=10_000, min_rate_grace=2)) as (_, echo, port):
        async with Raw.open(port, handshake=False) as client:
            client.send(PREFACE + frame(SETTINGS, 0, 0, struct.pack(">HL", 4, 0)))
            for stream_id in (1, 3, 5):
                client.call(stream_id, b"big:5000")
            frames = []
            while (got := await client.read_frame()) is not None:  # until the server aborts
                frames.append(got[0])
            assert frames.count(HEADERS) == 3 and DATA not in frames
        assert Action.slow_body in echo.actions


async def test_over_tls_a_frame_without_room_in_the_budget_waits_then_is_told_to_retry(tmp_path: Any) -> None:
    """The TLS layer hands bytes to the connection as the plaintext socket does (get_buffer and
    buffer_updated); a buffer that may not grow pauses it all the same."""
    import ssl

    from sidecar.tls.acceptor import tls_wrapper
    from sidecar.tls.server import ServerTLS
    from tests.tls.pki import make_pki

    pki = make_pki(tmp_path)
    tls = ServerTLS(cert_file=pki.server_cert, key_file=pki.server_key, alpn=("h2",))
    budget = ReceiveBudget(512 << 10)
    echo = Echo()
    original = GrpcServer.SWEEP_EVERY
    GrpcServer.SWEEP_EVERY = 0.05
    server = GrpcServer({PATH: echo.call}, Limits(min_rate_grace=3), budget=budget, count=echo.actions.append)
    _, port = await server.start("127.0.0.1", 0, tls_wrapper(tls))
    try:
        context = ssl.create_default_context(cafile=pki.ca_cert)
        context.set_alpn_protocols(["h2"])
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="localhost")
        client = Raw(reader, writer)
        client.send(PREFACE + frame(SETTINGS, 0, 0, struct.pack(">HL", 4, 1 << 24)))
        client.headers(1, request_headers())
        client.send(frame(DATA, 0x1, 1, frame_message(b"x" * 900_000, compressed=False)))  # needs 1 MiB of room
        fields, _ = await client.answer(1)
        assert fields["grpc-status"] == "14" and "retry" in fields["grpc-message"]  # UNAVAILABLE
        try:
            code, _ = await client.goaway()
            assert code == 11  # ENHANCE_YOUR_CALM
        except ConnectionResetError:
            pass  # closed with the rest of the frame unread: the GOAWAY may be lost in the reset
        writer.close()
        await asyncio.sleep(0.05)
        assert budget.in_use == 0 and echo.calls == []
        assert echo.actions == [Action.budget_full]  # counted once, however long it waited
        # a call that fits is served over TLS as ever
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="localhost")
        client = Raw(reader, writer)
        client.send(PREFACE + frame(SETTINGS, 0, 0))
        client.call(1, b"small")
        assert (await client.answer(1))[1] == b"echo:small"
        writer.close()
    finally:
        GrpcServer.SWEEP_EVERY = original
        await server.close(1.0)
