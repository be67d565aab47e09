"""One log of the on-disk queue (:mod:`sidecar.export.diskqueue`, which keeps one per upstream):
accepted requests are on disk before the app is told "accepted".

Format (docs/reliability.md): the log's directory holds segment files
``segment-<n>.log`` (n increasing, zero-padded) and, beside each, ``segment-<n>.acks``.
A segment is a run of records::

    magic "OSQ1" | signal (1 byte: 0 traces, 1 metrics, 2 logs) | items (u32 BE)
    | length (u32 BE) | crc32 of the payload (u32 BE) | payload (the request bytes)

The ``.acks`` file lists the offsets (u64 BE) of records that left the sidecar
(exported, or failed for good). On start every record not acknowledged is
replayed. A record that fails its checksum or is cut short (a crash mid-write)
ends the replay of that segment; it is counted and logged, never a crash. A
segment whose records are all acknowledged is deleted. Appends are made durable
with one round of ``fdatasync`` for all the appends waiting at that moment (group commit), run
off the event loop: the file of a segment sealed (full) while appends to it still wait is synced
in that round, then closed, so starting the next segment never waits for the disk.
Delivery is at least once: an acknowledgement not yet written when the process
dies means the record is sent again after restart.

The replay holds neither a whole segment nor a record for each record on disk: the scan at start
reads a segment ``READ_BYTES`` at a time (a header, then the payload in pieces for its checksum)
and its acknowledgements ``ACKS_AT_ONCE`` at a time, and keeps counts; the records are then taken
a bounded number at a time (:meth:`DiskLog.take`), oldest first, from where the last take stopped,
as the export queue has room for them. A segment is deleted only once every record in it has been
taken and has left.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import errno
import logging
import os
import struct
import zlib
from array import array
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sidecar.signals import Signal

log = logging.getLogger(__name__)

MAGIC = b"OSQ1"
_HEADER = struct.Struct(">4sBIII")
_ACK = struct.Struct(">Q")
_SIGNALS = (Signal.TRACES, Signal.METRICS, Signal.LOGS)
#: bytes of a segment read at once while it is replayed (a record's header, a piece of a payload
#: whose checksum is computed piece by piece): what a replay holds of it, whatever its size
READ_BYTES = 64 * 1024
#: acknowledged offsets of a segment held at once while it is replayed (8 bytes each, and as Python
#: ints while the next ones are picked: about 2 MiB at most); past them its .acks file is read again
ACKS_AT_ONCE = 8192
#: bytes read at once for records of a batch next to each other in a segment (one record larger
#: than this is read alone, whole)
READ_RUN_BYTES = 1 << 20


def record_size(length: int) -> int:
    """Bytes a record of a ``length``-byte request takes on disk."""
    return _HEADER.size + length


@dataclass(frozen=True, slots=True)
class Record:
    """Where one request is on disk. The queue keeps one for each request held on disk (the
    export queue's RECORD_COST covers it: slots, no set of them)."""

    #: the number of the log it is in (DiskLog's ``number``)
    log: int
    segment: int
    offset: int
    signal: Signal
    items: int
    length: int
    #: written by an earlier start (taken from the replay): checked against OTLP's fields when read
    replayed: bool = field(default=False, compare=False)


def _sync_and_close(sync: list[int], close: list[int]) -> dict[int, OSError]:
    """One group-commit round, in the executor: fdatasync each of ``sync``, then close each of
    ``close`` (after its sync, if it is in both). The descriptors whose fdatasync failed, with the error."""
    failed: dict[int, OSError] = {}
    for fd in sync:
        try:
            os.fdatasync(fd)
        except OSError as exc:
            failed[fd] = exc
    for fd in close:
        with contextlib.suppress(OSError):
            os.close(fd)
    return failed


def _append_acks(path: Path, data: builtins.bytes) -> None:
    """Append acknowledged offsets to a segment's .acks file. An offset cut short at its end (a crash
    or a full disk in the middle of a write) is cut off first: appended after it, every offset would
    be read shifted at the next start, and a record never sent could read as acknowledged. The cut
    one's record is sent again (at least once)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        size = os.fstat(fd).st_size
        if cut := size % _ACK.size:
            os.ftruncate(fd, size - cut)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


class _Segment:
    def __init__(self, number: int, path: Path) -> None:
        self.number = number
        self.path = path
        self.acks_path = path.with_suffix(".acks")
        #: beside a segment written by a sidecar that did not mask (policy.mode dry_run or passthrough)
        self.unmasked_path = path.with_suffix(".unmasked")
        self.records = 0
        self.acked = 0
        self.bytes = 0
        self.sealed = False
        #: records replayed from it not yet taken (DiskLog.take), and where the next one to look at starts
        self.waiting = 0
        self.next_offset = 0


class _Reader:
    """A segment file read at increasing offsets through one buffer of READ_BYTES."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_RDONLY)
        self._start = 0
        self._data = b""

    def close(self) -> None:
        os.close(self._fd)

    def read(self, offset: int, size: int) -> memoryview:
        """``size`` bytes (at most READ_BYTES) at ``offset``; fewer only where the file ends."""
        if offset < self._start or offset + size > self._start + len(self._data):
            self._data = os.pread(self._fd, READ_BYTES, offset)
            self._start = offset
        start = offset - self._start
        return memoryview(self._data)[start : start + size]

    def checksum(self, offset: int, length: int) -> int | None:
        """The CRC-32 of the ``length`` bytes at ``offset``, read piece by piece; None if the file
        ends first."""
        crc = 0
        end = offset + length
        while offset < end:
            piece = self.read(offset, min(READ_BYTES, end - offset))
            if not piece:
                return None
            crc = zlib.crc32(piece, crc)
            offset += len(piece)
        return crc


class _Acked:
    """The offsets a segment's .acks file lists, asked about in increasing order (as a replay goes
    through the segment): the ACKS_AT_ONCE smallest not yet passed are held; past the last of them
    the file is read again for the next ones."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._held = array("Q")  # sorted, distinct
        self._next = 0
        #: every offset the file lists up to this one is held (-1: none read yet)
        self._upto = -1

    def __contains__(self, offset: int) -> bool:
        if offset > self._upto:
            self._read_from(offset)
        held = self._held
        while self._next < len(held) and held[self._next] < offset:
            self._next += 1
        return self._next < len(held) and held[self._next] == offset

    def _read_from(self, low: int) -> None:
        """Hold the ACKS_AT_ONCE smallest offsets from ``low`` on, the file read a piece at a time."""
        kept: list[int] = []
        ceiling = -1  # once some are dropped: the largest kept (larger ones are not wanted)
        try:
            with open(self._path, "rb") as acks:
                while piece := acks.read(READ_BYTES):
                    usable = len(piece) - len(piece) % _ACK.size  # a crash may have cut the last one
                    kept += [offset for (offset,) in _ACK.iter_unpack(piece[:usable])
                             if offset >= low and (ceiling < 0 or offset <= ceiling)]
                    if len(kept) > 2 * ACKS_AT_ONCE:
                        kept = sorted(set(kept))[:ACKS_AT_ONCE]
                        ceiling = kept[-1]
        except FileNotFoundError:
            pass
        kept = sorted(set(kept))
        if len(kept) > ACKS_AT_ONCE:
            kept = kept[:ACKS_AT_ONCE]
            ceiling = kept[-1]
        self._held = array("Q", kept)
        self._next = 0
        self._upto = ceiling if ceiling >= 0 else 1 << 64


class DiskLog:
    def __init__(
        self,
        directory: str | Path,
        *,
        segment_bytes: int = 16 << 20,
        number: int = 0,
        masks: bool = True,
    ) -> None:
        """``number``: which log this is, written in its records (the disk queue's index).
        ``masks``: this sidecar masks what it accepts (policy.mode enforce). One that does not marks
        the segments it writes; one that does holds the marked segments it finds, unsent."""
        self.dir = Path(directory)
        self.number = number
        self.masks = masks
        #: records found in segments marked unmasked, held on disk unsent (a sidecar that masks)
        self.held_unmasked = 0
        self.held_unmasked_bytes = 0
        self._held_segments = 0
        self.segment_bytes = segment_bytes
        self._segments: dict[int, _Segment] = {}
        self._active: _Segment | None = None
        self._fd = -1
        #: the number of the last segment opened for writing (the next one is one more)
        self._last_number = 0
        self._read_fds: dict[int, int] = {}
        self._bytes = 0
        #: appends waiting for their record to be durable: the descriptor it was written through, and
        #: the future the append awaits
        self._sync_waiters: list[tuple[int, asyncio.Future[None]]] = []
        #: a sync loop is running (rounds of fdatasync in the executor)
        self._syncing = False
        self._sync_task: asyncio.Task[None] | None = None  # kept: the event loop holds tasks weakly
        #: descriptors no longer written through (a segment sealed or given up, the log closed) while
        #: the sync loop runs: closed by it after its next round (synced first for the appends still
        #: waiting on them), never while a sync may be using them (a new segment could take the number)
        self._detached: list[int] = []
        #: records found damaged by open() (the rest of their segment is skipped), or segments found
        #: changed under the sidecar by take() (the records of it not taken yet are skipped)
        self.corrupt = 0
        self._ack_failed = False
        #: replayed segments with records not yet taken, oldest first, and how many in all
        self._unread: deque[_Segment] = deque()
        self._waiting = 0
        #: the segment being taken from (the first of _unread): its reader and acknowledgements
        self._reader: _Reader | None = None
        self._acked: _Acked | None = None
        #: the first segment of this start: the records of those before it were replayed
        self._first_new = 0
        #: replayed records taken and not yet acknowledged
        self.loaded = 0
        #: bytes of the records replayed at open() not sent yet, by signal (taken or not)
        self.unsent = dict.fromkeys(_SIGNALS, 0)

    @property
    def bytes(self) -> int:
        """Bytes of the segment files still kept (records not acknowledged and their neighbours)."""
        return self._bytes

    @property
    def empty(self) -> bool:
        """No segment file is kept (a log opened to drain only has nothing left)."""
        return not self._segments and not self._held_segments

    @property
    def waiting(self) -> int:
        """Records replayed not yet taken: they wait on disk for :meth:`take`."""
        return self._waiting

    # -- start: replay ------------------------------------------------------------------------

    def open(self, *, append: bool = True, limit: int | None = None) -> list[Record]:
        """Create or scan the directory; return the records still to export, oldest first, at most
        ``limit`` of them (None: all): the others wait on disk for :meth:`take`.
        ``append=False``: only drain what is there (no new segment is started)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        numbers = sorted(int(p.stem.split("-")[1]) for p in self.dir.glob("segment-*.log"))
        for acks in self.dir.glob("segment-*.acks"):
            if not acks.with_suffix(".log").exists():
                # left by a crash in the middle of a delete: its segment number must not be
                # reused beside it, or the new segment's records would read as sent
                acks.unlink()
        for marker in self.dir.glob("segment-*.unmasked"):
            if not marker.with_suffix(".log").exists():
                marker.unlink()  # likewise: a new segment of that number must not read as unmasked
        for number in numbers:
            segment = _Segment(number, self._path(number))
            segment.sealed = True
            self._scan(segment)
            if segment.acked >= segment.records:
                self._delete(segment)
                continue
            if self.masks and segment.unmasked_path.exists():
                # accepted by a sidecar in dry_run or passthrough mode: as it came, card numbers
                # and all. Held on disk, never sent by a sidecar that masks (docs/reliability.md)
                self.held_unmasked += segment.records - segment.acked
                self._held_segments += 1
                self._bytes += segment.bytes
                self.held_unmasked_bytes += segment.bytes
                continue
            self._segments[number] = segment
            self._bytes += segment.bytes
            segment.waiting = segment.records - segment.acked
            self._waiting += segment.waiting
            self._unread.append(segment)
        self._first_new = max(numbers, default=0) + 1
        if self.held_unmasked:
            log.error(
                "disk queue: %d records in %s were accepted by a sidecar that did not mask them "
                "(policy.mode dry_run or passthrough): they are held on disk and not sent by this one, "
                "which masks; a sidecar in that mode sends them, or delete their segments "
                "(segment-*.log beside a segment-*.unmasked) to drop them", self.held_unmasked, self.dir)
        if append:
            self._roll(self._first_new)
        return self.take(self._waiting if limit is None else limit)

    def _scan(self, segment: _Segment) -> None:
        """Count the segment's records and those acknowledged, each record's checksum checked, and
        the bytes of the others by signal; the file is read a piece at a time, never whole."""
        reader, acked = _Reader(segment.path), _Acked(segment.acks_path)
        try:
            size = segment.path.stat().st_size
            offset = 0
            while offset < size:
                header = reader.read(offset, _HEADER.size)
                problem = ""
                if len(header) < _HEADER.size:
                    problem = "cut short in a record header"
                else:
                    magic, code, _items, length, crc = _HEADER.unpack(header)
                    if magic != MAGIC or code >= len(_SIGNALS):
                        problem = "bad record header"
                    else:
                        found = reader.checksum(offset + _HEADER.size, length)
                        if found is None:
                            problem = "cut short in a payload"
                        elif found != crc:
                            problem = "checksum mismatch"
                if problem:
                    self.corrupt += 1
                    log.error(
                        "disk queue: %s at offset %d of %s; skipping the rest of that segment",
                        problem, offset, segment.path.name,
                    )
                    break
                segment.records += 1
                if offset in acked:
                    segment.acked += 1
                else:
                    self.unsent[_SIGNALS[code]] += record_size(length)
                offset += record_size(length)
            segment.bytes = offset
        finally:
            reader.close()

    def take(self, count: int) -> list[Record]:
        """The next ``count`` records (at most) waiting on disk, oldest first: read a header at a
        time from where the last take stopped, acknowledged records passed over."""
        taken: list[Record] = []
        while len(taken) < count and self._unread:
            segment = self._unread[0]
            try:
                self._take_from(segment, count, taken)
            except OSError as exc:  # removed or damaged under us since the scan
                self._give_up_waiting(segment, exc.strerror or str(exc))
            if not segment.waiting:
                self._unread.popleft()
                self._forget_reader()
        self._waiting -= len(taken)
        self.loaded += len(taken)
        return taken

    def _take_from(self, segment: _Segment, count: int, taken: list[Record]) -> None:
        if self._reader is None or self._acked is None:
            self._reader, self._acked = _Reader(segment.path), _Acked(segment.acks_path)
        while len(taken) < count and segment.waiting:
            offset = segment.next_offset
            header = self._reader.read(offset, _HEADER.size)
            if offset >= segment.bytes or len(header) < _HEADER.size:
                raise OSError(errno.EIO, "the segment is shorter than when it was scanned")
            magic, code, items, length, _crc = _HEADER.unpack(header)
            if magic != MAGIC or code >= len(_SIGNALS):
                raise OSError(errno.EIO, "a record header changed since the segment was scanned")
            segment.next_offset = offset + record_size(length)
            if offset in self._acked:
                continue
            taken.append(Record(self.number, segment.number, offset, _SIGNALS[code], items, length, replayed=True))
            segment.waiting -= 1  # the log's counts: by take(), for all it took

    def _forget_reader(self) -> None:
        if self._reader is not None:
            self._reader.close()
        self._reader = self._acked = None

    def _give_up_waiting(self, segment: _Segment, why: str) -> None:
        """The records of ``segment`` not taken yet cannot be read: counted as damaged and logged,
        never a crash; the segment is deleted once the ones taken have left."""
        self.corrupt += 1
        log.error("disk queue: cannot read %s at offset %d (%s); its %d records not yet queued are skipped",
                  segment.path.name, segment.next_offset, why, segment.waiting)
        self._waiting -= segment.waiting
        segment.records -= segment.waiting
        segment.waiting = 0
        if segment.acked >= segment.records and segment.number in self._segments:
            self._bytes -= segment.bytes
            self._delete(segment)
            del self._segments[segment.number]

    # -- appending ----------------------------------------------------------------------------

    async def append(self, signal: Signal, items: int, data: builtins.bytes) -> Record:  # `bytes` is a property here
        """Write one record; return once it is durable on disk (the disk queue keeps the budget)."""
        size = record_size(len(data))
        if self._active is None:  # the last one was given up (a write the disk did not take)
            self._roll(self._last_number + 1)
        segment = self._active
        assert segment is not None, "open() first"
        if segment.bytes and segment.bytes + size > self.segment_bytes:
            self._seal_active()
            segment = self._active
            assert segment is not None
        header = _HEADER.pack(MAGIC, _SIGNALS.index(signal), items, len(data), zlib.crc32(data))
        offset = segment.bytes
        fd = self._fd
        self._write_whole(header + data, offset)
        segment.bytes += size
        segment.records += 1
        self._bytes += size
        record = Record(self.number, segment.number, offset, signal, items, len(data))
        await self._sync(fd)
        return record

    def _write_whole(self, blob: builtins.bytes, offset: int) -> None:
        """Append ``blob`` at ``offset`` (the segment's end) whole, or raise OSError with the segment
        as it was: a full disk (or a file size limit) may take part of a write without an error,
        and a record cut short would be acknowledged to the app, then break every record after
        it. What a failed write left is cut off again; if even that fails, the segment is sealed
        (a replay stops at the cut record, after every good one) and the next record starts a new one."""
        done = 0
        try:
            while done < len(blob):
                wrote = os.write(self._fd, memoryview(blob)[done:])
                if wrote <= 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                done += wrote
        except OSError:
            if done:
                try:
                    os.ftruncate(self._fd, offset)
                except OSError as exc:
                    self._give_up_active(offset + done, exc)
            raise

    def _give_up_active(self, size: int, exc: OSError) -> None:
        """The segment being written to ends in a record cut short that cannot be cut off: nothing
        more is written to it (a replay stops at the cut record, after every good one), and the
        next append starts a new segment, or is refused while none can be opened."""
        segment = self._active
        assert segment is not None
        log.error("disk queue: cannot cut a partly written record off %s (%s); the next record starts a "
                  "new segment", segment.path.name, exc.strerror)
        self._bytes += size - segment.bytes
        segment.bytes = size
        fd, self._fd = self._fd, -1  # never written through again, whatever reuses the number
        self._detach(fd)  # the appends before it still waiting are synced, then it is closed
        segment.sealed = True
        self._active = None
        if segment.acked >= segment.records:
            self._bytes -= segment.bytes
            self._delete(segment)
            del self._segments[segment.number]

    async def _sync(self, fd: int) -> None:
        """Group commit: one round of fdatasync covers every append made before it started, each
        through the descriptor it was written through (the segment being written, or one sealed
        since). Raises the round's OSError if that descriptor's fdatasync failed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._sync_waiters.append((fd, future))
        if not self._syncing:
            self._syncing = True
            self._sync_task = loop.create_task(self._sync_loop())
        await future

    async def _sync_loop(self) -> None:
        """Rounds of fdatasync in the executor, never on the event loop, while appends wait or
        descriptors wait to be closed. A descriptor detached before a round takes no more writes, so
        every append still waiting on it is in that round: it is closed at the end of it."""
        loop = asyncio.get_running_loop()
        try:
            while self._sync_waiters or self._detached:
                waiters, self._sync_waiters = self._sync_waiters, []
                closing, self._detached = self._detached, []
                fds = list(dict.fromkeys(fd for fd, _ in waiters))  # oldest segment first
                failed = await loop.run_in_executor(None, _sync_and_close, fds, closing)
                for fd, future in waiters:
                    if future.done():  # the append was cancelled (its record is synced all the same)
                        continue
                    error = failed.get(fd)
                    if error is None:
                        future.set_result(None)
                    else:  # not durable: the append fails (the app is refused retryably)
                        future.set_exception(error)
        finally:
            self._syncing = False
            # left only when cancelled (the event loop shutting down): nothing waits on them any more
            for fd in self._detached:
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._detached.clear()

    def _detach(self, fd: int) -> None:
        """``fd`` is never written through again: closed now when no sync loop runs (every append
        written through it is then synced or failed, and no fdatasync is using it), else by the sync
        loop after its next round."""
        if fd < 0:
            return
        if self._syncing:
            self._detached.append(fd)
            return
        with contextlib.suppress(OSError):  # its records are durable or their appends failed already
            os.close(fd)

    # -- reading and acknowledging ------------------------------------------------------------

    def _read_fd(self, number: int) -> int:
        fd = self._read_fds.get(number)
        if fd is None:
            fd = self._read_fds[number] = os.open(self._path(number), os.O_RDONLY)
        return fd

    def read(self, record: Record) -> builtins.bytes:
        return self.read_all((record,))[0]

    def read_all(self, records: Sequence[Record]) -> list[builtins.bytes]:
        """The payloads of ``records`` (of this log), in order. Records near each other in a segment
        (a run within READ_RUN_BYTES, each after the one before) are read with one pread: a batch
        of a replay holds thousands of one-span records, read one by one they held the loop for
        tens of milliseconds. Raises OSError (EIO) naming the first record cut short or damaged."""
        payloads: list[builtins.bytes] = []
        count = len(records)
        first = 0
        while first < count:
            start = records[first].offset
            end = start + record_size(records[first].length)
            last = first + 1
            while last < count:
                record = records[last]
                record_end = record.offset + record_size(record.length)
                if (record.segment != records[first].segment or record.offset < end
                        or record_end - start > READ_RUN_BYTES):
                    break
                end = record_end
                last += 1
            raw = memoryview(os.pread(self._read_fd(records[first].segment), end - start, start))
            for record in records[first:last]:
                payloads.append(self._payload(record, raw[record.offset - start :]))
            first = last
        return payloads

    def _payload(self, record: Record, raw: memoryview) -> builtins.bytes:
        """The payload of ``record`` from ``raw`` (the bytes from its header on), checked."""
        if len(raw) >= _HEADER.size + record.length:
            magic, _code, _items, length, crc = _HEADER.unpack_from(raw)
            payload = raw[_HEADER.size : _HEADER.size + record.length]
            if magic == MAGIC and length == record.length and zlib.crc32(payload) == crc:
                return payload.tobytes()
        # never sent as a request: counted as unreadable (disk_read) by the caller
        raise OSError(errno.EIO, f"record at offset {record.offset} of {self._path(record.segment).name} "
                                 "is damaged (cut short or its checksum does not match)")

    def ack(self, record: Record) -> None:
        """The record left the sidecar; a segment with every record acknowledged is deleted."""
        self.ack_all((record,))

    def ack_all(self, records: Iterable[Record]) -> None:
        """The records (of this log) left the sidecar: their offsets are appended to their segments'
        .acks files, one write a segment (a batch of a replay holds thousands of one-span records:
        a file opened for each took 70 % of the loop's time draining them); a segment with every
        record acknowledged is deleted."""
        offsets: dict[int, list[int]] = {}
        for record in records:
            if record.segment < self._first_new:
                self.loaded -= 1
            offsets.setdefault(record.segment, []).append(record.offset)
        for number, acked in offsets.items():
            segment = self._segments.get(number)
            if segment is None:
                continue
            try:
                _append_acks(segment.acks_path, b"".join(map(_ACK.pack, acked)))
            except OSError as exc:  # a full disk, its directory removed under us: sent again after a restart
                if not self._ack_failed:
                    log.error("disk queue: cannot write acknowledgements in %s (%s): records sent may be sent "
                              "again after a restart", self.dir, exc.strerror)
                self._ack_failed = True
            segment.acked += len(acked)
            if segment.sealed and segment.acked >= segment.records:
                self._bytes -= segment.bytes
                self._delete(segment)
                del self._segments[segment.number]

    @property
    def reclaimable(self) -> int:
        """Bytes of the segment being written to when every record in it has left: deleted as
        soon as room is needed (reclaim), so not held for anything."""
        segment = self._active
        if segment is None or segment.acked < segment.records:
            return 0
        return segment.bytes

    def reclaim(self) -> bool:
        """Delete the segment being written to if every record in it has left (a segment is
        otherwise deleted only once sealed, when full); True if bytes were freed."""
        segment = self._active
        if segment is None or not segment.bytes or segment.acked < segment.records:
            return False
        self._seal_active()
        return True

    def close(self) -> None:
        """Close the log's files. The file being written is closed at once unless appends still
        wait for its sync: the sync loop then syncs it for them and closes it after that round."""
        fd, self._fd = self._fd, -1
        self._detach(fd)
        for fd in self._read_fds.values():
            os.close(fd)
        self._read_fds.clear()
        self._forget_reader()  # a take after this opens the file again

    # -- segments -----------------------------------------------------------------------------

    def _path(self, number: int) -> Path:
        return self.dir / f"segment-{number:010d}.log"

    def _roll(self, number: int) -> None:
        segment = _Segment(number, self._path(number))
        with contextlib.suppress(FileNotFoundError):
            segment.acks_path.unlink()  # a new segment has no record sent yet
        if self.masks:
            with contextlib.suppress(FileNotFoundError):
                segment.unmasked_path.unlink()  # left by a crash in the middle of a delete
        else:  # before the segment's first record: no record of it is ever read as masked
            os.close(os.open(segment.unmasked_path, os.O_WRONLY | os.O_CREAT, 0o600))
        self._fd = os.open(segment.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._segments[number] = segment
        self._active = segment
        self._last_number = number

    def _seal_active(self) -> None:
        """Start a new segment. No fdatasync here, on the event loop: the appends to the sealed one
        still waiting are made durable by the sync loop (in the executor), which then closes its
        file; if their fdatasync fails, they fail. A segment whose records all left is deleted now
        (its file may still be open for the sync loop: unlinking it under that is safe)."""
        segment = self._active
        assert segment is not None
        fd, self._fd = self._fd, -1  # never written through again, whatever reuses the number
        self._active = None
        self._detach(fd)
        segment.sealed = True
        if segment.acked >= segment.records:
            self._bytes -= segment.bytes
            self._delete(segment)
            del self._segments[segment.number]
        self._roll(segment.number + 1)

    def _delete(self, segment: _Segment) -> None:
        # its write descriptor, if the sync loop still holds it, is closed there
        fd = self._read_fds.pop(segment.number, None)
        if fd is not None:
            os.close(fd)
        # the acknowledgements first: a crash between the two then means records sent again (at
        # least once), never records read as sent
        for path in (segment.acks_path, segment.path, segment.unmasked_path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
