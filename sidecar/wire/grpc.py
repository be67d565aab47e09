"""Our extension of grpclib: raw-bytes unary calls with gzip / zstd message compression.

grpclib 0.4.9 raises NotImplementedError on a compressed message and cannot put
``grpc-encoding`` in headers (its metadata API reserves ``grpc-*``). OTLP
clients send gzip on gRPC when configured to, and the Collector does by default,
so this module adds, without patching grpclib:

- :class:`RawCodec`: hands message bytes through untouched (the rewriter works
  on bytes, never on a decoded object tree);
- :class:`Server`: a grpclib server that keeps each request's headers on its
  stream (to read ``grpc-encoding``), advertises a larger HTTP/2 frame size and sends the
  writes of one event-loop turn together (:class:`CoalescingTransport`);
- :func:`recv_unary` / :func:`send_unary`: the server side of one unary call,
  decompressing the request and advertising ``grpc-accept-encoding``;
- :func:`call_unary`: the client side, compressing the request and
  decompressing the reply, for the exporter;
- a cheaper ``repr`` of received DATA frames (same text, without serializing the body), which
  h2 builds for each frame.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Collection, Mapping
from typing import Any

import grpclib.client
import grpclib.server
from grpclib.const import Status
from grpclib.encoding.base import GRPC_CONTENT_TYPE, CodecBase
from grpclib.exceptions import GRPCError, StreamTerminatedError
from grpclib.metadata import Deadline, decode_grpc_message, encode_timeout
from grpclib.protocol import H2Protocol
from grpclib.utils import Wrapper
from h2.settings import SettingCodes
from hyperframe import frame as hyperframe_frame

from sidecar.wire import compression

ACCEPT_ENCODING = ",".join((compression.IDENTITY, *compression.ENCODINGS))


def _cheap_frame_reprs() -> None:
    """h2 builds ``repr(frame)`` for every frame it receives, logged or not; for a DATA frame
    hyperframe serializes the whole body (a copy), hex-dumps it and then keeps 20 characters
    (about 0.3 us a span on the gRPC receive path). Serialize and dump only the bytes whose hex
    is kept: the text is identical."""
    original = hyperframe_frame._raw_data_repr
    if getattr(original, "otlp_sidecar_cheap", False):
        return

    def raw_data_repr(data: bytes | None) -> str:
        # 11 bytes give 22 hex digits: still more than the 20 kept, so the "..." stays
        return original(data[:11] if data and len(data) > 11 else data)

    def data_body_repr(self: hyperframe_frame.DataFrame) -> str:
        # the first 11 bytes of serialize_body(): pad length, data, padding zeros
        head = self.serialize_padding_data() + bytes(self.data[:11]) + b"\0" * min(self.pad_length, 11)
        return raw_data_repr(head[:11])

    raw_data_repr.otlp_sidecar_cheap = True  # type: ignore[attr-defined]
    hyperframe_frame._raw_data_repr = raw_data_repr
    hyperframe_frame.DataFrame._body_repr = data_body_repr  # type: ignore[method-assign]


_cheap_frame_reprs()
_PREFIX = struct.Struct(">?I")


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


class CallError(Exception):
    """An export call failed. ``status`` is the gRPC status (UNAVAILABLE for transport errors)."""

    def __init__(self, status: Status, message: str, trailers: Mapping[str, str] | None = None) -> None:
        super().__init__(f"{status.name}: {message}")
        self.status = status
        self.message = message
        self.trailers = dict(trailers or {})


async def call_unary(
    channel: grpclib.client.Channel,
    path: str,
    payload: bytes,
    *,
    encoding: str = compression.IDENTITY,
    level: int = compression.DEFAULT_LEVEL,
    timeout: float,
    metadata: Mapping[str, str] | None = None,
    reply_limit: int = 4 << 20,
) -> bytes:
    """One unary call on ``channel`` with a request compressed at ``level``; returns the reply bytes.

    Raises CallError with the call's status on any failure, transport errors as
    UNAVAILABLE and a timeout as DEADLINE_EXCEEDED.
    """
    body = await compression.compress_async(encoding, payload, level)
    frame = frame_message(body, compressed=encoding != compression.IDENTITY)
    return await call_framed(
        channel, path, frame, encoding=encoding, timeout=timeout, metadata=metadata, reply_limit=reply_limit
    )


async def call_framed(
    channel: grpclib.client.Channel,
    path: str,
    frame: bytes,
    *,
    encoding: str,
    timeout: float,
    metadata: Mapping[str, str] | None = None,
    reply_limit: int = 4 << 20,
) -> bytes:
    """Send an already framed message (prefix and body) with ``grpc-encoding: encoding``."""
    try:
        async with asyncio.timeout(timeout):
            return await _call(channel, path, frame, encoding, timeout, metadata or {}, reply_limit)
    except TimeoutError:
        raise CallError(Status.DEADLINE_EXCEEDED, f"no answer within {timeout:g} s") from None
    except (StreamTerminatedError, ConnectionError, OSError) as exc:
        # the cause stays attached: a TLS failure is named from it
        raise CallError(Status.UNAVAILABLE, f"connection failed: {exc}") from exc
    except grpclib.exceptions.ProtocolError as exc:
        raise CallError(Status.UNAVAILABLE, f"HTTP/2 protocol error: {exc}") from None


def frame_message(body: bytes, *, compressed: bool) -> bytes:
    """The gRPC length-prefixed message: a compressed flag, a big-endian length, the body."""
    return _PREFIX.pack(compressed, len(body)) + body


async def _call(
    channel: grpclib.client.Channel,
    path: str,
    frame: bytes,
    encoding: str,
    timeout: float,
    metadata: Mapping[str, str],
    reply_limit: int,
) -> bytes:
    protocol = await channel.__connect__()
    # the wrapper wakes this task with StreamTerminatedError when the connection is lost
    wrapper = Wrapper()
    h2_stream = protocol.processor.connection.create_stream(wrapper=wrapper)
    headers = _request_headers(channel, path, encoding, timeout, metadata)
    with wrapper:
        release = await h2_stream.send_request(headers, _processor=protocol.processor)
        done = False
        try:
            await h2_stream.send_data(frame, end_stream=True)
            response = dict(await h2_stream.recv_headers())
            reply = await _read_reply(h2_stream, response, reply_limit)
            trailers = dict(await h2_stream.recv_trailers())
            done = True
            _raise_for_status(trailers)
            return reply
        except (compression.DecompressionError, compression.UnsupportedEncoding, compression.TooLarge) as exc:
            raise CallError(Status.INTERNAL, f"bad reply: {exc}") from None
        finally:
            if not done and h2_stream.closable:
                h2_stream.reset_nowait()
            release()


def _request_headers(
    channel: grpclib.client.Channel, path: str, encoding: str, timeout: float, metadata: Mapping[str, str]
) -> list[tuple[str, str]]:
    headers = [
        (":method", "POST"),
        (":scheme", channel._scheme),
        (":path", path),
        (":authority", channel._authority),
        ("grpc-timeout", encode_timeout(Deadline.from_timeout(timeout).time_remaining())),
        ("te", "trailers"),
        ("content-type", GRPC_CONTENT_TYPE),
        ("user-agent", "otlp-sidecar"),
        ("grpc-accept-encoding", ACCEPT_ENCODING),
    ]
    if encoding != compression.IDENTITY:
        headers.append(("grpc-encoding", encoding))
    headers.extend((key.lower(), value) for key, value in metadata.items())
    return headers


async def _read_reply(h2_stream: Any, response: Mapping[str, str], reply_limit: int) -> bytes:
    """The reply message after the response headers, decompressed; CallError for a failed call."""
    if response.get(":status") != "200":
        status = _status_from_http(response.get(":status", ""))
        raise CallError(status, f"upstream answered HTTP {response.get(':status')}", response)
    if "grpc-status" in response:  # trailers-only response
        _raise_for_status(response)
        raise CallError(Status.INTERNAL, "upstream sent no reply message")
    prefix = await h2_stream.recv_data(5)
    if len(prefix) < 5:
        return b""
    compressed, length = _PREFIX.unpack(prefix)
    if length > reply_limit:
        raise CallError(Status.RESOURCE_EXHAUSTED, f"reply of {length} bytes is too large")
    reply = bytes(await h2_stream.recv_data(length))
    if compressed:
        reply = compression.decompress(compression.normalize(response.get("grpc-encoding")), reply, reply_limit)
    return reply


def _raise_for_status(headers: Mapping[str, str]) -> None:
    raw = headers.get("grpc-status")
    try:
        status = Status(int(raw)) if raw is not None else Status.UNKNOWN
    except ValueError:
        status = Status.UNKNOWN
    if status is not Status.OK:
        message = decode_grpc_message(headers.get("grpc-message", "")) or status.name
        raise CallError(status, message, headers)


def _status_from_http(code: str) -> Status:
    # gRPC's HTTP-to-status mapping for responses that are not gRPC
    return {
        "400": Status.INTERNAL,
        "401": Status.UNAUTHENTICATED,
        "403": Status.PERMISSION_DENIED,
        "404": Status.UNIMPLEMENTED,
        "429": Status.UNAVAILABLE,
        "502": Status.UNAVAILABLE,
        "503": Status.UNAVAILABLE,
        "504": Status.UNAVAILABLE,
    }.get(code, Status.UNKNOWN)


async def close_gracefully(server: grpclib.server.Server, grace: float) -> None:
    """Stop listening, give calls in flight up to ``grace`` seconds to finish, then close."""
    listener = server._server
    if listener is not None:
        listener.close()
    deadline = asyncio.get_running_loop().time() + grace
    while asyncio.get_running_loop().time() < deadline:
        busy = [t for h in server._handlers for t in h._tasks.values() if not t.done()]
        if not busy:
            break
        await asyncio.wait(busy, timeout=max(0.0, deadline - asyncio.get_running_loop().time()))
    server.close()
    await server.wait_closed()
