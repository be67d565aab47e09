"""The overload metrics: one counter per protective action, connections per listener, the budget.

All children are created at zero at start (every listener x action), so an alert on
``increase(otlp_sidecar_overload_actions_total[5m]) > 0`` works from the first scrape.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry

from sidecar.metrickit import PREFIX, Kind, Label, declare
from sidecar.overload.budget import MemoryBudget
from sidecar.overload.reasons import LISTENERS, Action

COMPONENT = "sidecar.overload"

LISTENER = Label("listener", LISTENERS)

ACTIONS = declare(
    f"{PREFIX}_overload_actions", Kind.counter, "{actions}",
    "Protective actions taken against what clients sent, by listener and action "
    "(refusals by reason, timeouts, connections closed at the cap; docs/limits.md).",
    component=COMPONENT,
    labels=(LISTENER, Label("action", tuple(action.value for action in Action),
                            description="sidecar/overload/reasons.py; docs/limits.md")),
)
CONNECTIONS = declare(
    f"{PREFIX}_receiver_connections", Kind.gauge, "{connections}", "Open connections per listener.",
    component=COMPONENT, labels=(LISTENER,),
)
CONNECTIONS_LIMIT = declare(
    f"{PREFIX}_receiver_connections_limit", Kind.gauge, "{connections}",
    "Connections each listener accepts at most.", component=COMPONENT, labels=(LISTENER,),
)
BUDGET_IN_USE = declare(
    f"{PREFIX}_overload_budget_in_use_bytes", Kind.gauge, "By",
    "Bytes of the receive budget held now (wire, decompressed and decoded bytes).", component=COMPONENT,
)
BUDGET_PEAK = declare(
    f"{PREFIX}_overload_budget_peak_bytes", Kind.gauge, "By", "The most of the receive budget held at once.",
    component=COMPONENT,
)
BUDGET_LIMIT = declare(
    f"{PREFIX}_overload_budget_limit_bytes", Kind.gauge, "By", "limits.budget_bytes (the receive budget).",
    component=COMPONENT,
)
MEMORY_LIMIT = declare(
    f"{PREFIX}_overload_memory_limit_bytes", Kind.gauge, "By", "limits.max_memory_bytes (the memory ceiling).",
    component=COMPONENT,
)
LOOP_LAG = declare(
    f"{PREFIX}_event_loop_lag_seconds", Kind.histogram, "s",
    "How late the event loop ran a timer due every 0.1 s: the time every request and timer waited "
    "then (work holding the loop, a CPU limit throttling the pod, steal). A lag of 1 s or more is "
    "also logged.",
    component=COMPONENT, buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)


class OverloadMetrics:
    """``actions.labels(listener, action)``, ``connections.labels(listener)``, budget gauges."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.actions = ACTIONS.counter(registry)
        self.connections = CONNECTIONS.gauge(registry)
        self.connection_limit = CONNECTIONS_LIMIT.gauge(registry)
        self.budget_in_use = BUDGET_IN_USE.gauge(registry)
        self.budget_peak = BUDGET_PEAK.gauge(registry)
        self.budget_limit = BUDGET_LIMIT.gauge(registry)
        self.memory_limit = MEMORY_LIMIT.gauge(registry)
        self.loop_lag = LOOP_LAG.histogram(registry)
        self._children = {
            (listener, action): self.actions.labels(listener, action.value)
            for listener in LISTENERS
            for action in Action
        }
        for listener in LISTENERS:
            self.connections.labels(listener)

    def count(self, listener: str, action: Action, n: int = 1) -> None:
        """Count ``n`` protective actions of ``listener``."""
        child = self._children.get((listener, action))
        if child is None:
            child = self._children[(listener, action)] = self.actions.labels(listener, action.value)
        child.inc(n)

    def track(self, budget: MemoryBudget, memory_limit: int) -> None:
        """Report ``budget`` at every scrape."""
        self.budget_in_use.set_function(lambda: budget.in_use)
        self.budget_peak.set_function(lambda: budget.peak)
        self.budget_limit.set(budget.limit)
        self.memory_limit.set(memory_limit)

    def track_connections(self, listener: str, count: Callable[[], float], limit: int) -> None:
        """Report the open connections of ``listener`` (``count()``) and its cap."""
        self.connections.labels(listener).set_function(count)
        self.connection_limit.labels(listener).set(limit)


class Counted:
    """A listener's view of :class:`OverloadMetrics` (or none, in unit tests): ``count(action)``."""

    __slots__ = ("listener", "metrics")

    def __init__(self, metrics: OverloadMetrics | None, listener: str) -> None:
        self.metrics = metrics
        self.listener = listener

    def __call__(self, action: Action, n: int = 1) -> None:
        if self.metrics is not None:
            self.metrics.count(self.listener, action, n)
