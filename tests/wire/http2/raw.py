"""A raw HTTP/2 client for tests: writes frames exactly as given and reads what the server sends.

Used where a test needs control of frames, windows or header compression that real clients
(grpcio, grpclib) do not give: the HTTP/2 server's own tests, the bounds attacks, the receivers.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import hpack

from sidecar.export.grpc_client import frame_message
from sidecar.wire.http2.connection import FIELD_OVERHEAD
from sidecar.wire.http2.frames import PREFACE

__all__ = [
    "CONTINUATION", "DATA", "GOAWAY", "HEAD", "HEADERS", "PATH", "PING", "PREFACE", "PRIORITY", "PUSH_PROMISE",
    "RST_STREAM", "SETTINGS", "WINDOW_UPDATE", "Raw", "frame", "request_headers",
]

PATH = "/test.Echo/Call"

HEAD = struct.Struct(">BHBBL")
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return HEAD.pack(len(payload) >> 16, len(payload) & 0xFFFF, kind, flags, stream_id) + payload


def request_headers(path: str = PATH, **extra: str) -> list[tuple[str, str]]:
    headers = [(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", "test"),
               ("content-type", "application/grpc"), ("te", "trailers")]
    return headers + [(k.replace("_", "-"), v) for k, v in extra.items()]


def fields_held(server: Any) -> int:
    """What the open calls' decoded header fields hold of the receive budget (a block decoded
    for the call; 0 for one shared from the connection's cache of indexed blocks)."""
    return sum(stream.fields_held for connection in server.connections for stream in connection._streams.values())


def fields_charge(headers: list[tuple[str, str]]) -> int:
    """What a call's fields take from the budget when its block is decoded for it."""
    return sum(len(name) + len(value) + FIELD_OVERHEAD for name, value in headers)


class Raw:
    """A client that writes frames as given and reads what comes back."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()

    @classmethod
    @asynccontextmanager
    async def open(cls, port: int, *, handshake: bool = True) -> AsyncIterator[Raw]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer)
        if handshake:  # with windows large enough for every answer in these tests
            client.send(PREFACE + frame(SETTINGS, 0, 0, struct.pack(">HL", 4, 1 << 24)))
            client.send(frame(WINDOW_UPDATE, 0, 0, struct.pack(">L", 1 << 24)))
        try:
            yield client
        finally:
            writer.close()

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    def headers(self, stream_id: int, headers: list[tuple[str, str]], flags: int = 0x4) -> None:
        self.send(frame(HEADERS, flags, stream_id, self.encoder.encode(headers)))

    def call(self, stream_id: int, message: bytes, path: str = PATH) -> None:
        self.headers(stream_id, request_headers(path))
        self.send(frame(DATA, 0x1, stream_id, frame_message(message, compressed=False)))

    async def read_frame(self, timeout: float = 5.0) -> tuple[int, int, int, bytes] | None:
        """The next frame, or None when the server closed the connection."""
        try:
            head = await asyncio.wait_for(self.reader.readexactly(9), timeout)
        except asyncio.IncompleteReadError:
            return None
        high, low, kind, flags, stream_id = HEAD.unpack(head)
        payload = await self.reader.readexactly((high << 16) | low)
        return kind, flags, stream_id & 0x7FFFFFFF, payload

    async def until(self, kind: int, stream_id: int | None = None) -> tuple[int, int, int, bytes]:
        while True:
            got = await self.read_frame()
            assert got is not None, f"connection closed before a frame of type {kind}"
            if got[0] == kind and (stream_id is None or got[2] == stream_id):
                return got

    async def answer(self, stream_id: int) -> tuple[dict[str, str], bytes]:
        """Headers (trailers merged in) and message of one call's answer."""
        fields: dict[str, str] = {}
        message = b""
        while True:
            kind, flags, _sid, payload = await self.until_any(stream_id)
            if kind == HEADERS:
                fields.update(self.decoder.decode(payload))
            elif kind == DATA:
                message += payload
            elif kind == RST_STREAM:
                fields["rst"] = str(struct.unpack(">L", payload)[0])
                return fields, message[5:]
            if flags & 0x1:
                return fields, message[5:]

    async def until_any(self, stream_id: int, timeout: float = 5.0) -> tuple[int, int, int, bytes]:
        while True:
            got = await self.read_frame(timeout)
            assert got is not None, "connection closed before the answer"
            if got[2] == stream_id:
                return got

    async def goaway(self) -> tuple[int, bytes]:
        """The GOAWAY error code and debug text; then the connection must close."""
        _, _, _, payload = await self.until(GOAWAY)
        _, code = struct.unpack(">LL", payload[:8])
        while await self.read_frame() is not None:
            pass
        return code, payload[8:]
