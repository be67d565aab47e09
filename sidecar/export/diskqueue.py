"""The on-disk queue: a log (:mod:`sidecar.export.disklog`) per upstream, one byte budget.

A segment file is deleted only once every record in it has left, so the signals of an upstream
that stays down must not share segments with the others: each lane (the signals of one upstream,
:mod:`sidecar.export.lanes`) writes its own log. With one upstream (the usual case) the log is the
directory itself, as it always was; with several, each lane's log is a subdirectory named for its
signals (``upstream-traces+metrics``, ``upstream-logs``).

Logs left by an earlier configuration (segments in the directory itself when there are now
several upstreams, or a subdirectory whose signals are now grouped otherwise) are replayed and
drained, never written to: every record carries its signal, so it goes to the lane that signal is
in now. A drained subdirectory is removed.

The budget (``exporter.disk_queue_max_bytes``) is shared the way the memory queue is
(:mod:`sidecar.export.shares`): each lane has a reserve the others cannot take; the records of
the logs being drained count in the part of the lane they go to now, and their files against the
whole. Only one process at a time uses the directory (a lock file).

A replay is taken into the export queue a bounded number of records at a time (``open(limit=...)``,
then ``take``): the others wait on disk, counted, and each record freed goes to the log with records
waiting that holds the fewest taken, so a log whose upstream is down cannot keep the others' waiting.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import fcntl
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from prometheus_client import CollectorRegistry

from sidecar.export import metrics
from sidecar.export.disklog import DiskLog, Record, record_size
from sidecar.export.lanes import Lane, lane_name
from sidecar.export.shares import Shares
from sidecar.signals import Signal

log = logging.getLogger(__name__)

LANE_PREFIX = "upstream-"
#: held (flock) by the process using the directory: a second one would delete segments the first
#: is still writing to
LOCK_FILE = "lock"


class DiskFull(Exception):
    """No room on disk for the request under the budget: refuse retryably."""


def lane_dir(lane: Lane) -> str:
    """The subdirectory of a lane's log when there are several upstreams."""
    return LANE_PREFIX + lane_name(lane)


class DiskQueue:
    def __init__(
        self,
        directory: str,
        *,
        lanes: Sequence[Lane],
        max_bytes: int,
        segment_bytes: int = 16 << 20,
        registry: CollectorRegistry | None = None,
        masks: bool = True,
    ) -> None:
        """``masks``: this sidecar masks what it accepts (:class:`DiskLog`)."""
        self.dir = Path(directory)
        self.masks = masks
        self.lanes = tuple(lanes)
        self._lane_of = {signal: number for number, lane in enumerate(self.lanes) for signal in lane}
        self._shares = Shares(max_bytes, len(self.lanes))
        self._segment_bytes = segment_bytes
        #: the lanes' logs (index = lane), then the logs being drained
        self._logs: list[DiskLog] = []
        #: bytes of each lane's records not yet sent in the logs being drained: charged to the lane
        #: (an upstream still down holds its old records too, not the upstream that is up)
        self._earlier = [0] * len(self.lanes)
        self._lock = -1
        registry = registry or CollectorRegistry()
        self._size = metrics.DISK_QUEUE_SIZE.gauge(registry)
        self._corrupt = metrics.DISK_QUEUE_CORRUPT.counter(registry)
        self._corrupt_counted = 0
        self._replayed = metrics.DISK_QUEUE_REPLAYED.counter(registry)
        self._waiting = metrics.DISK_QUEUE_WAITING.gauge(registry)
        self._held_unmasked = metrics.DISK_QUEUE_HELD_UNMASKED.gauge(registry)
        metrics.DISK_QUEUE_CAPACITY.gauge(registry).set(max_bytes)

    @property
    def bytes(self) -> int:
        """Bytes of every log's segment files."""
        return sum(disk_log.bytes for disk_log in self._logs)

    @property
    def largest_request(self) -> int:
        """The largest request one upstream's log can take when it holds nothing else."""
        return self._shares.lane_capacity - record_size(0)

    @property
    def waiting(self) -> int:
        """Records replayed not yet taken: they wait on disk for :meth:`take`."""
        return sum(disk_log.waiting for disk_log in self._logs)

    @property
    def loaded(self) -> int:
        """Records replayed taken and not yet acknowledged."""
        return sum(disk_log.loaded for disk_log in self._logs)

    def lane_bytes(self, signal: Signal) -> int:
        """Bytes held for the upstream ``signal`` is sent to: its log, and its records not yet sent
        in logs of an earlier grouping."""
        return self._held()[self._lane_of[signal]]

    # -- start: replay ------------------------------------------------------------------------

    def open(self, limit: int | None = None) -> list[Record]:
        """Create or scan the logs; return the records still to export, at most ``limit`` of them
        (None: all; the others wait on disk for :meth:`take`): those of earlier configurations'
        logs first, each log's oldest first."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        several = len(self.lanes) > 1
        current = [self.dir / lane_dir(lane) for lane in self.lanes] if several else [self.dir]
        left = sorted(p for p in self.dir.glob(LANE_PREFIX + "*") if p.is_dir() and p not in current)
        if several and any(self.dir.glob("segment-*.log")):
            left.insert(0, self.dir)
        self._logs = [DiskLog(path, segment_bytes=self._segment_bytes, number=n, masks=self.masks)
                      for n, path in enumerate(current)]
        for path in left:
            disk_log = DiskLog(path, segment_bytes=self._segment_bytes, number=len(self._logs), masks=self.masks)
            self._logs.append(disk_log)
            disk_log.open(append=False, limit=0)
            if disk_log.waiting:
                log.warning("disk queue: %d records in %s were written for other upstreams than now; "
                            "sending them to where their signals go now", disk_log.waiting, path)
            for signal, size in disk_log.unsent.items():
                self._earlier[self._lane_of[signal]] += size
            self._forget_if_drained(disk_log)
        for disk_log in self._logs[: len(current)]:
            disk_log.open(limit=0)
        self._held_unmasked.set(sum(disk_log.held_unmasked for disk_log in self._logs))
        found = self.waiting
        self._replayed.inc(found)
        pending = self.take(found if limit is None else limit)  # counts the corrupt records too
        if found:
            log.info("disk queue: replaying %d records from %s%s", found, self.dir,
                     f": {len(pending)} queued now, {self.waiting} wait on disk and are queued as others leave"
                     if self.waiting else "")
        return pending

    def take(self, count: int, lane_room: Sequence[int] | None = None) -> list[Record]:
        """Up to ``count`` of the records waiting on disk, each log's oldest first (those of earlier
        configurations' logs first in the list). Each goes to the log with records waiting that
        holds the fewest taken and not yet acknowledged: a log whose upstream is down keeps what it
        holds, never the places the others' records free. ``lane_room``: the most each lane's own
        log may give (the records its upstream may still hold; a log of an earlier configuration
        holds records of any lane and is bounded by ``count`` only)."""
        counts = self._shares_of(count, lane_room)
        order = [*range(len(self.lanes), len(self._logs)), *range(len(self.lanes))]
        taken = [record for n in order if counts[n] for record in self._logs[n].take(counts[n])]
        # found at open, or by a take (a segment changed under the sidecar since it was scanned)
        corrupt = sum(disk_log.corrupt for disk_log in self._logs)
        self._corrupt.inc(corrupt - self._corrupt_counted)
        self._corrupt_counted = corrupt
        self._publish()
        return taken

    def _shares_of(self, count: int, lane_room: Sequence[int] | None = None) -> list[int]:
        """How many of ``count`` records each log gives: the one holding the fewest taken first,
        until it holds as many as the next (water-filling); a lane's log at most its ``lane_room``."""
        counts = [0] * len(self._logs)
        held = [disk_log.loaded for disk_log in self._logs]
        most = [disk_log.waiting for disk_log in self._logs]
        if lane_room is not None:
            for lane, room in enumerate(lane_room):
                most[lane] = min(most[lane], max(0, room))
        while count > 0:
            able = [n for n in range(len(self._logs)) if most[n] > counts[n]]
            if not able:
                break
            level = min(held[n] for n in able)
            lowest = [n for n in able if held[n] == level]
            above = [held[n] for n in able if held[n] > level]
            each = max(1, min(count // len(lowest), min(above) - level if above else count))
            for n in lowest:
                give = min(each, count, most[n] - counts[n])
                counts[n] += give
                held[n] += give
                count -= give
        return counts

    # -- appending, reading, acknowledging ----------------------------------------------------

    async def append(self, signal: Signal, items: int, data: builtins.bytes) -> Record:  # `bytes` is a property here
        """Write one record to the log of its upstream; return once it is durable. Raises DiskFull
        when it does not fit in what that upstream may hold."""
        lane = self._lane_of[signal]
        size = record_size(len(data))
        if size > self._room(lane) and (not self._reclaim(lane) or size > self._room(lane)):
            message = self._shares.refusal(
                "disk queue", lane_name(self.lanes[lane]), lane, self._held(), self.bytes, size)
            if earlier := sum(disk_log.bytes for disk_log in self._logs[len(self.lanes):]):
                message += (f"; {earlier} bytes of it were written when the upstreams were grouped "
                            "otherwise, and leave as their upstreams take them")
            if held := sum(disk_log.held_unmasked_bytes for disk_log in self._logs):
                message += (f"; {held} bytes of it are records a sidecar that did not mask accepted, held "
                            "unsent by this one (docs/reliability.md)")
            raise DiskFull(message)
        # the bytes are counted before the first await: the check and the count are one step
        record = await self._logs[lane].append(signal, items, data)
        self._publish()
        return record

    def _publish(self) -> None:
        """The size gauge: the bytes held for records not yet sent (a segment being written to whose
        records have all left is deleted when room is needed, so an empty queue reads empty)."""
        self._size.set(self.bytes - sum(disk_log.reclaimable for disk_log in self._logs))
        self._waiting.set(self.waiting)

    def _reclaim(self, lane: int) -> bool:
        """Delete segments being written to whose records have all left, where that makes room for
        ``lane``: its own, and those of lanes over their reserve (freeing a lane's bytes under its
        reserve only moves them to what is kept for it). True if bytes were freed."""
        held = self._held()
        freed = [
            self._logs[other].reclaim()
            for other in range(len(self.lanes))
            if other == lane or held[other] > self._shares.reserve
        ]
        return any(freed)

    def _held(self) -> list[int]:
        return [self._logs[lane].bytes + self._earlier[lane] for lane in range(len(self.lanes))]

    def _room(self, lane: int) -> int:
        return self._shares.room(lane, self._held(), self.bytes)

    def read(self, record: Record) -> builtins.bytes:
        return self._logs[record.log].read(record)

    def read_all(self, records: Sequence[Record]) -> list[builtins.bytes]:
        """The payloads of ``records``, in order (each log's read in runs: DiskLog.read_all)."""
        if len({record.log for record in records}) <= 1:
            return self._logs[records[0].log].read_all(records) if records else []
        by_log: dict[int, list[int]] = {}
        for index, record in enumerate(records):
            by_log.setdefault(record.log, []).append(index)
        payloads: list[builtins.bytes] = [b""] * len(records)
        for number, indexes in by_log.items():
            for index, payload in zip(indexes, self._logs[number].read_all([records[i] for i in indexes]), strict=True):
                payloads[index] = payload
        return payloads

    def ack(self, record: Record) -> None:
        """The record left the sidecar: its segment is deleted once all of its records have."""
        self.ack_all((record,))

    def ack_all(self, records: Iterable[Record]) -> None:
        """The records left the sidecar (a batch's): written log by log, a segment's at once."""
        by_log: dict[int, list[Record]] = {}
        for record in records:
            by_log.setdefault(record.log, []).append(record)
        for number, acked in by_log.items():
            disk_log = self._logs[number]
            disk_log.ack_all(acked)
            if number >= len(self.lanes):
                for record in acked:
                    self._earlier[self._lane_of[record.signal]] -= record_size(record.length)
                self._forget_if_drained(disk_log)
        self._publish()

    def _forget_if_drained(self, disk_log: DiskLog) -> None:
        """A log of an earlier configuration with nothing left: close it, remove its directory."""
        if disk_log.empty:
            disk_log.close()
            if disk_log.dir != self.dir:
                with contextlib.suppress(OSError):
                    disk_log.dir.rmdir()

    def _take_lock(self) -> None:
        fd = os.open(self.dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OSError(errno.EBUSY, "in use by another sidecar process (it holds the directory's lock)") from None
        self._lock = fd

    def close(self) -> None:
        if waiting := self.waiting:
            log.warning("disk queue: %d records replayed at start were not queued yet: they stay on disk for the "
                        "next start", waiting)
        for disk_log in self._logs:
            disk_log.close()
        if self._lock >= 0:
            os.close(self._lock)  # releases the lock
            self._lock = -1
