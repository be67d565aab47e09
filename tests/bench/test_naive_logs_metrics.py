"""The naive baseline for logs and metrics applies the same plan as the rewriter: its output,
decoded, equals the rewriter's for the benchmark's log and metric requests (masked card numbers
in bodies, nested maps and attributes; dropped, hashed and redacted attributes)."""

from __future__ import annotations

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)

from bench.baselines.naive_rewrite import naive_rewrite_logs, naive_rewrite_metrics
from bench.corpus_requests import DEFAULT_PLAN
from bench.rewrite import log_request, metric_request
from sidecar.rewrite import rewrite
from sidecar.rewrite.plan import AttributeRule, Plan, ValueDetector
from sidecar.signals import Signal

#: rules that hit the requests' keys, nested map keys included
RULES = Plan(
    attribute_rules=(
        *(AttributeRule(f"r{i}", f"*secret{i}*", "drop") for i in range(40)),
        AttributeRule("drop.user", "user.*", "drop"),
        AttributeRule("hash.order", "order.id", "hash"),
        AttributeRule("redact.tier", "customer.tier", "redact"),
        AttributeRule("mask.route", "http.rout?", "mask_pan"),
        AttributeRule("drop.server", "server.*", "drop"),
    ),
    detectors=(ValueDetector("pan", "pan", "mask_pan"),),
    hash_key=b"bench-key",
)


@pytest.mark.parametrize("plan", [DEFAULT_PLAN, RULES], ids=["default", "rules"])
@pytest.mark.parametrize("seed", [1, 7])
def test_naive_logs_produce_what_the_rewriter_produces(plan: Plan, seed: int) -> None:
    body = log_request(128, seed=seed, pan_share=0.3)
    ours = ExportLogsServiceRequest.FromString(rewrite(Signal.LOGS, body, [plan]).data)
    naive = ExportLogsServiceRequest.FromString(naive_rewrite_logs(body, plan))
    records = naive.resource_logs[0].scope_logs[0].log_records
    assert len(records) == 128
    assert any("****" in r.body.string_value for r in records)  # card numbers were masked
    assert naive.resource_logs[0].scope_logs == ours.resource_logs[0].scope_logs


@pytest.mark.parametrize("plan", [DEFAULT_PLAN, RULES], ids=["default", "rules"])
@pytest.mark.parametrize("seed", [1, 7])
def test_naive_metrics_produce_what_the_rewriter_produces(plan: Plan, seed: int) -> None:
    body = metric_request(256, seed=seed)
    ours = ExportMetricsServiceRequest.FromString(rewrite(Signal.METRICS, body, [plan]).data)
    naive = ExportMetricsServiceRequest.FromString(naive_rewrite_metrics(body, plan))
    assert len(naive.resource_metrics[0].scope_metrics[0].metrics) > 10
    assert naive.resource_metrics[0].scope_metrics == ours.resource_metrics[0].scope_metrics
