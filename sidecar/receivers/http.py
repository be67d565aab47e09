"""OTLP/HTTP receiver: /v1/traces, /v1/metrics, /v1/logs, on our HTTP/1.1 server (sidecar.wire.http1).

Protobuf or JSON bodies, gzip or zstd content encodings, answered in the
request's content type with ``partial_success`` when items were rejected. Bad
input gets the status the OTLP specification names (400, 413, 415) with a
google.rpc.Status body; a full queue gets 503 with Retry-After so the SDK retries.

What can be decided from the head (path, method, peer, content type and encoding, a declared
size over the limit) is refused before the body is read, and before ``100 Continue``; so is a
body that does not fit the receive budget shared with the gRPC listener (503 with Retry-After).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from google.rpc import status_pb2

from sidecar import loop_guard
from sidecar.identity import Peer
from sidecar.masked_text import client_message
from sidecar.metrics import SidecarMetrics
from sidecar.overload.budget import Account, MemoryBudget
from sidecar.overload.config import LimitsConfig
from sidecar.overload.metrics import Counted
from sidecar.pipeline import Pipeline, Refused
from sidecar.receivers import contract, peers
from sidecar.receivers.config import ReceiversConfig
from sidecar.receivers.peers import PeerResolver
from sidecar.signals import Signal
from sidecar.wire import compression
from sidecar.wire.http1 import Http1Server, Limits, Request, Response
from sidecar.wire.otlp_json import InvalidJSON, JsonRefused, json_to_protobuf_bounded, response_json

log = logging.getLogger(__name__)

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
TRANSPORT = "http"
#: the media type of a request without Content-Type (as aiohttp reported it)
_DEFAULT_TYPE = "application/octet-stream"

#: gRPC codes of google.rpc.Status bodies, per HTTP status
_RPC_CODES = {400: 3, 401: 16, 403: 7, 408: 4, 429: 14, 404: 5, 405: 12, 413: 8, 415: 3, 417: 3, 500: 13, 503: 14}

#: the refused-requests reason of the server's own refusals, per status
_REFUSAL_REASONS = {408: "too_slow", 413: "too_large", 503: "busy"}
#: this listener's name in the overload metrics
LISTENER = "otlp_http"


#: the account of a server without a budget (unit tests): nothing is ever refused
_UNBOUNDED = MemoryBudget(1 << 62)


class _Route:
    """One signal's path: its signal and its metric children (looked up once)."""

    __slots__ = ("duration", "labels", "signal")

    def __init__(self, signal: Signal, metrics: SidecarMetrics) -> None:
        self.signal = signal
        self.labels = (signal.value, TRANSPORT)
        self.duration = metrics.request_duration.labels(*self.labels)


class _Accepted:
    """What ``_check`` learnt from a request's head, for ``_handle``."""

    __slots__ = ("content_type", "encoding", "peer", "route", "started")

    def __init__(self, route: _Route, peer: Peer, content_type: str, encoding: str, started: float) -> None:
        self.route = route
        self.peer = peer
        self.content_type = content_type
        self.encoding = encoding
        self.started = started


class HttpReceiver:
    def __init__(
        self,
        config: ReceiversConfig,
        pipeline: Pipeline,
        metrics: SidecarMetrics,
        *,
        peer_resolver: PeerResolver | None = None,
        limits: LimitsConfig | None = None,
    ) -> None:
        self._config = config
        self._limits = limits or LimitsConfig()
        self._count = Counted(metrics.overload, LISTENER)
        self._pipeline = pipeline
        self._metrics = metrics
        self._peer = peer_resolver or peers.peer_resolver(None)
        self._routes = {signal.http_path: _Route(signal, metrics) for signal in Signal}

    def server(self, limits: Limits | None = None, budget: MemoryBudget | None = None, *,
               tls: bool = False) -> Http1Server:
        """The HTTP/1.1 server for these routes (limits from ``receivers`` and ``limits``; ``tls``:
        it will listen with TLS, see ``limits.tls_max_connections``), its bodies taken from
        ``budget`` as they arrive when given."""
        if limits is None:
            config = self._limits
            limits = Limits(
                max_request_bytes=self._config.max_request_bytes,
                header_timeout=config.header_timeout,
                idle_timeout=config.idle_timeout,
                body_deadline=config.request_deadline,
                min_receive_rate=config.min_receive_rate,
                min_rate_grace=config.min_rate_grace,
                max_connections=config.connection_caps(tls=tls)[LISTENER],
            )
        server = Http1Server(
            self._handle, check=self._check, refuse=self._refuse, limits=limits, budget=budget, count=self._count
        )
        self._metrics.overload.track_connections(LISTENER, lambda: server.connections, limits.max_connections)
        return server

    def _check(self, request: Request) -> Response | None:
        """Refuse from the head alone, before the body is read; else note what ``_handle`` needs."""
        route = self._routes.get(request.path)
        content_type = _media_type(request.headers.get("content-type"))
        if route is None:
            return _error(404, content_type, f"no OTLP endpoint at {request.path}")
        if request.method != "POST":
            return _error(405, content_type, f"{request.method} is not allowed; use POST", {"Allow": "POST"})
        started = time.perf_counter()
        labels = route.labels
        try:
            peer = contract.resolve_peer(self._peer, request.transport)
            contract.check_loop(request.headers.get(loop_guard.HEADER))
        except Refused as exc:
            self._metrics.refused_requests.labels(*labels, exc.reason).inc()
            return _observed(route, started, _refused(exc, content_type))
        if content_type not in (PROTOBUF, JSON):
            self._metrics.refused_requests.labels(*labels, "unsupported_media_type").inc()
            message = f"unsupported content type {content_type!r}; use {PROTOBUF} or {JSON}"
            return _observed(route, started, _error(415, PROTOBUF, message))
        try:
            encoding = compression.normalize(request.headers.get("content-encoding"))
        except compression.UnsupportedEncoding as exc:
            self._metrics.refused_requests.labels(*labels, "unsupported_encoding").inc()
            return _observed(route, started, _error(415, content_type, str(exc)))
        request.context = _Accepted(route, peer, content_type, encoding, started)
        return None

    def _refuse(self, request: Request, status: int, message: str) -> Response:
        """The server's own refusals after the head (413 over the size limit, 417, 503 when the
        receive budget is short: retryable)."""
        headers = {"Retry-After": "1"} if status == 503 else None
        accepted: _Accepted | None = request.context
        if accepted is None:
            return _error(status, _media_type(request.headers.get("content-type")), message, headers)
        reason = _REFUSAL_REASONS.get(status)
        if reason is not None:
            self._metrics.refused_requests.labels(*accepted.route.labels, reason).inc()
        return _observed(accepted.route, accepted.started, _error(status, accepted.content_type, message, headers))

    async def _handle(self, request: Request) -> Response:
        accepted: _Accepted = request.context
        # what this request holds beyond its body (decompressed, decoded bytes) is taken from the
        # connection's account, and given back once it is queued or refused
        account = request.account or Account(_UNBOUNDED, _UNBOUNDED.limit)
        held = account.held
        try:
            return await self._answer(accepted, request.body, account)
        finally:
            account.give(account.held - held)
            accepted.route.duration.observe(time.perf_counter() - accepted.started)

    async def _answer(self, accepted: _Accepted, raw: bytes | memoryview, account: Account) -> Response:
        signal = accepted.route.signal
        labels = accepted.route.labels
        content_type = accepted.content_type
        limits = self._limits
        try:
            body = await contract.decompress(
                accepted.encoding, raw, self._config.max_decompressed_bytes, account=account, limits=limits,
                noun="body",
            )
            if content_type == JSON:
                body = await _from_json(signal, body, account, limits)
        except contract.Bounded as exc:
            self._metrics.refused_requests.labels(*labels, exc.reason).inc()
            self._count(exc.action)
            return _refused(exc, content_type)
        except InvalidJSON as exc:
            self._metrics.refused_requests.labels(*labels, "malformed").inc()
            return _error(400, content_type, str(exc))
        try:
            outcome = await self._pipeline.submit(signal, body, TRANSPORT, accepted.peer)
        except Refused as exc:  # counted by the pipeline
            return _refused(exc, content_type)
        response = contract.partial_success(signal, outcome)
        if response is None:
            return _OK_JSON if content_type == JSON else _OK_PROTOBUF
        return _encode(200, content_type, response)


#: the whole success answer without partial_success: an empty Export*ServiceResponse
_EMPTY_JSON = b"{}"
_OK_JSON = Response(200, _EMPTY_JSON, JSON)
_OK_PROTOBUF = Response(200, b"", PROTOBUF)


async def _from_json(signal: Signal, body: bytes | memoryview, account: Account, limits: LimitsConfig) -> bytes:
    """OTLP/JSON as protobuf, decoded within the bounds (a bound that refuses it: contract.Bounded)."""
    try:
        return await json_to_protobuf_bounded(
            signal, body, account=account, max_depth=limits.json_max_depth, max_items=limits.json_max_items
        )
    except JsonRefused as exc:
        raise contract.Bounded(str(exc), exc.action, exc.reason) from None


def _media_type(value: str | None) -> str:
    """The media type of a Content-Type value, lower-case, without parameters."""
    if not value:
        return _DEFAULT_TYPE
    return value.partition(";")[0].strip(" \t").lower()


def _observed(route: _Route, started: float, response: Response) -> Response:
    route.duration.observe(time.perf_counter() - started)
    return response


def _refused(refused: Refused, content_type: str) -> Response:
    """A refusal as OTLP/HTTP frames it: its status, Retry-After when retryable, a google.rpc.Status body."""
    retry_after = refused.retry_after_header
    return _error(refused.status.http, content_type, refused.message,
                  {"Retry-After": retry_after} if retry_after is not None else None)


def _error(status: int, content_type: str, message: str, headers: dict[str, str] | None = None) -> Response:
    body = status_pb2.Status(code=_RPC_CODES.get(status, 2), message=client_message(message))
    return _encode(status, content_type, body, headers)


def _encode(status: int, content_type: str, message: Any, headers: dict[str, str] | None = None) -> Response:
    if content_type == JSON:
        payload = response_json(message)
    else:
        payload = message.SerializeToString()
        content_type = PROTOBUF
    return Response(status, payload, content_type, headers)
