"""A TLS listener that sees its failed handshakes: count them, log them (rate-limited).

asyncio's ``create_server(ssl=...)`` drops a failed handshake silently (it reports it
only in debug mode), so an mTLS listener could not say that a client came with a
certificate from another CA, an expired one, or spoke plaintext. Wrap the server's
protocol factory instead and listen *without* ``ssl=``::

    factory = tls_protocol_factory(runner.server, server_tls)        # aiohttp
    server = await loop.create_server(factory, host, port)

Each connection is upgraded with ``loop.start_tls`` using ``server_tls.context()``;
a failure is classified (``unknown_ca``, ``certificate_expired``, ``not_tls`` ...),
handed to ``server_tls``'s handshake listeners (``TLSMetrics.track`` counts them) and
logged at most once per reason every ``LOG_EVERY`` seconds. A successful connection
is handed to the wrapped protocol exactly as ``create_server(ssl=...)`` would.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable
from typing import Any, cast

from sidecar.tls.metrics import classify_tls_error
from sidecar.tls.server import ServerTLS
from sidecar.wire.listener import ConnectionProtocol, ProtocolFactory, ProtocolWrapper, format_address

log = logging.getLogger("sidecar.tls")

#: a failed handshake of one reason is logged at most this often
LOG_EVERY = 10.0
DEFAULT_HANDSHAKE_TIMEOUT = 10.0

#: upgrades in progress (a task needs a strong reference until it ends)
_UPGRADES: set[asyncio.Task[None]] = set()


class _HandshakeLog:
    """Rate-limited warnings about failed handshakes (a scanner must not flood the log)."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def failed(self, reason: str, address: str, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._last.get(reason, -LOG_EVERY) < LOG_EVERY:
            self._suppressed[reason] = self._suppressed.get(reason, 0) + 1
            return
        more = self._suppressed.pop(reason, 0)
        self._last[reason] = now
        detail = getattr(exc, "verify_message", "") or getattr(exc, "reason", "") or type(exc).__name__
        log.warning(
            "TLS handshake from %s refused: %s (%s)%s",
            address or "?",
            reason,
            detail,
            f"; {more} more like it since the last report" if more else "",
        )


class _Deferred(asyncio.Protocol):
    """Holds what the TLS layer delivers until the wrapped protocol got connection_made."""

    def __init__(self, app: ConnectionProtocol) -> None:
        self.app = app
        self._pending: list[tuple[str, Any]] = []
        self._started = False

    def start(self, transport: asyncio.Transport) -> None:
        self.app.connection_made(transport)
        self._started = True
        # set_protocol only stores what the transport calls next: the calls ConnectionProtocol
        # declares (its protocols are asyncio ones; typeshed asks for the BaseProtocol class)
        transport.set_protocol(cast(asyncio.BaseProtocol, self.app))
        for kind, arg in self._pending:
            if kind == "data":
                self.app.data_received(arg)
            elif kind == "eof":
                self.app.eof_received()
            elif kind == "lost":
                self.app.connection_lost(arg)
        self._pending.clear()

    def data_received(self, data: bytes) -> None:
        if self._started:
            self.app.data_received(data)
        else:
            self._pending.append(("data", data))

    def eof_received(self) -> bool | None:
        if self._started:
            return self.app.eof_received()
        self._pending.append(("eof", None))
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self._started:
            self.app.connection_lost(exc)
        else:
            self._pending.append(("lost", exc))

    def pause_writing(self) -> None:
        if self._started:
            self.app.pause_writing()

    def resume_writing(self) -> None:
        if self._started:
            self.app.resume_writing()


class _TLSAcceptor(asyncio.Protocol):
    """The plaintext side of one accepted connection: upgrade it, or count the failure."""

    def __init__(
        self,
        factory: ProtocolFactory,
        tls: ServerTLS,
        timeout: float,
        report: _HandshakeLog,
    ) -> None:
        self._factory, self._tls, self._timeout, self._report = factory, tls, timeout, report
        self._lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.pause_reading()  # the ClientHello waits in the socket for start_tls
        task = asyncio.get_running_loop().create_task(self._upgrade(transport))
        _UPGRADES.add(task)
        task.add_done_callback(_UPGRADES.discard)

    async def _upgrade(self, transport: asyncio.Transport) -> None:
        loop = asyncio.get_running_loop()
        if self._lost or transport.is_closing():
            return  # connected and left before saying anything (a TCP probe): not a TLS failure
        address = format_address(transport.get_extra_info("peername"))
        app = _Deferred(self._factory())
        try:
            ssl_transport = await loop.start_tls(
                transport,
                app,
                self._tls.context(),
                server_side=True,
                ssl_handshake_timeout=self._timeout,
            )
        except (ssl.SSLError, OSError, TimeoutError, ConnectionError, RuntimeError) as exc:
            transport.close()
            if isinstance(exc, ConnectionResetError | BrokenPipeError | EOFError):
                # gone without a TLS alert, usually a TCP probe: not a refused client
                log.debug("TLS connection from %s closed during the handshake", address)
                return
            reason = classify_tls_error(exc)
            self._tls.handshake_failed(reason)
            self._report.failed(reason, address, exc)
            return
        if ssl_transport is None:  # pragma: no cover - closed while upgrading
            transport.close()
            return
        app.start(ssl_transport)

    def data_received(self, data: bytes) -> None:  # pragma: no cover - reading is paused
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        # lost before start_tls took the transport over (after that, TLS reports it)
        self._lost = True


def tls_protocol_factory(
    factory: ProtocolFactory,
    tls: ServerTLS,
    *,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
) -> Callable[[], asyncio.Protocol]:
    """A protocol factory for ``loop.create_server`` (without ``ssl=``) that does the TLS
    handshake with ``tls``, counting and logging failures, then runs ``factory``'s protocol."""
    report = _HandshakeLog()

    def make() -> asyncio.Protocol:
        return _TLSAcceptor(factory, tls, handshake_timeout, report)

    return make


def tls_wrapper(tls: ServerTLS) -> ProtocolWrapper:
    """The TLS acceptor as the wire servers take it: ``server.start(host, port, tls_wrapper(tls))``."""

    def wrap(factory: ProtocolFactory) -> Callable[[], asyncio.Protocol]:
        return tls_protocol_factory(factory, tls)

    return wrap
