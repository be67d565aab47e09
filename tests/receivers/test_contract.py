"""The pipeline <-> transport contract as one table: each refusal carries the HTTP status, the gRPC
code, whether the client retries, and the reason it is counted under; both receivers only frame it."""

from __future__ import annotations

import gzip

import pytest
from grpclib.const import Status as Grpc

from sidecar import loop_guard
from sidecar.identity import Peer
from sidecar.overload.config import LimitsConfig
from sidecar.overload.reasons import Action
from sidecar.pipeline import (
    ITEM_REASONS,
    REQUEST_REASONS,
    InvalidRequest,
    Outcome,
    PermissionDenied,
    RateLimited,
    Refused,
    TooManyResources,
    Unavailable,
)
from sidecar.receivers import contract
from sidecar.signals import Signal
from sidecar.tls.server import PeerRefused

#: what OTLP names for each refusal: (HTTP status, gRPC code, retryable, metric reason)
TABLE = [
    (InvalidRequest, 400, Grpc.INVALID_ARGUMENT, False, "malformed"),
    (TooManyResources, 413, Grpc.RESOURCE_EXHAUSTED, False, "too_many_resources"),
    (PermissionDenied, 403, Grpc.PERMISSION_DENIED, False, "policy"),
    (Unavailable, 503, Grpc.UNAVAILABLE, True, "queue_full"),
    (RateLimited, 429, Grpc.UNAVAILABLE, True, "rate_limited"),
    (contract.LoopDetected, 508, Grpc.FAILED_PRECONDITION, False, "loop"),
]


@pytest.mark.parametrize(("error", "http", "grpc", "retryable", "reason"), TABLE, ids=[r[0].__name__ for r in TABLE])
def test_each_refusal_carries_its_answer_and_reason(
    error: type[Refused], http: int, grpc: Grpc, retryable: bool, reason: str
) -> None:
    refused = error("why", 3)
    assert (refused.status.http, refused.status.grpc, refused.status.retryable) == (http, grpc.value, retryable)
    assert refused.reason == reason
    assert refused.message == "why" and refused.items == 3


def test_a_limit_answers_as_the_overload_action_of_the_same_name() -> None:
    """One vocabulary with sidecar.overload.reasons: too many resources is the action's 413."""
    assert TooManyResources.status == Action.too_many_resources.status
    assert TooManyResources.reason == Action.too_many_resources.value


@pytest.mark.parametrize(("retry_after", "header"), [(None, "1"), (0.2, "1"), (1.0, "1"), (2.1, "3"), (30, "30")])
def test_retryable_refusals_say_when_in_whole_seconds(retry_after: float | None, header: str) -> None:
    assert Unavailable("full", retry_after=retry_after).retry_after_header == header
    assert RateLimited("slow down", retry_after=retry_after).retry_after_header == header


def test_final_refusals_have_no_retry_after() -> None:
    for error in (InvalidRequest, TooManyResources, PermissionDenied, contract.LoopDetected):
        assert error("no", retry_after=5).retry_after_header is None


def test_an_unavailable_refusal_names_its_cause() -> None:
    for reason in ("queue_full", "policy_unavailable", "policy_busy", "shutting_down"):
        assert Unavailable("later", reason=reason).reason == reason
        assert reason in ITEM_REASONS
    assert set(REQUEST_REASONS) == {"malformed", "too_many_resources"}


@pytest.mark.parametrize(
    ("reason", "http", "grpc"),
    [
        ("no_client_certificate", 401, Grpc.UNAUTHENTICATED),
        ("spiffe_id_not_allowed", 403, Grpc.PERMISSION_DENIED),
        ("not_tls", 403, Grpc.PERMISSION_DENIED),
    ],
)
def test_a_refused_tls_peer_is_a_refusal_like_any_other(reason: str, http: int, grpc: Grpc) -> None:
    peer = Peer(address="127.0.0.1:5000")

    def resolver(transport: object) -> Peer:
        raise PeerRefused(reason, f"refused: {reason}", peer)

    with pytest.raises(contract.PeerNotAllowed) as caught:
        contract.resolve_peer(resolver, None)
    refused = caught.value
    assert (refused.status.http, refused.status.grpc, refused.status.retryable) == (http, grpc.value, False)
    assert refused.reason == reason and refused.message == f"refused: {reason}"
    assert refused.retry_after_header is None


def test_an_allowed_peer_is_returned() -> None:
    peer = Peer(address="[::1]:4000")
    assert contract.resolve_peer(lambda transport: peer, object()) is peer


def test_the_loop_guard_refuses_only_this_process_mark() -> None:
    contract.check_loop(None)
    contract.check_loop("someone-else")
    with pytest.raises(contract.LoopDetected) as caught:
        contract.check_loop(f"someone-else, {loop_guard.INSTANCE}")
    assert caught.value.message == loop_guard.MESSAGE


@pytest.mark.parametrize("signal", list(Signal), ids=lambda s: s.value)
def test_partial_success_counts_the_rejected_items_of_each_signal(signal: Signal) -> None:
    assert contract.partial_success(signal, Outcome(accepted=5)) is None
    response = contract.partial_success(signal, Outcome(accepted=5, rejected=2, message="refused by rule pci"))
    assert response is not None
    decoded = signal.response_class.FromString(response.SerializeToString())
    field = {"traces": "rejected_spans", "metrics": "rejected_data_points", "logs": "rejected_log_records"}
    assert getattr(decoded.partial_success, field[signal.value]) == 2
    assert decoded.partial_success.error_message == "refused by rule pci"


async def test_a_body_decompresses_within_its_bounds() -> None:
    data = b"x" * 10_000
    out = await contract.decompress("gzip", gzip.compress(data), 1 << 20, account=None, limits=LimitsConfig(),
                                    noun="body")
    assert bytes(out) == data


@pytest.mark.parametrize(
    ("body", "limit", "http", "grpc", "reason", "action", "message"),
    [
        (gzip.compress(b"\0" * (1 << 20)), 1 << 16, 413, Grpc.RESOURCE_EXHAUSTED, "too_large",
         Action.decompressed_too_large, "decompressed message "),
        (b"\x1f\x8b not gzip", 1 << 20, 400, Grpc.INVALID_ARGUMENT, "bad_compression", Action.bad_compression, ""),
        (gzip.compress(b"") * 200, 1 << 20, 400, Grpc.INVALID_ARGUMENT, "bad_compression",
         Action.too_many_members, ""),
    ],
    ids=["too_large", "not_gzip", "too_many_members"],
)
async def test_a_body_refused_by_a_bound_answers_as_its_overload_action(
    body: bytes, limit: int, http: int, grpc: Grpc, reason: str, action: Action, message: str
) -> None:
    with pytest.raises(contract.Bounded) as caught:
        await contract.decompress("gzip", body, limit, account=None, limits=LimitsConfig(max_compression_members=100),
                                  noun="message")
    refused = caught.value
    assert (refused.status.http, refused.status.grpc) == (http, grpc.value)
    assert (refused.reason, refused.action) == (reason, action)
    assert refused.status == action.status and refused.message.startswith(message)
    assert refused.retry_after_header is None


def test_a_busy_bound_is_retried_after_a_second() -> None:
    refused = contract.Bounded("the receive budget is full", Action.budget_full, "busy")
    assert (refused.status.http, refused.status.grpc, refused.retry_after_header) == (503, Grpc.UNAVAILABLE.value, "1")
