"""otlp_sidecar_receiver_request_duration_seconds is timed alike on both transports, against a real
sidecar process: from the request's complete head to its answer, so a body that takes 0.5 s to
arrive after the head counts 0.5 s on HTTP and on gRPC alike (the gRPC listener used to start the
clock only once the whole message was in)."""

from __future__ import annotations

import asyncio
import time

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

from sidecar.export.grpc_client import frame_message
from sidecar.signals import Signal
from tests import sdk
from tests.bounds.harness import BoundedSidecar, read_response
from tests.wire.http2.raw import DATA, Raw, frame, request_headers

DELAY = 0.5
DURATION = "otlp_sidecar_receiver_request_duration_seconds"


def body() -> bytes:
    return bytes(encode_spans(sdk.make_spans(3)).SerializeToString())


async def http_with_late_body(port: int, payload: bytes) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
            b"Content-Length: %d\r\n\r\n" % len(payload)
        )
        await writer.drain()
        await asyncio.sleep(DELAY)
        writer.write(payload)
        status, _ = await asyncio.wait_for(read_response(reader), 10)
        return status
    finally:
        writer.close()


async def grpc_with_late_message(port: int, payload: bytes) -> str:
    async with Raw.open(port) as client:
        client.headers(1, request_headers(Signal.TRACES.grpc_path))
        await client.writer.drain()
        await asyncio.sleep(DELAY)
        client.send(frame(DATA, 0x1, 1, frame_message(payload, compressed=False)))
        fields, _ = await client.answer(1)
        return fields.get("grpc-status", "")


@pytest.mark.timeout(60)
async def test_both_transports_time_from_the_complete_head_to_the_answer() -> None:
    async with BoundedSidecar() as sidecar:
        started = time.monotonic()
        assert await http_with_late_body(sidecar.http, body()) == 200
        assert await grpc_with_late_message(sidecar.grpc, body()) == "0"
        elapsed = time.monotonic() - started
        for transport in ("http", "grpc"):
            labels = {"signal": "traces", "transport": transport}
            assert await sidecar.metric(f"{DURATION}_count", **labels) == 1, transport
            observed = await sidecar.metric(f"{DURATION}_sum", **labels)
            print(f"{transport}: body {DELAY} s after the head, observed {observed:.3f} s")
            assert DELAY * 0.9 <= observed <= elapsed, (transport, observed)
