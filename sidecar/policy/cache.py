"""A bounded least-recently-used cache of plans, emptied when the policy changes.

Bounded twice: at most ``size`` entries, and at most ``max_bytes`` of estimated memory (each
entry's own overhead plus each DISTINCT plan once). Equal plans are interned: the cache hands
back one object per distinct plan (the rewriter's compiled-plan cache then finds it by
identity), and a plan is forgotten when the last entry using it is evicted. So a policy that
returns a different plan for every resource cannot make the cache hold more than ``max_bytes``.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

V = TypeVar("V", bound=Hashable)


@dataclass(slots=True)
class _Held(Generic[V]):
    """One distinct value: the object handed out, how many entries use it, its estimated bytes."""

    value: V
    users: int
    cost: int

#: estimated bytes of one entry besides its plan: the key tuple, its digest, the OrderedDict node
ENTRY_BYTES = 400


class PlanCache(Generic[V]):
    """At most ``size`` entries and ``max_bytes`` (0: no byte bound); an entry older than
    ``ttl`` seconds (when > 0) is a miss. ``size_of`` estimates one value's bytes."""

    def __init__(
        self, size: int, ttl: float = 0.0, *, max_bytes: int = 0,
        size_of: Callable[[V], int] | None = None, on_evict: Callable[[str], None] | None = None,
    ) -> None:
        self.size = size
        self.ttl = ttl
        self.max_bytes = max_bytes
        self._size_of = size_of or (lambda _value: 0)
        self._entries: OrderedDict[Hashable, tuple[float, V]] = OrderedDict()
        #: distinct values, each held once
        self._values: dict[V, _Held[V]] = {}
        #: estimated bytes held (entries + distinct values)
        self.bytes = 0
        #: evictions since start, by why: "entries" (over size), "bytes" (over max_bytes), "ttl"
        self.evictions: dict[str, int] = {"entries": 0, "bytes": 0, "ttl": 0}
        self._on_evict = on_evict

    def get(self, key: Hashable) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        stored, value = entry
        if self.ttl > 0 and time.monotonic() - stored > self.ttl:
            self._drop(key)
            self._evicted("ttl")
            return None
        self._entries.move_to_end(key)
        return value

    def put(self, key: Hashable, value: V) -> V:
        """Store ``value`` under ``key``; return the interned object equal to it (use that one)."""
        if key in self._entries:
            self._drop(key)
        held = self._values.get(value)
        if held is None:
            cost = max(0, int(self._size_of(value)))
            held = self._values[value] = _Held(value, 0, cost)
            self.bytes += cost
        held.users += 1
        interned = held.value
        self._entries[key] = (time.monotonic(), interned)
        self.bytes += ENTRY_BYTES
        while len(self._entries) > self.size:
            self._evict("entries")
        while self.max_bytes and self.bytes > self.max_bytes and len(self._entries) > 1:
            self._evict("bytes")
        return interned

    def clear(self) -> None:
        self._entries.clear()
        self._values.clear()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def distinct(self) -> int:
        """Distinct plans held."""
        return len(self._values)

    def _evict(self, why: str) -> None:
        key = next(iter(self._entries))
        self._drop(key)
        self._evicted(why)

    def _evicted(self, why: str) -> None:
        self.evictions[why] += 1
        if self._on_evict is not None:
            self._on_evict(why)

    def _drop(self, key: Hashable) -> None:
        _, value = self._entries.pop(key)
        self.bytes -= ENTRY_BYTES
        held = self._values[value]
        held.users -= 1
        if held.users == 0:
            del self._values[value]
            self.bytes -= held.cost


#: what a plan holds in all, as a multiple of its objects' estimate below: the rewriters compile it
#: once and keep the compiled forms on it (``compile_plan``'s, and the C rewriter's on top of that),
#: 2.1 times the estimate again; measured (tracemalloc, a distinct plan per resource through the
#: policy service and a rewrite) 2.6-2.8 times with the C rewriter, 1.8 with the pure-Python twin
WITH_COMPILED = 3


def plan_bytes(plan: object) -> int:
    """Estimated memory of one plan and what the rewriters compile from it and keep on it.

    Its objects: about 100 bytes per rule object plus the text it holds (stamped values, patterns,
    reasons), more than tracemalloc measures of them (the bundled set's plan: 38 KB estimated; the
    test's echo plan 23 KB estimated, 17 KB measured); times WITH_COMPILED for the compiled forms."""
    total = 600
    stack: list[object] = [plan]
    while stack:
        item = stack.pop()
        if isinstance(item, str | bytes):
            total += 8 + len(item)  # most strings are shared between rules
        elif isinstance(item, tuple):
            total += 56 + 8 * len(item)
            stack.extend(item)
        elif hasattr(item, "__dataclass_fields__"):
            total += 100
            stack.extend(getattr(item, name) for name in item.__dataclass_fields__)
    return total * WITH_COMPILED
