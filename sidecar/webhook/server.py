"""The webhook's HTTPS server (aiohttp): /mutate[/namespace|/pci], /healthz, /metrics.

Each path is one entry of the MutatingWebhookConfiguration (see :class:`Scope`):
the API server's namespace selectors decide which one a pod reaches. The serving
certificate is re-read when its files change, so a cert-manager renewal needs no
restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from sidecar.configkit import parse_endpoint
from sidecar.masked_text import MAX_QUOTED_TEXT, quoted
from sidecar.webhook.config import ServerConfig, WebhookConfig
from sidecar.webhook.inject import Scope
from sidecar.webhook.metrics import WebhookMetrics
from sidecar.webhook.review import rejection, review

log = logging.getLogger("otlp_sidecar.webhook")

CONFIG_KEY = web.AppKey("config", WebhookConfig)
METRICS_KEY: web.AppKey[WebhookMetrics] = web.AppKey("metrics")

ROUTES = {"/mutate": Scope.POD, "/mutate/namespace": Scope.NAMESPACE, "/mutate/pci": Scope.PCI}


def build_app(config: WebhookConfig) -> web.Application:
    """The aiohttp application (no listener: see :func:`serve`)."""
    app = web.Application(client_max_size=config.server.max_request_bytes)
    app[CONFIG_KEY] = config
    app[METRICS_KEY] = WebhookMetrics()
    for path, scope in ROUTES.items():
        app.router.add_post(path, _mutate_handler(scope))
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/metrics", _metrics)
    return app


def _mutate_handler(scope: Scope) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        metrics = request.app[METRICS_KEY]
        started = time.perf_counter()
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            metrics.reviews.labels(scope.value, "invalid").inc()
            limit = request.app[CONFIG_KEY].server.max_request_bytes
            message = f"the AdmissionReview is larger than {limit} bytes"
            log.warning("review scope=%s result=invalid reason=%s", scope.value, message)
            return web.json_response(rejection(message, 413), status=413)
        status, answer, outcome = review(body, scope, request.app[CONFIG_KEY])
        metrics.reviews.labels(scope.value, outcome.result).inc()
        metrics.duration.observe(time.perf_counter() - started)
        level = logging.WARNING if outcome.result in ("refused", "invalid", "error") else logging.INFO
        log.log(
            level,
            "review scope=%s namespace=%s pod=%s result=%s reason=%s",
            scope.value,
            quoted(outcome.namespace, 63),  # names as Kubernetes bounds them; what came in may be longer
            quoted(outcome.pod, 253),
            outcome.result,
            quoted(outcome.reason, MAX_QUOTED_TEXT),
        )
        return web.json_response(answer, status=status)

    return handle


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def _metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS_KEY].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def server_ssl_context(server: ServerConfig) -> ssl.SSLContext:
    """A TLS 1.2+ server context with the serving certificate loaded (OSError/SSLError if bad)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(server.cert_file, server.key_file)
    return context


def _stamp(paths: tuple[str, ...]) -> tuple[tuple[int, int, int], ...]:
    stamps = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            stamps.append((0, 0, 0))
        else:
            stamps.append((st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(stamps)


async def watch_certificate(
    context: ssl.SSLContext,
    server: ServerConfig,
    metrics: WebhookMetrics,
) -> None:
    """Reload the certificate into ``context`` when its files change; keep the old one on error."""
    paths = (server.cert_file, server.key_file)
    seen = _stamp(paths)
    while True:
        await asyncio.sleep(server.cert_reload_interval)
        current = _stamp(paths)
        if current == seen:
            continue
        seen = current
        try:
            context.load_cert_chain(server.cert_file, server.key_file)
        except (OSError, ssl.SSLError) as exc:
            metrics.cert_reloads.labels("failed").inc()
            log.error("serving certificate changed but cannot be loaded (keeping the old one): %s", exc)
        else:
            metrics.cert_reloads.labels("ok").inc()
            log.info("serving certificate reloaded from %s", server.cert_file)


@contextlib.asynccontextmanager
async def running(config: WebhookConfig) -> AsyncIterator[tuple[str, int]]:
    """Start the HTTPS server; yield the (host, port) it listens on; stop it on exit."""
    context = server_ssl_context(config.server)
    app = build_app(config)
    host, port = parse_endpoint(config.server.listen)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    watcher: asyncio.Task[None] | None = None
    try:
        site = web.TCPSite(runner, host, port, ssl_context=context)
        await site.start()
        addresses = runner.addresses
        bound = (addresses[0][0], addresses[0][1]) if addresses else (host, port)
        watcher = asyncio.create_task(watch_certificate(context, config.server, app[METRICS_KEY]))
        log.info("webhook listening on https://%s:%s", bound[0], bound[1])
        yield bound[0], bound[1]
    finally:
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        await runner.cleanup()


async def serve(config: WebhookConfig) -> None:
    """Run until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with running(config):
        await stop.wait()
    log.info("webhook stopped")
