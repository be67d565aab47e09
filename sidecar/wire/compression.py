"""gzip, deflate and zstd for request bodies and gRPC messages, decoded in bounded steps.

Decoding never produces more than a limit (TooLarge), counts gzip members / zstd frames as they
start (TooManyMembers), feeds the decoders bounded pieces of input (no copy of the rest of the body
per member) and bounds each call's output (zlib's ``max_length``; zstd one block header at a time),
so a bomb or an empty-member flood costs bounded memory and a few milliseconds per step.
:func:`decompress_bounded` yields to the event loop between steps and charges each step's output
to a receive-budget account (both receivers use it: Content-Encoding and grpc-encoding)."""

from __future__ import annotations

import asyncio
import threading
import weakref
import zlib
from collections.abc import Generator, Iterator

import zstandard

from sidecar.masked_text import quoted
from sidecar.overload.budget import Account
from sidecar.overload.reasons import Action

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


#: the largest zstd window a frame may ask for: 8 MiB, what RFC 8878 asks every decoder to
#: support and what zstd's levels up to 19 and Go's klauspost encoder use at most. A frame asking
#: for more (`zstd --long`, the ultra levels) is refused (400) instead of allocating up to 128 MiB
MAX_WINDOW = 8 * 1024 * 1024
#: frames with a window up to this size share the thread's decompressor (reused across requests);
#: a larger window gets a decompressor of its own, dropped with the frame, so the window buffer
#: (up to the decoded size, which is charged) is not held after the request
SHARED_WINDOW = 1024 * 1024


def _zstd_decompressor(window: int) -> zstandard.ZstdDecompressor:
    if window > SHARED_WINDOW:
        return zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW)
    decompressor = getattr(_ZSTD, "decompressor", None)
    if decompressor is None:
        decompressor = _ZSTD.decompressor = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW)
    return decompressor


class DecompressionError(ValueError):
    """The body is not valid data in the encoding it claims."""


class TooLarge(ValueError):
    """The body, or what it decompresses to, exceeds the configured limit."""

    def __init__(self, limit: int, message: str | None = None) -> None:
        super().__init__(message or f"request exceeds the limit of {limit} bytes")
        self.limit = limit


class TooManyMembers(DecompressionError):
    """More gzip members or zstd frames than allowed (limits.max_compression_members)."""

    def __init__(self, limit: int, encoding: str) -> None:
        kind = "zstd frames" if encoding == "zstd" else f"{encoding} members"
        super().__init__(f"the body holds more than {limit} {kind} (limits.max_compression_members)")
        self.limit = limit


class UnsupportedEncoding(ValueError):
    """The encoding is none the sidecar knows."""

    def __init__(self, encoding: str) -> None:
        allowed = ", ".join((IDENTITY, *ENCODINGS))
        super().__init__(f"unsupported encoding {quoted(encoding, 80)!r}; supported: {allowed}")
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


#: bytes decompressed per step unless told (limits.decompress_step_bytes)
DEFAULT_STEP = 256 * 1024
#: gzip members / zstd frames per body unless told (limits.max_compression_members)
DEFAULT_MAX_MEMBERS = 64
#: input fed to zlib per call: what a finished member leaves over is copied at most this much
_IN_CHUNK = 64 * 1024
#: zstd blocks fed per call (each decodes to at most 128 KiB)
_ZSTD_BLOCKS = 8
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_ZSTD_MAX_BLOCK = 128 * 1024


def decompress(
    encoding: str, data: bytes | memoryview, limit: int, *, max_members: int = DEFAULT_MAX_MEMBERS
) -> bytes | memoryview:
    """Decode ``data``; never produce more than ``limit`` bytes (raises TooLarge). Identity
    returns ``data`` itself. In one go: :func:`decompress_bounded` is the same in steps that
    yield to the event loop and are charged to a budget account."""
    if encoding == IDENTITY:
        if len(data) > limit:
            raise TooLarge(limit)
        return data
    decoder = Decoder(encoding, data, limit, max_members=max_members)
    for _ in decoder.steps():
        pass
    return decoder.result()


async def decompress_bounded(
    encoding: str,
    data: bytes | memoryview,
    limit: int,
    *,
    account: Account | None = None,
    step: int = DEFAULT_STEP,
    max_members: int = DEFAULT_MAX_MEMBERS,
) -> bytes | memoryview:
    """Decode ``data`` in steps of at most ``step`` output bytes (and ~64 KiB of input), giving
    the event loop a turn between steps, so no body stalls the other clients.

    Each step's output is taken from ``account`` before it is kept; the caller gives it back
    (``account.give(len(result))``) once the request is done. Raises TooLarge (413 /
    RESOURCE_EXHAUSTED: over ``limit``, or more than one connection may ever hold),
    BudgetExhausted (503 / UNAVAILABLE: the budget is short now), TooManyMembers or
    DecompressionError (400 / INVALID_ARGUMENT). On any error nothing stays taken."""
    if encoding == IDENTITY:
        if len(data) > limit:
            raise TooLarge(limit)
        return data
    decoder = Decoder(encoding, data, limit, step=step, max_members=max_members)
    taken = 0
    large: asyncio.Semaphore | None = None
    try:
        for produced in decoder.steps():
            if large is None and len(decoder.out) > LARGE_OUTPUT:
                # large outputs go one at a time: eight bombs at once are refused one after the
                # other (413 each), instead of sharing the budget out until all get 503
                large = _large_lock()
                await large.acquire()
            if account is not None and produced and not account.take(produced):
                await _wait_for_budget(account, produced, taken + len(data))
            taken += produced if account is not None else 0
            await asyncio.sleep(0)
        return decoder.result()
    except BaseException:
        if account is not None:
            account.give(taken)
        raise
    finally:
        if large is not None:
            large.release()


#: decompressed bytes past which a body waits for its turn (one large decompression at a time)
LARGE_OUTPUT = 1024 * 1024
_LARGE: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = weakref.WeakKeyDictionary()


def _large_lock() -> asyncio.Semaphore:
    loop = asyncio.get_running_loop()
    lock = _LARGE.get(loop)
    if lock is None:
        lock = _LARGE[loop] = asyncio.Semaphore(1)
    return lock


#: seconds a decompression waits for the budget others hold before it answers 503
BUDGET_WAIT = 2.0
#: seconds it waits for other calls of its own connection: they are queued within moments unless
#: they wait too (several large calls at once, each fitting the share alone): then one is refused
#: retryably so the others go on
SHARE_WAIT = 0.25


async def _wait_for_budget(account: Account, size: int, request_bytes: int) -> None:
    """Take ``size`` once the budget has room: others' requests are refused or queued within
    moments. Raises TooLarge when this request alone outgrows a connection's share (it never
    fits); BudgetExhausted (retry) when the budget stays short for ``BUDGET_WAIT`` seconds, or the
    connection's share, held by its other calls, for ``SHARE_WAIT``."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while True:
        if account.refused is Action.connection_share and request_bytes + size > account.share:
            raise TooLarge(
                account.share, f"exceeds the {account.share} bytes one connection may hold"
            )
        wait = SHARE_WAIT if account.refused is Action.connection_share else BUDGET_WAIT
        if loop.time() - started >= wait:
            raise BudgetExhausted(account.message(), account.refused or Action.budget_full)
        await asyncio.sleep(0.02)
        if account.take(size):
            return


class BudgetExhausted(Exception):
    """The receive budget (or the connection's share) is short now: retry shortly (503 / UNAVAILABLE)."""

    def __init__(self, message: str, action: Action) -> None:
        super().__init__(message)
        self.action = action


class Decoder:
    """One compressed body, decoded in bounded steps: iterate :meth:`steps` (each yields the
    bytes it added), then :meth:`result`. Input is fed in pieces of bounded size and output is
    bounded per call, so a step costs little CPU whatever the body; members / frames are counted
    as they start (an empty-member flood is refused after ``max_members``), and nothing is
    copied per member beyond the piece being fed."""

    def __init__(
        self, encoding: str, data: bytes | memoryview, limit: int, *,
        step: int = DEFAULT_STEP, max_members: int = DEFAULT_MAX_MEMBERS,
    ) -> None:
        if encoding not in ENCODINGS:
            raise UnsupportedEncoding(encoding)
        self.encoding = encoding
        self.view = memoryview(data).cast("B")
        self.limit = limit
        self.step = step
        self.max_members = max_members
        self.members = 0
        self.out = bytearray()

    def result(self) -> bytes | memoryview:
        return memoryview(self.out)

    def steps(self) -> Iterator[int]:
        if self.encoding == "zstd":
            return self._zstd_steps()
        return self._zlib_steps()

    def _add(self, chunk: bytes) -> int:
        if len(self.out) + len(chunk) > self.limit:
            raise TooLarge(self.limit)
        self.out += chunk
        return len(chunk)

    def _member(self) -> None:
        self.members += 1
        if self.members > self.max_members:
            raise TooManyMembers(self.max_members, self.encoding)

    # -- gzip and deflate (zlib's auto-detection takes both containers) --------------------------

    def _zlib_steps(self) -> Iterator[int]:
        view, end = self.view, len(self.view)
        pos = 0
        carry: bytes | memoryview = b""  # input handed back by a finished member or max_length
        self._member()
        decoder = zlib.decompressobj(47)  # 32 + 15: gzip or zlib header, auto-detected
        while True:
            if carry:
                piece, carry = carry, b""
            else:
                piece = view[pos:pos + _IN_CHUNK]
                pos += len(piece)
            try:
                chunk = decoder.decompress(piece, self.step)
            except zlib.error as exc:
                raise DecompressionError(f"invalid {self.encoding} data: {exc}") from None
            carry = decoder.unconsumed_tail
            yield self._add(chunk)
            if decoder.eof:
                rest = decoder.unused_data
                if not rest.strip(b"\x00") and _zeros(view, pos):
                    return
                self._member()
                decoder = zlib.decompressobj(47)
                carry = rest
            elif not carry and pos >= end and not chunk:
                raise DecompressionError(f"invalid {self.encoding} data: truncated stream")

    # -- zstd: frames and blocks are walked from their headers (RFC 8878), so each call decodes
    #    a few blocks (at most 128 KiB each) whatever the compression ratio -------------------------

    def _zstd_steps(self) -> Iterator[int]:
        view, end = self.view, len(self.view)
        if not end:
            raise DecompressionError("invalid zstd data: empty body")
        pos = 0
        while pos < end:
            self._member()
            if end - pos < 8:
                raise DecompressionError("invalid zstd data: truncated frame header")
            magic = bytes(view[pos:pos + 4])
            if magic[1:] == b"\x2a\x4d\x18" and magic[0] & 0xF0 == 0x50:  # a skippable frame
                size = int.from_bytes(view[pos + 4:pos + 8], "little")
                pos += 8 + size
                if pos > end:
                    raise DecompressionError("invalid zstd data: truncated skippable frame")
                yield 0
                continue
            if magic != _ZSTD_MAGIC:
                raise DecompressionError("invalid zstd data: unknown frame magic")
            pos = yield from self._zstd_frame(view, pos, end)

    def _zstd_frame(self, view: memoryview, start: int, end: int) -> Generator[int, None, int]:
        descriptor = view[start + 4]
        fcs_flag, single, dict_flag = descriptor >> 6, descriptor >> 5 & 1, descriptor & 3
        checksum = descriptor >> 2 & 1
        if descriptor & 0x08:
            raise DecompressionError("invalid zstd data: reserved bit set")
        header = 5 + (0 if single else 1) + (0, 1, 2, 4)[dict_flag] + (1 if single else 0, 2, 4, 8)[fcs_flag]
        pos = start + header
        if pos > end:
            raise DecompressionError("invalid zstd data: truncated frame header")
        try:
            window = zstandard.get_frame_parameters(view[start:pos]).window_size
        except zstandard.ZstdError as exc:
            raise DecompressionError(f"invalid zstd data: {exc}") from None
        if window > MAX_WINDOW:
            raise DecompressionError(
                f"invalid zstd data: the frame asks for a {window}-byte window; at most {MAX_WINDOW} is supported"
            )
        decoder = _zstd_decompressor(window).decompressobj()
        piece_start = start
        blocks = 0
        while True:
            if pos + 3 > end:
                raise DecompressionError("invalid zstd data: truncated frame")
            block = int.from_bytes(view[pos:pos + 3], "little")
            last, kind, size = block & 1, block >> 1 & 3, block >> 3
            if kind == 3 or size > _ZSTD_MAX_BLOCK:
                raise DecompressionError("invalid zstd data: invalid block header")
            pos += 3 + (1 if kind == 1 else size)
            blocks += 1
            if last:
                pos += 4 if checksum else 0
            if pos > end:
                raise DecompressionError("invalid zstd data: truncated frame")
            if last or blocks >= _ZSTD_BLOCKS or pos - piece_start >= _IN_CHUNK:
                try:
                    chunk = decoder.decompress(view[piece_start:pos])
                except zstandard.ZstdError as exc:
                    raise DecompressionError(f"invalid zstd data: {exc}") from None
                piece_start = pos
                blocks = 0
                yield self._add(chunk)
            if last:
                return pos


def _zeros(view: memoryview, pos: int) -> bool:
    """Is everything from ``pos`` on a zero byte (padding after the last gzip member)?"""
    step = 1 << 20
    return all(not bytes(view[offset:offset + step]).strip(b"\x00") for offset in range(pos, len(view), step))


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

