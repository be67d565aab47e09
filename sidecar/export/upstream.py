"""What the OTLP exporters (gRPC and HTTP) share: the upstream's settings, TLS, headers, auth."""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable

from sidecar import loop_guard
from sidecar.export.config import ExporterConfig
from sidecar.export.negotiate import DowngradeListener, Negotiator
from sidecar.export.result import ExportError

SslFactory = Callable[[], ssl.SSLContext | None]
HeaderSource = Callable[[], Awaitable[dict[str, str]]]
#: names a transport failure (e.g. "tls_unknown_ca") for the failed-items metric, or None
FailureClassifier = Callable[[BaseException], str | None]


class UpstreamExporter:
    """Base of the OTLP exporters."""

    name = "otlp"

    def __init__(
        self,
        config: ExporterConfig,
        *,
        ssl_context: SslFactory | None = None,
        extra_headers: HeaderSource | None = None,
        server_hostname: str | None = None,
        on_unauthorized: Callable[[], None] | None = None,
        classify: FailureClassifier | None = None,
    ) -> None:
        """``ssl_context``: the current client TLS context (reloadable); ``extra_headers``:
        per-export headers (policy egress headers, auth); ``on_unauthorized``: refresh a
        credential after 401 / UNAUTHENTICATED; ``classify``: name a transport failure."""
        self._config = config
        self._ssl_context = ssl_context
        self._extra_headers = extra_headers
        self._server_hostname = server_hostname
        self._on_unauthorized = on_unauthorized
        self._classify = classify
        #: the compression sent now: the configured one, lowered when the upstream refuses it
        self.negotiator = Negotiator("identity" if config.compression == "none" else config.compression)

    def watch_downgrades(self, listener: DowngradeListener) -> None:
        """``listener(from, to)`` each time the upstream's refusal lowers the compression."""
        self.negotiator.watch(listener)

    async def _headers(self) -> dict[str, str]:
        """The configured headers, the loop guard's mark, then the per-export ones (policy egress
        headers, auth)."""
        headers = dict(self._config.headers)
        headers[loop_guard.HEADER] = loop_guard.INSTANCE
        if self._extra_headers is not None:
            headers.update(await self._extra_headers())
        return headers

    def _unauthorized(self, error: ExportError) -> None:
        """The upstream refused our credential: a refreshable one (OAuth2) is renewed and retried."""
        if self._on_unauthorized is not None:
            self._on_unauthorized()
            error.retryable = True

    def _failure_reason(self, exc: BaseException | None, default: str) -> str:
        """A transport failure's name for the metrics (a TLS problem by its kind)."""
        if exc is None or self._classify is None:
            return default
        kind = self._classify(exc)
        return f"tls_{kind}" if kind else default
