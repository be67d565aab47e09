"""The pipeline <-> transport contract, shared by both receivers.

Every refusal is a :class:`sidecar.pipeline.Refused` carrying its answer (HTTP status, gRPC code,
retryability, Retry-After) and its metric reason; the refusals decided before the pipeline (a TLS
peer outside the allowlist, a request that already passed this sidecar) are made into the same
shape here. What an accepted request answers (``partial_success``) is built here too, so that the
receivers only frame: an HTTP response or a gRPC status.
"""

from __future__ import annotations

from typing import Any

from grpclib.const import Status as GrpcStatus

from sidecar import loop_guard
from sidecar.export.partial import rejected_field
from sidecar.identity import Peer
from sidecar.overload.reasons import Status
from sidecar.pipeline import Outcome, Refused
from sidecar.receivers.peers import PeerResolver
from sidecar.signals import Signal
from sidecar.tls.server import PeerRefused


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
    response.partial_success.error_message = outcome.message
    return response
