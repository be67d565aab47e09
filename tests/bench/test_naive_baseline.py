"""The naive baseline applies the same policy as the rewriter: a fair comparison, not a straw man.

Its output, decoded, must equal the rewriter's for the benchmark's requests and plans (masked
card numbers, dropped and hashed attributes, sampled-out spans, tracestate).
"""

from __future__ import annotations

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from bench.baselines.naive_rewrite import naive_rewrite
from bench.corpus_requests import DEFAULT_PLAN, trace_request
from sidecar.rewrite import rewrite
from sidecar.rewrite.plan import AttributeRule, Plan, ValueDetector
from sidecar.signals import Signal

#: many glob rules, like the shipped PCI policy's, with the first match deciding
MANY_RULES = Plan(
    attribute_rules=(
        *(AttributeRule(f"r{i}", f"*secret{i}*", "drop") for i in range(40)),
        AttributeRule("drop.user", "user.*", "drop"),
        AttributeRule("hash.net", "net.*", "hash"),
        AttributeRule("mask.url", "http.u?l", "mask_pan"),
    ),
    detectors=(ValueDetector("pan", "pan", "mask_pan"),),
    hash_key=b"bench-key",
)


@pytest.mark.parametrize("plan", [DEFAULT_PLAN, MANY_RULES], ids=["default", "many-rules"])
@pytest.mark.parametrize("seed", [1, 7])
def test_naive_baseline_produces_what_the_rewriter_produces(plan: Plan, seed: int) -> None:
    body = trace_request(256, seed=seed, pan_share=0.2)
    ours = ExportTraceServiceRequest.FromString(rewrite(Signal.TRACES, body, [plan]).data)
    naive = ExportTraceServiceRequest.FromString(naive_rewrite(body, plan))
    spans = naive.resource_spans[0].scope_spans[0].spans
    assert 0 < len(spans) <= 256
    assert naive.resource_spans[0].scope_spans == ours.resource_spans[0].scope_spans
