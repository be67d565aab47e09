"""The pipeline <-> transport contract, shared by both receivers.

Every refusal is a :class:`sidecar.pipeline.Refused` carrying its answer (HTTP status, gRPC code,
retryability, Retry-After) and its metric reason; the refusals decided before the pipeline (a TLS
peer outside the allowlist, a request that already passed this sidecar) are made into the same
shape here, and so are a body's refusals by the bounds of its decompression (the overload
action's status). What an accepted request answers (``partial_success``) is built here too, so
that the receivers only frame: an HTTP response or a gRPC status.
"""

from __future__ import annotations

from typing import Any

from grpclib.const import Status as GrpcStatus

from sidecar import loop_guard
from sidecar.export.partial import rejected_field
from sidecar.identity import Peer
from sidecar.masked_text import client_message
from sidecar.overload.budget import Account
from sidecar.overload.config import LimitsConfig
from sidecar.overload.reasons import Action, Status
from sidecar.pipeline import Outcome, Refused
from sidecar.receivers.peers import PeerResolver
from sidecar.signals import Signal
from sidecar.tls.server import PeerRefused
from sidecar.wire import compression


class PeerNotAllowed(Refused):
    """A TLS client refused after its handshake (no client certificate, SPIFFE ID not allowed):
    HTTP 401 / 403, gRPC UNAUTHENTICATED / PERMISSION_DENIED, as :class:`PeerRefused` says."""

    @classmethod
    def of(cls, refused: PeerRefused) -> PeerNotAllowed:
        status = Status(refused.http_status, GrpcStatus[refused.grpc_status].value, False)
        return cls(refused.message, reason=refused.reason, status=status)


class LoopDetected(Refused):
    """A request that already passed this sidecar (sidecar.loop_guard): HTTP 508, gRPC
    FAILED_PRECONDITION; final, so an exporter pointed at itself gives up at once."""

    status = Status(loop_guard.HTTP_STATUS, GrpcStatus.FAILED_PRECONDITION.value, False)
    reason = loop_guard.REASON


class Bounded(Refused):
    """A body refused by a bound, answered as its overload ``action`` says (413, 400, or 503 with
    Retry-After: sidecar.overload.reasons), counted under ``reason`` and as the action."""

    def __init__(self, message: str, action: Action, reason: str) -> None:
        super().__init__(message, reason=reason, status=action.status or _INVALID)
        self.action = action


_INVALID = Status(400, GrpcStatus.INVALID_ARGUMENT.value, False)


async def decompress(
    encoding: str, data: bytes | memoryview, limit: int, *, account: Account | None, limits: LimitsConfig, noun: str
) -> bytes | memoryview:
    """``data`` decompressed in bounded steps taken from ``account`` (``limit``: the most it may
    decompress to); :class:`Bounded` when a bound refuses it (``noun`` names it in the message)."""
    try:
        return await compression.decompress_bounded(
            encoding, data, limit, account=account,
            step=limits.decompress_step_bytes, max_members=limits.max_compression_members,
        )
    except compression.TooLarge as exc:
        raise Bounded(f"decompressed {noun} {exc}", Action.decompressed_too_large, "too_large") from None
    except compression.BudgetExhausted as exc:
        raise Bounded(str(exc), exc.action, "busy") from None
    except compression.TooManyMembers as exc:
        raise Bounded(str(exc), Action.too_many_members, "bad_compression") from None
    except compression.DecompressionError as exc:
        raise Bounded(str(exc), Action.bad_compression, "bad_compression") from None


def resolve_peer(resolver: PeerResolver, transport: Any) -> Peer:
    """The peer of a connection; :class:`PeerNotAllowed` for a TLS client that may not send."""
    try:
        return resolver(transport)
    except PeerRefused as exc:
        raise PeerNotAllowed.of(exc) from None


def check_loop(header: str | None) -> None:
    """Raise :class:`LoopDetected` when the loop-guard header (its value ``header``) says this
    sidecar sent the request."""
    if loop_guard.passed_here(header):
        raise LoopDetected(loop_guard.MESSAGE)


def partial_success(signal: Signal, outcome: Outcome) -> Any | None:
    """The Export*ServiceResponse of an accepted request when items were rejected (its
    ``partial_success`` with the count and the policies' messages); None for a whole success,
    answered with an empty response."""
    if not outcome.rejected:
        return None
    response = signal.response_class()
    setattr(response.partial_success, rejected_field(signal), outcome.rejected)
    response.partial_success.error_message = client_message(outcome.message)
    return response
