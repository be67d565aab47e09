"""The gRPC server: listens (plaintext or TLS), runs the handlers, closes gracefully."""

from __future__ import annotations

import asyncio
import logging

from sidecar.tls.acceptor import tls_protocol_factory
from sidecar.tls.server import ServerTLS
from sidecar.wire.http2.calls import INTERNAL, GrpcError, Handler, Limits, RefusalListener, UnaryCall
from sidecar.wire.http2.connection import Connection, Stream

log = logging.getLogger("sidecar.wire.http2")


class GrpcServer:
    """Serves unary gRPC ``routes`` ({path: handler}) over HTTP/2, plaintext or TLS."""

    SWEEP_EVERY = 10.0

    def __init__(
        self,
        routes: dict[str, Handler],
        limits: Limits | None = None,
        *,
        on_refusal: RefusalListener | None = None,
    ) -> None:
        self.routes = routes
        self.limits = limits or Limits()
        self.connections: set[Connection] = set()
        self._on_refusal = on_refusal
        self._tasks: set[asyncio.Task[None]] = set()
        self._listener: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.TimerHandle | None = None

    async def start(self, host: str, port: int, tls: ServerTLS | None = None) -> tuple[str, int]:
        """Listen; with ``tls``, handshakes go through the TLS acceptor (failures are counted)."""
        loop = asyncio.get_running_loop()

        def connection() -> asyncio.BaseProtocol:
            return Connection(self)

        factory = connection if tls is None else tls_protocol_factory(connection, tls)  # type: ignore[arg-type]
        self._listener = await loop.create_server(factory, host, port)
        self._sweeper = loop.call_later(self.SWEEP_EVERY, self._sweep)
        return self._listener.sockets[0].getsockname()[:2]  # type: ignore[no-any-return]

    def refused(self, path: str, reason: str) -> None:
        if self._on_refusal is not None:
            self._on_refusal(path, reason)

    def run(self, connection: Connection, stream: Stream, call: UnaryCall) -> None:
        task = asyncio.get_running_loop().create_task(self._call(connection, stream, call))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _call(self, connection: Connection, stream: Stream, call: UnaryCall) -> None:
        handler = self.routes[call.path]
        try:
            reply = await handler(call)
        except GrpcError as exc:
            connection.answer(stream, None, exc)
        except Exception:
            log.exception("gRPC handler for %s failed", call.path)
            connection.answer(stream, None, GrpcError(INTERNAL, "internal error"))
        else:
            connection.answer(stream, reply, None)

    def _sweep(self) -> None:
        for connection in list(self.connections):
            connection.shrink_if_idle()
        self._sweeper = asyncio.get_running_loop().call_later(self.SWEEP_EVERY, self._sweep)

    async def close(self, grace: float) -> None:
        """Stop listening, send GOAWAY, let calls in flight finish within ``grace``, close."""
        if self._listener is not None:
            self._listener.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for connection in list(self.connections):
            connection.goaway()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace)
        for task in list(self._tasks):
            task.cancel()
        for connection in list(self.connections):
            connection.close()
        if self._listener is not None:
            await self._listener.wait_closed()
            self._listener = None
