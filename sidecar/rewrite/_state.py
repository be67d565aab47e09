"""The state of one walk over a request: the twin of ``St`` in ``sidecar/_ext/state.pxd``."""

from __future__ import annotations

from sidecar.rewrite._common import EDIT_BYTES, CompiledPlan, RewriteTooLarge, compile_plan
from sidecar.rewrite.plan import Plan

NULL_PLAN = compile_plan(Plan())


class State:
    """Where the walk is: the request, the edits so far, the plan of the current resource, and
    what the edits added (``grown``: charged as ``add_edit`` in ``sidecar/_ext/wire.pxd`` does)."""

    __slots__ = ("counts", "data", "depth", "dry", "edits", "grown", "items_in", "max_growth", "plan",
                 "sampled_out", "tail", "ts_last", "ts_new", "unknown", "work")

    def __init__(self, data: bytes, max_growth: int = 0) -> None:
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
        #: bytes the edits added (replacements + EDIT_BYTES a record) and the most they may (0: no cap)
        self.grown = 0
        self.max_growth = max_growth
        #: where the last edit record ends when it is empty (a deletion the next one extends), else -1
        self.tail = -1
        #: a field OTLP does not define was met (``RewriteResult.maybe_unknown``; ``Walk.unknown``
        #: in ext/rewrite.pyx): the walk asks ``_allowlist.is_otlp`` of every field it copies unwalked
        self.unknown = False

    def edit(self, start: int, end: int, repl: bytes, at: int = -1) -> None:
        """Replace data[start:end] by ``repl`` in the output (inserted at edit ``at`` if >= 0)."""
        if self.dry:
            return
        if at < 0 or at >= len(self.edits):
            if not repl and self.tail == start:  # a deletion right after a deletion: one record
                last = self.edits[-1] if self.edits else None
                if last is not None and not last[2] and last[1] == start:
                    self.edits[-1] = (last[0], end, b"")
                else:  # after an empty mask (the C rewriter's record, not one here)
                    self.edits.append((start, end, b""))
                self.tail = end
                return
            self._charge(len(repl))
            self.edits.append((start, end, repl))
            self.tail = -1 if repl else end
        else:
            self._charge(len(repl))
            self.edits.insert(at, (start, end, repl))

    def masked(self, start: int, end: int) -> None:
        """Charge data[start:end], masked in place here, as the C rewriter's copy of it and its
        edit record."""
        if self.dry:
            return
        self._charge(end - start)
        self.tail = end if start == end else -1

    def _charge(self, n: int) -> None:
        self.grown += n + EDIT_BYTES
        if self.max_growth and self.grown > self.max_growth:
            raise RewriteTooLarge(self.max_growth)

    def writable(self) -> bytearray:
        """A copy of the request to mask in place (same length), made once."""
        if self.work is None:
            self.work = bytearray(self.data)
        return self.work

    def count(self, slot: int, n: int) -> None:
        self.counts[slot] += n
