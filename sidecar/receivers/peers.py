"""Who sent a request: the peer identity each receiver passes to the policy input.

Plaintext listeners report the address only. TLS listeners report the verified client
certificate's SPIFFE ID and refuse (``PeerRefused``: HTTP 401/403, gRPC UNAUTHENTICATED /
PERMISSION_DENIED) a client without a required certificate or outside the SPIFFE allowlist.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from sidecar.identity import Peer
from sidecar.tls.server import ServerTLS, format_address

#: the peer of a connection, from its transport (PeerRefused for a TLS client refused)
PeerResolver = Callable[[Any], Peer]


@functools.lru_cache(maxsize=4096)
def _address_peer(peername: Any) -> Peer:
    """The plaintext peer of a socket address: made once per connection, not once a request."""
    return Peer(address=format_address(peername))


def peer_resolver(tls: ServerTLS | None) -> PeerResolver:
    """The peer on the other end of a connection, from its asyncio transport."""

    def plaintext(transport: Any) -> Peer:
        return _address_peer(transport.get_extra_info("peername")) if transport else Peer()

    if tls is None:
        return plaintext
    return tls.authorize_transport
