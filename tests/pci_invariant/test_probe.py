"""The load-time probe itself: it finds a card number in every place it plants one, through the
real rewriter (Cython when built, and the pure-Python twin), and passes the plans that mask."""

from __future__ import annotations

import dataclasses

import pytest

from sidecar.policy.decision import compile_plan
from sidecar.policy.invariant import Exemption
from sidecar.policy.probe import PROBES, shadowed_probe, survivors
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
    planted = [*probe.cards, *shadowed_probe(signal, Plan()).cards]
    assert sorted(found) == sorted(card.place for card in planted)
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


@pytest.mark.parametrize("signal", list(Signal))
def test_card_numbers_a_parser_reads_past_are_planted_around_the_keys_the_plan_stamps_and_keeps(
        rewriter: str, signal: Signal) -> None:
    """A KeyValue with two keys parses as its last, an AnyValue with two strings as its last: the
    probe plants a card number before the probe's key, each exempted key and each stamp. Before
    4e55987 the rewriter judged those by the last key or value: with 0bd0fb2's twin, this probe
    names 5 places a signal for the masking plan below (checked by hand, not kept)."""
    stamp = ResourceStamp("p.tenant", "tenant.id", "acme")
    exempted = AttributeRule("qa.notes", "qa.sample_value", "keep")
    plan = Plan(stamps=(stamp,), attribute_rules=(exempted,))
    planted = [card.place.split(" ", 1)[1] for card in shadowed_probe(signal, plan).cards]
    for level in ("resource", "scope", "item"):
        assert f"{level} attribute 'otlp_sidecar.probe.note' behind an earlier key" in planted
        assert f"{level} attribute 'otlp_sidecar.probe.note' in an earlier string of its value" in planted
        assert f"{level} attribute 'otlp_sidecar.probe.note' in an earlier value" in planted
        assert f"{level} attribute 'qa.sample_value' behind an earlier key" in planted
    assert "item attribute 'qa.sample_value' in an earlier value" not in planted  # exempted: it may hold one
    assert "item attribute 'tenant.id' behind an earlier key" in planted  # a stamp is for the resource
    assert "resource stamp 'tenant.id' behind an earlier key" in planted
    assert "resource stamp 'tenant.id' in an earlier string of its value" in planted
    # with no detector, what the plan writes over is gone: the stamp replaces its attribute
    unmasked = [place.split(" ", 1)[1] for place in survivors(PROBES[signal], plan) if "earlier" in place]
    assert sorted(unmasked) == sorted(place for place in planted if not place.startswith("resource stamp"))
    masking = dataclasses.replace(plan, detectors=(ValueDetector("p.pan", "pan", "mask_pan"),))
    assert survivors(PROBES[signal], masking) == []


def test_a_key_written_as_a_card_number_is_masked_in_the_place_named() -> None:
    odd = AttributeRule("qa.odd", "4111 1111 1111 1111", "keep")
    places = survivors(PROBES[Signal.TRACES], Plan(attribute_rules=(odd,)))
    assert "traces resource attribute '**** **** **** 1111' behind an earlier key" in places
    assert not any("4111 1111" in place for place in places)
