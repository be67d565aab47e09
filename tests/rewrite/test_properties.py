"""Property tests (hypothesis) over random valid requests of all three signals and random plans:
the Cython rewriter and the twin give identical bytes, upb parses the output, and it equals a
straightforward decode-modify-encode reference (tests/rewrite/reference.py), compared after
parsing, with the same counts.

More examples: ``OTLP_SIDECAR_PROPERTY_EXAMPLES=2000 pytest --timeout=0 tests/rewrite/test_properties.py``.
"""

from __future__ import annotations

import dataclasses
import importlib
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.signals import Signal

from .conftest import load_c
from .reference import reference_rewrite
from .strategies import plans, requests_by_signal

PY = importlib.import_module("sidecar.rewrite._py")
EXAMPLES = int(os.environ.get("OTLP_SIDECAR_PROPERTY_EXAMPLES", "150"))
RESOURCES = {"traces": "resource_spans", "metrics": "resource_metrics", "logs": "resource_logs"}


@pytest.mark.parametrize("signal", list(Signal), ids=lambda s: s.value)
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_both_implementations_match_the_reference(signal, data):
    req = data.draw(requests_by_signal[signal], label="request")
    n = len(getattr(req, RESOURCES[signal.value]))
    plan_list = data.draw(st.lists(plans(), min_size=n, max_size=n), label="plans")
    payload = req.SerializeToString()

    result = PY.rewrite(signal, payload, plan_list)
    infos = PY.split_resources(signal, payload)
    assert PY.split_resources(signal, payload, validate=False) == infos
    uncounted = [dataclasses.replace(info, items=0) for info in infos]
    assert PY.split_resources(signal, payload, validate=False, count=False) == uncounted
    c = load_c()
    if c is not None:  # crossed byte for byte
        assert c.rewrite(signal, payload, plan_list) == result
        assert c.split_resources(signal, payload) == infos
        assert c.split_resources(signal, payload, validate=False) == infos
        assert c.split_resources(signal, payload, validate=False, count=False) == uncounted
        assert c.count_items(signal, payload) == result.items_in

    parsed = signal.request_class.FromString(result.data)  # upb accepts the output
    expected, counts, items_in, items_out, rejected, sampled = reference_rewrite(
        signal, payload, plan_list)
    assert parsed == expected
    assert result.counts == counts
    assert (result.items_in, result.items_out, result.rejected_items, result.sampled_out) == (
        items_in, items_out, rejected, sampled)
    assert sum(i.items for i in infos) == items_in == PY.count_items(signal, payload)
    assert [i.key for i in infos] == [
        rx.resource.SerializeToString() for rx in getattr(req, RESOURCES[signal.value])]
