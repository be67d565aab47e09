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
#: seconds a closing TLS connection waits for the client's close_notify before it is dropped
#: (asyncio's default, 30 s, let clients that never answer it hold a connection that long)
SHUTDOWN_TIMEOUT = 2.0

#: bytes asyncio's TLS protocol reads from the socket at once. Its default (256 KiB) is allocated
#: for every TLS connection, idle or not, and is a class attribute: set once for the process when a
#: listener is made. A TLS record holds at most 16 KiB, so a read still takes two of them.
TLS_READ_BYTES = 32 * 1024

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
        return None  # TLS closes on the client's EOF whatever is returned (True only draws a warning)

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


class _FirstRead(asyncio.BufferedProtocol):
    """Stands between a socket and asyncio's TLS protocol until the client's first bytes are read
    (the start of its ClientHello): tells ``heard`` so, gives the transport back to the TLS protocol
    and hands it those bytes. Every call is passed on unchanged, so the handshake is the same."""

    def __init__(self, transport: asyncio.Transport, inner: asyncio.BufferedProtocol,
                 heard: Callable[[], None]) -> None:
        self._transport, self._inner, self._heard = transport, inner, heard

    def get_buffer(self, sizehint: int) -> Any:
        return self._inner.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        self._transport.set_protocol(self._inner)  # from now on the socket reads go straight to TLS
        self._heard()
        self._inner.buffer_updated(nbytes)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


#: at the cap of handshakes in progress, when every one has sent something, one this old is
#: closed for a new one (else the new one is)
EVICT_AFTER = 1.0


class _Pending:
    """Handshakes in progress on one listener, at most ``limit``. At the cap, when another client
    address holds more handshakes than the new connection's, that address loses one (its oldest
    that has sent nothing yet, else its oldest): one source cannot keep the others out, whatever
    it sends (in a cluster the API server and a flooding pod have different addresses). Else the
    new connection's own address loses its oldest one that has sent nothing yet, whatever its age:
    a client sends its ClientHello as it connects and counts as heard once those bytes are read
    (milliseconds), so a flood of silent connections only closes its own; when all have sent
    something, the oldest once it has waited ``EVICT_AFTER`` seconds, else the new connection is
    closed (a burst: the handshakes in progress go on). On loopback every client has the same
    address and only the second rule applies. Either way ``refused()`` is called once, and the
    table never holds more than ``limit``."""

    def __init__(self, limit: int, refused: Callable[[], None] | None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self._clock = clock
        #: in the order they came: transport, when, client address
        self._waiting: dict[object, tuple[asyncio.Transport, float, str]] = {}
        self._silent: dict[object, None] = {}  # those that sent nothing yet, in the same order
        self._by_source: dict[str, dict[object, None]] = {}  # each address's, in the same order
        self._refused = refused

    def __len__(self) -> int:
        return len(self._waiting)

    def silent(self) -> int:
        """How many of the handshakes in progress have received nothing yet."""
        return len(self._silent)

    def enter(self, key: object, transport: asyncio.Transport, source: str = "") -> bool:
        """Admit a new connection from client address ``source`` (True), or close it (False). It
        counts as silent until :meth:`heard`."""
        now = self._clock()
        if len(self._waiting) >= self.limit:
            if self._refused is not None:
                self._refused()
            victim = self._victim(source, now)
            if victim is None:
                transport.abort()
                return False
            self._waiting[victim][0].abort()
            self.leave(victim)
        self._waiting[key] = (transport, now, source)
        self._silent[key] = None
        self._by_source.setdefault(source, {})[key] = None
        return True

    def _victim(self, source: str, now: float) -> object | None:
        """The handshake to close for a new connection from ``source`` (None: close the new one)."""
        crowded = max(self._by_source.values(), key=len)
        own = self._by_source.get(source)
        other = own is None or (crowded is not own and len(crowded) > len(own))
        keys = crowded if other else own
        assert keys is not None
        silent = self._silent
        for key in keys:  # at most ``limit``
            if key in silent:
                return key
        oldest = next(iter(keys))
        return oldest if other or now - self._waiting[oldest][1] >= EVICT_AFTER else None

    def heard(self, key: object) -> None:
        """The connection's first bytes arrived: no longer closed ahead of the others."""
        self._silent.pop(key, None)

    def leave(self, key: object) -> None:
        self._silent.pop(key, None)
        entry = self._waiting.pop(key, None)
        if entry is not None:
            keys = self._by_source[entry[2]]
            del keys[key]
            if not keys:
                del self._by_source[entry[2]]


def _source(transport: asyncio.BaseTransport) -> str:
    """The client's address (without its port), or "" when the transport does not say."""
    peer = transport.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) and peer else ""


class _TLSAcceptor(asyncio.Protocol):
    """The plaintext side of one accepted connection: upgrade it, or count the failure."""

    def __init__(
        self,
        factory: ProtocolFactory,
        tls: ServerTLS,
        timeout: float,
        report: _HandshakeLog,
        pending: _Pending | None = None,
    ) -> None:
        self._factory, self._tls, self._timeout, self._report = factory, tls, timeout, report
        self._pending = pending
        self._lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        pending = self._pending
        if pending is not None and not pending.enter(self, transport, _source(transport)):
            return  # closed: too many handshakes in progress (each holds 256 KiB of TLS buffers)
        transport.pause_reading()  # the ClientHello waits in the socket for start_tls
        task = asyncio.get_running_loop().create_task(self._upgrade(transport))
        _UPGRADES.add(task)
        task.add_done_callback(_UPGRADES.discard)
        if pending is not None:
            task.add_done_callback(lambda _: pending.leave(self))

    async def _upgrade(self, transport: asyncio.Transport) -> None:
        loop = asyncio.get_running_loop()
        if self._lost or transport.is_closing():
            return  # connected and left before saying anything (a TCP probe): not a TLS failure
        address = format_address(transport.get_extra_info("peername"))
        app = _Deferred(self._factory())
        if self._pending is not None:
            loop.call_soon(self._watch_first_read, transport, self._pending)
        try:
            ssl_transport = await loop.start_tls(
                transport,
                app,
                self._tls.context(),
                server_side=True,
                ssl_handshake_timeout=self._timeout,
                ssl_shutdown_timeout=SHUTDOWN_TIMEOUT,
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
        # decrypted input waits in asyncio's buffer while the protocol reads no more (its budget is
        # short): at most this much, then the socket is not read either (default: 256 KiB)
        limit_reads = getattr(ssl_transport, "set_read_buffer_limits", None)  # asyncio's TLS transport has it
        if limit_reads is not None:
            limit_reads(high=2 * TLS_READ_BYTES)
        app.start(ssl_transport)

    def _watch_first_read(self, transport: asyncio.Transport, pending: _Pending) -> None:
        """Put :class:`_FirstRead` in front of asyncio's TLS protocol, so that ``pending`` learns
        when the client's first bytes arrive. Scheduled just before ``start_tls``, this runs after
        it gave the socket to its TLS protocol and before the reads it schedules (the socket is not
        read before: reading is paused). Should another event loop order them otherwise, the
        connection counts as heard at once, and is closed at the cap only for its age, as before."""
        if transport.is_closing():
            return  # closed at the cap meanwhile, or gone
        inner = transport.get_protocol()
        if inner is self or transport.is_reading() or not isinstance(inner, asyncio.BufferedProtocol):
            pending.heard(self)
            return
        transport.set_protocol(_FirstRead(transport, inner, lambda: pending.heard(self)))

    def data_received(self, data: bytes) -> None:  # pragma: no cover - reading is paused
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        # lost before start_tls took the transport over (after that, TLS reports it)
        self._lost = True


def _smaller_tls_reads() -> None:
    """Each TLS connection allocates ``SSLProtocol.max_size`` bytes as it starts: 1,000 idle ones
    held 250 MiB with the default. Lowered for the process (client connections too)."""
    from asyncio import sslproto

    if getattr(sslproto.SSLProtocol, "max_size", 0) > TLS_READ_BYTES:
        sslproto.SSLProtocol.max_size = TLS_READ_BYTES


def tls_protocol_factory(
    factory: ProtocolFactory,
    tls: ServerTLS,
    *,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    max_handshakes: int = 0,
    refused: Callable[[], None] | None = None,
) -> Callable[[], asyncio.Protocol]:
    """A protocol factory for ``loop.create_server`` (without ``ssl=``) that does the TLS
    handshake with ``tls``, counting and logging failures, then runs ``factory``'s protocol.

    ``max_handshakes`` (0: no cap) bounds the handshakes in progress: each holds asyncio's TLS
    buffers (256 KiB) until it ends or ``handshake_timeout`` passes, so silent connections could
    otherwise hold any amount of memory before the server's own connection cap sees them. At the
    cap a new connection closes the oldest handshake whose client has sent nothing yet, whatever
    its age (a client sends its ClientHello as it connects, so a flood of silent connections only
    closes its own); when every client has sent something, the one waiting longest if it has
    waited ``EVICT_AFTER`` seconds, else the new connection is closed. ``refused()`` is called for
    each connection closed at the cap."""
    report = _HandshakeLog()
    pending = _Pending(max_handshakes, refused) if max_handshakes > 0 else None
    _smaller_tls_reads()

    def make() -> asyncio.Protocol:
        return _TLSAcceptor(factory, tls, handshake_timeout, report, pending)

    return make


def tls_wrapper(
    tls: ServerTLS,
    *,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    max_handshakes: int = 0,
    refused: Callable[[], None] | None = None,
) -> ProtocolWrapper:
    """The TLS acceptor as the wire servers take it: ``server.start(host, port, tls_wrapper(tls))``
    (arguments as :func:`tls_protocol_factory`'s)."""

    def wrap(factory: ProtocolFactory) -> Callable[[], asyncio.Protocol]:
        return tls_protocol_factory(factory, tls, handshake_timeout=handshake_timeout,
                                    max_handshakes=max_handshakes, refused=refused)

    return wrap
