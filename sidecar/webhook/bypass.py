"""Containers that would send their telemetry around the sidecar.

The webhook points ``OTEL_EXPORTER_OTLP_ENDPOINT`` at the sidecar, unless a container sets it. But
a container may set it to the collector, or set a signal's own endpoint
(``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``), which the OpenTelemetry SDKs use before the generic one:
that signal then leaves the pod unmasked, whatever the sidecar's policies. In PCI scope such a pod
is refused; elsewhere it is admitted with a warning. A variable taken from a Secret or a ConfigMap
(``valueFrom``) cannot be read here, so it counts as pointing elsewhere; variables from
``envFrom`` are not seen at all (a warning). A value parsers may read differently (a backslash,
userinfo, a ``$(VAR)`` Kubernetes expands) counts as elsewhere; names count in any case and with
dots (``otel.exporter.otlp.endpoint``), as Java's SDK reads them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from sidecar.configkit import parse_endpoint
from sidecar.masked_text import quoted

#: the variables an OpenTelemetry SDK sends OTLP to (a signal's own first, then the generic one)
ENDPOINT_VARIABLES = (
    "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
)
#: the most containers a message names
_NAMED = 3


def _host_port(value: str) -> tuple[str, int | None]:
    """The host and port an endpoint variable names (a URL, or host:port as some SDKs take for
    gRPC); ValueError when it names none."""
    if "://" in value:
        parts = urlsplit(value)
        return parts.hostname or "", parts.port
    host, port = parse_endpoint(value)
    return host.strip("[]"), port


#: what parsers read differently (a backslash, userinfo), or Kubernetes substitutes before the app
#: reads it (``$(VAR)``): a value holding one is not judged, it counts as elsewhere
_AMBIGUOUS = ("$(", "\\", "@")


def is_the_sidecar(value: str, ports: Iterable[int]) -> bool:
    """Whether an endpoint variable's ``value`` points at the sidecar: a loopback host, one of its
    OTLP ``ports``. A value that parsers may read differently is not the sidecar."""
    value = value.strip()
    if any(part in value for part in _AMBIGUOUS) or not value.isprintable() or " " in value:
        return False
    try:
        host, port = _host_port(value)
    except ValueError:
        return False
    return _loopback(host) and port in set(ports)


def _loopback(host: str) -> bool:
    """localhost, a loopback address (IPv4-mapped too), or the unspecified one (which reaches this host)."""
    host = host.lower().removesuffix(".")
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or address.is_unspecified or (mapped is not None and mapped.is_loopback)


def endpoint_variable(name: str) -> str | None:
    """The endpoint variable ``name`` is read as, or None. SDKs that read their settings as
    properties (Java) take ``otel.exporter.otlp.endpoint`` and lower case too."""
    normal = name.upper().replace(".", "_").replace("-", "_")
    return normal if normal in ENDPOINT_VARIABLES else None


def around_the_sidecar(containers: Iterable[Mapping[str, Any]], ports: Iterable[int]) -> list[str]:
    """``container: VARIABLE=value`` for each endpoint variable that points elsewhere than the
    sidecar (values quoted short and masked; one from a Secret or ConfigMap named as such)."""
    found = []
    ports = tuple(ports)
    for container in containers:
        for item in container.get("env") or []:
            name = item.get("name")
            if not isinstance(name, str) or endpoint_variable(name) is None:
                continue
            value = item.get("value")
            if item.get("valueFrom") is not None:
                found.append(f"container {container['name']!r}: {name} from a Secret or ConfigMap, which "
                             "the webhook cannot read")
            elif isinstance(value, str) and value.strip() and not is_the_sidecar(value, ports):
                found.append(f"container {container['name']!r}: {name}={quoted(value, 80)}")
    return found


def with_env_from(containers: Iterable[Mapping[str, Any]]) -> list[str]:
    """The names of the containers that take variables from ``envFrom`` (not seen here)."""
    return [str(c["name"]) for c in containers if c.get("envFrom")]


def listed(items: list[str]) -> str:
    """The first few of ``items``, and how many more."""
    shown = "; ".join(items[:_NAMED])
    return shown + (f" and {len(items) - _NAMED} more" if len(items) > _NAMED else "")
