"""Config sections for inbound TLS (``[receivers_tls]``) and the upstream TLS extras
(``[exporter_tls]``), and the builders that turn them into reloadable TLS objects.

The upstream CA, client certificate and key stay in ``[exporter]`` (``certificate``,
``client_certificate``, ``client_key``: the ``OTEL_EXPORTER_OTLP_*`` variables);
:func:`client_tls` combines them with ``[exporter_tls]``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sidecar.configkit import ConfigError, parse_endpoint, setting
from sidecar.tls.client import ClientTLS
from sidecar.tls.server import ServerTLS, check_spiffe_allow

if TYPE_CHECKING:
    from sidecar.export.config import ExporterConfig


@dataclass(frozen=True)
class InboundTLSConfig:
    """TLS on the receivers. Without `cert_file` they speak plaintext, and then only on a
    loopback address (the app is in the same pod); with it, TLS, or mTLS with `client_ca_file`."""

    cert_file: str = setting("", "Server certificate (PEM, chain allowed); enables TLS.", kind="path")
    key_file: str = setting("", "Private key of `cert_file` (PEM, unencrypted).", kind="path", secret=True)
    client_ca_file: str = setting(
        "",
        "CA bundle that signs client certificates; enables mTLS (certificates verified).",
        kind="path",
    )
    require_client_cert: bool = setting(
        False,
        "Refuse clients without a certificate (HTTP 401 / gRPC UNAUTHENTICATED).",
        kind="bool",
    )
    spiffe_allow: list[str] = setting(
        [],
        "SPIFFE IDs allowed to send: exact, or a prefix ending in `/*`; empty allows all. "
        "Others are refused (HTTP 403 / gRPC PERMISSION_DENIED).",
        kind="list",
        check=lambda v: _allow_problem(v),
    )
    min_version: str = setting("1.2", "Lowest TLS version accepted.", choices=["1.2", "1.3"])
    reload_interval: float = setting(
        5.0,
        "How often the files are checked for changes (rotation without restart).",
        kind="duration",
        min=0.0,
    )
    allow_plaintext_remote: bool = setting(
        False,
        "Allow a plaintext listener on a non-loopback address (not recommended).",
        kind="bool",
    )

    @property
    def enabled(self) -> bool:
        return bool(self.cert_file)

    def validate(self) -> None:
        if bool(self.cert_file) != bool(self.key_file):
            raise ConfigError(
                "receivers_tls.key_file" if self.cert_file else "receivers_tls.cert_file",
                "cert_file and key_file go together: set both for TLS, or neither",
            )
        if not self.cert_file and (self.client_ca_file or self.require_client_cert or self.spiffe_allow):
            raise ConfigError("receivers_tls.cert_file", "mTLS settings need TLS: set cert_file and key_file")
        if (self.require_client_cert or self.spiffe_allow) and not self.client_ca_file:
            raise ConfigError(
                "receivers_tls.client_ca_file",
                "is required by require_client_cert and spiffe_allow (the CA of the clients)",
            )

    def server_tls(self, alpn: Sequence[str] = (), section: str = "receivers_tls") -> ServerTLS | None:
        """The reloadable server TLS (None when TLS is off); ConfigError naming the file."""
        if not self.enabled:
            return None
        keys = {
            name: f"{section}.{name}"
            for name in (
                "cert_file",
                "key_file",
                "client_ca_file",
                "require_client_cert",
                "spiffe_allow",
                "min_version",
            )
        }
        return ServerTLS(
            cert_file=self.cert_file,
            key_file=self.key_file,
            client_ca_file=self.client_ca_file,
            require_client_cert=self.require_client_cert,
            spiffe_allow=self.spiffe_allow,
            min_version=self.min_version,
            alpn=alpn,
            check_interval=self.reload_interval,
            keys=keys,
        )


def _allow_problem(value: list[str]) -> str | None:
    try:
        check_spiffe_allow("spiffe_allow", value)
    except ConfigError as exc:
        return exc.message
    return None


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an IP or ``localhost``) is a loopback address."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_listen_address(key: str, endpoint: str, tls: InboundTLSConfig) -> None:
    """Refuse a plaintext listener on a non-loopback address unless explicitly allowed."""
    host, _ = parse_endpoint(endpoint)
    if not tls.enabled and not tls.allow_plaintext_remote and not is_loopback(host):
        raise ConfigError(
            key,
            f"{endpoint} is not a loopback address; a listener there needs TLS "
            "(receivers_tls.cert_file and key_file), "
            "or receivers_tls.allow_plaintext_remote = true",
        )


@dataclass(frozen=True)
class UpstreamTLSConfig:
    """TLS to the upstream beyond the CA and client certificate of [exporter]."""

    server_name: str = setting(
        "",
        "Name to verify in the upstream's certificate (and send as SNI) instead of the endpoint's host.",
    )
    min_version: str = setting("1.2", "Lowest TLS version used.", choices=["1.2", "1.3"])
    verify_hostname: bool = setting(
        True,
        "Check that the upstream's certificate names the host (the chain is always verified).",
        kind="bool",
    )
    reload_interval: float = setting(
        5.0,
        "How often the certificate files are checked for changes.",
        kind="duration",
        min=0.0,
    )


def client_tls(
    exporter: ExporterConfig,
    upstream: UpstreamTLSConfig,
    alpn: Sequence[str] = (),
) -> ClientTLS | None:
    """The reloadable upstream TLS from ``[exporter]`` (certificate, client_certificate,
    client_key, insecure) and ``[exporter_tls]``; None for a plaintext upstream."""
    if exporter.insecure:
        return None
    return ClientTLS(
        ca_file=exporter.certificate,
        cert_file=exporter.client_certificate,
        key_file=exporter.client_key,
        server_name=upstream.server_name,
        min_version=upstream.min_version,
        verify_hostname=upstream.verify_hostname,
        alpn=alpn,
        check_interval=upstream.reload_interval,
        keys={
            "ca_file": "exporter.certificate",
            "cert_file": "exporter.client_certificate",
            "key_file": "exporter.client_key",
            "min_version": "exporter_tls.min_version",
            "server_name": "exporter_tls.server_name",
        },
    )
