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
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpLogExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, LogRecordExportResult, SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode

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
_CORPUS_PLACES = {"span.attr", "span.name", "span.status.message", "span.event.attr", "span.event.name",
                  "log.body", "log.attr"}


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
    for case in corpus:
        where, value = case["where"], case["value"]
        name = value if where == "span.name" else f"corpus {case['id']}"
        with tracer.start_as_current_span(name) as span:
            span.set_attribute("day_one", "corpus")
            if where == "span.attr":
                span.set_attribute("comment", value)
            elif where == "span.event.attr":
                span.add_event("corpus", {"detail": value})
            elif where == "span.event.name":
                span.add_event(value)
            span.set_status(Status(StatusCode.ERROR, value if where == "span.status.message" else "corpus"))
    provider.shutdown()
    return list(memory.get_finished_spans())


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
    for case in corpus:
        if case["where"] == "log.body":
            logger.warning("%s", case["value"], extra={"day_one": "corpus"})
        elif case["where"] == "log.attr":
            logger.warning("corpus %s", case["id"], extra={"detail": case["value"], "day_one": "corpus"})
    logger.removeHandler(handler)
    provider.shutdown()
    return list(memory.get_finished_logs())


def send(endpoint: str, protocol: str, corpus: list[dict[str, Any]]) -> None:
    """Export the app's spans and logs with the SDK's exporter for ``protocol`` (blocking)."""
    resource = Resource.create({"service.name": "checkout"})
    spans, logs = _spans(resource, corpus), _logs(resource, corpus)
    if protocol == "grpc":
        parts = urlsplit(endpoint)
        span_exporter: Any = GrpcSpanExporter(endpoint=endpoint, insecure=parts.scheme != "https", timeout=10)
        log_exporter: Any = GrpcLogExporter(endpoint=endpoint, insecure=parts.scheme != "https", timeout=10)
    elif protocol == "http/protobuf":
        span_exporter = HttpSpanExporter(endpoint=f"{endpoint.rstrip('/')}/v1/traces", timeout=10)
        log_exporter = HttpLogExporter(endpoint=f"{endpoint.rstrip('/')}/v1/logs", timeout=10)
    else:
        raise AssertionError(f"no SDK exporter for {protocol}")
    try:
        assert span_exporter.export(spans) is SpanExportResult.SUCCESS, "the app's spans were not accepted"
        assert log_exporter.export(logs) is LogRecordExportResult.SUCCESS, "the app's logs were not accepted"
    finally:
        span_exporter.shutdown()
        log_exporter.shutdown()


def surviving(text: str, pans: list[str]) -> list[str]:
    """The card numbers (digits) found in ``text``, with or without a space or dash between digits."""
    return [pan for pan in pans if re.search("[ -]?".join(pan), text)]
