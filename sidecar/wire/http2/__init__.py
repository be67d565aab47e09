"""A lean HTTP/2 server for unary gRPC calls: the OTLP/gRPC receive path.

grpclib's pure-Python HTTP/2 (h2) cost 1.2 CPU-µs per span before any policy work (docs/
performance.md). This server reads frames into one reused buffer, copies a request message out
of it once, answers with pre-encoded header blocks and sends what one event-loop step produced
in one write. It implements what a gRPC server needs of RFC 9113 and nothing a client could
ask beyond it:

- the connection preface, SETTINGS (acknowledged, and applied: window, frame size), PING,
  GOAWAY both ways, RST_STREAM, WINDOW_UPDATE, PRIORITY (ignored), unknown frames (ignored);
- flow control on receive (windows replenished as data arrives) and on send;
- HPACK decoding by ``hpack_decoder`` (compiled from ``ext/hpack.pyx``, or its pure-Python
  twin), and a cache for header blocks that only index the table, which is what clients send
  after the first call when nothing in their headers changes; answers use literals only, never
  the peer's table;
- unary calls: one length-prefixed message per stream; the handler's bytes go back with
  ``grpc-status: 0``, a :class:`GrpcError` as a trailers-only answer.

Bounds (docs/http2.md): frame size; header lists and the frames of one header block
(CONTINUATION floods); concurrent streams (a stream counts until its handler is done, reset or
not); connections per listener; message size (refused as soon as the prefix announces it); what a
connection holds (read buffer beyond its first 4 KiB, request messages as their bytes arrive)
taken from the sidecar's one receive budget through the connection's account, given back when
the handler is done; the read buffer allocated only when bytes arrive. Timeouts (counted in
sweeps of about a second): the handshake, a minimum receive rate while a request or a partial
frame is held, a deadline per request and per frame, a request that stops arriving, an answer the
client takes no window or no bytes for, an idle connection. Stream ids follow RFC 9113 5.1.1.
Violations end the connection with GOAWAY, or the stream with RST_STREAM, as the RFC says;
nothing raises into the event loop; every protective action is counted. A connection ends
gracefully: after our GOAWAY the server half-closes its side and drops what the client still
sends for ``linger_timeout`` at most, so the GOAWAY is not lost to a TCP reset.

``client`` is the other side, for the exporter: unary requests to the upstream on the same
frames and HPACK decoder (docs/http2.md, "The exporter's client").
"""

from sidecar.wire.http2.calls import GrpcError, Handler, Limits, UnaryCall
from sidecar.wire.http2.server import GrpcServer

__all__ = ["GrpcError", "GrpcServer", "Handler", "Limits", "UnaryCall"]
