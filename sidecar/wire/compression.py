"""gzip, deflate and zstd for request bodies and gRPC messages, with a bound on the decompressed size."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import zlib

import zstandard

#: encodings the sidecar accepts, in the order it advertises them
ENCODINGS = ("gzip", "zstd", "deflate")
IDENTITY = "identity"

#: zstandard's (de)compressor objects must not be used by two threads at once (a crash, not an
#: error): each thread gets its own
_ZSTD = threading.local()


#: the level the exporters use unless configured (exporter.compression_level): zstd 1 compresses
#: a trace batch about as well as zstd's default 3 (5.4:1 against 5.6:1) at half the CPU
DEFAULT_LEVEL = 1


def _zstd_compressor(level: int) -> zstandard.ZstdCompressor:
    compressors = getattr(_ZSTD, "compressors", None)
    if compressors is None:
        compressors = _ZSTD.compressors = {}
    compressor = compressors.get(level)
    if compressor is None:
        compressor = compressors[level] = zstandard.ZstdCompressor(level=level)
    return compressor


def _zstd_decompressor() -> zstandard.ZstdDecompressor:
    decompressor = getattr(_ZSTD, "decompressor", None)
    if decompressor is None:
        decompressor = _ZSTD.decompressor = zstandard.ZstdDecompressor()
    return decompressor


class DecompressionError(ValueError):
    """The body is not valid data in the encoding it claims."""


class TooLarge(ValueError):
    """The body, or what it decompresses to, exceeds the configured limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"request exceeds the limit of {limit} bytes")
        self.limit = limit


class UnsupportedEncoding(ValueError):
    """The encoding is none the sidecar knows."""

    def __init__(self, encoding: str) -> None:
        allowed = ", ".join((IDENTITY, *ENCODINGS))
        super().__init__(f"unsupported encoding {encoding!r}; supported: {allowed}")
        self.encoding = encoding


def normalize(encoding: str | None) -> str:
    """Lower-case, trimmed; empty means identity. Raises UnsupportedEncoding."""
    value = (encoding or "").strip().lower()
    if value in ("", IDENTITY):
        return IDENTITY
    if value == "x-gzip":
        return "gzip"
    if value not in ENCODINGS:
        raise UnsupportedEncoding(value)
    return value


def decompress(encoding: str, data: bytes | memoryview, limit: int) -> bytes | memoryview:
    """Decode ``data``; never produce more than ``limit`` bytes (raises TooLarge). Identity
    returns ``data`` itself."""
    if encoding == IDENTITY:
        if len(data) > limit:
            raise TooLarge(limit)
        return data
    if encoding in ("gzip", "deflate"):
        # zlib's auto-detection takes both the gzip and the zlib ("deflate") container
        return _gunzip(data, limit)
    if encoding == "zstd":
        return _unzstd(data, limit)
    raise UnsupportedEncoding(encoding)


def compress(encoding: str, data: bytes, level: int = DEFAULT_LEVEL) -> bytes:
    """Encode ``data``. ``level``: zstd's (-7 fastest to 19); gzip and deflate clamp it to 1-9."""
    if encoding == IDENTITY:
        return data
    if encoding == "zstd":
        return _zstd_compressor(level).compress(data)
    zlib_level = min(9, max(1, level))
    if encoding == "gzip":
        # wbits 31 writes the gzip container
        compressor = zlib.compressobj(zlib_level, zlib.DEFLATED, 31)
        return compressor.compress(data) + compressor.flush()
    if encoding == "deflate":
        return zlib.compress(data, zlib_level)
    raise UnsupportedEncoding(encoding)


#: payloads at least this large are compressed in a worker thread: zlib and zstd release the
#: GIL, so a batch compresses on the other core while the event loop keeps answering apps
THREAD_THRESHOLD = 64 * 1024


#: one worker thread for all compression: one zstd context and one malloc arena, not one per
#: thread of asyncio's default pool (several MiB each); the sidecar has one core to give anyway
_WORKER: concurrent.futures.ThreadPoolExecutor | None = None


async def compress_async(encoding: str, data: bytes, level: int = DEFAULT_LEVEL) -> bytes:
    """:func:`compress`, off the event loop for large payloads."""
    global _WORKER
    if encoding == IDENTITY or len(data) < THREAD_THRESHOLD:
        return compress(encoding, data, level)
    if _WORKER is None:
        _WORKER = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="compress")
    return await asyncio.get_running_loop().run_in_executor(_WORKER, compress, encoding, data, level)


def _gunzip(data: bytes | memoryview, limit: int) -> bytes:
    out = bytearray()
    view = memoryview(data)
    # concatenated gzip members are valid gzip: decode member after member
    while True:
        decoder = zlib.decompressobj(47)  # 32 + 15: gzip or zlib header, auto-detected
        try:
            chunk = decoder.decompress(view, limit + 1 - len(out))
        except zlib.error as exc:
            raise DecompressionError(f"invalid gzip/deflate data: {exc}") from None
        out += chunk
        if len(out) > limit or decoder.unconsumed_tail:
            raise TooLarge(limit)
        if not decoder.eof:
            raise DecompressionError("invalid gzip/deflate data: truncated stream")
        rest = decoder.unused_data
        if not rest.strip(b"\x00"):
            return bytes(out)
        view = memoryview(rest)


def _unzstd(data: bytes | memoryview, limit: int) -> bytes:
    if not data:
        raise DecompressionError("invalid zstd data: empty body")
    out = bytearray()
    rest = data
    # frame by frame: concatenated frames are valid zstd
    while rest:
        budget = limit - len(out)
        try:
            size = zstandard.frame_content_size(rest)
        except zstandard.ZstdError as exc:
            raise DecompressionError(f"invalid zstd data: {exc}") from None
        if size > budget:
            raise TooLarge(limit)
        if size < 0 and _zstd_frame_exceeds(rest, budget):
            raise TooLarge(limit)
        decoder = _zstd_decompressor().decompressobj()
        try:
            out += decoder.decompress(rest)
        except zstandard.ZstdError as exc:
            raise DecompressionError(f"invalid zstd data: {exc}") from None
        if not decoder.eof:
            raise DecompressionError("invalid zstd data: truncated frame")
        rest = decoder.unused_data
    if len(out) > limit:
        raise TooLarge(limit)
    return bytes(out)


def _zstd_frame_exceeds(frame: bytes, budget: int) -> bool:
    """For a frame that does not state its size: does it decode to more than ``budget``?"""
    produced = 0
    try:
        with _zstd_decompressor().stream_reader(frame, read_across_frames=False) as reader:
            while produced <= budget:
                chunk = reader.read(min(1 << 20, budget + 1 - produced))
                if not chunk:
                    return False
                produced += len(chunk)
    except zstandard.ZstdError as exc:
        raise DecompressionError(f"invalid zstd data: {exc}") from None
    return True
