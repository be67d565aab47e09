"""Where and how fast the policy engine works: one engine thread, and a rate of new resources.

Every Rego evaluation (and the plan compiled from its decisions) runs on ONE thread of its own,
never on the event loop: rego-cpp is called through ctypes, which releases the GIL while it
evaluates, so the loop keeps serving other connections; only the short Python parts (the input
document, the plan) share the GIL with it. One thread also means one caller of rego-cpp at a
time (:data:`sidecar.policy.embedded.ENGINE_LOCK` guards the few calls made elsewhere).

New resources (plan-cache misses) are admitted at a bounded rate (:class:`EvaluationRate`): a
request bringing more than may be evaluated now gets :class:`PolicyBusy` (gRPC UNAVAILABLE /
HTTP 503 with Retry-After) while the admitted ones are evaluated and cached, so its retry
finds them. Work queued on the engine thread is bounded by the same burst.
"""

from __future__ import annotations

import asyncio
import functools
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, ParamSpec, TypeVar

from sidecar.policy.errors import PolicyUnavailable

if TYPE_CHECKING:
    from sidecar.policy.config import PolicyConfig

P = ParamSpec("P")
T = TypeVar("T")


MiB = 1024 * 1024


@dataclass(frozen=True)
class EngineLimits:
    """What the policy engine may spend: new resources evaluated per second and at once, and the
    estimated bytes of the plan caches (the plan cache and the last good plans, half each).
    The defaults are those of ``policy.max_evaluations_per_second``, ``policy.evaluation_burst``
    and ``policy.cache_max_bytes``."""

    evaluations_per_second: float = 200.0
    evaluation_burst: int = 256
    cache_max_bytes: int = 8 * MiB

    @classmethod
    def from_config(cls, config: PolicyConfig) -> EngineLimits:
        """The limits of the ``[policy]`` section."""
        return cls(config.max_evaluations_per_second, config.evaluation_burst, config.cache_max_bytes)


class PolicyBusy(PolicyUnavailable):
    """More new resources than the engine may evaluate now: retry after ``retry_after`` s."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class EngineThread:
    """One thread that runs the policy engine's work, in order."""

    def __init__(self, name: str = "policy-engine") -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        #: calls submitted and not finished yet
        self.pending = 0

    async def call(self, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``function`` on the engine thread; the caller's loop is free meanwhile."""
        loop = asyncio.get_running_loop()
        self.pending += 1
        try:
            return await loop.run_in_executor(self._executor, functools.partial(function, *args, **kwargs))
        finally:
            self.pending -= 1

    def close(self) -> None:
        """Stop taking work; what is queued is dropped, what runs finishes in its thread."""
        self._executor.shutdown(wait=False, cancel_futures=True)


class EvaluationRate:
    """A token bucket of evaluations: ``per_second`` on average, ``burst`` at once."""

    def __init__(self, per_second: float, burst: int) -> None:
        self.per_second = per_second
        self.burst = max(1, burst)
        self._tokens = float(self.burst)
        self._at = time.monotonic()
        #: evaluations refused since start (resources that were asked to retry)
        self.refused = 0

    def admit(self, wanted: int, queued: int = 0) -> int:
        """How many of ``wanted`` new evaluations may start now (taken from the bucket).

        ``queued``: evaluations started and not finished; they count against the burst, so
        work queued for the engine never exceeds it.
        """
        now = time.monotonic()
        self._tokens = min(float(self.burst), self._tokens + (now - self._at) * self.per_second)
        self._at = now
        admitted = max(0, min(wanted, int(self._tokens), self.burst - queued))
        self._tokens -= admitted
        self.refused += wanted - admitted
        return admitted

    def retry_after(self, wanted: int) -> float:
        """Whole seconds (at least 1) until ``wanted`` evaluations (at most a burst) could start."""
        missing = min(wanted, self.burst) - self._tokens
        return float(max(1, math.ceil(missing / self.per_second))) if self.per_second > 0 else 60.0
