"""How lanes share a bounded store (the export queue in memory, the disk queue on disk).

Each lane (the signals of one upstream, :mod:`sidecar.export.lanes`) has a reserve, half of an
even share of the capacity, that the other lanes cannot take: a lane may hold what is free less
what the other lanes' reserves still need. So upstreams that are down cannot take the room of one
that is up, and with two lanes either may hold 3/4 of the store. With one lane there is no reserve.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Shares:
    capacity: int
    lanes: int

    @property
    def reserve(self) -> int:
        """The bytes kept for each lane that the others cannot take (none with one lane)."""
        return self.capacity // (2 * self.lanes) if self.lanes > 1 else 0

    @property
    def lane_capacity(self) -> int:
        """The most one lane may hold (when the others hold nothing)."""
        return self.capacity - (self.lanes - 1) * self.reserve

    def kept_for_others(self, lane: int, held: Sequence[int]) -> int:
        """What the other lanes' reserves still need (``held``: the bytes of each lane)."""
        reserve = self.reserve
        return sum(reserve - h for other, h in enumerate(held) if other != lane and h < reserve)

    def room(self, lane: int, held: Sequence[int], total: int) -> int:
        """Bytes ``lane`` may still take; ``total`` is all that is held (it may include bytes of no
        lane, such as a disk log left by an earlier configuration)."""
        room = self.capacity - total
        return room - self.kept_for_others(lane, held) if self.reserve else room

    def refusal(self, store: str, name: str, lane: int, held: Sequence[int], total: int, size: int) -> str:
        """Why ``size`` more bytes of ``lane`` (called ``name``) do not fit in ``store``."""
        if self.lanes > 1 and total + max(size, 1) <= self.capacity:
            # there is room, but it is the other upstreams' reserve
            return (
                f"{store} is full for {name} ({held[lane]} bytes held for their upstream; "
                f"{self.kept_for_others(lane, held)} of the {self.capacity} kept for the other "
                f"upstreams, {total} held in all)"
            )
        return f"{store} is full ({total} of {self.capacity} bytes held)"
