"""What the gRPC server hands its handlers and takes back: calls, errors, limits."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sidecar.masked_text import client_message
from sidecar.overload.budget import Account
from sidecar.overload.config import LimitsConfig

# gRPC status codes used here (the full set is in the gRPC docs: status codes)
INVALID_ARGUMENT, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED = 3, 4, 8
UNIMPLEMENTED, INTERNAL, UNAVAILABLE = 12, 13, 14

PREFIX = struct.Struct(">BL")  # the gRPC message prefix: compressed flag (0 or 1), length
CONTENT_TYPE = "application/grpc+proto"


class GrpcError(Exception):
    """Answer the call with this gRPC status (a code from the gRPC status list) and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = int(status)
        self.message = message


@dataclass(slots=True)
class UnaryCall:
    """One received call: its path, headers (lower-case names, read-only), message, connection,
    and what the server's authorizer returned for it (``context``)."""

    path: str
    headers: Mapping[str, str]
    #: a view of the buffer it was received in (lent with the call), or bytes when it was
    #: copied; valid only until the handler returns: the buffer is then read into again, so a
    #: handler keeps a copy of what it keeps (the pipeline queues the rewrite's own bytes)
    message: bytes | memoryview
    compressed: bool
    transport: asyncio.BaseTransport
    context: Any = None
    #: the connection's share of the receive budget: what the handler makes the sidecar hold
    #: beyond the message (decompressed bytes) is taken from it, and given back by the handler
    account: Account | None = None


Handler = Callable[[UnaryCall], Awaitable[bytes]]
#: told of calls the server refuses before a handler runs: (path, reason)
RefusalListener = Callable[[str, str], None]
#: may refuse a call from its path and connection before its message is read;
#: returns what the call's handler gets as ``UnaryCall.context`` (e.g. the peer), or raises
#: GrpcError to refuse the call
Authorizer = Callable[[str, "asyncio.BaseTransport | None"], Any]


@dataclass(frozen=True, slots=True)
class Limits:
    """What a connection and its calls may take. Timeouts are in seconds, checked about once
    a second (the server's sweeps)."""

    #: a request message as sent (compressed) → RESOURCE_EXHAUSTED
    max_message_bytes: int = 16 << 20
    #: SETTINGS_MAX_FRAME_SIZE advertised
    max_frame_size: int = 1 << 20
    #: SETTINGS_MAX_CONCURRENT_STREAMS advertised and enforced (REFUSED_STREAM)
    max_concurrent_streams: int = 100
    #: SETTINGS_MAX_HEADER_LIST_SIZE, also the bound of one header block as sent
    max_header_list_bytes: int = 64 << 10
    #: the receive window of the connection and of each stream (at least 65535)
    window: int = 4 << 20
    #: open connections; more are answered GOAWAY and closed at once (limits.grpc_max_connections)
    max_connections: int = 512
    #: from connecting to the client's preface and SETTINGS (limits.header_timeout)
    handshake_timeout: float = 10.0
    #: a connection without calls and without traffic is closed (GOAWAY NO_ERROR)
    idle_timeout: float = 75.0
    #: bytes a second a connection must send on average, over a window of ``min_rate_grace``
    #: seconds, while it holds a partial frame or a request being received (0: no minimum)
    min_receive_rate: int = 1024
    min_rate_grace: float = 5.0
    #: from a request's headers to its last byte; also the longest one frame may take to arrive
    request_deadline: float = 60.0
    #: a call whose request stops arriving, or whose answer the client stops taking (flow
    #: control, or not reading at all), is ended
    stall_timeout: float = 30.0
    #: answer bytes a connection may leave waiting (for window, or in the socket because the
    #: client does not read) for longer than ``min_rate_grace`` before it is closed
    max_outbound_bytes: int = 1 << 20
    #: after our GOAWAY, seconds to discard what the client still sends (our side half-closed)
    #: before closing, so the GOAWAY is not lost to a TCP reset (as the HTTP/1 listener lingers)
    linger_timeout: float = 2.0
    #: receive buffers the server keeps for the next large messages once their calls are done
    #: (bytes in all; at most eight buffers; each dropped after ``pool_idle`` seconds unused)
    pool_bytes: int = 8 << 20
    pool_idle: float = 5.0

    def __post_init__(self) -> None:
        if self.window < 65_535:
            raise ValueError("the receive window cannot be below HTTP/2's initial 65535 bytes")

    @classmethod
    def from_config(
        cls, limits: LimitsConfig, max_message_bytes: int, max_frame_size: int, max_connections: int
    ) -> Limits:
        """From the ``limits`` config section (sidecar.overload.LimitsConfig) and the receiver's sizes."""
        return cls(
            max_message_bytes=max_message_bytes,
            max_frame_size=max_frame_size,
            max_connections=max_connections,
            handshake_timeout=limits.header_timeout,
            idle_timeout=limits.idle_timeout,
            min_receive_rate=limits.min_receive_rate,
            min_rate_grace=limits.min_rate_grace,
            request_deadline=limits.request_deadline,
            max_concurrent_streams=limits.grpc_max_concurrent_streams,
            max_header_list_bytes=limits.grpc_max_header_list_bytes,
            window=limits.grpc_window_bytes,
            stall_timeout=limits.grpc_stall_timeout,
            max_outbound_bytes=limits.grpc_max_outbound_bytes,
        )


def grpc_message_text(message: str) -> str:
    """``grpc-message`` as sent: card numbers masked, UTF-8, at most 1 KiB of it (whole
    characters), every byte outside printable ASCII and ``%`` itself percent-encoded."""
    raw = client_message(message).encode("utf-8")
    out = []
    for byte in raw:
        out.append(chr(byte) if 0x20 <= byte <= 0x7E and byte != 0x25 else f"%{byte:02X}")
    return "".join(out)


def is_grpc_content_type(content_type: str) -> bool:
    return content_type == "application/grpc" or content_type.startswith(("application/grpc+", "application/grpc;"))
