"""What a rewrite may add beyond its input (``rewrite(max_growth=...)``): the replacement bytes
of its edits plus ``EDIT_BYTES`` per edit record, charged as each edit is made. Past the limit
both implementations raise the same ``RewriteTooLarge`` at the same point and build nothing more.

Before the limit, one span of 800,000 hashed 1-byte attributes (16 MB, 39 kB gzip) became 76 MB
of output and 800,000 edits, each with an HMAC, on the event loop (docs/limits.md)."""

from __future__ import annotations

import importlib
import time
from types import ModuleType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.overload.config import LimitsConfig
from sidecar.rewrite import _common
from sidecar.rewrite.plan import AttributeRule, Plan, ValueDetector
from sidecar.signals import Signal

from .builders import field as _ld
from .conftest import load_c
from .strategies import plans, requests_by_signal

PY = importlib.import_module("sidecar.rewrite._py")
RESOURCES = {"traces": "resource_spans", "metrics": "resource_metrics", "logs": "resource_logs"}
HASH = Plan(attribute_rules=(AttributeRule("pci.holder", "card.holder", "hash"),), hash_key=b"k" * 32)


def hashed_attributes(n: int, key: bytes = b"card.holder") -> bytes:
    """One span with ``n`` attributes ``key = "x"`` (the review's hash_expansion.py)."""
    kv = _ld(9, _ld(1, key) + _ld(2, _ld(1, b"x")))
    span = _ld(1, b"\xff" * 16) + _ld(2, bytes(8)) + _ld(5, b"s") + kv * n
    resource = _ld(1, _ld(1, _ld(1, b"service.name") + _ld(2, _ld(1, b"svc"))))
    return _ld(1, resource + _ld(2, _ld(2, span)))


def _one_string(value: bytes) -> bytes:
    """One span with one attribute ``msg`` holding ``value``."""
    span = _ld(1, b"\xff" * 16) + _ld(2, bytes(8)) + _ld(5, b"s") + _ld(9, _ld(1, b"msg") + _ld(2, _ld(1, value)))
    return _ld(1, _ld(2, _ld(2, span)))


def smallest_limit(impl: ModuleType, signal: Signal, data: bytes, plan_list: list[Plan]) -> int:
    """The smallest max_growth the rewrite passes under (1: it adds nothing), by bisection."""
    lo, hi = 1, 1 << 40
    while lo < hi:
        mid = (lo + hi) // 2
        try:
            impl.rewrite(signal, data, plan_list, max_growth=mid)
        except _common.RewriteTooLarge:
            lo = mid + 1
        else:
            hi = mid
    return lo


def test_the_default_is_the_settings_default() -> None:
    assert _common.MAX_GROWTH == LimitsConfig().max_rewrite_growth_bytes == 4 * 1024 * 1024


def test_many_hashed_attributes_stop_at_the_limit_with_the_same_error(impl: ModuleType) -> None:
    data = hashed_attributes(800_000)
    started = time.perf_counter()
    with pytest.raises(_common.RewriteTooLarge) as refused:
        impl.rewrite(Signal.TRACES, data, [HASH])
    elapsed = time.perf_counter() - started
    assert refused.value.limit == _common.MAX_GROWTH
    assert str(refused.value) == "the policies would grow this request by more than 4194304 bytes"
    # stopped at ~40,000 of the 800,000 hashes (the twin is slower; unbounded, C took 1.7 s)
    assert elapsed < (0.5 if impl.IMPLEMENTATION == "cython" else 3.0)
    with pytest.raises(_common.RewriteTooLarge, match="more than 100000 bytes"):
        impl.rewrite(Signal.TRACES, hashed_attributes(2000), [HASH], max_growth=100_000)


def test_a_dry_run_adds_nothing(impl: ModuleType) -> None:
    dry = Plan(attribute_rules=HASH.attribute_rules, hash_key=HASH.hash_key, dry_run=True)
    data = hashed_attributes(50_000)
    assert impl.rewrite(Signal.TRACES, data, [dry], max_growth=64 * 1024).data == data
    big = _one_string(b"4111111111111111 " * 20_000)  # 1.8 MB of hashes built, none kept
    detect = Plan(detectors=(ValueDetector("pci.pan", "pan", "hash"),), hash_key=b"k", dry_run=True)
    assert impl.rewrite(Signal.TRACES, big, [detect], max_growth=64 * 1024).data == big


def test_a_request_at_the_limit_is_rewritten_one_byte_less_refused(impl: ModuleType) -> None:
    data = hashed_attributes(1000)
    whole = impl.rewrite(Signal.TRACES, data, [HASH], max_growth=0)  # 0: no cap
    limit = smallest_limit(impl, Signal.TRACES, data, [HASH])
    # per attribute: its value (80 bytes: "hmac-sha256:" + 64 hex, framed) and its KeyValue's new
    # length (1 byte), two edit records; then the span's, the scope's and the resource's lengths
    assert limit == 1000 * (80 + 1 + 2 * _common.EDIT_BYTES) + 3 * (3 + _common.EDIT_BYTES)
    assert len(whole.data) - len(data) < limit
    assert impl.rewrite(Signal.TRACES, data, [HASH], max_growth=limit) == whole
    with pytest.raises(_common.RewriteTooLarge):
        impl.rewrite(Signal.TRACES, data, [HASH], max_growth=limit - 1)


def test_both_implementations_stop_at_the_same_byte() -> None:
    c = load_c()
    if c is None:
        pytest.skip("sidecar._ext.rewrite is not built")
    cases = [
        (hashed_attributes(300), [HASH]),
        # masks (same length: copied by the C rewriter, in place by the twin) are charged alike
        (hashed_attributes(300, b"4111111111111111"),
         [Plan(detectors=(ValueDetector("pci.pan", "pan", "mask_pan"),))]),
        # dropped neighbours: one deletion record for the run
        (hashed_attributes(300), [Plan(attribute_rules=(AttributeRule("d", "card.*", "drop"),))]),
        # one string of 2,000 card numbers, each hashed: one edit, refused as it is built
        (_one_string(b"4111111111111111 " * 2000),
         [Plan(detectors=(ValueDetector("pci.pan", "pan", "hash"),), hash_key=b"k" * 32)]),
    ]
    for data, plan_list in cases:
        limit = smallest_limit(PY, Signal.TRACES, data, plan_list)
        assert limit == smallest_limit(c, Signal.TRACES, data, plan_list)
        assert c.rewrite(Signal.TRACES, data, plan_list, max_growth=limit) == PY.rewrite(
            Signal.TRACES, data, plan_list, max_growth=limit)


@pytest.mark.parametrize("signal", list(Signal), ids=lambda s: s.value)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_requests_and_plans_stop_at_the_same_byte_in_both(signal: Signal, data: st.DataObject) -> None:
    c = load_c()
    if c is None:
        pytest.skip("sidecar._ext.rewrite is not built")
    req = data.draw(requests_by_signal[signal], label="request")
    n = len(getattr(req, RESOURCES[signal.value]))
    plan_list = data.draw(st.lists(plans(), min_size=n, max_size=n), label="plans")
    payload = req.SerializeToString()
    limit = smallest_limit(PY, signal, payload, plan_list)
    assert smallest_limit(c, signal, payload, plan_list) == limit
    assert c.rewrite(signal, payload, plan_list, max_growth=limit) == PY.rewrite(signal, payload, plan_list)
