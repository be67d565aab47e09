"""The exporter against an upstream that fails: retries per OTLP, final failures counted, queue bound."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from grpclib.const import Status
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

from sidecar.export.http import parse_retry_after
from sidecar.signals import Signal
from tests import sdk
from tests.conftest import sidecar_env
from tests.upstream import Answer

BODY = encode_spans(sdk.make_spans(10)).SerializeToString()
PB = {"Content-Type": "application/x-protobuf"}


async def post(port: int, body: bytes = BODY) -> tuple[int, dict[str, str]]:
    async with aiohttp.ClientSession() as session:
        async with session.post(f"http://127.0.0.1:{port}/v1/traces", data=body, headers=PB) as response:
            await response.read()
            return response.status, dict(response.headers)


def sample(sidecar, name: str, **labels: str) -> float:
    return sidecar.metrics.registry.get_sample_value(name, labels) or 0.0


async def wait_sample(sidecar, name: str, **labels: str) -> float:
    """The metric once it is non-zero (exports finish a moment after the upstream records them)."""
    for _ in range(250):
        value = sample(sidecar, name, **labels)
        if value:
            return value
        await asyncio.sleep(0.02)
    return 0.0


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
async def test_retryable_failures_are_retried_until_delivered(upstream, start_sidecar, protocol) -> None:
    upstream.script = [
        Answer(http_status=503, grpc_status=Status.UNAVAILABLE),
        Answer(http_status=429, grpc_status=Status.DEADLINE_EXCEEDED, retry_after="0"),
        Answer(http_status=502, grpc_status=Status.ABORTED),
    ]
    sidecar = await start_sidecar(sidecar_env(upstream, protocol))
    assert (await post(sidecar.addresses["http"][1]))[0] == 200
    await upstream.wait_for(lambda: len(upstream.spans()) == 10)
    assert upstream.attempts == 4
    assert sample(sidecar, "otlp_sidecar_exporter_retries_total", signal="traces") == 3
    assert await wait_sample(sidecar, "otlp_sidecar_exporter_sent_items_total", signal="traces") == 10


@pytest.mark.parametrize(
    ("protocol", "answer", "reason"),
    [
        ("http/protobuf", Answer(http_status=400, message="bad data"), "http_400"),
        ("grpc", Answer(grpc_status=Status.INVALID_ARGUMENT, message="bad data"), "grpc_invalid_argument"),
        # RESOURCE_EXHAUSTED without RetryInfo is final, as OTLP says
        ("grpc", Answer(grpc_status=Status.RESOURCE_EXHAUSTED), "grpc_resource_exhausted"),
    ],
)
async def test_final_failures_are_counted_not_retried(upstream, start_sidecar, protocol, answer, reason) -> None:
    upstream.default = answer
    sidecar = await start_sidecar(sidecar_env(upstream, protocol))
    assert (await post(sidecar.addresses["http"][1]))[0] == 200
    assert await wait_sample(sidecar, "otlp_sidecar_exporter_failed_items_total", signal="traces", reason=reason) == 10
    assert upstream.attempts == 1


async def test_upstream_partial_success_counts_as_rejected(upstream, start_sidecar) -> None:
    upstream.default = Answer(rejected=4, message="4 spans too old")
    sidecar = await start_sidecar(sidecar_env(upstream, "grpc"))
    assert (await post(sidecar.addresses["http"][1]))[0] == 200
    await upstream.wait_for(lambda: len(upstream.spans()) == 10)
    assert await wait_sample(sidecar, "otlp_sidecar_exporter_rejected_items_total", signal="traces") == 4
    assert await wait_sample(sidecar, "otlp_sidecar_exporter_sent_items_total", signal="traces") == 6


async def test_full_queue_refuses_retryably(upstream, start_sidecar) -> None:
    """With the upstream stalled, the byte-bounded queue fills and new data gets 503 + Retry-After."""
    upstream.default = Answer(delay=30.0)
    env = sidecar_env(
        upstream, "grpc", SIDECAR_EXPORTER_QUEUE_MAX_BYTES=str(len(BODY) * 3 + 10), SIDECAR_EXPORTER_TIMEOUT="60"
    )
    sidecar = await start_sidecar(env)
    port = sidecar.addresses["http"][1]
    statuses = [await post(port) for _ in range(5)]
    assert [s for s, _ in statuses[:3]] == [200, 200, 200]
    assert statuses[3][0] == 503
    assert statuses[3][1]["Retry-After"] == "1"
    assert sidecar.queue is not None and sidecar.queue.held_bytes <= sidecar.queue.capacity_bytes
    assert (
        sample(
            sidecar, "otlp_sidecar_receiver_refused_items_total", signal="traces", transport="http", reason="queue_full"
        )
        == 20
    )
    upstream.default = Answer()


async def test_a_full_queue_refuses_before_rewriting(upstream, start_sidecar) -> None:
    """Exactly full: the request is refused up front (no rewrite spent on it), with the same answer."""
    upstream.default = Answer(delay=30.0)
    env = sidecar_env(upstream, "grpc", SIDECAR_EXPORTER_QUEUE_MAX_BYTES=str(len(BODY) * 3),
                      SIDECAR_EXPORTER_TIMEOUT="60")
    sidecar = await start_sidecar(env)
    port = sidecar.addresses["http"][1]
    assert [(await post(port))[0] for _ in range(3)] == [200, 200, 200]
    assert sidecar.queue is not None and sidecar.queue.full_for(Signal.TRACES)
    status, headers = await post(port)
    assert (status, headers["Retry-After"]) == (503, "1")
    assert sample(sidecar, "otlp_sidecar_receiver_refused_items_total", signal="traces", transport="http",
                  reason="queue_full") == 10
    upstream.default = Answer()


def test_retry_after_forms() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == pytest.approx(10.0)
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
