"""Compression of an export batch from its parts, without joining them first.

A batch is the requests the queue merged (concatenated Export*ServiceRequest messages are one
request). Joining them to compress the result held a second copy of the batch, and zstd's one-shot
API a third buffer of the batch's size for its output (``ZSTD_compressBound``), for each export in
flight. Here the parts are fed to one streaming compressor in turn and only the compressed output
is held: the same encodings and levels as :func:`sidecar.wire.compression.compress`, one frame or
member, decoded by any peer as before.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import zlib
from collections.abc import Sequence

import zstandard

from sidecar.wire import compression

#: a batch as the exporters take it: one request, or the requests merged into it, in order
Payload = bytes | Sequence[bytes]

#: batches at least this large are compressed in the worker thread (zlib and zstd release the
#: GIL): the event loop keeps answering apps meanwhile
THREAD_THRESHOLD = compression.THREAD_THRESHOLD

#: zstandard's compressor objects must not be used by two threads at once: one per thread and level
_LOCAL = threading.local()
#: one worker thread for all export compression (one zstd context, one malloc arena)
_WORKER: concurrent.futures.ThreadPoolExecutor | None = None


def parts_of(data: Payload) -> Sequence[bytes]:
    return (data,) if isinstance(data, bytes) else data


def size_of(data: Payload) -> int:
    return sum(len(part) for part in parts_of(data))


def joined(data: Payload) -> bytes:
    """The batch as one request (a copy only when it has several parts)."""
    parts = parts_of(data)
    return bytes(parts[0]) if len(parts) == 1 else b"".join(parts)


def _zstd(level: int) -> zstandard.ZstdCompressor:
    compressors: dict[int, zstandard.ZstdCompressor] | None = getattr(_LOCAL, "compressors", None)
    if compressors is None:
        compressors = _LOCAL.compressors = {}
    compressor = compressors.get(level)
    if compressor is None:
        compressor = compressors[level] = zstandard.ZstdCompressor(level=level)
    return compressor


def compress(encoding: str, data: Payload, level: int = compression.DEFAULT_LEVEL) -> bytes:
    """``data`` encoded as one zstd frame (with its content size) or one gzip / zlib stream."""
    parts = parts_of(data)
    if encoding == compression.IDENTITY:
        return joined(parts)
    if len(parts) == 1:
        return compression.compress(encoding, bytes(parts[0]), level)
    out: list[bytes] = []
    if encoding == "zstd":
        zstd = _zstd(level).compressobj(size=size_of(parts))
        out.extend(zstd.compress(part) for part in parts)
        out.append(zstd.flush())
        return b"".join(out)
    zlib_level = min(9, max(1, level))
    if encoding == "gzip":
        stream = zlib.compressobj(zlib_level, zlib.DEFLATED, 31)  # wbits 31: the gzip container
    elif encoding == "deflate":
        stream = zlib.compressobj(zlib_level)  # the zlib container, as zlib.compress writes it
    else:
        raise compression.UnsupportedEncoding(encoding)
    out.extend(stream.compress(part) for part in parts)
    out.append(stream.flush())
    return b"".join(out)


async def compress_async(encoding: str, data: Payload, level: int = compression.DEFAULT_LEVEL) -> bytes:
    """:func:`compress`, in the worker thread for a large batch."""
    global _WORKER
    if encoding == compression.IDENTITY or size_of(data) < THREAD_THRESHOLD:
        return compress(encoding, data, level)
    if _WORKER is None:
        _WORKER = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="compress")
    return await asyncio.get_running_loop().run_in_executor(_WORKER, compress, encoding, data, level)
