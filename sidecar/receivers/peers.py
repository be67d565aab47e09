"""Who sent a request: the peer identity each receiver passes to the policy input.

Plaintext listeners report the address only. TLS listeners report the verified client
certificate's SPIFFE ID and refuse (``PeerRefused``: HTTP 401/403, gRPC UNAUTHENTICATED /
PERMISSION_DENIED) a client without a required certificate or outside the SPIFFE allowlist.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from sidecar.identity import Peer
from sidecar.tls.server import ServerTLS, format_address


class Received(Protocol):
    """A request of either receiver (``sidecar.wire.http1.Request``, ``sidecar.wire.http2.UnaryCall``)."""

    @property
    def transport(self) -> Any: ...


def peer_resolver(tls: ServerTLS | None) -> Callable[[Received], Peer]:
    """The peer of a request, from its connection's transport."""

    def plaintext(request: Received) -> Peer:
        transport = request.transport
        return Peer(address=format_address(transport.get_extra_info("peername")) if transport else "")

    if tls is None:
        return plaintext

    def verified(request: Received) -> Peer:
        return tls.authorize_transport(request.transport)

    return verified
