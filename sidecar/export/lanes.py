"""Lanes: the signals sent to one upstream, which share its circuit breaker, its export workers
and its part of the export queue.

With one endpoint (the usual case) there is one lane for every signal. With per-signal endpoints
(``exporter.<signal>_endpoint``, ``OTEL_EXPORTER_OTLP_<SIGNAL>_ENDPOINT``) on different upstreams,
each upstream has its own lane: a logs backend that is down opens its own circuit and fills its
own part of the queue, and traces and metrics go on to theirs.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

from sidecar.export.config import ExporterConfig
from sidecar.signals import Signal

Lane = frozenset[Signal]


def upstream_of(config: ExporterConfig, signal: Signal) -> tuple[str, ...]:
    """What identifies the upstream ``signal`` goes to: the exporter's type and protocol, and the
    scheme, host and port of its URL (paths on one server are one upstream)."""
    if config.resolved_type == "debug":
        return ("debug",)
    url = urlsplit(config.url_for(signal))
    try:
        port = str(url.port or "")
    except ValueError:  # validated at load; never fails here, but a lane of its own if it did
        port = url.netloc
    return ("otlp", config.protocol, url.scheme, (url.hostname or "").lower(), port)


def lanes_of(exporter_for: Callable[[Signal], ExporterConfig]) -> tuple[Lane, ...]:
    """The signals grouped by upstream, in the order of ``Signal`` (the first lane holds traces)."""
    groups: dict[tuple[str, ...], list[Signal]] = {}
    for signal in Signal:
        groups.setdefault(upstream_of(exporter_for(signal), signal), []).append(signal)
    return tuple(frozenset(signals) for signals in groups.values())


def lane_name(lane: Lane) -> str:
    """``traces+metrics``: the lane's signals, for logs and /ready."""
    return "+".join(signal.value for signal in Signal if signal in lane)
