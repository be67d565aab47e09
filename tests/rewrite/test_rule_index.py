"""Which attribute rule a key gets, with many rules: the first in the plan's order that matches.

The C rewriter looks up a key's rule in a cache, and on a miss in an index of the plan's rules
(exact keys by hash, ``*lit`` and ``lit*`` by the literal's last or first bytes, the rest always
tried); the twin tries every rule in order. Both must name the same rule for every key, whether
the key is new, cached, longer than the cache holds, or shorter than the index's bytes. Plans
here have many rules (the property tests' plans have three or fewer, which the C rewriter scans
without its index), built by fixed seeds from literals that overlap, and the keys are made from
the same literals so that several rules match most of them. The expected rule comes from
``fnmatch`` over the rules in order (tests/rewrite/reference.py), not from either rewriter.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from sidecar.rewrite.plan import AttributeRule, Plan
from sidecar.signals import Signal

from .reference import Reference

#: literals the patterns and keys are made of: lengths 0 to 11, shared beginnings and endings,
#: upper case (patterns are matched ignoring ASCII case)
LITERALS = ["", "a", "n", "pa", "an", "pan", "cvv", "CVV", "cvv2", "card", "Card_Number", "number",
            "card.pan", "er", "ber", "mber", "umber", "x", "pin", "pinblock", "track1", "_pan"]
JOINS = ["", ".", "_", "-", "x", "Q"]


def _pattern(rng: random.Random) -> str:
    lit = rng.choice(LITERALS)
    shape = rng.randrange(9)
    if shape == 0:
        return "*" + lit
    if shape == 1:
        return lit + "*"
    if shape == 2:
        return "*" + lit + "*"
    if shape == 3:
        return f"{lit}*{rng.choice(LITERALS)}"
    if shape == 4:
        return "?" + lit
    if shape == 5:
        return rng.choice(["*", "**", "?"])
    return lit  # exact, the most common shape in policies (three in nine)


def _key(rng: random.Random) -> str:
    parts = [rng.choice(LITERALS) for _ in range(rng.randrange(1, 4))]
    key = rng.choice(JOINS).join(parts)
    if rng.random() < 0.3:
        key = key.upper() if rng.random() < 0.5 else key.swapcase()
    if rng.random() < 0.15:  # longer than the C rewriter's cache keeps (48 bytes)
        key = rng.choice(LITERALS) * 5 + "." * rng.randrange(40, 120) + key
    return key


def _plan(rng: random.Random, n: int) -> Plan:
    rules = tuple(AttributeRule(f"r{i}", _pattern(rng), "redact") for i in range(n))
    return Plan(attribute_rules=rules, redaction="R")


def _request(keys: list[str]) -> bytes:
    req = ExportTraceServiceRequest()
    spans = req.resource_spans.add().scope_spans.add()
    for i, key in enumerate(keys):
        span = spans.spans.add(trace_id=bytes(15) + b"\x01", span_id=i.to_bytes(8, "big"), name="op")
        attr = span.attributes.add(key=key)
        attr.value.string_value = "v"
    return req.SerializeToString()


def _expected(plan: Plan, keys: list[str]) -> dict[tuple[str, str], int]:
    ref = Reference(plan)
    rules = [ref.rule_for(key) for key in keys]
    return dict(Counter((r.rule_id, r.action) for r in rules if r is not None))


@pytest.mark.parametrize("seed", range(40))
def test_every_key_gets_the_first_rule_that_matches_it(impl, seed):
    rng = random.Random(seed)
    plan = _plan(rng, rng.choice([4, 5, 8, 16, 40, 120]))
    keys = [_key(rng) for _ in range(300)]
    keys += [rule.pattern.replace("*", "").replace("?", "z") for rule in plan.attribute_rules]
    data = _request(keys)
    expected = _expected(plan, keys)
    first = impl.rewrite(Signal.TRACES, data, [plan])
    again = impl.rewrite(Signal.TRACES, data, [plan])  # now from the C rewriter's cache
    assert first.counts == expected
    assert again == first


@pytest.mark.parametrize("seed", range(10))
def test_both_rewriters_give_the_same_bytes_with_many_rules(c_impl, py_impl, seed):
    rng = random.Random(1000 + seed)
    plan = _plan(rng, 60)
    keys = [_key(rng) for _ in range(500)]
    data = _request(keys)
    assert c_impl.rewrite(Signal.TRACES, data, [plan]) == py_impl.rewrite(Signal.TRACES, data, [plan])


def test_an_earlier_rule_of_another_shape_wins_over_a_later_exact_one(impl):
    plan = Plan(attribute_rules=(
        AttributeRule("suffix", "*number", "redact"),
        AttributeRule("prefix", "card*", "redact"),
        AttributeRule("contains", "*pan*", "redact"),
        AttributeRule("exact", "card_number", "redact"),
        AttributeRule("exact.pan", "my.pan.key", "redact"),
        AttributeRule("short", "*r", "redact"),
    ), redaction="R")
    keys = ["card_number", "CARD_NUMBER", "card.pan", "my.pan.key", "order", "x" * 100 + "number",
            "cardinal", "pan", "r", ""]
    result = impl.rewrite(Signal.TRACES, _request(keys), [plan])
    assert result.counts == {
        ("suffix", "redact"): 3,  # card_number, CARD_NUMBER, xxx...number
        ("prefix", "redact"): 2,  # card.pan, cardinal
        ("contains", "redact"): 2,  # my.pan.key, pan
        ("short", "redact"): 2,  # order, r
    }


def test_keys_of_the_same_plan_that_differ_only_at_the_end_each_get_their_own_rule(impl):
    """Keys alike but for their last bytes (`field_1`, `field_2`) each keep their own answer,
    whatever cache slot they share."""
    rules = tuple(AttributeRule(f"r{i}", f"attribute.number.{i:06d}", "redact") for i in range(0, 2000, 2))
    plan = Plan(attribute_rules=rules, redaction="R")
    keys = [f"attribute.number.{i:06d}" for i in range(2000)] * 2
    result = impl.rewrite(Signal.TRACES, _request(keys), [plan])
    assert result.counts == {(f"r{i}", "redact"): 2 for i in range(0, 2000, 2)}
