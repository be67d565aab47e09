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

from sidecar.config import ReceiversConfig
from sidecar.export.partial import rejected_field
from sidecar.identity import Peer
from sidecar.metrics import SidecarMetrics
from sidecar.pipeline import InvalidRequest, PermissionDenied, Pipeline, Unavailable
from sidecar.receivers import peers
from sidecar.signals import Signal
from sidecar.tls.server import PeerRefused
from sidecar.wire import compression
from sidecar.wire.budget import ReceiveBudget
from sidecar.wire.http2 import GrpcError, GrpcServer, Limits, UnaryCall

log = logging.getLogger(__name__)

TRANSPORT = "grpc"

#: the peer of a connection, from its transport (PeerRefused for a TLS client refused)
PeerResolver = Callable[[Any], Peer]


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

    def server(self, budget: ReceiveBudget | None = None) -> GrpcServer:
        limits = Limits(
            max_message_bytes=self._config.max_request_bytes,
            max_frame_size=self._config.grpc_max_frame_size,
        )
        routes = {signal.grpc_path: self._handler(signal) for signal in Signal}
        return GrpcServer(
            routes, limits, authorize=self._authorize, budget=budget, on_refusal=self._refused_by_server
        )

    def _authorize(self, path: str, transport: Any) -> Peer:
        """The peer of a call, as soon as its headers arrive (it reaches the handler as the
        call's context); a TLS client outside the allowlist is refused there, before its message."""
        try:
            return self._peer(transport)
        except PeerRefused as exc:
            self._refused_by_server(path, exc.reason)
            raise GrpcError(Status[exc.grpc_status].value, exc.message) from None

    def _refused_by_server(self, path: str, reason: str) -> None:
        signal = self._signals.get(path)
        if signal is not None:  # an unknown method has no signal to count it under
            self._metrics.refused_requests.labels(signal.value, TRANSPORT, reason).inc()

    def _handler(self, signal: Signal) -> Callable[[UnaryCall], Awaitable[bytes]]:
        duration = self._metrics.request_duration.labels(signal.value, TRANSPORT)

        async def handle(call: UnaryCall) -> bytes:
            started = time.perf_counter()
            try:
                return await self._handle(signal, call)
            finally:
                duration.observe(time.perf_counter() - started)

        return handle

    async def _handle(self, signal: Signal, call: UnaryCall) -> bytes:
        labels = (signal.value, TRANSPORT)
        peer: Peer = call.context  # resolved by _authorize when the call's headers came
        try:
            data = self._message(call)
        except GrpcError as exc:
            reason = {
                Status.RESOURCE_EXHAUSTED: "too_large",
                Status.UNIMPLEMENTED: "unsupported_encoding",
            }.get(Status(exc.status), "bad_compression")
            self._metrics.refused_requests.labels(*labels, reason).inc()
            raise
        try:
            outcome = await self._pipeline.submit(signal, data, TRANSPORT, peer)
        except InvalidRequest as exc:
            raise GrpcError(Status.INVALID_ARGUMENT.value, exc.message) from None
        except PermissionDenied as exc:
            raise GrpcError(Status.PERMISSION_DENIED.value, exc.message) from None
        except Unavailable as exc:
            raise GrpcError(Status.UNAVAILABLE.value, exc.message) from None
        if not outcome.rejected:
            return b""  # an empty Export*ServiceResponse
        response = signal.response_class()
        setattr(response.partial_success, rejected_field(signal), outcome.rejected)
        response.partial_success.error_message = outcome.message
        return response.SerializeToString()  # type: ignore[no-any-return]

    def _message(self, call: UnaryCall) -> bytes:
        """The request message, decompressed as its ``grpc-encoding`` says."""
        try:
            encoding = compression.normalize(call.headers.get("grpc-encoding"))
        except compression.UnsupportedEncoding as exc:
            raise GrpcError(Status.UNIMPLEMENTED.value, str(exc)) from None
        limit = self._config.max_decompressed_bytes
        if not call.compressed:
            if len(call.message) > limit:
                raise GrpcError(Status.RESOURCE_EXHAUSTED.value, f"message exceeds the limit of {limit} bytes")
            return call.message
        if encoding == compression.IDENTITY:
            raise GrpcError(Status.INTERNAL.value, "compressed flag set without a grpc-encoding")
        try:
            return compression.decompress(encoding, call.message, limit)
        except compression.TooLarge as exc:
            raise GrpcError(Status.RESOURCE_EXHAUSTED.value, f"decompressed message {exc}") from None
        except compression.DecompressionError as exc:
            raise GrpcError(Status.INVALID_ARGUMENT.value, str(exc)) from None
