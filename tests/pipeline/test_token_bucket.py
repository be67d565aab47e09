"""TokenBucket (sidecar.pipeline), the per-tenant items-per-second limit, as the pipeline uses it:
``take(items)`` answers None (go) or the seconds to wait, which become the 429's Retry-After.
Time is a clock the test steps."""

from __future__ import annotations

import pytest

from sidecar.pipeline import TokenBucket
from tests.clock import ManualClock as Clock


def test_a_full_bucket_lets_a_burst_through_then_refuses_with_the_wait_for_the_next_item() -> None:
    clock = Clock()
    bucket = TokenBucket(per_second=100, burst=50, clock=clock)
    assert [bucket.take(10) for _ in range(5)] == [None] * 5
    assert bucket.take(1) == pytest.approx(0.01)  # one item at 100/s
    assert bucket.take(20) == pytest.approx(0.2)


def test_the_bucket_refills_at_the_rate_and_never_above_the_burst() -> None:
    clock = Clock()
    bucket = TokenBucket(per_second=100, burst=50, clock=clock)
    assert bucket.take(50) is None
    clock.advance(0.1)  # 10 items back
    assert bucket.take(11) == pytest.approx(0.01)
    assert bucket.take(10) is None
    clock.advance(3600)  # idle for an hour: still only the burst
    assert bucket.take(50) is None
    assert bucket.take(1) is not None


def test_a_refused_take_costs_nothing() -> None:
    clock = Clock()
    bucket = TokenBucket(per_second=10, burst=10, clock=clock)
    assert bucket.take(10) is None
    for _ in range(100):
        assert bucket.take(5) == pytest.approx(0.5)
    clock.advance(0.5)
    assert bucket.take(5) is None


def test_over_time_the_rate_holds_whatever_the_request_sizes() -> None:
    clock = Clock()
    bucket = TokenBucket(per_second=200, burst=100, clock=clock)
    taken = 0
    for step in range(1000):  # 10 s of requests of 1 to 7 items every 10 ms
        clock.advance(0.01)
        items = 1 + step % 7
        if bucket.take(items) is None:
            taken += items
    assert 200 * 10 <= taken <= 200 * 10 + 100  # the rate, plus at most the first burst


def test_a_request_larger_than_the_burst_passes_on_a_full_bucket_and_the_debt_is_paid_after() -> None:
    """Never refused forever: it goes when the bucket is full, and later requests wait longer."""
    clock = Clock()
    bucket = TokenBucket(per_second=10, burst=5, clock=clock)
    assert bucket.take(25) is None  # 20 items in debt
    assert bucket.take(1) == pytest.approx(2.1)  # the debt, then one item
    clock.advance(2.0)
    assert bucket.take(1) == pytest.approx(0.1)
    clock.advance(0.1)
    assert bucket.take(1) is None
    assert bucket.take(25) == pytest.approx(0.5)  # waits for a full bucket, not for 25 tokens


def test_no_rate_refuses_with_a_minute_and_a_burst_under_one_is_one() -> None:
    clock = Clock()
    bucket = TokenBucket(per_second=0, burst=0, clock=clock)
    assert bucket.burst == 1.0
    assert bucket.take(1) is None
    clock.advance(1e6)
    assert bucket.take(1) == 60.0
