"""Lean OTLP load clients for the benchmark: pre-built bytes on raw connections.

A general-purpose client (aiohttp, grpclib) spends more CPU per 512-span request than the
sidecar does, so on a 2-core machine it, not the sidecar, would be measured. These clients
send pre-built requests in turn, again and again, and read just enough of each answer to know
its status:

- :class:`HttpConnection`: HTTP/1.1 keep-alive, one request in flight per connection;
- :class:`GrpcConnection`: HTTP/2 with HPACK literals (no compression state to keep on the
  sending side), many calls in flight per connection, flow control both ways, and the
  ``grpc-status`` of each call decoded from its trailers.

Both are benchmark tools, not general clients: they assume a well-behaved server.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import hpack

#: HTTP/2 frame types and flags used here
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0, 1, 3, 4, 6, 7, 8, 9
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#: our receive window: large, so the server never waits for us
OUR_WINDOW = 1 << 30
#: longest wait for one answer: a benchmark run never hangs on a lost one
CALL_TIMEOUT = 30.0
_FRAME_HEADER = struct.Struct(">BHBBI")  # length (24 bits as 8 + 16), type, flags, stream id


class CallFailed(Exception):
    """The server answered with an error: ``status`` is the HTTP status or the gRPC status code."""

    def __init__(self, status: int, retryable: bool) -> None:
        super().__init__(status)
        self.status = status
        self.retryable = retryable


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return _FRAME_HEADER.pack(n >> 16, n & 0xFFFF, kind, flags, stream_id) + payload


def literal_headers(headers: list[tuple[str, str]]) -> bytes:
    """An HPACK block of literals without indexing: valid for any decoder state."""
    out = bytearray()
    for name, value in headers:
        out.append(0)
        for text in (name.encode(), value.encode()):
            out += _hpack_int(len(text)) + text
    return bytes(out)


def _hpack_int(n: int) -> bytes:
    """HPACK integer with a 7-bit prefix (string lengths, Huffman bit clear)."""
    if n < 127:
        return bytes([n])
    out = bytearray([127])
    n -= 127
    while n >= 128:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


class HttpConnection(asyncio.Protocol):
    """OTLP/HTTP: one pre-built POST at a time on a keep-alive connection."""

    def __init__(self, host: str, port: int, path: str, bodies: list[bytes], start: int = 0) -> None:
        self._requests = [
            (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/x-protobuf\r\n"
             f"Content-Length: {len(body)}\r\n\r\n").encode() + body
            for body in bodies
        ]
        self._sent = start  # which body comes first: see connect()
        self._buffer = bytearray()
        self._waiter: asyncio.Future[int] | None = None
        self._transport: asyncio.Transport | None = None
        self._closed: Exception | None = None

    def connection_made(self, transport: Any) -> None:
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = exc or ConnectionError("connection closed by the server")
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(self._closed)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0 or self._waiter is None:
            return
        head = bytes(self._buffer[:end]).decode("latin-1").split("\r\n")
        length = 0
        for line in head[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        if len(self._buffer) < end + 4 + length:
            return
        del self._buffer[:end + 4 + length]
        if not self._waiter.done():
            self._waiter.set_result(int(head[0].split()[1]))

    async def call(self) -> None:
        if self._closed is not None:
            raise self._closed
        assert self._transport is not None
        self._waiter = asyncio.get_running_loop().create_future()
        self._transport.write(self._requests[self._sent % len(self._requests)])
        self._sent += 1
        status = await asyncio.wait_for(self._waiter, CALL_TIMEOUT)
        if status != 200:
            raise CallFailed(status, status in (429, 502, 503, 504))

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class GrpcConnection(asyncio.Protocol):
    """OTLP/gRPC: unary calls of one pre-built message, many in flight on one connection."""

    def __init__(self, host: str, port: int, path: str, messages: list[bytes], start: int = 0) -> None:
        self._start = start  # which message comes first: see connect()
        self._headers = literal_headers([
            (":method", "POST"), (":scheme", "http"), (":path", path), (":authority", f"{host}:{port}"),
            ("content-type", "application/grpc"), ("te", "trailers"),
        ])
        self._bodies = [b"\x00" + struct.pack(">I", len(message)) + message for message in messages]
        self._decoder = hpack.Decoder()
        self._decoder.max_allowed_table_size = 1 << 16
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._next_id = 1
        self._calls: dict[int, asyncio.Future[int]] = {}
        self._status: dict[int, int] = {}
        self._block: dict[int, tuple[bytearray, bool]] = {}  # header block being received, END_STREAM
        self._max_frame = 16384
        self._send_window = 65535  # connection
        self._initial_window = 65535  # per stream, from the server's SETTINGS
        self._stream_windows: dict[int, int] = {}
        self._pending: dict[int, memoryview] = {}  # body bytes still to send, per stream
        self._closed: Exception | None = None

    def connection_made(self, transport: Any) -> None:
        self._transport = transport
        settings = struct.pack(">HI", 0x4, OUR_WINDOW - 1) + struct.pack(">HI", 0x2, 0)  # window, no push
        transport.write(PREFACE + frame(SETTINGS, 0, 0, settings)
                        + frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", OUR_WINDOW - 65535)))

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = exc or ConnectionError("connection closed")
        for waiter in self._calls.values():
            if not waiter.done():
                waiter.set_exception(self._closed)

    async def call(self) -> None:
        if self._closed is not None:
            raise self._closed
        if self._next_id >= 1 << 31:
            raise ConnectionError("the server sent GOAWAY")
        assert self._transport is not None
        stream_id = self._next_id
        self._next_id += 2
        waiter = self._calls[stream_id] = asyncio.get_running_loop().create_future()
        self._stream_windows[stream_id] = self._initial_window
        self._pending[stream_id] = memoryview(self._bodies[(self._start + (stream_id >> 1)) % len(self._bodies)])
        self._transport.write(frame(HEADERS, END_HEADERS, stream_id, self._headers))
        self._send_pending()
        try:
            status = await asyncio.wait_for(waiter, CALL_TIMEOUT)
        finally:
            self._calls.pop(stream_id, None)
        if status != 0:
            raise CallFailed(status, status in (14, 8))  # UNAVAILABLE, RESOURCE_EXHAUSTED

    def _send_pending(self) -> None:
        assert self._transport is not None
        out = []
        for stream_id in list(self._pending):
            rest = self._pending[stream_id]
            while rest and self._send_window > 0 and self._stream_windows.get(stream_id, 0) > 0:
                n = min(len(rest), self._max_frame, self._send_window, self._stream_windows[stream_id])
                last = n == len(rest)
                out.append(frame(DATA, END_STREAM if last else 0, stream_id, bytes(rest[:n])))
                rest = rest[n:]
                self._send_window -= n
                self._stream_windows[stream_id] -= n
            if rest:
                self._pending[stream_id] = rest
            else:
                del self._pending[stream_id]
                self._stream_windows.pop(stream_id, None)
        if out:
            self._transport.write(b"".join(out))

    def data_received(self, data: bytes) -> None:
        buf = self._buffer
        buf += data
        replies = []
        while len(buf) >= 9:
            high, low, kind, flags, stream_id = _FRAME_HEADER.unpack_from(buf)
            length = high << 16 | low
            stream_id &= 0x7FFFFFFF
            if len(buf) < 9 + length:
                break
            payload = bytes(buf[9:9 + length])
            del buf[:9 + length]
            if kind == SETTINGS and not flags & ACK:
                self._apply_settings(payload)
                replies.append(frame(SETTINGS, ACK, 0))
            elif kind == WINDOW_UPDATE:
                increment = struct.unpack(">I", payload)[0] & 0x7FFFFFFF
                if stream_id == 0:
                    self._send_window += increment
                elif stream_id in self._stream_windows:
                    self._stream_windows[stream_id] += increment
            elif kind == PING and not flags & ACK:
                replies.append(frame(PING, ACK, 0, payload))
            elif kind in (HEADERS, CONTINUATION):
                if kind == HEADERS:
                    self._block[stream_id] = (bytearray(_strip_padding(payload, flags)), bool(flags & END_STREAM))
                else:
                    self._block[stream_id][0].extend(payload)
                if flags & END_HEADERS:
                    block, end_stream = self._block.pop(stream_id)
                    self._headers_done(stream_id, bytes(block), end_stream)
            elif kind == DATA and flags & END_STREAM:
                self._finish(stream_id)
            elif kind == RST_STREAM:
                self._finish(stream_id, forced=14)
            elif kind == GOAWAY:
                # streams up to the last one the server names are still answered
                last = struct.unpack_from(">I", payload)[0] & 0x7FFFFFFF
                self._next_id = max(self._next_id, 1 << 31)  # no new calls on this connection
                for stream_id, waiter in list(self._calls.items()):
                    if stream_id > last and not waiter.done():
                        waiter.set_exception(ConnectionError("GOAWAY"))
        if replies and self._transport is not None:
            self._transport.write(b"".join(replies))
        if self._pending:
            self._send_pending()

    def _apply_settings(self, payload: bytes) -> None:
        for offset in range(0, len(payload) - 5, 6):
            key, value = struct.unpack_from(">HI", payload, offset)
            if key == 0x5:
                self._max_frame = value
            elif key == 0x4:
                delta = value - self._initial_window
                self._initial_window = value
                for stream_id in self._stream_windows:
                    self._stream_windows[stream_id] += delta

    def _headers_done(self, stream_id: int, block: bytes, end_stream: bool) -> None:
        for name, value in self._decoder.decode(block, raw=True):
            if name == b"grpc-status":
                self._status[stream_id] = int(value)
            elif name == b":status" and value != b"200":
                self._status[stream_id] = 14 if value in (b"502", b"503", b"504") else 2
        if end_stream:
            self._finish(stream_id)

    def _finish(self, stream_id: int, forced: int | None = None) -> None:
        waiter = self._calls.get(stream_id)
        self._pending.pop(stream_id, None)
        self._stream_windows.pop(stream_id, None)
        status = forced if forced is not None else self._status.pop(stream_id, 2)
        if waiter is not None and not waiter.done():
            waiter.set_result(status)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


def _strip_padding(payload: bytes, flags: int) -> bytes:
    start, end = 0, len(payload)
    if flags & 0x8:  # PADDED
        start, end = 1, end - payload[0]
    if flags & 0x20:  # PRIORITY
        start += 5
    return payload[start:end]


async def connect(transport: str, host: str, port: int, path: str,
                  bodies: list[bytes], start: int = 0) -> HttpConnection | GrpcConnection:
    """A connection that sends ``bodies`` (request messages) in turn, from ``bodies[start]``.

    Connections sending at once should start far apart: the target merges what arrives at the
    same time into one export batch, and the same body twice in a batch compresses to almost
    nothing the second time (zstd finds it whole in its window), which no app's requests do.
    """
    loop = asyncio.get_running_loop()
    factory = HttpConnection if transport == "http" else GrpcConnection
    _, protocol = await loop.create_connection(lambda: factory(host, port, path, bodies, start), host, port)
    return protocol
