"""One vocabulary of refusals and protective actions, each with the status OTLP names for it.

OTLP/HTTP: retryable refusals are 429/503 with Retry-After; final ones 400/413. OTLP/gRPC:
retryable is UNAVAILABLE (or RESOURCE_EXHAUSTED with RetryInfo), final is INVALID_ARGUMENT or
RESOURCE_EXHAUSTED without it. Actions that close a connection without an answer (timeouts,
the connection cap) have no status of their own; they are counted all the same.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Status:
    """How a refusal is answered: HTTP status, gRPC status code, and whether to retry."""

    http: int
    grpc: int
    retryable: bool


#: gRPC status codes used here
INVALID_ARGUMENT = 3
RESOURCE_EXHAUSTED = 8
UNAVAILABLE = 14
DEADLINE_EXCEEDED = 4

_BUSY = Status(503, UNAVAILABLE, True)
_TOO_LARGE = Status(413, RESOURCE_EXHAUSTED, False)
_INVALID = Status(400, INVALID_ARGUMENT, False)
_TIMEOUT = Status(408, DEADLINE_EXCEEDED, True)


class Action(enum.Enum):
    """A protective action the sidecar took against what a client sent (metric label: ``value``)."""

    #: the shared memory budget is full: retry shortly (503 / UNAVAILABLE + Retry-After)
    budget_full = "budget_full"
    #: one connection holds its share of the budget already (503 / UNAVAILABLE)
    connection_share = "connection_share"
    #: a body over ``receivers.max_request_bytes`` (413 / RESOURCE_EXHAUSTED)
    request_too_large = "request_too_large"
    #: decompressed past ``receivers.max_decompressed_bytes`` or the connection's share (413)
    decompressed_too_large = "decompressed_too_large"
    #: more gzip members / zstd frames than ``limits.max_compression_members`` (400)
    too_many_members = "too_many_members"
    #: invalid compressed data (400)
    bad_compression = "bad_compression"
    #: OTLP/JSON nested deeper than ``limits.json_max_depth`` (400)
    json_too_deep = "json_too_deep"
    #: OTLP/JSON with more objects/arrays than ``limits.json_max_items`` (413)
    json_too_many_items = "json_too_many_items"
    #: OTLP/JSON that does not decode (a number too long, invalid text) (400)
    json_invalid = "json_invalid"
    #: more resources in one request than ``limits.max_resources_per_request`` (413)
    too_many_resources = "too_many_resources"
    #: the policies would grow a request by more than ``limits.max_rewrite_growth_bytes`` (413)
    rewrite_too_large = "rewrite_too_large"
    #: a malformed request head or framing (400, 414, 431, 505 ...)
    malformed_request = "malformed_request"
    #: no complete head within ``limits.header_timeout`` (connection closed)
    header_timeout = "header_timeout"
    #: an idle keep-alive connection past ``limits.idle_timeout`` (connection closed)
    idle_timeout = "idle_timeout"
    #: a body arriving slower than ``limits.min_receive_rate`` after the grace (408, closed)
    slow_body = "slow_body"
    #: a request not received within ``limits.request_deadline`` (408, closed)
    request_deadline = "request_deadline"
    #: a connection over the listener's cap (closed at once)
    connection_limit = "connection_limit"
    #: accept() failed for want of file descriptors (accepting paused, one log line)
    accept_backoff = "accept_backoff"
    #: a connection's own read buffer is small (16 KiB): the listener's own buffers hold their
    #: bound together already (HTTP/1.1: 8 MiB); it is served the same, in smaller reads
    small_buffer = "small_buffer"
    #: a protocol error that closed the connection (HTTP/2 GOAWAY ...)
    protocol_error = "protocol_error"
    #: more new resources than the policy engine may evaluate now (503 / UNAVAILABLE + Retry-After)
    policy_busy = "policy_busy"
    #: a gRPC call over ``limits.grpc_max_concurrent_streams`` on its connection (RST_STREAM
    #: REFUSED_STREAM: the client retries it)
    stream_limit = "stream_limit"

    @property
    def status(self) -> Status | None:
        """The answer to a request refused this way; None when the connection closes unanswered."""
        return _STATUS.get(self)

    @property
    def label(self) -> str:
        return self.value


_STATUS: dict[Action, Status] = {
    Action.budget_full: _BUSY,
    Action.connection_share: _BUSY,
    Action.policy_busy: _BUSY,
    Action.request_too_large: _TOO_LARGE,
    Action.decompressed_too_large: _TOO_LARGE,
    Action.too_many_members: _INVALID,
    Action.bad_compression: _INVALID,
    Action.json_too_deep: _INVALID,
    Action.json_too_many_items: _TOO_LARGE,
    Action.json_invalid: _INVALID,
    Action.too_many_resources: _TOO_LARGE,
    Action.rewrite_too_large: _TOO_LARGE,
    Action.malformed_request: _INVALID,
    Action.slow_body: _TIMEOUT,
    Action.request_deadline: _TIMEOUT,
}

#: the listeners the actions are counted for
LISTENERS = ("otlp_http", "otlp_grpc", "admin")
