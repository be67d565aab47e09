"""A model-based test of the export queue over the on-disk queue (sidecar.export.queue, .diskqueue,
.disklog): random sequences of operations, one fixed seed each, checked against a model of what the
callers were told.

The promise under test is durability: a request ``put`` returned for (the app was told "accepted")
is never lost, whatever happens between (spills to disk, segments rolled and deleted, batches held
in flight, graceful restarts that hand unsent batches back with ``keep_on_disk``, crashes that hand
nothing back, replays larger than the queue keeps track of, the upstreams grouped otherwise from
one start to the next); and within one run no request is handed out twice. Across runs a request
may come again (at least once); here every acknowledgement is written before a restart, so the
replay must be what was accepted and not yet delivered (and perhaps puts cancelled at a stop, whose
callers were told nothing), no more.

Each request is a real OTLP request (traces, metrics or logs) carrying a unique id (the span name,
the metric name, the log body), decoded with the protobuf classes of ``opentelemetry.proto`` when
its batch is delivered. The operations: put (awaited, or started as a task that runs concurrently
with the others), take a ready batch of a lane and deliver it or hold it in flight, deliver a batch
held, an upstream going down or up, a turn of the event loop (the steps that queue records waiting
on disk run there), a wait past the batch timeout, a graceful restart and a crash. After each one
the bounds are checked: the records kept track of (``max_records``; the constants are made small so
that it binds), the memory capacity, the disk budget, the queue's bookkeeping against the batches it
holds, and with several lanes that a refusal never hits a lane holding less than its reserve (module
docstrings of queue.py, shares.py, diskqueue.py). At the end everything is drained, and a reopened
disk queue has nothing left to replay and no segment but the one each log starts.

The seed fixes every random choice; the interleaving with the disk's syncs (run in a thread) and the
batch timers is real time, so a failure may take a few runs to come again. What the model found is
kept below, each as a minimal reproduction: a down upstream taking the others' reserve of
``max_records`` through records taken from disk, and acknowledgements appended after a cut one read
shifted at the next start (a loss); both are fixed.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from prometheus_client import CollectorRegistry

from sidecar.export import disklog
from sidecar.export import queue as queue_module
from sidecar.export.disklog import Record, record_size
from sidecar.export.diskqueue import DiskQueue
from sidecar.export.queue import Batch, ExportQueue, QueueClosed, QueueFull
from sidecar.metrics import SidecarMetrics
from sidecar.signals import Signal

Lanes = tuple[frozenset[Signal], ...]
ONE_UPSTREAM: Lanes = (frozenset(Signal),)
TWO_UPSTREAMS: Lanes = (frozenset({Signal.TRACES, Signal.METRICS}), frozenset({Signal.LOGS}))
SEEDS = range(20)
OPERATIONS = 320


def make_request(signal: Signal, ident: str, pad: int) -> bytes:
    """A valid Export*ServiceRequest of one item named ``ident``, with ``pad`` bytes of attribute."""
    filler = "p" * pad
    if signal is Signal.TRACES:
        traces = ExportTraceServiceRequest()
        span = traces.resource_spans.add().scope_spans.add().spans.add()
        span.name = ident
        span.trace_id = ident.encode().rjust(16, b"\0")[-16:]
        span.span_id = b"\1" * 8
        if pad:
            span.attributes.add(key="pad").value.string_value = filler
        return traces.SerializeToString()
    if signal is Signal.METRICS:
        metrics = ExportMetricsServiceRequest()
        metric = metrics.resource_metrics.add().scope_metrics.add().metrics.add()
        metric.name = ident
        metric.description = filler
        metric.gauge.data_points.add(as_int=1)
        return metrics.SerializeToString()
    logs = ExportLogsServiceRequest()
    record = logs.resource_logs.add().scope_logs.add().log_records.add()
    record.body.string_value = ident
    if pad:
        record.attributes.add(key="pad").value.string_value = filler
    return logs.SerializeToString()


def read_id(signal: Signal, data: bytes) -> str:
    """The id carried by a request made by :func:`make_request` (one resource, scope and item)."""
    if signal is Signal.TRACES:
        (resource,) = ExportTraceServiceRequest.FromString(data).resource_spans
        ((span,),) = (scope.spans for scope in resource.scope_spans)
        return str(span.name)
    if signal is Signal.METRICS:
        (resource,) = ExportMetricsServiceRequest.FromString(data).resource_metrics
        ((metric,),) = (scope.metrics for scope in resource.scope_metrics)
        return str(metric.name)
    (resource,) = ExportLogsServiceRequest.FromString(data).resource_logs
    ((record,),) = (scope.log_records for scope in resource.scope_logs)
    return str(record.body.string_value)


def record_key(record: Record) -> tuple[int, int, int]:
    """Where a record is on disk: the same place twice in the queue is the same request twice."""
    return record.log, record.segment, record.offset


@dataclass
class Settings:
    """One seed's sizes: small, so that requests spill, segments roll and the bounds bind; the replay's
    read sizes small too, so that its pieces and runs end inside records and acknowledgement files."""

    capacity: int
    batch_items: int
    batch_bytes: int
    batch_timeout: float
    disk_bytes: int
    segment_bytes: int
    min_records: int
    take_step: int
    read_bytes: int
    acks_at_once: int
    read_run_bytes: int

    @classmethod
    def draw(cls, rng: random.Random) -> Settings:
        """The seed's settings, drawn first from its generator."""
        return cls(
            capacity=rng.choice([4096, 8192, 16384]),
            batch_items=rng.randint(1, 6),
            batch_bytes=rng.choice([1024, 4096, 16384]),
            batch_timeout=rng.choice([0.002, 0.005, 0.01]),
            disk_bytes=rng.choice([24 << 10, 64 << 10, 256 << 10]),
            segment_bytes=rng.choice([4 << 10, 16 << 10, 64 << 10]),
            min_records=rng.choice([8, 24, 64]),
            take_step=rng.choice([1, 3, 1024]),
            read_bytes=rng.choice([24, 64 << 10]),
            acks_at_once=rng.choice([1, 3, 8192]),
            read_run_bytes=rng.choice([1, 4096, 1 << 20]),
        )


@dataclass
class Model:
    """The queue under test and what its callers were told."""

    rng: random.Random
    path: Path
    settings: Settings
    lanes: Lanes
    switch_lanes: bool
    bodies: dict[str, tuple[Signal, bytes]] = field(default_factory=dict)
    accepted: set[str] = field(default_factory=set)
    #: puts cancelled while in progress (handlers cancelled at a stop): their caller was told nothing, so
    #: they may be delivered or not
    cancelled: set[str] = field(default_factory=set)
    delivered_ever: set[str] = field(default_factory=set)
    delivered_run: set[str] = field(default_factory=set)
    pending: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    held: list[Batch] = field(default_factory=list)
    down: list[bool] = field(default_factory=list)
    stats: Counter[str] = field(default_factory=Counter)
    disk: DiskQueue | None = None
    queue: ExportQueue | None = None
    registry: CollectorRegistry | None = None

    # -- starting and stopping ----------------------------------------------------------------

    def start(self) -> None:
        """Open the disk queue and a new export queue on it, and restore the replay, as the app does."""
        s = self.settings
        self.registry = CollectorRegistry()
        self.disk = DiskQueue(str(self.path), lanes=self.lanes, max_bytes=s.disk_bytes,
                              segment_bytes=s.segment_bytes, registry=self.registry)
        self.queue = ExportQueue(capacity_bytes=s.capacity, batch_items=s.batch_items, batch_bytes=s.batch_bytes,
                                 batch_timeout=s.batch_timeout, metrics=SidecarMetrics(), disk=self.disk,
                                 lanes=self.lanes)
        replay = self.disk.open(limit=self.queue.replay_records)
        unsent, maybe = self.accepted - self.delivered_ever, self.cancelled - self.delivered_ever
        # every acknowledgement was written: the replay is what was accepted and not delivered, and
        # perhaps puts cancelled after their record was written; no more
        found = len(replay) + self.disk.waiting
        assert len(unsent) <= found <= len(unsent) + len(maybe), (len(replay), self.disk.waiting, len(unsent))
        assert len(replay) <= self.queue.replay_records and self.disk.loaded == len(replay)
        assert self.disk.waiting == 0 or len(replay) == self.queue.replay_records
        self.stats["replayed"] += len(replay)
        self.stats["waited_on_disk"] += self.disk.waiting
        self.queue.restore(replay)
        self.delivered_run = set()
        self.held = []
        self.down = [self.rng.random() < 0.3 for _ in self.lanes]

    async def restart(self, *, crash: bool) -> None:
        """Stop as the app does (or die: nothing handed back), then start again."""
        queue, disk = self.q, self.d
        how = self.rng.choice(["settle", "cancel"] if crash else ["settle", "close_then_settle", "cancel"])
        if how == "settle":  # the listeners finish their requests, then the queue is closed
            await self.settle()
            queue.close()
        elif how == "close_then_settle":  # puts past their check finish into the closed queue, the others refused
            queue.close()
            await self.settle()
        else:  # the grace ran out: the handlers still waiting for the disk are cancelled
            queue.close()
            await self.cancel_pending()
        if not crash:
            # the workers: each lane's batches handed out after close, sent (if up) or kept
            for lane in range(len(queue.lanes)):
                while self.rng.random() < 0.5 and (batch := await queue.next_batch(lane)) is not None:
                    if self.down[lane] or self.rng.random() < 0.5:
                        queue.done(batch, keep_on_disk=True)
                    else:
                        self.deliver(batch)
            for batch in self.held:  # in flight when the grace period ended
                queue.done(batch, keep_on_disk=True)
            for batch in queue.leftover():
                queue.done(batch, keep_on_disk=True)
            assert queue.held_bytes == 0 and queue._records == 0, (queue.held_bytes, queue._records)
            assert not any(queue._lane_records) and not any(queue._lane_bytes)
            assert await queue.next_batch(0) is None
        disk.close()
        self.stats["crashes" if crash else "restarts"] += 1
        if self.switch_lanes:
            self.lanes = self.rng.choice([ONE_UPSTREAM, TWO_UPSTREAMS])
        self.start()

    @property
    def q(self) -> ExportQueue:
        assert self.queue is not None
        return self.queue

    @property
    def d(self) -> DiskQueue:
        assert self.disk is not None
        return self.disk

    # -- operations ---------------------------------------------------------------------------

    def new_request(self) -> tuple[str, Signal, bytes]:
        """A request of a random signal with the next id: mostly small, some of a few KB."""
        ident = f"id-{len(self.bodies)}"
        signal = self.rng.choice(list(Signal))
        roll = self.rng.random()
        pad = self.rng.randint(0, 200) if roll < 0.7 else self.rng.randint(200, 2000) if roll < 0.95 else (
            self.rng.randint(2000, 8000))
        data = make_request(signal, ident, pad)
        self.bodies[ident] = (signal, data)
        return ident, signal, data

    async def put(self) -> None:
        """A put awaited, the refusal checked against the lane's shares seen just before."""
        queue, disk = self.q, self.d
        ident, signal, data = self.new_request()
        lane = queue._lane_of[signal]
        record_room = queue._record_shares.room(lane, queue._lane_records, queue._records)
        lane_records = queue._lane_records[lane]
        try:
            await queue.put(signal, data, 1)
        except QueueFull as exc:
            self.stats["refused"] += 1
            if record_room <= 0:
                self.stats["refused_for_records"] += 1
                # an upstream (down) cannot take the count another one needs: its reserve. Records of a
                # log of an earlier grouping are taken for whichever lane their signal is in now,
                # bounded by the whole count only: there a lane may be over its share
                if lane_records < queue._record_shares.reserve:
                    shares = queue._record_shares
                    assert len(disk._logs) > len(disk.lanes), (
                        f"{lane_name(queue, lane)} refused holding {lane_records} records, under its reserve "
                        f"of {shares.reserve} ({queue._lane_records} of {queue.max_records}): {exc}")
                    self.stats["refused_under_reserve_earlier_grouping"] += 1
            else:
                self.stats["refused_for_disk"] += 1
                size = record_size(len(data))
                assert size > disk._room(lane), exc
                if len(disk._logs) == len(disk.lanes):  # no log of an earlier grouping counts in the whole
                    held = disk._held()[lane]
                    assert held + size > disk._shares.reserve, (
                        f"{lane_name(queue, lane)} refused on disk holding {held} bytes, under its reserve "
                        f"of {disk._shares.reserve} ({disk._held()}): {exc}")
            return
        assert record_room > 0
        self.accepted.add(ident)
        self.stats["accepted"] += 1

    def put_concurrently(self) -> None:
        """A put started as a task: it runs at the next turn of the event loop, among the others."""
        ident, signal, data = self.new_request()
        self.pending[ident] = asyncio.ensure_future(self.q.put(signal, data, 1))

    def harvest(self) -> None:
        """The puts started as tasks that finished: accepted, or refused (never another error)."""
        for ident, task in list(self.pending.items()):
            if task.done() and not task.cancelled():
                del self.pending[ident]
                exc = task.exception()
                if exc is None:
                    self.accepted.add(ident)
                    self.stats["accepted"] += 1
                else:
                    assert isinstance(exc, QueueFull | QueueClosed), repr(exc)
                    self.stats["refused"] += 1

    async def settle(self) -> None:
        """Wait for every put started (the app's listeners finish their requests before a stop)."""
        if self.pending:
            await asyncio.wait(self.pending.values())
        self.harvest()

    async def cancel_pending(self) -> None:
        """Cancel the puts still in progress, as the listeners' handlers are cancelled past the grace."""
        self.harvest()
        for task in self.pending.values():
            task.cancel()
        await self.settle()  # those done before the cancel counted as they ended
        for ident, task in list(self.pending.items()):
            del self.pending[ident]
            assert task.cancelled()
            self.cancelled.add(ident)
            self.stats["cancelled"] += 1

    def deliver(self, batch: Batch) -> None:
        """The upstream took the batch: read its requests back, check them, mark it done."""
        self.harvest()  # a put whose record is in a batch has returned
        parts = self.q.parts(batch)
        assert len(parts) == len(batch.records)
        for part in parts:
            ident = read_id(batch.signal, part)
            assert ident in self.bodies, f"unknown request {ident!r}"
            assert self.bodies[ident] == (batch.signal, part), f"{ident} changed on its way"
            assert ident in self.accepted or ident in self.cancelled, f"{ident} delivered though its put did not return"
            assert ident not in self.delivered_run, f"{ident} delivered twice in one run"
            self.delivered_run.add(ident)
            if ident in self.delivered_ever:
                self.stats["delivered_again_after_restart"] += 1
            if ident in self.cancelled:
                self.stats["delivered_cancelled"] += 1
            self.delivered_ever.add(ident)
        self.stats["delivered"] += len(parts)
        self.stats["spilled_parts"] += sum(part is None for part in batch.parts)
        last = max(record.segment for record in batch.records if record is not None)
        self.stats["highest_segment"] = max(self.stats["highest_segment"], last)
        self.q.done(batch)

    async def take(self) -> None:
        """Take the next ready batch of a lane (if any, without waiting): deliver it or hold it."""
        queue = self.q
        lane = self.rng.randrange(len(queue.lanes))
        if not queue._ready[lane]:  # next_batch would wait
            return
        batch = await queue.next_batch(lane)
        assert batch is not None and queue._lane_of[batch.signal] == lane
        if self.down[lane] or self.rng.random() < 0.3:
            queue.parts(batch)  # read (spilled parts from disk), then the send fails: held for later
            self.held.append(batch)
        else:
            self.deliver(batch)

    def deliver_held(self) -> None:
        """A batch held in flight, of an upstream that is up, is sent at last."""
        queue = self.q
        up = [batch for batch in self.held if not self.down[queue._lane_of[batch.signal]]]
        if up:
            batch = self.rng.choice(up)
            self.held.remove(batch)
            self.deliver(batch)

    async def step(self) -> None:
        """One random operation."""
        choice = self.rng.choices(
            ["put", "put_task", "settle", "take", "deliver_held", "flip", "turn", "timeout", "restart", "crash"],
            weights=[30, 12, 3, 28, 10, 2, 8, 2, 1.2, 0.5],
        )[0]
        self.stats[f"op_{choice}"] += 1
        if choice == "put":
            await self.put()
        elif choice == "put_task":
            self.put_concurrently()
        elif choice == "settle":
            await self.settle()
        elif choice == "take":
            await self.take()
        elif choice == "deliver_held":
            self.deliver_held()
        elif choice == "flip":
            lane = self.rng.randrange(len(self.down))
            self.down[lane] = not self.down[lane]
        elif choice == "turn":
            await asyncio.sleep(0)
        elif choice == "timeout":
            await asyncio.sleep(self.settings.batch_timeout * 1.5)
        else:
            await self.restart(crash=choice == "crash")
        self.harvest()
        self.check()

    # -- invariants ---------------------------------------------------------------------------

    def check(self) -> None:
        """The bounds, and the queue's counts against the batches it holds."""
        queue, disk = self.q, self.d
        self.stats["most_records"] = max(self.stats["most_records"], queue._records)
        assert queue._records <= queue.max_records, (queue._records, queue.max_records)
        assert sum(queue._lane_records) == queue._records
        assert 0 <= queue.held_bytes <= queue.capacity_bytes and sum(queue._lane_bytes) == queue.held_bytes
        assert all(0 <= held <= queue.lane_capacity for held in queue._lane_bytes), queue._lane_bytes
        assert disk.bytes <= self.settings.disk_bytes, (disk.bytes, self.settings.disk_bytes)
        in_queue = [*self.held, *(b for ready in queue._ready for b in ready), *queue._open.values()]
        records = [record for batch in in_queue for record in batch.records]
        assert all(record is not None for record in records)
        keys = [record_key(record) for record in records if record is not None]
        assert len(keys) == len(set(keys)), "a record is twice in the queue"
        starting = sum(not task.done() for task in self.pending.values())
        assert len(records) <= queue._records <= len(records) + starting, (len(records), queue._records, starting)
        replayed = sum(record.replayed for record in records if record is not None)
        assert disk.loaded == replayed, (disk.loaded, replayed)
        if disk.waiting:
            self.stats["steps_with_records_waiting"] += 1

    async def drain(self) -> None:
        """Every upstream up: take and deliver everything, until the queue and the disk hold nothing."""
        await self.settle()
        self.down = [False] * len(self.q.lanes)
        for batch in self.held:
            self.deliver(batch)
        self.held = []
        idle = 0
        queue = self.q
        while queue._records or self.d.waiting:
            took = False
            for lane in range(len(queue.lanes)):
                while queue._ready[lane]:
                    batch = await queue.next_batch(lane)
                    assert batch is not None
                    self.deliver(batch)
                    took = True
            idle = 0 if took else idle + 1
            if idle > 50:  # many batch timeouts and nothing to take
                pytest.fail(f"the queue is stuck: {queue._records} records held, {self.d.waiting} waiting on disk")
            await asyncio.sleep(0 if took else self.settings.batch_timeout)
            self.check()


def lane_name(queue: ExportQueue, lane: int) -> str:
    """``logs``, ``metrics+traces``: for messages."""
    return "+".join(sorted(signal.value for signal in queue.lanes[lane]))


async def run_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int, lanes: Lanes,
                    switch_lanes: bool = False) -> Counter[str]:
    """Run OPERATIONS random operations of ``seed``, drain, and check the promise."""
    rng = random.Random(seed)
    settings = Settings.draw(rng)
    monkeypatch.setattr(queue_module, "MIN_RECORDS", settings.min_records)
    monkeypatch.setattr(queue_module, "TAKE_STEP", settings.take_step)
    monkeypatch.setattr(disklog, "READ_BYTES", settings.read_bytes)
    monkeypatch.setattr(disklog, "ACKS_AT_ONCE", settings.acks_at_once)
    monkeypatch.setattr(disklog, "READ_RUN_BYTES", settings.read_run_bytes)
    model = Model(rng, tmp_path / "queue", settings, lanes, switch_lanes)
    model.start()
    for _ in range(OPERATIONS):
        await model.step()
    await model.drain()

    assert model.accepted <= model.delivered_ever, f"lost: {sorted(model.accepted - model.delivered_ever)[:10]}"
    assert model.delivered_ever <= model.accepted | model.cancelled
    queue, disk, registry = model.q, model.d, model.registry
    assert queue.held_bytes == 0 and queue._records == 0 and disk.waiting == 0 and disk.loaded == 0
    assert registry is not None
    assert registry.get_sample_value("otlp_sidecar_disk_queue_size_bytes") == 0
    assert registry.get_sample_value("otlp_sidecar_disk_queue_waiting_records") == 0
    queue.close()
    disk.close()
    reopened = DiskQueue(str(model.path), lanes=model.lanes, max_bytes=settings.disk_bytes,
                         segment_bytes=settings.segment_bytes)
    assert reopened.open() == []
    # every segment is deleted but the one each upstream's log starts now; logs of earlier groupings are gone
    segments = sorted(str(p.relative_to(model.path)) for p in model.path.rglob("segment-*"))
    assert len(segments) == len(model.lanes) and all(p.endswith(".log") for p in segments), segments
    reopened.close()
    return model.stats


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("lanes", [ONE_UPSTREAM, TWO_UPSTREAMS], ids=["one_upstream", "two_upstreams"])
async def test_nothing_accepted_is_lost_or_delivered_twice_in_a_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int, lanes: Lanes,
) -> None:
    """One upstream, or two (traces and metrics to one, logs to the other), all through the run."""
    stats = await run_model(tmp_path, monkeypatch, seed, lanes)
    print(dict(stats))  # what the seed went through (pytest -s)
    assert stats["accepted"] and stats["delivered"] >= stats["accepted"]


@pytest.mark.parametrize("seed", SEEDS[:8])
async def test_nothing_accepted_is_lost_when_the_upstreams_are_grouped_otherwise_at_restarts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int,
) -> None:
    """The same, each start grouping the signals in one upstream or two at random: the logs of the
    earlier grouping are drained to where their signals go now."""
    stats = await run_model(tmp_path, monkeypatch, 1000 + seed, TWO_UPSTREAMS, switch_lanes=True)
    print(dict(stats))
    assert stats["accepted"] and stats["delivered"] >= stats["accepted"]


async def test_records_taken_from_disk_cannot_take_the_reserve_of_another_upstream(tmp_path: Path) -> None:
    """Found by the model above, here with the real constants. A backlog waits on disk for two upstreams
    (1,000 traces, 256 logs); the queue keeps track of 1,024 requests, 256 kept for each upstream, 768 at
    most for one. The replay takes 256 of each; the traces' upstream is down and new traces fill its
    share (768). The logs' upstream takes its batch: the 256 places freed go to traces waiting on disk
    (the only log with records waiting), so the traces hold all 1,024 and a log is refused though the
    logs hold nothing. The module docstring: "an upstream that is down ... cannot take the count the
    others need"."""
    path = str(tmp_path / "queue")
    earlier = DiskQueue(path, lanes=TWO_UPSTREAMS, max_bytes=8 << 20)
    earlier.open()
    backlog = [(Signal.TRACES, f"t{n}") for n in range(1000)] + [(Signal.LOGS, f"l{n}") for n in range(256)]
    await asyncio.gather(*(earlier.append(signal, 1, make_request(signal, ident, 0)) for signal, ident in backlog))
    earlier.close()
    disk = DiskQueue(path, lanes=TWO_UPSTREAMS, max_bytes=8 << 20)
    queue = ExportQueue(capacity_bytes=64 << 10, batch_items=4096, batch_bytes=1 << 20, batch_timeout=30.0,
                        metrics=SidecarMetrics(), disk=disk, lanes=TWO_UPSTREAMS)
    assert (queue.max_records, queue.replay_records, queue._record_shares.reserve) == (1024, 512, 256)
    queue.restore(disk.open(limit=queue.replay_records))
    assert queue._lane_records == [256, 256]
    puts = (queue.put(Signal.TRACES, make_request(Signal.TRACES, f"new-t{n}", 0), 1) for n in range(512))
    await asyncio.gather(*puts)  # the traces' share: 768
    assert queue._lane_records == [768, 256]
    logs = await asyncio.wait_for(queue.next_batch(1), 1)  # the logs' upstream takes the replayed logs
    assert logs is not None and logs.signal is Signal.LOGS and len(logs.records) == 256
    queue.done(logs)
    try:
        # the 256 places freed went to traces waiting on disk: [1024, 0]
        assert queue._lane_records[0] <= queue._record_shares.lane_capacity, queue._lane_records
        await queue.put(Signal.LOGS, make_request(Signal.LOGS, "new-l", 0), 1)  # QueueFull: "holds 1024 requests"
    finally:
        queue.close()
        disk.close()


async def test_acknowledgements_appended_after_a_cut_one_acknowledge_only_their_records(tmp_path: Path) -> None:
    """The replay scan reads an ``.acks`` file whose last offset was cut short (disklog: "a crash may have
    cut the last one"): that record is sent again, at least once. But the next start appends its
    acknowledgements after the cut bytes, so the file is read 4 bytes off from there on: the high
    (zero) bytes of the cut offset and of the next one read as offset 0, and the segment's first
    record, never sent, is taken as acknowledged at the start after: lost."""
    path, lanes = str(tmp_path / "queue"), (frozenset(Signal),)
    disk = DiskQueue(path, lanes=lanes, max_bytes=1 << 20)
    disk.open()
    await disk.append(Signal.LOGS, 1, make_request(Signal.LOGS, "first", 0))  # offset 0
    disk.ack(await disk.append(Signal.LOGS, 1, make_request(Signal.LOGS, "second", 0)))
    disk.close()
    acks = tmp_path / "queue" / "segment-0000000001.acks"
    assert acks.stat().st_size == 8
    with open(acks, "r+b") as cut:  # the crash: half of the offset written
        cut.truncate(4)

    disk = DiskQueue(path, lanes=lanes, max_bytes=1 << 20)
    first, second = disk.open()  # both: "second" sent again, as documented
    assert [read_id(Signal.LOGS, disk.read(record)) for record in (first, second)] == ["first", "second"]
    disk.ack(second)  # sent; "first" is not (its upstream is down, say) when the sidecar stops again
    disk.close()

    disk = DiskQueue(path, lanes=lanes, max_bytes=1 << 20)
    replayed = [read_id(Signal.LOGS, disk.read(record)) for record in disk.open()]
    disk.close()
    assert "first" in replayed, replayed  # ['second']: "first" read as acknowledged by the bytes 0000 + 0000
