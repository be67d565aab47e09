"""OTLP/gRPC receiver (grpclib) for the three Export services, on raw bytes.

Requests are read as bytes (no decoded object tree), decompressed when the
client sent gzip or zstd, and handed to the pipeline. Refusals map to the gRPC
codes OTLP clients act on: INVALID_ARGUMENT (malformed, final),
PERMISSION_DENIED (policy, final), RESOURCE_EXHAUSTED (over the size limit,
final) and UNAVAILABLE (queue full / engine down: the client retries).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import grpclib.server
from grpclib.const import Cardinality, Handler, Status
from grpclib.exceptions import GRPCError

from sidecar.config import ReceiversConfig
from sidecar.export.partial import rejected_field
from sidecar.identity import Peer
from sidecar.metrics import SidecarMetrics
from sidecar.pipeline import InvalidRequest, PermissionDenied, Pipeline, Unavailable
from sidecar.receivers.peers import grpc_peer_resolver
from sidecar.signals import Signal
from sidecar.tls.server import PeerRefused
from sidecar.wire import grpc as grpcwire

log = logging.getLogger(__name__)

TRANSPORT = "grpc"

PeerResolver = Callable[[grpclib.server.Stream[Any, Any]], Peer]


class GrpcReceiver:
    """The servable: ``__mapping__`` gives grpclib one unary handler per signal."""

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
        self._peer = peer_resolver or grpc_peer_resolver(None)

    def __mapping__(self) -> dict[str, Handler]:
        return {
            signal.grpc_path: Handler(self._handler(signal), Cardinality.UNARY_UNARY, bytes, bytes)
            for signal in Signal
        }

    def server(self) -> grpcwire.Server:
        return grpcwire.Server([self], max_frame_size=self._config.grpc_max_frame_size)

    def _handler(self, signal: Signal) -> Callable[[grpclib.server.Stream[Any, Any]], Any]:
        duration = self._metrics.request_duration.labels(signal.value, TRANSPORT)

        async def handle(stream: grpclib.server.Stream[Any, Any]) -> None:
            started = time.perf_counter()
            try:
                await self._handle(signal, stream)
            finally:
                duration.observe(time.perf_counter() - started)

        return handle

    async def _handle(self, signal: Signal, stream: grpclib.server.Stream[Any, Any]) -> None:
        labels = (signal.value, TRANSPORT)
        try:
            peer = self._peer(stream)
        except PeerRefused as exc:
            self._metrics.refused_requests.labels(*labels, exc.reason).inc()
            raise GRPCError(Status[exc.grpc_status], exc.message) from None
        try:
            grpcwire.check_encoding_header(stream)
            data = await grpcwire.recv_unary(
                stream, self._config.max_request_bytes, self._config.max_decompressed_bytes
            )
        except GRPCError as exc:
            reason = {
                Status.RESOURCE_EXHAUSTED: "too_large",
                Status.UNIMPLEMENTED: "unsupported_encoding",
            }.get(exc.status, "bad_compression")
            self._metrics.refused_requests.labels(*labels, reason).inc()
            raise
        try:
            outcome = await self._pipeline.submit(signal, data, TRANSPORT, peer)
        except InvalidRequest as exc:
            raise GRPCError(Status.INVALID_ARGUMENT, exc.message) from None
        except PermissionDenied as exc:
            raise GRPCError(Status.PERMISSION_DENIED, exc.message) from None
        except Unavailable as exc:
            raise GRPCError(Status.UNAVAILABLE, exc.message) from None
        response = signal.response_class()
        if outcome.rejected:
            setattr(response.partial_success, rejected_field(signal), outcome.rejected)
            response.partial_success.error_message = outcome.message
        await grpcwire.send_unary(stream, response.SerializeToString())
