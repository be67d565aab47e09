"""Metrics declared once: every metric the code registers is in the catalogue exactly as declared
(name, type, labels, help), each label vocabulary matches what the code counts, and
docs/metrics.md is the catalogue rendered (regenerate with `make docs`)."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from sidecar import loop_guard, metrickit
from sidecar.export import metrics as export_metrics
from sidecar.export.circuit import CircuitBreaker, State
from sidecar.export.diskqueue import DiskQueue
from sidecar.metrickit import Kind, Label, Metric, catalogue
from sidecar.metrics import SidecarMetrics
from sidecar.metrics_docs import render_docs
from sidecar.overload.reasons import Action
from sidecar.pipeline import ITEM_REASONS, REQUEST_REASONS
from sidecar.policy import metrics as policy_metrics
from sidecar.policy.bundles.metrics import BundleMetrics
from sidecar.policy.config import MODES
from sidecar.receivers import grpc as grpc_receiver
from sidecar.receivers import http as http_receiver
from sidecar.receivers.contract import LoopDetected
from sidecar.receivers.metrics import ITEM_REFUSALS, REQUEST_REFUSALS
from sidecar.signals import Signal
from sidecar.tls import metrics as tls_metrics
from sidecar.tls.server import PeerRefused
from sidecar.webhook.inject import Scope
from sidecar.webhook.metrics import WebhookMetrics
from sidecar.wire.otlp_json import JsonRefused

REPO = Path(__file__).resolve().parents[2]
#: the exposition's type of each declared kind (an info is a gauge named ``_info``)
EXPOSED_TYPE = {Kind.counter: "counter", Kind.gauge: "gauge", Kind.histogram: "histogram", Kind.info: "info"}


def registered(tmp_path: Path) -> dict[str, tuple[str, str, frozenset[str]]]:
    """{family name: (type, help, label names)} of everything the components register, each
    component made as the sidecar and the webhook make it."""
    registry = CollectorRegistry()
    SidecarMetrics(registry)
    policy_metrics.PolicyMetrics(registry)
    BundleMetrics(registry)
    tls_metrics.TLSMetrics(registry)
    CircuitBreaker(registry=registry)
    DiskQueue(str(tmp_path / "q"), lanes=(frozenset(Signal),), max_bytes=1 << 20, registry=registry)
    families = {}
    for reg in (registry, WebhookMetrics().registry):
        for family in reg.collect():
            labels = {name for sample in family.samples for name in sample.labels} - {"le"}
            families[family.name] = (family.type, family.documentation, frozenset(labels))
    return families


def test_each_metric_is_declared_once_with_a_unit_and_a_description() -> None:
    metrics = catalogue()
    names = [m.name for m in metrics]
    assert len(names) == len(set(names))
    for metric in metrics:
        assert metric.name.startswith((metrickit.PREFIX + "_", "process_")), metric.name
        assert metric.unit and metric.description.endswith("."), metric.name
        assert metric.component in {c.removesuffix(".metrics") for c in metrickit.COMPONENTS}, metric.name
        for label in metric.labels:
            assert label.values or not label.closed, f"{metric.name}{{{label.name}}}: a closed label without values"
    with pytest.raises(ValueError, match="declared twice"):
        metrickit.declare(metrics[0].name, Kind.gauge, "1", "again.", component="sidecar")


def test_the_code_registers_exactly_the_declared_metrics(tmp_path: Path) -> None:
    """No metric is made outside the catalogue, and each is made as declared."""
    families = registered(tmp_path)
    declared = {m.name: m for m in catalogue()}
    assert set(families) == set(declared), (set(families) ^ set(declared))
    for name, (kind, documentation, labels) in families.items():
        metric = declared[name]
        assert kind == EXPOSED_TYPE[metric.kind], name
        if not name.startswith("process_"):
            assert documentation == metric.description, name
        assert labels <= set(metric.label_names), (name, labels)


def _children(metric: Metric) -> list[tuple[str, ...]]:
    labels: list[Label] = [label for label in metric.labels if label.every and label.values]
    return list(itertools.product(*(label.values for label in labels)))


def test_closed_labels_are_created_at_zero_from_the_start(tmp_path: Path) -> None:
    """Every combination of the labels declared ``every`` exists before any event."""
    registry = CollectorRegistry()
    SidecarMetrics(registry)
    policy_metrics.PolicyMetrics(registry).set_mode("enforce")
    CircuitBreaker(registry=registry)
    samples = {(s.name, frozenset(s.labels.items())): s.value
               for reg in (registry, WebhookMetrics().registry) for f in reg.collect() for s in f.samples}
    # created by the services at start, not by the metrics classes: the policy engine's caches and
    # cache counters, the listeners' caps (tests/operability/test_live_metrics.py sees them live)
    later = {"otlp_sidecar_policy_decision_cache", "otlp_sidecar_policy_cache_entries",
             "otlp_sidecar_policy_cache_distinct_plans", "otlp_sidecar_policy_cache_bytes",
             "otlp_sidecar_receiver_connections_limit"}
    checked = 0
    for metric in catalogue():
        if metric.appears or metric.component in ("sidecar.policy.bundles",) or metric.name in later:
            continue
        names = [label.name for label in metric.labels if label.every and label.values]
        if len(names) != len(metric.labels):
            continue
        sample = metric.exposed if metric.kind is not Kind.histogram else f"{metric.name}_count"
        for values in _children(metric):
            key = (sample, frozenset(zip(names, values, strict=True)))
            if metric.labels:
                assert key in samples, key
                if metric.kind in (Kind.counter, Kind.histogram):
                    assert samples[key] == 0, key
                checked += 1
    assert checked > 200  # (238 when written)


def test_the_reasons_the_code_counts_are_the_declared_ones() -> None:
    """One vocabulary: what the pipeline, the receivers, their servers and the TLS peer check count
    is what the refused-items / refused-requests labels declare (and so create at zero)."""
    assert set(ITEM_REASONS) == set(ITEM_REFUSALS)
    assert set(REQUEST_REASONS) <= set(REQUEST_REFUSALS)
    assert set(PeerRefused.STATUSES) <= set(REQUEST_REFUSALS)
    assert set(PeerRefused.STATUSES) == set(tls_metrics.PEER_REFUSALS)
    assert LoopDetected.reason == loop_guard.REASON in REQUEST_REFUSALS
    assert set(http_receiver._REFUSAL_REASONS.values()) <= set(REQUEST_REFUSALS)
    # the gRPC server's refusals (sidecar.wire.http2: too_large, busy, malformed, timeout), named as on HTTP
    for reason in ("too_large", "busy", "malformed", "timeout"):
        assert grpc_receiver._SERVER_REASONS.get(reason, reason) in REQUEST_REFUSALS
    for action in Action:
        assert JsonRefused("x", action).reason in REQUEST_REFUSALS
    assert "timeout" not in REQUEST_REFUSALS  # too_slow, on both transports


def test_each_literal_reason_the_receivers_count_is_declared() -> None:
    """A reason written as a literal where the receivers or the pipeline count a refusal is a
    declared one (so created at zero: a new one without its zero series fails here)."""
    sources = [REPO / "sidecar" / "pipeline.py", *sorted((REPO / "sidecar" / "receivers").glob("*.py"))]
    counted = set()
    for path in sources:
        for line in path.read_text().splitlines():
            if re.search(r"refused_items|_refuse_items|refused_requests|Bounded\(", line):
                counted |= set(re.findall(r'"([a-z_]+)"', line))
    assert {"unsupported_media_type", "bad_compression", "busy", "too_large"} <= counted  # the scan sees the calls
    assert counted <= set(ITEM_REFUSALS) | set(REQUEST_REFUSALS), counted - set(ITEM_REFUSALS) - set(REQUEST_REFUSALS)


def test_other_vocabularies_follow_the_code() -> None:
    assert policy_metrics.MODES == MODES
    assert tuple(state.name.lower() for state in State) == export_metrics.CIRCUIT_STATES
    webhook = {m.name: m for m in catalogue() if m.component == "sidecar.webhook"}
    assert webhook["otlp_sidecar_webhook_reviews"].label("scope").values == tuple(s.value for s in Scope)
    actions = {m.name: m for m in catalogue()}["otlp_sidecar_overload_actions"].label("action")
    assert actions.values == tuple(a.value for a in Action)


def test_outcomes_say_ok_or_failed_everywhere() -> None:
    """One vocabulary of results: no label value says success / failure."""
    results = 0
    for metric in catalogue():
        for label in metric.labels:
            assert not {"success", "failure", "succeeded", "fail"} & set(label.values), (metric.name, label)
            if label.name == "result" and "ok" in label.values:
                assert "failed" in label.values, metric.name
                results += 1
    assert results == 3  # policy reloads, TLS reloads, webhook cert reloads (bundle polls: failed too)


def test_docs_metrics_md_is_generated_from_the_catalogue() -> None:
    """docs/metrics.md lists every metric as declared; regenerate with `make docs`."""
    text = (REPO / "docs" / "metrics.md").read_text(encoding="utf-8")
    assert text == render_docs()
    for metric in catalogue():
        assert f"`{metric.exposed}`" in text


def test_the_collector_names_are_declared_with_their_metric() -> None:
    declared = {m.name: m for m in catalogue()}
    assert declared["otlp_sidecar_receiver_accepted_items"].collector.startswith("otelcol_receiver_accepted_spans")
    assert declared["otlp_sidecar_exporter_failed_items"].collector.startswith("otelcol_exporter_send_failed_spans")
    assert declared["process_resident_memory_bytes"].collector == "otelcol_process_memory_rss"
