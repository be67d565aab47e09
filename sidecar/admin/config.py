"""The ``[admin]`` section: the admin listener's settings and factory defaults."""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.configkit import setting

#: factory default: loopback (the chart binds 0.0.0.0 in a pod, for the kubelet's probes)
DEFAULT_ENDPOINT = "127.0.0.1:13133"


@dataclass(frozen=True)
class AdminConfig:
    """The admin listener: /health, /ready, /metrics, /policy."""

    endpoint: str = setting(
        DEFAULT_ENDPOINT, "host:port of the admin listener (0.0.0.0:13133 in a pod, for probes).",
        kind="endpoint", env=["SIDECAR_ADMIN_ENDPOINT"],
    )
    enabled: bool = setting(True, "Serve the admin listener.", kind="bool")
    ready_requires_upstream: bool = setting(
        False,
        "Answer /ready with 503 while an upstream's circuit is open (any one). Off by default: a native "
        "sidecar's readiness gates its pod, and an upstream outage should not take every app out "
        "of its Services (data waits in the queue meanwhile). /ready always reports the exporter's state.",
        kind="bool",
    )
