"""The exporter's HTTP/2 client (sidecar.wire.http2.client) at the protocol level, on loopback.

A well-behaved server is the ``h2`` library (a real, independent HTTP/2 implementation that
raises on any flow-control or framing violation of ours); a misbehaving one is written frame by
frame. The real peers (the Collector's grpc-go, grpcio's C-core) are in tests/interop and
tests/export. Each test asserts what the exporter sees (the answer, or the reason it has none) and
what the server sees (the request's bytes, RST_STREAM, GOAWAY and its code).
"""

from __future__ import annotations

import asyncio
import ssl
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import h2.settings
import hpack
import pytest

from sidecar.wire.http2 import client
from sidecar.wire.http2.client import (
    Channel,
    ConnectionClosed,
    ProtocolViolation,
    ReplyTooLarge,
    Response,
    StreamReset,
)
from sidecar.wire.http2.frames import (
    CANCEL,
    COMPRESSION_ERROR,
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    ENHANCE_YOUR_CALM,
    FLOW_CONTROL_ERROR,
    FRAME_SIZE_ERROR,
    GOAWAY,
    HEADERS,
    PING,
    PREFACE,
    PROTOCOL_ERROR,
    PUSH_PROMISE,
    REFUSED_STREAM,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    frame,
    header_block,
)
from tests.tls.pki import make_pki

HEAD = struct.Struct(">BHBBL")
BLOCK = header_block([(":method", "POST"), (":scheme", "http"), (":path", "/t.S/M"), (":authority", "t")])
ANSWER = [(":status", "200"), ("content-type", "application/grpc")]
TRAILERS = [("grpc-status", "0")]

Frame = tuple[int, int, int, bytes]


class Peer:
    """One server-side connection whose frames the test reads and writes by hand."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.encoder = hpack.Encoder()

    async def handshake(self, settings: bytes = b"") -> None:
        assert await self.reader.readexactly(len(PREFACE)) == PREFACE
        self.send(frame(SETTINGS, 0, 0, settings))

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    def headers(self, stream_id: int, fields: list[tuple[str, str]], flags: int = END_HEADERS) -> None:
        self.send(frame(HEADERS, flags, stream_id, self.encoder.encode(fields)))

    def answer(self, stream_id: int, message: bytes = b"ok") -> None:
        self.headers(stream_id, ANSWER)
        self.send(frame(DATA, 0, stream_id, message))
        self.headers(stream_id, TRAILERS, END_HEADERS | END_STREAM)

    async def read_frame(self, timeout: float = 5.0) -> Frame | None:
        """The next frame, or None once the client closed the connection."""
        try:
            head = await asyncio.wait_for(self.reader.readexactly(9), timeout)
            high, low, kind, flags, stream_id = HEAD.unpack(head)
            return kind, flags, stream_id, await self.reader.readexactly(high << 16 | low)
        except (asyncio.IncompleteReadError, ConnectionError):
            return None

    async def until(self, kind: int, stream_id: int | None = None) -> Frame:
        while True:
            got = await self.read_frame()
            assert got is not None, f"the client closed the connection before a frame of type {kind}"
            if got[0] == kind and (stream_id is None or got[2] == stream_id):
                return got

    async def data(self, total: int) -> list[int]:
        """The sizes of the DATA frames that bring ``total`` bytes (other frames are skipped)."""
        sizes: list[int] = []
        while sum(sizes) < total:
            sizes.append(len((await self.until(DATA))[3]))
        assert sum(sizes) == total
        return sizes

    async def quiet_until_ping(self) -> list[Frame]:
        """PING the client: the DATA frames it sent before the answer (none, if it waits)."""
        self.send(frame(PING, 0, 0, b"quiet?.."))
        before: list[Frame] = []
        while (got := await self.read_frame()) is not None and got[0] != PING:
            if got[0] == DATA:
                before.append(got)
        assert got is not None and got[1:] == (1, 0, b"quiet?.."), "PING not answered"
        return before

    async def request(self, stream_id: int) -> bytes:
        """The body of the request on ``stream_id`` (its HEADERS and DATA up to END_STREAM)."""
        body = bytearray()
        await self.until(HEADERS, stream_id)
        while True:
            _, flags, _, payload = await self.until(DATA, stream_id)
            body += payload
            if flags & END_STREAM:
                return bytes(body)


@asynccontextmanager
async def scripted() -> AsyncIterator[tuple[Channel, asyncio.Queue[Peer]]]:
    """A listening socket whose connections arrive as :class:`Peer` s, and a channel to it."""
    peers: asyncio.Queue[Peer] = asyncio.Queue()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await peers.put(Peer(reader, writer))

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    channel = Channel("127.0.0.1", server.sockets[0].getsockname()[1])
    try:
        yield channel, peers
    finally:
        channel.close()
        server.close()
        while not peers.empty():
            peers.get_nowait().writer.close()


@asynccontextmanager
async def h2_server(
    on_request: Callable[[h2.connection.H2Connection, int, bytes], None],
    settings: dict[int, int] | None = None,
    acknowledge_every: int = 1,
) -> AsyncIterator[tuple[int, list[BaseException]]]:
    """A server on the ``h2`` library: ``on_request(connection, stream, body)`` answers; the
    list collects what h2 raised (a violation of ours)."""
    errors: list[BaseException] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        connection.initiate_connection()
        if settings:
            connection.update_settings(settings)
        writer.write(connection.data_to_send())
        bodies: dict[int, bytearray] = {}
        reads = 0
        try:
            while data := await reader.read(65536):
                for event in connection.receive_data(data):
                    if isinstance(event, h2.events.DataReceived):
                        bodies.setdefault(event.stream_id, bytearray()).extend(event.data)
                        reads += 1
                        if reads % acknowledge_every == 0:  # the server takes its time
                            await asyncio.sleep(0.001)
                        connection.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    elif isinstance(event, h2.events.StreamEnded):
                        on_request(connection, event.stream_id, bytes(bodies.pop(event.stream_id, b"")))
                writer.write(connection.data_to_send())
        except Exception as exc:
            errors.append(exc)
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], errors
    finally:
        server.close()


def echo(connection: h2.connection.H2Connection, stream_id: int, body: bytes) -> None:
    connection.send_headers(stream_id, ANSWER)
    connection.send_data(stream_id, b"%d" % len(body))
    connection.send_headers(stream_id, [*TRAILERS, ("x-sha", str(hash(body)))], end_stream=True)


async def test_a_large_request_waits_for_the_servers_small_windows() -> None:
    body = bytes(range(256)) * 1200  # 300 kB against a 1,000-byte stream window
    settings = {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1000}
    async with h2_server(echo, settings, acknowledge_every=20) as (port, errors):
        channel = Channel("127.0.0.1", port)
        try:
            answers = await asyncio.wait_for(asyncio.gather(
                *(channel.request(BLOCK, body[i:], 1 << 20) for i in range(3))
            ), 30)
        finally:
            channel.close()
    assert errors == []
    for i, answer in enumerate(answers):
        assert answer.headers[":status"] == "200"
        assert answer.data == b"%d" % (len(body) - i)
        assert answer.trailers == {"grpc-status": "0", "x-sha": str(hash(body[i:]))}


async def test_long_headers_continue_and_larger_frames_wait_for_an_answer() -> None:
    block = header_block([(":method", "POST"), (":scheme", "http"), (":path", "/t.S/M"), (":authority", "t"),
                          ("x-token", "t" * 40_000)])  # three frames of 16 kB: HEADERS, CONTINUATION x 2
    settings = {h2.settings.SettingCodes.MAX_FRAME_SIZE: 65_536,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 1 << 20}
    async with h2_server(echo, settings) as (port, errors):
        channel = Channel("127.0.0.1", port)
        try:
            first = await asyncio.wait_for(channel.request(block, b"x" * 200_000, 1 << 20), 10)
            # h2 takes frames larger than 16 kB only from the read after the one that held our
            # ACK: the second request, sent after an answer, is in frames of 64 kB, and h2 takes them
            second = await asyncio.wait_for(channel.request(BLOCK, b"y" * 300_000, 1 << 20), 10)
        finally:
            channel.close()
    assert errors == []
    assert (first.data, second.data) == (b"200000", b"300000")


async def test_the_reply_is_bounded_and_the_connection_goes_on() -> None:
    async with scripted() as (channel, peers):
        call = asyncio.create_task(channel.request(BLOCK, b"body", 1000))
        peer = await peers.get()
        await peer.handshake()
        assert await peer.request(1) == b"body"
        peer.headers(1, ANSWER)
        peer.send(frame(DATA, 0, 1, b"x" * 600) + frame(DATA, 0, 1, b"x" * 600))
        with pytest.raises(ReplyTooLarge):
            await call
        _, _, _, payload = await peer.until(RST_STREAM, 1)
        assert struct.unpack(">L", payload) == (CANCEL,)
        # late frames of the cancelled stream are dropped; the connection serves the next call
        peer.send(frame(DATA, 0, 1, b"x" * 100))
        call = asyncio.create_task(channel.request(BLOCK, b"again", 1000))
        assert await peer.request(3) == b"again"
        peer.answer(3, b"fine")
        answer = await call
        assert (answer.data, answer.trailers) == (b"fine", {"grpc-status": "0"})
        assert peers.empty()


async def test_a_caller_that_gives_up_cancels_its_stream() -> None:
    async with scripted() as (channel, peers):
        call = asyncio.create_task(asyncio.wait_for(channel.request(BLOCK, b"body", 1000), 0.3))
        peer = await peers.get()
        await peer.handshake()
        await peer.request(1)
        with pytest.raises(TimeoutError):
            await call
        _, _, _, payload = await peer.until(RST_STREAM, 1)
        assert struct.unpack(">L", payload) == (CANCEL,)


async def test_an_answer_before_the_whole_request_cancels_the_rest() -> None:
    async with scripted() as (channel, peers):
        call = asyncio.create_task(channel.request(BLOCK, b"y" * 200_000, 1000))
        peer = await peers.get()
        await peer.handshake()  # default windows: 65,535 bytes go out, then the client waits
        await peer.until(HEADERS, 1)
        peer.headers(1, [(":status", "200"), ("grpc-status", "8")], END_HEADERS | END_STREAM)
        answer = await call
        assert answer.headers["grpc-status"] == "8"
        _, _, _, payload = await peer.until(RST_STREAM, 1)
        assert struct.unpack(">L", payload) == (CANCEL,)


async def test_goaway_fails_the_unprocessed_streams_and_the_channel_reconnects() -> None:
    async with scripted() as (channel, peers):
        first = asyncio.create_task(channel.request(BLOCK, b"one", 1000))
        peer = await peers.get()
        await peer.handshake()
        assert await peer.request(1) == b"one"
        second = asyncio.create_task(channel.request(BLOCK, b"two", 1000))
        assert await peer.request(3) == b"two"
        peer.send(frame(GOAWAY, 0, 0, struct.pack(">LL", 1, 0)))
        with pytest.raises(ConnectionClosed) as refused:
            await second
        assert refused.value.unprocessed
        peer.answer(1, b"done")
        assert (await first).data == b"done"  # below the GOAWAY's last stream: it finishes
        await peer.until(GOAWAY)  # the client's own, then the end of the connection
        assert await peer.read_frame() is None
        third = asyncio.create_task(channel.request(BLOCK, b"three", 1000))
        fresh = await asyncio.wait_for(peers.get(), 5)
        await fresh.handshake()
        assert await fresh.request(1) == b"three"
        fresh.answer(1)
        assert (await third).data == b"ok"


async def test_rst_stream_fails_its_stream_only() -> None:
    async with scripted() as (channel, peers):
        call = asyncio.create_task(channel.request(BLOCK, b"body", 1000))
        peer = await peers.get()
        await peer.handshake()
        await peer.request(1)
        peer.send(frame(RST_STREAM, 0, 1, struct.pack(">L", REFUSED_STREAM)))
        with pytest.raises(StreamReset) as reset:
            await call
        assert reset.value.unprocessed and reset.value.code == REFUSED_STREAM
        call = asyncio.create_task(channel.request(BLOCK, b"next", 1000))
        assert await peer.request(3) == b"next"
        peer.answer(3)
        assert (await call).data == b"ok"


async def test_windows_settings_and_ping_are_followed() -> None:
    async with scripted() as (channel, peers):
        call = asyncio.create_task(channel.request(BLOCK, b"z" * 200_000, 1000))
        peer = await peers.get()
        await peer.handshake()
        await peer.until(HEADERS, 1)
        sizes = await peer.data(65_535)  # the default windows, in frames of 16 kB at most
        assert max(sizes) == 16_384
        assert await peer.quiet_until_ping() == []  # and nothing more until the windows open
        # the connection window opens wide; the stream's follows SETTINGS_INITIAL_WINDOW_SIZE
        peer.send(frame(WINDOW_UPDATE, 0, 0, struct.pack(">L", 1_000_000)))
        peer.send(frame(SETTINGS, 0, 0, struct.pack(">HL", 4, 100_000)))
        assert sum(await peer.data(100_000 - 65_535)) == 34_465
        assert await peer.quiet_until_ping() == []
        peer.send(frame(WINDOW_UPDATE, 0, 1, struct.pack(">L", 200_000)))
        assert sum(await peer.data(200_000 - 100_000)) == 100_000
        peer.answer(1)
        assert (await call).data == b"ok"


async def test_a_larger_frame_size_is_used_once_the_server_answered_after_our_ack() -> None:
    async with scripted() as (channel, peers):
        body = b"f" * 300_000
        first = asyncio.create_task(channel.request(BLOCK, body, 1000))
        peer = await peers.get()

        async def largest_frame(stream_id: int, call: asyncio.Task[Response] | None = None) -> int:
            call = call or asyncio.create_task(channel.request(BLOCK, body, 1000))
            await peer.until(HEADERS, stream_id)
            peer.send(frame(WINDOW_UPDATE, 0, 0, struct.pack(">L", len(body))))
            sizes = await peer.data(len(body))
            peer.answer(stream_id)
            await call
            return max(sizes)

        await peer.handshake(struct.pack(">HLHL", 5, 100_000, 4, 4_000_000))  # MAX_FRAME_SIZE, window
        # stream 1 was opened before the SETTINGS came; stream 3, after our ACK, may reach the
        # server in the read that holds the ACK: both in 16 kB frames; once 3 is answered, larger
        assert await largest_frame(1, first) == 16_384
        assert await largest_frame(3) == 16_384
        assert await largest_frame(5) == 100_000
        # a smaller size applies at once
        peer.send(frame(SETTINGS, 0, 0, struct.pack(">HL", 5, 20_000)))
        await peer.until(SETTINGS)
        assert await largest_frame(7) == 20_000
        # one above our own cap is held to it
        peer.send(frame(SETTINGS, 0, 0, struct.pack(">HL", 5, (1 << 24) - 1)))
        await peer.until(SETTINGS)
        body = b"g" * 3_000_000
        assert await largest_frame(9) == 20_000
        assert await largest_frame(11) == client.MAX_SEND_FRAME


@pytest.mark.parametrize(
    ("name", "bad", "code"),
    [
        ("push", frame(PUSH_PROMISE, END_HEADERS, 1, b"\0\0\0\2\x82"), PROTOCOL_ERROR),
        ("data on a stream never opened", frame(DATA, 0, 5, b"x"), PROTOCOL_ERROR),
        ("push enabled", frame(SETTINGS, 0, 0, struct.pack(">HL", 2, 1)), PROTOCOL_ERROR),
        ("frame above 16 kB", frame(DATA, 0, 1, b"x" * 20_000), FRAME_SIZE_ERROR),
        ("window update of 0", frame(WINDOW_UPDATE, 0, 0, b"\0\0\0\0"), PROTOCOL_ERROR),
        ("window overflow", frame(WINDOW_UPDATE, 0, 0, struct.pack(">L", (1 << 31) - 1)), FLOW_CONTROL_ERROR),
        ("HPACK index 0", frame(HEADERS, END_HEADERS, 1, b"\x80"), COMPRESSION_ERROR),
        ("HPACK index beyond the table", frame(HEADERS, END_HEADERS, 1, b"\xff\x40"), COMPRESSION_ERROR),
        ("continuation without headers", frame(CONTINUATION, END_HEADERS, 1, b"\x88"), PROTOCOL_ERROR),
        ("interrupted header block", frame(HEADERS, 0, 1, b"\x88") + frame(PING, 0, 0, b"0" * 8), PROTOCOL_ERROR),
        ("data before headers", frame(DATA, 0, 1, b"x"), PROTOCOL_ERROR),
        ("PING of 4 bytes", frame(PING, 0, 0, b"1234"), FRAME_SIZE_ERROR),
        ("huge header list", frame(HEADERS, 0, 1, b"\x00\x01a\x7f\x81\xff\x03" + b"v" * 16_000)
         + b"".join(frame(CONTINUATION, 0, 1, b"v" * 16_000) for _ in range(9)), ENHANCE_YOUR_CALM),
    ],
)
async def test_a_misbehaving_server_ends_the_connection_with_goaway(
    name: str, bad: bytes, code: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client, "LINGER", 0.1)  # the close after the GOAWAY comes sooner
    async with scripted() as (channel, peers):
        call = asyncio.create_task(channel.request(BLOCK, b"body", 1000))
        peer = await peers.get()
        await peer.handshake()
        await peer.request(1)
        peer.send(bad)
        with pytest.raises(ProtocolViolation):
            await asyncio.wait_for(call, 5)
        _, _, _, payload = await peer.until(GOAWAY)
        assert struct.unpack(">LL", payload[:8]) == (0, code), name
        assert await peer.read_frame() is None  # and the connection is closed


async def test_a_lost_connection_fails_the_call_and_the_next_one_reconnects() -> None:
    async with scripted() as (channel, peers):
        call = asyncio.create_task(channel.request(BLOCK, b"body", 1000))
        peer = await peers.get()
        await peer.handshake()
        await peer.request(1)
        peer.writer.transport.abort()
        with pytest.raises(ConnectionClosed):
            await call
        call = asyncio.create_task(channel.request(BLOCK, b"again", 1000))
        fresh = await asyncio.wait_for(peers.get(), 5)
        await fresh.handshake()
        assert await fresh.request(1) == b"again"
        fresh.answer(1)
        assert (await call).data == b"ok"


@pytest.mark.parametrize(("server_alpn", "works"), [(["h2"], True), ([], True), (["http/1.1"], False)])
async def test_tls_speaks_http2_unless_the_server_chose_another_protocol(
    tmp_path: Path, server_alpn: list[str], works: bool
) -> None:
    """A real handshake on loopback: ALPN h2, or none (HTTP/2 by prior knowledge, as gRPC
    clients do); a server that chose HTTP/1.1 would read frames as garbage, so the call fails."""
    pki = make_pki(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(pki.server_cert, pki.server_key)
    if server_alpn:
        server_context.set_alpn_protocols(server_alpn)
    client_context = ssl.create_default_context(cafile=pki.ca_cert)
    client_context.set_alpn_protocols(["h2", "http/1.1"] if server_alpn == ["http/1.1"] else ["h2"])
    peers: asyncio.Queue[Peer] = asyncio.Queue()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await peers.put(Peer(reader, writer))

    server = await asyncio.start_server(accept, "127.0.0.1", 0, ssl=server_context)
    channel = Channel("127.0.0.1", server.sockets[0].getsockname()[1], ssl=client_context,
                      server_hostname="localhost")
    try:
        call = asyncio.create_task(channel.request(BLOCK, b"secret", 1000))
        if not works:
            with pytest.raises(ConnectionClosed, match=r"chose http/1\.1"):
                await asyncio.wait_for(call, 5)
            return
        peer = await asyncio.wait_for(peers.get(), 5)
        await peer.handshake()
        assert await peer.request(1) == b"secret"
        peer.answer(1, b"over TLS")
        assert (await call).data == b"over TLS"
        assert channel.scheme == "https"
    finally:
        channel.close()
        server.close()
