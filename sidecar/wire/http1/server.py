"""The HTTP/1.1 listener: accepts connections (up to its cap), enforces deadlines, keeps the pool."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from sidecar.overload.budget import MemoryBudget
from sidecar.overload.reasons import Action
from sidecar.wire.buffer_pool import BufferPool
from sidecar.wire.http1.connection import _EVICT_GRACE, _Connection
from sidecar.wire.http1.messages import Check, Handler, Limits, Refuse, Response
from sidecar.wire.listener import ProtocolWrapper, bound_address

log = logging.getLogger("sidecar.http")


def _uncounted(action: Action) -> None:
    return None


class Http1Server:
    """The HTTP/1.1 listener: ``await start(host, port, tls)``, then ``await close(grace)``.

    ``handler(request)`` answers a complete request. ``check(request)``, if given, runs once the
    head is in and may refuse it before its body is read (and before ``100 Continue``).
    ``refuse(request, status, message)``, if given, formats the refusals the server decides
    after the head was accepted (413, 417, 503 when ``budget`` is short); malformed requests get
    a plain-text answer. ``budget``, if given, is reserved for each body before it is read, and
    released once its handler is done (or the request is abandoned).
    """

    def __init__(
        self,
        handler: Handler,
        *,
        check: Check | None = None,
        refuse: Refuse | None = None,
        limits: Limits | None = None,
        budget: MemoryBudget | None = None,
        count: Callable[[Action], None] | None = None,
    ) -> None:
        self.handler = handler
        #: counts the protective actions taken (sidecar.overload.metrics.Counted)
        self.count: Callable[[Action], None] = count or _uncounted
        self.check = check
        self.refuse = refuse
        self.limits = limits = limits or Limits()
        self.budget = budget
        self.closing = False
        self.buffers = BufferPool(limits.pool_bytes, max_idle=limits.pool_idle)
        #: bytes of the connections' own buffers of full size (at most ``limits.own_buffer_bytes``)
        self.own_bytes = 0
        self._connections: set[_Connection] = set()
        self._tasks: set[asyncio.Task[Response]] = set()
        self._listener: asyncio.Server | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._all_closed: asyncio.Event | None = None
        timeouts = (limits.idle_timeout, limits.header_timeout, limits.body_timeout, limits.body_deadline,
                    limits.linger_timeout)
        #: seconds between deadline checks (a timeout fires up to this much late)
        self.tick = min(1.0, max(0.005, min(timeouts) / 4))

    @property
    def connections(self) -> int:
        """Open connections."""
        return len(self._connections)

    async def start(self, host: str, port: int, wrap: ProtocolWrapper | None = None) -> tuple[str, int]:
        """Listen on host:port; the bound address. With ``wrap`` (TLS: ``sidecar.tls.acceptor.tls_wrapper``,
        whose acceptor does the handshake, so failed handshakes are counted and logged), each
        connection goes through it first."""
        loop = asyncio.get_running_loop()

        def factory() -> _Connection:
            return _Connection(self)

        self._listener = await loop.create_server(factory if wrap is None else wrap(factory), host, port, backlog=128)
        self._sweeper = loop.call_later(self.tick, self._sweep)
        return bound_address(self._listener)

    async def close(self, grace: float) -> None:
        """Stop listening; close idle connections now, the others once their request is answered
        (within ``grace`` seconds); then close whatever remains."""
        self.closing = True
        if self._listener is not None:
            self._listener.close()
        self._all_closed = asyncio.Event()
        for connection in list(self._connections):
            connection.shut_down()
        if self._connections:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_closed.wait(), grace)
        for connection in list(self._connections):
            connection.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=1.0)
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self._listener is not None:
            await self._listener.wait_closed()
            self._listener = None
        await asyncio.sleep(0)  # let the transports run their connection_lost

    def evict(self) -> bool:
        """At the connection cap: close the connection that has waited longest for a request (or
        for the rest of its head), so a new client is served rather than a silent one; False
        when every connection is busy with a request or was accepted a moment ago (a burst of
        new connections may then go up to twice the cap, and back under it at the next sweep)."""
        victim: _Connection | None = None
        # a connection accepted a moment ago has not had its first read yet: it stays
        young = asyncio.get_running_loop().time() - _EVICT_GRACE
        for connection in self._connections:
            if connection.closing():  # answered and closed already, its TLS shutdown waiting on the client
                victim = connection
                break
            since = connection.waiting_since
            if since < young and connection.waiting() and (victim is None or since < victim.waiting_since):
                victim = connection
        if victim is None:
            return False
        self.count(Action.connection_limit)
        victim.abort()
        self._connections.discard(victim)
        return True

    def _forget(self, connection: _Connection) -> None:
        self._connections.discard(connection)
        if self._all_closed is not None and not self._connections:
            self._all_closed.set()

    def _sweep(self) -> None:
        """Enforce the deadlines, drop the buffers of idle connections and the pool's unused ones
        (every ``tick``)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        body_timeout = self.limits.body_timeout
        for connection in list(self._connections):
            paused = connection.write_paused_at
            if connection.deadline <= now or (paused and now - paused > body_timeout):
                connection.timed_out()
                continue
            if connection.receive_rate_low(now):
                connection.too_slow(Action.slow_body)
                continue
            since = connection.idle_since()
            if since is not None and now - since >= self.tick:
                connection.shrink()
        cap = self.limits.max_connections
        while cap and len(self._connections) > cap and self.evict():
            pass  # back under the cap after a burst
        self.buffers.sweep()
        self._sweeper = loop.call_later(self.tick, self._sweep)
