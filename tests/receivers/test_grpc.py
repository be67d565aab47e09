"""The gRPC receiver of a real sidecar against grpcio, the C-core gRPC the SDK uses."""

from __future__ import annotations

import asyncio

import grpc
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

from sidecar.signals import Signal
from tests import sdk
from tests.conftest import sidecar_env

BIG = encode_spans(sdk.make_spans(400)).SerializeToString()


async def test_large_requests_on_fresh_connections(upstream, start_sidecar) -> None:
    """Regression: a client may send its SETTINGS ACK and a >16 KiB frame in one segment."""
    assert len(BIG) > 50_000
    sidecar = await start_sidecar(sidecar_env(upstream, "grpc"))
    port = sidecar.addresses["grpc"][1]

    def calls() -> list[str]:
        codes = []
        for _ in range(20):
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                try:
                    channel.unary_unary(Signal.TRACES.grpc_path)(BIG, timeout=10)
                    codes.append("OK")
                except grpc.RpcError as exc:
                    codes.append(f"{exc.code().name}: {exc.details()}")
        return codes

    assert await asyncio.to_thread(calls) == ["OK"] * 20
