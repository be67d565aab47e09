"""Every card-number case, in every location, under the shipped set plus a keep-all package.

The plan comes from the real policy set (regopy, the engine's compilation); each case is placed
where it can hide (tests/rewrite/builders.py) and rewritten by the real rewriter. The cases are
built here from public test numbers and the rule; the shared corpus is an extra check where it
exists.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from sidecar.policy.decision import compile_plan
from sidecar.policy.loader import load_policy
from sidecar.rewrite import ResourceInfo, rewrite, split_resources
from sidecar.rewrite.plan import Plan
from sidecar.signals import Signal
from tests.pci_invariant.helpers import KEEP_ALL, KEEP_ALL_TEST, policy_set_with
from tests.policy.conftest import POD
from tests.rewrite.builders import ALL_LOCATIONS, request_with
from tests.rewrite.pan_cases import POSITIVE_CASES

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus" / "pan_cases.json"


@pytest.fixture(scope="module")
def keep_all_set(tmp_path_factory):
    root = policy_set_with(tmp_path_factory.mktemp("set"), "otlp_sidecar.debugging", KEEP_ALL, KEEP_ALL_TEST)
    compiled, results = load_policy(str(root), "otlp_sidecar/main", run_tests=True, isolate=False)
    assert results and all(r.passed for r in results)  # the package passes its tests, as in the issue
    return compiled


_PLANS: dict[tuple[Signal, bytes], Plan] = {}


def plan_for(compiled, signal: Signal, resource: ResourceInfo) -> Plan:
    """The plan of the set for this resource, as forwarded (no sampling, no refusal): one query each."""
    key = (signal, resource.key)
    if key not in _PLANS:
        decisions = compiled.query("decisions", {
            "signal": signal.value, "resource": dict(resource.attributes), "pod": POD.as_input(),
            "peer": {"address": "127.0.0.1", "tls": False, "spiffe_id": ""}, "transport": "http",
        })
        assert any(r.get("action") == "keep" for r in decisions["otlp_sidecar.debugging"]["attributes"])
        plan = compile_plan(decisions, compiled.policy_set.file_of_package, hash_key=b"k" * 32)
        _PLANS[key] = dataclasses.replace(plan, sampling=None, allow=True)
    return _PLANS[key]


def assert_masked(compiled, where: str, value: str, pans: list[str]) -> None:
    signal, request = request_with(where, value)
    data = request.SerializeToString()
    (resource,) = split_resources(signal, data)
    plan = plan_for(compiled, signal, resource)
    flat = re.sub(rb"[ -]", b"", rewrite(signal, data, [plan]).data)
    for pan in pans:
        assert pan.encode() not in flat, (where, value)


@pytest.mark.parametrize("where", ALL_LOCATIONS)
def test_generated_cases_stay_masked_under_keep_all(keep_all_set, where: str) -> None:
    for value, pans in POSITIVE_CASES[::5]:
        assert_masked(keep_all_set, where, value, pans)


@pytest.mark.skipif(not CORPUS.exists(), reason="no shared corpus beside this clone")
def test_shared_corpus_stays_masked_under_keep_all(keep_all_set) -> None:
    cases = [c for c in json.loads(CORPUS.read_text())["cases"] if c["expect"] == "mask"]
    assert cases
    for case in cases:
        assert_masked(keep_all_set, case["where"], case["value"], case["pans"])
