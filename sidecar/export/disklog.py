"""The optional on-disk queue: accepted requests are on disk before the app is told "accepted".

Format (docs/reliability.md): the directory holds segment files
``segment-<n>.log`` (n increasing, zero-padded) and, beside each, ``segment-<n>.acks``.
A segment is a run of records::

    magic "OSQ1" | signal (1 byte: 0 traces, 1 metrics, 2 logs) | items (u32 BE)
    | length (u32 BE) | crc32 of the payload (u32 BE) | payload (the request bytes)

The ``.acks`` file lists the offsets (u64 BE) of records that left the sidecar
(exported, or failed for good). On start every record not acknowledged is
replayed. A record that fails its checksum or is cut short (a crash mid-write)
ends the replay of that segment; it is counted and logged, never a crash. A
segment whose records are all acknowledged is deleted. Appends are made durable
with one ``fdatasync`` for all the appends waiting at that moment (group commit).
Delivery is at least once: an acknowledgement not yet written when the process
dies means the record is sent again after restart.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry

from sidecar.export import metrics
from sidecar.signals import Signal

log = logging.getLogger(__name__)

MAGIC = b"OSQ1"
_HEADER = struct.Struct(">4sBIII")
_ACK = struct.Struct(">Q")
_SIGNALS = (Signal.TRACES, Signal.METRICS, Signal.LOGS)


class DiskFull(Exception):
    """The on-disk queue reached its size limit: refuse retryably."""


@dataclass(frozen=True)
class Record:
    segment: int
    offset: int
    signal: Signal
    items: int
    length: int

    @property
    def size(self) -> int:
        return _HEADER.size + self.length


class _Segment:
    def __init__(self, number: int, path: Path) -> None:
        self.number = number
        self.path = path
        self.acks_path = path.with_suffix(".acks")
        self.records = 0
        self.acked = 0
        self.bytes = 0
        self.sealed = False


class DiskLog:
    def __init__(
        self,
        directory: str,
        *,
        max_bytes: int,
        segment_bytes: int = 16 << 20,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.dir = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self._segments: dict[int, _Segment] = {}
        self._active: _Segment | None = None
        self._fd = -1
        self._read_fds: dict[int, int] = {}
        self._bytes = 0
        self._sync_waiters: list[asyncio.Future[None]] = []
        self._syncing = False
        registry = registry or CollectorRegistry()
        self._size = metrics.DISK_QUEUE_SIZE.gauge(registry)
        self._capacity = metrics.DISK_QUEUE_CAPACITY.gauge(registry)
        self._corrupt = metrics.DISK_QUEUE_CORRUPT.counter(registry)
        self._replayed = metrics.DISK_QUEUE_REPLAYED.counter(registry)
        self._capacity.set(max_bytes)

    @property
    def bytes(self) -> int:
        return self._bytes

    # -- start: replay ------------------------------------------------------------------------

    def open(self) -> list[Record]:
        """Create or scan the directory; return the records still to export, oldest first."""
        self.dir.mkdir(parents=True, exist_ok=True)
        pending: list[Record] = []
        numbers = sorted(int(p.stem.split("-")[1]) for p in self.dir.glob("segment-*.log"))
        for number in numbers:
            segment = _Segment(number, self._path(number))
            segment.sealed = True
            records = self._scan(segment)
            acked = self._read_acks(segment)
            left = [r for r in records if r.offset not in acked]
            segment.records = len(records)
            segment.acked = len(records) - len(left)
            if not left:
                self._delete(segment)
                continue
            self._segments[number] = segment
            self._bytes += segment.bytes
            pending.extend(left)
        if pending:
            self._replayed.inc(len(pending))
            log.info("disk queue: replaying %d records from %s", len(pending), self.dir)
        self._roll(max(numbers, default=0) + 1)
        self._size.set(self._bytes)
        return pending

    def _scan(self, segment: _Segment) -> list[Record]:
        records: list[Record] = []
        data = segment.path.read_bytes()
        offset = 0
        while offset < len(data):
            header = data[offset : offset + _HEADER.size]
            problem = ""
            if len(header) < _HEADER.size:
                problem = "cut short in a record header"
            else:
                magic, code, items, length, crc = _HEADER.unpack(header)
                payload = data[offset + _HEADER.size : offset + _HEADER.size + length]
                if magic != MAGIC or code >= len(_SIGNALS):
                    problem = "bad record header"
                elif len(payload) < length:
                    problem = "cut short in a payload"
                elif zlib.crc32(payload) != crc:
                    problem = "checksum mismatch"
            if problem:
                self._corrupt.inc()
                log.error(
                    "disk queue: %s at offset %d of %s; skipping the rest of that segment",
                    problem, offset, segment.path.name,
                )
                break
            records.append(Record(segment.number, offset, _SIGNALS[code], items, length))
            offset += _HEADER.size + length
        segment.bytes = offset
        return records

    def _read_acks(self, segment: _Segment) -> set[int]:
        try:
            raw = segment.acks_path.read_bytes()
        except FileNotFoundError:
            return set()
        usable = len(raw) - len(raw) % _ACK.size
        return {_ACK.unpack_from(raw, i)[0] for i in range(0, usable, _ACK.size)}

    # -- appending ----------------------------------------------------------------------------

    async def append(self, signal: Signal, items: int, data: builtins.bytes) -> Record:  # `bytes` is a property here
        """Write one record; return once it is durable on disk. Raises DiskFull."""
        size = _HEADER.size + len(data)
        if self._bytes + size > self.max_bytes:
            raise DiskFull(f"disk queue is full ({self._bytes} of {self.max_bytes} bytes)")
        segment = self._active
        assert segment is not None, "open() first"
        if segment.bytes and segment.bytes + size > self.segment_bytes:
            self._seal_active()
            segment = self._active
            assert segment is not None
        header = _HEADER.pack(MAGIC, _SIGNALS.index(signal), items, len(data), zlib.crc32(data))
        offset = segment.bytes
        os.write(self._fd, header + data)
        segment.bytes += size
        segment.records += 1
        self._bytes += size
        self._size.set(self._bytes)
        record = Record(segment.number, offset, signal, items, len(data))
        await self._sync()
        return record

    async def _sync(self) -> None:
        """Group commit: one fdatasync covers every append made before it started."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sync_waiters.append(future)
        if not self._syncing:
            self._syncing = True
            asyncio.get_running_loop().create_task(self._sync_loop())
        await future

    async def _sync_loop(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._sync_waiters:
                waiters, self._sync_waiters = self._sync_waiters, []
                try:
                    await loop.run_in_executor(None, os.fdatasync, self._fd)
                except OSError as exc:
                    for future in waiters:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for future in waiters:
                    if not future.done():
                        future.set_result(None)
        finally:
            self._syncing = False

    # -- reading and acknowledging ------------------------------------------------------------

    def read(self, record: Record) -> builtins.bytes:
        fd = self._read_fds.get(record.segment)
        if fd is None:
            fd = self._read_fds[record.segment] = os.open(self._path(record.segment), os.O_RDONLY)
        return os.pread(fd, record.length, record.offset + _HEADER.size)

    def ack(self, record: Record) -> None:
        """The record left the sidecar; a segment with every record acknowledged is deleted."""
        segment = self._segments.get(record.segment)
        if segment is None:
            return
        with open(segment.acks_path, "ab") as handle:
            handle.write(_ACK.pack(record.offset))
        segment.acked += 1
        if segment.sealed and segment.acked >= segment.records:
            self._bytes -= segment.bytes
            self._size.set(self._bytes)
            self._delete(segment)
            del self._segments[segment.number]

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        for fd in self._read_fds.values():
            os.close(fd)
        self._read_fds.clear()

    # -- segments -----------------------------------------------------------------------------

    def _path(self, number: int) -> Path:
        return self.dir / f"segment-{number:010d}.log"

    def _roll(self, number: int) -> None:
        segment = _Segment(number, self._path(number))
        self._fd = os.open(segment.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._segments[number] = segment
        self._active = segment

    def _seal_active(self) -> None:
        segment = self._active
        assert segment is not None
        os.fdatasync(self._fd)
        os.close(self._fd)
        segment.sealed = True
        if segment.acked >= segment.records:
            self._bytes -= segment.bytes
            self._delete(segment)
            del self._segments[segment.number]
        self._roll(segment.number + 1)

    def _delete(self, segment: _Segment) -> None:
        fd = self._read_fds.pop(segment.number, None)
        if fd is not None:
            os.close(fd)
        for path in (segment.path, segment.acks_path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
