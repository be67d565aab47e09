"""End to end: the OpenTelemetry SDK's OTLP exporters -> a real sidecar -> an upstream the test runs.

Every item must arrive, equal after parsing to what the SDK itself encodes, for
both inbound transports, each inbound compression, and both upstream protocols
with each upstream compression.
"""

from __future__ import annotations

import asyncio

import pytest
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk._logs.export import LogRecordExportResult
from opentelemetry.sdk.metrics.export import MetricExportResult
from opentelemetry.sdk.trace.export import SpanExportResult

from sidecar.signals import Signal
from tests import sdk
from tests.conftest import sidecar_env

INBOUND = [("grpc", "none"), ("grpc", "gzip"), ("http", "none"), ("http", "gzip"), ("http", "deflate")]


def flatten(signal: Signal, messages: list) -> list[bytes]:
    """Every item with its resource and scope, serialized, sorted: equal iff the same data arrived."""
    out = []
    for message in messages:
        if signal is Signal.TRACES:
            for rs in message.resource_spans:
                for ss in rs.scope_spans:
                    out += [
                        rs.resource.SerializeToString()
                        + ss.scope.SerializeToString()
                        + s.SerializeToString(deterministic=True)
                        for s in ss.spans
                    ]
        elif signal is Signal.LOGS:
            for rl in message.resource_logs:
                for sl in rl.scope_logs:
                    out += [
                        rl.resource.SerializeToString()
                        + sl.scope.SerializeToString()
                        + r.SerializeToString(deterministic=True)
                        for r in sl.log_records
                    ]
        else:
            for rm in message.resource_metrics:
                for sm in rm.scope_metrics:
                    out += [
                        rm.resource.SerializeToString()
                        + sm.scope.SerializeToString()
                        + m.SerializeToString(deterministic=True)
                        for m in sm.metrics
                    ]
    return sorted(out)


async def send_all_signals(transport: str, port: int, compression: str) -> tuple[list, object, list]:
    span_exporter, metric_exporter, log_exporter = sdk.exporters(transport, port, compression)
    spans, metrics, logs = sdk.make_spans(40), sdk.make_metrics(), sdk.make_logs(15)
    try:
        assert await asyncio.to_thread(span_exporter.export, spans) is SpanExportResult.SUCCESS
        assert await asyncio.to_thread(metric_exporter.export, metrics) is MetricExportResult.SUCCESS
        assert await asyncio.to_thread(log_exporter.export, logs) is LogRecordExportResult.SUCCESS
    finally:
        for exporter in (span_exporter, metric_exporter, log_exporter):
            await asyncio.to_thread(exporter.shutdown)
    return spans, metrics, logs


async def assert_all_arrived(upstream, spans, metrics, logs) -> None:
    expected = {
        Signal.TRACES: flatten(Signal.TRACES, [encode_spans(spans)]),
        Signal.METRICS: flatten(Signal.METRICS, [encode_metrics(metrics)]),
        Signal.LOGS: flatten(Signal.LOGS, [encode_logs(logs)]),
    }
    await upstream.wait_for(lambda: all(len(flatten(s, upstream.messages(s))) >= len(expected[s]) for s in Signal))
    for signal in Signal:
        assert flatten(signal, upstream.messages(signal)) == expected[signal], signal


@pytest.mark.parametrize(("transport", "compression"), INBOUND, ids=[f"{t}-{c}" for t, c in INBOUND])
@pytest.mark.parametrize("upstream_protocol", ["grpc", "http/protobuf"])
async def test_sdk_items_arrive_upstream_unchanged(
    upstream, start_sidecar, transport, compression, upstream_protocol
) -> None:
    sidecar = await start_sidecar(sidecar_env(upstream, upstream_protocol))
    spans, metrics, logs = await send_all_signals(transport, sidecar.addresses[transport][1], compression)
    await assert_all_arrived(upstream, spans, metrics, logs)
    assert {r.transport for r in upstream.received} == {upstream_protocol.split("/")[0]}
    accepted = sidecar.metrics.registry.get_sample_value(
        "otlp_sidecar_receiver_accepted_items_total", {"signal": "traces", "transport": transport}
    )
    assert accepted == 40


@pytest.mark.parametrize("upstream_compression", ["none", "gzip", "zstd"])
@pytest.mark.parametrize("upstream_protocol", ["grpc", "http/protobuf"])
async def test_upstream_compression(upstream, start_sidecar, upstream_protocol, upstream_compression) -> None:
    env = sidecar_env(upstream, upstream_protocol, OTEL_EXPORTER_OTLP_COMPRESSION=upstream_compression)
    sidecar = await start_sidecar(env)
    spans, metrics, logs = await send_all_signals("http", sidecar.addresses["http"][1], "none")
    await assert_all_arrived(upstream, spans, metrics, logs)
    expected = "identity" if upstream_compression == "none" else upstream_compression
    assert {r.encoding for r in upstream.received} == {expected}


async def test_export_headers_reach_upstream(upstream, start_sidecar) -> None:
    env = sidecar_env(upstream, "grpc", OTEL_EXPORTER_OTLP_HEADERS="x-scope-orgid=acme,authorization=Bearer%20t0k")
    sidecar = await start_sidecar(env)
    spans, metrics, logs = await send_all_signals("grpc", sidecar.addresses["grpc"][1], "none")
    await assert_all_arrived(upstream, spans, metrics, logs)
    for received in upstream.received:
        assert received.headers.get("x-scope-orgid") == "acme"
        assert received.headers.get("authorization") == "Bearer t0k"


async def test_batches_merge_many_requests(upstream, start_sidecar) -> None:
    """Many small requests leave as fewer, larger export requests (wire-level merge)."""
    env = sidecar_env(upstream, "grpc", SIDECAR_EXPORTER_BATCH_TIMEOUT="0.5")
    sidecar = await start_sidecar(env)
    span_exporter, _, _ = sdk.exporters("http", sidecar.addresses["http"][1], "none")
    batches = [sdk.make_spans(5) for _ in range(12)]
    for spans in batches:
        assert await asyncio.to_thread(span_exporter.export, spans) is SpanExportResult.SUCCESS
    await asyncio.to_thread(span_exporter.shutdown)
    await upstream.wait_for(lambda: len(upstream.spans()) >= 60)
    assert len(upstream.spans()) == 60
    assert len(upstream.messages(Signal.TRACES)) < 12


async def test_per_signal_upstream_settings(upstream, start_sidecar) -> None:
    """OTEL_EXPORTER_OTLP_LOGS_* apply to logs only; the other signals keep the general settings."""
    env = sidecar_env(upstream, "grpc", OTEL_EXPORTER_OTLP_LOGS_HEADERS="x-pipeline=logs",
                      OTEL_EXPORTER_OTLP_LOGS_COMPRESSION="gzip", OTEL_EXPORTER_OTLP_HEADERS="x-pipeline=main")
    sidecar = await start_sidecar(env)
    spans, metrics, logs = await send_all_signals("http", sidecar.addresses["http"][1], "none")
    await assert_all_arrived(upstream, spans, metrics, logs)
    for received in upstream.received:
        expected = ("logs", "gzip") if received.signal is Signal.LOGS else ("main", "zstd")
        assert (received.headers.get("x-pipeline"), received.encoding) == expected
