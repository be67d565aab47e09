"""TLS metrics: certificate expiry, reloads, refused peers and failed handshakes.

Labels carry fixed vocabularies only (role, result, reason), never names or IDs.
"""

from __future__ import annotations

import ssl
import weakref
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from sidecar.metrickit import Kind, Label, declare
from sidecar.tls.reload import ReloadingTLS

PREFIX = "otlp_sidecar_tls"
COMPONENT = "sidecar.tls"

#: reasons of failed handshakes, from :func:`classify_tls_error`
HANDSHAKE_REASONS = (
    "unknown_ca",
    "certificate_expired",
    "hostname_mismatch",
    "no_client_certificate",
    "bad_certificate",
    "protocol_version",
    "not_tls",
    "timeout",
    "handshake",
)
#: why a client is refused after its handshake (sidecar.tls.server.PeerRefused)
PEER_REFUSALS = ("no_client_certificate", "spiffe_id_not_allowed", "not_tls")
ROLE = Label("role", ("client", "server"), every=False,
             description="client: the exporter's certificate or handshakes with the upstream; server: the listeners'")

CERTIFICATE_EXPIRY = declare(
    f"{PREFIX}_certificate_expiry_seconds", Kind.gauge, "s",
    "Seconds until the certificate in use expires (negative once expired).",
    component=COMPONENT,
    labels=(ROLE, Label("name", closed=False, description="the TLS configuration it belongs to")),
    appears="for each certificate configured (receivers_tls, exporter_tls)",
)
RELOADS = declare(
    f"{PREFIX}_reloads", Kind.counter, "{reloads}",
    "Reloads after the certificate files changed: ok (a new generation is in use) "
    "or failed (the previous one stays).",
    component=COMPONENT, labels=(ROLE, Label("result", ("ok", "failed"), every=False)),
    appears="at the first reload",
)
REFUSED_PEERS = declare(
    f"{PREFIX}_refused_peers", Kind.counter, "{requests}",
    "Requests refused after the handshake (no client certificate, SPIFFE ID not allowed).",
    component=COMPONENT, labels=(Label("reason", PEER_REFUSALS, every=False),),
    appears="at the first refusal",
)
HANDSHAKE_FAILURES = declare(
    f"{PREFIX}_handshake_failures", Kind.counter, "{handshakes}",
    "TLS handshakes that failed, by side (client: to the upstream) and reason.",
    component=COMPONENT, labels=(ROLE, Label("reason", HANDSHAKE_REASONS, every=False)),
    appears="at the first failed handshake",
)


def classify_tls_error(exc: BaseException) -> str:
    """A fixed reason for a TLS failure, for a metric label and a clear log line."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = getattr(exc, "verify_code", 0)
        message = str(getattr(exc, "verify_message", "") or exc).lower()
        if code == 10 or "expired" in message:
            return "certificate_expired"
        if code == 62 or "hostname mismatch" in message or "ip address mismatch" in message:
            return "hostname_mismatch"
        if code in (2, 19, 20, 21) or "issuer" in message or "self-signed" in message:
            return "unknown_ca"
        return "bad_certificate"
    if isinstance(exc, TimeoutError) or (
        isinstance(exc, ConnectionAbortedError) and "taking longer" in str(exc)
    ):
        return "timeout"  # asyncio aborts a slow handshake with ConnectionAbortedError
    text = str(exc).lower()
    reason = (getattr(exc, "reason", "") or "").lower()
    if "certificate_required" in reason or "peer did not return a certificate" in text:
        return "no_client_certificate"
    if "expired" in reason:
        return "certificate_expired"
    if "unknown_ca" in reason or "unknown ca" in text:
        return "unknown_ca"
    if "http_request" in reason or "wrong_version_number" in reason:
        return "not_tls"
    if "version" in reason or "unsupported_protocol" in reason:
        return "protocol_version"
    if "certificate" in reason:
        return "bad_certificate"
    return "handshake"


def find_tls_error(exc: BaseException | None) -> ssl.SSLError | None:
    """The ``ssl.SSLError`` behind a client library's exception (aiohttp keeps it in
    ``certificate_error`` / ``os_error``, others chain it), or None if it is not a TLS failure."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ssl.SSLError):
            return exc
        inner = getattr(exc, "certificate_error", None) or getattr(exc, "os_error", None)
        if isinstance(inner, ssl.SSLError):
            return inner
        exc = exc.__cause__ or exc.__context__
    return None


class _ExpiryCollector(Collector):
    """Seconds until each tracked certificate ends, read at scrape time."""

    def __init__(self) -> None:
        self.tracked: weakref.WeakValueDictionary[str, ReloadingTLS] = weakref.WeakValueDictionary()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            CERTIFICATE_EXPIRY.name, CERTIFICATE_EXPIRY.description, labels=CERTIFICATE_EXPIRY.label_names
        )
        for name, tls in sorted(self.tracked.items()):
            left = tls.seconds_until_expiry()
            if left is not None:
                family.add_metric([tls.role, name], left)
        yield family


class TLSMetrics:
    """The TLS metrics on a registry; ``track`` each ClientTLS / ServerTLS."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self._expiry = _ExpiryCollector()
        r.register(self._expiry)
        self.reloads = RELOADS.counter(r)
        self.refused_peers = REFUSED_PEERS.counter(r)
        self.handshake_failures = HANDSHAKE_FAILURES.counter(r)

    def track(self, tls: ReloadingTLS, name: str = "") -> None:
        """Export ``tls``'s expiry and count its reloads (and refusals for a ServerTLS)."""
        self._expiry.tracked[name or tls.role] = tls
        tls.add_reload_listener(self._on_reload)
        add_refusal = getattr(tls, "add_refusal_listener", None)
        if add_refusal is not None:
            add_refusal(self._on_refusal)
            # a ServerTLS (the one with refusal listeners) has handshake listeners too
            tls.add_handshake_listener(self._on_server_handshake_failure)  # type: ignore[attr-defined]

    def handshake_failed(self, role: str, exc: BaseException) -> str:
        """Count a failed handshake and return its reason (``classify_tls_error``)."""
        reason = classify_tls_error(exc)
        self.handshake_failures.labels(role=role, reason=reason).inc()
        return reason

    def client_failure(self, exc: BaseException) -> str | None:
        """For the exporter: if ``exc`` is a failed TLS handshake with the upstream, count it
        (role ``client``) and return its reason; None for any other error."""
        tls_error = find_tls_error(exc)
        if tls_error is None:
            return None
        return self.handshake_failed("client", tls_error)

    def _on_reload(self, role: str, result: str) -> None:
        self.reloads.labels(role=role, result=result).inc()

    def _on_server_handshake_failure(self, reason: str) -> None:
        self.handshake_failures.labels(role="server", reason=reason).inc()

    def _on_refusal(self, reason: str) -> None:
        self.refused_peers.labels(reason=reason).inc()
