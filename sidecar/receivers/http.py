"""OTLP/HTTP receiver (aiohttp): /v1/traces, /v1/metrics, /v1/logs.

Protobuf or JSON bodies, gzip or zstd content encodings, answered in the
request's content type with ``partial_success`` when items were rejected. Bad
input gets the status the OTLP specification names (400, 413, 415) with a
google.rpc.Status body; a full queue gets 503 with Retry-After so the SDK retries.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

from aiohttp import web
from google.rpc import status_pb2

from sidecar.config import ReceiversConfig
from sidecar.export.partial import rejected_field
from sidecar.identity import Peer
from sidecar.metrics import SidecarMetrics
from sidecar.pipeline import InvalidRequest, PermissionDenied, Pipeline, RateLimited, Refused, Unavailable
from sidecar.receivers.peers import http_peer_resolver
from sidecar.signals import Signal
from sidecar.tls.server import PeerRefused
from sidecar.wire import compression
from sidecar.wire.otlp_json import InvalidJSON, json_to_protobuf, response_json

log = logging.getLogger(__name__)

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
TRANSPORT = "http"

#: gRPC codes of google.rpc.Status bodies, per HTTP status
_RPC_CODES = {400: 3, 401: 16, 403: 7, 429: 14, 404: 5, 405: 12, 413: 8, 415: 3, 500: 13, 503: 14}

PeerResolver = Callable[[web.Request], Peer]


class HttpReceiver:
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
        self._peer = peer_resolver or http_peer_resolver(None)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self._config.max_request_bytes)
        for signal in Signal:
            app.router.add_post(signal.http_path, self._handler(signal))
        return app

    def _handler(self, signal: Signal) -> Callable[[web.Request], object]:
        duration = self._metrics.request_duration.labels(signal.value, TRANSPORT)

        async def handle(request: web.Request) -> web.Response:
            started = time.perf_counter()
            try:
                return await self._handle(signal, request)
            finally:
                duration.observe(time.perf_counter() - started)

        return handle

    async def _handle(self, signal: Signal, request: web.Request) -> web.Response:
        labels = (signal.value, TRANSPORT)
        content_type = request.content_type
        try:
            peer = self._peer(request)
        except PeerRefused as exc:
            self._metrics.refused_requests.labels(*labels, exc.reason).inc()
            return _error(exc.http_status, content_type if content_type == JSON else PROTOBUF, exc.message)
        if content_type not in (PROTOBUF, JSON):
            self._metrics.refused_requests.labels(*labels, "unsupported_media_type").inc()
            return _error(
                415, PROTOBUF,
                f"unsupported content type {content_type!r}; use {PROTOBUF} or {JSON}",
            )
        try:
            encoding = compression.normalize(request.headers.get("Content-Encoding"))
        except compression.UnsupportedEncoding as exc:
            self._metrics.refused_requests.labels(*labels, "unsupported_encoding").inc()
            return _error(415, content_type, str(exc))
        limit = self._config.max_request_bytes
        if request.content_length is not None and request.content_length > limit:
            self._metrics.refused_requests.labels(*labels, "too_large").inc()
            message = f"body of {request.content_length} bytes exceeds the limit of {limit} bytes"
            return _error(413, content_type, message)
        raw = await _read_body(request, limit)
        if raw is None:
            self._metrics.refused_requests.labels(*labels, "too_large").inc()
            return _error(413, content_type, f"body exceeds the limit of {limit} bytes")
        try:
            body = compression.decompress(encoding, raw, self._config.max_decompressed_bytes)
        except compression.TooLarge as exc:
            self._metrics.refused_requests.labels(*labels, "too_large").inc()
            return _error(413, content_type, f"decompressed body {exc}")
        except compression.DecompressionError as exc:
            self._metrics.refused_requests.labels(*labels, "bad_compression").inc()
            return _error(400, content_type, str(exc))
        if content_type == JSON:
            try:
                body = json_to_protobuf(signal, body)
            except InvalidJSON as exc:
                self._metrics.refused_requests.labels(*labels, "malformed").inc()
                return _error(400, content_type, str(exc))
        try:
            outcome = await self._pipeline.submit(signal, body, TRANSPORT, peer)
        except InvalidRequest as exc:
            return _error(400, content_type, exc.message)
        except PermissionDenied as exc:
            return _error(403, content_type, exc.message)
        except Unavailable as exc:
            headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after or 1)))}
            status = 429 if isinstance(exc, RateLimited) else 503
            return _error(status, content_type, exc.message, headers)
        except Refused as exc:  # pragma: no cover - every Refused is one of the above
            return _error(500, content_type, exc.message)
        if not outcome.rejected:
            return web.Response(body=_EMPTY_JSON if content_type == JSON else b"", content_type=content_type)
        response = signal.response_class()
        setattr(response.partial_success, rejected_field(signal), outcome.rejected)
        response.partial_success.error_message = outcome.message
        return _encode(200, content_type, response)


#: the whole success answer without partial_success: an empty Export*ServiceResponse
_EMPTY_JSON = b"{}"


async def _read_body(request: web.Request, limit: int) -> bytes | None:
    """The request body, or None when it exceeds ``limit``.

    Joins the received chunks once (``request.read()`` copies the body twice more).
    """
    content = request.content
    if hasattr(content, "set_read_chunk_size"):  # aiohttp >= 3.13: fewer pause/resume cycles
        # at most 1 MiB buffered ahead of us per request: TCP slows a sender down beyond that
        content.set_read_chunk_size(min(limit, 1 << 20))
    chunks: list[bytes] = []
    size = 0
    while chunk := await content.readany():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _error(status: int, content_type: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    body = status_pb2.Status(code=_RPC_CODES.get(status, 2), message=message)
    return _encode(status, content_type, body, headers)


def _encode(status: int, content_type: str, message: object, headers: dict[str, str] | None = None) -> web.Response:
    if content_type == JSON:
        payload = response_json(message)  # type: ignore[arg-type]
    else:
        payload = message.SerializeToString()  # type: ignore[attr-defined]
        content_type = PROTOBUF
    return web.Response(status=status, body=payload, content_type=content_type, headers=headers)
