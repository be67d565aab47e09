"""The gRPC server: listens (plaintext or TLS), runs the handlers, closes gracefully."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from sidecar.overload.budget import MemoryBudget
from sidecar.overload.reasons import Action
from sidecar.wire.buffer_pool import BufferPool
from sidecar.wire.http2.calls import (
    INTERNAL,
    UNAVAILABLE,
    Authorizer,
    GrpcError,
    Handler,
    Limits,
    RefusalListener,
    UnaryCall,
)
from sidecar.wire.http2.connection import Connection, Stream
from sidecar.wire.listener import ProtocolWrapper, bound_address

log = logging.getLogger("sidecar.wire.http2")


class GrpcServer:
    """Serves unary gRPC ``routes`` ({path: handler}) over HTTP/2, plaintext or TLS.

    ``authorize(path, transport)`` may refuse a call from its connection as soon as its headers
    arrive (by raising GrpcError), before its message is read; what it returns reaches the
    handler as ``UnaryCall.context``; ``budget`` bounds the bytes clients make the server hold
    (shared with other listeners; each connection takes from it through its own account: partial
    frames and request messages as they arrive, until the handler is done); ``on_refusal(path,
    reason)`` hears of the calls the server refuses itself; ``count(action)`` of every protective
    action (sidecar.overload.Action).
    """

    #: seconds between sweeps (timeouts are counted in sweeps)
    SWEEP_EVERY = 1.0

    def __init__(
        self,
        routes: dict[str, Handler],
        limits: Limits | None = None,
        *,
        authorize: Authorizer | None = None,
        budget: MemoryBudget | None = None,
        on_refusal: RefusalListener | None = None,
        count: Callable[[Action], None] | None = None,
    ) -> None:
        self.routes = routes
        self.limits = limits or Limits()
        #: without a budget of its own the server still accounts, without a limit
        self.budget = budget if budget is not None else MemoryBudget(1 << 62)
        self.count: Callable[[Action], None] = count or (lambda action: None)
        self.connections: set[Connection] = set()
        #: large read buffers between messages: one goes with each call whose message it holds
        #: (lent, not copied) and comes back when the handler is done
        self.buffers = BufferPool(self.limits.pool_bytes, max_idle=self.limits.pool_idle)
        self.closing = False
        #: sweeps so far: the clock of the timeouts
        self.tick = 0
        self._authorize = authorize
        self._on_refusal = on_refusal
        self._tasks: set[asyncio.Task[None]] = set()
        self._listener: asyncio.Server | None = None
        self._sweeper: asyncio.TimerHandle | None = None

    async def start(self, host: str, port: int, wrap: ProtocolWrapper | None = None) -> tuple[str, int]:
        """Listen; the bound address. With ``wrap`` (the TLS acceptor, ``sidecar.tls.acceptor.tls_wrapper``),
        each connection goes through it first (TLS: handshake failures are counted)."""
        loop = asyncio.get_running_loop()

        def connection() -> Connection:
            return Connection(self)

        self._listener = await loop.create_server(connection if wrap is None else wrap(connection), host, port)
        self._sweeper = loop.call_later(self.SWEEP_EVERY, self._sweep)
        return bound_address(self._listener)

    def authorize(self, path: str, transport: asyncio.BaseTransport | None) -> tuple[Any, GrpcError | None]:
        """(the call's context, None), or (None, why the call is refused)."""
        if self._authorize is None:
            return None, None
        try:
            return self._authorize(path, transport), None
        except GrpcError as exc:
            return None, exc
        except Exception:
            log.exception("authorizing a call to %s failed", path)
            return None, GrpcError(INTERNAL, "internal error")

    def refused(self, path: str, reason: str) -> None:
        if self._on_refusal is not None:
            self._on_refusal(path, reason)

    def run(self, connection: Connection, stream: Stream, call: UnaryCall) -> None:
        task = asyncio.get_running_loop().create_task(self._call(connection, stream, call))
        self._tasks.add(task)

        def done(task: asyncio.Task[None]) -> None:  # one callback: each is a turn of the loop
            self._tasks.discard(task)
            # a task cancelled before its first step (the server closing) never runs _call: what
            # the call holds goes back here too (release is idempotent)
            connection.release(stream)

        task.add_done_callback(done)

    async def _call(self, connection: Connection, stream: Stream, call: UnaryCall) -> None:
        handler = self.routes[call.path]
        try:
            reply = await handler(call)
        except GrpcError as exc:
            connection.release(stream)
            connection.answer(stream, None, exc)
        except asyncio.CancelledError:  # the server closes: the client retries the call
            connection.release(stream)
            connection.answer(stream, None, GrpcError(UNAVAILABLE, "the sidecar is shutting down"))
            raise
        except Exception:
            log.exception("gRPC handler for %s failed", call.path)
            connection.release(stream)
            connection.answer(stream, None, GrpcError(INTERNAL, "internal error"))
        else:
            # the request is queued or refused: its bytes go back to the budget now, not once a
            # client that gives no window has taken the answer
            connection.release(stream)
            connection.answer(stream, reply, None)

    @property
    def open_connections(self) -> int:
        return len(self.connections)

    def _sweep(self) -> None:
        self.tick += 1
        for connection in list(self.connections):
            connection.sweep(self.tick)
        self.buffers.sweep()
        self._sweeper = asyncio.get_running_loop().call_later(self.SWEEP_EVERY, self._sweep)

    async def close(self, grace: float) -> None:
        """Stop listening and send GOAWAY; calls already started (being received, handled or
        answered) have ``grace`` seconds to finish; then close everything."""
        self.closing = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        if self._listener is not None:
            self._listener.close()
        for connection in list(self.connections):
            connection.goaway()
        while loop.time() < deadline and any(c.busy for c in self.connections):
            await asyncio.sleep(0.02)
        if self._sweeper is not None:
            self._sweeper.cancel()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=1.0)
        for connection in list(self.connections):
            connection.close(linger=False)
        if self._listener is not None:
            await self._listener.wait_closed()
            self._listener = None
