"""Compression of an export batch from its parts, without joining them first.

A batch is the requests the queue merged (concatenated Export*ServiceRequest messages are one
request). Joining them to compress the result held a second copy of the batch, and zstd's one-shot
API a third buffer of the batch's size for its output (``ZSTD_compressBound``), for each export in
flight. Here the parts are fed to one streaming compressor in turn and only the compressed output
is held: the same encodings and levels as :func:`sidecar.wire.compression.compress`, one frame or
member, decoded by any peer as before.

Where a large batch is compressed (:func:`compress_async`): with two cores or more to run on, in
a worker thread (zlib and zstd release the GIL, so the event loop goes on in parallel); with one
(a CPU limit of one core or less, or an affinity of one CPU), on the event loop in slices. There a
worker thread only takes turns with the loop on the one core, and the scheduler's turns are
milliseconds long: an app's request that arrives meanwhile waits for them (p99 of 4-5 ms at
500k items/s in ``make bench``). In slices, the loop serves what arrived after each 64 kB while
the export queue is empty, and takes longer turns as it fills (:data:`MAX_TURN` from half
full), so the export keeps up with a saturated loop and the queue stays short.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import os
import threading
import time
import weakref
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import zstandard

from sidecar.wire import compression

#: a batch as the exporters take it: one request, or the requests merged into it, in order
Payload = bytes | Sequence[bytes]

#: batches at least this large are compressed in the worker thread (zlib and zstd release the
#: GIL): the event loop keeps answering apps meanwhile
THREAD_THRESHOLD = 64 * 1024

#: zstandard's compressor objects must not be used by two threads at once: one per thread and level
_LOCAL = threading.local()
#: the largest zstd window of a batch compressed in parts (8 MiB: the most RFC 8878 asks every
#: decoder to support). zstd's own window for level 1 is 512 KiB: streamed through it, a larger
#: batch wraps zstd's input buffer, and matches across the wrap take a slower path (a fifth of
#: zstd's samples in a profile of an unsampled logs row; 8-12 % of its cost). The batch's size is given
#: first, so zstd shrinks the window to it (one segment: a decoder writes straight to its output);
#: each compressor's context then keeps a buffer the size of the largest batch it has compressed
#: (``exporter.batch_max_bytes``, 4 MiB by default, where 640 KiB before)
STREAM_WINDOW_LOG = 23
#: one worker thread for all export compression (one zstd context, one malloc arena)
_WORKER: concurrent.futures.ThreadPoolExecutor | None = None

#: where :func:`compress_async` compresses a large batch (``exporter.compress_in``)
PLACES = ("auto", "thread", "loop")
#: on the loop: the input compressed between two looks at what else is ready
SLICE = 64 << 10
#: on the loop: the longest turn of compression, once the export queue is half full
MAX_TURN = 0.0005
#: how full the export queue is (0 to 1), set by each export worker before it sends a batch
backlog: contextvars.ContextVar[float] = contextvars.ContextVar("backlog", default=0.0)
#: on each loop, one compression in slices at a time, with zstd compressors of its own (a
#: compressor's context serves one stream at a time; :func:`compress` on the loop uses another)
_LoopState = tuple[asyncio.Lock, dict[int, zstandard.ZstdCompressor]]
_ON_LOOP: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState] = weakref.WeakKeyDictionary()


def parts_of(data: Payload) -> Sequence[bytes]:
    return (data,) if isinstance(data, bytes) else data


def size_of(data: Payload) -> int:
    return sum(len(part) for part in parts_of(data))


def joined(data: Payload) -> bytes:
    """The batch as one request (a copy only when it has several parts)."""
    parts = parts_of(data)
    return bytes(parts[0]) if len(parts) == 1 else b"".join(parts)


def stream_compressor(level: int) -> zstandard.ZstdCompressor:
    """A zstd compressor for a batch fed in parts: ``level``'s parameters with a window as large
    as the batch (up to :data:`STREAM_WINDOW_LOG`)."""
    params = zstandard.ZstdCompressionParameters.from_level(level, window_log=STREAM_WINDOW_LOG)
    return zstandard.ZstdCompressor(compression_params=params)


def _zstd(level: int) -> zstandard.ZstdCompressor:
    compressors: dict[int, zstandard.ZstdCompressor] | None = getattr(_LOCAL, "compressors", None)
    if compressors is None:
        compressors = _LOCAL.compressors = {}
    compressor = compressors.get(level)
    if compressor is None:
        compressor = compressors[level] = stream_compressor(level)
    return compressor


def compress(encoding: str, data: Payload, level: int = compression.DEFAULT_LEVEL) -> bytes:
    """``data`` encoded as one zstd frame (with its content size) or one gzip / zlib stream."""
    return b"".join(compress_parts(encoding, data, level))


def compress_parts(encoding: str, data: Payload, level: int = compression.DEFAULT_LEVEL) -> list[bytes]:
    """:func:`compress`'s bytes in the pieces the compressor gave them, not joined (a caller that
    puts something before them joins once)."""
    parts = parts_of(data)
    if encoding == compression.IDENTITY:
        return [joined(parts)]
    if len(parts) == 1:
        return [compression.compress(encoding, bytes(parts[0]), level)]
    stream = _stream(encoding, level, size_of(parts))
    out = [stream.compress(part) for part in parts]
    out.append(stream.flush())
    return out


async def compress_async(
    encoding: str, data: Payload, level: int = compression.DEFAULT_LEVEL, place: str = "auto"
) -> bytes:
    """:func:`compress`; a large batch in the worker thread or on the loop in slices (``place``:
    ``auto`` picks the thread with two cores or more to run on)."""
    return b"".join(await compress_parts_async(encoding, data, level, place, joined_in_thread=True))


async def compress_parts_async(
    encoding: str, data: Payload, level: int = compression.DEFAULT_LEVEL, place: str = "auto",
    *, joined_in_thread: bool = False,
) -> list[bytes]:
    """:func:`compress_async`'s bytes in pieces, not joined (as :func:`compress_parts`); in the
    worker thread joined there when ``joined_in_thread`` (then one piece)."""
    global _WORKER
    if encoding == compression.IDENTITY or size_of(data) < THREAD_THRESHOLD:
        return compress_parts(encoding, data, level)
    if place == "loop" or (place == "auto" and usable_cores() < 2):
        return await _compress_on_loop(encoding, data, level)
    if _WORKER is None:
        _WORKER = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="compress")
    loop = asyncio.get_running_loop()
    if joined_in_thread:
        return [await loop.run_in_executor(_WORKER, compress, encoding, data, level)]
    return await loop.run_in_executor(_WORKER, compress_parts, encoding, data, level)


def turn_for(fill: float) -> float:
    """Seconds of compression per turn of the loop at an export queue ``fill`` (0 to 1): one
    slice when it is empty, longer turns as it fills, :data:`MAX_TURN` from half full."""
    return MAX_TURN * min(1.0, max(0.0, 2.0 * fill))


class _Stream(Protocol):
    def compress(self, data: bytes | memoryview, /) -> bytes: ...
    def flush(self) -> bytes: ...


def _stream(encoding: str, level: int, size: int, zstd: zstandard.ZstdCompressor | None = None) -> _Stream:
    if encoding == "zstd":
        return (zstd or _zstd(level)).compressobj(size=size)
    zlib_level = min(9, max(1, level))
    if encoding == "gzip":
        return zlib.compressobj(zlib_level, zlib.DEFLATED, 31)  # wbits 31: the gzip container
    if encoding == "deflate":  # the zlib container, as zlib.compress writes it
        return zlib.compressobj(zlib_level)
    raise compression.UnsupportedEncoding(encoding)


async def _compress_on_loop(encoding: str, data: Payload, level: int) -> list[bytes]:
    loop = asyncio.get_running_loop()
    state = _ON_LOOP.get(loop)
    if state is None:
        state = _ON_LOOP[loop] = (asyncio.Lock(), {})
    lock, compressors = state
    parts = parts_of(data)
    async with lock:
        zstd = compressors.get(level) if encoding == "zstd" else None
        if encoding == "zstd" and zstd is None:
            zstd = compressors[level] = stream_compressor(level)
        stream = _stream(encoding, level, size_of(parts), zstd)
        out: list[bytes] = []
        turn, started = turn_for(backlog.get()), time.perf_counter()  # the fill as this export began
        for part in parts:
            view = memoryview(part)
            for pos in range(0, len(view), SLICE):
                out.append(stream.compress(view[pos : pos + SLICE]))
                if time.perf_counter() - started >= turn:
                    await asyncio.sleep(0)  # what arrived meanwhile is served
                    started = time.perf_counter()
        out.append(stream.flush())
    return out


@functools.cache
def usable_cores() -> float:
    """CPUs this process may use: its affinity, bounded by its cgroup's CPU quota (read once)."""
    return cores_from(len(os.sched_getaffinity(0)), Path("/sys/fs/cgroup"))


def cores_from(affinity: int, cgroup: Path) -> float:
    """``affinity`` CPUs, bounded by the quota in the cgroup file system at ``cgroup`` (v2's
    ``cpu.max``, or v1's ``cpu/cpu.cfs_quota_us`` over ``cpu.cfs_period_us``)."""
    for files in (("cpu.max",), ("cpu/cpu.cfs_quota_us", "cpu/cpu.cfs_period_us")):
        try:
            fields = [word for name in files for word in (cgroup / name).read_text().split()]
            quota, period = fields[0], int(fields[1])
            if quota in ("max", "-1"):
                return float(affinity)
            return min(float(affinity), int(quota) / period)
        except (OSError, ValueError, IndexError, ZeroDivisionError):
            continue
    return float(affinity)
