"""The app's side of day one: the OpenTelemetry SDK, configured from the env the injector gave it.

Telemetry holds card numbers in the places an app puts them (span name, attributes, event,
status message, log body and attributes); the exporters are the SDK's own, chosen by the
injected OTEL_EXPORTER_OTLP_PROTOCOL and pointed at the injected OTEL_EXPORTER_OTLP_ENDPOINT.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any
from urllib.parse import urlsplit

from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as GrpcLogExporter
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetricExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpLogExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, LogRecordExportResult, SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricExportResult
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanContext, Status, StatusCode

from tests.conftest import SHARED_CORPUS

#: Luhn-valid test numbers of several brands, written as apps write them
CARDS = {
    "4111111111111111": "4111111111111111",
    "5555555555554444": "5555 5555 5555 4444",
    "4012888888881881": "4012-8888-8888-1881",
    "378282246310005": "3782 822463 10005",
    "6011111111111117": "6011111111111117",
    "5105105105105100": "5105105105105100",
}
MARKER = "day-one-payment"

#: corpus locations the SDK can place a value in
_SPAN_PLACES = {"span.attr", "span.name", "span.status.message", "span.event.attr", "span.event.name",
                "span.link.attr", "span.attr.array", "resource.attr", "scope.attr"}
_LOG_PLACES = {"log.body", "log.attr"}
_METRIC_PLACES = {"metric.sum.attr", "metric.gauge.attr", "metric.histogram.attr"}
_CORPUS_PLACES = _SPAN_PLACES | _LOG_PLACES | _METRIC_PLACES


def corpus_cases() -> list[dict[str, Any]]:
    """The shared corpus' card numbers that must be masked, where the SDK can put them (if present)."""
    path = SHARED_CORPUS / "pan_cases.json"
    if not path.exists():
        return []
    cases = json.loads(path.read_text(encoding="utf-8"))["cases"]
    return [c for c in cases if c["expect"] == "mask" and c["where"] in _CORPUS_PLACES]


def _spans(resource: Resource, corpus: list[dict[str, Any]]) -> list[Any]:
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("checkout", "1.0")
    with tracer.start_as_current_span(f"POST /pay?card={CARDS['4111111111111111']}") as span:
        span.set_attribute("day_one", MARKER)
        span.set_attribute("card_number", CARDS["5555555555554444"])
        span.set_attribute("note", f"paid with {CARDS['4012888888881881']}")
        span.set_attribute("cardholder", "Jane Doe")
        span.set_attribute("cvv", "123")
        span.add_event(f"charged {CARDS['378282246310005']}", {"pan": CARDS["6011111111111117"]})
        # an error: kept whatever the sampling ratio (the policies keep errors)
        span.set_status(Status(StatusCode.ERROR, f"declined {CARDS['5105105105105100']}"))
    providers = [provider]
    for case in corpus:
        where, value = case["where"], case["value"]
        if where not in _SPAN_PLACES:
            continue
        source = tracer
        if where == "resource.attr":
            own = TracerProvider(resource=resource.merge(Resource({"corpus.detail": value})))
            own.add_span_processor(SimpleSpanProcessor(memory))
            providers.append(own)
            source = own.get_tracer("checkout", "1.0")
        elif where == "scope.attr":
            source = provider.get_tracer("corpus", "1.0", attributes={"detail": value})
        links = []
        if where == "span.link.attr":
            linked = SpanContext(trace_id=0x5B8EFFF798038103D269B633813FC60C, span_id=0xEEE19B7EC3C1B174,
                                 is_remote=True)
            links.append(Link(linked, {"detail": value}))
        name = value if where == "span.name" else f"corpus {case['id']}"
        with source.start_as_current_span(name, links=links) as span:
            span.set_attribute("day_one", "corpus")
            if where == "span.attr":
                span.set_attribute("comment", value)
            elif where == "span.attr.array":
                span.set_attribute("comments", ["first", value])
            elif where == "span.event.attr":
                span.add_event("corpus", {"detail": value})
            elif where == "span.event.name":
                span.add_event(value)
            span.set_status(Status(StatusCode.ERROR, value if where == "span.status.message" else "corpus"))
    for each in providers:
        each.shutdown()
    return list(memory.get_finished_spans())


def _metrics(resource: Resource, corpus: list[dict[str, Any]]) -> Any:
    reader = InMemoryMetricReader()
    provider = MeterProvider(resource=resource, metric_readers=[reader])
    meter = provider.get_meter("checkout", "1.0")
    payments = meter.create_counter("payments")
    payments.add(1, {"day_one": MARKER, "card": CARDS["4012888888881881"]})
    counter, gauge = meter.create_counter("corpus.sum"), meter.create_gauge("corpus.gauge")
    histogram = meter.create_histogram("corpus.histogram")
    for case in corpus:
        attributes = {"day_one": "corpus", "detail": case["value"]}
        if case["where"] == "metric.sum.attr":
            counter.add(1, attributes)
        elif case["where"] == "metric.gauge.attr":
            gauge.set(1, attributes)
        elif case["where"] == "metric.histogram.attr":
            histogram.record(1.5, attributes)
    data = reader.get_metrics_data()
    provider.shutdown()
    return data


def _logs(resource: Resource, corpus: list[dict[str, Any]]) -> list[Any]:
    memory = InMemoryLogRecordExporter()
    provider = LoggerProvider(resource=resource)
    provider.add_log_record_processor(SimpleLogRecordProcessor(memory))
    logger = logging.getLogger(f"day_one.{id(memory)}")
    logger.propagate = False
    handler = LoggingHandler(logger_provider=provider)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.error("card %s declined", CARDS["4111111111111111"], extra={"card": CARDS["5555555555554444"],
                                                                      "day_one": MARKER})
    for case in (c for c in corpus if c["where"] in _LOG_PLACES):
        if case["where"] == "log.body":
            logger.warning("%s", case["value"], extra={"day_one": "corpus"})
        elif case["where"] == "log.attr":
            logger.warning("corpus %s", case["id"], extra={"detail": case["value"], "day_one": "corpus"})
    logger.removeHandler(handler)
    provider.shutdown()
    return list(memory.get_finished_logs())


def send(endpoint: str, protocol: str, corpus: list[dict[str, Any]]) -> None:
    """Export the app's spans, logs and metrics with the SDK's exporters for ``protocol`` (blocking)."""
    resource = Resource.create({"service.name": "checkout"})
    spans, logs, metrics = _spans(resource, corpus), _logs(resource, corpus), _metrics(resource, corpus)
    if protocol == "grpc":
        insecure = urlsplit(endpoint).scheme != "https"
        span_exporter: Any = GrpcSpanExporter(endpoint=endpoint, insecure=insecure, timeout=10)
        log_exporter: Any = GrpcLogExporter(endpoint=endpoint, insecure=insecure, timeout=10)
        metric_exporter: Any = GrpcMetricExporter(endpoint=endpoint, insecure=insecure, timeout=10)
    elif protocol == "http/protobuf":
        base = endpoint.rstrip("/")
        span_exporter = HttpSpanExporter(endpoint=f"{base}/v1/traces", timeout=10)
        log_exporter = HttpLogExporter(endpoint=f"{base}/v1/logs", timeout=10)
        metric_exporter = HttpMetricExporter(endpoint=f"{base}/v1/metrics", timeout=10)
    else:
        raise AssertionError(f"no SDK exporter for {protocol}")
    try:
        assert span_exporter.export(spans) is SpanExportResult.SUCCESS, "the app's spans were not accepted"
        assert log_exporter.export(logs) is LogRecordExportResult.SUCCESS, "the app's logs were not accepted"
        assert metric_exporter.export(metrics) is MetricExportResult.SUCCESS, "the app's metrics were not accepted"
    finally:
        for exporter in (span_exporter, log_exporter, metric_exporter):
            exporter.shutdown()


def surviving(text: str, pans: list[str]) -> list[str]:
    """The card numbers (digits) found in ``text``, with or without a space or dash between digits."""
    return [pan for pan in pans if re.search("[ -]?".join(pan), text)]
