"""The pool of large receive buffers a server keeps, shared by its connections (both listeners)."""

from __future__ import annotations

import time


class BufferPool:
    """Large receive buffers, shared by a server's connections: a connection holds one only while
    a large body arrives, so memory follows the requests in flight, not the open connections.

    It keeps at most ``max_buffers`` buffers of ``max_bytes`` in all (a larger buffer is never
    kept; past either cap the smallest go), and ``sweep`` drops those unused for ``max_idle``
    seconds, so a burst of large bodies does not hold its memory forever."""

    def __init__(self, max_bytes: int = 8 * 1024 * 1024, max_buffers: int = 8, max_idle: float = 5.0) -> None:
        self.max_bytes = max_bytes
        self.max_buffers = max_buffers
        self.max_idle = max_idle
        #: the bytes of the buffers kept
        self.bytes = 0
        self._free: list[bytearray] = []
        self._since: list[float] = []  # when each was put back (time.monotonic())

    def take(self, size: int) -> bytearray | None:
        """A free buffer of at least ``size`` bytes (the smallest such; of equal ones the last
        put back, whose memory is likeliest still in the CPU's caches), or None."""
        free = self._free
        best = -1
        for index in range(len(free) - 1, -1, -1):
            length = len(free[index])
            if length >= size and (best < 0 or length < len(free[best])):
                best = index
        return None if best < 0 else self._drop(best)

    def put(self, buf: bytearray) -> None:
        """Keep ``buf`` for a later body, unless it is larger than ``max_bytes``."""
        if len(buf) > self.max_bytes:
            return
        self._free.append(buf)
        self._since.append(time.monotonic())
        self.bytes += len(buf)
        while len(self._free) > self.max_buffers or self.bytes > self.max_bytes:
            self._drop(min(range(len(self._free)), key=lambda index: len(self._free[index])))

    def sweep(self, now: float | None = None) -> None:
        """Drop the buffers not used for ``max_idle`` seconds (``now``: time.monotonic())."""
        cutoff = (time.monotonic() if now is None else now) - self.max_idle
        for index in range(len(self._free) - 1, -1, -1):
            if self._since[index] <= cutoff:
                self._drop(index)

    def _drop(self, index: int) -> bytearray:
        del self._since[index]
        buf = self._free.pop(index)
        self.bytes -= len(buf)
        return buf

    def __len__(self) -> int:
        return len(self._free)
