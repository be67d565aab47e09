"""Who sent a request: the peer identity each receiver passes to the policy input.

Plaintext listeners report the address only. TLS listeners report the verified client
certificate's SPIFFE ID and refuse (``PeerRefused``: HTTP 401/403, gRPC UNAUTHENTICATED /
PERMISSION_DENIED) a client without a required certificate or outside the SPIFFE allowlist.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from sidecar.identity import Peer
from sidecar.tls.server import ServerTLS, format_address


def http_peer_resolver(tls: ServerTLS | None) -> Callable[[web.Request], Peer]:
    def plaintext(request: web.Request) -> Peer:
        transport = request.transport
        return Peer(address=format_address(transport.get_extra_info("peername")) if transport else "")

    if tls is None:
        return plaintext

    def verified(request: web.Request) -> Peer:
        return tls.authorize_transport(request.transport)

    return verified


def grpc_peer_resolver(tls: ServerTLS | None) -> Callable[[Any], Peer]:
    def plaintext(stream: Any) -> Peer:
        return Peer(address=format_address(stream.peer.addr()))

    if tls is None:
        return plaintext

    def verified(stream: Any) -> Peer:
        return tls.authorize_cert(stream.peer.cert(), format_address(stream.peer.addr()))

    return verified
