"""The injection webhook's settings: the TOML file the Helm chart renders, plus env overrides.

Sections: ``[webhook]`` (the HTTPS listener), ``[injection]`` (what is injected and
where) and ``[policy_sets.<name>]`` (the ConfigMaps a pod can choose with the
``otlp-sidecar.io/policy`` annotation). Environment variables override single keys
as ``SIDECAR_WEBHOOK_<KEY>`` / ``SIDECAR_INJECTION_<KEY>`` (see ``sidecar.configkit``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal

from sidecar.configkit import ConfigError, http_url_problem, load_section, read_toml, render_markdown, setting

#: namespaces never injected, whatever their labels say
SYSTEM_NAMESPACES = ["kube-system", "kube-public", "kube-node-lease"]

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_QUANTITY = re.compile(r"^([0-9]+(\.[0-9]+)?|\.[0-9]+)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")


def _quantity(value: str) -> str | None:
    if value and not _QUANTITY.match(value):
        return f"{value!r} is not a Kubernetes quantity (e.g. 100m, 128Mi)"
    return None


_SUFFIX_FACTOR = {
    "": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
    **{unit: 1024 ** (n + 1) for n, unit in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"))},
}
#: the smallest disk queue volume: the sidecar's disk queue holds at least 1 MiB (90 % of it)
MIN_DISK_QUEUE_VOLUME = 2 * 1024**2


def quantity_value(value: str) -> Decimal:
    """The amount of a Kubernetes quantity (``100m`` is 0.1, ``1Ki`` 1024), to compare two of them."""
    match = _QUANTITY.match(value)
    if match is None:
        raise ValueError(f"{value!r} is not a Kubernetes quantity (e.g. 100m, 128Mi)")
    unit = match.group(3) or ""
    return Decimal(match.group(1)) * (Decimal("0.001") if unit == "m" else _SUFFIX_FACTOR[unit])


def quantity_bytes(value: str) -> int:
    """Bytes of a Kubernetes storage quantity (``512Mi``, ``1.5G``), rounded down."""
    match = _QUANTITY.match(value)
    if match is None or match.group(3) == "m":
        raise ValueError(f"{value!r} is not a Kubernetes storage quantity (e.g. 512Mi, 2Gi)")
    return int(Decimal(match.group(1)) * _SUFFIX_FACTOR[match.group(3) or ""])


def _disk_volume(value: str) -> str | None:
    if not value:
        return None
    try:
        size = quantity_bytes(value)
    except ValueError as exc:
        return str(exc)
    return f"{value!r} is too small for a disk queue (at least 2Mi)" if size < MIN_DISK_QUEUE_VOLUME else None


#: protocols an app can use towards the sidecar (OTEL_EXPORTER_OTLP_PROTOCOL values)
APP_PROTOCOLS = ("http/protobuf", "http/json", "grpc")


def _http_url(value: str) -> str | None:
    problem = http_url_problem(value, "http://127.0.0.1:4318")
    return f"{value!r} {problem}" if problem else None


def _dns_name(value: str) -> str | None:
    if value and (len(value) > 253 or not all(_DNS_LABEL.match(p) for p in value.split("."))):
        return f"{value!r} is not a valid Kubernetes object name"
    return None


@dataclass(frozen=True)
class ServerConfig:
    """The webhook's HTTPS listener (AdmissionReview v1 on /mutate)."""

    listen: str = setting("0.0.0.0:8443", "host:port of the HTTPS listener.", kind="endpoint")
    cert_file: str = setting(
        "/etc/otlp-sidecar-webhook/tls/tls.crt",
        "Serving certificate (PEM, chain first).",
        kind="path",
    )
    key_file: str = setting(
        "/etc/otlp-sidecar-webhook/tls/tls.key",
        "Serving private key (PEM).",
        kind="path",
        secret=True,
    )
    cert_reload_interval: float = setting(
        30.0,
        "How often the certificate files are checked for rotation (cert-manager renews them).",
        kind="duration",
        min=0.1,
    )
    max_request_bytes: int = setting(
        3 * 1024 * 1024,
        "Largest AdmissionReview accepted (a Pod is at most 1.5 MiB, etcd's limit; what decoding a "
        "review may hold is bounded apart, before it is decoded).",
        kind="size",
        min=1024,
    )
    max_connections: int = setting(
        32,
        "Open connections the listener keeps (an API server opens one per review in flight); at "
        "the cap the one that has waited longest for a request is closed. As many TLS handshakes "
        "may be in progress besides; at that cap the oldest is closed. Each connection may hold "
        "up to 1 MiB of TLS buffers: keep it well under the pod's memory limit.",
        kind="int",
        min=1,
        max=4096,
    )


@dataclass(frozen=True)
class InjectionConfig:
    """What the webhook injects into a pod, and which pods it leaves alone."""

    image: str = setting("ghcr.io/otlp-sidecar/otlp-sidecar:0.1.0", "Sidecar image.")
    image_pull_policy: str = setting(
        "IfNotPresent",
        "Sidecar image pull policy.",
        choices=["Always", "IfNotPresent", "Never"],
    )
    mode: str = setting(
        "native",
        "`native`: an init container with restartPolicy Always (Kubernetes 1.29+), started "
        "before the app and stopped after it; `container`: a regular container.",
        choices=["native", "container"],
    )
    sidecar_config_file: str = setting(
        "",
        "Optional --config path passed to `otlp-sidecar run` (must exist in the image).",
        kind="path",
    )
    app_endpoint: str = setting(
        "http://127.0.0.1:4318",
        "OTEL_EXPORTER_OTLP_ENDPOINT set in app containers that do not set it themselves: its scheme "
        "and host, with the sidecar's port for the app's protocol (http_port, or grpc_port for grpc).",
        check=_http_url,
    )
    app_protocol: str = setting(
        "http/protobuf",
        "OTEL_EXPORTER_OTLP_PROTOCOL set with the endpoint (the pod annotation "
        "otlp-sidecar.io/protocol chooses per pod); the endpoint's port follows it.",
        choices=list(APP_PROTOCOLS),
    )
    cluster_name: str = setting(
        "", "The cluster's name, given to the sidecar as SIDECAR_CLUSTER_NAME (k8s.cluster.name).",
    )
    grpc_port: int = setting(4317, "Sidecar OTLP/gRPC port (loopback).", kind="int", min=1, max=65535)
    http_port: int = setting(4318, "Sidecar OTLP/HTTP port (loopback).", kind="int", min=1, max=65535)
    admin_port: int = setting(
        13133,
        "Sidecar admin port, bound to 0.0.0.0 so kubelet probes reach it.",
        kind="int",
        min=1,
        max=65535,
    )
    tenant_label: str = setting("", "Pod label whose value is the tenant (SIDECAR_TENANT).")
    tenant_annotation: str = setting(
        "",
        "Pod annotation whose value is the tenant (used when tenant_label is empty).",
    )
    default_policy_set: str = setting(
        "default",
        "Policy set used when the pod has no otlp-sidecar.io/policy annotation (empty: none; the "
        "sidecar then applies the policies bundled in its image, and PCI-scope pods are refused).",
    )
    policy_dir: str = setting(
        "/etc/otlp-sidecar/policies",
        "Where the policy ConfigMap is mounted (SIDECAR_POLICY_DIR).",
        kind="path",
    )
    upstream_endpoint: str = setting("", "Upstream collector URL (OTEL_EXPORTER_OTLP_ENDPOINT).")
    upstream_protocol: str = setting(
        "grpc",
        "Upstream protocol (OTEL_EXPORTER_OTLP_PROTOCOL).",
        choices=["grpc", "http/protobuf"],
    )
    upstream_insecure: bool = setting(
        False,
        "Plaintext upstream (OTEL_EXPORTER_OTLP_INSECURE); never for production.",
        kind="bool",
    )
    mtls_secret: str = setting(
        "",
        "Secret (in the pod's namespace) with tls.crt, tls.key and ca.crt for the upstream.",
        check=_dns_name,
    )
    ca_secret_key: str = setting("ca.crt", "Key of the CA bundle in mtls_secret.")
    cert_secret_key: str = setting("tls.crt", "Key of the client certificate in mtls_secret.")
    key_secret_key: str = setting("tls.key", "Key of the client private key in mtls_secret.")
    hash_key_secret: str = setting(
        "",
        "Secret (in the pod's namespace) with the HMAC key for the `hash` action.",
        check=_dns_name,
    )
    hash_key_secret_key: str = setting("hmac.key", "Key of the HMAC key in hash_key_secret.")
    bundles: list[str] = setting(
        [],
        "OPA bundles the sidecar pulls (`name=https://...`, SIDECAR_POLICY_BUNDLES; docs/bundles.md), "
        "instead of a policy set, or beside one whose ConfigMap has a `.manifest` with its roots.",
        kind="list",
    )
    bundle_polling_min_delay: str = setting("60s", "Shortest wait between two polls of a bundle server.")
    bundle_polling_max_delay: str = setting("120s", "Longest wait between two polls of a bundle server.")
    bundle_key_secret: str = setting(
        "",
        "Secret (in the pod's namespace) with the key bundles must be signed with (empty: unsigned "
        "bundles are accepted).",
        check=_dns_name,
    )
    bundle_key_secret_key: str = setting("key.pem", "Key of the verification key in bundle_key_secret.")
    bundle_key_algorithm: str = setting("RS256", "Signature algorithm of the bundles (RS256, ES256, HS256...).")
    bundle_key_id: str = setting("", "Key id the bundles' signature must name (empty: any).")
    bundle_scope: str = setting("", "Scope the bundles' signature must carry (empty: none).")
    bundle_token_secret: str = setting(
        "", "Secret (in the pod's namespace) with a bearer token for the bundle server.", check=_dns_name,
    )
    bundle_token_secret_key: str = setting("token", "Key of the token in bundle_token_secret.")
    bundle_ca_secret: str = setting(
        "",
        "Secret (in the pod's namespace) with the PEM CA bundle that signs an https:// bundle server's "
        "certificate (empty: the system's CAs).",
        check=_dns_name,
    )
    bundle_ca_secret_key: str = setting("ca.crt", "Key of the CA bundle in bundle_ca_secret.")
    extra_env: dict[str, str] = setting(
        {},
        "Extra environment variables for the sidecar (e.g. SIDECAR_LOG_LEVEL).",
        kind="map",
    )
    disk_queue_size_limit: str = setting(
        "",
        "sizeLimit of an emptyDir for the sidecar's on-disk queue (empty: memory only); the sidecar "
        "may hold 90 % of it (exporter.disk_queue_max_bytes), so the kubelet never evicts the pod for it.",
        check=_disk_volume,
    )
    cpu_request: str = setting("50m", "Sidecar CPU request.", check=_quantity)
    memory_request: str = setting("64Mi", "Sidecar memory request.", check=_quantity)
    cpu_limit: str = setting("", "Sidecar CPU limit (empty: none).", check=_quantity)
    memory_limit: str = setting("256Mi", "Sidecar memory limit (empty: none).", check=_quantity)
    ephemeral_storage_request: str = setting(
        "",
        "Sidecar ephemeral-storage request (empty: disk_queue_size_limit when the disk queue is on, "
        "so the scheduler reserves the disk the queue may fill and a node short of disk does not "
        "evict the pod first for it; none without the disk queue; 0: none).",
        check=_quantity,
    )
    ephemeral_storage_limit: str = setting(
        "",
        "Sidecar ephemeral-storage limit (empty: none). The kubelet compares the pod's whole use "
        "(its containers' logs and emptyDirs, the disk queue's included) with the sum of its "
        "containers' limits, so it must leave room for the disk queue.",
        check=_quantity,
    )
    run_as_user: int = setting(65532, "UID the sidecar runs as (non-root).", kind="int", min=1)
    shutdown_grace: int = setting(
        20,
        "Seconds the sidecar has to send what it accepted once told to stop (otlp-sidecar run "
        "--grace). In native mode the sidecar is stopped only after the app containers exited, "
        "within the pod's terminationGracePeriodSeconds: this much is added to it (to 30 s when "
        "unset), so an app that takes its own grace to stop leaves the sidecar its flush.",
        kind="int", min=1, max=600,
    )
    startup_timeout: int = setting(
        60,
        "Seconds the sidecar gets to become ready before kubelet restarts it.",
        kind="int",
        min=1,
        max=3600,
    )
    startup_path: str = setting(
        "/ready",
        "Admin path of the startup probe (gates the app's start in native mode).",
    )
    readiness_path: str = setting(
        "/ready",
        "Admin path of the readiness probe (a native sidecar's readiness is the pod's).",
    )
    liveness_path: str = setting("/health", "Admin path of the liveness probe.")
    excluded_namespaces: list[str] = setting(
        list(SYSTEM_NAMESPACES),
        "Namespaces never injected (the system namespaces).",
        kind="list",
    )

    @property
    def storage_request(self) -> str:
        """The sidecar's ephemeral-storage request: as set, else the disk queue's volume."""
        return self.ephemeral_storage_request or self.disk_queue_size_limit

    def validate(self) -> None:
        storage_key = "ephemeral_storage_request" if self.ephemeral_storage_request else "disk_queue_size_limit"
        for key, request, limit_key, limit in (
            ("cpu_request", self.cpu_request, "cpu_limit", self.cpu_limit),
            ("memory_request", self.memory_request, "memory_limit", self.memory_limit),
            (storage_key, self.storage_request, "ephemeral_storage_limit", self.ephemeral_storage_limit),
        ):
            # Kubernetes refuses a pod whose request is over its limit: every injected pod would be
            if request and limit and quantity_value(request) > quantity_value(limit):
                raise ConfigError(
                    f"injection.{key}",
                    f"{request} is more than {limit_key} {limit}: Kubernetes would refuse every injected pod",
                )
        ports = {self.grpc_port, self.http_port, self.admin_port}
        if len(ports) != 3:
            raise ConfigError("injection.admin_port", "grpc_port, http_port and admin_port must differ")
        if (self.bundle_key_secret or self.bundle_token_secret or self.bundle_ca_secret) and not self.bundles:
            raise ConfigError(
                "injection.bundles", "bundle_key_secret / bundle_token_secret / bundle_ca_secret need bundles"
            )
        if self.tenant_label and self.tenant_annotation:
            raise ConfigError(
                "injection.tenant_annotation",
                "set tenant_label or tenant_annotation, not both",
            )


@dataclass(frozen=True)
class PolicySetConfig:
    """One policy set: a ConfigMap in the pod's namespace, and how its keys map to files."""

    config_map: str = setting("", "ConfigMap holding the policies.", check=_dns_name)
    items: dict[str, str] = setting(
        {},
        "ConfigMap key -> relative file path, to restore subdirectories (keys cannot hold '/'); "
        "empty mounts every key as a file of the same name.",
        kind="map",
    )

    def problems(self) -> list[tuple[str, str]]:
        """(key, message) for each wrong value; keys are relative to the set's table."""
        found: list[tuple[str, str]] = []
        if not self.config_map:
            found.append(("config_map", "is required"))
        for key, path in self.items.items():
            if not path or path.startswith("/") or ".." in path.split("/"):
                found.append((f"items.{key}", f"{path!r} must be a relative path without '..'"))
        return found


@dataclass(frozen=True)
class WebhookConfig:
    server: ServerConfig = field(default_factory=ServerConfig)
    injection: InjectionConfig = field(default_factory=InjectionConfig)
    policy_sets: dict[str, PolicySetConfig] = field(default_factory=dict)
    source: str = ""


def load_webhook_config(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> WebhookConfig:
    """Load the webhook's TOML file (optional) and env overrides; ConfigError names the key."""
    env = dict(os.environ if env is None else env)
    data = read_toml(path, ("webhook", "injection", "policy_sets"))
    server = load_section(ServerConfig, "webhook", data.get("webhook"), env)
    injection = load_section(InjectionConfig, "injection", data.get("injection"), env)
    sets: dict[str, PolicySetConfig] = {}
    for name, table in data.get("policy_sets", {}).items():
        if not isinstance(table, dict):
            raise ConfigError(f"policy_sets.{name}", "must be a table")
        if not _DNS_LABEL.match(name):
            raise ConfigError(f"policy_sets.{name}", "a set name is lowercase letters, digits and '-'")
        policy_set = load_section(PolicySetConfig, f"policy_sets.{name}", table, {})
        for key, message in policy_set.problems():
            raise ConfigError(f"policy_sets.{name}.{key}", message)
        sets[name] = policy_set
    if sets and injection.default_policy_set and injection.default_policy_set not in sets:
        raise ConfigError(
            "injection.default_policy_set",
            f"{injection.default_policy_set!r} is not a policy set; the sets are: " + ", ".join(sorted(sets)),
        )
    config = WebhookConfig(server=server, injection=injection, policy_sets=sets, source=str(path or ""))
    from sidecar.webhook.inject import check_injected_sidecar  # inject builds on this module

    check_injected_sidecar(config)
    return config


def render_docs() -> str:
    """Markdown reference of the webhook's settings (docs/kubernetes.md embeds it)."""
    main = render_markdown(
        [
            ("webhook", ServerConfig, ServerConfig.__doc__ or ""),
            ("injection", InjectionConfig, InjectionConfig.__doc__ or ""),
        ]
    )
    sets = render_markdown([("policy_sets.<name>", PolicySetConfig, PolicySetConfig.__doc__ or "")])
    sets = "\n".join(line for line in sets.splitlines() if not line.startswith("  Environment:"))
    return main.rstrip() + "\n\n" + sets.rstrip() + "\n\n(Policy sets are set in the file only.)\n"
