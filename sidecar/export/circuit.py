"""A circuit breaker in front of the upstream: stop hammering a collector that keeps failing.

Closed: attempts go through. After ``threshold`` consecutive failed attempts it
opens: no attempt is made for ``open_for`` seconds (doubling, up to
``max_open_for``, each time a probe fails). Then it is half-open: one attempt
(the probe) goes through while the others wait; success closes it, failure
opens it again. Batches are never dropped by the breaker: they wait in the
queue (and on disk, with the disk queue), bounded by the queue's capacity.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time

from prometheus_client import CollectorRegistry, Counter, Gauge

log = logging.getLogger(__name__)


class State(enum.IntEnum):
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class CircuitBreaker:
    def __init__(
        self,
        *,
        threshold: int = 5,
        open_for: float = 1.0,
        max_open_for: float = 30.0,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.threshold = threshold
        self.base_open_for = open_for
        self.max_open_for = max_open_for
        self.state = State.CLOSED
        self._failures = 0
        self._open_for = open_for
        self._opened_at = 0.0
        self._probing = False
        self._changed = asyncio.Event()
        registry = registry or CollectorRegistry()
        self._gauge = Gauge(
            "otlp_sidecar_exporter_circuit_state", "Exporter circuit: 0 closed, 1 half-open, 2 open.",
            registry=registry,
        )
        self._transitions = Counter(
            "otlp_sidecar_exporter_circuit_transitions", "Circuit state changes, by new state.",
            ["state"], registry=registry,
        )
        self._gauge.set(0)

    @property
    def allows_traffic(self) -> bool:
        return self.state is not State.OPEN

    async def acquire(self) -> None:
        """Wait until an attempt may be made (at once while closed)."""
        while True:
            if self.state is State.CLOSED:
                return
            if self.state is State.OPEN:
                remaining = self._opened_at + self._open_for - time.monotonic()
                if remaining > 0:
                    self._changed.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._changed.wait(), remaining)
                    continue
                self._set(State.HALF_OPEN)
            if self.state is State.HALF_OPEN and not self._probing:
                self._probing = True
                return
            self._changed.clear()
            await self._changed.wait()

    def success(self) -> None:
        self._failures = 0
        self._probing = False
        self._open_for = self.base_open_for
        if self.state is not State.CLOSED:
            log.info("upstream answers again: circuit closed")
            self._set(State.CLOSED)

    def failure(self) -> None:
        self._failures += 1
        if self.state is State.HALF_OPEN:
            self._probing = False
            self._open_for = min(self.max_open_for, self._open_for * 2)
            self._open()
        elif self.state is State.CLOSED and self._failures >= self.threshold:
            self._open_for = self.base_open_for
            self._open()

    def release(self) -> None:
        """An acquired attempt ended without a verdict (e.g. cancelled)."""
        if self._probing:
            self._probing = False
            self._changed.set()

    def _open(self) -> None:
        self._opened_at = time.monotonic()
        log.warning(
            "upstream failed %d attempts in a row: circuit open, next probe in %.1fs",
            self._failures, self._open_for,
        )
        self._set(State.OPEN)

    def _set(self, state: State) -> None:
        self.state = state
        self._gauge.set(int(state))
        self._transitions.labels(state.name.lower()).inc()
        self._changed.set()
