"""The pod settings the policies decide, through a real sidecar: the egress header reaches the
upstream, and the tenant's rate limit refuses retryably (HTTP 429 / gRPC UNAVAILABLE)."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

from sidecar.export.grpc_client import CallError, Channel, call_unary
from sidecar.signals import Signal
from tests import sdk
from tests.conftest import sidecar_env

BODY = encode_spans(sdk.make_spans(100)).SerializeToString()
PB = {"Content-Type": "application/x-protobuf"}


def with_rate_limit(policy_dir: Path, per_second: int, burst: int) -> Path:
    data_file = policy_dir / "data.json"
    data = json.loads(data_file.read_text())
    data["otlp_sidecar"]["config"]["tenant"]["rate_limits"] = {"acme": {"spans_per_second": per_second,
                                                                        "burst": burst}}
    data_file.write_text(json.dumps(data))
    return policy_dir


async def test_egress_header_reaches_the_upstream(upstream, start_sidecar, policy_dir, hash_key_file) -> None:
    env = sidecar_env(upstream, "grpc", SIDECAR_POLICY_DIR=str(policy_dir),
                      SIDECAR_POLICY_HASH_KEY_FILE=str(hash_key_file), SIDECAR_TENANT="acme")
    sidecar = await start_sidecar(env)
    async with aiohttp.ClientSession() as session:
        async with session.post(f"http://127.0.0.1:{sidecar.addresses['http'][1]}/v1/traces", data=BODY,
                                headers=PB) as response:
            assert response.status == 200
    await upstream.wait_for(lambda: len(upstream.received) >= 1)
    assert {r.headers.get("x-scope-orgid") for r in upstream.received} == {"acme"}


async def test_tenant_rate_limit_refuses_retryably(upstream, start_sidecar, policy_dir, hash_key_file) -> None:
    env = sidecar_env(upstream, "grpc", SIDECAR_POLICY_DIR=str(with_rate_limit(policy_dir, 50, 250)),
                      SIDECAR_POLICY_HASH_KEY_FILE=str(hash_key_file), SIDECAR_TENANT="acme")
    sidecar = await start_sidecar(env)
    statuses = []
    async with aiohttp.ClientSession() as session:
        for _ in range(4):
            async with session.post(f"http://127.0.0.1:{sidecar.addresses['http'][1]}/v1/traces", data=BODY,
                                    headers=PB) as response:
                statuses.append((response.status, response.headers.get("Retry-After")))
    # a burst of 250 spans takes two 100-span requests (the second leaves 50), then 50/s refills too slowly
    assert [s for s, _ in statuses[:2]] == [200, 200]
    assert statuses[3][0] == 429 and int(statuses[3][1]) >= 1
    channel = Channel("127.0.0.1", sidecar.addresses["grpc"][1])
    try:
        try:
            await call_unary(channel, Signal.TRACES.grpc_path, BODY, timeout=5)
            outcome = "OK"
        except CallError as exc:
            outcome = exc.status.name
    finally:
        channel.close()
    assert outcome == "UNAVAILABLE"  # retryable: the SDK tries again later, nothing is lost
    labels = {"signal": "traces", "transport": "http", "reason": "rate_limited"}
    refused = sidecar.metrics.registry.get_sample_value("otlp_sidecar_receiver_refused_items_total", labels)
    assert refused is not None and refused >= 100


def two_tenants_request() -> bytes:
    """One resource of the pod's tenant (3 spans) and one claiming another tenant (2 spans)."""
    from opentelemetry.sdk.resources import Resource

    own = encode_spans(sdk.make_spans(3, Resource.create({"service.name": "checkout"})))
    spoofed = encode_spans(sdk.make_spans(2, Resource.create({"service.name": "x", "tenant.id": "globex"})))
    return own.SerializeToString() + spoofed.SerializeToString()  # concatenated requests are one request


async def test_partly_refused_request_answers_partial_success(upstream, start_sidecar, policy_dir,
                                                               hash_key_file) -> None:
    env = sidecar_env(upstream, "grpc", SIDECAR_POLICY_DIR=str(policy_dir),
                      SIDECAR_POLICY_HASH_KEY_FILE=str(hash_key_file), SIDECAR_TENANT="acme")
    sidecar = await start_sidecar(env)
    body = two_tenants_request()
    async with aiohttp.ClientSession() as session:
        async with session.post(f"http://127.0.0.1:{sidecar.addresses['http'][1]}/v1/traces", data=body,
                                headers=PB) as response:
            assert response.status == 200
            answer = Signal.TRACES.response_class.FromString(await response.read())
    assert answer.partial_success.rejected_spans == 2
    assert "globex" in answer.partial_success.error_message
    channel = Channel("127.0.0.1", sidecar.addresses["grpc"][1])
    try:
        reply = await call_unary(channel, Signal.TRACES.grpc_path, body, timeout=5)
    finally:
        channel.close()
    assert Signal.TRACES.response_class.FromString(reply).partial_success.rejected_spans == 2
    await upstream.wait_for(lambda: len(upstream.spans()) >= 2)
    assert all(r.message.resource_spans[0].resource.attributes for r in upstream.received)
    tenants = {kv.value.string_value for r in upstream.received for rs in r.message.resource_spans
               for kv in rs.resource.attributes if kv.key == "tenant.id"}
    assert tenants == {"acme"}  # nothing of the spoofing resource went upstream
