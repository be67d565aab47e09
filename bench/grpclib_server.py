"""A grpclib server for raw-bytes unary calls with gzip / zstd messages: the bench's stand-in
for the upstream Collector (``bench.sink``), the test upstream (``tests.upstream``) and the
``naive`` and ``transport-libraries`` baselines.

The sidecar's own receiver is ``sidecar.wire.http2``; this is grpclib (h2), an independent
HTTP/2 implementation, which is what the exporter should be tested against. grpclib 0.4.9
raises NotImplementedError on a compressed message and cannot put ``grpc-encoding`` in
headers, so this module adds, without patching grpclib:

- :class:`RawCodec`: hands message bytes through untouched;
- :class:`Server`: keeps each request's headers on its stream (to read ``grpc-encoding``),
  advertises a larger HTTP/2 frame size and sends the writes of one event-loop turn together
  (:class:`CoalescingTransport`);
- :func:`recv_unary` / :func:`send_unary`: the server side of one unary call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from typing import Any

import grpclib.server
from grpclib.const import Status
from grpclib.encoding.base import GRPC_CONTENT_TYPE, CodecBase
from grpclib.exceptions import GRPCError
from grpclib.protocol import H2Protocol
from h2.settings import SettingCodes

from sidecar.export.grpc_client import _PREFIX, ACCEPT_ENCODING, frame_message
from sidecar.wire import compression


class RawCodec(CodecBase):
    """A grpclib codec whose messages are the serialized bytes themselves."""

    __content_subtype__ = "proto"

    def encode(self, message: Any, message_type: Any) -> bytes:
        return bytes(message)

    def decode(self, data: bytes, message_type: Any) -> bytes:
        return data


class _HeaderKeepingHandler(grpclib.server.Handler):
    def accept(self, stream: Any, headers: Any, release_stream: Any) -> None:
        stream.request_headers = headers
        super().accept(stream, headers, release_stream)


class CoalescingTransport:
    """A transport that sends what was written during one event-loop turn in one ``send``.

    grpclib writes a unary response as three writes (headers, message, trailers), plus window
    updates as it reads: a system call each, and on loopback each one also wakes the client.
    Writes keep their order; the rest of the transport API is the wrapped transport's.
    """

    __slots__ = ("_held", "_loop", "_parts", "_scheduled", "_transport")

    #: held bytes that are sent at once: a large write is not worth holding, and the wrapped
    #: transport's flow control (pause_writing) must see the bytes to work
    MAX_HELD = 64 * 1024

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._loop = asyncio.get_running_loop()
        self._parts: list[bytes] = []
        self._held = 0
        self._scheduled = False

    def write(self, data: bytes) -> None:
        if not data:
            return
        self._parts.append(data)
        self._held += len(data)
        if self._held >= self.MAX_HELD:
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush_scheduled)

    def _flush_scheduled(self) -> None:
        self._scheduled = False
        self.flush()

    def flush(self) -> None:
        parts, self._parts, self._held = self._parts, [], 0
        if parts and not self._transport.is_closing():
            self._transport.write(parts[0] if len(parts) == 1 else b"".join(parts))

    def get_write_buffer_size(self) -> int:
        return self._held + self._transport.get_write_buffer_size()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._parts.clear()
        self._held = 0
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _TunedProtocol(H2Protocol):
    max_frame_size = 16384

    def connection_made(self, transport: Any) -> None:
        super().connection_made(CoalescingTransport(transport))
        if self.max_frame_size > 16384:
            # One DATA frame per typical request instead of a dozen: less per-frame CPU in h2.
            # Accept the larger frames at once, not only when the peer ACKs the setting: h2
            # applies an ACK only between reads, and a peer may send its ACK and a large frame
            # in the same TCP segment.
            h2_conn = self.connection._connection
            h2_conn.update_settings({SettingCodes.MAX_FRAME_SIZE: self.max_frame_size})
            h2_conn.max_inbound_frame_size = self.max_frame_size
            self.connection.flush()


class Server(grpclib.server.Server):
    """A grpclib server for raw-bytes handlers that can read request compression."""

    def __init__(
        self,
        handlers: Collection[Any],
        *,
        max_frame_size: int = 1 << 20,
        config: grpclib.server.Configuration | None = None,
    ) -> None:
        super().__init__(handlers, codec=RawCodec(), config=config)
        self._max_frame_size = max_frame_size

    def _protocol_factory(self) -> H2Protocol:
        self.__gc_step__()
        handler = _HeaderKeepingHandler(
            self._mapping, self._codec, self._status_details_codec, self.__dispatch__
        )
        self._handlers.add(handler)
        protocol = _TunedProtocol(handler, self._config, self._h2_config)
        protocol.max_frame_size = self._max_frame_size
        return protocol


def request_header(stream: grpclib.server.Stream[Any, Any], name: str) -> str | None:
    """A request header of a call served by :class:`Server` (e.g. ``grpc-encoding``)."""
    for key, value in getattr(stream._stream, "request_headers", ()):
        if key == name:
            return str(value)
    return None


async def recv_unary(stream: grpclib.server.Stream[Any, Any], limit: int, decompressed_limit: int) -> bytes:
    """Read the one request message of a unary call, decompressed.

    Raises GRPCError: RESOURCE_EXHAUSTED over a limit, INVALID_ARGUMENT for a
    broken frame or compression, UNIMPLEMENTED for an unknown ``grpc-encoding``.
    """
    h2_stream = stream._stream
    prefix = await _read(h2_stream, 5)
    if len(prefix) < 5:
        raise GRPCError(Status.INVALID_ARGUMENT, "request has no complete gRPC message")
    compressed, length = _PREFIX.unpack(prefix)
    if length > limit:
        raise GRPCError(
            Status.RESOURCE_EXHAUSTED,
            f"message of {length} bytes exceeds the limit of {limit} bytes",
        )
    data = await _read(h2_stream, length)
    if len(data) != length:
        raise GRPCError(Status.INVALID_ARGUMENT, f"request message is truncated: {len(data)} of {length} bytes")
    stream._messages_received += 1
    if not compressed:
        if length > decompressed_limit:
            raise GRPCError(Status.RESOURCE_EXHAUSTED, f"message exceeds the limit of {decompressed_limit} bytes")
        return bytes(data)
    try:
        encoding = compression.normalize(request_header(stream, "grpc-encoding"))
    except compression.UnsupportedEncoding as exc:
        raise GRPCError(Status.UNIMPLEMENTED, str(exc)) from None
    if encoding == compression.IDENTITY:
        raise GRPCError(Status.INTERNAL, "compressed flag set without a grpc-encoding")
    try:
        return compression.decompress(encoding, data, decompressed_limit)
    except compression.TooLarge as exc:
        raise GRPCError(Status.RESOURCE_EXHAUSTED, f"decompressed message {exc}") from None
    except compression.DecompressionError as exc:
        raise GRPCError(Status.INVALID_ARGUMENT, str(exc)) from None


async def _read(h2_stream: Any, size: int) -> bytes:
    try:
        return bytes(await h2_stream.recv_data(size))
    except AssertionError:  # grpclib's buffer: the stream ended before ``size`` bytes
        raise GRPCError(Status.INVALID_ARGUMENT, "request stream ended inside a gRPC message") from None


async def send_unary(stream: grpclib.server.Stream[Any, Any], reply: bytes) -> None:
    """Send the reply of a unary call (uncompressed) and advertise our encodings."""
    await stream._stream.send_headers(
        [
            (":status", "200"),
            ("content-type", GRPC_CONTENT_TYPE + "+proto"),
            ("grpc-accept-encoding", ACCEPT_ENCODING),
        ]
    )
    stream._send_initial_metadata_done = True
    await stream._stream.send_data(frame_message(reply, compressed=False))
    stream._send_message_done = True
    stream._messages_sent += 1


def check_encoding_header(stream: grpclib.server.Stream[Any, Any]) -> None:
    """Refuse an unknown ``grpc-encoding`` up front (UNIMPLEMENTED, as gRPC asks)."""
    try:
        compression.normalize(request_header(stream, "grpc-encoding"))
    except compression.UnsupportedEncoding as exc:
        raise GRPCError(Status.UNIMPLEMENTED, str(exc)) from None
