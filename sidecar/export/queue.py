"""The bounded export queue: accepted request bytes, merged into batches per signal.

Capacity is counted in bytes and covers everything accepted and not yet
exported (waiting and in flight), so memory stays bounded whatever the upstream
does. Merging is a concatenation: concatenated Export*ServiceRequest messages
are one valid request (their repeated resource fields append).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field

from sidecar.metrics import SidecarMetrics
from sidecar.signals import Signal


class QueueFull(Exception):
    """No room for the request: refuse it retryably."""


class QueueClosed(Exception):
    """The sidecar is shutting down and accepts nothing new."""


@dataclass
class Batch:
    """Requests of one signal, merged; ``items`` spans / data points / log records."""

    signal: Signal
    parts: list[bytes] = field(default_factory=list)
    items: int = 0
    nbytes: int = 0
    started: float = 0.0

    @property
    def data(self) -> bytes:
        return self.parts[0] if len(self.parts) == 1 else b"".join(self.parts)


class ExportQueue:
    def __init__(
        self,
        *,
        capacity_bytes: int,
        batch_items: int,
        batch_bytes: int,
        batch_timeout: float,
        metrics: SidecarMetrics,
    ) -> None:
        self.capacity_bytes = capacity_bytes
        self._batch_items = batch_items
        self._batch_bytes = batch_bytes
        self._batch_timeout = batch_timeout
        self._metrics = metrics
        self._open: dict[Signal, Batch] = {}
        self._timers: dict[Signal, asyncio.TimerHandle] = {}
        self._ready: deque[Batch] = deque()
        self._wake = asyncio.Event()
        self._held_bytes = 0
        self._held_items = dict.fromkeys(Signal, 0)
        self._closed = False
        self._drained = asyncio.Event()
        self._drained.set()
        metrics.queue_capacity.set(capacity_bytes)
        metrics.queue_size.set(0)

    @property
    def held_bytes(self) -> int:
        return self._held_bytes

    @property
    def closed(self) -> bool:
        return self._closed

    def put(self, signal: Signal, data: bytes, items: int) -> None:
        """Accept ``data`` for export, or raise QueueFull / QueueClosed. Never blocks."""
        if self._closed:
            raise QueueClosed("the sidecar is shutting down")
        size = len(data)
        if self._held_bytes + size > self.capacity_bytes:
            raise QueueFull(
                f"export queue is full ({self._held_bytes} of {self.capacity_bytes} bytes held)"
            )
        self._held_bytes += size
        self._held_items[signal] += items
        self._drained.clear()
        self._publish()
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
        batch.items += items
        batch.nbytes += size
        if batch.items >= self._batch_items or batch.nbytes >= self._batch_bytes:
            self._seal(signal)

    def _seal(self, signal: Signal) -> None:
        batch = self._open.pop(signal, None)
        timer = self._timers.pop(signal, None)
        if timer is not None:
            timer.cancel()
        if batch is not None:
            self._ready.append(batch)
            self._wake.set()

    async def next_batch(self) -> Batch | None:
        """The next batch to export; None once closed and empty."""
        while True:
            if self._ready:
                return self._ready.popleft()
            if self._closed:
                for signal in list(self._open):
                    self._seal(signal)
                if self._ready:
                    continue
                return None
            self._wake.clear()
            await self._wake.wait()

    def done(self, batch: Batch) -> None:
        """The batch left the sidecar (sent, or finally failed): free its room."""
        self._held_bytes -= batch.nbytes
        self._held_items[batch.signal] -= batch.items
        self._publish()
        if self._held_bytes == 0:
            self._drained.set()

    def requeue_front(self, batch: Batch) -> None:
        """Put an unfinished batch back first in line (used when shutting down a worker)."""
        self._ready.appendleft(batch)
        self._wake.set()

    def close(self) -> None:
        """Accept nothing new; what is held is still handed out, then next_batch returns None."""
        self._closed = True
        self._wake.set()

    async def drained(self) -> None:
        await self._drained.wait()

    def _publish(self) -> None:
        self._metrics.queue_size.set(self._held_bytes)
        for signal, count in self._held_items.items():
            self._metrics.queue_items.labels(signal.value).set(count)
