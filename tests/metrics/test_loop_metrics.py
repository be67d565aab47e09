"""sidecar.loop_metrics: the same scrape as prometheus_client's metrics after the same updates."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from sidecar.loop_metrics import LoopCounter, LoopGauge, LoopHistogram

BYTES_BUCKETS = (1024.0, 65536.0, 1048576.0, 8388608.0)


def _updates(counter: Any, histogram: Any, sized: Any, gauge: Any, labelled_gauge: Any) -> None:
    counter.labels("traces", "grpc").inc(5)
    counter.labels("traces", "grpc").inc()
    counter.labels(signal="logs", transport="http").inc(2.5)
    counter.labels("metrics", "http")  # created, never counted: exposed at zero
    for seconds in (0.0001, 0.005, 0.005001, 0.2, 7.0, 100.0):
        histogram.labels("traces").observe(seconds)
    histogram.labels("logs")
    for size in (10, 1024, 1025, 2_000_000, 9_000_000):
        sized.labels("traces").observe(size)
    gauge.set(12)
    gauge.inc(3)
    gauge.dec()
    labelled_gauge.labels("traces").set(7)
    labelled_gauge.labels("logs").set(1)
    labelled_gauge.remove("logs")


def _scrape(make: Callable[..., tuple[Any, ...]]) -> str:
    registry = CollectorRegistry()
    _updates(*make(registry))
    # the creation times differ between the two: compare the rest
    return re.sub(r"^(\w+_created(\{[^}]*\})?) \S+$", r"\1 0", generate_latest(registry).decode(), flags=re.M)


def _library(registry: CollectorRegistry) -> tuple[Any, ...]:
    return (
        Counter("t_items", "Items.", ["signal", "transport"], registry=registry),
        Histogram("t_duration_seconds", "Duration.", ["signal"], registry=registry),
        Histogram("t_batch_bytes", "Bytes.", ["signal"], registry=registry, buckets=BYTES_BUCKETS),
        Gauge("t_queue_bytes", "Queue.", [], registry=registry),
        Gauge("t_queue_items", "Queue items.", ["signal"], registry=registry),
    )


def _loop(registry: CollectorRegistry) -> tuple[Any, ...]:
    return (
        LoopCounter("t_items", "Items.", ["signal", "transport"], registry),
        LoopHistogram("t_duration_seconds", "Duration.", ["signal"], registry),
        LoopHistogram("t_batch_bytes", "Bytes.", ["signal"], registry, BYTES_BUCKETS),
        LoopGauge("t_queue_bytes", "Queue.", [], registry),
        LoopGauge("t_queue_items", "Queue items.", ["signal"], registry),
    )


def test_a_scrape_reads_as_prometheus_clients_after_the_same_updates() -> None:
    ours = _scrape(_loop)
    assert ours == _scrape(_library)
    # and what it reads is what was counted (not two equal empty scrapes)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(ours) for s in family.samples
    }
    assert samples[("t_items_total", (("signal", "traces"), ("transport", "grpc")))] == 6
    assert samples[("t_items_total", (("signal", "metrics"), ("transport", "http")))] == 0
    assert samples[("t_duration_seconds_bucket", (("le", "0.005"), ("signal", "traces")))] == 2  # le: inclusive
    assert samples[("t_duration_seconds_count", (("signal", "traces"),))] == 6
    assert samples[("t_batch_bytes_bucket", (("le", "1.048576e+06"), ("signal", "traces")))] == 3
    assert samples[("t_queue_bytes", ())] == 14
    assert ("t_queue_items", (("signal", "logs"),)) not in samples


def test_created_is_the_time_a_series_began() -> None:
    registry = CollectorRegistry()
    counter = LoopCounter("c_items", "Items.", ["signal"], registry)
    counter.labels("traces").inc()
    created = registry.get_sample_value("c_items_created", {"signal": "traces"})
    assert created is not None and abs(created - __import__("time").time()) < 60


def test_misuse_is_refused_as_prometheus_client_refuses_it() -> None:
    registry = CollectorRegistry()
    counter = LoopCounter("m_items", "Items.", ["signal"], registry)
    with pytest.raises(ValueError, match="only goes up"):
        counter.labels("traces").inc(-1)
    with pytest.raises(ValueError, match="label values"):
        counter.labels("traces", "grpc")
    with pytest.raises(ValueError, match="labels"):
        counter.labels(transport="grpc")
    with pytest.raises(ValueError, match=r"use \.labels"):
        counter.inc()
    with pytest.raises(ValueError, match="increasing"):
        LoopHistogram("m_bad", "Bad.", [], registry, (2.0, 1.0))
    # the registry's duplicate check sees the family's series names
    with pytest.raises(ValueError, match="Duplicated"):
        Counter("m_items", "Again.", ["signal"], registry=registry)
    unlabelled = LoopGauge("m_gauge", "Gauge.", [], registry)
    with pytest.raises(ValueError, match="no labels"):
        unlabelled.labels("x")


def test_label_values_are_strings_and_clear_empties_the_family() -> None:
    registry = CollectorRegistry()
    counter = LoopCounter("s_items", "Items.", ["code"], registry)
    counter.labels(503).inc()
    counter.labels("503").inc()  # the same series
    assert registry.get_sample_value("s_items_total", {"code": "503"}) == 2
    counter.clear()
    assert registry.get_sample_value("s_items_total", {"code": "503"}) is None
    histogram = LoopHistogram("s_seconds", "Seconds.", [], registry)
    histogram.observe(math.nan)  # in no bucket, as prometheus_client does
    histogram.observe(1.0)
    assert registry.get_sample_value("s_seconds_count") == 1
