"""Export workers: take batches from the queue, send them, retry per the OTLP rules.

A batch leaves the queue only when the upstream took it, or when it failed for
good (a non-retryable answer, retries past ``retry_max_elapsed`` without the disk queue, or
the shutdown grace period over); either way it is counted, so nothing that was accepted
disappears silently.
Every error names the URL and the setting it came from, in the log and on ``/ready``.

Each upstream (lane, :mod:`sidecar.export.lanes`) has its own circuit breaker and its own
workers, which take only its batches: an upstream that is down holds up only its own signals.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from typing import Any, Protocol

from sidecar.export import compress
from sidecar.export.circuit import CircuitBreaker, CircuitMetrics, State, upstream_failed
from sidecar.export.compress import Payload
from sidecar.export.config import ExporterConfig
from sidecar.export.lanes import Lane, lane_name
from sidecar.export.metrics import COMMON_FAILURES, PROTOCOL_FAILURES
from sidecar.export.queue import Batch, ExportQueue
from sidecar.export.result import Exported, ExportError
from sidecar.metrics import SidecarMetrics
from sidecar.signals import Signal

log = logging.getLogger(__name__)


class Exporter(Protocol):
    name: str

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def export(self, signal: Signal, data: Payload) -> Exported: ...


_AT_SHUTDOWN = "at shutdown: the grace period ended before the upstream took them"



def describe_target(config: ExporterConfig, signal: Signal) -> str:
    """Where ``signal`` goes and which setting says so, for error messages:
    ``http://collector:4318/v1/traces (exporter.endpoint)``."""
    if config.resolved_type == "debug":
        return f"the debug exporter (exporter.debug_output {config.debug_output})"
    key = f"exporter.{signal.value}_endpoint" if config.signal_endpoint(signal) else "exporter.endpoint"
    return f"{config.url_for(signal)} ({key})"


class _Upstream:
    """One lane's circuit, and its last failed attempt."""

    def __init__(self, number: int, signals: Lane, breaker: CircuitBreaker) -> None:
        self.number = number
        self.name = lane_name(signals)
        self.breaker = breaker
        #: the last failed attempt (with its URL and setting); "" once an attempt succeeds
        self.last_error = ""

    def failing(self) -> str:
        """Why this upstream is failing, or "" when it is not."""
        if self.breaker.state is State.CLOSED and not self.last_error:
            return ""
        return self.last_error or self.breaker.last_failure


class Sender:
    def __init__(
        self,
        queue: ExportQueue,
        exporter: Exporter,
        config: ExporterConfig,
        metrics: SidecarMetrics,
        exporter_for: Callable[[Signal], ExporterConfig] | None = None,
    ) -> None:
        """``exporter_for(signal)``: the signal's own exporter settings where it has them (the
        messages name its URL and setting); ``config`` for every signal without it."""
        self._queue = queue
        self._exporter = exporter
        self._config = config
        self._metrics = metrics
        self._workers: list[asyncio.Task[None]] = []
        self._deadline: float | None = None
        #: the last batch given up on, and when
        self.last_drop = ""
        self.last_drop_at = 0.0
        self._logged_final: set[str] = set()
        self._targets = {
            signal: describe_target(exporter_for(signal) if exporter_for else config, signal) for signal in Signal
        }
        for signal in Signal:
            protocol = (exporter_for(signal) if exporter_for else config).protocol
            for reason in COMMON_FAILURES + PROTOCOL_FAILURES.get(protocol, ()):
                metrics.failed_items.labels(signal.value, reason)
        circuits = CircuitMetrics(metrics.registry)
        self._upstreams = [
            _Upstream(number, lane, CircuitBreaker(
                threshold=config.circuit_threshold,
                open_for=config.circuit_open_for,
                max_open_for=config.circuit_max_open_for,
                shared=circuits,
                signals=[signal for signal in Signal if signal in lane],
            ))
            for number, lane in enumerate(queue.lanes)
        ]
        self._upstream_of = {
            signal: up for up, lane in zip(self._upstreams, queue.lanes, strict=True) for signal in lane
        }
        watch = getattr(exporter, "watch_downgrades", None)
        if watch is not None:
            watch(lambda old, new: metrics.compression_downgrades.labels(old, new).inc())
        watch_dead = getattr(exporter, "watch_dead_connections", None)
        if watch_dead is not None:
            watch_dead(metrics.dead_connections.inc)

    def breaker_for(self, signal: Signal) -> CircuitBreaker:
        """The circuit of the upstream ``signal`` goes to."""
        return self._upstream_of[signal].breaker

    @property
    def healthy(self) -> bool:
        """False unless every upstream's circuit is closed: one keeps failing (fed to /ready)."""
        return all(up.breaker.state is State.CLOSED for up in self._upstreams)

    @property
    def last_error(self) -> str:
        """The last failed attempt of each upstream that has one, with its URL and setting."""
        return "; ".join(up.last_error for up in self._upstreams if up.last_error)

    def status(self) -> dict[str, Any]:
        """What ``/ready`` shows of the exporter: ``ok`` or ``failing: <error>`` (each failing
        upstream's), the circuit (the worst one's; with several upstreams each by its signals),
        the last batch dropped (a final answer, retries or the grace period over)."""
        failing = [why for why in (up.failing() for up in self._upstreams) if why]
        worst = max(up.breaker.state for up in self._upstreams)
        status: dict[str, Any] = {
            "exporter": f"failing: {'; '.join(failing)}" if failing else "ok",
            "exporter_circuit": worst.name.lower(),
        }
        if len(self._upstreams) > 1:
            status["exporter_circuits"] = {up.name: up.breaker.state.name.lower() for up in self._upstreams}
        if self.last_drop:
            status["exporter_last_drop"] = self.last_drop
            status["exporter_last_drop_seconds_ago"] = round(time.monotonic() - self.last_drop_at, 1)
        return status

    def start(self) -> None:
        """``exporter.concurrency`` workers for each upstream."""
        for up in self._upstreams:
            for number in range(self._config.concurrency):
                name = f"export-worker-{up.name}-{number}"
                self._workers.append(asyncio.create_task(self._work(up), name=name))

    async def drain(self, grace: float) -> None:
        """Send everything held, retrying until ``grace`` seconds from now, then stop the workers."""
        self._deadline = time.monotonic() + grace
        self._queue.close()
        done, pending = await asyncio.wait(self._workers, timeout=grace)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                log.error("export worker failed: %r", task.exception())
        # the workers counted (or kept) the batch each had in hand; the batches they never reached
        # (waiting on an open circuit, say) are accounted for here, never dropped silently
        left = self._queue.leftover()
        if not left:
            return
        if self._queue.durable:
            kept = sum(batch.items for batch in left)
            log.warning("%d items not sent stay in the disk queue for the next start", kept)
            for batch in left:
                self._queue.done(batch, keep_on_disk=True)
            return
        lost = dict.fromkeys(Signal, 0)
        for batch in left:
            upstream = self._upstream_of[batch.signal]
            last = upstream.last_error or "no answer from the upstream yet"
            self._fail(batch, ExportError("shutdown", f"last error: {last}", retryable=False), why=_AT_SHUTDOWN)
            self._queue.done(batch)
            lost[batch.signal] += batch.items
        log.error("at shutdown, %s never sent (still queued when the grace period ended) are dropped, counted in "
                  "otlp_sidecar_exporter_failed_items_total{reason=\"shutdown\"}",
                  ", ".join(f"{n} {signal.item_name}" for signal, n in lost.items() if n))

    async def _work(self, upstream: _Upstream) -> None:
        while True:
            batch = await self._queue.next_batch(upstream.number)
            if batch is None:
                return
            try:
                left = await self._send(batch)
            except asyncio.CancelledError:
                if self._queue.durable:
                    self._keep_for_next_start(batch)
                else:
                    # the grace period ran out: say so, loudly and in the metrics, never silently
                    last = upstream.last_error or "no answer from the upstream yet"
                    self._fail(batch, ExportError("shutdown", f"last error: {last}", retryable=False), why=_AT_SHUTDOWN)
                    self._queue.done(batch)
                raise
            if left:
                self._queue.done(batch)
            else:
                self._keep_for_next_start(batch)

    def _keep_for_next_start(self, batch: Batch) -> None:
        log.warning("%d %s stay in the disk queue for the next start", batch.items, batch.signal.item_name)
        self._queue.done(batch, keep_on_disk=True)

    async def _send(self, batch: Batch) -> bool:
        """Send the batch, retrying; True once it left (sent, or failed for good), False if the
        grace period ends first and the disk queue keeps it for the next start."""
        signal = batch.signal.value
        self._metrics.batch_items.labels(signal).observe(batch.items)
        self._metrics.batch_bytes.labels(signal).observe(batch.nbytes)
        try:
            data = await self._queue.parts_in_steps(batch)
        except OSError as exc:  # a spilled request the disk cannot give back: counted, never a dead worker
            error = ExportError("disk_read", f"cannot read the disk queue: {exc}", retryable=False)
            self._fail(batch, error, why="unreadable in the disk queue")
            return True
        upstream = self._upstream_of[batch.signal]
        breaker = upstream.breaker
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            await breaker.acquire()
            t0 = time.monotonic()
            compress.backlog.set(self._queue.held_bytes / self._queue.capacity_bytes)
            try:
                result = await self._exporter.export(batch.signal, data)
            except ExportError as exc:
                self._metrics.export_duration.labels(signal).observe(time.monotonic() - t0)
                upstream.last_error = self._with_target(exc.message, batch.signal)
                if upstream_failed(exc.reason, exc.retryable):
                    breaker.failure(upstream.last_error)
                else:  # the upstream answered about this batch: it is up, the data was the problem
                    breaker.success()
                delay, why = self._next_delay(attempt, exc, started)
                if delay is None:
                    if why == _AT_SHUTDOWN:
                        if self._queue.durable:
                            return False
                        # counted as what it is: dropped at shutdown, not an upstream answer
                        exc = ExportError("shutdown", f"last error: {upstream.last_error}", retryable=False)
                    self._fail(batch, exc, why=why)
                    return True
                self._metrics.export_retries.labels(signal).inc()
                log.debug("export of %d %s failed (%s), retry in %.2fs", batch.items, signal, exc, delay)
                await asyncio.sleep(delay)
                continue
            except BaseException as exc:
                breaker.release()
                if not isinstance(exc, Exception):
                    raise
                # an exporter bug must not kill the worker or lose the count
                log.exception("exporter %s failed unexpectedly", self._exporter.name)
                self._fail(batch, ExportError("internal", repr(exc), retryable=False), why="on an internal error")
                return True
            self._metrics.export_duration.labels(signal).observe(time.monotonic() - t0)
            breaker.success()
            upstream.last_error = ""
            sent = batch.items - min(result.rejected, batch.items)
            self._metrics.sent_items.labels(signal).inc(sent)
            if result.rejected:
                self._metrics.rejected_upstream_items.labels(signal).inc(result.rejected)
                log.warning(
                    "upstream rejected %d of %d %s: %s",
                    result.rejected, batch.items, batch.signal.item_name, result.message,
                )
            return True

    def _next_delay(self, attempt: int, exc: ExportError, started: float) -> tuple[float | None, str]:
        """Seconds to wait before the next attempt, or (None, why) to give up."""
        if not exc.retryable:
            return None, "on a final answer (not retried, per OTLP)"
        cfg = self._config
        backoff = min(cfg.retry_max_interval, cfg.retry_initial_interval * 2 ** (attempt - 1))
        delay = random.uniform(backoff / 2, backoff)
        if exc.retry_after is not None:
            delay = max(delay, exc.retry_after)
        now = time.monotonic()
        if self._deadline is not None and now + delay > self._deadline:
            return None, _AT_SHUTDOWN
        # 0: no time limit (the Collector's max_elapsed_time: 0); with the disk queue a batch waits on
        # disk for the upstream however long it takes (the disk's budget bounds the backlog)
        limit = cfg.retry_max_elapsed
        if limit and not self._queue.durable and now + delay > started + limit:
            return None, f"after retrying for {limit:g} s (exporter.retry_max_elapsed)"
        return delay, ""

    def _with_target(self, message: str, signal: Signal) -> str:
        """``message`` naming the URL and the setting (once: transport errors name the URL already)."""
        target = self._targets[signal]
        url = target.split(" (", 1)[0]
        if target in message:
            return message
        if url in message:
            return f"{message} ({target.split(' (', 1)[1]}"
        return f"{message}; upstream {target}"

    def _fail(self, batch: Batch, exc: ExportError, why: str) -> None:
        self._metrics.failed_items.labels(batch.signal.value, exc.reason).inc(batch.items)
        message = self._with_target(exc.message, batch.signal)
        self.last_drop = f"{batch.items} {batch.signal.item_name} {why}: {message}"
        self.last_drop_at = time.monotonic()
        key = f"{batch.signal.value}:{exc.reason}"
        level = logging.ERROR if key not in self._logged_final else logging.DEBUG
        self._logged_final.add(key)
        log.log(level, "dropped %s (counted in otlp_sidecar_exporter_failed_items_total{reason=\"%s\"})",
                self.last_drop, exc.reason)
