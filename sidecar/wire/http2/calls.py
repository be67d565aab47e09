"""What the gRPC server hands its handlers and takes back: calls, errors, limits."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

# gRPC status codes used here (the full set is in the gRPC docs: status codes)
OK, UNKNOWN, INVALID_ARGUMENT, RESOURCE_EXHAUSTED, UNIMPLEMENTED, INTERNAL = 0, 2, 3, 8, 12, 13

PREFIX = struct.Struct(">?L")  # the gRPC message prefix: compressed flag, length
CONTENT_TYPE = "application/grpc+proto"


class GrpcError(Exception):
    """Answer the call with this gRPC status (a code from the gRPC status list) and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = int(status)
        self.message = message


@dataclass(slots=True)
class UnaryCall:
    """One received call: its path, headers (lower-case names), message and connection."""

    path: str
    headers: dict[str, str]
    message: bytes
    compressed: bool
    transport: asyncio.BaseTransport


Handler = Callable[[UnaryCall], Awaitable[bytes]]
#: told of calls the server refuses before a handler runs: (path, reason)
RefusalListener = Callable[[str, str], None]


@dataclass(frozen=True, slots=True)
class Limits:
    max_message_bytes: int = 16 << 20
    max_frame_size: int = 1 << 20
    max_concurrent_streams: int = 100
    max_header_list_bytes: int = 64 << 10
    window: int = 4 << 20
    handshake_timeout: float = 10.0


def grpc_message_text(message: str) -> str:
    """``grpc-message`` is percent-encoded UTF-8 (printable ASCII but ``%`` stays as is)."""
    out = []
    for byte in message.encode("utf-8")[:1024]:
        out.append(chr(byte) if 0x20 <= byte <= 0x7E and byte != 0x25 else f"%{byte:02X}")
    return "".join(out)



def is_grpc_content_type(content_type: str) -> bool:
    return content_type == "application/grpc" or content_type.startswith(("application/grpc+", "application/grpc;"))
