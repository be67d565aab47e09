"""From received bytes to the export queue: split per resource, plan, rewrite, enqueue.

This is the one place both receivers hand their requests to. It never decodes
a request into Python objects: the rewriter walks the protobuf bytes, the policy
engine is asked for a plan once per distinct resource (cached), and the
rewritten bytes go to the bounded queue. Its errors carry what each transport
needs to answer with the right OTLP status.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sidecar.export.queue import ExportQueue, QueueClosed, QueueFull
from sidecar.identity import Peer
from sidecar.metrics import SidecarMetrics
from sidecar.overload.budget import MemoryBudget
from sidecar.overload.reasons import INVALID_ARGUMENT, RESOURCE_EXHAUSTED, UNAVAILABLE, Action, Status
from sidecar.policy.errors import PolicyUnavailable
from sidecar.rewrite import (
    MAX_GROWTH,
    MalformedRequest,
    ResourceInfo,
    RewriteTooLarge,
    count_resources,
    rewrite,
    split_resources,
    unknown_field,
    without_unknown_fields,
)
from sidecar.rewrite.plan import PASS_THROUGH, Plan
from sidecar.signals import Signal

log = logging.getLogger(__name__)

#: gRPC status codes the pipeline's refusals answer with, beside those of sidecar.overload.reasons
PERMISSION_DENIED = 7
INTERNAL = 13

#: the overload listener of each transport
_LISTENERS = {"http": "otlp_http", "grpc": "otlp_grpc"}


class Planner(Protocol):
    """What the pipeline needs of the policy engine."""

    async def plans_for(
        self, signal: Signal, resources: Sequence[ResourceInfo], peer: Peer, transport: str
    ) -> list[Plan]: ...

    def record_counts(self, signal: Signal, counts: dict[tuple[str, str], int]) -> None: ...

    def rate_limit(self) -> Any: ...


class PassThrough:
    """The planner of ``policy.mode = "passthrough"`` only (sidecar.policy.modes): change nothing."""

    async def plans_for(
        self, signal: Signal, resources: Sequence[ResourceInfo], peer: Peer, transport: str
    ) -> list[Plan]:
        return [PASS_THROUGH] * len(resources)

    def record_counts(self, signal: Signal, counts: dict[tuple[str, str], int]) -> None:
        return None

    def rate_limit(self) -> None:
        return None


@dataclass(slots=True)
class Outcome:
    """The answer to a request that was accepted (possibly in part). Made once a request: slots,
    not frozen (cheaper to make); nothing changes it."""

    accepted: int
    rejected: int = 0
    message: str = ""


class Refused(Exception):
    """A request refused whole, carrying how every transport answers it.

    ``status`` is the answer (HTTP status, gRPC code, whether the client retries), in the same
    terms as the overload actions (:class:`sidecar.overload.reasons.Status`); ``reason`` is the
    label it is counted under in the refused-requests or refused-items metric. The receivers only
    frame them (sidecar.receivers.contract)."""

    #: the answer; every subclass names its own (this one is never raised as such)
    status: Status = Status(500, INTERNAL, False)
    #: label for the refused-items / refused-requests metric
    reason = "refused"

    def __init__(
        self,
        message: str,
        items: int = 0,
        retry_after: float | None = None,
        *,
        reason: str | None = None,
        status: Status | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.items = items
        self.retry_after = retry_after
        if reason is not None:
            self.reason = reason
        if status is not None:
            self.status = status

    @property
    def retry_after_header(self) -> str | None:
        """The HTTP ``Retry-After`` of a retryable refusal (whole seconds, at least 1); else None."""
        if not self.status.retryable:
            return None
        return str(max(1, math.ceil(self.retry_after or 1)))


class InvalidRequest(Refused):
    """Malformed protobuf / JSON: HTTP 400, gRPC INVALID_ARGUMENT (final)."""

    status = Status(400, INVALID_ARGUMENT, False)
    reason = "malformed"


class TooManyResources(InvalidRequest):
    """More resources in one request than ``limits.max_resources_per_request`` (each may cost a
    policy evaluation): a limit, not a malformed request, so the overload action's answer:
    HTTP 413, gRPC RESOURCE_EXHAUSTED (final)."""

    status = Status(413, RESOURCE_EXHAUSTED, False)  # = Action.too_many_resources.status
    reason = "too_many_resources"


class TooLarge(Refused):
    """A request larger than the export queue could ever hold: HTTP 413, gRPC RESOURCE_EXHAUSTED
    without RetryInfo (final: retrying it cannot succeed)."""

    status = Status(413, RESOURCE_EXHAUSTED, False)
    reason = "too_large"


class PermissionDenied(Refused):
    """Every resource was refused by policy: HTTP 403, gRPC PERMISSION_DENIED (final)."""

    status = Status(403, PERMISSION_DENIED, False)
    reason = "policy"


class Unavailable(Refused):
    """Try again later: HTTP 503 with Retry-After, gRPC UNAVAILABLE. ``reason`` says why
    (one of :data:`UNAVAILABLE_REASONS`)."""

    status = Status(503, UNAVAILABLE, True)
    reason = "queue_full"
    #: the receive budget is full (outputs waiting for the disk queue hold it)
    busy = "busy"


class RateLimited(Unavailable):
    """Over the tenant's items-per-second limit: HTTP 429 with Retry-After, gRPC UNAVAILABLE."""

    status = Status(429, UNAVAILABLE, True)
    reason = "rate_limited"


#: why an :class:`Unavailable` is raised (its ``reason``): the export queue is full, the policy
#: engine is down or over its evaluation rate, the sidecar is shutting down, the receive budget
#: is full
UNAVAILABLE_REASONS = ("queue_full", "policy_unavailable", "policy_busy", "shutting_down", Unavailable.busy)
#: the reasons the pipeline counts whole requests under (refused-requests: items not counted)
REQUEST_REASONS = (InvalidRequest.reason, TooManyResources.reason)
#: the reasons the pipeline counts items under (refused-items)
ITEM_REASONS = (PermissionDenied.reason, RateLimited.reason, *UNAVAILABLE_REASONS, TooLarge.reason)


class TokenBucket:
    """Items per second with a burst. A request larger than the burst passes when the bucket
    is full (the bucket goes negative), so a large request is slowed down, never refused forever."""

    def __init__(self, per_second: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        """``clock``: seconds, monotonic (tests inject their own)."""
        self.per_second = per_second
        self.burst = max(burst, 1.0)
        self._clock = clock
        self._tokens = self.burst
        self._at = clock()

    def take(self, items: int) -> float | None:
        """Take ``items``; None when allowed, else the seconds to wait before trying again."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.per_second)
        self._at = now
        if self._tokens >= min(items, self.burst):
            self._tokens -= items
            return None
        return (min(items, self.burst) - self._tokens) / self.per_second if self.per_second > 0 else 60.0


class Pipeline:
    def __init__(
        self,
        queue: ExportQueue,
        metrics: SidecarMetrics,
        planner: Planner,
        *,
        retry_after: float = 1.0,
        max_resources: int = 0,
        max_growth: int = MAX_GROWTH,
        budget: MemoryBudget | None = None,
    ) -> None:
        self._queue = queue
        #: the receive budget: outputs waiting for the disk queue are held in it (None: not counted)
        self._budget = budget
        #: outputs now waiting for the disk queue to make them durable
        self._outputs_waiting = 0
        #: resources one request may hold (limits.max_resources_per_request; 0: no cap)
        self._max_resources = max_resources
        #: bytes the policies may add to one request (limits.max_rewrite_growth_bytes; 0: no cap)
        self._max_growth = max_growth
        self._metrics = metrics
        # no default: forwarding unmasked is an explicit choice (policy.mode), never a fallback
        self._planner: Planner = planner
        self._retry_after = retry_after
        self._bucket: TokenBucket | None = None
        # (received, accepted, sampled out) counters bound per (signal, transport): labels() costs
        self._counters: dict[tuple[str, str], tuple[Any, Any, Any]] = {}
        self._unknown_logged: set[Signal] = set()

    async def submit(self, signal: Signal, data: bytes | memoryview, transport: str, peer: Peer) -> Outcome:
        """Apply the policies to one request and queue what remains; raise Refused otherwise.

        ``data`` may be a view of a receive buffer: it is read in place and never kept (what is
        queued is the rewrite's bytes)."""
        labels = (signal.value, transport)
        # Refusals that spare the rewrite come first (the request is then not known to be valid
        # inside its items: a malformed one gets its 400 once it is let through). They need the
        # items counted by the split; else the split stops at the resources, and the rewrite
        # counts the items (a request malformed inside its items is then planned before the
        # rewrite refuses it: the policy engine sees only its Resource, which is checked whole).
        limit = self._planner.rate_limit()
        full = self._queue.full_for(signal)
        counting = full or limit is not None
        try:
            # counted (up to one over the cap) before anything is made per resource: millions of
            # empty ones fit in a few MiB (a kilobyte compressed), an object each in gigabytes
            cap = self._max_resources
            if cap and count_resources(signal, data, stop_at=cap + 1) > cap:
                # before any policy evaluation: thousands of new resources must not stall every port
                self._metrics.overload.count(_LISTENERS.get(transport, transport), Action.too_many_resources)
                raise self._refuse_request(labels, TooManyResources(
                    f"the request holds more resources than the {cap} allowed "
                    "(limits.max_resources_per_request); send them in smaller requests"
                ))
            resources = split_resources(signal, data, validate=False, count=counting)
        except MalformedRequest as exc:
            raise self._refuse_request(labels, _malformed(signal, exc)) from None
        counters = self._counters.get(labels)
        if counters is None:
            counters = self._counters[labels] = (
                self._metrics.received_items.labels(*labels),
                self._metrics.accepted_items.labels(*labels),
                self._metrics.sampled_out_items.labels(signal.value),
            )
        if counting:
            items_in = sum(r.items for r in resources)
            if full:
                # the export is behind: refuse before spending the rewrite on a request that cannot fit
                raise self._refuse_items(counters[0], labels, Unavailable(
                    self._queue.full_message(signal), items_in, retry_after=self._retry_after, reason="queue_full"))
            wait = self._rate_limited(limit, items_in)
            if wait is not None:
                raise self._refuse_items(counters[0], labels, RateLimited(
                    f"over the tenant's rate limit; retry in {wait:.1f} s", items_in, retry_after=wait))
        else:
            self._bucket = None
        try:
            plans = await self._planner.plans_for(signal, resources, peer, transport)
            result = rewrite(signal, data, plans, self._max_growth)
            # inside the rewrite's refusal: the allowlist reads sub-messages the rewriter does not
            out = self._only_otlp(signal, result.data, result.maybe_unknown) if result.items_out > 0 else result.data
        except MalformedRequest as exc:
            # as for a malformed split: a refused request, its items never counted as received
            raise self._refuse_request(labels, _malformed(signal, exc)) from None
        except RewriteTooLarge as exc:
            # the rewrite stopped at the limit (nothing past it built): final, as for an output
            # larger than the queue; its items counted by the quick split
            items_in = sum(r.items for r in resources) if counting else self._count(signal, data, labels)
            self._metrics.overload.count(_LISTENERS.get(transport, transport), Action.rewrite_too_large)
            raise self._refuse_items(counters[0], labels, TooLarge(
                f"the policies would grow this request by more than {exc.limit} bytes "
                "(limits.max_rewrite_growth_bytes); send it in smaller requests", items_in)) from None
        except PolicyUnavailable as exc:
            items_in = sum(r.items for r in resources) if counting else self._count(signal, data, labels)
            # the engine's own back-off (PolicyBusy: over its evaluation rate) says when to retry
            retry_after = getattr(exc, "retry_after", None)
            busy = retry_after is not None
            if busy:
                self._metrics.overload.count(_LISTENERS.get(transport, transport), Action.policy_busy)
            raise self._refuse_items(counters[0], labels, Unavailable(
                f"policy engine cannot decide: {exc}", items_in, retry_after=retry_after or self._retry_after,
                reason="policy_busy" if busy else "policy_unavailable",
            )) from None
        items_in = result.items_in
        counters[0].inc(items_in)
        self._planner.record_counts(signal, result.counts)
        if result.sampled_out:
            counters[2].inc(result.sampled_out)
        message = ""
        if result.rejected_items:
            self._metrics.refused_items.labels(*labels, PermissionDenied.reason).inc(result.rejected_items)
            message = "; ".join(dict.fromkeys(result.refusals))
            if result.rejected_items == items_in:
                raise PermissionDenied(message or "refused by policy", items_in)
        accepted = items_in - result.rejected_items
        if result.items_out > 0:
            if len(out) > self._queue.largest(signal):
                # it could never be queued: refused for good, or its client retries it for ever
                self._metrics.refused_items.labels(*labels, TooLarge.reason).inc(accepted)
                raise TooLarge(
                    f"the request is {len(out)} bytes once the policies applied, more than the export queue can "
                    f"ever hold for {signal.value} ({self._queue.largest(signal)} bytes: exporter.queue_max_bytes, "
                    "or disk_queue_max_bytes with the disk queue); send it in smaller requests", items_in)
            held = self._hold_output(len(out), transport, labels, accepted, items_in)
            self._outputs_waiting += 1
            try:
                await self._queue.put(signal, out, result.items_out)
            except (QueueFull, QueueClosed) as exc:
                reason = "queue_full" if isinstance(exc, QueueFull) else "shutting_down"
                self._metrics.refused_items.labels(*labels, reason).inc(accepted)
                raise Unavailable(str(exc), items_in, retry_after=self._retry_after, reason=reason) from None
            finally:
                self._outputs_waiting -= 1
                if held and self._budget is not None:
                    self._budget.release(held)
        counters[1].inc(accepted)
        return Outcome(accepted=accepted, rejected=result.rejected_items, message=message)

    def _only_otlp(self, signal: Signal, data: bytes, maybe_unknown: bool = True) -> bytes:
        """``data`` without the fields OTLP does not define (the rewriter copies what it does not
        walk, so those were never scanned): counted, and logged once per signal (where, not what).
        The rewriter checks every field it copies unwalked as it goes: ``data`` is read again
        only when its result says it may hold one (``RewriteResult.maybe_unknown``)."""
        if not maybe_unknown:
            return data
        where = unknown_field(signal, data)
        if where is None:
            return data
        data, dropped = without_unknown_fields(signal, data)
        self._metrics.unknown_fields_dropped.labels(signal.value).inc(dropped)
        if signal not in self._unknown_logged:
            self._unknown_logged.add(signal)
            log.warning(
                "dropped %d field(s) OTLP does not define from a %s request before export (first: %s); "
                "nothing scanned them for card numbers. Counted in "
                "otlp_sidecar_processor_unknown_fields_dropped_total; logged once per signal",
                dropped, signal.value, where,
            )
        return data

    def _hold_output(self, size: int, transport: str, labels: tuple[str, str], accepted: int, items_in: int) -> int:
        """Take a rewrite's output (``size`` bytes) from the receive budget while the queue makes it
        durable: the bytes taken (0 when not counted), or raise Unavailable (``busy``) when they
        do not fit. With the disk queue a request is answered once its output is on disk, and
        outputs wait for the disk's sync side by side; without it ``put`` takes the output at once
        (into the queue's own bytes). The first output waiting is not counted, as without the disk
        queue: the memory plan keeps room for one rewrite in the process's own part, so a request
        larger than the budget's free bytes still goes through alone."""
        if self._budget is None or not self._queue.put_waits or self._outputs_waiting == 0:
            return 0
        if self._budget.reserve(size):
            return size
        self._metrics.overload.count(_LISTENERS.get(transport, transport), Action.budget_full)
        self._metrics.refused_items.labels(*labels, Unavailable.busy).inc(accepted)
        raise Unavailable(
            f"{self._budget.message()} (requests waiting for the disk queue hold their rewritten data)",
            items_in, retry_after=self._retry_after, reason=Unavailable.busy)

    def _refuse_items(self, received: Any, labels: tuple[str, str], refused: Refused) -> Refused:
        """Count a whole request's items as received and refused for its reason; return ``refused``."""
        received.inc(refused.items)
        self._metrics.refused_items.labels(*labels, refused.reason).inc(refused.items)
        return refused

    def _refuse_request(self, labels: tuple[str, str], refused: Refused) -> Refused:
        """Count a request refused before its items were counted; return ``refused``."""
        self._metrics.refused_requests.labels(*labels, refused.reason).inc()
        return refused

    def _count(self, signal: Signal, data: bytes | memoryview, labels: tuple[str, str]) -> int:
        """The items of a request that could not be rewritten: the quick split, counting."""
        try:
            return sum(r.items for r in split_resources(signal, data, validate=False))
        except MalformedRequest as exc:
            raise self._refuse_request(labels, _malformed(signal, exc)) from None

    def _rate_limited(self, limit: Any, items: int) -> float | None:
        """Seconds to wait when over the tenant's limit (from the policy's pod settings)."""
        bucket = self._bucket
        if bucket is None or (bucket.per_second, bucket.burst) != (limit.per_second, max(limit.burst, 1.0)):
            bucket = self._bucket = TokenBucket(limit.per_second, limit.burst)
        return bucket.take(items)


def _malformed(signal: Signal, exc: MalformedRequest) -> InvalidRequest:
    return InvalidRequest(f"invalid {signal.request_class.__name__}: {exc}")
