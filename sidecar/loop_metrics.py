"""Metrics counted on the event loop: plain numbers, read when the registry is scraped.

prometheus_client takes a lock and checks its arguments on every update: about 0.7 µs an
increment and 1.2 µs an observation here, some nine of them a request on the receive path, 3 %
of a sampled row's CPU (docs/performance.md). The metrics that only code on the event loop
updates need neither: a series here is a number in a slot, and the registry reads the slots at
a scrape (served on the same loop). Names, types, labels and exposition are prometheus_client's
(``_total`` and ``_created`` for a counter, cumulative ``_bucket`` series, ``_count``, ``_sum``).

Not for a metric that any other thread updates (the policy engine's, the bundle stager's):
``+=`` from two threads can lose an update. :meth:`sidecar.metrickit.Metric.loop_counter` and
its siblings make them from their declarations.
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Iterable, Sequence
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.utils import floatToGoString

__all__ = ["LoopCounter", "LoopGauge", "LoopHistogram"]


class CounterSeries:
    """One labelled series of a :class:`LoopCounter`."""

    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1) -> None:
        if amount < 0:
            raise ValueError(f"a counter only goes up: inc({amount})")
        self.value += amount


class GaugeSeries:
    """One labelled series of a :class:`LoopGauge`."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def set(self, value: float) -> None:
        self.value = float(value)

    def inc(self, amount: float = 1) -> None:
        self.value += amount

    def dec(self, amount: float = 1) -> None:
        self.value -= amount


class HistogramSeries:
    """One labelled series of a :class:`LoopHistogram`: a count per bucket (not cumulative)."""

    __slots__ = ("counts", "created", "sum", "upper")

    def __init__(self, upper: tuple[float, ...]) -> None:
        self.upper = upper
        self.counts = [0] * len(upper)
        self.sum = 0.0
        self.created = time.time()

    def observe(self, value: float) -> None:
        # the first bucket whose upper bound is >= value (bounds are inclusive: "le")
        index = bisect.bisect_left(self.upper, value)
        if value <= self.upper[index]:  # false for NaN only: in no bucket, as in prometheus_client
            self.counts[index] += 1
        self.sum += value


S = TypeVar("S", CounterSeries, GaugeSeries, HistogramSeries)


class _LoopMetric(Generic[S]):
    """A metric family: its series by label values, registered in ``registry`` as a collector."""

    _type = ""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], registry: CollectorRegistry) -> None:
        self._name = name
        self._documentation = documentation
        self._labelnames = tuple(labelnames)
        self._series: dict[tuple[str, ...], S] = {}
        if not self._labelnames:
            self._series[()] = self._new_series()
        registry.register(self)

    def _new_series(self) -> S:
        raise NotImplementedError

    def labels(self, *values: object, **by_name: object) -> S:
        """The series of these label values (created at zero on first use)."""
        if by_name:
            if values or set(by_name) != set(self._labelnames):
                raise ValueError(f"{self._name}: labels {sorted(by_name)} are not {list(self._labelnames)}")
            values = tuple(by_name[name] for name in self._labelnames)
        series = self._series.get(values)  # type: ignore[arg-type]  # the hot path: str values
        if series is not None:
            return series
        if not self._labelnames:
            raise ValueError(f"{self._name} has no labels")
        if len(values) != len(self._labelnames):
            raise ValueError(f"{self._name}: {len(values)} label values for {list(self._labelnames)}")
        return self._series.setdefault(tuple(str(value) for value in values), self._new_series())

    def remove(self, *values: object) -> None:
        """Drop the series of these label values."""
        del self._series[tuple(str(value) for value in values)]

    def clear(self) -> None:
        """Drop every series (an unlabelled metric keeps its one)."""
        self._series.clear()
        if not self._labelnames:
            self._series[()] = self._new_series()

    def _only(self) -> S:
        if self._labelnames:
            raise ValueError(f"{self._name} has labels {list(self._labelnames)}: use .labels(...)")
        return self._series[()]

    def _family(self) -> Metric:
        raise NotImplementedError

    def _add(self, family: Metric, labels: dict[str, str], series: S) -> None:
        raise NotImplementedError

    def describe(self) -> list[Metric]:
        """The family without samples (the registry checks names with it)."""
        return [self._family()]

    def collect(self) -> Iterable[Metric]:
        """The family and every series' samples, as the scrape reads them."""
        family = self._family()
        for values, series in list(self._series.items()):
            self._add(family, dict(zip(self._labelnames, values, strict=True)), series)
        return [family]


class LoopCounter(_LoopMetric[CounterSeries]):
    """A counter updated only on the event loop (``_total`` and ``_created`` exposed)."""

    def _new_series(self) -> CounterSeries:
        return CounterSeries()

    def inc(self, amount: float = 1) -> None:
        self._only().inc(amount)

    def _family(self) -> Metric:
        return CounterMetricFamily(self._name, self._documentation, labels=self._labelnames)

    def _add(self, family: Metric, labels: dict[str, str], series: CounterSeries) -> None:
        family.add_sample(f"{self._name}_total", labels, series.value)
        family.add_sample(f"{self._name}_created", labels, series.created)


class LoopGauge(_LoopMetric[GaugeSeries]):
    """A gauge updated only on the event loop."""

    def _new_series(self) -> GaugeSeries:
        return GaugeSeries()

    def set(self, value: float) -> None:
        self._only().set(value)

    def inc(self, amount: float = 1) -> None:
        self._only().inc(amount)

    def dec(self, amount: float = 1) -> None:
        self._only().dec(amount)

    def _family(self) -> Metric:
        return GaugeMetricFamily(self._name, self._documentation, labels=self._labelnames)

    def _add(self, family: Metric, labels: dict[str, str], series: GaugeSeries) -> None:
        family.add_sample(self._name, labels, series.value)


class LoopHistogram(_LoopMetric[HistogramSeries]):
    """A histogram updated only on the event loop, with prometheus_client's default buckets
    unless given; +Inf is added where the buckets lack it."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        registry: CollectorRegistry,
        buckets: Sequence[float] = Histogram.DEFAULT_BUCKETS,
    ) -> None:
        upper = [float(bound) for bound in buckets]
        if upper != sorted(upper) or not upper:
            raise ValueError(f"{name}: buckets must be given in increasing order")
        if upper[-1] != math.inf:
            upper.append(math.inf)
        self._upper = tuple(upper)
        self._le = tuple(floatToGoString(bound) for bound in upper)  # type: ignore[no-untyped-call]
        super().__init__(name, documentation, labelnames, registry)

    def _new_series(self) -> HistogramSeries:
        return HistogramSeries(self._upper)

    def observe(self, value: float) -> None:
        self._only().observe(value)

    def _family(self) -> Metric:
        return Metric(self._name, self._documentation, "histogram")

    def _add(self, family: Metric, labels: dict[str, str], series: HistogramSeries) -> None:
        cumulative = 0
        for le, count in zip(self._le, list(series.counts), strict=True):
            cumulative += count
            family.add_sample(f"{self._name}_bucket", {**labels, "le": le}, cumulative)
        family.add_sample(f"{self._name}_count", labels, cumulative)
        family.add_sample(f"{self._name}_sum", labels, series.sum)
        family.add_sample(f"{self._name}_created", labels, series.created)
