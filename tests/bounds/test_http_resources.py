"""Resources per request against a real sidecar process enforcing the bundled policies (issue 14).

Before this change: 5,000 resources of distinct service.name in one 349 KB request were all
evaluated, every port frozen (22.9 s for the request here) and the peak RSS 453 MiB. Now a
request over limits.max_resources_per_request (512) is refused with 413 before any policy
evaluation; the engine's own bounds (evaluation off the loop, its memory) are tested beside it."""

from __future__ import annotations

import time

import pytest
import zstandard

from tests.bounds import attacks
from tests.bounds.harness import BoundedSidecar, Probe, http_post, refused_traces, status_message

pytestmark = pytest.mark.timeout(120)

ENFORCE = {"SIDECAR_POLICY_MODE": "enforce"}


async def test_five_thousand_resources_in_one_request_are_refused_before_evaluation() -> None:
    body = attacks.distinct_resources(5000, "bulk")
    async with BoundedSidecar(**ENFORCE) as sidecar:
        async with Probe(sidecar) as probe:
            started = time.perf_counter()
            status, answer = await http_post(sidecar.http, "/v1/traces", body)
            elapsed = time.perf_counter() - started
        assert status == 413
        assert "holds more resources than the 512 allowed" in status_message(answer)
        assert elapsed < 1.0
        probe.assert_served(0.5)
        sidecar.assert_peak_under()
        assert await sidecar.action("otlp_http", "too_many_resources") == 1
        # none of the refused request's spans was accepted (the probe's were)
        received = await sidecar.metric("otlp_sidecar_receiver_received_items_total", signal="traces", transport="http")
        assert received % 3 == 0  # only the probe's 3-span requests


async def test_a_request_at_the_cap_is_accepted_and_a_lower_cap_applies() -> None:
    async with BoundedSidecar(SIDECAR_LIMITS_MAX_RESOURCES_PER_REQUEST="100", **ENFORCE) as sidecar:
        status, answer = await http_post(sidecar.http, "/v1/traces", attacks.distinct_resources(100, "cap"))
        assert status == 200, status_message(answer)
        status, answer = await http_post(sidecar.http, "/v1/traces", attacks.distinct_resources(101, "over"))
        assert status == 413
        assert "more resources than the 100 allowed (limits.max_resources_per_request)" in status_message(answer)
        # all 100 accepted (the bundled policies then sample these plain server spans)
        accepted = await sidecar.metric("otlp_sidecar_receiver_accepted_items_total", signal="traces", transport="http")
        assert accepted == 100
        sidecar.assert_peak_under()


async def test_over_grpc_the_cap_answers_resource_exhausted() -> None:
    """The same limit through a grpcio client: RESOURCE_EXHAUSTED (a limit, not a malformed request)."""
    import grpc

    async with BoundedSidecar(SIDECAR_LIMITS_MAX_RESOURCES_PER_REQUEST="100", **ENFORCE) as sidecar:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.grpc}") as channel:
            export = channel.unary_unary(
                "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                request_serializer=lambda b: b, response_deserializer=lambda b: b,
            )
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await export(attacks.distinct_resources(101, "over"), timeout=10)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        details = refused.value.details() or ""
        assert "more resources than the 100 allowed (limits.max_resources_per_request)" in details
        assert await sidecar.action("otlp_grpc", "too_many_resources") == 1


@pytest.mark.parametrize("transport", ["http", "grpc"])
async def test_millions_of_empty_resources_compressed_to_a_kilobyte_are_refused_without_an_object_each(
    transport: str,
) -> None:
    """Two bytes make an empty ResourceSpans: 16 MiB of them (8 million, 1.4 kB in zstd) were
    split into an object each before the cap was checked: peak RSS 2.6 GiB and every port
    frozen 16 s here. Now they are counted, up to one over the cap, before anything is made."""
    body = b"\x0a\x00" * (8 << 20)
    packed = zstandard.ZstdCompressor(level=19).compress(body)
    assert len(packed) < 4096
    async with BoundedSidecar(**ENFORCE) as sidecar:
        async with Probe(sidecar, kind="health" if transport == "http" else "grpc") as probe:
            started = time.perf_counter()
            status, message = await refused_traces(sidecar, transport, body, packed, "zstd")
            elapsed = time.perf_counter() - started
        assert status == 413, message
        assert "holds more resources than the 512 allowed" in message
        assert elapsed < 2.0
        probe.assert_served(0.5)
        sidecar.assert_peak_under()
        assert await sidecar.action(f"otlp_{transport}", "too_many_resources") == 1
