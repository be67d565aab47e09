"""Whatever a policy set decides, the engine's plan masks every card number the probe plants.

Random decision documents (attribute rules with every action, `keep` included, on exact keys,
key names and globs that hit the probe's keys; zero to two detectors of any action; several
packages) go through the engine's real compilation (`compile_plan`, no exemptions) and the
probe request of every signal through the rewriter (Cython, and the twin): nothing survives.
The same documents with the guarantee bypassed (the rules as written) do leak whenever a `keep`
or a missing detector lets one through, so the check can fail.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.policy.decision import compile_plan
from sidecar.policy.probe import PROBES, survivors
from sidecar.rewrite import _py as twin
from sidecar.rewrite.plan import AttributeRule, Plan
from sidecar.signals import Signal

KEYS = ["note", "card_number", "otlp_sidecar.probe.note", "otlp_sidecar.probe.nested", "inner", "deeper",
        "item", "list", "service.name", "cvv", "pan"]
GLOBS = ["*", "?*", "otlp_sidecar.*", "*note*", "*.nested", "card*", "*er"]
ACTIONS = ["drop", "redact", "hash", "mask_pan", "keep"]

rules = st.fixed_dictionaries(
    {"action": st.sampled_from(ACTIONS)},
    optional={"keys": st.lists(st.sampled_from(KEYS), min_size=1, max_size=3),
              "match": st.lists(st.sampled_from(GLOBS), min_size=1, max_size=2)},
).filter(lambda r: "keys" in r or "match" in r)


@st.composite
def decisions(draw) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for package in range(draw(st.integers(1, 3))):
        part: dict[str, Any] = {}
        attributes = draw(st.lists(rules, max_size=4))
        if attributes:
            part["attributes"] = [{"rule_id": f"p{package}.r{i}", **r} for i, r in enumerate(attributes)]
        detectors = draw(st.lists(st.sampled_from(["mask_pan", "hash", "redact"]), max_size=2))
        if detectors:
            part["detectors"] = [{"rule_id": f"p{package}.d{i}", "kind": "pan", "action": a}
                                 for i, a in enumerate(detectors)]
        document[f"pkg{package}"] = part
    return document


def no_file(_: str) -> str:
    return ""


@pytest.mark.parametrize("implementation", ["real", "twin"])
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=decisions())
def test_no_decision_lets_a_card_number_through(monkeypatch, implementation: str, document: dict) -> None:
    if implementation == "twin":
        monkeypatch.setattr("sidecar.policy.probe.rewrite", twin.rewrite)
    plan = compile_plan(document, no_file, hash_key=b"k" * 32)
    assert all(r.action != "keep" for r in plan.attribute_rules)
    assert any(d.kind == "pan" for d in plan.detectors)
    for signal in Signal:
        assert survivors(PROBES[signal], plan) == [], (signal, document)


def test_without_the_guarantee_the_same_documents_leak() -> None:
    """The check above can fail: as written, a keep-all rule or no detector leaks."""
    keep_all = {"p": {"attributes": [{"rule_id": "p.k", "action": "keep", "match": ["*"]}],
                      "detectors": [{"rule_id": "p.d", "kind": "pan", "action": "mask_pan"}]}}
    guarded = compile_plan(keep_all, no_file)
    as_written = Plan(attribute_rules=(AttributeRule("p.k", "*", "keep"),), detectors=guarded.detectors)
    assert survivors(PROBES[Signal.TRACES], as_written)
    no_detector = compile_plan({"p": {"attributes": [{"rule_id": "p.r", "action": "drop", "keys": ["cvv"]}]}}, no_file)
    assert survivors(PROBES[Signal.LOGS], Plan(attribute_rules=no_detector.attribute_rules))
    assert survivors(PROBES[Signal.LOGS], no_detector) == []
