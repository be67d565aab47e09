"""The exporter's gRPC client (sidecar.export.grpc_client, on our HTTP/2 client) and GrpcExporter against grpcio,
the C-core gRPC the SDK and many upstreams use: compression both ways, fallbacks, retryable statuses."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

from sidecar.config import load
from sidecar.export.grpc import GrpcExporter
from sidecar.export.grpc_client import CallError, Channel, call_unary
from sidecar.export.result import ExportError
from sidecar.signals import Signal
from tests import sdk

BIG = encode_spans(sdk.make_spans(400)).SerializeToString()


class _GrpcioUpstream:
    """A grpcio server: records what our client sends, answers compressed, or fails as told."""

    def __init__(self, fail: tuple[grpc.StatusCode, bytes] | None = None) -> None:
        self.requests: list[tuple[bytes, dict[str, str]]] = []
        self.fail = fail
        self.server = grpc.aio.server(compression=grpc.Compression.Gzip)
        handler = grpc.unary_unary_rpc_method_handler(self._export)
        service = grpc.method_handlers_generic_handler(
            "opentelemetry.proto.collector.trace.v1.TraceService", {"Export": handler}
        )
        self.server.add_generic_rpc_handlers((service,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    async def _export(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        self.requests.append((request, {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}))
        if self.fail is not None:
            code, details = self.fail
            context.set_trailing_metadata((("grpc-status-details-bin", details),))
            await context.abort(code, "slow down")
        # a reply big enough that grpcio really compresses it
        response = Signal.TRACES.response_class()
        response.partial_success.error_message = "x" * 2000
        response.partial_success.rejected_spans = 3
        return response.SerializeToString()


@pytest.mark.parametrize("encoding", ["gzip", "zstd", "identity"])
async def test_call_unary_against_grpcio(encoding: str) -> None:
    upstream = _GrpcioUpstream()
    await upstream.server.start()
    channel = Channel("127.0.0.1", upstream.port)
    try:
        if encoding == "zstd":
            # grpcio knows no zstd: the call fails with a status that says so (the exporter falls back)
            with pytest.raises(CallError) as info:
                await call_unary(channel, Signal.TRACES.grpc_path, BIG, encoding="zstd", timeout=10)
            assert info.value.status.name in ("UNIMPLEMENTED", "INTERNAL")
            assert "encoding" in info.value.message
            return
        reply = await call_unary(
            channel, Signal.TRACES.grpc_path, BIG, encoding=encoding, timeout=10, metadata={"x-tenant": "acme"}
        )
        assert upstream.requests[0][0] == BIG
        assert upstream.requests[0][1]["x-tenant"] == "acme"
        parsed = Signal.TRACES.response_class.FromString(reply)
        assert parsed.partial_success.rejected_spans == 3
    finally:
        channel.close()
        await upstream.server.stop(None)


async def test_exporter_falls_back_when_the_upstream_lacks_zstd() -> None:
    upstream = _GrpcioUpstream()
    await upstream.server.start()
    exporter = GrpcExporter(
        load(
            None,
            env={
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{upstream.port}",
                "OTEL_EXPORTER_OTLP_COMPRESSION": "zstd",
            },
        ).exporter
    )
    try:
        for _ in range(2):
            result = await exporter.export(Signal.TRACES, BIG)
            assert result.rejected == 3
        assert [body for body, _ in upstream.requests] == [BIG, BIG]
    finally:
        await exporter.stop()
        await upstream.server.stop(None)


async def test_resource_exhausted_with_retry_info_is_retryable() -> None:
    status = status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED, message="slow down")
    delay = duration_pb2.Duration(seconds=2, nanos=5 * 10**8)
    status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    upstream = _GrpcioUpstream(fail=(grpc.StatusCode.RESOURCE_EXHAUSTED, status.SerializeToString()))
    await upstream.server.start()
    exporter = GrpcExporter(
        load(
            None,
            env={
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{upstream.port}",
                "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip",
            },
        ).exporter
    )
    try:
        with pytest.raises(ExportError) as info:
            await exporter.export(Signal.TRACES, BIG)
        assert info.value.retryable
        assert info.value.retry_after == pytest.approx(2.5)
    finally:
        await exporter.stop()
        await upstream.server.stop(None)


async def test_unreachable_upstream_is_unavailable() -> None:
    channel = Channel("127.0.0.1", 9)  # discard port: nothing listens
    try:
        with pytest.raises(CallError) as info:
            await call_unary(channel, Signal.TRACES.grpc_path, b"", timeout=5)
        assert info.value.status.name == "UNAVAILABLE"
    finally:
        channel.close()


@pytest.mark.parametrize("padding", [None, 0, 3, 20])
@pytest.mark.parametrize("size", [0, 1, 9, 10, 11, 12, 1000, 200_000])
def test_data_frame_repr_text_is_unchanged(size: int, padding: int | None) -> None:
    """The cheaper repr of DATA frames (h2 formats one per received frame) gives the same text as
    hyperframe's own: the hex dump of the serialized body, cut to 20 digits."""
    import binascii

    from hyperframe.frame import DataFrame

    data = bytes(range(1, 256)) * (size // 255 + 1)
    if padding is None:
        frame = DataFrame(1, data[:size])
    else:
        frame = DataFrame(1, data[:size], flags=["PADDED"], pad_length=padding)
    body = frame.serialize_body()  # what hyperframe dumps
    full = binascii.hexlify(body).decode("ascii")
    expected = "None" if not body else "<hex:" + (full[:20] + "..." if len(full) > 20 else full) + ">"
    assert repr(frame) == f"DataFrame(stream_id=1, flags={frame.flags!r}): {expected}"
