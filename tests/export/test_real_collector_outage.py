"""The real Collector upstream killed (SIGKILL) and restarted while the sidecar holds acknowledged
spans: they arrive once it is back, none lost, duplicates counted (none expected here).

The upstream Collector runs without a sending queue, so its acknowledgement means it has handed
the spans on to the recording upstream: a kill loses nothing it had acknowledged.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from sidecar.signals import Signal
from tests.interop.harness import (
    Collector,
    Delivery,
    check_delivery,
    free_port,
    send_spans,
    sidecar_metric,
    start_sidecar,
    upstream_collector_config,
)
from tests.upstream import Upstream

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    """The PCI policy's hash key."""
    path = tmp_path / "hash.key"
    path.write_bytes(b"0123456789abcdef0123456789abcdef\n")
    return path


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
async def test_collector_killed_and_restarted(
    upstream: Upstream, key_file: Path, tmp_path: Path, protocol: str,
) -> None:
    grpc_port, http_port = free_port(), free_port()

    def collector() -> Collector:
        return Collector(upstream_collector_config(upstream.http_port, grpc_port=grpc_port, http_port=http_port),
                         tmp_path)

    first = collector()
    await first.start()
    port = grpc_port if protocol == "grpc" else http_port
    sidecar = await start_sidecar(key_file, {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}", "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
        "SIDECAR_EXPORTER_RETRY_MAX_ELAPSED": "60", "SIDECAR_EXPORTER_CIRCUIT_OPEN_FOR": "0.2",
        "SIDECAR_EXPORTER_CIRCUIT_MAX_OPEN_FOR": "0.5",
    })
    second: Collector | None = None
    try:
        before = await send_spans(sidecar.ports["grpc"])
        await upstream.wait_for(lambda: len(upstream.spans()) >= len(before), timeout=20)
        # and the sidecar has had the Collector's answer: a kill before it would make the sidecar
        # send those again (a duplicate, not a loss)
        for _ in range(100):
            if await sidecar_metric(sidecar, "otlp_sidecar_exporter_sent_items_total") >= len(before):
                break
            await asyncio.sleep(0.05)
        assert first.proc is not None
        first.proc.send_signal(signal.SIGKILL)
        await first.proc.wait()
        during = await send_spans(sidecar.ports["grpc"])  # acknowledged by the sidecar, upstream down
        for _ in range(200):  # the sidecar tries, fails and retries
            if await sidecar_metric(sidecar, "otlp_sidecar_exporter_retries_total") > 0:
                break
            await asyncio.sleep(0.05)
        assert await sidecar_metric(sidecar, "otlp_sidecar_exporter_retries_total") > 0
        assert len(upstream.spans()) == len(before)  # nothing could get through
        second = collector()
        await second.start()
        await upstream.wait_for(lambda: len(upstream.spans()) >= len(before | during), timeout=60)
        await asyncio.sleep(0.5)
        delivery = Delivery.of_requests(upstream.messages(Signal.TRACES))
        check_delivery(delivery, before | during, header_attribute=True)
        assert await sidecar_metric(sidecar, "otlp_sidecar_exporter_failed_items_total") == 0
    finally:
        await sidecar.stop()
        await first.stop()
        if second is not None:
            await second.stop()
