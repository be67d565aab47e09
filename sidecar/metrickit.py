"""Metrics declared once, as the Collector's ``metadata.yaml`` declares a component's metrics.

Each component declares its metrics in its own ``metrics.py`` with :func:`declare`: the name,
the type, the unit, a description, every label with its allowed values (where the vocabulary is
closed) and the OpenTelemetry Collector's equivalent where there is one. The code creates its
Prometheus objects from the declarations (:meth:`Metric.counter` ...), docs/metrics.md is generated
from them (``make docs``: :mod:`sidecar.metrics_docs`), and the tests check a live scrape against
them. :func:`catalogue` is every declaration of every component.
"""

from __future__ import annotations

import enum
import importlib
from collections.abc import Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from sidecar.loop_metrics import LoopCounter, LoopGauge, LoopHistogram

#: every metric name starts so
PREFIX = "otlp_sidecar"

#: the modules that declare metrics, in the order docs/metrics.md lists them
COMPONENTS = (
    "sidecar.receivers.metrics",
    "sidecar.metrics",
    "sidecar.overload.metrics",
    "sidecar.policy.metrics",
    "sidecar.policy.bundles.metrics",
    "sidecar.export.metrics",
    "sidecar.tls.metrics",
    "sidecar.webhook.metrics",
)


class Kind(enum.Enum):
    """A Prometheus metric type."""

    counter = "counter"
    gauge = "gauge"
    histogram = "histogram"
    info = "info"


@dataclass(frozen=True, slots=True)
class Label:
    """A label and the values it takes: ``values``, and no other when ``closed``."""

    name: str
    values: tuple[str, ...] = ()
    #: False when other values appear: from configuration or the policies (rule ids, bundle
    #: names ...), or answers met at their first use (an upstream's ``http_502``)
    closed: bool = True
    #: True when a series of each of ``values`` exists from the start (at zero for a counter);
    #: False when only the values that apply are created (the back-end in use ...)
    every: bool = True
    #: what the values mean, where it is not plain
    description: str = ""


@dataclass(frozen=True, slots=True)
class Metric:
    """One metric as exposed (counters gain ``_total``, histograms ``_bucket``/``_sum``/``_count``)."""

    #: the family name, without the ``_total`` of a counter
    name: str
    kind: Kind
    unit: str
    description: str
    #: the component that declares it (its package)
    component: str
    labels: tuple[Label, ...] = ()
    #: "" when it is exposed from the start (its closed label values at zero), else when it appears
    appears: str = ""
    #: the Collector's equivalent self-metric(s), and how they differ
    collector: str = ""
    collector_differences: str = ""
    buckets: tuple[float, ...] = ()
    #: a longer note for docs/metrics.md (what is timed, how it is read)
    note: str = ""

    @property
    def exposed(self) -> str:
        """The name a scrape shows (``_total`` added to a counter, ``_info`` to an info)."""
        if self.kind is Kind.counter:
            return f"{self.name}_total"
        if self.kind is Kind.info:
            return f"{self.name}_info"
        return self.name

    @property
    def label_names(self) -> list[str]:
        return [label.name for label in self.labels]

    def label(self, name: str) -> Label:
        return next(label for label in self.labels if label.name == name)

    def counter(self, registry: CollectorRegistry) -> Counter:
        self._check(Kind.counter)
        return Counter(self.name, self.description, self.label_names, registry=registry)

    def gauge(self, registry: CollectorRegistry) -> Gauge:
        self._check(Kind.gauge)
        return Gauge(self.name, self.description, self.label_names, registry=registry)

    def histogram(self, registry: CollectorRegistry) -> Histogram:
        self._check(Kind.histogram)
        if self.buckets:
            return Histogram(self.name, self.description, self.label_names, registry=registry, buckets=self.buckets)
        return Histogram(self.name, self.description, self.label_names, registry=registry)

    def info(self, registry: CollectorRegistry) -> Info:
        self._check(Kind.info)
        return Info(self.name, self.description, self.label_names, registry=registry)

    def loop_counter(self, registry: CollectorRegistry) -> LoopCounter:
        """:meth:`counter` for a metric only the event loop updates (:mod:`sidecar.loop_metrics`)."""
        self._check(Kind.counter)
        return LoopCounter(self.name, self.description, self.label_names, registry)

    def loop_gauge(self, registry: CollectorRegistry) -> LoopGauge:
        """:meth:`gauge` for a metric only the event loop updates."""
        self._check(Kind.gauge)
        return LoopGauge(self.name, self.description, self.label_names, registry)

    def loop_histogram(self, registry: CollectorRegistry) -> LoopHistogram:
        """:meth:`histogram` for a metric only the event loop updates."""
        self._check(Kind.histogram)
        if self.buckets:
            return LoopHistogram(self.name, self.description, self.label_names, registry, self.buckets)
        return LoopHistogram(self.name, self.description, self.label_names, registry)

    def _check(self, kind: Kind) -> None:
        if self.kind is not kind:
            raise TypeError(f"{self.name} is declared a {self.kind.value}, not a {kind.value}")


_DECLARED: dict[str, Metric] = {}


def declare(
    name: str,
    kind: Kind,
    unit: str,
    description: str,
    *,
    component: str,
    labels: Sequence[Label] = (),
    appears: str = "",
    collector: str = "",
    collector_differences: str = "",
    buckets: Sequence[float] = (),
    note: str = "",
) -> Metric:
    """Declare a metric (once: a second declaration of a name is an error)."""
    if name in _DECLARED:
        raise ValueError(f"metric {name} is declared twice")
    metric = Metric(
        name, kind, unit, description, component, tuple(labels), appears, collector, collector_differences,
        tuple(buckets), note,
    )
    _DECLARED[name] = metric
    return metric


def catalogue() -> list[Metric]:
    """Every declared metric, component by component (:data:`COMPONENTS`) in declaration order."""
    for module in COMPONENTS:
        importlib.import_module(module)
    order = {module.removesuffix(".metrics"): i for i, module in enumerate(COMPONENTS)}
    return sorted(_DECLARED.values(), key=lambda m: order.get(m.component, len(order)))
