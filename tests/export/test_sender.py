"""Sender (sidecar.export.sender) with its real queue and exporters, against a real upstream on
loopback (tests/upstream.py) told how to answer: retryable answers are retried with backoff and
Retry-After until delivered, final answers are dropped at once and counted, partial_success is
counted as rejected, retries stop at retry_max_elapsed (not with the disk queue), and drain()
delivers what was accepted or counts what the grace period could not. Every batch ends in the
metrics, sent or failed."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from grpclib.const import Status
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

from sidecar.config import load
from sidecar.export.circuit import State
from sidecar.export.diskqueue import DiskQueue
from sidecar.export.grpc import GrpcExporter
from sidecar.export.http import HttpExporter
from sidecar.export.queue import ExportQueue
from sidecar.export.sender import Exporter, Sender
from sidecar.metrics import SidecarMetrics
from sidecar.signals import Signal
from tests import sdk
from tests.conftest import sidecar_env
from tests.upstream import Answer, Upstream

SPANS = 5
BODY = bytes(encode_spans(sdk.make_spans(SPANS)).SerializeToString())
PROTOCOLS = ["http/protobuf", "grpc"]


@dataclass
class Sending:
    sender: Sender
    queue: ExportQueue
    metrics: SidecarMetrics

    def value(self, name: str, **labels: str) -> float:
        """A sample of the sidecar's registry (0 when not created)."""
        found = self.metrics.registry.get_sample_value(name, {"signal": "traces", **labels})
        return found or 0.0

    def sent(self) -> float:
        return self.value("otlp_sidecar_exporter_sent_items_total")

    def failed(self, reason: str) -> float:
        return self.value("otlp_sidecar_exporter_failed_items_total", reason=reason)

    async def until(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.01)


def failing(http_status: int = 503, grpc_status: Status = Status.UNAVAILABLE, **kwargs: object) -> Answer:
    return Answer(http_status=http_status, grpc_status=grpc_status, **kwargs)  # type: ignore[arg-type]


@asynccontextmanager
async def sending(
    upstream: Upstream, protocol: str = "http/protobuf", disk: DiskQueue | None = None, **settings: str
) -> AsyncIterator[Sending]:
    """A queue (a batch per request; with ``disk``, the disk queue), the exporter the sidecar would
    build for ``protocol`` and a started Sender; drained (1 s grace) and stopped at the end."""
    defaults = {"SIDECAR_EXPORTER_RETRY_INITIAL_INTERVAL": "0.05", "SIDECAR_EXPORTER_RETRY_MAX_INTERVAL": "0.1",
                "SIDECAR_EXPORTER_CIRCUIT_THRESHOLD": "100"}
    config = load(None, env=sidecar_env(upstream, protocol, **{**defaults, **settings})).exporter
    metrics = SidecarMetrics()
    queue = ExportQueue(capacity_bytes=1 << 20, batch_items=1, batch_bytes=1 << 20, batch_timeout=0.01,
                        metrics=metrics, disk=disk)
    exporter: Exporter = GrpcExporter(config) if protocol == "grpc" else HttpExporter(config)
    await exporter.start()
    sender = Sender(queue, exporter, config, metrics)
    sender.start()
    try:
        yield Sending(sender, queue, metrics)
    finally:
        await sender.drain(1.0)
        await exporter.stop()


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_retryable_answers_are_retried_with_backoff_until_delivered_once(upstream, protocol) -> None:
    upstream.script = [failing(), failing()]
    async with sending(upstream, protocol, SIDECAR_EXPORTER_RETRY_INITIAL_INTERVAL="0.1",
                       SIDECAR_EXPORTER_RETRY_MAX_INTERVAL="1") as s:
        started = time.monotonic()
        await s.queue.put(Signal.TRACES, BODY, SPANS)
        await upstream.wait_for(lambda: len(upstream.spans()) == SPANS)
        elapsed = time.monotonic() - started
        await s.until(lambda: s.sent() == SPANS)
    assert upstream.attempts == 3 and len(upstream.spans()) == SPANS  # delivered once
    # backoff with jitter: the first wait is 0.05-0.1 s, the second 0.1-0.2 s
    assert 0.15 <= elapsed < 5
    assert s.value("otlp_sidecar_exporter_retries_total") == 2
    assert s.failed("http_503") == s.failed("grpc_unavailable") == 0
    assert s.sender.last_error == "" and s.sender.healthy


@pytest.mark.parametrize("status", [429, 503])
async def test_retry_after_is_waited_even_when_longer_than_the_backoff(upstream, status) -> None:
    upstream.script = [failing(status, retry_after="1")]
    async with sending(upstream) as s:
        started = time.monotonic()
        await s.queue.put(Signal.TRACES, BODY, SPANS)
        await upstream.wait_for(lambda: len(upstream.spans()) == SPANS)
        elapsed = time.monotonic() - started
    assert 0.95 <= elapsed < 5  # the backoff alone would be under 0.1 s
    assert upstream.attempts == 2


@pytest.mark.parametrize(
    ("protocol", "answer", "reason"),
    [
        ("http/protobuf", failing(400, message="bad data"), "http_400"),
        ("grpc", failing(grpc_status=Status.INVALID_ARGUMENT, message="bad data"), "grpc_invalid_argument"),
    ],
)
async def test_a_final_answer_is_not_retried_and_is_counted_and_the_sender_goes_on(
    upstream, protocol, answer, reason
) -> None:
    upstream.script = [answer]
    async with sending(upstream, protocol) as s:
        await s.queue.put(Signal.TRACES, BODY, SPANS)
        await s.until(lambda: s.failed(reason) == SPANS)
        assert upstream.attempts == 1 and s.sent() == 0
        assert f"{SPANS} spans on a final answer (not retried, per OTLP)" in s.sender.last_drop
        assert "bad data" in s.sender.last_drop
        # an answer about the data says the upstream works: the circuit stays closed
        assert s.sender.breaker_for(Signal.TRACES).state is State.CLOSED
        await s.queue.put(Signal.TRACES, BODY, SPANS)
        await upstream.wait_for(lambda: len(upstream.spans()) == SPANS)
        await s.until(lambda: s.sent() == SPANS)


async def test_a_final_answer_about_the_endpoint_also_counts_against_the_upstream(upstream) -> None:
    upstream.default = failing(404, message="no such path")
    async with sending(upstream, SIDECAR_EXPORTER_CIRCUIT_THRESHOLD="1") as s:
        await s.queue.put(Signal.TRACES, BODY, SPANS)
        await s.until(lambda: s.failed("http_404") == SPANS)
        assert upstream.attempts == 1
        assert s.sender.breaker_for(Signal.TRACES).state is State.OPEN and not s.sender.healthy
        status = s.sender.status()
        assert status["exporter"].startswith("failing: ") and "exporter.endpoint" in status["exporter"]
        assert status["exporter_circuit"] == "open"
        upstream.default = Answer()


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_partial_success_counts_the_rejected_items_and_is_not_retried(upstream, protocol) -> None:
    upstream.script = [Answer(rejected=2, message="2 spans too old")]
    async with sending(upstream, protocol) as s:
        await s.queue.put(Signal.TRACES, BODY, SPANS)
        await s.until(lambda: s.value("otlp_sidecar_exporter_rejected_items_total") == 2)
        assert s.sent() == SPANS - 2
        assert upstream.attempts == 1


async def test_retries_stop_after_retry_max_elapsed_and_the_batch_is_counted(upstream) -> None:
    upstream.default = failing()
    async with sending(upstream, SIDECAR_EXPORTER_RETRY_MAX_ELAPSED="1") as s:
        started = time.monotonic()
        await s.queue.put(Signal.TRACES, BODY, SPANS)
        await s.until(lambda: s.failed("http_503") == SPANS)
        assert time.monotonic() - started < 6
        assert upstream.attempts >= 2
        assert "after retrying for 1 s (exporter.retry_max_elapsed)" in s.sender.last_drop
        assert s.queue.held_bytes == 0  # given up: its room is free again
        upstream.default = Answer()


async def test_retry_max_elapsed_zero_retries_without_a_time_limit(upstream) -> None:
    """0 is the Collector's max_elapsed_time: 0, no limit (it used to mean no retry at all)."""
    upstream.default = failing()
    async with sending(upstream, SIDECAR_EXPORTER_RETRY_MAX_ELAPSED="0") as s:
        await s.queue.put(Signal.TRACES, BODY, SPANS)
        await s.until(lambda: upstream.attempts >= 8)
        assert s.failed("http_503") == 0 and s.sender.last_drop == ""
        upstream.default = Answer()
        await upstream.wait_for(lambda: len(upstream.spans()) == SPANS)
        await s.until(lambda: s.sent() == SPANS)


async def test_with_the_disk_queue_an_outage_longer_than_retry_max_elapsed_loses_nothing(
    upstream, tmp_path: Path,
) -> None:
    """The disk queue is there to ride out an outage: no batch is given up for time, however long
    the upstream is away; it is delivered once the upstream is back."""
    disk = DiskQueue(str(tmp_path), lanes=(frozenset(Signal),), max_bytes=1 << 20)
    disk.open()
    upstream.default = failing()
    try:
        async with sending(upstream, disk=disk, SIDECAR_EXPORTER_RETRY_MAX_ELAPSED="0.2") as s:
            started = time.monotonic()
            for _ in range(3):
                await s.queue.put(Signal.TRACES, BODY, SPANS)
            await s.until(lambda: time.monotonic() - started > 1.0 and upstream.attempts >= 6)
            assert s.failed("http_503") == 0 and s.sender.last_drop == ""
            upstream.default = Answer()
            await upstream.wait_for(lambda: len(upstream.spans()) == 3 * SPANS)
            await s.until(lambda: s.sent() == 3 * SPANS)
    finally:
        disk.close()
    assert s.failed("http_503") == 0


async def test_records_replayed_from_disk_leave_with_otlp_fields_only(upstream, tmp_path: Path) -> None:
    """A disk queue written before an upgrade may hold fields OTLP does not define (the rewriter
    let them through before the egress allowlist): they are dropped when read back, and counted."""
    from sidecar.rewrite._wire import encode_varint

    card = b"4111111111111111"
    smuggled = BODY + encode_varint(77 << 3 | 2) + encode_varint(len(card)) + card
    earlier = DiskQueue(str(tmp_path), lanes=(frozenset(Signal),), max_bytes=1 << 20)
    earlier.open()
    await earlier.append(Signal.TRACES, SPANS, smuggled)
    earlier.close()
    disk = DiskQueue(str(tmp_path), lanes=(frozenset(Signal),), max_bytes=1 << 20)
    replay = disk.open()
    try:
        async with sending(upstream, disk=disk) as s:
            s.queue.restore(replay)
            await upstream.wait_for(lambda: len(upstream.spans()) == SPANS)
            assert s.value("otlp_sidecar_processor_unknown_fields_dropped_total") == 1
    finally:
        disk.close()
    assert card not in b"".join(m.SerializeToString() for m in upstream.messages(Signal.TRACES))


async def test_a_replayed_record_that_is_not_a_request_is_counted_and_the_worker_goes_on(
    upstream, tmp_path: Path,
) -> None:
    earlier = DiskQueue(str(tmp_path), lanes=(frozenset(Signal),), max_bytes=1 << 20)
    earlier.open()
    await earlier.append(Signal.TRACES, SPANS, b"\x0b not protobuf")
    earlier.close()
    disk = DiskQueue(str(tmp_path), lanes=(frozenset(Signal),), max_bytes=1 << 20)
    replay = disk.open()
    try:
        async with sending(upstream, disk=disk, SIDECAR_EXPORTER_CONCURRENCY="1") as s:
            s.queue.restore(replay)
            await s.until(lambda: s.failed("disk_read") == SPANS)
            await s.queue.put(Signal.TRACES, BODY, SPANS)  # the one worker is still there
            await upstream.wait_for(lambda: len(upstream.spans()) == SPANS)
    finally:
        disk.close()


async def test_drain_delivers_everything_accepted_before_it(upstream) -> None:
    upstream.default = Answer(delay=0.1)
    async with sending(upstream) as s:
        for _ in range(4):
            await s.queue.put(Signal.TRACES, BODY, SPANS)
        await s.sender.drain(5.0)
        assert len(upstream.spans()) == 4 * SPANS
        assert s.sent() == 4 * SPANS and s.queue.held_bytes == 0


async def test_drain_counts_what_the_grace_period_could_not_deliver(upstream) -> None:
    upstream.default = failing()
    async with sending(upstream) as s:
        await s.queue.put(Signal.TRACES, BODY, SPANS)
        await s.until(lambda: upstream.attempts >= 1)
        started = time.monotonic()
        await s.sender.drain(0.3)
        assert time.monotonic() - started < 2.5
        assert s.failed("shutdown") == SPANS  # never silently: counted under its own reason
        assert "at shutdown" in s.sender.last_drop
        assert s.sent() == 0


async def test_drain_counts_every_batch_queued_behind_an_open_circuit(upstream, caplog) -> None:
    """SIGTERM during an outage: the workers wait on the open circuit, so most batches are never in
    a worker's hands when the grace period ends; every one of them is counted and logged."""
    upstream.default = failing()
    async with sending(upstream, SIDECAR_EXPORTER_CIRCUIT_THRESHOLD="1", SIDECAR_EXPORTER_CIRCUIT_OPEN_FOR="30",
                       SIDECAR_EXPORTER_CONCURRENCY="2") as s:
        for _ in range(8):
            await s.queue.put(Signal.TRACES, BODY, SPANS)
        await s.until(lambda: s.sender.breaker_for(Signal.TRACES).state is State.OPEN)
        await s.sender.drain(0.3)
        assert s.failed("shutdown") + s.failed("http_503") == 8 * SPANS
        assert s.queue.held_bytes == 0
    assert "never sent (still queued when the grace period ended)" in caplog.text


async def test_drain_with_the_disk_queue_keeps_every_unsent_batch_for_the_next_start(upstream, tmp_path: Path) -> None:
    disk = DiskQueue(str(tmp_path), lanes=(frozenset(Signal),), max_bytes=1 << 20)
    disk.open()
    upstream.default = failing()
    try:
        async with sending(upstream, disk=disk, SIDECAR_EXPORTER_CIRCUIT_THRESHOLD="1",
                           SIDECAR_EXPORTER_CIRCUIT_OPEN_FOR="30") as s:
            for _ in range(8):
                await s.queue.put(Signal.TRACES, BODY, SPANS)
            await s.until(lambda: s.sender.breaker_for(Signal.TRACES).state is State.OPEN)
            await s.sender.drain(0.3)
            assert s.failed("shutdown") == 0 and s.queue.held_bytes == 0
    finally:
        disk.close()
    again = DiskQueue(str(tmp_path), lanes=(frozenset(Signal),), max_bytes=1 << 20)
    try:
        assert sum(record.items for record in again.open()) == 8 * SPANS
    finally:
        again.close()


async def test_a_request_the_disk_queue_cannot_read_back_is_counted_and_the_worker_goes_on(
    upstream, tmp_path: Path
) -> None:
    """A spilled request whose file is gone (removed under the sidecar, or a disk error) is counted
    as failed (`disk_read`); the worker does not die with it, and what comes next is sent."""
    lanes = (frozenset({Signal.TRACES, Signal.METRICS}), frozenset({Signal.LOGS}))
    earlier = DiskQueue(str(tmp_path), lanes=lanes, max_bytes=1 << 20)
    earlier.open()
    await earlier.append(Signal.TRACES, SPANS, BODY)
    earlier.close()
    disk = DiskQueue(str(tmp_path), lanes=(frozenset(Signal),), max_bytes=1 << 20)
    replay = disk.open()  # the earlier configuration's log is drained
    shutil.rmtree(tmp_path / "upstream-traces+metrics")
    try:
        async with sending(upstream, disk=disk, SIDECAR_EXPORTER_CONCURRENCY="1") as s:
            s.queue.restore(replay)
            await s.until(lambda: s.failed("disk_read") == SPANS)
            assert "unreadable in the disk queue" in s.sender.last_drop
            await s.queue.put(Signal.TRACES, BODY, SPANS)  # the one worker is still there
            await upstream.wait_for(lambda: len(upstream.spans()) == SPANS)
    finally:
        disk.close()
