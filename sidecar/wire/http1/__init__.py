"""A lean HTTP/1.1 server for the OTLP/HTTP receiver (RFC 9112), on the security boundary.

Requests are read into one reused buffer per connection (``asyncio.BufferedProtocol``), so a
``Content-Length`` body arrives in one contiguous region. It reaches the handler as ``bytes``
after a single copy, or, when it outgrew the connection's buffer, in place: a memoryview of the
larger buffer it was received in, which goes back to the pool once the handler is done (the
connection goes on in its own buffer meanwhile). The buffer is allocated on the first read and
dropped once the connection has been idle for a tick of the server's sweep (idle keep-alive
connections cost little). A large body is received in a larger buffer: one from the server's
pool that holds the whole body if there is one (its memory is committed already), else one grown
as the body arrives, by at most max(64 KiB, twice what arrived), so a declared size alone
allocates nothing. Each connection takes the bytes of a body from its account of the receive
budget shared with the gRPC listener (sidecar.overload) *as they arrive*, and the bytes read
ahead of a request being handled too; a declared size (Content-Length, a chunk size) is checked
against what is free, never reserved. What does not fit is refused with 503 and Retry-After (413
for a body more than one connection may hold). Chunked bodies are decoded in place: the data of the second and later
chunks moves down once to follow the first chunk's.
``data_received`` is served too (copying into the buffer): the TLS acceptor hands over the first
decrypted bytes that way. The parser is strict and rejects what it does not understand:

- request line ``METHOD SP request-target SP HTTP/1.1|HTTP/1.0``; another ``HTTP/x.y`` → 505;
- header section (request line included) over ``max_header_bytes`` or more than ``max_headers``
  fields → 431; a request line over ``max_request_line`` → 414; obs-fold, whitespace before the
  colon, a name that is not a token, a control character in a value, a bare CR or LF → 400;
- framing: ``Content-Length`` (digits only; repeated with different values → 400) or
  ``Transfer-Encoding: chunked`` (both → 400; chunked not last or repeated → 400; another coding
  → 501); neither means no body; a body over ``max_request_bytes`` → 413, decided from
  ``Content-Length`` before reading it, for chunked bodies as soon as they pass the limit;
  chunk framing over a quarter of the decoded size plus ``max_chunk_overhead`` → 400;
- a body that does not fit the receive budget → 503 (after the checks above);
- ``Expect: 100-continue`` gets ``100 Continue`` only after the early checks passed (the
  ``check`` hook: method, path, size, budget); another expectation → 417.

After answering a request whose body was not read (any refusal before the body, any malformed
request), or with ``Connection: close`` (or while the server shuts down) when input follows
that was not read, the server closes the connection gracefully: it half-closes its side and
discards what the client still sends, for ``linger_timeout`` at most, so the answer is not lost
to a TCP reset.

Keep-alive and pipelining: requests on a connection are handled strictly in order; while one
is being handled (or the client does not read the answers) at most ``read_ahead`` bytes are
read ahead, then the transport stops reading. Timeouts: ``idle_timeout`` between requests,
``header_timeout`` from a request's first byte to the end of its headers (slowloris),
``body_timeout`` without progress while a body arrives or an answer waits to be sent, and
``body_deadline`` from the end of a request's head to the end of its body (a trickle cannot
hold a connection forever: 408), and ``min_receive_rate`` once ``min_rate_grace`` has passed
(408); the others close the connection without an answer. At ``max_connections`` the connection
that has waited longest for a request is closed (one accepted in the last 10 ms excepted), so a
new client is served rather than a silent one. Every refusal and timeout is counted
(``count(Action)``: otlp_sidecar_overload_actions_total). A handler's exception is logged once
and answered 500.

Modules: ``messages`` (Limits, Request, Response, answers on the wire), ``parser`` (the pure part:
a head, its fields and framing, chunk lines), ``buffers`` (buffer sizes, the pool),
``connection`` (one client connection), ``server`` (the listener, its sweep and cap).
"""

from __future__ import annotations

from sidecar.wire.buffer_pool import BufferPool
from sidecar.wire.http1.connection import _BODY, _CHUNKED, _HEAD, _IDLE, _Connection
from sidecar.wire.http1.messages import (
    Check,
    Handler,
    HttpError,
    Limits,
    Refuse,
    Request,
    Response,
    plain,
    serialize,
)
from sidecar.wire.http1.parser import parse_head
from sidecar.wire.http1.server import Http1Server

__all__ = [
    "_BODY", "_CHUNKED", "_HEAD", "_IDLE", "BufferPool", "Check", "Handler", "Http1Server", "HttpError", "Limits",
    "Refuse", "Request", "Response", "_Connection", "parse_head", "plain", "serialize",
]
