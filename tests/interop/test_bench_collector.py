"""The bench's Collector row does the sidecar's job: card numbers redacted, tenant stamped,
about 10 % of the traces kept, zstd upstream (checked here so the row compares like with like)."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.export import SpanExportResult

from bench import load
from sidecar.signals import Signal
from tests import sdk
from tests.interop.harness import CARD_BYTES, SPAN_ATTRIBUTES, Delivery
from tests.peers import peer
from tests.upstream import Upstream

pytestmark = pytest.mark.timeout(90)


async def test_bench_collector_redacts_stamps_and_samples(upstream: Upstream, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTLP_SIDECAR_PEERS_DIR", str(peer("otelcol").parent.parent))
    proc, grpc_port, _ = await asyncio.to_thread(load.start_collector, upstream.grpc_port, str(tmp_path))
    try:
        exporter, _, _ = sdk.exporters("grpc", grpc_port, "none")
        spans = sdk.make_spans(1000, Resource.create({"service.name": "checkout"}), SPAN_ATTRIBUTES)
        try:
            assert await asyncio.to_thread(exporter.export, spans) is SpanExportResult.SUCCESS
        finally:
            await asyncio.to_thread(exporter.shutdown)
        await upstream.wait_for(lambda: len(upstream.spans()) >= 50, timeout=20)
        await asyncio.sleep(1.5)  # the batch processor's timeout: the rest arrives
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(proc.wait, 15)
    delivery = Delivery.of_requests(upstream.messages(Signal.TRACES))
    assert 50 <= len(delivery.span_ids) <= 160 and delivery.duplicates() == 0  # 10 % of 1000, by trace id
    for digits in CARD_BYTES:
        assert digits not in delivery.raw
    assert all(r.get("tenant.id") == "acme" for r in delivery.resources())
    assert {r.encoding for r in upstream.received} == {"zstd"}
    assert proc.returncode == 0 or proc.returncode == -signal.SIGTERM


