"""The state of one walk over a request: the twin of ``St`` in ``sidecar/_ext/state.pxd``."""

from __future__ import annotations

from sidecar.rewrite._common import CompiledPlan, compile_plan
from sidecar.rewrite.plan import Plan

NULL_PLAN = compile_plan(Plan())


class State:
    """Where the walk is: the request, the edits so far, the plan of the current resource."""

    __slots__ = ("counts", "data", "depth", "dry", "edits", "items_in", "plan", "sampled_out",
                 "ts_last", "ts_new", "work")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.work: bytearray | None = None
        self.edits: list[tuple[int, int, bytes]] = []
        self.plan: CompiledPlan = NULL_PLAN
        self.counts: list[int] = []
        self.dry = False
        self.items_in = 0
        self.sampled_out = 0
        self.ts_new: bytes | None = None
        self.ts_last = -1
        self.depth = 0

    def edit(self, start: int, end: int, repl: bytes, at: int = -1) -> None:
        """Replace data[start:end] by ``repl`` in the output (inserted at edit ``at`` if >= 0)."""
        if self.dry:
            return
        if at < 0:
            self.edits.append((start, end, repl))
        else:
            self.edits.insert(at, (start, end, repl))

    def writable(self) -> bytearray:
        """A copy of the request to mask in place (same length), made once."""
        if self.work is None:
            self.work = bytearray(self.data)
        return self.work

    def count(self, slot: int, n: int) -> None:
        self.counts[slot] += n
