"""Fields OTLP does not define never reach the upstream: the real Collector still turns the
deprecated field 1000 of a ResourceSpans / ResourceLogs / ResourceMetrics (what OTLP called
instrumentation_library_spans, ...) into spans, log records and data points when the resource has
no others. The rewriter copies the fields it does not walk as they are, so items put there went
to the Collector unscanned, card numbers and all (found by a review). The sidecar now drops every
field OTLP does not define before export, counts it, and says so once in its log.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.metrics.v1.metrics_pb2 import Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from sidecar.rewrite._wire import encode_varint
from sidecar.signals import Signal
from tests.interop.harness import Collector, free_port, sidecar_metric, start_sidecar, upstream_collector_config
from tests.upstream import Upstream

pytestmark = pytest.mark.timeout(90)

CARD, OTHER_CARD = "4111111111111111", "5555555555554444"
SMUGGLED, PLAIN = "smuggled", "plain"


def length_delimited(number: int, payload: bytes) -> bytes:
    return encode_varint(number << 3 | 2) + encode_varint(len(payload)) + payload


def note(value: str) -> list[KeyValue]:
    return [KeyValue(key="note", value=AnyValue(string_value=value))]


def scope_of(signal: Signal, name: str) -> bytes:
    """A ScopeSpans / ScopeLogs / ScopeMetrics with one item called ``name`` (kept by the bundled
    policies: a span with an error status), a card number in its name and in an attribute when
    it is the smuggled one."""
    text = f"{name} {CARD}" if name == SMUGGLED else name
    attributes = note(f"card {OTHER_CARD}" if name == SMUGGLED else "nothing")
    if signal is Signal.TRACES:
        span = Span(trace_id=b"\x01" * 16, span_id=b"\x02" * 8, name=text, attributes=attributes,
                    start_time_unix_nano=1, end_time_unix_nano=2, status=Status(code=Status.STATUS_CODE_ERROR))
        return ScopeSpans(spans=[span]).SerializeToString()
    if signal is Signal.LOGS:
        record = LogRecord(time_unix_nano=1, body=AnyValue(string_value=text), attributes=attributes)
        return ScopeLogs(log_records=[record]).SerializeToString()
    point = NumberDataPoint(time_unix_nano=1, as_int=7, attributes=attributes)
    metric = Metric(name=text.replace(" ", "_"), gauge=Gauge(data_points=[point]))
    return ScopeMetrics(metrics=[metric]).SerializeToString()


def request_with_field_1000(signal: Signal) -> bytes:
    """A resource whose only items are in field 1000, and a resource with one ordinary item."""
    resource_class = {Signal.TRACES: ResourceSpans, Signal.LOGS: ResourceLogs, Signal.METRICS: ResourceMetrics}[signal]
    smuggler = resource_class().SerializeToString() + length_delimited(1000, scope_of(signal, SMUGGLED))
    plain = resource_class().SerializeToString() + length_delimited(2, scope_of(signal, PLAIN))
    # and a field no version of OTLP defines, on the request itself
    return (length_delimited(1, smuggler) + length_delimited(1, plain)
            + length_delimited(77, f"made up {CARD}".encode()))


@pytest.mark.parametrize("signal", list(Signal), ids=[s.value for s in Signal])
async def test_items_in_a_field_otlp_does_not_define_never_reach_the_collector(
    upstream: Upstream, hash_key_file: Path, tmp_path: Path, signal: Signal,
) -> None:
    grpc_port, http_port = free_port(), free_port()
    collector = Collector(upstream_collector_config(upstream.http_port, grpc_port=grpc_port, http_port=http_port),
                          tmp_path)
    await collector.start()
    sidecar = await start_sidecar(hash_key_file, {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{grpc_port}",
                                                  "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
    try:
        url = f"http://127.0.0.1:{sidecar.ports['http']}/v1/{signal.value}"
        async with aiohttp.ClientSession() as session, session.post(
            url, data=request_with_field_1000(signal), headers={"Content-Type": "application/x-protobuf"},
        ) as response:
            assert response.status == 200, await response.text()
        await upstream.wait_for(lambda: bool(upstream.messages(signal)), 20)
        dropped = await sidecar_metric(sidecar, "otlp_sidecar_processor_unknown_fields_dropped_total",
                                       signal=signal.value)
    finally:
        await sidecar.stop()
        await collector.stop()
    raw = b"".join(message.SerializeToString() for message in upstream.messages(signal))
    assert PLAIN.encode() in raw  # the ordinary item went through the Collector
    assert SMUGGLED.encode() not in raw and CARD.encode() not in raw and OTHER_CARD.encode() not in raw
    assert dropped == 2  # field 1000 of the first resource, field 77 of the request
    assert "dropped 2 field(s) OTLP does not define" in sidecar.stderr
    assert "field 1000 (wire type 2) of Resource" in sidecar.stderr
    assert CARD not in sidecar.stderr and OTHER_CARD not in sidecar.stderr
