"""Bad input gets the right OTLP status and a message, never a traceback; the sidecar keeps serving."""

from __future__ import annotations

import gzip
import struct

import aiohttp
import grpc
import pytest
import zstandard
from google.rpc import status_pb2
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from sidecar.export.grpc_client import CallError, Channel, call_framed, call_unary, frame_message
from sidecar.rewrite._wire import len_field as _field
from sidecar.signals import Signal
from tests import sdk
from tests.conftest import sidecar_env

GOOD = encode_spans(sdk.make_spans(3)).SerializeToString()
#: a length-delimited field claiming more bytes than there are
TRUNCATED = b"\x0a\xff\x01\x0a\x02"


@pytest.fixture
async def sidecar(upstream, start_sidecar):
    return await start_sidecar(
        sidecar_env(
            upstream,
            "grpc",
            SIDECAR_RECEIVERS_MAX_REQUEST_BYTES="64KiB",
            SIDECAR_RECEIVERS_MAX_DECOMPRESSED_BYTES="256KiB",
        )
    )


async def post(sidecar, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes, dict]:
    port = sidecar.addresses["http"][1]
    async with aiohttp.ClientSession() as session:
        async with session.post(f"http://127.0.0.1:{port}{path}", data=body, headers=headers) as response:
            return response.status, await response.read(), dict(response.headers)


def rpc_message(body: bytes) -> str:
    return status_pb2.Status.FromString(body).message


PB = {"Content-Type": "application/x-protobuf"}
JS = {"Content-Type": "application/json"}
CASES = [
    ("malformed protobuf", "/v1/traces", TRUNCATED, PB, 400, "invalid ExportTraceServiceRequest"),
    ("malformed json", "/v1/traces", b'{"resourceSpans": [', JS, 400, "not valid JSON"),
    ("json of the wrong shape", "/v1/logs", b'{"resourceLogs": 7}', JS, 400, "ExportLogsServiceRequest"),
    (
        "bad hex trace id",
        "/v1/traces",
        b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"zz","spanId":"0011223344556677"}]}]}]}',
        JS,
        400,
        "traceId must be a hex string",
    ),
    ("unsupported content type", "/v1/traces", GOOD, {"Content-Type": "text/plain"}, 415, "unsupported content type"),
    ("unsupported encoding", "/v1/traces", GOOD, {**PB, "Content-Encoding": "br"}, 415, "unsupported encoding"),
    ("broken gzip", "/v1/traces", b"\x1f\x8b\x08\x00garbage", {**PB, "Content-Encoding": "gzip"}, 400, "gzip"),
    ("broken zstd", "/v1/traces", b"\x28\xb5\x2f\xfdjunk", {**PB, "Content-Encoding": "zstd"}, 400, "zstd"),
    ("body over the limit", "/v1/traces", b"\x00" * (65 * 1024), PB, 413, "exceeds the limit"),
    (
        "zip bomb",
        "/v1/metrics",
        gzip.compress(b"\x00" * (1 << 20)),
        {**PB, "Content-Encoding": "gzip"},
        413,
        "exceeds the limit",
    ),
]


@pytest.mark.parametrize(("name", "path", "body", "headers", "status", "text"), CASES, ids=[c[0] for c in CASES])
async def test_http_bad_input(sidecar, name, path, body, headers, status, text) -> None:
    code, payload, _ = await post(sidecar, path, body, headers)
    assert code == status
    assert b"Traceback" not in payload
    message = payload.decode() if headers.get("Content-Type") == "application/json" else rpc_message(payload)
    assert text in message
    # and it still serves good requests
    code, payload, _ = await post(sidecar, "/v1/traces", GOOD, PB)
    assert code == 200
    assert trace_service_pb2.ExportTraceServiceResponse.FromString(payload).partial_success.rejected_spans == 0


def _corrupt_inside_a_span(body: bytes) -> bytes:
    """GOOD with the first span's first attribute given a wrong wire type: the framing down to
    the spans is intact, so only the full walk (rewrite) finds it."""
    request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
    key = request.resource_spans[0].scope_spans[0].spans[0].attributes[0].key.encode()
    kv = b"\x0a" + bytes([len(key)]) + key
    at = body.index(kv)
    # the KeyValue's value field (tag 0x12, length-delimited) becomes a varint field 2 (0x10)
    value_tag = at + len(kv)
    assert body[value_tag] == 0x12
    return body[:value_tag] + b"\x10" + body[value_tag + 1:]


@pytest.mark.parametrize("where", ["span attribute", "resource attribute"])
async def test_malformed_inside_is_refused_whole_and_counted_as_a_request(sidecar, where) -> None:
    """Malformed bytes deep inside: 400, counted as one refused request, no item received."""
    if where == "span attribute":
        body = _corrupt_inside_a_span(GOOD)
    else:  # arrays nested 40 deep in a resource attribute: the policy engine must never decode it
        value = b"\x0a\x01x"  # AnyValue{string_value: "x"}
        for _ in range(40):
            value = _field(5, _field(1, value))  # AnyValue{array_value: ArrayValue{values: [value]}}
        resource = _field(1, _field(1, b"k") + _field(2, value))  # Resource{attributes: [{k: value}]}
        body = _field(1, _field(1, resource))  # request{resource_spans: [{resource}]}
    code, payload, _ = await post(sidecar, "/v1/traces", body, PB)
    assert code == 400, payload
    message = rpc_message(payload)
    assert "invalid ExportTraceServiceRequest" in message
    if where == "resource attribute":
        assert "nested deeper than 30 levels" in message
    registry = sidecar.metrics.registry
    labels = {"signal": "traces", "transport": "http"}
    assert registry.get_sample_value("otlp_sidecar_receiver_refused_requests_total",
                                     {**labels, "reason": "malformed"}) == 1
    assert (registry.get_sample_value("otlp_sidecar_receiver_received_items_total", labels) or 0) == 0
    code, _, _ = await post(sidecar, "/v1/traces", GOOD, PB)
    assert code == 200


async def test_malformed_histogram_buckets_are_refused_whole_and_counted_as_a_request(sidecar) -> None:
    """The rewriter does not enter an exponential histogram's buckets (nothing to scan there); the
    egress allowlist does, and a review got a 500 with a traceback from a truncated varint in
    them, the items counted as received and never accounted for."""
    buckets = b"\x08"  # Buckets{offset: <a varint cut short>}
    point = _field(8, buckets)  # ExponentialHistogramDataPoint{positive: buckets}
    metric = _field(1, b"m") + _field(10, _field(1, point))  # Metric{name, exponential_histogram}
    body = _field(1, _field(2, _field(2, metric)))  # request{resource_metrics: [{scope_metrics: [..]}]}
    code, payload, _ = await post(sidecar, "/v1/metrics", body, PB)
    assert code == 400, payload
    assert "truncated varint" in rpc_message(payload)
    registry = sidecar.metrics.registry
    labels = {"signal": "metrics", "transport": "http"}
    assert registry.get_sample_value("otlp_sidecar_receiver_refused_requests_total",
                                     {**labels, "reason": "malformed"}) == 1
    assert (registry.get_sample_value("otlp_sidecar_receiver_received_items_total", labels) or 0) == 0


async def test_http_unknown_path_and_method(sidecar) -> None:
    assert (await post(sidecar, "/v1/profiles", GOOD, PB))[0] == 404
    port = sidecar.addresses["http"][1]
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/v1/traces") as response:
        assert response.status == 405


async def test_http_json_answer_is_json(sidecar) -> None:
    code, payload, headers = await post(sidecar, "/v1/traces", b"{}", JS)
    assert code == 200
    assert headers["Content-Type"].startswith("application/json")
    assert payload == b"{}"


async def test_http_zstd_body(sidecar, upstream) -> None:
    body = zstandard.ZstdCompressor().compress(GOOD)
    code, _, _ = await post(sidecar, "/v1/traces", body, {**PB, "Content-Encoding": "zstd"})
    assert code == 200
    await upstream.wait_for(lambda: len(upstream.spans()) == 3)


def grpc_call(
    port: int, request: bytes, compression: grpc.Compression | None = None, metadata: tuple = ()
) -> tuple[grpc.StatusCode, str]:
    """A raw unary call with grpcio (the same client library as the SDK's gRPC exporter)."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(Signal.TRACES.grpc_path)
        try:
            call(request, timeout=10, compression=compression, metadata=metadata)
        except grpc.RpcError as exc:
            return exc.code(), exc.details()
        return grpc.StatusCode.OK, ""


async def test_grpc_bad_input(sidecar) -> None:
    import asyncio

    port = sidecar.addresses["grpc"][1]
    code, details = await asyncio.to_thread(grpc_call, port, TRUNCATED)
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "invalid ExportTraceServiceRequest" in details
    code, details = await asyncio.to_thread(grpc_call, port, b"\x00" * (65 * 1024))
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "exceeds the limit" in details
    bomb = b"\x0a" + b"\x00" * (300 * 1024)
    code, details = await asyncio.to_thread(grpc_call, port, bomb, grpc.Compression.Gzip)
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
    code, _ = await asyncio.to_thread(grpc_call, port, GOOD, grpc.Compression.Gzip)
    assert code is grpc.StatusCode.OK


async def test_grpc_broken_compression_and_unknown_encoding(sidecar) -> None:
    """Frames a well-behaved client would never send, through our gRPC client."""
    port = sidecar.addresses["grpc"][1]
    channel = Channel("127.0.0.1", port)
    path = Signal.TRACES.grpc_path
    try:
        bad_gzip = frame_message(b"not gzip at all", compressed=True)
        with pytest.raises(CallError) as info:
            await call_framed(channel, path, bad_gzip, encoding="gzip", timeout=5)
        assert info.value.status.name == "INVALID_ARGUMENT"
        assert "gzip" in info.value.message
        with pytest.raises(CallError) as info:
            await call_framed(channel, path, bad_gzip, encoding="snappy", timeout=5)
        assert info.value.status.name == "UNIMPLEMENTED"
        assert "snappy" in info.value.message
        truncated_frame = frame_message(GOOD, compressed=False)[:-3]
        with pytest.raises(CallError) as info:
            await call_framed(channel, path, truncated_frame, encoding="identity", timeout=5)
        assert info.value.status.name == "INVALID_ARGUMENT"
        reply = await call_unary(channel, path, GOOD, encoding="zstd", timeout=5)
        assert reply == b""
    finally:
        channel.close()


def test_prefix_layout() -> None:
    """The 5-byte gRPC message prefix: compressed flag then big-endian length."""
    assert struct.pack(">?I", True, 258) == b"\x01\x00\x00\x01\x02"
