"""Nothing acknowledged is lost: real sidecars against an upstream that fails in every way.

Each scenario counts what the app was told was accepted (HTTP 200) and what arrived upstream,
by span id (unique per span); duplicates, which at-least-once delivery allows, are counted.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import pytest
from grpclib.const import Status

from tests.conftest import sidecar_env
from tests.export.app_client import App, arrived, wait_all_arrived
from tests.peers.process import free_port
from tests.processes import SidecarProcess
from tests.upstream import Answer, Upstream


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
@pytest.mark.parametrize(
    "scenario",
    ["slow", "503_then_ok", "retry_after", "resets", "flapping"],
)
async def test_acknowledged_items_arrive_despite_failures(upstream, start_sidecar, protocol, scenario) -> None:
    script = {
        "slow": [Answer(delay=0.3)] * 3,
        "503_then_ok": [Answer(http_status=503, grpc_status=Status.UNAVAILABLE)] * 4,
        "retry_after": [Answer(http_status=429, retry_after="1", grpc_status=Status.UNAVAILABLE)] * 2,
        "resets": [Answer(reset=True)] * 3,
        "flapping": [
            Answer(http_status=503, grpc_status=Status.UNAVAILABLE),
            Answer(),
            Answer(reset=True),
            Answer(),
            Answer(delay=0.2, http_status=502, grpc_status=Status.ABORTED),
        ]
        * 2,
    }[scenario]
    upstream.script = list(script)
    sidecar = await start_sidecar(sidecar_env(upstream, protocol, SIDECAR_EXPORTER_BATCH_SIZE="50"))
    app = App(sidecar.addresses["http"][1])
    await app.send(10)
    got = await wait_all_arrived(upstream, app)
    assert app.accepted <= set(got)
    assert app.refused == 0


async def test_upstream_down_at_start_then_up(start_sidecar) -> None:
    upstream = Upstream()
    grpc_port = free_port()
    upstream.grpc_port = grpc_port
    env = sidecar_env(upstream, "grpc", SIDECAR_EXPORTER_CIRCUIT_THRESHOLD="2", SIDECAR_EXPORTER_CIRCUIT_OPEN_FOR="0.2")
    sidecar = await start_sidecar(env)
    app = App(sidecar.addresses["http"][1])
    await app.send(5)
    registry = sidecar.metrics.registry
    for _ in range(100):
        if registry.get_sample_value("otlp_sidecar_exporter_circuit_state", {"signal": "logs"}) == 2:
            break
        await asyncio.sleep(0.05)
    assert registry.get_sample_value("otlp_sidecar_exporter_circuit_state", {"signal": "logs"}) == 2  # open
    await upstream.start(grpc_port=grpc_port)
    try:
        await wait_all_arrived(upstream, app)
        for _ in range(100):
            if registry.get_sample_value("otlp_sidecar_exporter_circuit_state", {"signal": "logs"}) == 0:
                break
            await asyncio.sleep(0.05)
        assert registry.get_sample_value("otlp_sidecar_exporter_circuit_state", {"signal": "logs"}) == 0  # closed again
    finally:
        await upstream.stop()


async def test_memory_stays_bounded_with_a_flapping_upstream(upstream, start_sidecar) -> None:
    """A bounded load against an upstream that stalls, fails and drops connections by turns: the
    queue never holds more than its capacity, what does not fit is refused retryably (503), and
    everything accepted arrives in the end."""
    upstream.script = [Answer(delay=0.4), Answer(grpc_status=Status.UNAVAILABLE), Answer(reset=True)] * 8
    # then it stalls until the apps are done: the queue fills however slowly the apps send
    stalled = asyncio.Event()
    upstream.default = Answer(hold=stalled)
    capacity = 256 * 1024
    sidecar = await start_sidecar(
        sidecar_env(upstream, "grpc", SIDECAR_EXPORTER_QUEUE_MAX_BYTES=str(capacity), SIDECAR_EXPORTER_BATCH_SIZE="200")
    )
    assert sidecar.queue is not None
    peak = 0

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(peak, sidecar.queue.held_bytes)  # type: ignore[union-attr]
            await asyncio.sleep(0.005)

    watcher = asyncio.create_task(watch())
    apps = [App(sidecar.addresses["http"][1]) for _ in range(4)]
    await asyncio.gather(*(app.send(15, spans=50) for app in apps))
    upstream.default = Answer()
    stalled.set()
    watcher.cancel()
    assert 0 < peak <= capacity
    assert sum(app.refused for app in apps) > 0  # the bound was reached and enforced
    accepted = set().union(*(app.accepted for app in apps))
    await upstream.wait_for(lambda: accepted <= set(arrived(upstream)), timeout=30)


async def test_kill_9_with_disk_queue_loses_nothing(tmp_path: Path) -> None:
    """`kill -9` of a real sidecar process: what it acknowledged is on disk and sent after restart."""
    grpc_port = free_port()
    upstream = Upstream()
    upstream.grpc_port = grpc_port  # nothing listens yet: the upstream is down
    env = sidecar_env(upstream, "grpc", SIDECAR_EXPORTER_DISK_QUEUE_DIR=str(tmp_path / "queue"))
    first = SidecarProcess(env)
    try:
        app = App((await first.start())["http"])
        await app.send(8)
        assert len(app.accepted) == 160
    finally:
        await first.stop(signal.SIGKILL)
    await upstream.start(grpc_port=grpc_port)
    second = SidecarProcess(env)
    try:
        await second.start()
        got = await wait_all_arrived(upstream, app, timeout=30)
        duplicates = sum(count - 1 for count in got.values())
        assert duplicates <= len(app.accepted)  # at least once, duplicates bounded
    finally:
        assert await second.stop() == 0, second.stderr
        await upstream.stop()


async def test_sigterm_with_disk_queue_keeps_what_it_could_not_send_for_the_next_start(
    upstream: Upstream, tmp_path: Path
) -> None:
    """SIGTERM while an export is in flight, then answered 503, and the next retry would come after
    the grace period: with the disk queue nothing is dropped; the batches stay on disk and leave
    after the restart."""
    upstream.default = Answer(http_status=503, grpc_status=Status.UNAVAILABLE, delay=0.5)
    env = sidecar_env(
        upstream, "grpc",
        SIDECAR_EXPORTER_DISK_QUEUE_DIR=str(tmp_path / "queue"),
        SIDECAR_EXPORTER_RETRY_INITIAL_INTERVAL="10",  # the next try is 5-10 s away: after the grace
        SIDECAR_EXPORTER_RETRY_MAX_INTERVAL="10",
        SIDECAR_EXPORTER_CIRCUIT_THRESHOLD="100",
    )
    first = SidecarProcess(env)
    try:
        app = App((await first.launch([sys.executable, "-m", "sidecar", "run", "--grace", "1"]))["http"])
        await app.send(4)
        assert len(app.accepted) == 80
        async with asyncio.timeout(10):
            while upstream.attempts == 0:  # the first export is in flight
                await asyncio.sleep(0.05)
    finally:
        assert await first.stop() == 0, first.stderr
    assert "stay in the disk queue for the next start" in first.stderr, first.stderr
    assert "dropped" not in first.stderr, first.stderr
    assert upstream.spans() == []

    upstream.default = Answer()
    second = SidecarProcess(env)
    try:
        await second.start()
        got = await wait_all_arrived(upstream, app, timeout=30)
        assert set(got) == app.accepted
    finally:
        assert await second.stop() == 0, second.stderr


async def test_a_request_larger_than_the_queue_can_ever_hold_is_refused_for_good(upstream, start_sidecar) -> None:
    """A request the export queue could not take even empty got the queue's retryable 503 ("0 of N
    bytes held"), so its client retried it for ever (a review): it is refused finally now, 413 /
    RESOURCE_EXHAUSTED without RetryInfo, its items counted as too_large; smaller ones go through."""
    import aiohttp
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    from tests import sdk

    sidecar = await start_sidecar(sidecar_env(upstream, "grpc", SIDECAR_POLICY_MODE="passthrough",
                                              SIDECAR_EXPORTER_QUEUE_MAX_BYTES="64KiB"))
    big = encode_spans(sdk.make_spans(800)).SerializeToString()
    assert len(big) > 64 * 1024
    port = sidecar.addresses["http"][1]
    headers = {"Content-Type": "application/x-protobuf"}
    async with aiohttp.ClientSession() as session:
        async with session.post(f"http://127.0.0.1:{port}/v1/traces", data=big, headers=headers) as response:
            assert response.status == 413, await response.text()
            assert "Retry-After" not in response.headers
            assert "more than the export queue can ever hold" in (await response.read()).decode(errors="replace")
        small = encode_spans(sdk.make_spans(5)).SerializeToString()
        async with session.post(f"http://127.0.0.1:{port}/v1/traces", data=small, headers=headers) as response:
            assert response.status == 200
    registry = sidecar.metrics.registry
    assert registry.get_sample_value("otlp_sidecar_receiver_refused_items_total",
                                     {"signal": "traces", "transport": "http", "reason": "too_large"}) == 800
    await upstream.wait_for(lambda: len(upstream.spans()) == 5)
