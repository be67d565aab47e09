"""The load-time probe itself: it finds a card number in every place it plants one, through the
real rewriter (Cython when built, and the pure-Python twin), and passes the plans that mask."""

from __future__ import annotations

import pytest

from sidecar.policy.decision import compile_plan
from sidecar.policy.invariant import Exemption
from sidecar.policy.probe import PROBES, survivors
from sidecar.rewrite import IMPLEMENTATION
from sidecar.rewrite import _py as twin
from sidecar.rewrite.plan import AttributeRule, Plan, ResourceStamp, ValueDetector
from sidecar.signals import Signal

MUST_COVER = {
    Signal.TRACES: ["span name", "status message", "event name", "event attribute", "link attribute",
                    "resource attribute", "scope attribute", "span attribute map in a map",
                    "span attribute array in a map", "span attribute map in an array"],
    Signal.LOGS: ["log body", "log body map in a map", "log body array in a map", "log event name",
                  "log record attribute", "resource attribute map value"],
    Signal.METRICS: ["gauge data point attribute", "sum data point attribute", "histogram data point attribute",
                     "exponential histogram data point attribute", "summary data point attribute",
                     "exemplar attribute", "histogram exemplar attribute", "metric metadata"],
}


def no_file(_: str) -> str:
    return ""


@pytest.fixture(params=["real", "twin"])
def rewriter(request, monkeypatch) -> str:
    if request.param == "twin":
        monkeypatch.setattr("sidecar.policy.probe.rewrite", twin.rewrite)
        return "python"
    return IMPLEMENTATION


@pytest.mark.parametrize("signal", list(Signal))
def test_a_plan_that_masks_nothing_leaves_every_planted_number(rewriter: str, signal: Signal) -> None:
    probe = PROBES[signal]
    found = survivors(probe, Plan())
    assert sorted(found) == sorted(card.place for card in probe.cards)
    places = {place.split(" ", 1)[1] for place in found}
    assert set(MUST_COVER[signal]) <= places


@pytest.mark.parametrize("signal", list(Signal))
def test_the_pan_detector_masks_every_planted_number(rewriter: str, signal: Signal) -> None:
    for action in ("mask_pan", "hash", "redact"):
        plan = Plan(detectors=(ValueDetector("pci.pan", "pan", action),), hash_key=b"k" * 32)
        assert survivors(PROBES[signal], plan) == [], action


def test_a_keep_all_rule_leaks_attributes_unless_the_engine_removes_it(rewriter: str) -> None:
    decisions = {"p": {"attributes": [{"rule_id": "p.keep_all", "action": "keep", "match": "*"}],
                       "detectors": [{"rule_id": "p.pan", "kind": "pan", "action": "mask_pan"}]}}
    ignored: list[str] = []
    guarded = compile_plan(decisions, no_file, ignored=ignored)
    assert ignored == ["p.keep_all"]
    assert guarded.attribute_rules == ()
    # the same plan as the policy wrote it: the probe sees the leak
    leaking = Plan(attribute_rules=(AttributeRule("p.keep_all", "*", "keep"),),
                   detectors=(ValueDetector("p.pan", "pan", "mask_pan"),))
    leaked = survivors(PROBES[Signal.TRACES], leaking)
    assert "traces span attribute" in leaked and "traces span name" not in leaked
    assert survivors(PROBES[Signal.TRACES], guarded) == []


def test_an_exemption_lets_exactly_its_key_through(rewriter: str) -> None:
    exemption = Exemption("qa.notes", "otlp_sidecar.probe.note", "a test of the probe")
    decisions = {"p": {"detectors": [{"rule_id": "p.pan", "kind": "pan", "action": "mask_pan"}]}}
    plan = compile_plan(decisions, no_file, exemptions=[exemption])
    leaked = survivors(PROBES[Signal.LOGS], plan)
    assert leaked and all(place.endswith(" attribute") for place in leaked)
    assert "logs log body" not in leaked and "logs log record attribute named like a card number" not in leaked


def test_a_card_number_the_policy_writes_itself_is_found(rewriter: str) -> None:
    pan = (ValueDetector("p.pan", "pan", "mask_pan"),)
    stamped = Plan(detectors=pan, stamps=(ResourceStamp("p.stamp", "payment.example", "4111-1111-1111-1111"),))
    assert survivors(PROBES[Signal.METRICS], stamped) == [
        "metrics: a card number the policies write themselves (a stamp or the redaction text)"]
    redacting = Plan(detectors=(ValueDetector("p.pan", "pan", "redact"),), redaction="see 5555555555554444")
    assert survivors(PROBES[Signal.LOGS], redacting)
