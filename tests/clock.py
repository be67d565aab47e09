"""A monotonic clock a test moves by hand, for units that take a ``clock`` (CircuitBreaker, TokenBucket)."""

from __future__ import annotations


class ManualClock:
    """Seconds that pass only when the test says so."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
