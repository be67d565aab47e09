"""The webhook's receive budget: four reviews of ``max_request_bytes`` received at once, and a
reserve beyond them for connections holding at most 1 MiB, so that a normal review (a few kB) is
served while large or stalled reviews hold the rest. Without it, 30 connections stalling 2 MiB
bodies filled the budget and a normal review, arriving in the moment before the stalled ones were
refused, was answered 503 (tests/bounds/test_webhook_connections.py failed so once in CI)."""

from __future__ import annotations

from sidecar.overload.reasons import Action
from sidecar.webhook.config import WebhookConfig
from sidecar.webhook.server import CONCURRENT_BODIES, WebhookServer

MiB = 1024 * 1024


def test_a_normal_review_is_received_while_large_ones_hold_the_budget(config: WebhookConfig) -> None:
    budget = WebhookServer(config).budget
    whole = budget.per_connection
    assert whole >= config.server.max_request_bytes  # a review of the largest size fits a connection
    for _ in range(CONCURRENT_BODIES):  # four large reviews at once, as before the reserve
        assert budget.reserve(whole, held_after=whole)
    assert not budget.reserve(64 * 1024, held_after=2 * MiB)  # a fifth large one waits (503)
    assert budget.refused_by[Action.budget_full] == 1
    for _ in range(8):  # normal reviews still fit
        assert budget.reserve(64 * 1024, held_after=64 * 1024)
    assert budget.in_use <= budget.limit


def test_stalled_bodies_cannot_take_the_reserve(config: WebhookConfig) -> None:
    budget = WebhookServer(config).budget
    held = 0
    while budget.reserve(256 * 1024, held_after=2 * MiB):  # connections each holding 2 MiB, grown
        held += 256 * 1024
    heavy = budget.limit - budget.light_reserve  # what they may reach: four whole reviews
    assert heavy - 256 * 1024 < held <= heavy and heavy >= CONCURRENT_BODIES * config.server.max_request_bytes
    assert budget.light_reserve > 0
    assert budget.reserve(16 * 1024, held_after=16 * 1024)
