"""The HTTP/2 wire format as the gRPC server needs it (RFC 9113, RFC 7541).

Frame layout and codes, header blocks of literals for answers (no HPACK table state is shared
with the peer), the rules a request's header list must follow, and a cache for the header blocks
clients repeat.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# frame types (RFC 9113 section 6)
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
# flags
END_STREAM = ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20
# error codes (section 7)
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0, 1, 2, 3
STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL = 5, 6, 7, 8
COMPRESSION_ERROR, ENHANCE_YOUR_CALM = 9, 11
# settings
ENABLE_PUSH, MAX_CONCURRENT_STREAMS = 2, 3
INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE, MAX_HEADER_LIST_SIZE = 4, 5, 6

DEFAULT_WINDOW = 65_535
MIN_FRAME_SIZE = 16_384
MAX_WINDOW = (1 << 31) - 1
#: SETTINGS_HEADER_TABLE_SIZE: the default, which the server never changes (the limit of the
#: client's HPACK table, that is, of the decoder's)
HEADER_TABLE_SIZE = 4096

HEAD = struct.Struct(">BHBBL")  # length (24 bits as 8 + 16), type, flags, stream id
SETTING = struct.Struct(">HL")
U32 = struct.Struct(">L")
GOAWAY_HEAD = struct.Struct(">LL")  # last stream id, error code

_CONNECTION_SPECIFIC = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade"})
_PSEUDO = frozenset({":method", ":scheme", ":path", ":authority"})


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    size = len(payload)
    return HEAD.pack(size >> 16, size & 0xFFFF, kind, flags, stream_id) + payload


class ConnectionFailure(Exception):
    """Ends the connection with GOAWAY and ``code``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class StreamFailure(Exception):
    """Ends one stream with RST_STREAM and ``code``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


# -- HPACK answers: literals without indexing (RFC 7541 6.2.2), so no table state is shared ------


def _hpack_int(value: int, prefix_bits: int, first: int) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _literal(name: str, value: str) -> bytes:
    raw_name, raw_value = name.encode("ascii"), value.encode("ascii")
    return b"\x00" + _hpack_int(len(raw_name), 7, 0) + raw_name + _hpack_int(len(raw_value), 7, 0) + raw_value


def header_block(fields: list[tuple[str, str]]) -> bytes:
    """An HPACK block of literal fields. It opens with a table size update to 0: the peer may
    have lowered SETTINGS_HEADER_TABLE_SIZE, and we never use its table."""
    return b"\x20" + b"".join(_literal(name, value) for name, value in fields)


#: a request's header block decoded: (method, path, the other fields), or why it is malformed
DecodedHeaders = tuple[str, str, Mapping[str, str]] | StreamFailure


class HeaderCache:
    """Decoded header blocks that consist of indexed fields only.

    Such a block does not change the HPACK table, and it means the same while the table does
    not change; a block that changes the table empties the cache. Only small blocks that decode
    to small lists are kept (a few bytes of indexes could otherwise pin large values)."""

    __slots__ = ("_entries",)
    MAX = 64
    MAX_BLOCK = 256
    MAX_DECODED = 4096

    def __init__(self) -> None:
        self._entries: dict[bytes, DecodedHeaders] = {}

    @staticmethod
    def only_indexed(block: bytes) -> bool:
        i, end = 0, len(block)
        while i < end:
            byte = block[i]
            if not byte & 0x80:
                return False
            i += 1
            if byte & 0x7F == 0x7F:  # a multi-byte index
                while i < end and block[i] & 0x80:
                    i += 1
                i += 1
        return True

    def get(self, block: bytes) -> DecodedHeaders | None:
        return self._entries.get(block)

    def put(self, block: bytes, value: DecodedHeaders, indexed: bool, decoded_size: int) -> None:
        if not indexed:
            self._entries.clear()
        elif len(self._entries) < self.MAX and len(block) <= self.MAX_BLOCK and decoded_size <= self.MAX_DECODED:
            self._entries[block] = value


def request_fields(fields: Any) -> DecodedHeaders:
    """Check a request's header list (RFC 9113 8.2, 8.3); its method, path and (read-only) fields."""
    pseudo: dict[str, str] = {}
    headers: dict[str, str] = {}
    for name, value in fields:
        if "\r" in value or "\n" in value or "\0" in value:
            return StreamFailure(PROTOCOL_ERROR, "a field value holds CR, LF or NUL")
        if name.startswith(":"):
            if headers or name not in _PSEUDO or name in pseudo:
                return StreamFailure(PROTOCOL_ERROR, f"misplaced or unknown pseudo-header {name}")
            pseudo[name] = value
            continue
        if not name or name != name.lower() or name in _CONNECTION_SPECIFIC:
            return StreamFailure(PROTOCOL_ERROR, "a field name is not allowed in HTTP/2")
        if name == "te" and value != "trailers":
            return StreamFailure(PROTOCOL_ERROR, "te other than trailers")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    if not pseudo.get(":method") or not pseudo.get(":scheme") or not pseudo.get(":path"):
        return StreamFailure(PROTOCOL_ERROR, "a request without :method, :scheme or :path")
    return pseudo[":method"], pseudo[":path"], MappingProxyType(headers)

