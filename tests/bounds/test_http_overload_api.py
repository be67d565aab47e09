"""The one owner of receive resources (sidecar.overload): the budget and its accounts, the
vocabulary of actions and their OTLP statuses, the limits section, and the metrics a real sidecar
exports from its first scrape."""

from __future__ import annotations

import pytest

from sidecar.config import ConfigError, load
from sidecar.overload.budget import MemoryBudget
from sidecar.overload.config import LimitsConfig
from sidecar.overload.reasons import LISTENERS, Action
from tests.bounds.harness import BoundedSidecar

pytestmark = pytest.mark.timeout(60)


def test_accounts_hold_at_most_their_share_and_give_everything_back() -> None:
    budget = MemoryBudget(100, per_connection=60)
    first, second = budget.account(), budget.account()
    assert first.take(60) and not first.take(1)
    assert first.refused is Action.connection_share
    assert second.take(40) and not second.take(1)
    assert second.refused is Action.budget_full
    assert (budget.in_use, budget.peak) == (100, 100)
    assert not second.fits(10) and second.fits(0)  # a declared size is checked, nothing taken
    first.give(20)
    assert second.fits(10) and budget.in_use == 80
    first.close()
    second.close()
    assert budget.in_use == 0 and first.held == second.held == 0
    assert budget.refused_by == {Action.connection_share: 1, Action.budget_full: 2}
    assert "retry shortly" in second.message()


def test_the_last_bytes_of_the_budget_are_kept_for_accounts_that_hold_little() -> None:
    budget = MemoryBudget(100, per_connection=60, light_reserve=20, light_bytes=10)
    greedy, other, light = budget.account(), budget.account(), budget.account()
    assert greedy.take(50) and other.take(30)
    assert not other.take(1)  # 80: the heavy holders reached the limit less the reserve
    assert other.refused is Action.budget_full and not other.fits(1)
    assert not other.take_room(1) and budget.in_use == 80
    assert not budget.reserve(1)  # a holder without an account counts as heavy
    # graded: a take that leaves its account holding h <= 10 may reach 100 - 20 * h / (2 * 10)
    assert light.fits(5) and light.take(5)  # 85 <= 95: a light holder takes from the reserve
    assert light.take(5)  # holding 10 it may reach 90: half the reserve, whatever the heavy ones hold
    assert not light.take(1) and light.held == 10  # 11 bytes would make it heavy: 80
    fresh, tiny = budget.account(), budget.account()
    assert not fresh.take(6)  # 96 > 94: a holder of 6 is refused...
    assert fresh.take(4) and fresh.take(1) and budget.in_use == 95  # ...where one of 5 reaches 95
    assert not fresh.take(1)  # holding 6 it may reach 94
    # one byte at a time, the lightest goes deepest: 96 <= 99, 97 <= 98, then 98 > 97
    assert [tiny.take(1) for _ in range(3)] == [True, True, False]
    assert budget.in_use == 97 and tiny.held == 2
    other.close()  # 67 in use
    assert not other.take(14)  # heavy: 81 is over the 80
    assert other.take(13) and budget.in_use == 80
    assert MemoryBudget(100, light_reserve=80).light_reserve == 50  # at most half
    # one account can always reach its share: a request over what a heavy holder may take is too
    # large (413), not busy forever (503 retried by the client until its deadline)
    assert MemoryBudget(100, per_connection=100, light_reserve=20).per_connection == 80
    assert not MemoryBudget(100, light_reserve=20).fits_connection(81)


def test_every_action_has_a_label_and_refusals_their_otlp_status() -> None:
    assert len({action.value for action in Action}) == len(Action)
    for action in Action:
        assert action.value == action.label and action.value.islower()
    retryable = {a for a in Action if a.status is not None and a.status.retryable}
    assert {Action.budget_full, Action.connection_share} <= retryable
    for action in (Action.request_too_large, Action.decompressed_too_large, Action.too_many_resources):
        assert (action.status.http, action.status.grpc, action.status.retryable) == (413, 8, False)
    for action in (Action.too_many_members, Action.json_too_deep, Action.malformed_request):
        assert (action.status.http, action.status.grpc) == (400, 3)
    assert Action.budget_full.status.http == 503 and Action.budget_full.status.grpc == 14
    assert Action.header_timeout.status is None  # closes without an answer


def test_the_limits_section_validates_and_keeps_the_old_key_as_a_bound() -> None:
    config = load(None, env={})
    assert config.limits == LimitsConfig()
    assert config.limits.budget_limit(config.receivers.max_inflight_bytes) == 40 * 1024 * 1024
    lowered = load(None, env={"SIDECAR_RECEIVERS_MAX_INFLIGHT_BYTES": "20MiB"})
    assert lowered.limits.budget_limit(lowered.receivers.max_inflight_bytes) == 20 * 1024 * 1024
    with pytest.raises(ConfigError, match=r"limits\.budget_bytes"):
        load(None, env={"SIDECAR_LIMITS_BUDGET_BYTES": "200MiB"})
    with pytest.raises(ConfigError, match=r"limits\.connection_share_bytes"):
        load(None, env={"SIDECAR_LIMITS_CONNECTION_SHARE_BYTES": "60MiB"})


@pytest.mark.parametrize("nofile", [256, 1024, 65536, 1 << 20])
def test_connection_caps_stay_below_the_descriptor_limit(nofile: int) -> None:
    caps = LimitsConfig().connection_caps(nofile)
    # twice the caps (a burst) plus the process's own 64 stay under the limit
    assert 2 * sum(caps.values()) + 64 < nofile
    assert caps["admin"] <= 32 and caps["otlp_http"] <= 512 and min(caps.values()) >= 1


async def test_a_real_sidecar_exports_every_action_at_zero_and_its_budget() -> None:
    async with BoundedSidecar() as sidecar:
        text = await sidecar.metrics()
        for listener in LISTENERS:
            for action in Action:
                line = f'otlp_sidecar_overload_actions_total{{action="{action.value}",listener="{listener}"}} 0.0'
                assert line in text, line
        assert await sidecar.metric("otlp_sidecar_overload_budget_limit_bytes") == 40 * 1024 * 1024
        assert await sidecar.metric("otlp_sidecar_overload_memory_limit_bytes") == 128 * 1024 * 1024
        assert await sidecar.metric("otlp_sidecar_receiver_connections_limit", listener="otlp_http") == 512
        assert await sidecar.metric("otlp_sidecar_receiver_connections", listener="admin") == 1  # this scrape
