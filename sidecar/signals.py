"""The three OTLP signals and the names each transport uses for them."""

from __future__ import annotations

import enum

from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2


class Signal(enum.Enum):
    """An OTLP signal. ``value`` is the name used in config, metrics and policy input."""

    TRACES = "traces"
    METRICS = "metrics"
    LOGS = "logs"

    # a member equals itself only: hashed by identity in C rather than Enum's hash of the name in
    # Python (a signal keys several lookups on every request)
    __hash__ = object.__hash__

    @property
    def http_path(self) -> str:
        """The OTLP/HTTP path (``/v1/traces``)."""
        return f"/v1/{self.value}"

    @property
    def grpc_path(self) -> str:
        """The OTLP/gRPC method path."""
        return _GRPC_PATHS[self]

    @property
    def item_name(self) -> str:
        """What one item of the signal is called in metrics: spans, data points, log records."""
        return _ITEM_NAMES[self]

    @property
    def request_class(self) -> type:
        """The upb message class of the Export*ServiceRequest."""
        return _REQUESTS[self]

    @property
    def response_class(self) -> type:
        """The upb message class of the Export*ServiceResponse."""
        return _RESPONSES[self]


_GRPC_PATHS = {
    Signal.TRACES: "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    Signal.METRICS: "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
    Signal.LOGS: "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
}
_ITEM_NAMES = {Signal.TRACES: "spans", Signal.METRICS: "metric_points", Signal.LOGS: "log_records"}
_REQUESTS = {
    Signal.TRACES: trace_service_pb2.ExportTraceServiceRequest,
    Signal.METRICS: metrics_service_pb2.ExportMetricsServiceRequest,
    Signal.LOGS: logs_service_pb2.ExportLogsServiceRequest,
}
_RESPONSES = {
    Signal.TRACES: trace_service_pb2.ExportTraceServiceResponse,
    Signal.METRICS: metrics_service_pb2.ExportMetricsServiceResponse,
    Signal.LOGS: logs_service_pb2.ExportLogsServiceResponse,
}
BY_GRPC_PATH = {s.grpc_path: s for s in Signal}
BY_HTTP_PATH = {s.http_path: s for s in Signal}
