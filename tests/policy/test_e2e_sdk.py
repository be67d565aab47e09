"""End to end with the shipped policies: the OpenTelemetry SDK -> a real sidecar -> a test upstream.

Spans with card numbers, a spoofed tenant and mixed statuses go in; upstream gets
exactly what the policies say: card data masked or dropped, the pod's tenant
stamped, errors and large orders kept, the rest sampled at 10 % by trace id, and
nothing from the resource that claims another tenant.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.export import SpanExportResult

from sidecar.rewrite.plan import HASH_PREFIX
from sidecar.signals import Signal
from tests import sdk
from tests.conftest import sidecar_env
from tests.policy.conftest import POLICIES, attrs_of

VISA, MASTERCARD = "4111 1111 1111 1111", "5555-5555-5555-4444"


def sampled_in(trace_id: int, ratio: float = 0.1) -> bool:
    """OpenTelemetry's consistent sampling: the trace id's low 56 bits against the threshold."""
    threshold = (1 << 56) - round(ratio * (1 << 56))
    return (trace_id & ((1 << 56) - 1)) >= threshold


@pytest.mark.parametrize("transport", ["http", "grpc"])
async def test_upstream_receives_what_the_policies_say(
    upstream, start_sidecar, hash_key_file: Path, transport: str,
) -> None:
    env = sidecar_env(
        upstream, "grpc",
        SIDECAR_POLICY_DIR=str(POLICIES), SIDECAR_POLICY_HASH_KEY_FILE=str(hash_key_file),
        SIDECAR_TENANT="acme", SIDECAR_POLICY_RELOAD_INTERVAL="0",
    )
    sidecar = await start_sidecar(env)
    port = sidecar.addresses[transport][1]
    span_exporter, _, _ = sdk.exporters(transport, port, "none")
    checkout = Resource.create({"service.name": "checkout"})
    spans = sdk.make_spans(200, checkout, {
        "card.number": VISA, "payment.card.cvv": "123", "note": f"paid with {MASTERCARD}",
        "cardholder_name": "Jane Roe",
    })
    orders = sdk.make_spans(20, checkout, {"order.amount": 2500})
    spoofed = sdk.make_spans(10, Resource.create({"service.name": "intruder", "tenant.id": "globex"}))
    try:
        assert await asyncio.to_thread(span_exporter.export, spans + orders) is SpanExportResult.SUCCESS
        assert await asyncio.to_thread(span_exporter.export, spoofed) is SpanExportResult.FAILURE
    finally:
        await asyncio.to_thread(span_exporter.shutdown)

    expected = {
        format(s.context.span_id, "016x")
        for s in spans + orders
        if not s.status.is_ok or s.attributes.get("order.amount", 0) >= 1000 or sampled_in(s.context.trace_id)
    }
    assert 40 + 20 <= len(expected) < 200  # every 5th is an error; the rest sampled at 10 %
    await upstream.wait_for(lambda: len(upstream.spans()) >= len(expected))
    await asyncio.sleep(0.2)  # nothing more may arrive
    received = upstream.spans()
    assert {span.span_id.hex() for span in received} == expected

    raw = b"".join(m.SerializeToString() for m in upstream.messages(Signal.TRACES))
    for digits in (b"4111111111111111", b"4111 1111 1111 1111", b"5555-5555-5555-4444", b"Jane Roe"):
        assert digits not in raw
    for message in upstream.messages(Signal.TRACES):
        for rs in message.resource_spans:
            resource = attrs_of(rs.resource.attributes)
            assert resource["service.name"] == "checkout"  # nothing of the spoofing resource
            assert resource["tenant.id"] == "acme"
            for ss in rs.scope_spans:
                for span in ss.spans:
                    attrs = attrs_of(span.attributes)
                    assert "payment.card.cvv" not in attrs
                    if "order.amount" in attrs:
                        continue
                    assert attrs["card.number"] == "**** **** **** 1111"
                    assert attrs["note"] == "paid with ****-****-****-4444"
                    assert attrs["cardholder_name"].startswith(HASH_PREFIX)
    registry = sidecar.metrics.registry
    drops = registry.get_sample_value(
        "otlp_sidecar_policy_rule_actions_total",
        {"signal": "traces", "rule_id": "pci.sensitive", "action": "drop"},
    )
    with_cvv = {format(s.context.span_id, "016x") for s in spans} & expected
    assert drops == len(with_cvv)  # counted on the spans forwarded (sampled-out spans are not rewritten)
    assert registry.get_sample_value("otlp_sidecar_policy_decision_cache_total", {"result": "miss"}) == 2
    # the active version on the admin port, and as a metric
    admin = sidecar.addresses["admin"][1]
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{admin}/policy") as response:
        status = await response.json()
    assert response.status == 200
    assert status["version"] == sidecar.policy.version and status["tests_passed"] >= 30
    assert status["export_headers"] == ["X-Scope-OrgID"] and status["last_reload_error"] == ""
    assert registry.get_sample_value(
        "otlp_sidecar_policy_info", {"version": status["version"], "backend": "embedded"}
    ) == 1
