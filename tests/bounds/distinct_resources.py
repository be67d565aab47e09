"""Requests of many distinct resources, each a plan-cache miss carrying a card number; an OTLP/HTTP
client on one keep-alive connection that honours Retry-After; and the check that every resource
arrived upstream masked."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from sidecar.signals import Signal
from tests.bounds.harness import BoundedSidecar

#: a test card number (Visa test range) and how it may appear in clear
CARD = "4111 1111 1111 1111"
CARD_DIGITS = "4111111111111111"


def traces(names: list[str]) -> bytes:
    """One ResourceSpans per name (``service.name``), each with one failed span (so the shipped
    set's sampling keeps it) holding a card number."""
    request = trace_service_pb2.ExportTraceServiceRequest()
    for index, name in enumerate(names):
        resource_spans = request.resource_spans.add()
        resource_spans.resource.attributes.add(key="service.name", value=common_pb2.AnyValue(string_value=name))
        span = resource_spans.scope_spans.add().spans.add()
        span.trace_id = index.to_bytes(4, "big") + os.urandom(12)
        span.span_id = os.urandom(8)
        span.name = "pay"
        span.status.code = trace_pb2.Status.STATUS_CODE_ERROR  # errors are kept by the shipped sampling
        span.attributes.add(key="payment.note", value=common_pb2.AnyValue(string_value=f"card {CARD}"))
    return request.SerializeToString()


class Client:
    """An OTLP/HTTP client on one keep-alive connection: (status, headers, body) per POST."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def post(self, body: bytes, timeout: float = 30.0) -> tuple[int, dict[str, str], bytes]:
        async with asyncio.timeout(timeout):
            if self._writer is None:
                self._reader, self._writer = await asyncio.open_connection("127.0.0.1", self.port)
            assert self._reader is not None
            head = (f"POST /v1/traces HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-protobuf\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n").encode()
            self._writer.write(head + body)
            await self._writer.drain()
            lines = (await self._reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name:
                    headers[name.strip().lower()] = value.strip()
            data = await self._reader.readexactly(int(headers.get("content-length", "0")))
            if headers.get("connection", "").lower() == "close":
                await self.close()
            return int(lines[0].split()[1]), headers, data

    async def send(self, body: bytes, deadline: float = 60.0) -> tuple[int, int]:
        """POST until it is not 503, waiting Retry-After between tries: (final status, 503s seen)."""
        busy = 0
        ends = time.monotonic() + deadline
        while True:
            status, headers, _ = await self.post(body)
            if status != 503 or time.monotonic() > ends:
                return status, busy
            busy += 1
            await asyncio.sleep(float(headers["retry-after"]))

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
        self._reader = self._writer = None


def assert_masked(sidecar: BoundedSidecar, names: set[str]) -> None:
    """Every span of these resources reached upstream, and none with the card number in clear."""
    seen: set[str] = set()
    for message in sidecar.upstream.messages(Signal.TRACES):
        for resource_spans in message.resource_spans:
            attributes = {kv.key: kv.value.string_value for kv in resource_spans.resource.attributes}
            if attributes.get("service.name") not in names:
                continue
            seen.add(attributes["service.name"])
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    note = next(kv.value.string_value for kv in span.attributes if kv.key == "payment.note")
                    assert CARD_DIGITS not in re.sub(r"\D", "", note), f"card number in clear upstream: {note!r}"
                    assert note != f"card {CARD}"
    assert seen == names, f"{len(names - seen)} resources never reached upstream"
