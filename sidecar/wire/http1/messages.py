"""Requests, answers and limits of the HTTP/1.1 server, and answers on the wire."""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from sidecar.masked_text import client_message

if TYPE_CHECKING:
    import asyncio

    from sidecar.overload.budget import Account


@dataclass(frozen=True, slots=True)
class Limits:
    """What one request and one connection may take."""

    #: largest body, as sent (decoded chunked data for chunked bodies) → 413
    max_request_bytes: int = 16 * 1024 * 1024
    #: request line and header fields together (also the trailer section) → 431
    max_header_bytes: int = 32 * 1024
    #: header fields in a request (also trailer fields) → 431
    max_headers: int = 100
    #: the request line → 414
    max_request_line: int = 8 * 1024
    #: a chunk-size line, extensions included → 400
    max_chunk_line: int = 4 * 1024
    #: bytes read ahead of a request being handled (pipelining) before reading pauses
    read_ahead: int = 256 * 1024
    #: seconds a keep-alive connection may wait for its next request
    idle_timeout: float = 75.0
    #: seconds from a request's first byte to the end of its headers
    header_timeout: float = 10.0
    #: seconds without progress receiving a body or sending an answer
    body_timeout: float = 30.0
    #: seconds from the end of a request's head to the end of its body, however steadily it arrives
    body_deadline: float = 60.0
    #: seconds to discard input after a refusal before closing (so the client reads the answer)
    linger_timeout: float = 2.0
    #: a connection's own buffer, allocated on its first read and dropped once it is idle
    buffer_size: int = 64 * 1024
    #: what the connections' own buffers may hold together; beyond it a connection's own buffer is
    #: 16 KiB (more, smaller reads)
    own_buffer_bytes: int = 8 * 1024 * 1024
    #: framing bytes (chunk-size lines, CRLFs) a chunked body may add beyond a quarter of its
    #: decoded size (many tiny chunks cost CPU) → 400
    max_chunk_overhead: int = 16 * 1024
    #: bytes of large receive buffers the server keeps for later bodies (a larger one is never kept)
    pool_bytes: int = 8 * 1024 * 1024
    #: seconds a pooled buffer is kept without being used
    pool_idle: float = 5.0
    #: bytes per second a body must arrive at on average once ``min_rate_grace`` has passed
    #: (0: no minimum) → 408 and close
    min_receive_rate: int = 0
    #: seconds a body may arrive slower than ``min_receive_rate``
    min_rate_grace: float = 5.0
    #: open connections the listener keeps; more are closed at once (0: no cap)
    max_connections: int = 0


class Request:
    """One request. ``headers`` has lower-case names; repeated fields are joined with ``", "``."""

    __slots__ = (
        "account", "body", "chunked", "content_length", "context", "headers", "keep_alive", "method", "path",
        "target", "transport", "version",
    )

    def __init__(
        self,
        method: str,
        target: str,
        path: str,
        version: str,
        headers: dict[str, str],
        transport: asyncio.BaseTransport,
    ) -> None:
        self.method = method
        #: the request-target as sent; ``path`` is its path without the query, not percent-decoded
        self.target = target
        self.path = path
        self.version = version
        self.headers = headers
        #: the connection's transport (peer address, TLS ``ssl_object``)
        self.transport = transport
        #: the declared Content-Length (None for chunked bodies)
        self.content_length: int | None = None
        self.chunked = False
        self.keep_alive = True
        #: the body, once received (``b""`` without one): bytes, or for a body that outgrew the
        #: connection's buffer a memoryview of the buffer it was received in, valid only until
        #: the handler returns (then emptied)
        self.body: bytes | memoryview = b""
        #: free for the application: ``check`` may leave something here for the handler
        self.context: Any = None
        #: the connection's receive-budget account (None without a budget): the handler takes what
        #: it holds beyond the body from it (decompressed, decoded bytes) and gives it back
        self.account: Account | None = None


class Response:
    """An answer. ``headers`` are extra fields (Retry-After, Allow ...)."""

    __slots__ = ("body", "content_type", "headers", "status")

    def __init__(
        self,
        status: int = 200,
        body: bytes = b"",
        content_type: str = "text/plain; charset=utf-8",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = headers


def plain(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    """A short plain-text answer (card numbers masked: it may quote the request)."""
    return Response(status, f"{client_message(message)}\n".encode(), headers=headers)


Handler = Callable[[Request], Coroutine[Any, Any, Response]]
#: called once the head is in, before the body is read: an answer refuses the request
Check = Callable[[Request], Response | None]
#: formats a refusal the server decides after ``check`` (413, 417): (request, status, message)
Refuse = Callable[[Request, int, str], Response]


class HttpError(Exception):
    """A request the server refuses: status and a short message for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        if not 200 <= status <= 599:
            raise ValueError(f"cannot answer with status {status}")
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = "Unknown"
        line = _STATUS_LINES[status] = f"HTTP/1.1 {status} {reason}\r\n".encode()
    return line


_STATUS_LINES: dict[int, bytes] = {}
_date_second = -1
_date_field = b""


def _date() -> bytes:
    """The ``Date`` field line, formatted once per second."""
    global _date_second, _date_field
    now = int(time.time())
    if now != _date_second:
        _date_second = now
        _date_field = b"Date: " + formatdate(now, usegmt=True).encode() + b"\r\n"
    return _date_field


def serialize(response: Response, *, close: bool = False, keep_alive_10: bool = False, head: bool = False) -> bytes:
    """The answer on the wire: status line, fields, and the body unless ``head``."""
    body = response.body
    content_type = response.content_type
    if "\r" in content_type or "\n" in content_type:
        raise ValueError("a line break in the answer's content type")
    parts = [
        _status_line(response.status),
        b"Content-Type: ", content_type.encode("latin-1"), b"\r\n",
        b"Content-Length: ", str(len(body)).encode(), b"\r\n",
        _date(),
    ]
    if response.headers:
        for name, value in response.headers.items():
            if "\r" in name or "\n" in name or "\r" in value or "\n" in value or ":" in name:
                raise ValueError(f"an invalid answer field {name!r}")
            parts.append(f"{name}: {value}\r\n".encode("latin-1"))
    if close:
        parts.append(b"Connection: close\r\n")
    elif keep_alive_10:
        parts.append(b"Connection: keep-alive\r\n")
    parts.append(b"\r\n")
    if not head:
        parts.append(body)
    return b"".join(parts)
