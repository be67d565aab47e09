"""The sidecar's one config object: TOML file, then OTEL_* variables, then SIDECAR_* variables.

Precedence, lowest first: built-in defaults, the TOML file (``--config``), the
standard ``OTEL_EXPORTER_OTLP_*`` variables (for the upstream only), and the
``SIDECAR_<SECTION>_<KEY>`` variables (plus the short contract names such as
``SIDECAR_GRPC_ENDPOINT``). Every wrong value raises :class:`ConfigError`
naming the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sidecar.configkit import (
    ConfigError,
    load_section,
    parse_endpoint,
    parse_key_values,
    read_toml,
    render_markdown,
    setting,
)
from sidecar.export.auth import AuthConfig
from sidecar.identity import PodIdentity, read_downward_api_file
from sidecar.overload.config import LimitsConfig
from sidecar.policy.config import PolicyConfig
from sidecar.signals import Signal
from sidecar.tls.config import InboundTLSConfig, UpstreamTLSConfig, check_listen_address

__all__ = ["AdminConfig", "Config", "ConfigError", "ExporterConfig", "ReceiversConfig", "load"]


def _endpoint_url(value: str) -> str | None:
    if "://" not in value:
        try:
            parse_endpoint(value)
        except ValueError:
            return "must be a URL such as https://collector:4317, or host:port such as collector:4317"
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be a URL such as https://collector:4317 (scheme http or https), or host:port"
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        return "has an invalid port"
    return None


@dataclass(frozen=True)
class ReceiversConfig:
    """Where the app sends OTLP, and what the sidecar accepts."""

    grpc_endpoint: str = setting(
        "127.0.0.1:4317", "host:port of the OTLP/gRPC listener.",
        kind="endpoint", env=["SIDECAR_GRPC_ENDPOINT"],
    )
    http_endpoint: str = setting(
        "127.0.0.1:4318", "host:port of the OTLP/HTTP listener.",
        kind="endpoint", env=["SIDECAR_HTTP_ENDPOINT"],
    )
    grpc_enabled: bool = setting(True, "Serve OTLP/gRPC.", kind="bool")
    http_enabled: bool = setting(True, "Serve OTLP/HTTP.", kind="bool")
    max_request_bytes: int = setting(
        16 * 1024 * 1024,
        "Largest request accepted, compressed as sent (HTTP 413 / gRPC RESOURCE_EXHAUSTED).",
        kind="size", min=1024,
    )
    max_decompressed_bytes: int = setting(
        64 * 1024 * 1024,
        "Largest request after decompression; a larger one is refused like an oversized body.",
        kind="size", min=1024,
    )
    grpc_max_frame_size: int = setting(
        1024 * 1024,
        "HTTP/2 SETTINGS_MAX_FRAME_SIZE the gRPC listener advertises (larger frames cost less CPU).",
        kind="size", min=16384, max=16777215,
    )
    max_inflight_bytes: int = setting(
        64 * 1024 * 1024,
        "Deprecated (use limits.budget_bytes, the smaller of the two applies): request bytes both "
        "listeners hold at once; beyond it requests get HTTP 503 / gRPC UNAVAILABLE and are "
        "retried. At least max_request_bytes.",
        kind="size", min=1024,
    )

    def validate(self) -> None:
        if self.max_inflight_bytes < self.max_request_bytes:
            raise ConfigError(
                "receivers.max_inflight_bytes",
                f"must be at least receivers.max_request_bytes ({self.max_request_bytes}), or a "
                "largest request could never be received",
            )


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
        check=lambda v: _endpoint_url(v) if v else None,
    )
    traces_endpoint: str = setting(
        "", "Traces URL, used as is (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT).",
        check=lambda v: _endpoint_url(v) if v else None,
    )
    metrics_endpoint: str = setting(
        "", "Metrics URL, used as is (OTEL_EXPORTER_OTLP_METRICS_ENDPOINT).",
        check=lambda v: _endpoint_url(v) if v else None,
    )
    logs_endpoint: str = setting(
        "", "Logs URL, used as is (OTEL_EXPORTER_OTLP_LOGS_ENDPOINT).",
        check=lambda v: _endpoint_url(v) if v else None,
    )
    protocol: str = setting(
        "grpc", "Upstream protocol (OTEL_EXPORTER_OTLP_PROTOCOL).", choices=["grpc", "http/protobuf"],
    )
    compression: str = setting(
        "zstd", "Upstream compression (OTEL_EXPORTER_OTLP_COMPRESSION).",
        choices=["none", "gzip", "zstd"],
    )
    compression_level: int = setting(
        1, "Compression level: zstd from -7 (fastest) to 19, gzip 1-9 (clamped). zstd 1 compresses a "
        "trace batch about 5.4:1 at half the CPU of zstd's default level 3 (5.6:1).",
        kind="int", min=-7, max=19,
    )
    timeout: float = setting(
        10.0, "Timeout of one export request (OTEL_EXPORTER_OTLP_TIMEOUT, in milliseconds there as the "
        "spec says).",
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
        2048, "Items (spans, data points, log records) that fill a batch and send it at once.",
        kind="int", min=1,
    )
    batch_max_bytes: int = setting(
        4 * 1024 * 1024, "Bytes that fill a batch and send it at once.", kind="size", min=1024,
    )
    batch_timeout: float = setting(
        0.2, "Longest a batch waits to fill before it is sent.", kind="duration", min=0.0, max=60.0,
    )
    queue_max_bytes: int = setting(
        16 * 1024 * 1024,
        "Bytes of accepted data held in memory for export; when full, new data is refused retryably. "
        "Counted under limits.max_memory_bytes with the receive budget; hold more across an upstream "
        "outage with the disk queue (disk_queue_dir).",
        kind="size", min=1024,
    )
    concurrency: int = setting(2, "Export requests in flight at once.", kind="int", min=1, max=64)
    retry_initial_interval: float = setting(
        0.5, "First retry delay (doubles each attempt, with jitter).", kind="duration", min=0.0,
    )
    retry_max_interval: float = setting(
        10.0, "Longest delay between retries.", kind="duration", min=0.0,
    )
    retry_max_elapsed: float = setting(
        300.0, "Give up on a batch after retrying this long (it is counted as failed).",
        kind="duration", min=0.0,
    )
    disk_queue_dir: str = setting(
        "", "Directory of the on-disk queue (empty: memory only). Data is on disk before it is accepted.",
        kind="path",
    )
    disk_queue_max_bytes: int = setting(
        1024 * 1024 * 1024, "Bytes the on-disk queue may hold; when full, new data is refused retryably.",
        kind="size", min=1024 * 1024,
    )
    disk_queue_segment_bytes: int = setting(
        16 * 1024 * 1024, "Size of one segment file of the on-disk queue.", kind="size", min=64 * 1024,
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
        base = self.endpoint or ("http://localhost:4317" if self.protocol == "grpc" else "http://localhost:4318")
        if self.protocol == "grpc":
            return base
        return base.rstrip("/") + signal.http_path

    def validate(self) -> None:
        if self.type == "otlp" and not self.endpoint and not any(self.signal_endpoint(s) for s in Signal):
            raise ConfigError("exporter.endpoint", "is required when exporter.type is 'otlp'")
        if bool(self.client_certificate) != bool(self.client_key):
            raise ConfigError(
                "exporter.client_key",
                "client_certificate and client_key go together: set both for mTLS, or neither",
            )


@dataclass(frozen=True)
class AdminConfig:
    """The admin listener: /health, /ready, /metrics, /policy."""

    endpoint: str = setting(
        "127.0.0.1:13133", "host:port of the admin listener (0.0.0.0:13133 in a pod, for probes).",
        kind="endpoint", env=["SIDECAR_ADMIN_ENDPOINT"],
    )
    enabled: bool = setting(True, "Serve the admin listener.", kind="bool")
    ready_requires_upstream: bool = setting(
        False,
        "Answer /ready with 503 while the exporter's circuit is open. Off by default: a native "
        "sidecar's readiness gates its pod, and an upstream outage should not take every app out "
        "of its Services (data waits in the queue meanwhile). /ready always reports the exporter's state.",
        kind="bool",
    )


@dataclass(frozen=True)
class PodConfig:
    """The pod's identity, from the downward API (the injector sets these variables)."""

    name: str = setting("", "Pod name.", env=["SIDECAR_POD_NAME"])
    namespace: str = setting("", "Pod namespace.", env=["SIDECAR_POD_NAMESPACE"])
    service_account: str = setting("", "Pod service account.", env=["SIDECAR_POD_SERVICE_ACCOUNT"])
    tenant: str = setting("", "The pod's tenant (from a label or annotation).", env=["SIDECAR_TENANT"])
    labels_file: str = setting("", "Downward API file with the pod's labels.", kind="path")
    annotations_file: str = setting("", "Downward API file with the pod's annotations.", kind="path")
    uid: str = setting("", "Pod UID (metadata.uid).", env=["SIDECAR_POD_UID"])
    node_name: str = setting("", "Node the pod runs on (spec.nodeName).", env=["SIDECAR_NODE_NAME"])
    cluster_name: str = setting(
        "", "The cluster's name (the chart's `clusterName`).", env=["SIDECAR_CLUSTER_NAME"],
    )
    workload_kind: str = setting(
        "", "Kind of the pod's controller: Deployment, StatefulSet, DaemonSet, Job, CronJob, ReplicaSet "
        "(the injector derives it from ownerReferences).", env=["SIDECAR_WORKLOAD_KIND"],
    )
    workload_name: str = setting(
        "", "Name of the pod's controller (a Deployment's name, not its ReplicaSet's).",
        env=["SIDECAR_WORKLOAD_NAME"],
    )

    def identity(self) -> PodIdentity:
        try:
            labels = read_downward_api_file(self.labels_file)
        except OSError as exc:
            raise ConfigError("pod.labels_file", f"cannot read {self.labels_file}: {exc.strerror}") from None
        try:
            annotations = read_downward_api_file(self.annotations_file)
        except OSError as exc:
            raise ConfigError(
                "pod.annotations_file", f"cannot read {self.annotations_file}: {exc.strerror}"
            ) from None
        return PodIdentity(
            name=self.name, namespace=self.namespace, service_account=self.service_account,
            tenant=self.tenant, labels=labels, annotations=annotations,
            uid=self.uid, node_name=self.node_name, cluster_name=self.cluster_name,
            workload_kind=self.workload_kind, workload_name=self.workload_name,
        )


@dataclass(frozen=True)
class LogConfig:
    """The sidecar's own log."""

    level: str = setting("info", "Log level.", choices=["debug", "info", "warning", "error"])
    format: str = setting("text", "Log line format.", choices=["text", "json"])


#: (section name, class, description), in the order of the docs
SECTIONS: tuple[tuple[str, type[Any], str], ...] = (
    ("receivers", ReceiversConfig, ReceiversConfig.__doc__ or ""),
    ("receivers_tls", InboundTLSConfig, InboundTLSConfig.__doc__ or ""),
    ("exporter", ExporterConfig, ExporterConfig.__doc__ or ""),
    ("exporter_tls", UpstreamTLSConfig, UpstreamTLSConfig.__doc__ or ""),
    ("auth", AuthConfig, AuthConfig.__doc__ or ""),
    ("policy", PolicyConfig, PolicyConfig.__doc__ or ""),
    ("admin", AdminConfig, AdminConfig.__doc__ or ""),
    ("limits", LimitsConfig, LimitsConfig.__doc__ or ""),
    ("pod", PodConfig, PodConfig.__doc__ or ""),
    ("log", LogConfig, LogConfig.__doc__ or ""),
)


@dataclass(frozen=True)
class Config:
    receivers: ReceiversConfig = field(default_factory=ReceiversConfig)
    receivers_tls: InboundTLSConfig = field(default_factory=InboundTLSConfig)
    exporter: ExporterConfig = field(default_factory=ExporterConfig)
    exporter_tls: UpstreamTLSConfig = field(default_factory=UpstreamTLSConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    pod: PodConfig = field(default_factory=PodConfig)
    log: LogConfig = field(default_factory=LogConfig)
    source: str = ""
    #: exporter settings of a signal that has its own OTEL_EXPORTER_OTLP_<SIGNAL>_* variables
    signal_exporters: dict[Signal, ExporterConfig] = field(default_factory=dict)
    #: what the loader decided for the user that they should know (logged as warnings at start)
    notices: tuple[str, ...] = ()

    def exporter_for(self, signal: Signal) -> ExporterConfig:
        return self.signal_exporters.get(signal, self.exporter)


# OTEL_EXPORTER_OTLP_* -> exporter key; per-signal variants handled below
_OTEL_GENERAL = {
    "ENDPOINT": "endpoint",
    "PROTOCOL": "protocol",
    "HEADERS": "headers",
    "COMPRESSION": "compression",
    "TIMEOUT": "timeout",
    "CERTIFICATE": "certificate",
    "CLIENT_KEY": "client_key",
    "CLIENT_CERTIFICATE": "client_certificate",
    "INSECURE": "insecure",
}


def _otel_overrides(env: Mapping[str, str], signal: Signal | None = None) -> dict[str, str]:
    """Translate the standard OTEL_EXPORTER_OTLP_* variables into exporter env overrides.

    With ``signal``: only that signal's own variables (``OTEL_EXPORTER_OTLP_TRACES_HEADERS``...).
    """
    out: dict[str, str] = {}
    infix = f"{signal.value.upper()}_" if signal is not None else ""
    for suffix, key in _OTEL_GENERAL.items():
        name = f"OTEL_EXPORTER_OTLP_{infix}{suffix}"
        if signal is not None and suffix == "ENDPOINT":
            continue  # per-signal endpoints are their own keys (traces_endpoint...)
        if name in env:
            value = env[name]
            if suffix == "TIMEOUT":
                value = _otel_timeout(name, value)
            elif suffix == "PROTOCOL" and value.strip() == "http/json":
                raise ConfigError(
                    f"exporter.protocol (from {name})",
                    "'http/json' is not supported upstream; choose 'grpc' or 'http/protobuf'",
                )
            out[f"SIDECAR_EXPORTER_{key.upper()}"] = value
    if signal is None:
        for each in Signal:
            name = f"OTEL_EXPORTER_OTLP_{each.value.upper()}_ENDPOINT"
            if name in env:
                out[f"SIDECAR_EXPORTER_{each.value.upper()}_ENDPOINT"] = env[name]
    return out


def _otel_timeout(name: str, value: str) -> str:
    try:
        millis = float(value)
    except ValueError:
        raise ConfigError(f"exporter.timeout (from {name})", "must be milliseconds as a number") from None
    return f"{millis / 1000.0}"


def load(path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Load the config from an optional TOML file and the environment."""
    env = dict(os.environ if env is None else env)
    source = str(path) if path else ""
    data = read_toml(path, [name for name, _, _ in SECTIONS])
    # OTEL_* sit below SIDECAR_EXPORTER_*: apply them only where SIDECAR_* is silent
    merged_env = {**_otel_overrides(env), **env}
    sections = {name: load_section(cls, name, data.get(name), merged_env) for name, cls, _ in SECTIONS}
    notices: list[str] = []
    sections["exporter"] = _with_schemes(sections["exporter"], notices)
    receivers, inbound_tls = sections["receivers"], sections["receivers_tls"]
    if receivers.grpc_enabled:
        check_listen_address("receivers.grpc_endpoint", receivers.grpc_endpoint, inbound_tls)
    if receivers.http_enabled:
        check_listen_address("receivers.http_endpoint", receivers.http_endpoint, inbound_tls)
    signal_exporters = {}
    for signal in Signal:
        own = _otel_overrides(env, signal)
        if own:
            # the most specific wins: a signal's own OTEL variables over the general ones
            specific = load_section(ExporterConfig, "exporter", data.get("exporter"), {**merged_env, **own})
            signal_exporters[signal] = _with_schemes(specific, notices)
    config = Config(
        **sections, source=source, signal_exporters=signal_exporters, notices=tuple(dict.fromkeys(notices)),
    )
    check_no_loop(config)
    config.limits.check_ceiling(config.exporter.queue_max_bytes)
    return config


_ENDPOINT_KEYS = ("endpoint", "traces_endpoint", "metrics_endpoint", "logs_endpoint")


def _with_schemes(exporter: ExporterConfig, notices: list[str]) -> ExporterConfig:
    """Every endpoint with its scheme, and ``insecure`` as the OTLP spec means it.

    ``insecure`` applies only to an endpoint given without a scheme (``collector:4317``:
    ``http://`` with it, ``https://`` without). ``http://`` is plaintext and an explicit
    ``https://`` stays TLS whatever ``insecure`` says (noted in ``notices``). Afterwards
    ``insecure`` is true exactly when every endpoint in use is ``http://``.
    """
    changes: dict[str, Any] = {}
    for key in _ENDPOINT_KEYS:
        value = getattr(exporter, key)
        if not value:
            continue
        if "://" not in value:
            changes[key] = ("http://" if exporter.insecure else "https://") + value
        elif value.startswith("https://") and exporter.insecure:
            notices.append(
                f"exporter.insecure (OTEL_EXPORTER_OTLP_INSECURE) is ignored for {value}: an explicit "
                "https:// endpoint stays TLS; the setting applies only to endpoints without a scheme"
            )
    resolved = dataclasses.replace(exporter, **changes) if changes else exporter
    if resolved.resolved_type != "otlp":
        return resolved
    plaintext = all(urlsplit(resolved.url_for(signal)).scheme == "http" for signal in Signal)
    return dataclasses.replace(resolved, insecure=plaintext) if plaintext != resolved.insecure else resolved


#: host names that reach this pod's own loopback listeners
_LOOPBACK = {"localhost", "::1", "0.0.0.0", "::", "ip6-localhost"}


def _is_local(host: str) -> bool:
    host = host.strip("[]").lower()
    return host in _LOOPBACK or host.startswith("127.") or host.endswith(".localhost")


def check_no_loop(config: Config) -> None:
    """Refuse an upstream that is one of the sidecar's own receivers: it would export to itself forever."""
    listeners: list[tuple[str, str, str, int]] = []
    for name, enabled, endpoint in (
        ("receivers.grpc_endpoint", config.receivers.grpc_enabled, config.receivers.grpc_endpoint),
        ("receivers.http_endpoint", config.receivers.http_enabled, config.receivers.http_endpoint),
    ):
        host, port = parse_endpoint(endpoint)
        if enabled and port:
            listeners.append((name, endpoint, host.strip("[]").lower(), port))
    for signal in Signal:
        exporter = config.exporter_for(signal)
        if exporter.resolved_type != "otlp":
            continue
        url = urlsplit(exporter.url_for(signal))
        host = url.hostname or ""
        port = url.port or (443 if url.scheme == "https" else 4317 if exporter.protocol == "grpc" else 80)
        for name, endpoint, listen_host, listen_port in listeners:
            same_host = host == listen_host or (_is_local(host) and _is_local(listen_host))
            if same_host and port == listen_port:
                raise ConfigError(
                    "exporter.endpoint",
                    f"the upstream for {signal.value} ({url.geturl()}) is this sidecar's own listener "
                    f"{name} = {endpoint}: it would export to itself forever. Point "
                    "OTEL_EXPORTER_OTLP_ENDPOINT at the collector (the app's OTEL_* variables are not "
                    "the sidecar's)",
                )


def render_docs() -> str:
    """The text of docs/configuration.md, generated from the declarations above."""
    head = (Path(__file__).parent / "config_docs_head.md").read_text(encoding="utf-8")
    return head.rstrip() + "\n\n" + render_markdown(SECTIONS)


__all__ += ["LogConfig", "PodConfig", "parse_key_values", "render_docs"]
