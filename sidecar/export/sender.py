"""Export workers: take batches from the queue, send them, retry per the OTLP rules.

A batch leaves the queue only when the upstream took it, or when it failed for
good (a non-retryable answer, or retries past ``retry_max_elapsed``); either way
it is counted, so nothing that was accepted disappears silently.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Protocol

from sidecar.config import ExporterConfig
from sidecar.export.circuit import CircuitBreaker, State
from sidecar.export.queue import Batch, ExportQueue
from sidecar.export.result import Exported, ExportError
from sidecar.metrics import SidecarMetrics
from sidecar.signals import Signal

log = logging.getLogger(__name__)


class Exporter(Protocol):
    name: str

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def export(self, signal: Signal, data: bytes) -> Exported: ...


class Sender:
    def __init__(
        self, queue: ExportQueue, exporter: Exporter, config: ExporterConfig, metrics: SidecarMetrics
    ) -> None:
        self._queue = queue
        self._exporter = exporter
        self._config = config
        self._metrics = metrics
        self._workers: list[asyncio.Task[None]] = []
        self._deadline: float | None = None
        self.last_error = ""
        self._logged_final: set[str] = set()
        self.breaker = CircuitBreaker(
            threshold=config.circuit_threshold,
            open_for=config.circuit_open_for,
            max_open_for=config.circuit_max_open_for,
            registry=metrics.registry,
        )
        watch = getattr(exporter, "watch_downgrades", None)
        if watch is not None:
            watch(lambda old, new: metrics.compression_downgrades.labels(old, new).inc())

    @property
    def healthy(self) -> bool:
        """False unless the circuit is closed: the upstream keeps failing (fed to /ready)."""
        return self.breaker.state is State.CLOSED

    def start(self) -> None:
        for number in range(self._config.concurrency):
            self._workers.append(asyncio.create_task(self._work(), name=f"export-worker-{number}"))

    async def drain(self, grace: float) -> None:
        """Send everything held, retrying until ``grace`` seconds from now, then stop the workers."""
        self._deadline = time.monotonic() + grace
        self._queue.close()
        done, pending = await asyncio.wait(self._workers, timeout=grace + 1.0)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for task in done:
            if task.exception() is not None:
                log.error("export worker failed: %r", task.exception())

    async def _work(self) -> None:
        while True:
            batch = await self._queue.next_batch()
            if batch is None:
                return
            try:
                await self._send(batch)
            except asyncio.CancelledError:
                if self._queue.durable:
                    log.warning("%d %s stay in the disk queue for the next start",
                                batch.items, batch.signal.item_name)
                    self._queue.done(batch, keep_on_disk=True)
                else:
                    # the grace period ran out: say so, loudly and in the metrics, never silently
                    self._fail(batch, ExportError("shutdown", "grace period over before the upstream took it",
                                                  retryable=False))
                    self._queue.done(batch)
                raise
            self._queue.done(batch)

    async def _send(self, batch: Batch) -> None:
        signal = batch.signal.value
        self._metrics.batch_items.labels(signal).observe(batch.items)
        self._metrics.batch_bytes.labels(signal).observe(batch.nbytes)
        data = self._queue.load(batch)
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            await self.breaker.acquire()
            t0 = time.monotonic()
            try:
                result = await self._exporter.export(batch.signal, data)
            except ExportError as exc:
                self._metrics.export_duration.labels(signal).observe(time.monotonic() - t0)
                if exc.retryable:
                    self.breaker.failure()
                else:  # the upstream answered: it is up, the data was the problem
                    self.breaker.success()
                self.last_error = exc.message
                delay = self._next_delay(attempt, exc, started)
                if delay is None:
                    self._fail(batch, exc)
                    return
                self._metrics.export_retries.labels(signal).inc()
                log.debug("export of %d %s failed (%s), retry in %.2fs", batch.items, signal, exc, delay)
                await asyncio.sleep(delay)
                continue
            except BaseException as exc:
                self.breaker.release()
                if not isinstance(exc, Exception):
                    raise
                # an exporter bug must not kill the worker or lose the count
                log.exception("exporter %s failed unexpectedly", self._exporter.name)
                self._fail(batch, ExportError("internal", repr(exc), retryable=False))
                return
            self._metrics.export_duration.labels(signal).observe(time.monotonic() - t0)
            self.breaker.success()
            sent = batch.items - min(result.rejected, batch.items)
            self._metrics.sent_items.labels(signal).inc(sent)
            if result.rejected:
                self._metrics.rejected_upstream_items.labels(signal).inc(result.rejected)
                log.warning(
                    "upstream rejected %d of %d %s: %s",
                    result.rejected, batch.items, batch.signal.item_name, result.message,
                )
            return

    def _next_delay(self, attempt: int, exc: ExportError, started: float) -> float | None:
        """Seconds to wait before the next attempt, or None to give up."""
        if not exc.retryable:
            return None
        cfg = self._config
        backoff = min(cfg.retry_max_interval, cfg.retry_initial_interval * 2 ** (attempt - 1))
        delay = random.uniform(backoff / 2, backoff)
        if exc.retry_after is not None:
            delay = max(delay, exc.retry_after)
        now = time.monotonic()
        limit = started + cfg.retry_max_elapsed
        if self._deadline is not None:
            limit = min(limit, self._deadline)
        if now + delay > limit:
            return None
        return delay

    def _fail(self, batch: Batch, exc: ExportError) -> None:
        self._metrics.failed_items.labels(batch.signal.value, exc.reason).inc(batch.items)
        key = f"{batch.signal.value}:{exc.reason}"
        level = logging.ERROR if key not in self._logged_final else logging.DEBUG
        self._logged_final.add(key)
        log.log(
            level, "dropped %d %s after %s: %s",
            batch.items, batch.signal.item_name,
            "a final error" if not exc.retryable else "retrying too long", exc.message,
        )
