"""Review of the exporter's HTTP/2 client (sidecar.wire.http2.client) from a hostile upstream.

Each test is a server (scripted frame by frame, on loopback) that the client should survive with
bounded memory, bounded CPU per byte and calls that end; each fails on the client as reviewed.
Some look at the connection's private state (its transport, its header block) where that is the
only place the harm is visible without letting the server undo it (reading would drain a buffer).
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time

import pytest

from sidecar.wire.http2 import client
from sidecar.wire.http2.client import ClientConnection, ProtocolViolation, Response
from sidecar.wire.http2.frames import (
    CONTINUATION,
    ENHANCE_YOUR_CALM,
    GOAWAY,
    HEADERS,
    PING,
    PROTOCOL_ERROR,
    SETTINGS,
    WINDOW_UPDATE,
    frame,
    header_block,
)
from tests.wire.http2.test_client import BLOCK, Peer, scripted

MAX_WINDOW = (1 << 31) - 1


async def _open(channel: client.Channel, peers: asyncio.Queue[Peer], settings: bytes = b"") -> tuple[
    ClientConnection, Peer, asyncio.Task[Response]
]:
    """A connection, its peer after the handshake, and a first call on stream 1 whose request
    the peer has read."""
    connection = await channel.connection()
    call = asyncio.create_task(channel.request(BLOCK, b"body", 1000))
    peer = await asyncio.wait_for(peers.get(), 5)
    await peer.handshake(settings)
    await peer.request(1)
    return connection, peer, call


def _socket_open(connection: ClientConnection) -> bool:
    transport = connection._transport
    assert transport is not None
    return bool(transport.get_extra_info("socket").fileno() != -1)


# -- memory ------------------------------------------------------------------------------------


async def test_a_flood_of_empty_continuation_frames_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """_continuation appends every fragment to a list and bounds only their bytes: empty
    CONTINUATION frames (9 bytes each on the wire) grow the list without end, and the call waits
    for a header block that never ends (the CONTINUATION flood, CVE-2024-27316 and kin)."""
    monkeypatch.setattr(client, "LINGER", 0.1)
    async with scripted() as (channel, peers):
        connection, peer, call = await _open(channel, peers)
        peer.send(frame(HEADERS, 0, 1, b"\x88"))  # :status 200, and no END_HEADERS
        empty = frame(CONTINUATION, 0, 1) * 50_000  # 450 kB of frames, 0 bytes of header block
        for _ in range(40):  # 18 MB in all: 2 million fragments if none is refused
            if call.done():
                break
            peer.send(empty)
            await peer.writer.drain()
        await asyncio.sleep(0.5)  # the client catches up with what it was sent
        block = connection._block
        held = len(block[2]) if block is not None else 0
        if not call.done():
            call.cancel()
            await asyncio.gather(call, return_exceptions=True)
            pytest.fail(f"the call still waits; the client holds {held:,} empty fragments of one header block")
        with pytest.raises(ProtocolViolation):
            await call
        _, _, _, payload = await peer.until(GOAWAY)
        assert struct.unpack(">LL", payload[:8])[1] in (PROTOCOL_ERROR, ENHANCE_YOUR_CALM)


async def test_a_connection_ended_for_a_violation_closes_though_the_server_reads_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A PING flood from a server that reads nothing is cut off at 1 MiB of held answers
    (ENHANCE_YOUR_CALM), and the socket closes after the linger. _abort (and close) used to
    end the socket with transport.close(), which waits for the write buffer
    to drain: a server that reads nothing keeps the socket and its buffer (over 1 MiB here) for
    ever. The channel opens a fresh connection for the next call, so a server can repeat this
    and exhaust file descriptors and memory, one connection at a time."""
    monkeypatch.setattr(client, "LINGER", 0.1)
    async with scripted() as (channel, peers):
        connection, peer, call = await _open(channel, peers)
        flood = frame(PING, 0, 0, b"01234567") * 4096
        try:
            for _ in range(1000):
                peer.send(flood)
                await peer.writer.drain()
                if call.done():
                    break
        except ConnectionError:
            pass
        with pytest.raises(ProtocolViolation, match="reads no answers"):
            await asyncio.wait_for(call, 10)
        assert connection._transport is not None
        for _ in range(30):  # LINGER is 0.1 s: well past it
            if not _socket_open(connection):
                break
            await asyncio.sleep(0.1)
        buffered = connection._transport.get_write_buffer_size()
        assert not _socket_open(connection), (
            f"3 s after the violation the socket is still open, holding {buffered:,} bytes to write"
        )


async def test_a_server_that_stops_reading_does_not_make_each_call_grow_the_write_buffer() -> None:
    """A server that takes the connection and then reads nothing: every call still writes its
    HEADERS (request() does not wait for pause_writing) and, when it times out, an RST_STREAM
    (_forget). The connection stays `available`, so the channel keeps using it and the transport
    buffer grows with every export for as long as the server keeps the socket open."""
    async with scripted() as (channel, peers):
        # windows wide open: the first request fills the socket's buffers and then the transport's
        settings = struct.pack(">HL", 4, MAX_WINDOW)
        connection = await channel.connection()
        first = asyncio.create_task(asyncio.wait_for(channel.request(BLOCK, b"x" * (16 << 20), 1000), 1.0))
        peer = await asyncio.wait_for(peers.get(), 5)
        assert await peer.reader.readexactly(24)  # the preface; the rest stays unread
        peer.send(frame(SETTINGS, 0, 0, settings) + frame(WINDOW_UPDATE, 0, 0, struct.pack(">L", MAX_WINDOW - 65_535)))
        with pytest.raises(TimeoutError):
            await first
        assert connection._transport is not None
        before = connection._transport.get_write_buffer_size()
        assert connection.available
        # the exporter's next calls: each with its metadata (8 kB here), each timing out
        block = header_block([(":method", "POST"), (":scheme", "http"), (":path", "/t.S/M"),
                              (":authority", "t"), ("authorization", "a" * 8000)])
        calls = [asyncio.wait_for(channel.request(block, b"export", 1000), 0.3) for _ in range(200)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(r, (TimeoutError, ConnectionError, ProtocolViolation)) for r in results)
        grown = connection._transport.get_write_buffer_size() - before
        assert grown < 256 << 10, (
            f"200 calls to a server that reads nothing added {grown:,} bytes to the write buffer "
            f"(connection still available: {connection.available})"
        )
        peer.writer.transport.abort()


# -- CPU per byte ------------------------------------------------------------------------------


async def _ping_after(peer: Peer, data: bytes) -> float:
    """Seconds from sending ``data`` and a PING until the PING's answer."""
    start = time.perf_counter()
    peer.send(data + frame(PING, 0, 0, b"measure!"))
    while True:
        got = await peer.read_frame(30)
        assert got is not None
        if got[0] == PING and got[3] == b"measure!":
            return time.perf_counter() - start


async def _best_ping_after(peer: Peer, data: bytes, rounds: int = 3) -> float:
    """The least of ``rounds`` measures of _ping_after (a stall of the machine is not the cost)."""
    return min([await _ping_after(peer, data) for _ in range(rounds)])


async def test_settings_cost_does_not_scale_with_entries_times_open_streams() -> None:
    """_settings walks every open stream for every SETTINGS_INITIAL_WINDOW_SIZE entry: a 16 kB
    frame holds 2,730 of them, so with the exporter's 64 calls in flight each frame costs about
    175,000 window updates (~12 ms of event loop here, ~1.3 MB/s of SETTINGS keeps the loop
    busy). Applying the frame's last value once would cost the same with 1 stream or 64."""
    flood = frame(SETTINGS, 0, 0, b"".join(struct.pack(">HL", 4, 65_535 + (i & 1)) for i in range(2730))) * 100
    async with scripted() as (channel, peers):
        _, peer, first = await _open(channel, peers)
        one = await _best_ping_after(peer, flood)
        calls = [asyncio.create_task(channel.request(BLOCK, b"body", 1000)) for _ in range(63)]
        for stream_id in range(3, 3 + 2 * 63, 2):
            await peer.request(stream_id)
        many = await _best_ping_after(peer, flood)
        for task in [first, *calls]:
            task.cancel()
        await asyncio.gather(first, *calls, return_exceptions=True)
    assert many < 5 * one + 0.1, f"1.6 MB of SETTINGS: {one:.3f} s with 1 stream open, {many:.3f} s with 64"


async def test_informational_header_blocks_cost_no_more_than_their_decoding() -> None:
    """_fields joins repeated names by building a new string each time (quadratic), and it runs
    on every 1xx block, which a server may send without limit: 1,000 indexed repeats of one field
    (1 kB on the wire, 62 kB decoded, under the 64 KiB list limit) cost ~0.5 ms each, about 10
    times their HPACK decoding. The same blocks on a stream the client dropped are decoded only."""
    fields = [(":status", "100"), *[("a", "x" * 29)] * 1000]
    async with scripted() as (channel, peers):
        _, peer, dropped = await asyncio.wait_for(_open(channel, peers), 5)
        dropped.cancel()
        await asyncio.gather(dropped, return_exceptions=True)
        live = asyncio.create_task(channel.request(BLOCK, b"body", 1000))
        await peer.request(3)
        peer.headers(1, fields)  # the first one indexes the field; the rest are 1 byte a field
        decode_only = on_a_live_stream = float("inf")
        for _ in range(3):  # the best of three each: a stall of the machine is not the client's cost
            blocks = b"".join(frame(HEADERS, 0x4, 1, peer.encoder.encode(fields)) for _ in range(2000))
            decode_only = min(decode_only, await _ping_after(peer, blocks))
            blocks = b"".join(frame(HEADERS, 0x4, 3, peer.encoder.encode(fields)) for _ in range(2000))
            on_a_live_stream = min(on_a_live_stream, await _ping_after(peer, blocks))
        assert not live.done()
        live.cancel()
        await asyncio.gather(live, return_exceptions=True)
    assert on_a_live_stream < 3 * decode_only + 0.1, (
        f"2,000 1xx blocks of 1 kB: decoded only {decode_only:.3f} s, on a live stream {on_a_live_stream:.3f} s"
    )


# -- false positives -----------------------------------------------------------------------------


async def test_a_server_that_reads_and_pings_is_not_cut_off_when_frames_are_large() -> None:
    """_answer counts the whole transport buffer against MAX_CONTROL_BACKLOG, request DATA
    included. With the server's SETTINGS_MAX_FRAME_SIZE at 1 MiB, _send_data appends a 1 MiB
    frame each time the buffer falls under the low-water mark (16 kB), so the buffer is over 1 MiB
    until those last bytes leave; a PING (a BDP ping, a keepalive) or SETTINGS arriving then ends
    the connection with ENHANCE_YOUR_CALM though the server reads everything, and the export fails
    as a protocol violation. Small socket buffers make the drain step by step, as on a slow path."""
    async with scripted() as (channel, peers):
        connection, peer, first = await _open(channel, peers, struct.pack(">HLHL", 5, 1 << 20, 4, MAX_WINDOW))
        peer.send(frame(WINDOW_UPDATE, 0, 0, struct.pack(">L", MAX_WINDOW - 65_535)))
        peer.answer(1)
        await first
        second = asyncio.create_task(channel.request(BLOCK, b"b", 1000))
        await peer.request(3)
        peer.answer(3)
        await second  # stream 3 was opened after our ACK: 1 MiB frames from now on
        assert connection._frame_size == client.MAX_SEND_FRAME
        # small socket buffers on both sides (a slow path to the server): the client's
        # transport buffer drains in small steps, as it would behind a slow link
        assert connection._transport is not None
        connection._transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32768)
        peer.writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
        body = b"y" * (16 << 20)
        call = asyncio.create_task(channel.request(BLOCK, body, 1000))
        await asyncio.sleep(0.2)  # the client fills the socket; the server is a little behind
        received, pending, ended, read = 0, bytearray(), False, 0
        while not ended and not call.done():
            # the first 4 MiB in reads of 16 kB, each followed (once the client had time to
            # write what the read let it) by one PING; then the rest as fast as it comes
            careful = read < 4 << 20
            chunk = await peer.reader.read(16 << 10 if careful else 1 << 20)
            if not chunk:
                break
            read += len(chunk)
            pending += chunk
            if careful:
                await asyncio.sleep(0.002)
                peer.send(frame(PING, 0, 0, b"bdp-ping"))
                await asyncio.sleep(0.002)
            while len(pending) >= 9:
                high, low, kind, flags, stream_id = struct.unpack_from(">BHBBL", pending)
                if len(pending) < 9 + (high << 16 | low):
                    break
                if kind == 0 and stream_id == 5:
                    received += high << 16 | low
                    ended = bool(flags & 1)
                del pending[: 9 + (high << 16 | low)]
        if received == len(body):
            peer.answer(5, b"took it all")
        try:
            answer = await asyncio.wait_for(call, 10)
        except ProtocolViolation as exc:
            pytest.fail(f"the server read {received:,} of {len(body):,} bytes and was cut off: {exc}")
        assert answer.data == b"took it all"
