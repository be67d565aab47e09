"""The decision contract: wrong output is an error naming file and rule; engine failures."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.configkit import ConfigError
from sidecar.identity import Peer
from sidecar.policy.decision import compile_plan, key_patterns, pod_settings_from
from sidecar.policy.errors import DecisionError, PolicyLoadError, PolicyUnavailable
from sidecar.policy.invariant import ENGINE_PAN_RULE, Exemption
from sidecar.policy.metrics import safe_label
from sidecar.rewrite import rewrite, split_resources
from sidecar.rewrite.plan import AttributeRule, ValueDetector
from sidecar.signals import Signal
from tests.policy.conftest import sample_value, trace_request
from tests.policy.extra import add_extra_policy

PEER = Peer(address="127.0.0.1:1")
CARD = "5555 5555 5555 4444"

#: fails for resources with `boom = true`: two values for one function (a Rego evaluation error)
FAILS_ON_BOOM = """
level(request) := 1 if request.resource.boom == true

level(request) := 2 if request.resource.boom == true

decision_for(request) := {"attributes": [{"rule_id": "extra.boom", "keys": ["boom"], "action": "keep"}]} if {
\tlevel(request) > 0
}

decision_for(request) := {} if not request.resource.boom
"""


def no_file(_: str) -> str:
    return ""


async def test_unknown_action_names_file_and_rule(make_service, policy_dir: Path, hash_key_file: Path) -> None:
    add_extra_policy(policy_dir, """
decision_for(_) := {"attributes": [{"rule_id": "extra.mask", "keys": ["secret"], "action": "mask"}]}
""")
    with pytest.raises(ConfigError) as caught:
        await make_service(dir=str(policy_dir), hash_key_file=str(hash_key_file))
    assert caught.value.key == "policy.dir"
    assert caught.value.message == (
        "extra/extra.rego (package otlp_sidecar.extra): decision.attributes[0].action: unknown "
        "action 'mask' (allowed: drop, redact, hash, mask_pan, keep) [rule_id 'extra.mask']"
    )


async def test_wrong_type_names_file_and_rule(make_service, policy_dir: Path, hash_key_file: Path) -> None:
    add_extra_policy(policy_dir, """
decision_for(_) := {"sampling": {"rule_id": "extra.sample", "ratio": "half"}}
""")
    with pytest.raises(ConfigError) as caught:
        await make_service(dir=str(policy_dir), hash_key_file=str(hash_key_file))
    assert caught.value.message == (
        "extra/extra.rego (package otlp_sidecar.extra): decision.sampling.ratio: must be a number "
        "from 0 to 1, got a string [rule_id 'extra.sample']"
    )


async def test_unknown_decision_key(make_service, policy_dir: Path, hash_key_file: Path) -> None:
    add_extra_policy(policy_dir, 'decision_for(_) := {"atributes": []}')
    with pytest.raises(ConfigError) as caught:
        await make_service(dir=str(policy_dir), hash_key_file=str(hash_key_file))
    assert "extra/extra.rego (package otlp_sidecar.extra): decision.atributes: unknown key" in str(caught.value)


async def test_refuse_when_the_engine_cannot_decide(make_service, policy_dir: Path, hash_key_file: Path) -> None:
    add_extra_policy(policy_dir, FAILS_ON_BOOM)
    service = await make_service(dir=str(policy_dir), hash_key_file=str(hash_key_file), on_error="refuse")
    data = trace_request([({"service.name": "a", "boom": True}, [{}])])
    with pytest.raises(PolicyUnavailable) as caught:
        await service.plans_for(Signal.TRACES, split_resources(Signal.TRACES, data), PEER, "grpc")
    assert caught.value.retryable
    assert "evaluation failed" in str(caught.value)
    registry = service.metrics.registry
    assert sample_value(registry, "otlp_sidecar_policy_decision_errors_total", fallback="refused") == 1
    # a failed decision is not cached: the next request asks the engine again
    with pytest.raises(PolicyUnavailable):
        await service.plans_for(Signal.TRACES, split_resources(Signal.TRACES, data), PEER, "grpc")
    # other resources are decided as usual
    fine = trace_request([({"service.name": "a"}, [{}])])
    plans = await service.plans_for(Signal.TRACES, split_resources(Signal.TRACES, fine), PEER, "grpc")
    assert plans[0].detectors


async def test_strict_plan_when_no_good_plan_is_known(make_service, policy_dir: Path, hash_key_file: Path) -> None:
    add_extra_policy(policy_dir, FAILS_ON_BOOM)
    service = await make_service(dir=str(policy_dir), hash_key_file=str(hash_key_file), on_error="last_good")
    data = trace_request([
        ({"service.name": "a", "boom": True, "tenant.id": "evil"},
         [{"attrs": {"card_cvv": "999", "memo": f"card {CARD}", "cardholder": "Jane Roe"}}]),
    ])
    plans = await service.plans_for(Signal.TRACES, split_resources(Signal.TRACES, data), PEER, "grpc")
    assert {r.rule_id for r in plans[0].attribute_rules} <= {
        "builtin.strict.sensitive", "builtin.strict.card_number",
    }
    out = rewrite(Signal.TRACES, data, plans).data
    assert b"5555 5555 5555 4444" not in out and b"999" not in out
    assert b"**** **** **** 4444" in out
    assert sample_value(service.metrics.registry, "otlp_sidecar_policy_decision_errors_total", fallback="strict") == 1


async def test_last_good_plan_when_the_policy_breaks_later(
    make_service, policy_dir: Path, hash_key_file: Path,
) -> None:
    rego = add_extra_policy(policy_dir, 'decision_for(_) := {}')
    service = await make_service(dir=str(policy_dir), hash_key_file=str(hash_key_file), on_error="last_good")
    data = trace_request([({"service.name": "a", "boom": True}, [{"attrs": {"cvv": "1"}}])])
    resources = split_resources(Signal.TRACES, data)
    good = await service.plans_for(Signal.TRACES, resources, PEER, "grpc")
    # a new version that fails for this resource but passes its tests goes live
    rego.write_text("package otlp_sidecar.extra\n\nimport rego.v1\n\n" + FAILS_ON_BOOM)
    assert await service.reload()
    again = await service.plans_for(Signal.TRACES, resources, PEER, "grpc")
    assert again == good
    errors = "otlp_sidecar_policy_decision_errors_total"
    assert sample_value(service.metrics.registry, errors, fallback="last_good") == 1


def test_compile_plan_orders_rules_most_protective_first() -> None:
    decisions = {
        "b": {"attributes": [{"rule_id": "b.keep", "match": "card.*", "action": "keep"}]},
        "a": {"attributes": [
            {"rule_id": "a.mask", "keys": ["card_number"], "action": "mask_pan"},
            {"rule_id": "a.drop", "match": ["card.cvv"], "action": "drop"},
        ]},
    }
    exemption = Exemption("b.exempt", "card.test", "the processor's published test numbers")
    plan = compile_plan(decisions, no_file, exemptions=[exemption])
    assert plan.attribute_rules[0] == AttributeRule("a.drop", "card.cvv", "drop")
    # a `keep` glob is no exemption: the engine removes it; the exemption's exact key is kept
    assert plan.attribute_rules[-1] == AttributeRule("b.exempt", "card.test", "keep")
    assert [r.action for r in plan.attribute_rules[1:-1]] == ["mask_pan"] * len(key_patterns("card_number"))


def test_compile_plan_merges_parts() -> None:
    decisions = {
        "p1": {"sampling": {"rule_id": "s1", "ratio": 0.5, "keep": [{"rule_id": "k1", "kind": "status_error"}]},
               "detectors": [{"rule_id": "d1", "kind": "pan", "action": "mask_pan"}]},
        "p2": {"sampling": {"rule_id": "s2", "ratio": 0.1, "keep": []},
               "detectors": [{"rule_id": "d2", "kind": "pan", "action": "redact"}],
               "allow": False, "reason": "no", "rule_id": "p2.no"},
    }
    plan = compile_plan(decisions, no_file)
    assert plan.sampling is not None and plan.sampling.ratio == 0.1 and plan.sampling.rule_id == "s2"
    assert [k.rule_id for k in plan.sampling.keep] == ["k1"]
    assert [(d.rule_id, d.action) for d in plan.detectors] == [("d2", "redact")]
    assert (plan.allow, plan.reason, plan.refuse_rule_id) == (False, "no", "p2.no")


def test_conflicting_stamps_are_an_error() -> None:
    decisions = {
        "p1": {"stamps": [{"rule_id": "t1", "key": "tenant.id", "value": "a"}]},
        "p2": {"stamps": [{"rule_id": "t2", "key": "tenant.id", "value": "b"}]},
    }
    with pytest.raises(DecisionError, match=r"stamps 'tenant\.id' with another value than package p1"):
        compile_plan(decisions, no_file)


def test_undefined_decision_still_masks_card_numbers() -> None:
    plan = compile_plan(None, no_file)
    assert plan.detectors == (ValueDetector(ENGINE_PAN_RULE, "pan", "mask_pan"),)
    assert (plan.attribute_rules, plan.stamps, plan.sampling, plan.allow) == ((), (), None, True)


def test_key_patterns_cover_spellings_and_nesting() -> None:
    assert key_patterns("pin_block") == (
        "pin.block", "*.pin.block", "*_pin.block", "*-pin.block",
        "pin_block", "*.pin_block", "*_pin_block", "*-pin_block",
        "pin-block", "*.pin-block", "*_pin-block", "*-pin-block",
        "pinblock", "*pinblock",
    )
    assert key_patterns("cvv") == ("cvv", "*.cvv", "*_cvv", "*-cvv")  # one word: never inside another


def test_errors_never_quote_values_that_may_come_from_telemetry() -> None:
    decisions = {"p": {"stamps": [{"rule_id": "t", "key": "tenant.id", "value": 4111111111111111}]}}
    with pytest.raises(DecisionError) as caught:
        compile_plan(decisions, no_file)
    assert str(caught.value) == "package p: decision.stamps[0].value: must be a string, got a number [rule_id 't']"


@pytest.mark.parametrize("rule_id", ["tenant.spoofed.4111111111111111", "x.5555-5555-5555-4444"])
def test_a_rule_id_holding_a_card_number_is_refused_without_quoting_it(rule_id: str) -> None:
    """Rule ids go into metric labels and the decision log: one built from telemetry (a review put
    the claimed tenant in it) would carry a card number there."""
    decisions = {"p": {"allow": False, "reason": "no", "rule_id": rule_id}}
    with pytest.raises(DecisionError) as caught:
        compile_plan(decisions, no_file)
    assert "rule_id: holds a card number" in str(caught.value)
    assert rule_id not in str(caught.value) and "1111" not in str(caught.value)


async def test_a_rule_id_built_from_telemetry_never_reaches_the_metrics(
    make_service, policy_dir: Path, hash_key_file: Path,
) -> None:
    add_extra_policy(policy_dir, """
decision_for(request) := {"allow": false, "reason": "no", "rule_id": sprintf("extra.refused.%v", [request.resource.id])}
""")
    service = await make_service(dir=str(policy_dir), hash_key_file=str(hash_key_file), on_error="refuse")
    data = trace_request([({"service.name": "a", "id": "4111111111111111"}, [{}])])
    with pytest.raises(PolicyUnavailable):
        await service.plans_for(Signal.TRACES, split_resources(Signal.TRACES, data), PEER, "grpc")
    from prometheus_client import generate_latest

    assert b"4111111111111111" not in generate_latest(service.metrics.registry)


async def test_a_decision_key_built_from_telemetry_never_reaches_the_metrics_or_the_log(
    make_service, policy_dir: Path, hash_key_file: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """Found in a review: a decision's package key built from a resource attribute, with a refusal
    that names no rule_id, became the refusal's rule id (a metric label, the decision log) unchecked."""
    add_extra_policy(policy_dir, 'decision_for(request) := {"allow": false, "reason": "retired"}')
    main = policy_dir / "main.rego"
    main.write_text(main.read_text().replace(
        '{"otlp_sidecar.extra": decision}', '{sprintf("retired.%v", [request.resource.id]): decision}'))
    service = await make_service(dir=str(policy_dir), hash_key_file=str(hash_key_file), on_error="refuse")
    data = trace_request([({"service.name": "a", "id": "4111111111111111"}, [{}])])
    with pytest.raises(PolicyUnavailable) as caught:
        await service.plans_for(Signal.TRACES, split_resources(Signal.TRACES, data), PEER, "grpc")
    from prometheus_client import generate_latest

    assert "a key must name a policy package" in str(caught.value)
    for text in (str(caught.value), caplog.text, generate_latest(service.metrics.registry).decode()):
        assert "4111111111111111" not in text and "retired.4" not in text


def test_a_decision_key_that_is_no_package_name_is_refused_without_quoting_it() -> None:
    for key in ("retired.4111111111111111", "a b", "", "x" * 81):
        with pytest.raises(DecisionError) as caught:
            compile_plan({key: {"allow": False, "reason": "no"}}, no_file)
        assert "a key must name a policy package" in str(caught.value) and "4111" not in str(caught.value)
    assert not compile_plan({"otlp_sidecar.retired": {"allow": False, "reason": "no"}}, no_file).allow


@pytest.mark.parametrize("settings", [
    {"tenant": "acme-4111111111111111"},
    {"export_headers": {"X-Scope-OrgID": "4111 1111 1111 1111"}},
    {"export_headers": {"X-4111111111111111": "acme"}},
    {"exemptions": [{"rule_id": "qa.4111111111111111", "key": "qa.note", "reason": "tests"}]},
    {"exemptions": [{"rule_id": "qa.note", "key": "note.4111111111111111", "reason": "tests"}]},
    {"exemptions": [{"rule_id": "qa.note", "key": "qa.note", "reason": "see 4111-1111-1111-1111"}]},
], ids=["tenant", "export header", "export header name", "exemption rule_id", "exemption key", "exemption reason"])
def test_pod_settings_holding_a_card_number_are_refused_without_quoting_it(settings: dict) -> None:
    """Found in a review: these were logged at every load, shown in /policy, sent upstream (the
    tenant header) or made a metric label (the exemption's rule id), unscanned."""
    with pytest.raises(DecisionError) as caught:
        pod_settings_from(settings, "main.rego")
    assert "holds a card number" in str(caught.value) and "1111" not in str(caught.value)


@pytest.mark.parametrize("settings", [
    {"tenant": "t\ud800"},
    {"export_headers": {"X-Scope-OrgID": "a\ud800"}},
    {"export_headers": {"X-Scope-OrgID": "caf\u00e9"}},  # not ASCII: not sent as a header as it is
    {"exemptions": [{"rule_id": "qa.note", "key": "qa.note", "reason": "why \ud800"}]},
], ids=["tenant", "header", "header not ascii", "exemption reason"])
def test_pod_settings_text_utf8_cannot_hold_is_refused_not_a_crash(settings: dict) -> None:
    """Found in a review: the embedded engine gives a lone surrogate for "\\ud800" in Rego; the card
    check's encode() raised UnicodeEncodeError, which the load did not catch (a traceback at start)."""
    with pytest.raises(DecisionError):
        pod_settings_from(settings, "main.rego")


def test_a_stamp_or_redaction_text_utf8_cannot_hold_is_refused_not_a_crash() -> None:
    for part in ({"stamps": [{"rule_id": "t", "key": "k\ud800", "value": "x"}]},
                 {"stamps": [{"rule_id": "t", "key": "k", "value": "x\udfff"}]},
                 {"redaction": "[\ud800]"}):
        with pytest.raises(DecisionError, match="a lone surrogate"):
            compile_plan({"p": part}, no_file)


def test_a_newline_after_a_rule_id_or_a_package_name_is_refused() -> None:
    """``$`` matches before a final newline: a name ending in one passed, and split log lines."""
    with pytest.raises(DecisionError, match="a key must name a policy package"):
        compile_plan({"pkg\n": {"allow": True}}, no_file)
    with pytest.raises(DecisionError, match="rule_id"):
        compile_plan({"p": {"allow": False, "reason": "no", "rule_id": "r\n"}}, no_file)


def test_policy_errors_and_metric_labels_mask_card_numbers() -> None:
    """The last guard: text a check missed (a failing test's name) is masked where it is shown."""
    assert "4111" not in str(PolicyLoadError("test_4111111111111111 failed", "a.rego"))
    assert "4111" not in str(DecisionError("bad 4111 1111 1111 1111"))
    assert safe_label("retired.4111111111111111") == "retired.____________1111"


@pytest.mark.parametrize("part", [
    {"stamps": [{"rule_id": "t", "key": "k8s.pod.name", "value": "pay-4111111111111111"}]},
    {"stamps": [{"rule_id": "t", "key": "order.4111-1111-1111-1111", "value": "x"}]},
    {"redaction": "[REDACTED for 4111 1111 1111 1111]"},
], ids=["stamp", "stamp key", "redaction"])
def test_a_stamp_or_redaction_text_holding_a_card_number_is_refused_without_quoting_it(part) -> None:
    """The rewriter writes both as they are, unscanned (a review got a card number out through
    each: a stamp value taken from a pod label, a redaction text built from it); refused as a rule
    id holding one is, so the set fails its load or the resource its decision (never masked
    silently)."""
    with pytest.raises(DecisionError) as caught:
        compile_plan({"p": part}, no_file)
    assert "holds a card number" in str(caught.value) and "1111" not in str(caught.value)


def test_an_unknown_action_is_quoted_masked_before_it_is_shortened() -> None:
    """A policy that built an action from the app's attributes: the error (logged) names it
    masked, and the cut at 40 characters leaves none of the number's digits but its last four
    at most."""
    action = "x" * 25 + "4111111111111111"
    decisions = {"p": {"attributes": [{"rule_id": "r", "action": action, "keys": ["k"]}]}}
    with pytest.raises(DecisionError) as caught:
        compile_plan(decisions, no_file)
    assert "unknown action 'xxxxxxxxxxxxxxxxxxxxxxxxx***" in str(caught.value)
    assert "4111" not in str(caught.value) and "1111111" not in str(caught.value)


def test_decision_vocabularies_are_the_plans() -> None:
    """The typed word lists the decision is checked against name what the plan documents, in order
    (the order is the one error messages list them in)."""
    from sidecar.policy import decision
    from sidecar.rewrite import plan

    assert decision.ATTRIBUTE_ACTIONS == plan.ATTRIBUTE_ACTIONS
    assert decision.DETECTOR_ACTIONS == plan.DETECTOR_ACTIONS
    assert decision.DETECTOR_KINDS == plan.DETECTOR_KINDS
    assert decision.KEEP_KINDS == plan.KEEP_KINDS
    assert decision.CONFLICT_ACTIONS == plan.CONFLICT_ACTIONS


async def test_rule_ids_past_the_series_bound_are_counted_under_one_label(
    make_service, policy_dir: Path, hash_key_file: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """Found in a review: the rule counter's cache was cleared at 10,000 entries, but the registry
    kept every series, so a policy building rule ids from telemetry grew it without end."""
    from prometheus_client import generate_latest

    from sidecar.policy.metrics import MAX_RULE_SERIES, OVERFLOW_RULE_ID

    service = await make_service(dir=str(policy_dir), hash_key_file=str(hash_key_file))
    for n in range(MAX_RULE_SERIES + 500):
        service.record_counts(Signal.TRACES, {(f"tenant.from_telemetry.{n}", "drop"): 1})
    exposed = generate_latest(service.metrics.registry).decode()
    series = [line for line in exposed.splitlines() if line.startswith("otlp_sidecar_policy_rule_actions_total{")]
    assert len(series) == MAX_RULE_SERIES + 1
    assert sample_value(service.metrics.registry, "otlp_sidecar_policy_rule_actions_total", signal="traces",
                        rule_id=OVERFLOW_RULE_ID, action="drop") == 500
    assert caplog.text.count("rule ids and actions counted") == 1
