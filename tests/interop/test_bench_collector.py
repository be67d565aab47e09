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




def _logs_and_metrics_with_cards() -> tuple[bytes, bytes]:
    """20 log records and 20 gauge points of one resource, a card number in an attribute of each
    and in every log body."""
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

    def attribute(attrs: object, key: str, value: str) -> None:
        attrs.add(key=key).value.string_value = value  # type: ignore[attr-defined]

    logs = ExportLogsServiceRequest()
    rl = logs.resource_logs.add()
    attribute(rl.resource.attributes, "service.name", "checkout")
    records = rl.scope_logs.add()
    metrics = ExportMetricsServiceRequest()
    rm = metrics.resource_metrics.add()
    attribute(rm.resource.attributes, "service.name", "checkout")
    gauge = rm.scope_metrics.add().metrics.add(name="payments.amount").gauge
    for i in range(20):
        record = records.log_records.add(time_unix_nano=1_700_000_000_000_000_000 + i)
        record.body.string_value = f"paid order {i} with {BODY_CARD}"
        attribute(record.attributes, "payment.card", ATTRIBUTE_CARD)
        point = gauge.data_points.add(time_unix_nano=1_700_000_000_000_000_000 + i, as_double=i)
        attribute(point.attributes, "payment.card", ATTRIBUTE_CARD)
    return logs.SerializeToString(), metrics.SerializeToString()


ATTRIBUTE_CARD = "4111 1111 1111 1111"
BODY_CARD = "5555555555554444"


async def test_bench_collector_logs_and_metrics_pipelines(upstream: Upstream, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The logs and metrics rows: every item arrives (neither is sampled, as in the sidecar), card
    numbers redacted in attributes and in log bodies (the redaction processor scans string bodies,
    as the sidecar does), the tenant stamped, zstd."""
    import aiohttp

    monkeypatch.setenv("OTLP_SIDECAR_PEERS_DIR", str(peer("otelcol").parent.parent))
    proc, _, http_port = await asyncio.to_thread(load.start_collector, upstream.grpc_port, str(tmp_path))
    logs, metrics = _logs_and_metrics_with_cards()
    try:
        async with aiohttp.ClientSession() as session:
            for path, body in (("/v1/logs", logs), ("/v1/metrics", metrics)):
                async with session.post(f"http://127.0.0.1:{http_port}{path}", data=body,
                                        headers={"Content-Type": "application/x-protobuf"}) as response:
                    assert response.status == 200, await response.text()
        await upstream.wait_for(lambda: len(upstream.log_records()) >= 20 and len(upstream.metrics()) >= 1,
                                timeout=20)
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(proc.wait, 15)
    assert len(upstream.log_records()) == 20
    raw = {signal_: b"".join(m.SerializeToString() for m in upstream.messages(signal_))
           for signal_ in (Signal.LOGS, Signal.METRICS)}
    for each in raw.values():
        assert ATTRIBUTE_CARD.encode() not in each and b"acme" in each
    assert BODY_CARD.encode() not in raw[Signal.LOGS] and b"with ****" in raw[Signal.LOGS]
    assert {r.encoding for r in upstream.received} == {"zstd"}
