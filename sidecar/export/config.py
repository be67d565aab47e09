"""The exporter's sections: ``[exporter]`` (the upstream, batching, queue, retries, circuit)
and ``[auth]`` (upstream authentication beside mTLS).

The exporter's own settings, their factory defaults, their validation and the resolution
of endpoint schemes. Loading them from the environment's ``OTEL_EXPORTER_OTLP_*``
variables is the top-level loader's business (:mod:`sidecar.config`); the TLS extras are
``[exporter_tls]`` (:mod:`sidecar.tls.config`). Importing this module loads no network code:
:meth:`AuthConfig.build` imports :mod:`sidecar.export.auth` when it is called.
"""

from __future__ import annotations

import dataclasses
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from sidecar.configkit import ConfigError, http_url_problem, parse_endpoint, setting
from sidecar.signals import Signal

if TYPE_CHECKING:
    from sidecar.export.auth import UpstreamAuth

MiB = 1024 * 1024

#: factory defaults of [exporter]
DEFAULT_COMPRESSION = "zstd"
DEFAULT_COMPRESSION_LEVEL = 1
DEFAULT_TIMEOUT = 10.0
DEFAULT_BATCH_SIZE = 4096
DEFAULT_BATCH_MAX_BYTES = 4 * MiB
DEFAULT_BATCH_TIMEOUT = 0.2
DEFAULT_QUEUE_MAX_BYTES = 16 * MiB
DEFAULT_CONCURRENCY = 2
#: where the OTLP spec's exporters send when no endpoint is given, per protocol
DEFAULT_GRPC_URL = "http://localhost:4317"


def upstream_port(port: int | None, scheme: str, protocol: str) -> int:
    """The port an upstream URL connects to: its own, else 443 for https, else 4317 for gRPC and
    80 for HTTP."""
    return port or (443 if scheme == "https" else 4317 if protocol == "grpc" else 80)
DEFAULT_HTTP_URL = "http://localhost:4318"


def _endpoint_url(value: str) -> str | None:
    if "://" not in value:
        try:
            parse_endpoint(value)
        except ValueError:
            return "must be a URL such as https://collector:4317, or host:port such as collector:4317"
        return None
    problem = http_url_problem(value, "https://collector:4317")
    return f"{problem}, or host:port" if problem else None


def _optional_endpoint(value: str) -> str | None:
    return _endpoint_url(value) if value else None


@dataclass(frozen=True)
class ExporterConfig:
    """The upstream collector. Unset endpoint and type ``auto`` mean the debug exporter."""

    type: str = setting(
        "auto",
        "`otlp` sends upstream; `debug` writes JSON lines; `auto` is `otlp` when an endpoint is set.",
        choices=["auto", "otlp", "debug"],
    )
    endpoint: str = setting(
        "", "Upstream URL, e.g. https://collector.observability:4317, or host:port (TLS unless `insecure`) "
        "(OTEL_EXPORTER_OTLP_ENDPOINT).",
        check=_optional_endpoint,
    )
    traces_endpoint: str = setting(
        "", "Traces URL, used as is (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT).", check=_optional_endpoint,
    )
    metrics_endpoint: str = setting(
        "", "Metrics URL, used as is (OTEL_EXPORTER_OTLP_METRICS_ENDPOINT).", check=_optional_endpoint,
    )
    logs_endpoint: str = setting(
        "", "Logs URL, used as is (OTEL_EXPORTER_OTLP_LOGS_ENDPOINT).", check=_optional_endpoint,
    )
    protocol: str = setting(
        "grpc", "Upstream protocol (OTEL_EXPORTER_OTLP_PROTOCOL).", choices=["grpc", "http/protobuf"],
    )
    compression: str = setting(
        DEFAULT_COMPRESSION, "Upstream compression (OTEL_EXPORTER_OTLP_COMPRESSION).",
        choices=["none", "gzip", "zstd"],
    )
    compression_level: int = setting(
        DEFAULT_COMPRESSION_LEVEL,
        "Compression level: zstd from -7 (fastest) to 19, gzip 1-9 (clamped). zstd 1 compresses a "
        "trace batch about 5.4:1 at half the CPU of zstd's default level 3 (5.6:1); -1 takes about 20 % "
        "less CPU than 1 for 5-10 % more bytes (docs/performance.md).",
        kind="int", min=-7, max=19,
    )
    compress_in: str = setting(
        "auto",
        "Where a large batch is compressed: in a worker thread (in parallel with the event loop, "
        "for two cores or more), on the event loop in 64 kB slices between the apps' requests (for "
        "one core: a thread there only takes millisecond turns with the loop, which apps see as "
        "latency), or auto: the thread when the process may use two cores or more (CPU affinity "
        "and the cgroup's CPU quota), the loop otherwise.",
        choices=["auto", "thread", "loop"],
    )
    timeout: float = setting(
        DEFAULT_TIMEOUT,
        "Timeout of one export request (OTEL_EXPORTER_OTLP_TIMEOUT, in milliseconds there as the "
        "spec says). Also bounds connecting to the upstream; over gRPC, a request that timed out before "
        "its answer began sends a PING, and its connection is replaced when min(5 s, this) passes "
        "without an answer.",
        kind="duration", min=0.001, max=300.0,
    )
    headers: dict[str, str] = setting(
        {}, "Headers sent with every export (OTEL_EXPORTER_OTLP_HEADERS).", kind="map", secret=True,
    )
    insecure: bool = setting(
        False, "Plaintext to an endpoint given without a scheme (`collector:4317`); such an endpoint uses "
        "TLS otherwise. `http://` is always plaintext; an explicit `https://` always stays TLS (a warning "
        "says the setting was ignored) (OTEL_EXPORTER_OTLP_INSECURE).",
        kind="bool",
    )
    certificate: str = setting(
        "", "CA bundle that verifies the upstream (OTEL_EXPORTER_OTLP_CERTIFICATE).", kind="path",
    )
    client_certificate: str = setting(
        "", "Client certificate for mTLS (OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE).", kind="path",
    )
    client_key: str = setting(
        "", "Client private key for mTLS (OTEL_EXPORTER_OTLP_CLIENT_KEY).", kind="path", secret=True,
    )
    batch_size: int = setting(
        DEFAULT_BATCH_SIZE, "Items (spans, data points, log records) that fill a batch and send it at once.",
        kind="int", min=1,
    )
    batch_max_bytes: int = setting(
        DEFAULT_BATCH_MAX_BYTES, "Bytes that fill a batch and send it at once.", kind="size", min=1024,
    )
    batch_timeout: float = setting(
        DEFAULT_BATCH_TIMEOUT, "Longest a batch waits to fill before it is sent.",
        kind="duration", min=0.0, max=60.0,
    )
    queue_max_bytes: int = setting(
        DEFAULT_QUEUE_MAX_BYTES,
        "Bytes of accepted data held in memory for export (each request counted with 64 bytes of "
        "bookkeeping); when full, new data is refused retryably. "
        "With several upstreams (per-signal endpoints), each may hold it less a reserve for the others. "
        "Counted under limits.max_memory_bytes with the receive budget; hold more across an upstream "
        "outage with the disk queue (disk_queue_dir).",
        kind="size", min=1024,
    )
    concurrency: int = setting(
        DEFAULT_CONCURRENCY,
        "Export requests in flight at once, for each upstream (a signal with an endpoint or settings "
        "of its own has its own; docs/reliability.md).",
        kind="int", min=1, max=64,
    )
    retry_initial_interval: float = setting(
        0.5, "First retry delay (doubles each attempt, with jitter).", kind="duration", min=0.0,
    )
    retry_max_interval: float = setting(
        10.0, "Longest delay between retries.", kind="duration", min=0.0,
    )
    retry_max_elapsed: float = setting(
        300.0,
        "Give up on a batch after retrying this long (it is counted as failed); 0: no limit (as the "
        "Collector's max_elapsed_time: 0). Not with the disk queue (disk_queue_dir): there a batch "
        "waits on disk until the upstream takes it or gives a final answer, and a full disk refuses "
        "new data retryably.",
        kind="duration", min=0.0,
    )
    disk_queue_dir: str = setting(
        "", "Directory of the on-disk queue (empty: memory only). Data is on disk before it is accepted.",
        kind="path",
    )
    disk_queue_max_bytes: int = setting(
        1024 * MiB, "Bytes the on-disk queue may hold; when full, new data is refused retryably. "
        "With several upstreams (per-signal endpoints), each has a log of its own and may hold this "
        "less a reserve for the others.",
        kind="size", min=1 * MiB,
    )
    disk_queue_segment_bytes: int = setting(
        16 * MiB, "Size of one segment file of the on-disk queue.", kind="size", min=64 * 1024,
    )
    circuit_threshold: int = setting(
        5, "Failed attempts in a row that open the circuit (no attempts until a probe succeeds).",
        kind="int", min=1,
    )
    circuit_open_for: float = setting(
        1.0, "How long the circuit stays open before a probe (doubles per failed probe).",
        kind="duration", min=0.0,
    )
    circuit_max_open_for: float = setting(
        30.0, "Longest the circuit stays open between probes.", kind="duration", min=0.0,
    )
    debug_output: str = setting(
        "-", "Where the debug exporter writes JSON lines: `-` for stdout, or a file path.",
        kind="path",
    )

    @property
    def resolved_type(self) -> str:
        if self.type != "auto":
            return self.type
        has_endpoint = self.endpoint or any(self.signal_endpoint(s) for s in Signal)
        return "otlp" if has_endpoint else "debug"

    def signal_endpoint(self, signal: Signal) -> str:
        return str(getattr(self, f"{signal.value}_endpoint"))

    def url_for(self, signal: Signal) -> str:
        """The full URL for ``signal``: per-signal endpoint as is, else base + /v1/<signal>."""
        specific = self.signal_endpoint(signal)
        if specific:
            return specific
        base = self.endpoint or (DEFAULT_GRPC_URL if self.protocol == "grpc" else DEFAULT_HTTP_URL)
        if self.protocol == "grpc":
            return base
        return base.rstrip("/") + signal.http_path

    def validate(self) -> None:
        """Cross-key checks of the section (each key's own bounds are in its ``setting``)."""
        if self.type == "otlp" and not self.endpoint and not any(self.signal_endpoint(s) for s in Signal):
            raise ConfigError("exporter.endpoint", "is required when exporter.type is 'otlp'")
        if bool(self.client_certificate) != bool(self.client_key):
            raise ConfigError(
                "exporter.client_key",
                "client_certificate and client_key go together: set both for mTLS, or neither",
            )

    def with_schemes(self, notices: list[str]) -> ExporterConfig:
        """Every endpoint with its scheme, and ``insecure`` as the OTLP spec means it.

        ``insecure`` applies only to an endpoint given without a scheme (``collector:4317``:
        ``http://`` with it, ``https://`` without). ``http://`` is plaintext and an explicit
        ``https://`` stays TLS whatever ``insecure`` says (noted in ``notices``). Afterwards
        ``insecure`` is true exactly when every endpoint in use is ``http://``.
        """
        changes: dict[str, Any] = {}
        for key in ENDPOINT_KEYS:
            value = getattr(self, key)
            if not value:
                continue
            if "://" not in value:
                changes[key] = ("http://" if self.insecure else "https://") + value
            elif value.startswith("https://") and self.insecure:
                notices.append(
                    f"exporter.insecure (OTEL_EXPORTER_OTLP_INSECURE) is ignored for {value}: an explicit "
                    "https:// endpoint stays TLS; the setting applies only to endpoints without a scheme"
                )
        resolved = dataclasses.replace(self, **changes) if changes else self
        if resolved.resolved_type != "otlp":
            if self.type == "auto":  # no endpoint: said once at start, not only in the start line
                target = "stdout" if self.debug_output == "-" else self.debug_output
                notices.append(
                    f"no upstream endpoint (exporter.endpoint, OTEL_EXPORTER_OTLP_ENDPOINT): nothing is "
                    f"forwarded; the debug exporter writes every batch as the policies left it (masked in "
                    f"enforce mode) as JSON lines to {target}"
                )
            return resolved
        plaintext = all(urlsplit(resolved.url_for(signal)).scheme == "http" for signal in Signal)
        unused = [name for name, value in (("exporter.certificate (OTEL_EXPORTER_OTLP_CERTIFICATE)", self.certificate),
                                           ("exporter.client_certificate (OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE)",
                                            self.client_certificate),
                                           ("exporter.client_key (OTEL_EXPORTER_OTLP_CLIENT_KEY)", self.client_key))
                  if value]
        if plaintext and unused:
            notices.append(
                f"{', '.join(unused)} not used: every upstream endpoint is http:// (plaintext, no TLS); "
                "give an https:// endpoint (or one without a scheme, and insecure false) for TLS"
            )
        return dataclasses.replace(resolved, insecure=plaintext) if plaintext != resolved.insecure else resolved


#: the [exporter] keys that hold an endpoint
ENDPOINT_KEYS = ("endpoint", "traces_endpoint", "metrics_endpoint", "logs_endpoint")


@dataclass(frozen=True)
class AuthConfig:
    """Upstream authentication beside mTLS: one of an API key header, a bearer token file,
    or OAuth2 client credentials. Secrets are never logged."""

    api_key: str = setting(
        "", "API key sent in `api_key_header` (prefer `api_key_file`).", secret=True
    )
    api_key_file: str = setting(
        "", "File holding the API key (re-read when it changes).", kind="path"
    )
    api_key_header: str = setting("X-API-Key", "Header that carries the API key.")
    bearer_token_file: str = setting(
        "",
        "File holding a bearer token, sent as `Authorization: Bearer` (re-read when it changes).",
        kind="path",
    )
    oauth2_token_url: str = setting("", "OAuth2 token endpoint (client credentials grant).")
    oauth2_client_id: str = setting("", "OAuth2 client id.")
    oauth2_client_secret: str = setting(
        "",
        "OAuth2 client secret (prefer `oauth2_client_secret_file`).",
        secret=True,
    )
    oauth2_client_secret_file: str = setting(
        "", "File holding the OAuth2 client secret.", kind="path"
    )
    oauth2_scopes: list[str] = setting(
        [], "Scopes requested with the token.", kind="list"
    )
    oauth2_audience: str = setting("", "`audience` parameter some providers require.")
    oauth2_auth_method: str = setting(
        "basic",
        "How the client authenticates to the token endpoint.",
        choices=["basic", "post"],
    )
    reload_interval: float = setting(
        5.0,
        "How often files are checked for changes.",
        kind="duration",
        min=0.0,
    )

    def mode(self) -> str:
        """``none``, ``api_key``, ``bearer`` or ``oauth2``; ConfigError when several are set."""
        modes = []
        if self.api_key or self.api_key_file:
            modes.append("api_key")
        if self.bearer_token_file:
            modes.append("bearer")
        if self.oauth2_token_url or self.oauth2_client_id:
            modes.append("oauth2")
        if len(modes) > 1:
            raise ConfigError(
                "auth", f"choose one kind of upstream auth, not {' and '.join(modes)}"
            )
        return modes[0] if modes else "none"

    def validate(self) -> None:
        self.mode()

    def build(
        self, section: str = "auth", ssl_context: ssl.SSLContext | None = None
    ) -> UpstreamAuth | None:
        """The auth object for the exporter (None without auth); ConfigError naming the key."""
        if self.mode() == "none":
            return None
        from sidecar.export.auth import build_auth  # the auth code, only when it is used

        return build_auth(self, section, ssl_context)
