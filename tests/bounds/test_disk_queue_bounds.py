"""The disk queue under what clients can make it hold.

- With the disk queue, a request is acknowledged once its rewrite is durable: its output waits
  for the disk's fdatasync. Those outputs are held in the receive budget, so requests that pile
  up behind a slow disk cannot take the sidecar past its ceiling.
- Each request the disk queue holds keeps its bookkeeping in memory: their number is bounded.

A slow disk cannot be made here (no device mapper; FUSE is not on every CI machine): the
sidecar's ``os.fdatasync`` is slowed in its own process by a ``sitecustomize`` module, the one
stand-in of this file. Everything else is real: the sidecar process, its disk queue in a
temporary directory, OTLP/HTTP clients over loopback.
"""

from __future__ import annotations

import asyncio
import textwrap
import time

import aiohttp
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from tests.bounds.harness import SMALL_TRACES, BoundedSidecar, MiB, Probe, http_post, status_message

#: how long the slowed disk takes for each fdatasync
SYNC_SECONDS = 0.3
CLIENTS = 48


def big_request(tag: int, size: int = MiB) -> bytes:
    """One span whose attributes hold ``size`` bytes of text (nothing a policy changes)."""
    request = ExportTraceServiceRequest()
    span = request.resource_spans.add().scope_spans.add().spans.add()
    span.trace_id = tag.to_bytes(16, "big")
    span.span_id = (tag + 1).to_bytes(8, "big")
    span.name = "upload"
    chunk = 64 * 1024
    for i in range(size // chunk):
        span.attributes.append(KeyValue(key=f"part.{i}", value=AnyValue(string_value=chr(97 + i % 26) * chunk)))
    return request.SerializeToString()


def slow_disk(tmp_path) -> str:
    """A directory for PYTHONPATH whose sitecustomize slows every fdatasync of the process."""
    site = tmp_path / "slow_disk"
    site.mkdir()
    (site / "sitecustomize.py").write_text(textwrap.dedent(f"""\
        import os, time
        _fdatasync = os.fdatasync
        def _slow(fd):
            time.sleep({SYNC_SECONDS})
            _fdatasync(fd)
        os.fdatasync = _slow
    """))
    return str(site)


async def send_until_accepted(port: int, body: bytes, deadline: float) -> tuple[int, int]:
    """POST ``body`` as an OTLP exporter does, retrying 503s; (final status, 503s seen)."""
    busy = 0
    while True:
        status, _ = await http_post(port, "/v1/traces", body, timeout=30.0)
        if status != 503 or time.monotonic() > deadline:
            return status, busy
        busy += 1
        await asyncio.sleep(0.05)


@pytest.mark.timeout(180)
async def test_outputs_waiting_for_a_slow_disk_are_held_in_the_budget(tmp_path) -> None:
    """48 clients send 1 MiB each at once; the disk takes 0.3 s a sync. Before: 48 outputs (48 MiB)
    waited outside the budget beside their 40 MiB of requests, peak RSS past 128 MiB. Now the
    budget holds them: some requests are answered 503 (budget_full) and retried, every one is
    delivered, the peak stays under the ceiling and a normal client is served meanwhile."""
    queue_dir = tmp_path / "queue"
    async with BoundedSidecar(
        "grpc",
        PYTHONPATH=slow_disk(tmp_path),
        SIDECAR_EXPORTER_DISK_QUEUE_DIR=str(queue_dir),
    ) as sc:
        bodies = [big_request(i) for i in range(CLIENTS)]
        async with Probe(sc, interval=0.1, timeout=10.0) as probe:
            deadline = time.monotonic() + 90
            results = await asyncio.gather(*(send_until_accepted(sc.http, body, deadline) for body in bodies))
        assert [status for status, _ in results] == [200] * CLIENTS
        assert sum(busy for _, busy in results) >= 1  # the budget bit
        assert await sc.action("otlp_http", "budget_full") >= 1
        # and it bit on the outputs waiting for the disk (items counted as received, then refused)
        assert await sc.metric("otlp_sidecar_receiver_refused_items_total", signal="traces", transport="http",
                               reason="busy") >= 1
        probe.result.failures = [f for f in probe.result.failures if "status 503" not in f]  # retryable
        assert not probe.result.failures, probe.result.failures
        peak = sc.assert_peak_under()
        print(f"peak RSS {peak / MiB:.1f} MiB")
        for _ in range(200):
            uploads = [span.trace_id for r in sc.upstream.received for rs in r.message.resource_spans
                       for ss in rs.scope_spans for span in ss.spans if span.name == "upload"]
            if len(uploads) >= CLIENTS:
                break
            await asyncio.sleep(0.1)
        # nothing acknowledged was lost, nothing twice
        assert sorted(uploads) == [i.to_bytes(16, "big") for i in range(CLIENTS)]


@pytest.mark.timeout(120)
async def test_tiny_requests_during_an_outage_are_bounded_by_their_count(tmp_path) -> None:
    """One span per request (an SDK's simple processor) while the upstream is down: each request
    the disk queue holds keeps ~180 bytes of bookkeeping in memory though its bytes are on disk (a
    million took 180 MB). Past a quarter of exporter.queue_max_bytes of them, 503 with a message
    (retryable), and the process stays small."""
    async with BoundedSidecar(
        "grpc",
        SIDECAR_EXPORTER_DISK_QUEUE_DIR=str(tmp_path / "queue"),
        SIDECAR_EXPORTER_QUEUE_MAX_BYTES="1MiB",
        OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9",  # nothing listens: the upstream is down
    ) as sc:
        most = max(1024, (1 << 20) // 4 // 192)
        statuses: list[int] = []
        messages: set[str] = set()
        async with aiohttp.ClientSession() as session:
            for _ in range(most + 100):
                async with session.post(f"http://127.0.0.1:{sc.http}/v1/traces", data=SMALL_TRACES,
                                        headers={"Content-Type": "application/x-protobuf"}) as response:
                    statuses.append(response.status)
                    if response.status != 200:
                        messages.add(status_message(await response.read()))
        assert statuses.count(200) == most and statuses.count(503) == 100, statuses[-5:]
        (message,) = messages
        assert f"the disk queue holds {most} requests" in message and "send larger batches" in message
        assert await sc.metric("otlp_sidecar_receiver_refused_items_total", signal="traces", transport="http",
                               reason="queue_full") == 100 * 3
        sc.assert_peak_under()
