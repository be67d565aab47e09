"""A circuit breaker in front of the upstream: stop hammering a collector that keeps failing.

Closed: attempts go through. After ``threshold`` consecutive failed attempts it
opens: no attempt is made for ``open_for`` seconds (doubling, up to
``max_open_for``, each time a probe fails). Then it is half-open: one attempt
(the probe) goes through while the others wait; success closes it, failure
opens it again. Batches are never dropped by the breaker: they wait in the
queue (and on disk, with the disk queue), bounded by the queue's capacity.

A failed attempt is one the upstream could not take: a retryable error, or a final answer
that says the upstream *as configured* takes nothing (:data:`ENDPOINT_FAILURES`: a wrong
path answering 404, a refused credential, a protocol it does not serve). A final answer about
one batch's data (400, 413, INVALID_ARGUMENT) is the upstream working: it does not count.

Each upstream has its own breaker (:mod:`sidecar.export.lanes`): its state is shown for each
signal it serves (``otlp_sidecar_exporter_circuit_state{signal}``).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry

from sidecar.export import metrics
from sidecar.signals import Signal

log = logging.getLogger(__name__)


class State(enum.IntEnum):
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


#: final (non-retryable) answers about the endpoint, not the batch: every batch would get them,
#: so they count as failures of the upstream and open the circuit (the batch itself is dropped
#: and counted, as OTLP says for a final answer)
ENDPOINT_FAILURES = frozenset(
    {
        "http_401", "http_403", "http_404", "http_405", "http_406", "http_407", "http_410",
        "http_415", "http_426", "http_501", "http_505",
        "http_508",  # Loop Detected: the upstream is this sidecar again (sidecar.loop_guard)
        "grpc_unauthenticated", "grpc_permission_denied", "grpc_not_found", "grpc_unimplemented",
        "grpc_failed_precondition",  # what the loop guard answers over gRPC
    }
)


def upstream_failed(reason: str, retryable: bool) -> bool:
    """True when a failed attempt counts against the upstream (see :data:`ENDPOINT_FAILURES`)."""
    return retryable or reason in ENDPOINT_FAILURES


class CircuitMetrics:
    """The circuit metrics of one registry, shared by the breakers of every upstream."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.state = metrics.CIRCUIT_STATE.gauge(registry)
        self.transitions = metrics.CIRCUIT_TRANSITIONS.counter(registry)


class CircuitBreaker:
    def __init__(
        self,
        *,
        threshold: int = 5,
        open_for: float = 1.0,
        max_open_for: float = 30.0,
        registry: CollectorRegistry | None = None,
        shared: CircuitMetrics | None = None,
        signals: Iterable[Signal] = tuple(Signal),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``shared``: the metrics to report in (else made in ``registry``), for ``signals``, the
        ones this upstream serves; ``clock``: seconds, monotonic (tests inject their own to step
        through the open time)."""
        self._clock = clock
        self.threshold = threshold
        self.base_open_for = open_for
        self.max_open_for = max_open_for
        self.state = State.CLOSED
        self._failures = 0
        self._open_for = open_for
        self._opened_at = 0.0
        self._probing = False
        self._changed = asyncio.Event()
        shared = shared or CircuitMetrics(registry or CollectorRegistry())
        signals = tuple(signals)
        self._gauges = [shared.state.labels(signal.value) for signal in signals]
        self._transitions = {
            state: [shared.transitions.labels(signal.value, state.name.lower()) for signal in signals]
            for state in State  # each transition counted from zero
        }
        for gauge in self._gauges:
            gauge.set(0)
        #: the last failed attempt's message (logged when the circuit opens)
        self.last_failure = ""

    @property
    def allows_traffic(self) -> bool:
        return self.state is not State.OPEN

    async def acquire(self) -> None:
        """Wait until an attempt may be made (at once while closed)."""
        while True:
            if self.state is State.CLOSED:
                return
            if self.state is State.OPEN:
                remaining = self._opened_at + self._open_for - self._clock()
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

    def failure(self, why: str = "") -> None:
        """An attempt failed (``why``: its error, naming the URL and the setting)."""
        if why:
            self.last_failure = why
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
        self._opened_at = self._clock()
        log.warning(
            "upstream failed %d attempts in a row: circuit open, next probe in %.1fs (last: %s)",
            self._failures, self._open_for, self.last_failure or "no message",
        )
        self._set(State.OPEN)

    def _set(self, state: State) -> None:
        self.state = state
        for gauge in self._gauges:
            gauge.set(int(state))
        for counter in self._transitions[state]:
            counter.inc()
        self._changed.set()
