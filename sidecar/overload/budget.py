"""One memory budget for everything clients make the sidecar hold.

Every byte a client makes the sidecar hold is taken from it before (or as) it is held, and given
back once it is no longer held (for a request: once its data was put on the export queue, or it
was refused): wire bytes as they arrive (never a declared size), decompressed bytes step by step,
decoded or converted bytes (OTLP/JSON), partial HTTP/2 frames and read-ahead.

Each connection (or any other holder) takes through its own :class:`Account`, which may hold at
most ``per_connection`` bytes: a few slow or greedy clients cannot take the whole budget from the
others. ``account.close()`` gives back whatever the account still holds, so a connection that goes
away cannot leak budget.

Many greedy connections together can still fill the budget. So that a connection holding little
(a normal client with one SDK batch at a time) is served meanwhile, the last ``light_reserve``
bytes are kept for takes that leave their account holding at most ``light_bytes``, and graded:
a take that leaves its account holding ``h`` may reach ``limit - light_reserve * h /
(2 * light_bytes)``. A heavy holder is refused ``light_reserve`` early, a light one may use at least
half of it, and the lighter a holder, the further it may go: many connections that each hold a
little (such as open HTTP/2 streams whose header fields decode to 57 kB) cannot fill the reserve
against a client lighter than each of them, and while heavy holders fill the budget, a light
holder of up to ``light_bytes`` still fits in a reserve of 2 MiB or more (the receivers' is 4).

    budget = MemoryBudget(64 << 20, per_connection=32 << 20)
    account = budget.account()
    if not account.take(len(chunk)):
        refuse(account.refused)          # Action.budget_full or Action.connection_share
    ...
    account.give(len(chunk))             # or account.close() when the connection ends
"""

from __future__ import annotations

from sidecar.overload.reasons import Action

#: an account holding at most this after a take is light: it may use the budget's light reserve
#: (one SDK batch of any signal, decompressed and decoded, with room to spare)
LIGHT_BYTES = 1 << 20
#: the receivers' light reserve: an eighth of the budget, at most this (graded: room for two holders
#: of LIGHT_BYTES at once past the heavy ones, more of lighter ones)
LIGHT_RESERVE_BYTES = 4 << 20


def light_reserve(limit: int) -> int:
    """The light reserve of the receivers' budget of ``limit`` bytes."""
    return min(limit // 8, LIGHT_RESERVE_BYTES)


class MemoryBudget:
    """A byte budget shared by every listener, taken from through per-connection accounts."""

    __slots__ = ("in_use", "light_bytes", "light_reserve", "limit", "peak", "per_connection", "refusals",
                 "refused_by")

    def __init__(self, limit: int, per_connection: int | None = None, *, light_reserve: int = 0,
                 light_bytes: int = LIGHT_BYTES) -> None:
        """``light_reserve``: the last bytes of the budget (at most half of it), kept for accounts
        that hold at most ``light_bytes`` once they took, graded by what they then hold."""
        self.limit = limit
        self.light_reserve = min(light_reserve, limit // 2)
        #: the most one account may hold: what a heavy holder can reach (a request larger than
        #: that could never be taken, and is refused as too large rather than as busy forever)
        heavy = limit - self.light_reserve
        self.per_connection = min(heavy, per_connection) if per_connection else heavy
        self.light_bytes = light_bytes
        self.in_use = 0
        #: the most held at once since start
        self.peak = 0
        #: refusals since start (all reasons), and per reason
        self.refusals = 0
        self.refused_by: dict[Action, int] = {}

    def account(self, share: int | None = None) -> Account:
        """A new account (one per connection), holding at most ``share`` (default: the
        per-connection share)."""
        return Account(self, self.per_connection if share is None else min(share, self.limit - self.light_reserve))

    def fits_connection(self, size: int) -> bool:
        """Could one account ever hold ``size`` bytes (else the request is too large, not busy)?"""
        return size <= self.per_connection

    # -- the budget itself (accounts call these; ``reserve``/``release`` also serve holders
    #    without an account) --------------------------------------------------------------------

    def ceiling(self, held_after: int | None = None) -> int:
        """What ``in_use`` may reach for a take that leaves its holder with ``held_after`` bytes
        (None: a holder without an account, counted as heavy): the light reserve is for light
        holders, the lighter the deeper."""
        if held_after is not None and held_after <= self.light_bytes:
            return self.limit - self.light_reserve * held_after // (2 * self.light_bytes)
        return self.limit - self.light_reserve

    def reserve(self, size: int, held_after: int | None = None) -> bool:
        """Take ``size`` bytes for a holder that then holds ``held_after`` (None: no account);
        False (and nothing taken) when they do not fit."""
        # ceiling() inline: once per read on the receive path
        if held_after is not None and held_after <= self.light_bytes:
            ceiling = self.limit - self.light_reserve * held_after // (2 * self.light_bytes)
        else:
            ceiling = self.limit - self.light_reserve
        if self.in_use + size > ceiling:
            self._refused(Action.budget_full)
            return False
        self.in_use += size
        if self.in_use > self.peak:
            self.peak = self.in_use
        return True

    def release(self, size: int) -> None:
        self.in_use -= size
        assert self.in_use >= 0, "released more than was reserved"

    def message(self, action: Action = Action.budget_full) -> str:
        """What a refused client is told."""
        if action is Action.connection_share:
            return (f"this connection holds its share of the sidecar's receive memory "
                    f"({self.per_connection} bytes) already; retry shortly")
        return f"the sidecar holds {self.limit} bytes of requests already; retry shortly"

    def _refused(self, action: Action) -> None:
        self.refusals += 1
        self.refused_by[action] = self.refused_by.get(action, 0) + 1


class Account:
    """What one connection (or request) holds of a :class:`MemoryBudget`."""

    __slots__ = ("budget", "held", "peak", "refused", "share")

    def __init__(self, budget: MemoryBudget, share: int) -> None:
        self.budget = budget
        self.share = share
        self.held = 0
        self.peak = 0
        #: why the last ``take`` failed (None until one does)
        self.refused: Action | None = None

    def take(self, size: int) -> bool:
        """Take ``size`` bytes from the budget; False (nothing taken, ``refused`` set) when the
        account's share or the budget is short."""
        if size <= 0:
            return True
        if self.held + size > self.share:
            self.refused = Action.connection_share
            self.budget._refused(Action.connection_share)
            return False
        if not self.budget.reserve(size, self.held + size):
            self.refused = Action.budget_full
            return False
        self.held += size
        if self.held > self.peak:
            self.peak = self.held
        return True

    def take_room(self, size: int) -> bool:
        """Take ``size`` bytes for room a buffer is about to have (not bytes that arrived); False,
        with nothing taken and nothing counted, when they do not fit (the caller grows less)."""
        held_after = self.held + size
        if held_after > self.share or self.budget.in_use + size > self.budget.ceiling(held_after):
            return False
        return self.take(size)

    def fits(self, size: int) -> bool:
        """Would ``size`` more bytes fit now? Nothing is taken (a declared size is checked, never
        reserved: a client that declares much and sends little holds nothing); a refusal is
        counted and ``refused`` set, as for ``take``."""
        if self.held + size > self.share:
            self.refused = Action.connection_share
        elif self.budget.in_use + size > self.budget.ceiling(self.held + size):
            self.refused = Action.budget_full
        else:
            return True
        self.budget._refused(self.refused)
        return False

    def give(self, size: int) -> None:
        """Give back ``size`` bytes (at most what is held)."""
        size = min(size, self.held)
        if size > 0:
            self.held -= size
            self.budget.release(size)

    def close(self) -> None:
        """Give back everything still held."""
        if self.held:
            self.budget.release(self.held)
            self.held = 0

    def message(self) -> str:
        return self.budget.message(self.refused or Action.budget_full)
