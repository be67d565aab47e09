"""Telemetry made by the real OpenTelemetry SDK, and its real OTLP exporters.

The SDK exporters are synchronous (grpcio / requests); tests call them in a
thread so the sidecar, running on the test's event loop, can answer.
"""

from __future__ import annotations

import logging

import aiohttp
import grpc
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as GrpcLogExporter
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetricExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http import Compression as HttpCompression
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpLogExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode

RESOURCE = Resource.create({"service.name": "checkout", "deployment.environment": "test"})


def make_spans(count: int, resource: Resource = RESOURCE, attributes: dict | None = None) -> list:
    """``count`` finished spans from a real TracerProvider (every 5th one an error)."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("tests.sdk", "1.0")
    for index in range(count):
        with tracer.start_as_current_span(f"op-{index}") as span:
            span.set_attribute("index", index)
            span.set_attribute("http.route", "/pay")
            for key, value in (attributes or {}).items():
                span.set_attribute(key, value)
            span.add_event("charged", {"amount": 12.5})
            if index % 5 == 0:
                span.set_status(Status(StatusCode.ERROR, "declined"))
    provider.shutdown()
    return list(memory.get_finished_spans())


def make_metrics(resource: Resource = RESOURCE):
    """Counter, histogram and gauge data points from a real MeterProvider."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(resource=resource, metric_readers=[reader])
    meter = provider.get_meter("tests.sdk", "1.0")
    counter = meter.create_counter("orders")
    histogram = meter.create_histogram("latency", unit="ms")
    gauge = meter.create_gauge("queue.depth")
    for index in range(10):
        counter.add(1, {"route": f"/r{index % 3}"})
        histogram.record(index * 1.5, {"route": "/pay"})
    gauge.set(7, {"queue": "main"})
    data = reader.get_metrics_data()
    provider.shutdown()
    return data


def make_logs(count: int, resource: Resource = RESOURCE) -> list:
    """``count`` log records from a real LoggerProvider via the logging bridge."""
    memory = InMemoryLogRecordExporter()
    provider = LoggerProvider(resource=resource)
    provider.add_log_record_processor(SimpleLogRecordProcessor(memory))
    logger = logging.getLogger(f"tests.sdk.{id(memory)}")
    logger.propagate = False
    handler = LoggingHandler(logger_provider=provider)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    for index in range(count):
        logger.info("payment %d accepted", index, extra={"order.id": f"o-{index}"})
    logger.removeHandler(handler)
    provider.shutdown()
    return list(memory.get_finished_logs())


def exporters(transport: str, port: int, compression: str) -> tuple:
    """(span, metric, log) exporters of the SDK pointed at a sidecar."""
    if transport == "grpc":
        grpc_compression = {"none": grpc.Compression.NoCompression, "gzip": grpc.Compression.Gzip}[compression]
        endpoint = f"http://127.0.0.1:{port}"
        return (
            GrpcSpanExporter(endpoint=endpoint, insecure=True, compression=grpc_compression, timeout=10),
            GrpcMetricExporter(endpoint=endpoint, insecure=True, compression=grpc_compression, timeout=10),
            GrpcLogExporter(endpoint=endpoint, insecure=True, compression=grpc_compression, timeout=10),
        )
    http_compression = {
        "none": HttpCompression.NoCompression,
        "gzip": HttpCompression.Gzip,
        "deflate": HttpCompression.Deflate,
    }[compression]
    base = f"http://127.0.0.1:{port}"
    return (
        HttpSpanExporter(endpoint=f"{base}/v1/traces", compression=http_compression, timeout=10),
        HttpMetricExporter(endpoint=f"{base}/v1/metrics", compression=http_compression, timeout=10),
        HttpLogExporter(endpoint=f"{base}/v1/logs", compression=http_compression, timeout=10),
    )


async def post_protobuf(port: int, body: bytes, path: str = "/v1/traces") -> int:
    """POST an encoded OTLP request to a sidecar's HTTP receiver on loopback, as OTLP/HTTP clients
    do; the answer's status."""
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"http://127.0.0.1:{port}{path}", data=body, headers={"Content-Type": "application/x-protobuf"}
        ) as response:
            return response.status
