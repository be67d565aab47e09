"""Build OTLP requests with upb for the rewriter tests, and place a string where a case says."""

from __future__ import annotations

import os

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from sidecar.signals import Signal

TRACE_LOCATIONS = (
    "span.attr",
    "span.name",
    "span.status.message",
    "span.event.attr",
    "span.event.name",
    "span.link.attr",
    "resource.attr",
    "scope.attr",
    "span.attr.array",
    "span.attr.kvlist",
)
LOG_LOCATIONS = ("log.body", "log.body.kvlist", "log.attr", "log.event_name")
METRIC_LOCATIONS = (
    "metric.gauge.attr",
    "metric.sum.attr",
    "metric.histogram.attr",
    "metric.exphistogram.attr",
    "metric.summary.attr",
    "metric.exemplar.attr",
)
ALL_LOCATIONS = TRACE_LOCATIONS + LOG_LOCATIONS + METRIC_LOCATIONS


def kv(key: str, value: object) -> KeyValue:
    return KeyValue(key=key, value=anyvalue(value))


def anyvalue(value: object) -> AnyValue:
    if isinstance(value, AnyValue):
        return value
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, bytes):
        return AnyValue(bytes_value=value)
    if isinstance(value, list):
        av = AnyValue()
        av.array_value.values.extend(anyvalue(v) for v in value)
        return av
    if isinstance(value, dict):
        av = AnyValue()
        av.kvlist_value.values.extend(kv(k, v) for k, v in value.items())
        return av
    return AnyValue(string_value=str(value))


def signal_of(where: str) -> Signal:
    if where.startswith("log."):
        return Signal.LOGS
    if where.startswith("metric."):
        return Signal.METRICS
    return Signal.TRACES


def request_with(where: str, value: str):
    """A request of the right signal holding ``value`` at location ``where`` (corpus names)."""
    signal = signal_of(where)
    if signal is Signal.TRACES:
        req = ExportTraceServiceRequest()
        rs = req.resource_spans.add()
        rs.resource.attributes.append(kv("service.name", "checkout"))
        ss = rs.scope_spans.add()
        ss.scope.name = "test"
        sp = ss.spans.add(trace_id=os.urandom(16), span_id=os.urandom(8), name="op")
        if where == "span.attr":
            sp.attributes.append(kv("note", value))
        elif where == "span.name":
            sp.name = value
        elif where == "span.status.message":
            sp.status.message = value
            sp.status.code = 2
        elif where == "span.event.attr":
            sp.events.add(name="ev").attributes.append(kv("note", value))
        elif where == "span.event.name":
            sp.events.add(name=value)
        elif where == "span.link.attr":
            sp.links.add(trace_id=os.urandom(16), span_id=os.urandom(8)).attributes.append(kv("note", value))
        elif where == "resource.attr":
            rs.resource.attributes.append(kv("note", value))
        elif where == "scope.attr":
            ss.scope.attributes.append(kv("note", value))
        elif where == "span.attr.array":
            sp.attributes.append(kv("notes", ["a", value, 7]))
        elif where == "span.attr.kvlist":
            sp.attributes.append(kv("payment", {"card": {"note": value}, "n": 1}))
        else:
            raise ValueError(where)
        return signal, req
    if signal is Signal.LOGS:
        req = ExportLogsServiceRequest()
        rl = req.resource_logs.add()
        rl.resource.attributes.append(kv("service.name", "checkout"))
        lr = rl.scope_logs.add().log_records.add(severity_text="INFO")
        if where == "log.body":
            lr.body.string_value = value
        elif where == "log.body.kvlist":
            lr.body.CopyFrom(anyvalue({"event": "pay", "data": {"deep": [value]}}))
        elif where == "log.attr":
            lr.attributes.append(kv("note", value))
        elif where == "log.event_name":
            lr.event_name = value
        else:
            raise ValueError(where)
        return signal, req
    req = ExportMetricsServiceRequest()
    rm = req.resource_metrics.add()
    rm.resource.attributes.append(kv("service.name", "checkout"))
    m = rm.scope_metrics.add().metrics.add(name="payments")
    attr = kv("note", value)
    if where == "metric.gauge.attr":
        m.gauge.data_points.add(as_int=1).attributes.append(attr)
    elif where == "metric.sum.attr":
        m.sum.data_points.add(as_double=2.0).attributes.append(attr)
    elif where == "metric.histogram.attr":
        m.histogram.data_points.add(count=1, bucket_counts=[1], explicit_bounds=[]).attributes.append(attr)
    elif where == "metric.exphistogram.attr":
        m.exponential_histogram.data_points.add(count=1).attributes.append(attr)
    elif where == "metric.summary.attr":
        m.summary.data_points.add(count=1).attributes.append(attr)
    elif where == "metric.exemplar.attr":
        m.gauge.data_points.add(as_int=1).exemplars.add(as_int=1).filtered_attributes.append(attr)
    else:
        raise ValueError(where)
    return signal, req


def parse(signal: Signal, data: bytes):
    return signal.request_class.FromString(data)


def varint(value: int) -> bytes:
    """A protobuf varint, for requests built byte by byte (too large or too odd for the classes)."""
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field: its tag, its length, ``payload``."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload
