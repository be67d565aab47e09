"""Lanes: the signals sent to one upstream endpoint, which share its circuit breaker, its export
workers and its part of the export queue.

With one endpoint (the usual case) there is one lane for every signal. A signal given an endpoint
of its own (``exporter.<signal>_endpoint``, ``OTEL_EXPORTER_OTLP_<SIGNAL>_ENDPOINT``), or settings
of its own (``OTEL_EXPORTER_OTLP_<SIGNAL>_HEADERS``, ``_CERTIFICATE``...), is a lane of its own:
a logs backend that is down, or a wrong logs path or API key that every logs export fails on,
opens the logs' circuit and fills the logs' part of the queue, and traces and metrics go on.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from urllib.parse import urlsplit

from sidecar.export.config import ExporterConfig, upstream_port
from sidecar.signals import Signal

Lane = frozenset[Signal]


def endpoint_of(config: ExporterConfig, signal: Signal) -> tuple[Hashable, ...]:
    """What identifies the endpoint ``signal`` is exported to: the settings it is sent with (the
    signal's own, or the exporter's), and its URL (scheme, host, port as connected to; the path
    of an endpoint of the signal's own). Signals on the exporter's endpoint share it."""
    if config.resolved_type == "debug":
        return ("debug",)
    url = urlsplit(config.url_for(signal))
    own_path = url.path.rstrip("/") if config.signal_endpoint(signal) else ""
    port = upstream_port(url.port, url.scheme, config.protocol)
    return (id(config), config.protocol, url.scheme, (url.hostname or "").lower(), port, own_path)


def lanes_of(exporter_for: Callable[[Signal], ExporterConfig]) -> tuple[Lane, ...]:
    """The signals grouped by endpoint, in the order of ``Signal`` (the first lane holds traces)."""
    groups: dict[tuple[Hashable, ...], list[Signal]] = {}
    for signal in Signal:
        groups.setdefault(endpoint_of(exporter_for(signal), signal), []).append(signal)
    return tuple(frozenset(signals) for signals in groups.values())


def lane_name(lane: Lane) -> str:
    """``traces+metrics``: the lane's signals, for logs and /ready."""
    return "+".join(signal.value for signal in Signal if signal in lane)
