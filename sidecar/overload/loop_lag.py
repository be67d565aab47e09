"""How late the event loop runs what is due: the measure of the loop's CPU time.

Everything the sidecar does for its clients runs on one event loop; when work holds it (a batch
rewritten, a compression turn, the policy engine, a full garbage collection) or the kernel does
not run the process (a pod throttled by its CPU limit, a node with steal), every timer and every
answer waits. A timer due every :data:`INTERVAL` seconds measures how late it ran, and that
lateness is observed into a histogram (``otlp_sidecar_event_loop_lag_seconds``). Lags of
:data:`STALL` seconds or more are logged too, at most once a minute, with how many there were.

The probe is one timer callback a tenth of a second: no task, no allocation beyond the handle.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

#: seconds between two measurements
INTERVAL = 0.1
#: a lag this long (seconds) is logged as a stall
STALL = 1.0
#: seconds between two stall log lines at most
LOG_EVERY = 60.0


class LoopLagProbe:
    """Measures the lateness of a timer due every ``interval`` seconds on the running loop and
    hands each measurement, in seconds, to ``observe``."""

    def __init__(
        self, observe: Callable[[float], None], interval: float = INTERVAL, stall: float = STALL,
        log_every: float = LOG_EVERY,
    ) -> None:
        self._observe = observe
        self._interval = interval
        self._stall = stall
        self._log_every = log_every
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0
        #: stalls not logged yet, the longest of them, and when a stall was last logged
        self._unlogged = 0
        self._longest = 0.0
        self._logged_at: float | None = None

    def start(self) -> None:
        """Start measuring on the running loop (again after :meth:`stop`)."""
        if self._handle is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._schedule(self._loop.time())

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _schedule(self, now: float) -> None:
        assert self._loop is not None
        self._due = now + self._interval
        self._handle = self._loop.call_at(self._due, self._tick)

    def _tick(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        lag = max(0.0, now - self._due)
        self._observe(lag)
        if lag >= self._stall:
            self._stalled(lag, now)
        self._schedule(now)

    def _stalled(self, lag: float, now: float) -> None:
        self._unlogged += 1
        self._longest = max(self._longest, lag)
        if self._logged_at is not None and now - self._logged_at < self._log_every:
            return
        log.warning(
            "the event loop ran %.2f s late%s: every request and timer waited (a CPU limit throttling "
            "the pod, steal on its node, or work holding the loop; otlp_sidecar_event_loop_lag_seconds)",
            self._longest,
            f" at worst, {self._unlogged} times since the last such line" if self._unlogged > 1 else "",
        )
        self._logged_at = now
        self._unlogged = 0
        self._longest = 0.0
