"""What a wire server takes from its caller to listen: nothing of TLS itself.

A server listens plaintext, or through a *protocol wrapper* its caller hands to ``start``: a
function from the server's protocol factory to the factory ``loop.create_server`` runs (the TLS
acceptor, ``sidecar.tls.acceptor.tls_wrapper``, is one). So the wire layer never imports
``sidecar.tls``; the TLS layer builds on this module instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol


class ConnectionProtocol(Protocol):
    """One accepted connection as a wrapper drives it: asyncio's protocol calls, ``data_received``
    included (a ``BufferedProtocol`` serves it too, for bytes a TLS layer hands over at once)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None: ...

    def data_received(self, data: bytes) -> None: ...

    def eof_received(self) -> bool | None: ...

    def connection_lost(self, exc: Exception | None) -> None: ...

    def pause_writing(self) -> None: ...

    def resume_writing(self) -> None: ...


#: makes the protocol of one accepted connection
ProtocolFactory = Callable[[], ConnectionProtocol]
#: turns a server's protocol factory into the one the listener runs (e.g. a TLS handshake first)
ProtocolWrapper = Callable[[ProtocolFactory], Callable[[], asyncio.BaseProtocol]]


def format_address(peername: Any) -> str:
    """``host:port`` (``[v6]:port``) from a transport's ``peername``; "" when unknown."""
    if isinstance(peername, tuple) and len(peername) >= 2:
        host, port = peername[0], peername[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(peername) if peername else ""


def bound_address(listener: asyncio.Server) -> tuple[str, int]:
    """The (host, port) a listener is bound to (its first socket)."""
    host, port = listener.sockets[0].getsockname()[:2]
    return str(host), int(port)
