"""The exporter's gRPC calls: raw-bytes unary calls with gzip / zstd messages.

Used by :mod:`sidecar.export.grpc` (and by tests as a plain gRPC client) on
:class:`sidecar.wire.http2.client.Channel`, our own HTTP/2 client (grpclib's h2 cost as much CPU
per export as the rest of sending it; docs/performance.md):

- :func:`call_unary`: one call, compressing the request and decompressing the reply;
- :func:`call_framed`: the same with a message already framed (and compressed).

A call's failure is a :class:`CallError` with its gRPC status: the server's, or UNAVAILABLE for
a connection that failed or ended, DEADLINE_EXCEEDED for a timeout.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Mapping, Sequence
from urllib.parse import unquote

from grpclib.const import Status

from sidecar.export.compress import Payload, compress_parts_async
from sidecar.wire import compression
from sidecar.wire.http2.client import Channel, ProtocolViolation, ReplyTooLarge, Response
from sidecar.wire.http2.frames import header_block

__all__ = ["CallError", "Channel", "call_framed", "call_unary", "frame_message"]

ACCEPT_ENCODING = ",".join((compression.IDENTITY, *compression.ENCODINGS))
_PREFIX = struct.Struct(">?I")


class CallError(Exception):
    """An export call failed. ``status`` is the gRPC status (UNAVAILABLE for transport errors)."""

    def __init__(self, status: Status, message: str, trailers: Mapping[str, str] | None = None) -> None:
        super().__init__(f"{status.name}: {message}")
        self.status = status
        self.message = message
        self.trailers = dict(trailers or {})


async def call_unary(
    channel: Channel,
    path: str,
    payload: Payload,
    *,
    encoding: str = compression.IDENTITY,
    level: int = compression.DEFAULT_LEVEL,
    compress_in: str = "auto",
    timeout: float,
    metadata: Mapping[str, str] | None = None,
    reply_limit: int = 4 << 20,
) -> bytes:
    """One unary call on ``channel`` with a request compressed at ``level`` (where:
    ``compress_in``, see :func:`sidecar.export.compress.compress_async`); returns the reply bytes.

    Raises CallError with the call's status on any failure, transport errors as
    UNAVAILABLE and a timeout as DEADLINE_EXCEEDED.
    """
    # the prefix joined to the compressor's pieces: the compressed batch is copied once
    body = await compress_parts_async(encoding, payload, level, compress_in)
    frame = frame_message(body, compressed=encoding != compression.IDENTITY)
    return await call_framed(
        channel, path, frame, encoding=encoding, timeout=timeout, metadata=metadata, reply_limit=reply_limit
    )


async def call_framed(
    channel: Channel,
    path: str,
    frame: bytes,
    *,
    encoding: str,
    timeout: float,
    metadata: Mapping[str, str] | None = None,
    reply_limit: int = 4 << 20,
) -> bytes:
    """Send an already framed message (prefix and body) with ``grpc-encoding: encoding``."""
    block = request_headers(channel, path, encoding, timeout, metadata or {})
    try:
        async with asyncio.timeout(timeout):
            # the limit leaves room for the prefix: the message itself is checked against reply_limit
            response = await channel.request(block, frame, reply_limit + _PREFIX.size)
    except TimeoutError:
        raise CallError(Status.DEADLINE_EXCEEDED, f"no answer within {timeout:g} s") from None
    except OSError as exc:  # ConnectionError (the connection failed, ended or reset the stream), TLS
        # the cause stays attached: a TLS failure is named from it
        raise CallError(Status.UNAVAILABLE, f"connection failed: {exc}") from exc
    except ProtocolViolation as exc:
        raise CallError(Status.UNAVAILABLE, f"HTTP/2 protocol error: {exc}") from None
    except ReplyTooLarge as exc:
        raise CallError(Status.RESOURCE_EXHAUSTED, f"reply too large: {exc}") from None
    try:
        return _reply(response, reply_limit)
    except (compression.DecompressionError, compression.UnsupportedEncoding, compression.TooLarge) as exc:
        raise CallError(Status.INTERNAL, f"bad reply: {exc}") from None


def frame_message(body: bytes | Sequence[bytes], *, compressed: bool) -> bytes:
    """The gRPC length-prefixed message: a compressed flag, a big-endian length, the body (given
    whole or in pieces: joined once with the prefix)."""
    if isinstance(body, bytes):
        return _PREFIX.pack(compressed, len(body)) + body
    return b"".join((_PREFIX.pack(compressed, sum(len(piece) for piece in body)), *body))


def request_headers(
    channel: Channel, path: str, encoding: str, timeout: float, metadata: Mapping[str, str]
) -> bytes:
    """The request's HPACK header block (literals: the server's table is never used)."""
    headers = [
        (":method", "POST"),
        (":scheme", channel.scheme),
        (":path", path),
        (":authority", channel.authority),
        ("grpc-timeout", encode_timeout(timeout)),
        ("te", "trailers"),
        ("content-type", "application/grpc"),
        ("user-agent", "otlp-sidecar"),
        ("grpc-accept-encoding", ACCEPT_ENCODING),
    ]
    if encoding != compression.IDENTITY:
        headers.append(("grpc-encoding", encoding))
    headers.extend((key.lower(), value) for key, value in metadata.items())
    return header_block(headers)


def encode_timeout(seconds: float) -> str:
    """``grpc-timeout``: at most 8 digits and a unit (the gRPC over HTTP/2 spec)."""
    if seconds > 10:
        return f"{min(int(seconds), 99_999_999)}S"
    if seconds > 0.01:
        return f"{int(seconds * 1e3)}m"
    if seconds > 0.00001:
        return f"{int(seconds * 1e6)}u"
    return f"{max(0, int(seconds * 1e9))}n"


def _reply(response: Response, reply_limit: int) -> bytes:
    """The reply message of a complete answer, decompressed; CallError for a failed call."""
    headers = response.headers
    if headers.get(":status") != "200":
        status = _status_from_http(headers.get(":status", ""))
        raise CallError(status, f"upstream answered HTTP {headers.get(':status')}", headers)
    if "grpc-status" in headers:  # trailers-only response
        _raise_for_status(headers)
        raise CallError(Status.INTERNAL, "upstream sent no reply message")
    _raise_for_status(response.trailers)
    data = response.data
    if len(data) < _PREFIX.size:
        return b""
    compressed, length = _PREFIX.unpack_from(data)
    if length > reply_limit:
        raise CallError(Status.RESOURCE_EXHAUSTED, f"reply of {length} bytes is too large")
    if len(data) != _PREFIX.size + length:
        raise CallError(Status.INTERNAL, "the reply is not one length-prefixed message")
    reply = data[_PREFIX.size :]
    if compressed:
        # bytes in, so bytes out (bytes() of bytes is the same object, no copy)
        reply = bytes(compression.decompress(compression.normalize(headers.get("grpc-encoding")), reply, reply_limit))
    return reply


def _raise_for_status(headers: Mapping[str, str]) -> None:
    raw = headers.get("grpc-status")
    try:
        status = Status(int(raw)) if raw is not None else Status.UNKNOWN
    except ValueError:
        status = Status.UNKNOWN
    if status is not Status.OK:
        message = unquote(headers.get("grpc-message", ""), errors="replace") or status.name
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
