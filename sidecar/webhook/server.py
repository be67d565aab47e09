"""The webhook's HTTPS server: /mutate[/namespace|/pci], /healthz, /metrics.

Each path is one entry of the MutatingWebhookConfiguration (see :class:`Scope`):
the API server's namespace selectors decide which one a pod reaches.

It runs on the sidecar's own bounded HTTP/1.1 server (``sidecar.wire.http1``) behind its TLS
acceptor, because the webhook is reachable from the whole cluster and runs in 128 Mi: at most
``webhook.max_connections`` connections (at the cap the one idle longest is closed) and as many
TLS handshakes in progress; a head must arrive within 10 s, a body within 30 s, an idle
connection is closed after 75 s, one whose answer does not move for 10 s (a client that does not
read it: meanwhile it holds that answer and a few hundred KiB of TLS buffers, and no further request
is read); at most four reviews of ``max_request_bytes`` are received at once (more get 503, the API
server's failure policy decides). Each of these actions is counted
(``otlp_sidecar_webhook_overload_actions_total``). The serving certificate is re-read when its
files change, so a cert-manager renewal needs no restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from sidecar.configkit import parse_endpoint
from sidecar.masked_text import MAX_QUOTED_TEXT, quoted
from sidecar.overload.budget import MemoryBudget, light_reserve
from sidecar.overload.memory import tune_malloc
from sidecar.overload.reasons import Action
from sidecar.tls.acceptor import tls_wrapper
from sidecar.tls.server import ServerTLS
from sidecar.webhook.config import ServerConfig, WebhookConfig
from sidecar.webhook.inject import Scope
from sidecar.webhook.metrics import WebhookMetrics
from sidecar.webhook.review import rejection, review
from sidecar.wire.http1 import Http1Server, Limits, Request, Response, plain

log = logging.getLogger("otlp_sidecar.webhook")

ROUTES = {"/mutate": Scope.POD, "/mutate/namespace": Scope.NAMESPACE, "/mutate/pci": Scope.PCI}
_OTHER_ROUTES = ("/healthz", "/metrics")
_JSON = "application/json"
#: reviews of ``max_request_bytes`` received at once (the receive budget is this many of them)
CONCURRENT_BODIES = 4
HEADER_TIMEOUT = 10.0
#: seconds between two log lines for invalid reviews (anyone who reaches the port can send them at
#: any rate: 1,440 lines in 4 s); the metric counts each one
INVALID_LOG_EVERY = 1.0
IDLE_TIMEOUT = 75.0
BODY_DEADLINE = 30.0


def listener_limits(server: ServerConfig) -> Limits:
    """What one request and one connection of the webhook may take."""
    return Limits(
        max_request_bytes=server.max_request_bytes,
        max_header_bytes=16 * 1024,
        max_headers=64,
        max_request_line=4 * 1024,
        read_ahead=16 * 1024,
        buffer_size=16 * 1024,
        idle_timeout=IDLE_TIMEOUT,
        header_timeout=HEADER_TIMEOUT,
        body_timeout=HEADER_TIMEOUT,
        body_deadline=BODY_DEADLINE,
        pool_bytes=0,
        max_connections=server.max_connections,
    )


class WebhookServer:
    """The routes on a bounded :class:`Http1Server` (not started: ``await start(host, port, tls)``)."""

    def __init__(self, config: WebhookConfig, metrics: WebhookMetrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or WebhookMetrics()
        self.limits = listener_limits(config.server)
        per_connection = config.server.max_request_bytes + self.limits.read_ahead
        # four large reviews at once, and beyond them a reserve only connections holding at most
        # 1 MiB may take: a normal review (a few kB) is served while large or stalled ones fill the rest
        bodies = CONCURRENT_BODIES * per_connection
        reserve = light_reserve(bodies)
        self.budget = MemoryBudget(bodies + reserve, per_connection, light_reserve=reserve)
        self.server = Http1Server(self._handle, check=self._check, refuse=self._refuse, limits=self.limits,
                                  budget=self.budget, count=self.metrics.count)
        self.metrics.connections.set_function(lambda: self.server.connections)
        self.metrics.connections_limit.set(self.limits.max_connections)
        self._invalid_logged_at = -INVALID_LOG_EVERY
        self._invalid_unlogged = 0

    def _log_invalid(self) -> str | None:
        """None when this invalid review is not logged (one was a moment ago), else what to add to
        its line: how many were left out since the last one."""
        now = time.monotonic()
        if now - self._invalid_logged_at < INVALID_LOG_EVERY:
            self._invalid_unlogged += 1
            return None
        self._invalid_logged_at = now
        unlogged, self._invalid_unlogged = self._invalid_unlogged, 0
        return f" ({unlogged} more invalid reviews since the last line)" if unlogged else ""

    def _check(self, request: Request) -> Response | None:
        if request.path in ROUTES:
            if request.method != "POST":
                return plain(405, f"{request.method} is not allowed; use POST", {"Allow": "POST"})
            return None
        if request.path in _OTHER_ROUTES:
            if request.method not in ("GET", "HEAD"):
                return plain(405, f"{request.method} is not allowed; use GET", {"Allow": "GET, HEAD"})
            if request.content_length or request.chunked:
                return plain(413, "this path reads no body")
            return None
        return plain(404, f"nothing at {request.path}; try /mutate, /healthz or /metrics")

    def _refuse(self, request: Request, status: int, message: str) -> Response:
        """Refusals the listener decides (413, 503, 417) as AdmissionReview answers."""
        scope = ROUTES.get(request.path)
        if status == 413:
            message = f"the AdmissionReview is larger than {self.config.server.max_request_bytes} bytes"
            if scope is not None:
                self.metrics.reviews.labels(scope.value, "invalid").inc()
                more = self._log_invalid()
                if more is not None:
                    log.warning("review scope=%s result=invalid reason=%s%s", scope.value, message, more)
        # 503 (the receive memory is full): counted as budget_full, not logged per request
        headers = {"Retry-After": "1"} if status == 503 else None
        return _json(rejection(message, status), status, headers)

    async def _handle(self, request: Request) -> Response:
        if request.path == "/healthz":
            return Response(200, b"ok\n")
        if request.path == "/metrics":
            return Response(200, generate_latest(self.metrics.registry), CONTENT_TYPE_LATEST)
        scope = ROUTES[request.path]
        started = time.perf_counter()
        status, answer, outcome = review(bytes(request.body), scope, self.config)
        self.metrics.reviews.labels(scope.value, outcome.result).inc()
        self.metrics.duration.observe(time.perf_counter() - started)
        more = self._log_invalid() if outcome.result == "invalid" else ""
        if more is None:
            return _json(answer, status)
        level = logging.WARNING if outcome.result in ("refused", "invalid", "error") else logging.INFO
        log.log(
            level,
            "review scope=%s namespace=%s pod=%s result=%s reason=%s%s",
            scope.value,
            quoted(outcome.namespace, 63),  # names as Kubernetes bounds them; what came in may be longer
            quoted(outcome.pod, 253),
            outcome.result,
            quoted(outcome.reason, MAX_QUOTED_TEXT),
            more,
        )
        return _json(answer, status)


def _json(body: dict[str, Any], status: int, headers: dict[str, str] | None = None) -> Response:
    return Response(status, json.dumps(body).encode(), _JSON, headers)


def serving_tls(server: ServerConfig, metrics: WebhookMetrics) -> ServerTLS:
    """The serving certificate, re-read when its files change (checked at most every
    ``cert_reload_interval``); a broken file keeps the old one. Raises ConfigError."""
    tls = ServerTLS(
        cert_file=server.cert_file,
        key_file=server.key_file,
        check_interval=server.cert_reload_interval,
        keys={"cert_file": "webhook.cert_file", "key_file": "webhook.key_file"},
    )

    def reloaded(_role: str, result: str) -> None:
        metrics.cert_reloads.labels(result).inc()
        if result == "ok":
            log.info("serving certificate reloaded from %s", server.cert_file)
        else:
            log.error("serving certificate changed but cannot be loaded (keeping the old one): %s", tls.last_error)

    tls.add_reload_listener(reloaded)
    return tls


async def watch_certificate(tls: ServerTLS, interval: float) -> None:
    """Check the certificate files every ``interval`` even when no client connects (handshakes
    check them too), so a renewal or a broken file shows in the metrics and the log."""
    while True:
        await asyncio.sleep(interval)
        tls.maybe_reload()


@contextlib.asynccontextmanager
async def running(config: WebhookConfig) -> AsyncIterator[tuple[str, int]]:
    """Start the HTTPS server; yield the (host, port) it listens on; stop it on exit.

    Raises ConfigError when the certificate cannot be loaded."""
    metrics = WebhookMetrics()
    tls = serving_tls(config.server, metrics)
    # large buffers (answers of up to 1.4 MB, bodies) in their own mappings: freed, they are the
    # system's again, so an attack's memory is given back once its connections are closed
    tune_malloc()
    webhook = WebhookServer(config, metrics)
    host, port = parse_endpoint(config.server.listen)
    wrap = tls_wrapper(tls, handshake_timeout=HEADER_TIMEOUT, max_handshakes=config.server.max_connections,
                       refused=lambda: metrics.count(Action.connection_limit))
    bound = await webhook.server.start(host, port, wrap)
    watcher = asyncio.create_task(watch_certificate(tls, config.server.cert_reload_interval))
    try:
        log.info("webhook listening on https://%s:%s", bound[0], bound[1])
        yield bound
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        await webhook.server.close(1.0)


async def serve(config: WebhookConfig) -> None:
    """Run until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with running(config):
        await stop.wait()
    log.info("webhook stopped")
