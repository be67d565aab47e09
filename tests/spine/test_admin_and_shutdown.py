"""The admin port (/health, /ready, /metrics, /policy) and graceful shutdown of a real process."""

from __future__ import annotations

import asyncio
import signal

import aiohttp
from grpclib.const import Status
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

from tests import sdk
from tests.conftest import sidecar_env
from tests.processes import SidecarProcess
from tests.upstream import Answer

BODY = encode_spans(sdk.make_spans(25)).SerializeToString()


async def get(port: int, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}{path}") as response:
        return response.status, await response.text()


async def post_traces(port: int) -> int:
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"http://127.0.0.1:{port}/v1/traces", data=BODY, headers={"Content-Type": "application/x-protobuf"}
        ) as response:
            return response.status


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


async def test_sigterm_flushes_accepted_items_and_exits_zero(upstream) -> None:
    """A real `otlp-sidecar run` process: what was accepted before SIGTERM reaches the upstream."""
    upstream.default = Answer(delay=0.3)  # a slow upstream, so data is still queued at SIGTERM
    sidecar = SidecarProcess(
        sidecar_env(upstream, "grpc", SIDECAR_EXPORTER_BATCH_TIMEOUT="5s", SIDECAR_EXPORTER_BATCH_SIZE="100000")
    )
    ports = await sidecar.start()
    try:
        for _ in range(4):
            assert await post_traces(ports["http"]) == 200
        assert upstream.spans() == []  # the 5 s batch timeout has not passed
    finally:
        code = await sidecar.stop(signal.SIGTERM)
    assert code == 0, sidecar.stderr
    assert "Traceback" not in sidecar.stderr
    assert len(upstream.spans()) == 100


async def test_startup_objects_are_kept_out_of_the_cyclic_collector(start_sidecar) -> None:
    """A full GC pass over everything loaded at start stalls the event loop for tens of ms."""
    import gc

    gc.unfreeze()
    await start_sidecar(sidecar_env(None))
    assert gc.get_freeze_count() > 10_000
