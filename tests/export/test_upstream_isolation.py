"""Signals sent to different upstreams do not hold each other up.

A user who sends logs to one backend and traces and metrics to another (the standard
``OTEL_EXPORTER_OTLP_LOGS_ENDPOINT`` beside ``OTEL_EXPORTER_OTLP_ENDPOINT``) expects a logs
backend that is down to cost the logs, not the traces. A real sidecar, configured by those
variables, exports to two test upstreams; the logs one answers 503 to everything, then recovers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from grpclib.const import Status
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs

from sidecar.export.lanes import lanes_of
from sidecar.signals import Signal
from tests import sdk
from tests.conftest import sidecar_env
from tests.export.app_client import App, wait_all_arrived
from tests.operator import wait_ready
from tests.upstream import Answer, Upstream

PB = {"Content-Type": "application/x-protobuf"}
LOGS_PER_REQUEST = 20


async def post_logs(port: int, records: int = LOGS_PER_REQUEST) -> tuple[int, str]:
    """One OTLP/HTTP logs request of the SDK's records: (status, body)."""
    body = encode_logs(sdk.make_logs(records)).SerializeToString()
    async with aiohttp.ClientSession() as session, session.post(
        f"http://127.0.0.1:{port}/v1/logs", data=body, headers=PB
    ) as response:
        # the body is a google.rpc.Status (protobuf): its message is readable text inside it
        return response.status, (await response.read()).decode("utf-8", "replace")


@pytest.fixture
async def logs_backend() -> AsyncIterator[Upstream]:
    backend = Upstream()
    await backend.start()
    yield backend
    await backend.stop()


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
async def test_a_logs_backend_down_does_not_hold_up_traces_and_nothing_is_lost(
    upstream: Upstream, logs_backend: Upstream, start_sidecar, protocol: str
) -> None:
    logs_backend.default = Answer(http_status=503, grpc_status=Status.UNAVAILABLE)
    port = logs_backend.grpc_port if protocol == "grpc" else logs_backend.http_port
    logs_url = f"http://127.0.0.1:{port}" + ("" if protocol == "grpc" else "/v1/logs")
    env = sidecar_env(
        upstream, protocol,
        OTEL_EXPORTER_OTLP_LOGS_ENDPOINT=logs_url,
        SIDECAR_EXPORTER_CIRCUIT_THRESHOLD="2",
        SIDECAR_EXPORTER_CIRCUIT_OPEN_FOR="0.2",
        SIDECAR_EXPORTER_CIRCUIT_MAX_OPEN_FOR="0.5",
        SIDECAR_EXPORTER_QUEUE_MAX_BYTES="64KiB",
        SIDECAR_EXPORTER_BATCH_SIZE="20",
    )
    sidecar = await start_sidecar(env)
    registry = sidecar.metrics.registry
    http_port, admin = sidecar.addresses["http"][1], sidecar.addresses["admin"][1]

    def circuit(signal: str) -> float | None:
        return registry.get_sample_value("otlp_sidecar_exporter_circuit_state", {"signal": signal})

    # the logs are accepted until the share of the queue their upstream may hold is full
    accepted_logs = 0
    refusal = ""
    for _ in range(200):
        status, text = await post_logs(http_port)
        if status != 200:
            assert status == 503, (status, text)  # retryable: the app's SDK sends them again
            refusal = text
            break
        accepted_logs += LOGS_PER_REQUEST
    assert accepted_logs > 0 and refusal, "the logs' share of the queue never filled"
    assert "export queue is full for logs" in refusal, refusal
    status, body = await wait_ready(admin, lambda b: b["exporter_circuit"] == "open")
    assert body["exporter_circuits"] == {"traces+metrics": "closed", "logs": "open"}, body
    assert f"127.0.0.1:{port}" in str(body["exporter"]) and "exporter.logs_endpoint" in str(body["exporter"]), body
    assert (circuit("logs"), circuit("traces"), circuit("metrics")) == (2, 0, 0)

    # traces meanwhile: every request accepted, every span delivered while the logs' circuit is open
    app = App(http_port)
    await app.send(10)
    assert app.refused == 0 and len(app.accepted) == 200
    await wait_all_arrived(upstream, app, timeout=10.0)
    assert circuit("logs") in (1, 2)  # still failing (half-open between probes)
    assert upstream.log_records() == []  # nothing of the logs went to the other upstream

    # the logs backend recovers: every log record accepted arrives, once
    logs_backend.default = Answer()
    await logs_backend.wait_for(lambda: len(logs_backend.log_records()) >= accepted_logs, timeout=20.0)
    assert len(logs_backend.log_records()) == accepted_logs
    assert registry.get_sample_value(
        "otlp_sidecar_exporter_failed_items_total", {"signal": "logs", "reason": "http_503"}
    ) in (None, 0)
    await wait_ready(admin, lambda b: b["exporter"] == "ok" and b["exporter_circuit"] == "closed")


async def test_with_the_disk_queue_a_logs_backend_down_fills_only_the_logs_part_of_the_disk(
    upstream: Upstream, logs_backend: Upstream, start_sidecar, tmp_path: Path
) -> None:
    """With ``exporter.disk_queue_dir`` the logs beyond what memory holds go to disk, in a log of
    their own: traces go on through more than the whole disk budget while the logs' part is full.
    The user then sends the logs to the collector too and restarts: the logs held on disk arrive
    there, and the logs' old directory is removed once drained."""
    logs_backend.default = Answer(http_status=503)
    queue_dir = tmp_path / "queue"
    disk = {
        "SIDECAR_EXPORTER_DISK_QUEUE_DIR": str(queue_dir),
        "SIDECAR_EXPORTER_DISK_QUEUE_MAX_BYTES": "1MiB",
        "SIDECAR_EXPORTER_DISK_QUEUE_SEGMENT_BYTES": "64KiB",
        "SIDECAR_EXPORTER_QUEUE_MAX_BYTES": "64KiB",
        "SIDECAR_EXPORTER_BATCH_SIZE": "200",
    }
    env = sidecar_env(upstream, "http/protobuf", **disk,
                      OTEL_EXPORTER_OTLP_LOGS_ENDPOINT=f"http://127.0.0.1:{logs_backend.http_port}/v1/logs")
    sidecar = await start_sidecar(env)
    http_port = sidecar.addresses["http"][1]

    accepted_logs, refusal = 0, ""
    for _ in range(400):
        status, text = await post_logs(http_port, records=100)
        if status != 200:
            assert status == 503, (status, text)
            refusal = text
            break
        accepted_logs += 100
    assert "disk queue is full for logs" in refusal, refusal
    logs_dir = queue_dir / "upstream-logs"
    assert sum(f.stat().st_size for f in logs_dir.glob("segment-*.log")) > (1 << 20) // 2

    app = App(http_port)
    await app.send(40, spans=100)  # more than the disk budget of spans, written and sent
    assert app.refused == 0 and len(app.accepted) == 4000
    await wait_all_arrived(upstream, app, timeout=20.0)
    traces_dir = queue_dir / "upstream-traces+metrics"
    assert 1 <= len(list(traces_dir.glob("segment-*.log"))) <= 2  # the sent segments are deleted
    assert upstream.log_records() == [] and logs_backend.log_records() == []
    await sidecar.stop(grace=0.5)  # the logs' backend still down: they stay on disk

    # the user sends the logs to the collector too: one upstream, the directory's own log
    restarted = await start_sidecar(sidecar_env(upstream, "http/protobuf", **disk))
    await upstream.wait_for(lambda: len(upstream.log_records()) >= accepted_logs, timeout=20.0)
    assert len(upstream.log_records()) == accepted_logs
    await wait_ready(restarted.addresses["admin"][1], lambda b: b["exporter"] == "ok")
    assert not logs_dir.exists() and not traces_dir.exists(), sorted(queue_dir.rglob("*"))
    assert restarted.metrics.registry.get_sample_value("otlp_sidecar_disk_queue_replayed_records_total") > 0


async def test_with_the_disk_queue_logs_sent_a_record_a_request_to_a_backend_down_leave_traces_their_count(
    upstream: Upstream, logs_backend: Upstream, start_sidecar, tmp_path: Path
) -> None:
    """Each request the disk queue holds keeps its bookkeeping in memory, so the queue keeps track
    of a quarter of ``exporter.queue_max_bytes`` of them (1,365 at 1 MiB). An app that sends each
    log record alone (a simple log processor) while the logs' backend is down: before, its requests
    took all 1,365 and every trace was refused (503) as well, though the traces' collector was up
    and the disk had room. Now each upstream keeps a reserve of that count, as of the bytes."""
    logs_backend.default = Answer(http_status=503)
    env = sidecar_env(
        upstream, "http/protobuf",
        SIDECAR_EXPORTER_DISK_QUEUE_DIR=str(tmp_path / "queue"),
        SIDECAR_EXPORTER_QUEUE_MAX_BYTES="1MiB",
        OTEL_EXPORTER_OTLP_LOGS_ENDPOINT=f"http://127.0.0.1:{logs_backend.http_port}/v1/logs",
    )
    sidecar = await start_sidecar(env)
    http_port = sidecar.addresses["http"][1]
    body = encode_logs(sdk.make_logs(1)).SerializeToString()
    statuses: list[int] = []
    refusals: list[str] = []
    async with aiohttp.ClientSession() as session:

        async def post_one() -> None:
            async with session.post(f"http://127.0.0.1:{http_port}/v1/logs", data=body, headers=PB) as response:
                statuses.append(response.status)
                if response.status != 200:
                    refusals.append((await response.read()).decode("utf-8", "replace"))

        for _ in range(40):  # 50 at a time: they wait for the disk together, each counted at once
            await asyncio.gather(*(post_one() for _ in range(50)))
            if refusals:
                break
    assert statuses.count(200) == 1365 - 1365 // 4, (statuses.count(200), refusals[:1])
    assert set(statuses) == {200, 503}
    assert "holds 1024 requests for logs" in refusals[0] and "send larger batches" in refusals[0], refusals[0]

    app = App(http_port)
    await app.send(300, spans=1)  # one span a request too: within the traces' reserve of 341
    assert app.refused == 0 and len(app.accepted) == 300
    await wait_all_arrived(upstream, app, timeout=20.0)
    assert logs_backend.log_records() == []


def test_signals_share_a_lane_when_they_share_an_endpoint_and_its_settings() -> None:
    """One lane per endpoint: signals on the exporter's endpoint share it (whatever their default
    paths, a default port written out or not); an endpoint or settings of a signal's own is a lane
    of its own (a wrong logs path or logs API key must not open the traces' circuit)."""
    from sidecar import config as config_mod

    def lanes(endpoint: str = "http://collector:4318", **env: str) -> list[list[str]]:
        cfg = config_mod.load(None, env={"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, **env})
        return [[s.value for s in Signal if s in lane] for lane in lanes_of(cfg.exporter_for)]

    every, apart = [["traces", "metrics", "logs"]], [["traces", "metrics"], ["logs"]]
    assert lanes() == every
    assert lanes(OTEL_EXPORTER_OTLP_LOGS_ENDPOINT="http://logs:4318/v1/logs") == apart
    assert lanes(OTEL_EXPORTER_OTLP_LOGS_ENDPOINT="http://collector:4318/v1/logz") == apart  # a typo: its own
    assert lanes(OTEL_EXPORTER_OTLP_LOGS_HEADERS="x-api-key=logs-key") == apart  # its own credentials
    # gRPC: a signal's endpoint that is the exporter's, the default port written out, is the same
    grpc = {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    assert lanes("https://collector", **grpc, OTEL_EXPORTER_OTLP_LOGS_ENDPOINT="https://COLLECTOR:443") == every
    assert lanes("http://collector:4317", **grpc, OTEL_EXPORTER_OTLP_LOGS_ENDPOINT="http://collector") == every
    assert lanes("http://collector:4317", **grpc, OTEL_EXPORTER_OTLP_LOGS_ENDPOINT="http://loki:4317") == apart
