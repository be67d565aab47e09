"""OTLP/gRPC receiver for the three Export services, on raw bytes (sidecar.wire.http2).

Requests are read as bytes (no decoded object tree), decompressed when the
client sent gzip or zstd, and handed to the pipeline. Refusals map to the gRPC
codes OTLP clients act on: INVALID_ARGUMENT (malformed, final),
PERMISSION_DENIED (policy, final), RESOURCE_EXHAUSTED (over the size limit,
final) and UNAVAILABLE (queue full / engine down: the client retries).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from grpclib.const import Status

from sidecar import loop_guard
from sidecar.identity import Peer
from sidecar.metrics import SidecarMetrics
from sidecar.overload.budget import MemoryBudget
from sidecar.overload.config import LimitsConfig
from sidecar.overload.metrics import Counted
from sidecar.overload.reasons import Action
from sidecar.pipeline import Pipeline, Refused
from sidecar.receivers import contract, peers
from sidecar.receivers.config import ReceiversConfig
from sidecar.receivers.peers import PeerResolver
from sidecar.signals import Signal
from sidecar.wire import compression
from sidecar.wire.http2 import GrpcError, GrpcServer, Limits, UnaryCall

log = logging.getLogger(__name__)

TRANSPORT = "grpc"
#: the listener's name in the overload metrics
LISTENER = "otlp_grpc"
#: the server's refusal reasons named as on the HTTP listener (one vocabulary of reasons)
_SERVER_REASONS = {"timeout": "too_slow"}


class _Call:
    """What ``_authorize`` learnt from a call's headers, for its handler (``UnaryCall.context``)."""

    __slots__ = ("peer", "started")

    def __init__(self, peer: Peer, started: float) -> None:
        self.peer = peer
        self.started = started


class GrpcReceiver:
    """One unary handler per signal, served by :meth:`server`."""

    def __init__(
        self,
        config: ReceiversConfig,
        pipeline: Pipeline,
        metrics: SidecarMetrics,
        *,
        peer_resolver: PeerResolver | None = None,
    ) -> None:
        self._config = config
        self._pipeline = pipeline
        self._metrics = metrics
        self._peer = peer_resolver or peers.peer_resolver(None)
        self._signals = {signal.grpc_path: signal for signal in Signal}
        self._count = Counted(None, LISTENER)
        self._limits = LimitsConfig()

    def server(
        self, budget: MemoryBudget | None = None, limits: LimitsConfig | None = None, *, tls: bool = False,
    ) -> GrpcServer:
        """The gRPC server, bounded by the ``limits`` section (its defaults when None; ``tls``: it
        will listen with TLS, see ``limits.tls_max_connections``); its protective actions and open
        connections are reported in the overload metrics."""
        limits = self._limits = limits or LimitsConfig()
        cap = limits.connection_caps(tls=tls)[LISTENER]
        wire_limits = Limits.from_config(
            limits, self._config.max_request_bytes, self._config.grpc_max_frame_size, cap
        )
        routes = {signal.grpc_path: self._handler(signal) for signal in Signal}
        overload = self._metrics.overload
        self._count = Counted(overload, LISTENER)
        server = GrpcServer(
            routes, wire_limits, authorize=self._authorize, budget=budget, on_refusal=self._refused_by_server,
            count=self._count,
        )
        overload.track_connections(LISTENER, lambda: server.open_connections, cap)
        return server

    def _authorize(self, path: str, transport: Any) -> _Call:
        """The peer of a call and when its head was complete, as soon as its headers arrive (it
        reaches the handler as the call's context: the request duration starts here, as on the
        HTTP listener); a TLS client outside the allowlist is refused there, before its message."""
        started = time.perf_counter()
        try:
            return _Call(contract.resolve_peer(self._peer, transport), started)
        except Refused as exc:
            self._refused_by_server(path, exc.reason)
            signal = self._signals.get(path)
            if signal is not None:
                self._metrics.request_duration.labels(signal.value, TRANSPORT).observe(time.perf_counter() - started)
            raise GrpcError(exc.status.grpc, exc.message) from None

    def _refused_by_server(self, path: str, reason: str) -> None:
        signal = self._signals.get(path)
        if signal is not None:  # an unknown method has no signal to count it under
            reason = _SERVER_REASONS.get(reason, reason)
            self._metrics.refused_requests.labels(signal.value, TRANSPORT, reason).inc()

    def _handler(self, signal: Signal) -> Callable[[UnaryCall], Awaitable[bytes]]:
        duration = self._metrics.request_duration.labels(signal.value, TRANSPORT)

        async def handle(call: UnaryCall) -> bytes:
            try:
                return await self._handle(signal, call)
            finally:
                # from the call's complete head (_authorize) to its answer handed to the connection
                duration.observe(time.perf_counter() - call.context.started)

        return handle

    async def _handle(self, signal: Signal, call: UnaryCall) -> bytes:
        labels = (signal.value, TRANSPORT)
        peer = call.context.peer  # resolved by _authorize when the call's headers came
        try:
            contract.check_loop(call.headers.get(loop_guard.HEADER))
        except Refused as exc:
            self._metrics.refused_requests.labels(*labels, exc.reason).inc()
            raise GrpcError(exc.status.grpc, exc.message) from None
        data = await self._message(call, labels)
        try:
            outcome = await self._pipeline.submit(signal, data, TRANSPORT, peer)
        except Refused as exc:  # counted by the pipeline
            raise GrpcError(exc.status.grpc, exc.message) from None
        finally:
            if call.account is not None and data is not call.message:
                call.account.give(len(data))  # the decompressed bytes: queued or refused now
        response = contract.partial_success(signal, outcome)
        if response is None:
            return b""  # an empty Export*ServiceResponse
        encoded: bytes = response.SerializeToString()
        return encoded

    async def _message(self, call: UnaryCall, labels: tuple[str, str]) -> bytes | memoryview:
        """The request message, decompressed as its ``grpc-encoding`` says: in bounded steps that
        give the event loop a turn, each taken from the connection's account (given back by
        :meth:`_handle` once the request is queued or refused). A refusal is counted here."""
        refused_requests = self._metrics.refused_requests
        try:
            encoding = compression.normalize(call.headers.get("grpc-encoding"))
        except compression.UnsupportedEncoding as exc:
            refused_requests.labels(*labels, "unsupported_encoding").inc()
            raise GrpcError(Status.UNIMPLEMENTED.value, str(exc)) from None
        limit = self._config.max_decompressed_bytes
        if not call.compressed:
            if len(call.message) > limit:
                refused_requests.labels(*labels, "too_large").inc()
                self._count(Action.request_too_large)
                raise GrpcError(Status.RESOURCE_EXHAUSTED.value, f"message exceeds the limit of {limit} bytes")
            return call.message
        if encoding == compression.IDENTITY:
            refused_requests.labels(*labels, "bad_compression").inc()
            raise GrpcError(Status.INTERNAL.value, "compressed flag set without a grpc-encoding")
        try:
            return await contract.decompress(
                encoding, call.message, limit, account=call.account, limits=self._limits, noun="message"
            )
        except contract.Bounded as exc:
            refused_requests.labels(*labels, exc.reason).inc()
            self._count(exc.action)
            raise GrpcError(exc.status.grpc, exc.message) from None
