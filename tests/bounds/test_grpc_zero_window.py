"""A gRPC client that takes no answers, against a REAL sidecar process (issue 14).

Before: request bytes went back to the budget only once the answer was flushed, so a client that
sent 64 MiB of calls with a zero flow-control window kept the whole budget and every other client
was refused for about 30 s. Here a request's bytes go back when its handler is done (the data is
queued), whatever becomes of the answer; answers left waiting are bounded per connection.

The sidecar writes what it accepts to its debug exporter (a file) here, which never falls
behind: the test is about the receive budget, and every one of the 64 MiB of calls must be
accepted. With a slower upstream the export queue (``exporter.queue_max_bytes``, 16 MiB, under
the same ceiling as the budget) would fill and refuse calls retryably, as it should.
"""

from __future__ import annotations

import asyncio
import json
import struct
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from sidecar.export.grpc_client import frame_message
from sidecar.signals import Signal
from tests.bounds.harness import BoundedSidecar, MiB, Probe
from tests.wire.http2.raw import DATA, HEADERS, PREFACE, SETTINGS, Raw, frame, request_headers

TRACES = Signal.TRACES.grpc_path


def request_of(size: int) -> bytes:
    """A valid ExportTraceServiceRequest of exactly ``size`` bytes (one span, a long name)."""
    request = trace_service_pb2.ExportTraceServiceRequest()
    span = request.resource_spans.add().scope_spans.add().spans.add()
    span.trace_id, span.span_id = b"\x01" * 16, b"\x02" * 8
    name = size
    while True:
        span.name = "n" * name
        data = request.SerializeToString()
        if len(data) == size:
            return data
        name -= len(data) - size


def long_names(request: dict[str, Any]) -> int:
    """Spans of an OTLP/JSON traces request whose name is longer than 1,000 characters."""
    return sum(
        len(span.get("name", "")) > 1000
        for resource in request.get("resourceSpans", [])
        for scope in resource.get("scopeSpans", [])
        for span in scope.get("spans", [])
    )


@pytest.mark.timeout(120)
async def test_calls_behind_a_zero_window_do_not_pin_the_budget(tmp_path: Path) -> None:
    message = frame_message(request_of(MiB - 5), compressed=False)
    forwarded = tmp_path / "forwarded.jsonl"
    env = {"SIDECAR_EXPORTER_TYPE": "debug", "SIDECAR_EXPORTER_DEBUG_OUTPUT": str(forwarded)}
    async with BoundedSidecar(**env) as sidecar, Probe(sidecar, "grpc", interval=0.1) as probe:
        budget = await sidecar.metric("otlp_sidecar_overload_budget_limit_bytes")
        calls = int(64 * MiB // len(message))  # 64 MiB of calls: more than the whole budget
        assert calls * len(message) > budget
        async with Raw.open(sidecar.grpc, handshake=False) as client:
            client.send(PREFACE + frame(SETTINGS, 0, 0, struct.pack(">HL", 4, 0)))  # zero stream windows
            handled = 0
            for index in range(calls):
                stream_id = 1 + 2 * index
                client.headers(stream_id, request_headers(TRACES))
                for offset in range(0, len(message), 1 << 20):
                    last = offset + (1 << 20) >= len(message)
                    client.send(frame(DATA, 1 if last else 0, stream_id, message[offset : offset + (1 << 20)]))
                await client.writer.drain()
            # each call is handled: its answer's HEADERS come, its message waits for window
            while handled < calls:
                got = await client.read_frame(timeout=20)
                assert got is not None
                kind, flags, _, _ = got
                assert not (kind == HEADERS and flags & 0x1), "a call was refused"
                handled += kind == HEADERS
            await asyncio.sleep(1.0)
            in_use = await sidecar.metric("otlp_sidecar_overload_budget_in_use_bytes")
            # what is held now is the connection's read buffer at most, not the 64 MiB handled
            assert in_use <= 2 * MiB, in_use
            # and what they sent was forwarded (the probe's spans besides)
            for _ in range(300):
                lines = forwarded.read_text().splitlines() if forwarded.exists() else []
                if sum(long_names(json.loads(line)["request"]) for line in lines) >= calls:
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError(f"{calls} large requests were not all forwarded")
        peak = sidecar.assert_peak_under()
    result = probe.assert_served(max_latency=1.0, min_ok=10)
    print(f"{calls} calls ({calls * len(message) / MiB:.0f} MiB) behind a zero window: budget held "
          f"{in_use / MiB:.2f} MiB after, peak {peak / MiB:.0f} MiB, probe max {result.max_latency * 1000:.0f} ms")
