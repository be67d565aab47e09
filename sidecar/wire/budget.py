"""The bytes of request bodies the receivers hold at once, shared by both servers.

A server reserves a request's size (as declared: Content-Length, the gRPC message prefix, or
chunk by chunk) before it buffers the bytes, and releases it once the handler is done with the
request. A reservation that does not fit is refused at once with a retryable status (HTTP 503,
gRPC UNAVAILABLE): memory follows what the sidecar was willing to take, not what clients
declare or trickle in, and a reserved request can always complete.
"""

from __future__ import annotations


class ReceiveBudget:
    """A byte budget: ``reserve`` before buffering a body, ``release`` when done with it."""

    __slots__ = ("in_use", "limit", "refusals")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_use = 0
        self.refusals = 0

    def reserve(self, size: int) -> bool:
        """Take ``size`` bytes of the budget; False (and nothing taken) when they do not fit."""
        if self.in_use + size > self.limit:
            self.refusals += 1
            return False
        self.in_use += size
        return True

    def release(self, size: int) -> None:
        self.in_use -= size
        assert self.in_use >= 0, "released more than was reserved"

    def message(self) -> str:
        return f"the sidecar holds {self.limit} bytes of requests already; retry shortly"
