"""The exporter against an upstream that fails: retries per OTLP, final failures counted, queue bound."""

from __future__ import annotations

import asyncio
import json
import logging

import aiohttp
import pytest
from grpclib.const import Status
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

from sidecar.export.http import parse_retry_after
from sidecar.export.queue import PART_COST
from sidecar.signals import Signal
from tests import sdk
from tests.conftest import sidecar_env
from tests.operator import wait_ready
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
        upstream, "grpc", SIDECAR_EXPORTER_QUEUE_MAX_BYTES=str((len(BODY) + PART_COST) * 3 + 10),
        SIDECAR_EXPORTER_TIMEOUT="60",
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
    env = sidecar_env(upstream, "grpc", SIDECAR_EXPORTER_QUEUE_MAX_BYTES=str((len(BODY) + PART_COST) * 3),
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


#: what a Collector may answer: its error names the attribute it refused, value included
QUOTING = "bad attribute card.number=4111 1111 1111 1111 " + "A" * 5000
#: Go's %q (and Python's repr) writes U+3000 as an escape
WIDE_QUOTED = 'value "\uff14\uff11\uff11\uff11\\u3000' + "\\u3000".join(["\uff11" * 4] * 3) + '" refused'


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
async def test_upstream_messages_are_logged_and_shown_masked_and_cut(upstream, start_sidecar, protocol,
                                                                     caplog) -> None:
    """The upstream's words go to the log, /ready and the circuit's warning: card numbers in them
    masked, each cut to 1 KiB (a 5,000-character message made a 5,328-character ERROR line)."""
    caplog.set_level(logging.DEBUG)
    upstream.script = [Answer(http_status=503, grpc_status=Status.UNAVAILABLE,
                              message="busy with 5555555555554444 " + "B" * 3000)]
    upstream.default = Answer(http_status=400, grpc_status=Status.INVALID_ARGUMENT, message=QUOTING)
    sidecar = await start_sidecar(sidecar_env(upstream, protocol))
    assert (await post(sidecar.addresses["http"][1]))[0] == 200
    reason = "http_400" if protocol == "http/protobuf" else "grpc_invalid_argument"
    assert await wait_sample(sidecar, "otlp_sidecar_exporter_failed_items_total", signal="traces", reason=reason) == 10
    _, ready = await wait_ready(sidecar.addresses["admin"][1], lambda body: "exporter_last_drop" in body)
    logged = [record.getMessage() for record in caplog.records if record.name.startswith("sidecar")]
    shown = "\n".join(logged) + json.dumps(ready, ensure_ascii=False)  # the test upstream's own logs aside
    assert "**** **** **** 1111" in shown and "************4444" in shown  # still said, masked
    for number in ("4111 1111 1111 1111", "5555555555554444", "411111", "555555"):
        assert number not in shown
    longest = max(len(line) for line in logged)
    assert longest < 1500, longest


async def test_a_partial_success_message_is_logged_masked(upstream, start_sidecar, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    upstream.default = Answer(rejected=4, message=WIDE_QUOTED)
    sidecar = await start_sidecar(sidecar_env(upstream, "grpc"))
    assert (await post(sidecar.addresses["http"][1]))[0] == 200
    assert await wait_sample(sidecar, "otlp_sidecar_exporter_rejected_items_total", signal="traces") == 4
    logged = "\n".join(record.getMessage() for record in caplog.records if record.name.startswith("sidecar"))
    assert "upstream rejected 4 of 10" in logged
    assert "\uff14\uff11\uff11\uff11" not in logged and "\uff0a\uff0a\uff0a\uff0a" in logged
