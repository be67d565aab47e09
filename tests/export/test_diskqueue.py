"""The on-disk queue's logs per upstream and its budget (sidecar.export.diskqueue): an upstream
that stays down fills its part of the disk, not the others'; what an earlier configuration left
on disk is sent where its signals go now; a budget smaller than a segment still frees its bytes."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from sidecar.configkit import ConfigError
from sidecar.export.diskqueue import DiskFull, DiskQueue
from sidecar.export.queue import ExportQueue
from sidecar.metrics import SidecarMetrics
from sidecar.signals import Signal
from tests.conftest import sidecar_env

ONE = (frozenset(Signal),)
TWO = (frozenset({Signal.TRACES, Signal.METRICS}), frozenset({Signal.LOGS}))
THREE = (frozenset({Signal.TRACES}), frozenset({Signal.METRICS}), frozenset({Signal.LOGS}))
SEGMENT = 64 * 1024  # the smallest the setting allows


def open_queue(path: Path, lanes: tuple[frozenset[Signal], ...], max_bytes: int = 1 << 20,
               registry: CollectorRegistry | None = None) -> tuple[DiskQueue, list]:
    disk = DiskQueue(str(path), lanes=lanes, max_bytes=max_bytes, segment_bytes=SEGMENT, registry=registry)
    return disk, disk.open()


def segments(path: Path) -> list[str]:
    """The segment files under ``path``, as paths relative to it."""
    return sorted(str(p.relative_to(path)) for p in path.rglob("segment-*.log"))


async def test_an_upstream_that_stays_down_fills_its_share_of_the_disk_and_the_others_go_on(tmp_path: Path) -> None:
    """The logs' upstream is down (nothing of the logs leaves) while traces leave as fast as they
    come: traces are never refused, through many times the budget, and the logs are refused once
    they hold what they may (3/4 of the budget with two upstreams)."""
    registry = CollectorRegistry()
    disk, _ = open_queue(tmp_path, TWO, registry=registry)
    held_logs, refusal, traces_held = 0, "", 0
    for n in range(400):
        trace = await disk.append(Signal.TRACES, 1, b"t" * 9000)  # ~9 kB, sent at once
        disk.ack(trace)
        if not refusal:
            try:
                await disk.append(Signal.LOGS, 1, b"l" * 9000)  # never sent
                held_logs += 1
            except DiskFull as exc:
                refusal, traces_held = str(exc), disk.lane_bytes(Signal.TRACES)
        assert disk.lane_bytes(Signal.TRACES) <= SEGMENT, n  # only the segment being written
    assert refusal.startswith("disk queue is full for logs ("), refusal
    # what the traces' reserve still needs: their segment being written holds what was sent in it
    assert f"{(1 << 20) // 4 - traces_held} of the 1048576 kept for the other upstreams" in refusal, refusal
    assert 3 * (1 << 20) // 4 - 9100 < disk.lane_bytes(Signal.LOGS) <= 3 * (1 << 20) // 4
    assert held_logs == disk.lane_bytes(Signal.LOGS) // 9017
    # each upstream's log in its own directory; the traces' sent segments are deleted
    files = segments(tmp_path)
    assert all(f.startswith(("upstream-logs/", "upstream-traces+metrics/")) for f in files), files
    assert sum(f.startswith("upstream-traces+metrics/") for f in files) == 1
    # the traces' segment being written, all of it sent, is not held for anything: not counted
    assert registry.get_sample_value("otlp_sidecar_disk_queue_size_bytes") == disk.lane_bytes(Signal.LOGS)
    assert registry.get_sample_value("otlp_sidecar_disk_queue_capacity_bytes") == 1 << 20
    disk.close()


async def test_upstreams_that_are_down_cannot_take_the_disk_reserve_of_one_that_is_up(tmp_path: Path) -> None:
    disk, _ = open_queue(tmp_path, THREE, max_bytes=1 << 20)
    for signal in (Signal.TRACES, Signal.METRICS):  # both down: they fill what they may, in turn
        with pytest.raises(DiskFull, match=f"full for {signal.value}"):
            for _ in range(200):
                await disk.append(signal, 1, b"x" * 8000)
    reserve = (1 << 20) // 6
    assert disk.bytes >= (1 << 20) - reserve - 8100
    kept = [await disk.append(Signal.LOGS, 1, b"l" * 8000) for _ in range(reserve // 8017)]
    with pytest.raises(DiskFull, match="disk queue is full"):
        await disk.append(Signal.LOGS, 1, b"l" * 8000)
    assert len(kept) == 21 and disk.lane_bytes(Signal.LOGS) > reserve - 8017  # its reserve, whole
    disk.close()


async def test_what_an_earlier_configuration_left_is_replayed_to_where_its_signals_go_now(tmp_path: Path) -> None:
    """One upstream, then the logs sent to their own (the directory itself, then a log per upstream),
    then one upstream again: every record not sent is replayed, once, with its signal; the old
    logs are written no more and are gone once drained."""
    disk, _ = open_queue(tmp_path, ONE)
    for signal in Signal:
        await disk.append(signal, 2, f"{signal.value}-1".encode())
    disk.close()
    assert segments(tmp_path) == ["segment-0000000001.log"]

    registry = CollectorRegistry()
    disk, replay = open_queue(tmp_path, TWO, registry=registry)
    assert [(r.signal, disk.read(r)) for r in replay] == [(s, f"{s.value}-1".encode()) for s in Signal]
    assert registry.get_sample_value("otlp_sidecar_disk_queue_replayed_records_total") == 3
    # the old log counts in the budget, its records in their upstreams' parts
    assert disk.lane_bytes(Signal.LOGS) == 17 + len(b"logs-1")
    assert disk.bytes == 3 * 17 + len(b"traces-1metrics-1logs-1")
    new = await disk.append(Signal.LOGS, 1, b"logs-2")
    assert segments(tmp_path) == [
        "segment-0000000001.log", "upstream-logs/segment-0000000001.log",
        "upstream-traces+metrics/segment-0000000001.log",
    ]
    disk.ack(replay[0])  # traces sent; metrics and logs not yet: shutdown
    disk.close()

    disk, replay = open_queue(tmp_path, TWO)
    assert [disk.read(r) for r in replay] == [b"metrics-1", b"logs-1", b"logs-2"]
    for record in replay:
        disk.ack(record)
    # the directory's own segment is gone; each upstream's log started a new segment at the start
    assert segments(tmp_path) == ["upstream-logs/segment-0000000002.log",
                                  "upstream-traces+metrics/segment-0000000002.log"]
    await disk.append(Signal.METRICS, 1, b"metrics-3")
    disk.close()
    assert new.log == 1

    disk, replay = open_queue(tmp_path, ONE)  # back to one upstream
    assert [(r.signal, disk.read(r)) for r in replay] == [(Signal.METRICS, b"metrics-3")]
    disk.ack(replay[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lock", "segment-0000000001.log"]  # the new log only
    disk.close()


async def test_a_budget_smaller_than_a_segment_frees_what_was_sent(tmp_path: Path) -> None:
    """The smallest budget (1 MiB) under the default segment (16 MiB): the segment being written
    is never full, and what was sent must still make room."""
    disk = DiskQueue(str(tmp_path), lanes=ONE, max_bytes=1 << 20)  # segment: the default 16 MiB
    disk.open()
    for _ in range(40):  # 4 MiB through a 1 MiB budget
        disk.ack(await disk.append(Signal.TRACES, 1, b"t" * 100_000))
    held = [await disk.append(Signal.TRACES, 1, b"t" * 100_000) for _ in range(10)]
    with pytest.raises(DiskFull, match=r"disk queue is full \(1000170 of 1048576 bytes held\)"):
        await disk.append(Signal.TRACES, 1, b"t" * 100_000)  # what was not sent is never freed
    assert len(held) == 10
    disk.close()


def test_the_memory_queue_and_the_disk_queue_have_the_same_upstreams(tmp_path: Path) -> None:
    disk = DiskQueue(str(tmp_path), lanes=TWO, max_bytes=1 << 20)
    with pytest.raises(ValueError, match="lanes"):
        ExportQueue(capacity_bytes=1 << 20, batch_items=10, batch_bytes=1 << 20, batch_timeout=1.0,
                    metrics=SidecarMetrics(), disk=disk, lanes=ONE)


async def test_a_refused_upstream_does_not_rotate_the_others_segments(tmp_path: Path) -> None:
    """Deleting another upstream's segment being written (all of it sent) cannot make room for one
    refused for its own share: each refusal must not seal, sync and recreate it."""
    disk, _ = open_queue(tmp_path, TWO)
    with pytest.raises(DiskFull):
        for _ in range(1000):
            await disk.append(Signal.LOGS, 1, b"l" * 9000)  # the logs' upstream is down
    first = await disk.append(Signal.TRACES, 1, b"t" * 100)
    disk.ack(first)
    for _ in range(50):
        with pytest.raises(DiskFull, match="full for logs"):
            await disk.append(Signal.LOGS, 1, b"l" * 9000)
        last = await disk.append(Signal.TRACES, 1, b"t" * 100)
        disk.ack(last)
    assert last.segment == first.segment
    disk.close()


async def test_one_process_at_a_time_uses_the_directory(tmp_path: Path) -> None:
    """A second sidecar on the same directory (a volume two pods share) would delete segments the
    first is still writing to: it is refused until the first has closed."""
    first, _ = open_queue(tmp_path, ONE)
    second = DiskQueue(str(tmp_path), lanes=ONE, max_bytes=1 << 20)
    with pytest.raises(OSError, match="in use by another sidecar process"):
        second.open()
    accepted = await first.append(Signal.TRACES, 1, b"accepted by the first")
    first.close()
    assert [second.read(r) for r in second.open()] == [b"accepted by the first"] and accepted
    second.close()


async def test_records_of_an_earlier_grouping_count_until_they_leave_and_the_refusal_says_so(tmp_path: Path) -> None:
    """One upstream whose logs could not be sent filled the disk; the logs then get an upstream of
    their own. The old log is not anyone's share: until its records leave, the budget is what
    holds, and the refusal says why."""
    disk, _ = open_queue(tmp_path, ONE)
    with pytest.raises(DiskFull):
        for _ in range(200):
            await disk.append(Signal.LOGS, 1, b"l" * 9000)
    disk.close()
    disk, replay = open_queue(tmp_path, TWO)
    with pytest.raises(DiskFull, match="bytes of it were written when the upstreams were grouped otherwise"):
        await disk.append(Signal.TRACES, 1, b"t" * 9000)
    for record in replay[:10]:  # the logs' new upstream takes some
        disk.ack(record)
    await disk.append(Signal.TRACES, 1, b"t" * 9000)
    disk.close()


async def test_a_second_sidecar_on_the_directory_refuses_to_start_and_says_why(
    upstream, start_sidecar, tmp_path: Path
) -> None:
    env = sidecar_env(upstream, "grpc", SIDECAR_EXPORTER_DISK_QUEUE_DIR=str(tmp_path / "queue"))
    await start_sidecar(env)
    with pytest.raises(ConfigError, match=r"exporter.disk_queue_dir: cannot use .*queue: in use by another sidecar"):
        await start_sidecar(env)


async def test_the_size_gauge_reads_empty_once_everything_left(tmp_path: Path) -> None:
    """An outage walk found the gauge near full after the backlog was delivered: the segment being
    written to stays on disk until room is needed, though nothing in it is waiting."""
    registry = CollectorRegistry()
    disk, _ = open_queue(tmp_path, (frozenset(Signal),), registry=registry)
    records = [await disk.append(Signal.LOGS, 1, b"l" * 9000) for _ in range(20)]
    gauge = "otlp_sidecar_disk_queue_size_bytes"
    assert registry.get_sample_value(gauge) == disk.bytes > 0
    for record in records[:-1]:
        disk.ack(record)
    assert registry.get_sample_value(gauge) == disk.bytes  # one record still waits: the segment is held
    disk.ack(records[-1])
    assert registry.get_sample_value(gauge) == 0 and disk.bytes > 0
    disk.close()


async def test_a_replay_is_shared_between_the_upstreams_and_one_that_stays_down_keeps_only_its_part(
    tmp_path: Path,
) -> None:
    """1,000 records wait in each upstream's log; a replay of 100 at once takes 50 of each. The logs'
    upstream stays down (nothing of theirs leaves) while the traces leave: what they free goes to the
    traces' log again, never to the logs, which would end up holding every place."""
    disk, _ = open_queue(tmp_path, TWO, max_bytes=8 << 20)
    await asyncio.gather(*(disk.append(signal, 1, f"{signal.value}-{n:04d}".encode())
                           for n in range(1000) for signal in (Signal.TRACES, Signal.LOGS)))
    disk.close()
    disk = DiskQueue(str(tmp_path), lanes=TWO, max_bytes=8 << 20, segment_bytes=SEGMENT)
    first = disk.open(limit=100)
    assert Counter(record.signal for record in first) == {Signal.TRACES: 50, Signal.LOGS: 50}
    traces = [record for record in first if record.signal is Signal.TRACES]
    sent: list[bytes] = []
    while True:
        for record in traces:
            sent.append(disk.read(record))
            disk.ack(record)
        if len(sent) == 1000:
            break
        traces = disk.take(len(traces))
        assert [record.signal for record in traces] == [Signal.TRACES] * 50
    assert sent == [f"traces-{n:04d}".encode() for n in range(1000)]
    # the traces are all sent: what is freed now goes to the logs
    assert [disk.read(record) for record in disk.take(10)] == [f"logs-{n:04d}".encode() for n in range(50, 60)]
    disk.close()


def span_request(n: int) -> bytes:
    """An ExportTraceServiceRequest of one span whose trace id is ``n``."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    request = ExportTraceServiceRequest()
    span = request.resource_spans.add().scope_spans.add().spans.add()
    span.trace_id = n.to_bytes(16, "big")
    span.span_id = (n + 1).to_bytes(8, "big")
    span.name = "replayed"
    return request.SerializeToString()


async def test_a_restart_queues_a_bounded_part_of_the_replay_and_sends_all_of_it_once(
    upstream, start_sidecar, tmp_path: Path,
) -> None:
    """A previous run filled the disk queue during an outage under a larger exporter.queue_max_bytes
    (4,000 requests); the sidecar restarts with 1 MiB, which keeps track of 1,365 requests (~192 bytes
    of memory each). Before, all 4,000 were queued at start (700,000 took 134 MiB: an OOM kill at
    every start) and every new request was refused (the queue held more than it may). Now 682 are
    queued, the others wait on disk, a new request is accepted while the upstream is still down, and
    once it is up every record arrives once."""
    import aiohttp
    from grpclib.const import Status

    from tests.upstream import Answer

    count, queue_dir = 4000, tmp_path / "queue"
    earlier, _ = open_queue(queue_dir, ONE, max_bytes=64 << 20)
    await asyncio.gather(*(earlier.append(Signal.TRACES, 1, span_request(n)) for n in range(count)))
    earlier.close()
    upstream.default = Answer(grpc_status=Status.UNAVAILABLE, http_status=503)  # still down
    sidecar = await start_sidecar(sidecar_env(
        upstream, "grpc", SIDECAR_EXPORTER_DISK_QUEUE_DIR=str(queue_dir), SIDECAR_EXPORTER_QUEUE_MAX_BYTES="1MiB"))
    value = sidecar.metrics.registry.get_sample_value
    assert value("otlp_sidecar_queue_size_items", {"signal": "traces"}) == 682
    assert value("otlp_sidecar_disk_queue_waiting_records") == count - 682
    assert value("otlp_sidecar_disk_queue_replayed_records_total") == count
    url = f"http://127.0.0.1:{sidecar.addresses['http'][1]}/v1/traces"
    async with aiohttp.ClientSession() as session, session.post(
        url, data=span_request(count), headers={"Content-Type": "application/x-protobuf"},
    ) as response:
        assert response.status == 200, await response.text()
    await asyncio.sleep(0.3)  # a few attempts fail meanwhile
    assert value("otlp_sidecar_queue_size_items", {"signal": "traces"}) == 683
    upstream.default = Answer()
    await upstream.wait_for(lambda: len(upstream.spans()) >= count + 1, timeout=30)
    await asyncio.sleep(0.2)
    trace_ids = sorted(int.from_bytes(span.trace_id, "big") for span in upstream.spans())
    assert trace_ids == list(range(count + 1))  # every one, once
    assert value("otlp_sidecar_disk_queue_waiting_records") == 0


def test_segments_a_sidecar_that_does_not_mask_wrote_are_held_by_one_that_masks(tmp_path: Path) -> None:
    """Found in a misconfiguration review: a backlog written in dry_run mode (as it came) was replayed
    by the next start in enforce mode, card numbers and all. The segments a sidecar that does not mask
    writes are marked; one that masks holds them unsent (an ERROR, a gauge); one that does not sends them."""
    registry = CollectorRegistry()
    queue_dir = tmp_path / "queue"
    unmasked = DiskQueue(str(queue_dir), lanes=ONE, max_bytes=1 << 20, segment_bytes=SEGMENT, masks=False)
    unmasked.open()
    asyncio.run(unmasked.append(Signal.TRACES, 1, span_request(7)))
    unmasked.close()
    assert len(list(queue_dir.glob("segment-*.unmasked"))) == 1
    masking = DiskQueue(str(queue_dir), lanes=ONE, max_bytes=1 << 20, segment_bytes=SEGMENT, registry=registry,
                        masks=True)
    assert masking.open() == [] and masking.waiting == 0
    assert registry.get_sample_value("otlp_sidecar_disk_queue_held_unmasked_records") == 1
    assert masking.bytes > 0  # on disk, counted against the disk queue's size
    asyncio.run(masking.append(Signal.TRACES, 1, span_request(8)))
    with pytest.raises(DiskFull, match="bytes of it are records a sidecar that did not mask accepted, held unsent"):
        asyncio.run(masking.append(Signal.TRACES, 1, b"x" * ((1 << 20) - masking.bytes)))
    masking.close()
    assert len(segments(queue_dir)) == 2  # the held one, and the masking one's own
    again = DiskQueue(str(queue_dir), lanes=ONE, max_bytes=1 << 20, segment_bytes=SEGMENT, masks=False)
    records = again.open()  # the held one, then what the masking one accepted (masked, as all it sends)
    assert [again.read(record) for record in records] == [span_request(7), span_request(8)]
    for record in records:
        again.ack(record)
    again.close()


async def test_a_backlog_accepted_in_dry_run_mode_leaves_only_in_that_mode(upstream, tmp_path: Path) -> None:
    """End to end, three starts on one disk queue: dry_run with the upstream down accepts a span
    holding a card number; enforce sends what it accepts itself, masked, and holds the backlog;
    dry_run again sends the backlog as it was accepted."""
    import aiohttp
    from grpclib.const import Status

    from sidecar import config as config_mod
    from sidecar.app import Sidecar
    from tests.upstream import Answer

    card, queue_dir = "4111 1111 1111 1111", tmp_path / "queue"

    async def run(mode: str, name: str, then_up: bool = False) -> Sidecar:
        env = sidecar_env(upstream, "grpc", SIDECAR_EXPORTER_DISK_QUEUE_DIR=str(queue_dir), SIDECAR_POLICY_MODE=mode)
        sidecar = Sidecar(config_mod.load(None, env=env))
        await sidecar.start()
        url = f"http://127.0.0.1:{sidecar.addresses['http'][1]}/v1/traces"
        body = (f'{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{{"traceId":"{"1" * 32}","spanId":"{"2" * 16}",'
                f'"name":"{name}","status":{{"code":2}},"attributes":[{{"key":"note","value":{{"stringValue":'
                f'"paid with {card}"}}}}]}}]}}]}}]}}')
        async with aiohttp.ClientSession() as session, session.post(
            url, data=body, headers={"Content-Type": "application/json"}) as response:
            assert response.status == 200, await response.text()
        return sidecar

    def notes() -> dict[str, str]:
        return {span.name: span.attributes[0].value.string_value for span in upstream.spans()}

    upstream.default = Answer(grpc_status=Status.UNAVAILABLE, http_status=503)
    dry = await run("dry_run", "accepted in dry_run")
    await dry.stop(grace=0.5)  # the upstream is down: the span stays on disk
    upstream.default = Answer()
    enforcing = await run("enforce", "accepted in enforce")
    try:
        await upstream.wait_for(lambda: "accepted in enforce" in notes())
        await asyncio.sleep(0.5)  # time for a replay to arrive, were there one
        assert notes() == {"accepted in enforce": "paid with **** **** **** 1111"}
        value = enforcing.metrics.registry.get_sample_value
        assert value("otlp_sidecar_disk_queue_held_unmasked_records") == 1
    finally:
        await enforcing.stop(grace=2.0)
    dry = await run("dry_run", "accepted in dry_run again")
    try:
        await upstream.wait_for(lambda: len(notes()) == 3)
        assert notes()["accepted in dry_run"] == f"paid with {card}"  # as it was accepted: dry_run masks nothing
    finally:
        await dry.stop(grace=2.0)
