"""Slow gRPC requests against a REAL sidecar process (issue 14).

Before: the receive budget was reserved from the size a gRPC message prefix declares, so 4
requests declaring 16 MiB and trickling one byte every few seconds took all of it: every other
client got UNAVAILABLE, indefinitely (there was no overall request deadline). Here only bytes that
arrived are held, a connection sending slower than limits.min_receive_rate after
limits.min_rate_grace is cut (DEADLINE_EXCEEDED), and limits.request_deadline bounds a request
however steadily it arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time

import pytest

from sidecar.signals import Signal
from tests.bounds.harness import BoundedSidecar, MiB, Probe
from tests.wire.http2.raw import DATA, Raw, frame, request_headers

TRACES = Signal.TRACES.grpc_path
DEADLINE_EXCEEDED = "4"


async def trickle(client: Raw, every: float) -> None:
    """A call whose prefix declares 16 MiB, then one byte every ``every`` seconds."""
    client.headers(1, request_headers(TRACES))
    client.send(frame(DATA, 0, 1, b"\0" + struct.pack(">L", 16 * MiB)))
    while True:
        await asyncio.sleep(every)
        client.send(frame(DATA, 0, 1, b"x"))


async def answered(client: Raw) -> tuple[dict[str, str], float]:
    started = time.monotonic()
    fields, _ = await client.answer(1)
    return fields, time.monotonic() - started


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    ("env", "action", "within"),
    [
        ({}, "slow_body", (4.0, 12.0)),  # limits.min_receive_rate 1024 B/s after a 5 s grace
        # no minimum rate: the request deadline ends them
        ({"SIDECAR_LIMITS_MIN_RECEIVE_RATE": "0", "SIDECAR_LIMITS_REQUEST_DEADLINE": "6"}, "request_deadline",
         (5.0, 12.0)),
    ],
    ids=["min_receive_rate", "request_deadline"],
)
async def test_requests_declaring_16_mib_and_trickling_hold_nothing_and_are_ended(
    env: dict[str, str], action: str, within: tuple[float, float]
) -> None:
    async with BoundedSidecar(**env) as sidecar, Probe(sidecar, "grpc", interval=0.1) as probe:
        async with contextlib.AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(Raw.open(sidecar.grpc)) for _ in range(4)]
            senders = [asyncio.create_task(trickle(client, 1.0)) for client in clients]
            await asyncio.sleep(2.5)
            # only the bytes that arrived are held, not 4 x 16 MiB
            assert await sidecar.metric("otlp_sidecar_overload_budget_in_use_bytes") < 64 * 1024
            try:
                ends = await asyncio.gather(*(answered(client) for client in clients))
            finally:
                for sender in senders:
                    sender.cancel()
        for fields, _ in ends:
            assert fields["grpc-status"] == DEADLINE_EXCEEDED, fields
            assert "slower than" in fields["grpc-message"] or "did not arrive within" in fields["grpc-message"]
        waited = max(elapsed for _, elapsed in ends) + 2.5
        assert within[0] <= waited <= within[1], waited
        assert await sidecar.action("otlp_grpc", action) >= 4
        assert await sidecar.metric("otlp_sidecar_overload_budget_in_use_bytes") == 0
        sidecar.assert_peak_under()
    result = probe.assert_served(max_latency=0.5, min_ok=20)  # never refused meanwhile
    print(f"4 tricklers ({action}): ended after {waited:.1f} s; probe max {result.max_latency * 1000:.0f} ms")
