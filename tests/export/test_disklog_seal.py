"""Sealing a full segment of the disk log (sidecar.export.disklog) on a slow disk: the event loop
never waits for an fdatasync, and durability stays what it was.

A slow disk cannot be made here (no device mapper; FUSE is not on every CI machine): the log
module's ``os`` is replaced by a stand-in (:class:`SlowDisk`) whose ``fdatasync`` sleeps in the
calling thread before the real one (0.3 s, the slowed disk of tests/bounds/test_disk_queue_bounds.py)
and records which file it synced, in which thread, and when; its ``write`` records where and when each
record was written. Everything else is real: files in a temporary directory, real fdatasync and
writes. Before, the seal made its fdatasync on the event loop: each segment filled (every
``disk_queue_segment_bytes``) stalled every connection for one sync of the whole segment.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sidecar.export import disklog
from sidecar.export.disklog import DiskLog, Record
from sidecar.signals import Signal

#: how long the slowed disk takes for each fdatasync
SYNC_SECONDS = 0.3
#: four 1,017-byte records fill a segment; the fifth starts the next one
SEGMENT = 4096
PAYLOAD = 1000


def payload(n: int) -> bytes:
    return f"{n:04d}".encode() * (PAYLOAD // 4)


@dataclass(frozen=True)
class Sync:
    path: str
    on_loop: bool
    #: just before and just after the real fdatasync (after the slow disk's wait)
    start: float
    end: float
    ok: bool


class SlowDisk:
    """Stands in for the log module's ``os``: each fdatasync first sleeps ``delay`` seconds in the
    thread that calls it (a slow disk), fails with EIO for the files ``fails`` says, and is recorded;
    each write is recorded with the file and offset it went to."""

    def __init__(self, delay: float = SYNC_SECONDS, fails: Callable[[str], bool] = lambda path: False) -> None:
        self.delay = delay
        self.fails = fails
        self.loop_thread = threading.get_ident()
        self.syncs: list[Sync] = []
        #: (file, offset) of each record written -> when its write returned
        self.written: dict[tuple[str, int], float] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def fdatasync(self, fd: int) -> None:
        path = _path_of(fd)
        on_loop = threading.get_ident() == self.loop_thread
        time.sleep(self.delay)
        start = time.monotonic()
        ok = not self.fails(path)
        try:
            if not ok:
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            os.fdatasync(fd)
        finally:
            self.syncs.append(Sync(path, on_loop, start, time.monotonic(), ok))

    def write(self, fd: int, data: Any) -> int:
        wrote = os.write(fd, data)
        end = os.lseek(fd, 0, os.SEEK_CUR)  # O_APPEND: the file's end, just after these bytes
        self.written[(_path_of(fd), end - wrote)] = time.monotonic()
        return wrote


def _path_of(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}").removesuffix(" (deleted)")


def open_fds() -> list[str]:
    found = []
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor, gone already
            found.append(os.readlink(f"/proc/self/fd/{name}"))
    return found


async def fds_back_to(baseline: int) -> int:
    """The number of open descriptors once it is back to ``baseline`` (a second at most)."""
    for _ in range(100):
        if len(open_fds()) <= baseline:
            break
        await asyncio.sleep(0.01)
    return len(open_fds())


@pytest.fixture
def slow_disk(monkeypatch: pytest.MonkeyPatch) -> Callable[..., SlowDisk]:
    def install(**kwargs: Any) -> SlowDisk:
        disk = SlowDisk(**kwargs)
        monkeypatch.setattr(disklog, "os", disk)
        return disk
    return install


@contextlib.asynccontextmanager
async def ticker() -> AsyncIterator[list[float]]:
    """Ticks every 10 ms on the event loop meanwhile; yields a list whose one item, once the block
    is left, is the longest gap between two ticks (how long the loop was held)."""
    gaps: list[float] = []
    stop = asyncio.Event()

    async def tick() -> None:
        last = time.monotonic()
        while not stop.is_set():
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    task = asyncio.create_task(tick())
    result: list[float] = []
    try:
        yield result
    finally:
        stop.set()
        await task
        result.append(max(gaps))


def segment_path(directory: Path, record: Record) -> str:
    return str(directory / f"segment-{record.segment:010d}.log")


def assert_synced_before_acknowledged(disk: SlowDisk, directory: Path, record: Record, acknowledged: float) -> None:
    """An fdatasync of the record's file started after its write returned and ended, successfully,
    before its append was acknowledged."""
    path = segment_path(directory, record)
    written = disk.written[(path, record.offset)]
    covering = [s for s in disk.syncs if s.path == path and s.ok and written <= s.start and s.end <= acknowledged]
    assert covering, (record, written, acknowledged, disk.syncs)


async def test_rolling_to_a_new_segment_never_waits_for_the_disk_on_the_event_loop(
    tmp_path: Path, slow_disk: Callable[..., SlowDisk],
) -> None:
    """Appends one at a time, then many at once, across segment boundaries, each fdatasync taking
    0.3 s: a ticker every 10 ms is never held anywhere near that, and no fdatasync runs on the
    event loop's thread. Before: the seal synced the full segment on the loop (a 0.3 s gap per seal)."""
    disk = slow_disk()
    log = DiskLog(tmp_path, segment_bytes=SEGMENT)
    log.open()
    async with ticker() as longest:
        one_by_one = [await log.append(Signal.TRACES, 1, payload(n)) for n in range(6)]  # one seal
        at_once = await asyncio.gather(*(log.append(Signal.LOGS, 1, payload(n)) for n in range(6, 16)))
    records = one_by_one + list(at_once)
    assert len({r.segment for r in records}) == 4  # three seals: two with appends waiting
    assert longest[0] < SYNC_SECONDS / 2, f"the event loop was held {longest[0]:.3f} s"
    assert disk.syncs and not [s for s in disk.syncs if s.on_loop], disk.syncs
    assert [log.read(r) for r in records] == [payload(n) for n in range(16)]
    log.close()


async def test_an_append_is_acknowledged_only_after_its_own_file_is_synced(
    tmp_path: Path, slow_disk: Callable[..., SlowDisk],
) -> None:
    """Appends started at staggered times, so that segments are sealed while appends to them wait
    and while a round of fdatasync is running: each append returns only after an fdatasync of the
    file its record is in (the sealed one or the new one) started after its write and ended. Every
    record stays readable, close leaves no descriptor open, and a reopened log replays them all."""
    baseline = len(open_fds())
    disk = slow_disk(delay=0.05)
    log = DiskLog(tmp_path, segment_bytes=SEGMENT)
    log.open()
    acknowledged: dict[int, tuple[Record, float]] = {}

    async def append(n: int) -> None:
        await asyncio.sleep(n * 0.013)
        record = await log.append(Signal.METRICS, 1, payload(n))
        acknowledged[n] = (record, time.monotonic())

    await asyncio.gather(*(append(n) for n in range(30)))
    assert len({record.segment for record, _ in acknowledged.values()}) >= 7
    sealed_with_waiters = 0
    for record, when in acknowledged.values():
        assert_synced_before_acknowledged(disk, tmp_path, record, when)
    for segment in {record.segment for record, _ in acknowledged.values()}:
        path = str(tmp_path / f"segment-{segment:010d}.log")
        syncs = [s for s in disk.syncs if s.path == path]
        # a sealed file synced after the next segment's first write: its appends waited meanwhile
        later = [w for (p, _), w in disk.written.items() if p > path]
        sealed_with_waiters += bool(later and syncs and max(s.start for s in syncs) > min(later))
    assert sealed_with_waiters >= 1  # the case the change is about did happen
    assert not [s for s in disk.syncs if s.on_loop]
    records = [acknowledged[n][0] for n in range(30)]
    assert [log.read(r) for r in records] == [payload(n) for n in range(30)]
    log.close()
    assert await fds_back_to(baseline) == baseline, open_fds()
    again = DiskLog(tmp_path, segment_bytes=SEGMENT)
    replay = again.open()
    assert [again.read(r) for r in replay] == [payload(n) for n in range(30)]
    again.close()
    assert len(open_fds()) == baseline, open_fds()


async def test_a_sealed_segment_is_readable_and_deletable_while_its_file_waits_for_the_sync_loop(
    tmp_path: Path, slow_disk: Callable[..., SlowDisk],
) -> None:
    """The first segment is sealed while its last append's fdatasync is running: its records are
    read back meanwhile, and once all are acknowledged it is deleted while the sync loop still
    holds its file open (closed by the loop afterwards, nothing left open)."""
    baseline = len(open_fds())
    slow_disk()
    log = DiskLog(tmp_path, segment_bytes=SEGMENT)
    log.open()
    first = [await log.append(Signal.TRACES, 1, payload(n)) for n in range(3)]
    waiting = asyncio.create_task(log.append(Signal.TRACES, 1, payload(3)))  # the fourth, last one
    await asyncio.sleep(0.03)  # its fdatasync is running
    crossing = asyncio.create_task(log.append(Signal.TRACES, 1, payload(4)))  # seals the first
    await asyncio.sleep(0.03)
    assert not waiting.done() and not crossing.done()
    assert [log.read(r) for r in first] == [payload(n) for n in range(3)]
    fourth = await waiting
    assert log.read(fourth) == payload(3)
    for record in [*first, fourth]:
        log.ack(record)
    first_file = tmp_path / f"segment-{fourth.segment:010d}.log"
    assert not first_file.exists()
    # deleted, while the sync loop (syncing the next segment for the fifth append) still holds it
    assert f"{first_file} (deleted)" in open_fds()
    fifth = await crossing
    assert fifth.segment == fourth.segment + 1 and log.read(fifth) == payload(4)
    log.close()
    assert await fds_back_to(baseline) == baseline, open_fds()
    again = DiskLog(tmp_path, segment_bytes=SEGMENT)
    replay = again.open()
    assert [again.read(r) for r in replay] == [payload(4)]
    again.close()


async def test_close_while_appends_wait_syncs_them_then_leaves_nothing_open(
    tmp_path: Path, slow_disk: Callable[..., SlowDisk],
) -> None:
    """close() while appends across a segment boundary wait for their fdatasync: their files are
    not closed under the sync (a new file could take the number and be synced in their place);
    the appends are acknowledged once synced, every descriptor is then closed, and a reopened log
    replays them."""
    baseline = len(open_fds())
    disk = slow_disk()
    log = DiskLog(tmp_path, segment_bytes=SEGMENT)
    log.open()
    tasks = [asyncio.create_task(log.append(Signal.LOGS, 1, payload(n))) for n in range(6)]
    await asyncio.sleep(0.05)  # all written, their fdatasync running
    assert not any(task.done() for task in tasks)
    log.close()
    records = await asyncio.gather(*tasks)
    acknowledged = time.monotonic()
    for record in records:
        assert_synced_before_acknowledged(disk, tmp_path, record, acknowledged)
    assert await fds_back_to(baseline) == baseline, open_fds()
    again = DiskLog(tmp_path, segment_bytes=SEGMENT)
    replay = again.open()
    assert [again.read(r) for r in replay] == [payload(n) for n in range(6)]
    again.close()


async def test_a_failed_sync_of_a_sealed_segment_fails_the_appends_in_it_and_the_log_goes_on(
    tmp_path: Path, slow_disk: Callable[..., SlowDisk],
) -> None:
    """The disk fails the fdatasync of the first segment (EIO) while six appends wait, four in it
    and two past the seal. As before, an append whose record could not be made durable fails with
    the error (the app is refused retryably) and is never acknowledged. The two in the next segment
    are acknowledged once their own file is synced (their durability never depended on the first
    file; before, the seal's failed fdatasync on the loop refused them without writing them). The
    log goes on once the disk does, its failed file is closed all the same, and a reopened log
    replays every acknowledged record (and the refused ones too: at least once)."""
    baseline = len(open_fds())
    failing = str(tmp_path / "segment-0000000001.log")
    disk = slow_disk(delay=0.05, fails=lambda path: path == failing)
    log = DiskLog(tmp_path, segment_bytes=SEGMENT)
    log.open()
    outcomes = await asyncio.gather(*(log.append(Signal.TRACES, 1, payload(n)) for n in range(6)),
                                    return_exceptions=True)
    for outcome in outcomes[:4]:  # in the first segment
        assert isinstance(outcome, OSError) and outcome.errno == errno.EIO, outcomes
    assert any(not s.ok and s.path == failing for s in disk.syncs)
    disk.fails = lambda path: False  # the disk is back
    later = [await log.append(Signal.TRACES, 1, payload(n)) for n in range(6, 8)]
    kept = [o for o in outcomes[4:] if isinstance(o, Record)] + later
    assert [r.segment for r in kept] == [2, 2, 2, 2], outcomes
    assert [log.read(r) for r in kept] == [payload(n) for n in range(4, 8)]
    log.close()
    assert await fds_back_to(baseline) == baseline, open_fds()
    again = DiskLog(tmp_path, segment_bytes=SEGMENT)
    replayed = [again.read(r) for r in again.open()]
    assert replayed == [payload(n) for n in range(8)]
    again.close()
