"""The admin port of a real sidecar: /health, /ready (and its upstream gate), /metrics, /policy."""

from __future__ import annotations

import asyncio

import aiohttp
from grpclib.const import Status
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

from tests import sdk
from tests.conftest import sidecar_env
from tests.upstream import Answer

BODY = encode_spans(sdk.make_spans(25)).SerializeToString()


async def get(port: int, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}{path}") as response:
        return response.status, await response.text()


async def post_traces(port: int) -> int:
    return await sdk.post_protobuf(port, BODY)


async def test_health_ready_metrics(upstream, start_sidecar) -> None:
    sidecar = await start_sidecar(sidecar_env(upstream, "grpc"))
    admin = sidecar.addresses["admin"][1]
    assert await get(admin, "/health") == (200, '{"status": "ok"}')
    status, text = await get(admin, "/ready")
    assert status == 200 and '"receivers": "up"' in text
    assert await post_traces(sidecar.addresses["http"][1]) == 200
    await upstream.wait_for(lambda: len(upstream.spans()) == 25)
    await asyncio.sleep(0.1)
    status, text = await get(admin, "/metrics")
    assert status == 200
    for line in (
        'otlp_sidecar_receiver_received_items_total{signal="traces",transport="http"} 25.0',
        'otlp_sidecar_receiver_accepted_items_total{signal="traces",transport="http"} 25.0',
        'otlp_sidecar_exporter_sent_items_total{signal="traces"} 25.0',
        "otlp_sidecar_queue_capacity_bytes",
        "otlp_sidecar_receiver_request_duration_seconds_bucket",
        "otlp_sidecar_exporter_batch_size_items_bucket",
    ):
        assert line in text, line
    status, _ = await get(admin, "/policy")
    assert status == 200


async def test_ready_reports_the_upstream_and_gates_on_it_when_asked(upstream, start_sidecar) -> None:
    upstream.default = Answer(grpc_status=Status.UNAVAILABLE)
    lenient = await start_sidecar(sidecar_env(upstream, "grpc", SIDECAR_EXPORTER_CIRCUIT_THRESHOLD="1"))
    sidecar = await start_sidecar(sidecar_env(upstream, "grpc", SIDECAR_ADMIN_READY_REQUIRES_UPSTREAM="true",
                                              SIDECAR_EXPORTER_CIRCUIT_THRESHOLD="1"))
    assert await post_traces(lenient.addresses["http"][1]) == 200
    for _ in range(3):
        assert await post_traces(sidecar.addresses["http"][1]) == 200
    admin = sidecar.addresses["admin"][1]
    for _ in range(200):
        status, text = await get(admin, "/ready")
        if status == 503:
            break
        await asyncio.sleep(0.05)
    assert status == 503 and "failing" in text
    # by default the circuit shows in the body, but the pod stays ready (data waits in the queue)
    status, text = await get(lenient.addresses["admin"][1], "/ready")
    assert status == 200 and "failing" in text
    upstream.default = Answer()
    for _ in range(200):
        status, _ = await get(admin, "/ready")
        if status == 200:
            break
        await asyncio.sleep(0.05)
    assert status == 200
