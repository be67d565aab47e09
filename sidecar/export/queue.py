"""The bounded export queue: accepted request bytes, merged into batches per signal.

Capacity is counted in bytes and covers everything accepted and not yet
exported (waiting and in flight), so memory stays bounded whatever the upstream
does. Merging is a concatenation: concatenated Export*ServiceRequest messages
are one valid request (their repeated resource fields append).

With the on-disk queue (:mod:`sidecar.export.diskqueue`) every request is written
durably before it is accepted; what does not fit in memory stays on disk only
("spilled") and is read back when its batch is sent, so the memory bound holds
while the disk holds hours of backlog. A replay at start queues at most ``replay_records``
records (half of ``max_records``: the other half stays for new requests); the others wait on
disk and are queued, oldest first, as records leave, so a backlog written under a larger queue
never takes more memory than this one allows.

Signals sent to different upstreams are in different lanes (:mod:`sidecar.export.lanes`): each
lane's batches are handed to its own workers, and each lane has a reserve of the capacity that the
others cannot take (:mod:`sidecar.export.shares`), so upstreams that are down cannot take the room
of one that is up. Beyond that, a lane's requests are refused (or spilled, with the disk queue,
which shares its own budget the same way). The requests the disk queue keeps track of
(``max_records``) are shared the same way too: an upstream that is down, sent one record a request,
cannot take the count the others need.
"""

from __future__ import annotations

import asyncio
import errno
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast

from sidecar.export.disklog import Record
from sidecar.export.diskqueue import DiskFull, DiskQueue
from sidecar.export.lanes import Lane, lane_name
from sidecar.export.shares import Shares
from sidecar.metrics import SidecarMetrics
from sidecar.rewrite import MalformedRequest, unknown_field, without_unknown_fields
from sidecar.signals import Signal


class QueueFull(Exception):
    """No room for the request: refuse it retryably."""


class QueueClosed(Exception):
    """The sidecar is shutting down and accepts nothing new."""


@dataclass
class Batch:
    """Requests of one signal, merged; ``items`` spans / data points / log records."""

    signal: Signal
    #: request bytes, or None for a request spilled to disk (read back by ExportQueue.load)
    parts: list[bytes | None] = field(default_factory=list)
    #: the disk record of each part (None without the disk queue)
    records: list[Record | None] = field(default_factory=list)
    items: int = 0
    nbytes: int = 0
    #: bytes of this batch held in memory (counted against the capacity)
    memory_bytes: int = 0
    started: float = 0.0


#: memory a request held in memory costs beyond its bytes, counted against the capacity with them: its
#: bytes object's header and the allocator's rounding, its places in a batch (measured: 50 bytes for a
#: 6-byte request; not counted, 16 MiB of such requests took 147 MB)
PART_COST = 64
#: memory one request held by the disk queue keeps when its bytes are only on disk (its record,
#: its places in a batch; measured: 154 bytes spilled, 140 replayed, tests/export/test_queue.py)
RECORD_COST = 192
#: requests the disk queue may always hold, however small the memory queue
MIN_RECORDS = 1024
#: records of a replay waiting on disk queued in one turn of the event loop as room frees (each
#: read from disk and queued takes ~4 µs: a few milliseconds a turn), the next in the next turn
TAKE_STEP = 1024
#: bytes of replayed requests checked against OTLP's fields in one turn of the event loop as their
#: batch is read back (the pure-Python twin: ~8 ms; the compiled check: ~0.2 ms)
CHECK_STEP = 64 << 10


class ExportQueue:
    def __init__(
        self,
        *,
        capacity_bytes: int,
        batch_items: int,
        batch_bytes: int,
        batch_timeout: float,
        metrics: SidecarMetrics,
        disk: DiskQueue | None = None,
        lanes: Sequence[Lane] = (frozenset(Signal),),
    ) -> None:
        """``lanes``: the signals of each upstream (every signal in exactly one)."""
        self.capacity_bytes = capacity_bytes
        #: requests the disk queue may hold: each keeps its bookkeeping in memory (RECORD_COST
        #: bytes) even once its bytes are only on disk, so a quarter of the memory queue's
        #: bytes bounds them (a million one-span requests during an outage took 180 MB)
        self.max_records = max(MIN_RECORDS, capacity_bytes // 4 // RECORD_COST)
        #: records replayed from disk held at once (the others wait on disk, queued as records
        #: leave): half of max_records, the other half kept for new requests
        self.replay_records = self.max_records // 2
        self._records = 0
        self.lanes = tuple(lanes)
        self._lane_of = {signal: number for number, lane in enumerate(self.lanes) for signal in lane}
        if set(self._lane_of) != set(Signal) or sum(map(len, self.lanes)) != len(Signal) or not all(self.lanes):
            raise ValueError(f"every signal must be in exactly one lane: {self.lanes}")
        if disk is not None and disk.lanes != self.lanes:
            raise ValueError(f"the disk queue's lanes {disk.lanes} are not the queue's {self.lanes}")
        self._shares = Shares(capacity_bytes, len(self.lanes))
        #: the bytes kept for each lane that the others cannot take (none with one lane)
        self.lane_reserve = self._shares.reserve
        #: the most one lane may hold in memory (when the others hold nothing)
        self.lane_capacity = self._shares.lane_capacity
        self._lane_bytes = [0] * len(self.lanes)
        #: max_records shared between the lanes as the bytes are, and each lane's records held
        self._record_shares = Shares(self.max_records, len(self.lanes))
        self._lane_records = [0] * len(self.lanes)
        self._batch_items = batch_items
        self._batch_bytes = batch_bytes
        self._batch_timeout = batch_timeout
        self._metrics = metrics
        self._disk = disk
        self._open: dict[Signal, Batch] = {}
        self._timers: dict[Signal, asyncio.TimerHandle] = {}
        self._ready: list[deque[Batch]] = [deque() for _ in self.lanes]
        self._wake = [asyncio.Event() for _ in self.lanes]
        self._held_bytes = 0
        self._held_items = dict.fromkeys(Signal, 0)
        self._closed = False
        self._drained = asyncio.Event()
        self._drained.set()
        #: the next step of queueing records waiting on disk, when one is due
        self._taking: asyncio.Handle | None = None
        # bound once: a labels() lookup per request is measurable on the hot path
        self._item_gauges = {signal: metrics.queue_items.labels(signal.value) for signal in Signal}
        metrics.queue_capacity.set(capacity_bytes)
        metrics.queue_size.set(0)

    @property
    def held_bytes(self) -> int:
        return self._held_bytes

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def put_waits(self) -> bool:
        """Does :meth:`put` wait (for the disk queue to make a request durable)? Without the disk
        queue it takes the data at once."""
        return self._disk is not None

    def largest(self, signal: Signal) -> int:
        """The largest request of ``signal`` the queue can take when it holds nothing else: its
        lane's share of the memory, or with the disk queue of the disk (every request is written
        there; one that does not fit in memory is read back when sent)."""
        if self._disk is not None:
            return self._disk.largest_request
        return self.lane_capacity - PART_COST

    def full_for(self, signal: Signal) -> bool:
        """No byte more of ``signal`` fits in memory (its lane's share, or the whole capacity)
        and there is no disk queue to spill to: refuse early."""
        return self._disk is None and self._room(self._lane_of[signal]) <= 0

    def full_message(self, signal: Signal, size: int = 0) -> str:
        """Why ``size`` more bytes of ``signal`` do not fit (0: why the queue refuses early)."""
        lane = self._lane_of[signal]
        return self._shares.refusal(
            "export queue", lane_name(self.lanes[lane]), lane, self._lane_bytes, self._held_bytes, size)

    def _room(self, lane: int) -> int:
        """Bytes ``lane`` may still take in memory."""
        return self._shares.room(lane, self._lane_bytes, self._held_bytes)

    def _fits(self, lane: int, size: int) -> bool:
        return size <= self._room(lane)

    async def put(self, signal: Signal, data: bytes, items: int) -> None:
        """Accept ``data`` for export (durably, with the disk queue), or raise QueueFull / QueueClosed."""
        if self._closed:
            raise QueueClosed("the sidecar is shutting down")
        size = len(data)
        cost = size + PART_COST  # what it takes in memory
        lane = self._lane_of[signal]
        record: Record | None = None
        if self._disk is None:
            if not self._fits(lane, cost):
                raise QueueFull(self.full_message(signal, cost))
        else:
            if self._record_shares.room(lane, self._lane_records, self._records) <= 0:
                raise QueueFull(self._records_full_message(lane))
            # counted while its append waits for the disk, so that requests arriving meanwhile see
            # it; _add counts it for good (no await between)
            self._records += 1
            self._lane_records[lane] += 1
            try:
                record = await self._disk.append(signal, items, data)
            except DiskFull as exc:
                raise QueueFull(str(exc)) from None
            except OSError as exc:
                raise QueueFull(f"cannot write the disk queue: {exc.strerror}") from None
            finally:
                self._records -= 1
                self._lane_records[lane] -= 1
                if record is None and self._taking is None:  # it failed: the place it held is free again
                    self._take_waiting()
        self._add(signal, data if self._fits(lane, cost) else None, record, size, items)

    def _records_full_message(self, lane: int) -> str:
        why = (f"a quarter of exporter.queue_max_bytes at {RECORD_COST} bytes each): send larger batches "
               "(an SDK's batch processor rather than one request per item)")
        if self._records < self.max_records:  # there is room, but it is kept for the other upstreams
            return (f"the disk queue holds {self._lane_records[lane]} requests for "
                    f"{lane_name(self.lanes[lane])}, the most their upstream may keep while the others "
                    f"need theirs ({self._records} of the {self.max_records} it keeps track of in memory: {why}")
        return (f"the disk queue holds {self._records} requests, the most it keeps track of in memory ({why}")

    def restore(self, records: list[Record]) -> None:
        """Queue records replayed from disk (spilled: read back when sent). Those the disk queue
        keeps waiting are queued as records leave (:meth:`done`), ``replay_records`` at most at once."""
        self._queue_replayed(records)
        self._seal_if_waiting()

    def _queue_replayed(self, records: list[Record]) -> None:
        for record in records:
            self._add(record.signal, None, record, record.length, record.items)

    def _seal_if_waiting(self) -> None:
        """Records wait on disk, so no more come before some leave: the open batches are sent now,
        not after the batch timeout."""
        if self._disk is not None and self._disk.waiting:
            for signal in list(self._open):
                self._seal(signal)

    def _take_waiting(self) -> None:
        """Queue records of the replay waiting on disk, as many as there is room for now:
        TAKE_STEP in this turn of the event loop, the rest in the next turns."""
        self._taking = None
        disk = self._disk
        if disk is None or self._closed or not disk.waiting:
            return
        room = min(self.replay_records - disk.loaded, self.max_records - self._records)
        if room <= 0:
            return
        # each upstream's records at most its share: one that is down cannot take, through its
        # records waiting on disk, the count kept for the others
        lane_room = [self._record_shares.room(lane, self._lane_records, self._records)
                     for lane in range(len(self.lanes))]
        taken = disk.take(min(room, TAKE_STEP), lane_room)
        self._queue_replayed(taken)
        if len(taken) == TAKE_STEP and room > TAKE_STEP and disk.waiting:
            self._taking = asyncio.get_running_loop().call_soon(self._take_waiting)
        else:
            self._seal_if_waiting()

    def _add(self, signal: Signal, data: bytes | None, record: Record | None, size: int, items: int) -> None:
        if record is not None:
            self._records += 1
            self._lane_records[self._lane_of[signal]] += 1
        in_memory = size + PART_COST if data is not None else 0
        self._held_bytes += in_memory
        self._lane_bytes[self._lane_of[signal]] += in_memory
        self._held_items[signal] += items
        self._drained.clear()
        self._publish(signal)
        batch = self._open.get(signal)
        if batch is not None and (
            batch.items + items > self._batch_items or batch.nbytes + size > self._batch_bytes
        ):
            self._seal(signal)
            batch = None
        if batch is None:
            batch = self._open[signal] = Batch(signal, started=time.monotonic())
            loop = asyncio.get_running_loop()
            self._timers[signal] = loop.call_later(self._batch_timeout, self._seal, signal)
        batch.parts.append(data)
        batch.records.append(record)
        batch.items += items
        batch.nbytes += size
        batch.memory_bytes += in_memory
        if batch.items >= self._batch_items or batch.nbytes >= self._batch_bytes:
            self._seal(signal)

    def parts(self, batch: Batch) -> list[bytes]:
        """The batch's requests, in order, reading spilled parts back from disk (the exporters
        compress them one after the other: no joined copy of the batch). The spilled parts are
        read together: records next to each other on disk with one read."""
        parts, replayed = self._read_back(batch)
        for n in replayed:
            parts[n] = self._checked(batch.signal, parts[n])
        return parts

    async def parts_in_steps(self, batch: Batch) -> list[bytes]:
        """``parts``, with the replayed requests checked against OTLP's fields CHECK_STEP bytes a
        turn of the event loop: a batch of a replay holds thousands of records, and the pure-Python
        twin checks 2,730 one-span records in 73 ms (the compiled check in 1.2)."""
        parts, replayed = self._read_back(batch)
        checked = 0
        for n in replayed:
            if checked >= CHECK_STEP:
                await asyncio.sleep(0)  # what arrived meanwhile is served
                checked = 0
            parts[n] = self._checked(batch.signal, parts[n])
            checked += len(parts[n])
        return parts

    def _read_back(self, batch: Batch) -> tuple[list[bytes], list[int]]:
        """The batch's requests with the spilled ones read from disk, and the places of those
        written by an earlier start (replayed), still to be checked."""
        parts = list(batch.parts)
        replayed: list[int] = []
        spilled = [n for n, part in enumerate(parts) if part is None]
        if spilled:
            # a part is None only when it was spilled: then there is a disk log and a record
            assert self._disk is not None
            records = cast("list[Record]", [batch.records[n] for n in spilled])
            for n, record, data in zip(spilled, records, self._disk.read_all(records), strict=True):
                parts[n] = data
                if record.replayed:
                    replayed.append(n)
        return parts, replayed  # type: ignore[return-value]

    def _checked(self, signal: Signal, data: bytes) -> bytes:
        """A replayed request without the fields OTLP does not define: written by an earlier start,
        perhaps by a version that let them through (docs/policy.md, "The PCI guarantee")."""
        try:
            if unknown_field(signal, data) is not None:
                data, dropped = without_unknown_fields(signal, data)
                self._metrics.unknown_fields_dropped.labels(signal.value).inc(dropped)
        except MalformedRequest as exc:  # counted as unreadable (disk_read), as a damaged record
            raise OSError(errno.EIO, f"a replayed record is not a valid request: {exc}") from None
        return data

    def load(self, batch: Batch) -> bytes:
        """The batch's request bytes as one request."""
        parts = self.parts(batch)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _seal(self, signal: Signal) -> None:
        batch = self._open.pop(signal, None)
        timer = self._timers.pop(signal, None)
        if timer is not None:
            timer.cancel()
        if batch is not None:
            lane = self._lane_of[signal]
            self._ready[lane].append(batch)
            self._wake[lane].set()

    async def next_batch(self, lane: int = 0) -> Batch | None:
        """The next batch of the lane (its number in ``lanes``) to export; None once closed and
        the lane is empty."""
        ready = self._ready[lane]
        while True:
            if ready:
                return ready.popleft()
            if self._closed:
                for signal in [signal for signal in self._open if self._lane_of[signal] == lane]:
                    self._seal(signal)
                if ready:
                    continue
                return None
            self._wake[lane].clear()
            await self._wake[lane].wait()

    @property
    def durable(self) -> bool:
        """True with the disk queue: an unsent batch survives a restart."""
        return self._disk is not None

    def done(self, batch: Batch, *, keep_on_disk: bool = False) -> None:
        """The batch left the sidecar (sent, or finally failed): free its room.

        ``keep_on_disk``: it did not leave (shutdown); free the memory, keep the disk record
        for the next start.
        """
        self._held_bytes -= batch.memory_bytes
        self._lane_bytes[self._lane_of[batch.signal]] -= batch.memory_bytes
        self._held_items[batch.signal] -= batch.items
        records = sum(record is not None for record in batch.records)
        self._records -= records
        self._lane_records[self._lane_of[batch.signal]] -= records
        self._publish(batch.signal)
        if self._disk is not None and not keep_on_disk:
            self._disk.ack_all(record for record in batch.records if record is not None)
            if self._taking is None:  # else the step due takes the room freed too
                self._take_waiting()
        if self._held_bytes == 0 and self._records == 0 and not (self._disk is not None and self._disk.waiting):
            self._drained.set()  # (requests held on disk only count as held too)

    def leftover(self) -> list[Batch]:
        """Take every batch not handed out yet (sealed or still open), of every lane: what the
        shutdown must account for once the workers are stopped."""
        for signal in list(self._open):
            self._seal(signal)
        left = [batch for ready in self._ready for batch in ready]
        for ready in self._ready:
            ready.clear()
        return left

    def close(self) -> None:
        """Accept nothing new; what is held is still handed out, then next_batch returns None."""
        self._closed = True
        for wake in self._wake:
            wake.set()

    async def drained(self) -> None:
        """Return once everything accepted has left: in memory, on disk, or waiting there."""
        await self._drained.wait()

    def _publish(self, signal: Signal) -> None:
        self._metrics.queue_size.set(self._held_bytes)
        self._item_gauges[signal].set(self._held_items[signal])
