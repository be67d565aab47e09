"""Bytes a parser drops but that are on the wire, and values the rewrite makes.

Protobuf keeps the last of a singular field: a KeyValue with two `key` fields, or a value with
two string members, parses as its last one, but the earlier one is in the bytes the sidecar
forwards and queues (on disk too). An attacker's review found three paths that judged an
attribute by what a parser keeps and let the rest through unscanned, and a fourth that wrote a
card number of its own making; each case here is rewritten by both implementations, and the
output's bytes, not its parse, must hold no card number:

- a resource attribute with a stamped key whose last value already is the stamp's: left as it
  came, an earlier `key` field or string member with it;
- an attribute a `keep` rule exempts, matched by its last key: an earlier `key` field with it;
- a span's tracestate rewritten for sampling: only the input was scanned, and moving the `ot`
  entry first (out of the context that made digits a fraction) or cutting its threshold's
  trailing zeros made a card number;
- (the twin only) a tag written longer than it needs: the new length of a sub-message was put
  where the shortest tag would end, and the output parsed as other fields.
"""

from __future__ import annotations

import struct
from types import ModuleType

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from sidecar.rewrite._cards import find_pans
from sidecar.rewrite._wire import encode_varint, len_field
from sidecar.rewrite.plan import AttributeRule, KeepRule, Plan, ResourceStamp, Sampling, ValueDetector
from sidecar.signals import Signal

DETECT = ValueDetector("pci.pan", "pan", "mask_pan")
CARD = b"4111 1111 1111 1111"
TRACE_ID = bytes(9) + b"\xff" * 7  # randomness 0xffffffffffffff: kept by any ratio


def kv(key: bytes, value: bytes) -> bytes:
    return len_field(1, key) + len_field(2, value)


def string(s: bytes) -> bytes:
    return len_field(1, s)


def span(*fields: bytes, trace_id: bytes = TRACE_ID) -> bytes:
    return len_field(1, trace_id) + len_field(2, b"\x01" * 8) + b"".join(fields)


def request(resource_attributes: list[bytes], spans: list[bytes]) -> bytes:
    resource = b"".join(len_field(1, attribute) for attribute in resource_attributes)
    scope = b"".join(len_field(2, s) for s in spans)
    return len_field(1, len_field(1, resource) + len_field(2, scope))


def rewritten(impl: ModuleType, data: bytes, plan: Plan) -> bytes:
    resources = impl.split_resources(Signal.TRACES, data)
    result = impl.rewrite(Signal.TRACES, data, [plan] * len(resources))
    assert not result.maybe_unknown
    return bytes(result.data)


def parsed(data: bytes) -> ExportTraceServiceRequest:
    message = ExportTraceServiceRequest()
    message.ParseFromString(data)
    return message


def resource_attributes(data: bytes) -> dict[str, str]:
    return {a.key: a.value.string_value for a in parsed(data).resource_spans[0].resource.attributes}


STAMPS = Plan(detectors=(DETECT,), stamps=(
    ResourceStamp("tenant", "tenant.id", "acme", on_conflict="reject"),
    ResourceStamp("namespace", "k8s.namespace.name", "shop"),
))


@pytest.mark.parametrize(("name", "attribute"), [
    ("an earlier key field", len_field(1, CARD) + kv(b"tenant.id", string(b"acme"))),
    ("an earlier string member", kv(b"tenant.id", string(CARD) + string(b"acme"))),
    ("an earlier value field", len_field(1, b"tenant.id") + len_field(2, string(CARD)) + len_field(2, string(b"acme"))),
    ("an overwrite stamp's earlier member",
     kv(b"k8s.namespace.name", string(CARD.replace(b" ", b"-")) + string(b"shop"))),
])
def test_a_stamped_attribute_is_the_stamp_alone(impl: ModuleType, name: str, attribute: bytes) -> None:
    data = request([kv(b"service.name", string(b"checkout")), attribute], [span(len_field(5, b"GET"))])
    assert resource_attributes(data)["service.name"] == "checkout"  # a parser sees only the last
    out = rewritten(impl, data, STAMPS)
    assert not find_pans(out), out
    assert resource_attributes(out) == {"service.name": "checkout", "tenant.id": "acme", "k8s.namespace.name": "shop"}


def test_a_stamp_written_as_encoders_write_it_is_left_as_it_is(impl: ModuleType) -> None:
    data = request([kv(b"tenant.id", string(b"acme")), kv(b"k8s.namespace.name", string(b"shop"))],
                   [span(len_field(5, b"GET"))])
    result = impl.rewrite(Signal.TRACES, data, [STAMPS])
    assert bytes(result.data) == data
    assert not any(action == "stamp" for (_rule, action) in result.counts)


def test_an_exemption_covers_the_key_it_names_not_an_earlier_key_field(impl: ModuleType) -> None:
    plan = Plan(detectors=(DETECT,), attribute_rules=(AttributeRule("qa", "qa.sample_value", "keep"),))
    exempt = len_field(1, CARD) + kv(b"qa.sample_value", string(b"4111111111111111"))
    data = request([kv(b"service.name", string(b"x"))], [span(len_field(5, b"n"), len_field(9, exempt))])
    out = rewritten(impl, data, plan)
    assert CARD not in out
    assert b"**** **** **** 1111" in out  # masked where it is, its length kept
    attribute = parsed(out).resource_spans[0].scope_spans[0].spans[0].attributes[0]
    # the exempt value itself is left, as the exemption says
    assert (attribute.key, attribute.value.string_value) == ("qa.sample_value", "4111111111111111")


def sampled(ratio: float) -> Plan:
    return Plan(detectors=(DETECT,), sampling=Sampling("sample", ratio))


def tracestate_of(data: bytes) -> str:
    return parsed(data).resource_spans[0].scope_spans[0].spans[0].trace_state


@pytest.mark.parametrize(("name", "tracestate", "ratio"), [
    # "9," before the number reads as a fraction in the input; with `ot` moved first it follows "y,"
    ("members reordered", b"x=y,ot=rv:fffffffffffff9,4111111111111111", 0.1),
    # 14 digits match no card brand; the threshold written without its trailing zero is a Visa
    ("trailing zero cut", b"ot=th:42222222222220;rv:ffffffffffffff", 0.9),
])
def test_a_rewritten_tracestate_with_a_card_number_leaves_as_it_came(
    impl: ModuleType, name: str, tracestate: bytes, ratio: float,
) -> None:
    assert not find_pans(tracestate)
    data = request([], [span(len_field(3, tracestate), len_field(5, b"n"))])
    out = rewritten(impl, data, sampled(ratio))
    assert not find_pans(out), out
    assert tracestate_of(out) == tracestate.decode()


def test_a_tracestate_without_one_gets_its_threshold(impl: ModuleType) -> None:
    """The check above takes nothing from the usual case: the threshold is written."""
    data = request([], [span(len_field(3, b"x=y,ot=rv:fffffffffffff0"), len_field(5, b"n"))])
    assert tracestate_of(rewritten(impl, data, sampled(0.1))) == "ot=th:e6666666666666;rv:fffffffffffff0,x=y"


def test_a_tag_written_longer_than_it_needs_keeps_the_output_framed(impl: ModuleType) -> None:
    """A span's event field tagged 0xDA 0x00 (0x5A is enough) holding an attribute the policy
    drops: the event shrinks, and its new length goes after the two-byte tag. The twin put it
    after one byte, and the output parsed as a span name made of an unscanned bytes value."""
    hidden = kv(b"k" * 19, len_field(7, len_field(5, CARD)))  # a span name in a bytes_value: never scanned
    event = len_field(3, hidden) + len_field(3, kv(b"cvv", string(b"123")))
    long_tag = b"\xda\x00" + encode_varint(len(event)) + event
    data = request([], [span(len_field(5, b"checkout")) + long_tag])
    before = parsed(data).resource_spans[0].scope_spans[0].spans[0]
    assert before.name == "checkout" and len(before.events[0].attributes) == 2
    plan = Plan(detectors=(DETECT,), attribute_rules=(AttributeRule("cvv", "cvv", "drop"),))
    after = parsed(rewritten(impl, data, plan)).resource_spans[0].scope_spans[0].spans[0]
    assert after.name == "checkout"
    assert [a.key for a in after.events[0].attributes] == ["k" * 19]


@pytest.mark.parametrize("value", [
    b"\x20" + encode_varint(250),  # double_value (field 4) sent as a varint
    len_field(4, b"\x00" * 5),  # ... as 5 length-delimited bytes
], ids=["varint", "five bytes"])
@pytest.mark.parametrize("kind", ["attr_equals", "attr_at_least"])
def test_a_double_value_not_written_as_eight_bytes_matches_no_keep_rule(
    impl: ModuleType, value: bytes, kind: str,
) -> None:
    """The twin raised struct.error (an internal error to the client) where C matched nothing."""
    keep = KeepRule("big", kind, "order.amount", 250.0)
    plan = Plan(sampling=Sampling("sample", 0.000001, keep=(keep,)))

    def outcome(amount: bytes) -> tuple[int, int]:
        dropped = span(len_field(5, b"n"), len_field(9, kv(b"order.amount", amount)), trace_id=bytes(16))
        result = impl.rewrite(Signal.TRACES, request([], [dropped]), [plan])
        return result.items_out, result.sampled_out

    assert outcome(value) == (0, 1)
    assert outcome(b"\x21" + struct.pack("<d", 250.0)) == (1, 0)  # the double as written: kept
