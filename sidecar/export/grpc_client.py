"""The exporter's gRPC client on grpclib: raw-bytes unary calls with gzip / zstd messages.

Used by :mod:`sidecar.export.grpc` (and by tests as a plain gRPC client).

grpclib 0.4.9 raises NotImplementedError on a compressed message and cannot put
``grpc-encoding`` in headers (its metadata API reserves ``grpc-*``). The Collector accepts
and sends compressed messages, so this module adds, without patching grpclib:

- :func:`call_unary`: one call, compressing the request and decompressing the reply;
- :func:`call_framed`: the same with a message already framed (and compressed);
- a cheaper ``repr`` of received DATA frames (same text, without serializing the body), which
  h2 builds for each frame.

The receiver side is ``sidecar.wire.http2``, our own HTTP/2 server; this client stays on
grpclib and h2.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Mapping
from typing import Any

import grpclib.client
import grpclib.server
from grpclib.const import Status
from grpclib.encoding.base import GRPC_CONTENT_TYPE
from grpclib.exceptions import StreamTerminatedError
from grpclib.metadata import Deadline, decode_grpc_message, encode_timeout
from grpclib.utils import Wrapper
from hyperframe import frame as hyperframe_frame

from sidecar.export.compress import Payload, compress_async
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

    raw_data_repr.otlp_sidecar_cheap = True  # type: ignore[attr-defined]  # a mark: patched once per process
    hyperframe_frame._raw_data_repr = raw_data_repr
    # a DataFrame-only override of Frame._body_repr, assigned on the class at import
    hyperframe_frame.DataFrame._body_repr = data_body_repr  # type: ignore[method-assign, assignment]


_cheap_frame_reprs()
_PREFIX = struct.Struct(">?I")


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
    payload: Payload,
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
    body = await compress_async(encoding, payload, level)
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
        # bytes in, so bytes out (bytes() of bytes is the same object, no copy)
        reply = bytes(compression.decompress(compression.normalize(response.get("grpc-encoding")), reply, reply_limit))
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
