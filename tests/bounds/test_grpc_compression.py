"""grpc-encoding floods and bombs against a REAL sidecar process (issue 14).

Before: 2 MiB of empty deflate members in one gRPC message froze every port for 4.3 s (the
decoder copied the rest of the message for each member). Here gRPC messages are decompressed
the way OTLP/HTTP bodies are (sidecar.wire.compression.decompress_bounded: members counted,
bounded steps, each step charged to the connection's account): a flood is refused at once with
INVALID_ARGUMENT and a message that says why, a bomb with RESOURCE_EXHAUSTED, and a normal grpcio
client is served meanwhile.
"""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from sidecar.export.grpc_client import frame_message
from sidecar.signals import Signal
from tests.bounds import attacks
from tests.bounds.harness import SMALL_TRACES, BoundedSidecar, MiB, Probe
from tests.wire.http2.raw import DATA, Raw, frame, request_headers

TRACES = Signal.TRACES.grpc_path
INVALID_ARGUMENT, RESOURCE_EXHAUSTED = "3", "8"


async def call_compressed(port: int, encoding: str, body: bytes) -> tuple[dict[str, str], float]:
    """One call whose message is ``body`` flagged compressed with ``grpc-encoding``; its answer
    and how long it took."""
    message = frame_message(body, compressed=True)
    async with Raw.open(port) as client:
        started = time.monotonic()
        client.headers(1, request_headers(TRACES, grpc_encoding=encoding))
        for offset in range(0, len(message), 1 << 20):
            last = offset + (1 << 20) >= len(message)
            client.send(frame(DATA, 1 if last else 0, 1, message[offset : offset + (1 << 20)]))
        fields, _ = await client.answer(1)
        return fields, time.monotonic() - started


@pytest.mark.timeout(120)
async def test_empty_member_floods_are_refused_at_once_and_others_are_served() -> None:
    async with BoundedSidecar() as sidecar, Probe(sidecar, "grpc", interval=0.05) as probe:
        for encoding in ("deflate", "gzip", "zstd"):
            fields, elapsed = await call_compressed(sidecar.grpc, encoding, attacks.empty_members(encoding, 2 * MiB))
            assert fields["grpc-status"] == INVALID_ARGUMENT, fields
            assert "limits.max_compression_members" in fields["grpc-message"], fields
            assert elapsed < 1.0, f"{encoding}: answered after {elapsed:.2f} s"
        assert await sidecar.action("otlp_grpc", "too_many_members") == 3
        sidecar.assert_peak_under()
    result = probe.assert_served(max_latency=0.5)
    print(f"empty-member floods: probe max {result.max_latency * 1000:.0f} ms")


@pytest.mark.timeout(120)
async def test_bombs_are_refused_as_too_large_within_the_ceiling() -> None:
    bombs = {"gzip": attacks.gzip_bomb(100 * MiB), "zstd": attacks.zstd_bomb(100 * MiB)}
    async with BoundedSidecar() as sidecar, Probe(sidecar, "grpc", interval=0.05) as probe:
        for encoding, bomb in bombs.items():
            fields, elapsed = await call_compressed(sidecar.grpc, encoding, bomb)
            assert fields["grpc-status"] in (RESOURCE_EXHAUSTED, "14"), fields  # too large, or busy: retry
            assert elapsed < 10.0
        assert await sidecar.action("otlp_grpc", "decompressed_too_large") >= 1
        assert await sidecar.metric("otlp_sidecar_overload_budget_in_use_bytes") == 0
        peak = sidecar.assert_peak_under()
        # a normal compressed call still goes through
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.grpc}")
        try:
            method = channel.unary_unary(TRACES, request_serializer=None, response_deserializer=None)
            await method(SMALL_TRACES, timeout=5, compression=grpc.Compression.Gzip)
        finally:
            await channel.close()
    result = probe.assert_served(max_latency=1.0)
    print(f"bombs: peak {peak / MiB:.0f} MiB, probe max {result.max_latency * 1000:.0f} ms")


@pytest.mark.timeout(120)
async def test_concurrent_large_calls_on_one_connection_are_never_refused_finally() -> None:
    """grpcio sends three gzip calls at once on one connection, each 1.2 MiB decoded, with a 2 MiB
    connection share: each fits alone, not together. A call that meets the others' bytes waits for
    them (or is answered UNAVAILABLE, which clients retry); none gets RESOURCE_EXHAUSTED, which an
    OTLP exporter drops (before: every call past half the share while another held it did)."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    from tests import sdk

    request = encode_spans(sdk.make_spans(8000)).SerializeToString()
    async with BoundedSidecar(SIDECAR_LIMITS_CONNECTION_SHARE_BYTES=str(2 * MiB)) as sidecar:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.grpc}")
        method = channel.unary_unary(TRACES, request_serializer=None, response_deserializer=None)

        async def call() -> grpc.StatusCode:
            try:
                await method(request, timeout=20, compression=grpc.Compression.Gzip)
            except grpc.aio.AioRpcError as exc:
                return exc.code()
            return grpc.StatusCode.OK

        try:
            codes = await asyncio.gather(*(call() for _ in range(3)))
            assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, codes
            retried = [await call() for code in codes if code != grpc.StatusCode.OK]  # as exporters do
            assert set(retried) <= {grpc.StatusCode.OK}, retried
        finally:
            await channel.close()
        await sidecar.upstream.wait_for(lambda: len(sidecar.upstream.spans()) == 3 * 8000, timeout=30)
        assert await sidecar.action("otlp_grpc", "decompressed_too_large") == 0
        sidecar.assert_peak_under()
    print(f"three calls at once on one connection: {[code.name for code in codes]}")
