"""A disk queue filled during an outage, replayed by a restart with a smaller memory queue and limit.

An outage filled the disk queue while the sidecar ran with a large ``exporter.queue_max_bytes``
(a previous run, its upstream down); the operator then lowered the queue with the pod's memory
limit, and the sidecar restarts on the same directory, its upstream still down. Before, the replay
read each segment file whole (``exporter.disk_queue_segment_bytes``, no maximum) and queued every
record on disk, ~190 bytes of bookkeeping each, however many the smaller queue keeps track of: the
restart's peak RSS was the old backlog's, an OOM kill at every start under the new limit (a crash
loop that never drains), and every new request was refused (the queue held more than it may).

The backlog is written with the sidecar's own disk log (``DiskQueue.append``, what the previous
run did for each request it accepted): 150,000 requests through a real process would take minutes.
Everything after is real: the sidecar process on that directory, OTLP/HTTP clients over loopback, an
upstream (tests.upstream) that comes up on the address the sidecar was given once it is serving.
"""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from sidecar.export.diskqueue import DiskQueue
from sidecar.signals import Signal
from tests.bounds.harness import BoundedSidecar, MiB, Probe
from tests.upstream import Upstream

#: requests the previous run accepted during the outage (~232 bytes each on disk: 33 MiB), under an
#: exporter.queue_max_bytes of at least 4 x 192 x this (110 MiB)
RECORDS = 150_000
#: the restart's settings: the memory queue keeps track of 4 MiB / 4 / 192 = 5,461 requests, a
#: replay of 2,730 at once
QUEUE = 4 * MiB
REPLAY = QUEUE // 4 // 192 // 2
#: the smallest limit these fit under: the process (72 MiB), the receive budget and the queue
CEILING = 80 * MiB
BUDGET = 4 * MiB
#: the segment size of both runs: the backlog is one segment of 33 MiB
SEGMENT = 64 * MiB
#: seconds the event loop may be held while the backlog drains (a bucket of its lag histogram); the
#: replayed records are checked against OTLP's fields as their batch is read back, CHECK_STEP bytes
#: a turn (the pure-Python twin held the loop 73 ms a batch of 2,730 checked at once)
STALL = 0.05


def backlog_request(n: int) -> bytes:
    """The ``n``-th request of the previous run: one span of a checkout service, trace id ``n``."""
    request = ExportTraceServiceRequest()
    resource = request.resource_spans.add()
    resource.resource.attributes.append(KeyValue(key="service.name", value=AnyValue(string_value="checkout")))
    span = resource.scope_spans.add().spans.add()
    span.trace_id = n.to_bytes(16, "big")
    span.span_id = (n + 1).to_bytes(8, "big")
    span.name = "replayed"
    span.start_time_unix_nano = 1_700_000_000_000_000_000 + n
    span.end_time_unix_nano = span.start_time_unix_nano + 1_000_000
    for key in ("http.route", "http.method", "net.peer.name"):
        span.attributes.append(KeyValue(key=key, value=AnyValue(string_value=f"/{key}/value/{n % 97}")))
    return request.SerializeToString()


async def write_backlog(directory: Path) -> None:
    """What the previous run left: RECORDS requests accepted, none sent."""
    disk = DiskQueue(str(directory), lanes=(frozenset(Signal),), max_bytes=1 << 30, segment_bytes=SEGMENT)
    disk.open()
    try:
        for start in range(0, RECORDS, 10_000):  # its appends waiting together share one sync
            await asyncio.gather(*(disk.append(Signal.TRACES, 1, backlog_request(n))
                                   for n in range(start, min(start + 10_000, RECORDS))))
    finally:
        disk.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def replayed_ids(upstream: Upstream) -> list[int]:
    return [int.from_bytes(span.trace_id, "big") for span in upstream.spans() if span.name == "replayed"]


def spans_received(upstream: Upstream) -> int:
    return sum(len(ss.spans) for m in upstream.messages(Signal.TRACES) for rs in m.resource_spans
               for ss in rs.scope_spans)


@pytest.mark.timeout(120)
async def test_a_backlog_written_under_a_larger_queue_is_replayed_within_the_memory_limit(tmp_path: Path) -> None:
    """Before: peak RSS 107 MiB once started (a limit of 80 MiB), every new request refused (503:
    the queue held 150,000 requests, more than the 5,461 it may). Now the scan holds 64 KiB of the
    segment at a time and 2,730 records are queued, the other 147,270 wait on disk: peak 48-51 MiB,
    health and new OTLP requests served while the upstream is down, and once it is up every record
    arrives, once."""
    queue_dir = tmp_path / "queue"
    await write_backlog(queue_dir)
    upstream_port = free_port()  # nothing listens there until the upstream comes up below
    async with BoundedSidecar(
        "grpc",
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{upstream_port}",
        SIDECAR_EXPORTER_DISK_QUEUE_DIR=str(queue_dir),
        SIDECAR_EXPORTER_DISK_QUEUE_SEGMENT_BYTES=str(SEGMENT),
        SIDECAR_EXPORTER_QUEUE_MAX_BYTES=str(QUEUE),
        SIDECAR_EXPORTER_CIRCUIT_MAX_OPEN_FOR="1s",
        SIDECAR_LIMITS_MAX_MEMORY_BYTES=str(CEILING),
        SIDECAR_LIMITS_BUDGET_BYTES=str(BUDGET),
        SIDECAR_LIMITS_CONNECTION_SHARE_BYTES=str(BUDGET),
    ) as sc:
        started = sc.assert_peak_under(CEILING)  # the replay is scanned and queued before the sidecar is up
        assert f"disk queue: replaying {RECORDS} records" in sc.log, sc.log
        assert f"{REPLAY} queued now, {RECORDS - REPLAY} wait on disk" in sc.log, sc.log
        assert await sc.metric("otlp_sidecar_disk_queue_waiting_records") == RECORDS - REPLAY
        assert await sc.metric("otlp_sidecar_queue_size_items", signal="traces") == REPLAY
        # the upstream is down: a normal client is served, its requests accepted (onto the disk)
        async with Probe(sc, "http", interval=0.1) as probe, Probe(sc, "health", interval=0.1) as health:
            await asyncio.sleep(1.5)
        probe.assert_served(max_latency=1.0, min_ok=5)
        health.assert_served(max_latency=1.0, min_ok=5)
        accepted = await sc.metric("otlp_sidecar_receiver_accepted_items_total", signal="traces", transport="http")
        assert accepted >= 3 * 5
        # the upstream comes up: everything arrives, once, in batches of thousands of records
        # read back and acknowledged on the event loop without holding it (38-62 ms a batch before
        # they were read and acknowledged a run at a time; 8-14 ms since)
        late_before = await sc.late_checks()
        upstream = Upstream()
        await upstream.start(grpc_port=upstream_port)
        try:
            deadline = time.monotonic() + 60
            while spans_received(upstream) < RECORDS + accepted and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            await asyncio.sleep(0.5)  # nothing more comes
            ids = replayed_ids(upstream)
            assert len(ids) == RECORDS and set(ids) == set(range(RECORDS)), (len(ids), len(set(ids)))
            assert spans_received(upstream) - len(ids) == accepted  # the normal client's, once each
            assert await sc.metric("otlp_sidecar_disk_queue_waiting_records") == 0
            late_after = await sc.late_checks()
            assert late_before is not None and late_after is not None
            late = late_after[STALL] - late_before[STALL]
            assert late == 0, f"the event loop ran {late:g} checks over {STALL} s late during the drain"
        finally:
            await upstream.stop()
        peak = sc.assert_peak_under(CEILING)
        print(f"peak RSS at start {started / MiB:.1f} MiB, in all {peak / MiB:.1f} MiB")
