"""What the rewriter does to requests, per plan feature, on both implementations."""

from __future__ import annotations

import gc
import hmac
import weakref

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from sidecar.rewrite import _common
from sidecar.rewrite.plan import (
    HASH_PREFIX,
    AttributeRule,
    Plan,
    ResourceStamp,
    ValueDetector,
)
from sidecar.signals import Signal

from .builders import kv, parse, request_with

KEY = b"k"
PAN = ValueDetector("pci.pan", "pan", "mask_pan")


def _trace(*span_attrs, resource=None) -> bytes:
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    if resource is not None:
        rs.resource.attributes.extend(kv(k, v) for k, v in resource.items())
    sp = rs.scope_spans.add().spans.add(trace_id=b"\x01" * 16, span_id=b"\x02" * 8, name="op")
    sp.attributes.extend(kv(k, v) for k, v in span_attrs)
    return req.SerializeToString()


def _span(data: bytes):
    return parse(Signal.TRACES, data).resource_spans[0].scope_spans[0].spans[0]


def _attrs(span) -> dict:
    out = {}
    for a in span.attributes:
        kind = a.value.WhichOneof("value")
        out[a.key] = getattr(a.value, kind) if kind in (
            "string_value", "int_value", "bool_value", "double_value") else a.value
    return out


def test_drop_by_exact_key_and_glob_ignoring_case(impl):
    data = _trace(("Card.CVV", "123"), ("payment.card.cvv2", "999"), ("pin", "1234"),
                  ("keep.me", "x"))
    plan = Plan(attribute_rules=(AttributeRule("pci.cvv", "*cvv*", "drop"),
                                 AttributeRule("pci.pin", "PIN", "drop")))
    result = impl.rewrite(Signal.TRACES, data, [plan])
    assert _attrs(_span(result.data)) == {"keep.me": "x"}
    assert result.counts == {("pci.cvv", "drop"): 2, ("pci.pin", "drop"): 1}


def test_redact_hash_and_mask_values(impl):
    data = _trace(("user.email", "a@b.c"), ("card.number", "4111 1111 1111 1111"),
                  ("account", 4111111111111111), ("secret", "s3cr3t"), ("flag", True))
    plan = Plan(attribute_rules=(
        AttributeRule("pii", "user.email", "hash"),
        AttributeRule("pci", "card.number", "mask_pan"),
        AttributeRule("pci", "account", "mask_pan"),
        AttributeRule("sec", "secret", "redact"),
        AttributeRule("pci", "flag", "mask_pan"),
    ), redaction="***", hash_key=KEY)
    result = impl.rewrite(Signal.TRACES, data, [plan])
    attrs = _attrs(_span(result.data))
    assert attrs["user.email"] == HASH_PREFIX + hmac.new(KEY, b"a@b.c", "sha256").hexdigest()
    assert attrs["card.number"] == "**** **** **** 1111"
    assert attrs["account"] == "************1111"
    assert attrs["secret"] == "***"
    assert attrs["flag"] is True
    assert result.counts == {("pii", "hash"): 1, ("pci", "mask_pan"): 3, ("sec", "redact"): 1}


def test_the_same_value_hashes_alike_and_keys_differ(impl):
    data = _trace(("a", "x"), ("b", "x"))
    rule = AttributeRule("h", "?", "hash")
    one = _attrs(_span(impl.rewrite(Signal.TRACES, data, [Plan(attribute_rules=(rule,),
                                                               hash_key=b"1")]).data))
    two = _attrs(_span(impl.rewrite(Signal.TRACES, data, [Plan(attribute_rules=(rule,),
                                                               hash_key=b"2")]).data))
    assert one["a"] == one["b"] != two["a"]


def test_first_matching_rule_wins_and_keep_exempts_from_detectors(impl):
    data = _trace(("card.test", "4111111111111111"), ("card.other", "4111111111111111"))
    plan = Plan(attribute_rules=(AttributeRule("k", "card.test", "keep"),
                                 AttributeRule("d", "card.*", "drop"),
                                 AttributeRule("never", "card.test", "drop")),
                detectors=(PAN,))
    result = impl.rewrite(Signal.TRACES, data, [plan])
    assert _attrs(_span(result.data)) == {"card.test": "4111111111111111"}
    # every attribute a `keep` (an exemption) lets through is counted: the audit sees each use
    assert result.counts == {("k", "keep"): 1, ("d", "drop"): 1}


def test_rules_reach_keys_inside_nested_maps(impl):
    data = _trace(("payment", {"card": {"cvv": "123", "number": "4111111111111111"}}))
    plan = Plan(attribute_rules=(AttributeRule("pci.cvv", "cvv", "drop"),), detectors=(PAN,))
    result = impl.rewrite(Signal.TRACES, data, [plan])
    payment = _span(result.data).attributes[0].value
    card = payment.kvlist_value.values[0].value.kvlist_value.values
    assert [(a.key, a.value.string_value) for a in card] == [("number", "************1111")]
    assert result.counts == {("pci.cvv", "drop"): 1, ("pci.pan", "mask_pan"): 1}


def test_tenant_stamp_sets_overwrites_and_creates_the_resource(impl):
    stamp = Plan(stamps=(ResourceStamp("tenant", "tenant.id", "acme"),))
    for resource, expected_count in (({"tenant.id": "evil", "x": 1}, 1), ({"x": 1}, 1),
                                     ({"tenant.id": "acme"}, 0), (None, 1)):
        data = _trace(("a", "b"), resource=resource)
        result = impl.rewrite(Signal.TRACES, data, [stamp])
        res = parse(Signal.TRACES, result.data).resource_spans[0].resource
        tenants = [a.value.string_value for a in res.attributes if a.key == "tenant.id"]
        assert tenants == ["acme"]
        assert result.counts == ({("tenant", "stamp"): 1} if expected_count else {})
        assert result.refusals == ()


def test_reject_stamp_refuses_a_resource_that_claims_another_tenant(impl):
    plan = Plan(stamps=(ResourceStamp("tenant", "tenant.id", "acme", "reject"),))
    req = ExportTraceServiceRequest()
    for tenant in ("evil", "acme"):
        rs = req.resource_spans.add()
        rs.resource.attributes.append(kv("tenant.id", tenant))
        for _ in range(3 if tenant == "evil" else 2):
            rs.scope_spans.add().spans.add(name=tenant)
    data = req.SerializeToString()
    result = impl.rewrite(Signal.TRACES, data, [plan, plan])
    out = parse(Signal.TRACES, result.data)
    assert [rs.scope_spans[0].spans[0].name for rs in out.resource_spans] == ["acme"]
    assert (result.items_in, result.items_out, result.rejected_items) == (5, 2, 3)
    assert len(result.refusals) == 1 and "tenant.id" in result.refusals[0]
    assert result.counts == {("tenant", "refuse"): 3}


def test_plan_refusal_and_dry_run(impl):
    signal, req = request_with("span.attr", "card 4111111111111111")
    data = req.SerializeToString()
    refused = impl.rewrite(signal, data, [Plan(allow=False, reason="no such tenant",
                                               refuse_rule_id="policy.tenant")])
    assert parse(signal, refused.data).resource_spans == []
    assert refused.refusals == ("no such tenant",)
    assert refused.rejected_items == 1 and refused.counts == {("policy.tenant", "refuse"): 1}
    live = impl.rewrite(signal, data, [Plan(detectors=(PAN,))])
    dry = impl.rewrite(signal, data, [Plan(detectors=(PAN,), dry_run=True)])
    assert live.data != data and dry.data == data
    assert dry.counts == live.counts == {("pci.pan", "mask_pan"): 1}
    dry_refused = impl.rewrite(signal, data, [Plan(allow=False, dry_run=True)])
    assert dry_refused.data == data and dry_refused.rejected_items == 0
    assert dry_refused.counts == {("policy", "refuse"): 1}


def test_no_op_plans_return_the_input_object(impl):
    data = _trace(("a", "4111111111111111"))
    result = impl.rewrite(Signal.TRACES, data, [Plan()])
    assert result.data is data
    assert (result.items_in, result.items_out, result.counts) == (1, 1, {})


@pytest.mark.parametrize("plan", [Plan(), Plan(detectors=(PAN,))], ids=["noop", "mask"])
def test_a_buffer_of_the_request_reads_like_bytes_and_gives_bytes(impl, plan):
    """The HTTP receiver hands over a large body as a view of its receive buffer."""
    data = _trace(("a", "4111111111111111"), ("b", "x"))
    expected = impl.rewrite(Signal.TRACES, data, [plan])
    strided = memoryview(bytes(b for b in data for _ in range(2)))[::2]  # not contiguous: read a copy
    for view in (bytearray(data), memoryview(bytearray(data)), memoryview(b"--" + data)[2:], strided):
        result = impl.rewrite(Signal.TRACES, view, [plan])
        assert result == expected and type(result.data) is bytes
        assert impl.split_resources(Signal.TRACES, view) == impl.split_resources(Signal.TRACES, data)
        assert impl.split_resources(Signal.TRACES, view, validate=False, count=False)[0].key == b""
        assert impl.count_items(Signal.TRACES, view) == 1
    for not_bytes in (data.decode("latin-1"), len(data)):
        with pytest.raises(TypeError):
            impl.rewrite(Signal.TRACES, not_bytes, [plan])


def test_unknown_fields_are_carried_through(impl):
    # a span with an unknown varint field 99 and an unknown length-delimited field 100
    span = (b"\x2a\x02op" + b"\x98\x06\x07" + b"\xa2\x06\x03abc"
            + b"\x4a" + bytes([len(kv("card.cvv", "1").SerializeToString())])
            + kv("card.cvv", "1").SerializeToString())
    scope = b"\x12" + bytes([len(span)]) + span
    rs = b"\x12" + bytes([len(scope)]) + scope + b"\xf8\x07\x01"  # unknown field 127 on it
    data = b"\x0a" + bytes([len(rs)]) + rs
    plan = Plan(attribute_rules=(AttributeRule("cvv", "*cvv", "drop"),), detectors=(PAN,))
    result = impl.rewrite(Signal.TRACES, data, [plan])
    assert b"\x98\x06\x07" in result.data and b"\xa2\x06\x03abc" in result.data
    assert b"\xf8\x07\x01" in result.data and b"card.cvv" not in result.data
    parsed = parse(Signal.TRACES, result.data)
    assert parsed.resource_spans[0].scope_spans[0].spans[0].name == "op"


def test_each_resource_gets_its_own_plan(impl):
    req = ExportTraceServiceRequest()
    for name in ("a", "b"):
        req.resource_spans.add().scope_spans.add().spans.add(name=f"{name} 4111111111111111")
    data = req.SerializeToString()
    result = impl.rewrite(Signal.TRACES, data, [Plan(), Plan(detectors=(PAN,))])
    names = [rs.scope_spans[0].spans[0].name for rs in parse(Signal.TRACES,
                                                               result.data).resource_spans]
    assert names == ["a 4111111111111111", "b ************1111"]
    with pytest.raises(ValueError, match="1 plans for 2 resources"):
        impl.rewrite(Signal.TRACES, data, [Plan()])


def test_split_resources(impl):
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.extend([kv("service.name", "pay"), kv("n", 3), kv("ok", True),
                                   kv("f", 1.5), kv("raw", b"\x01\xff"),
                                   kv("list", ["a", 1, {"k": [True]}])])
    rs.scope_spans.add().spans.add()
    rs.scope_spans.add().spans.add()
    req.resource_spans.add().scope_spans.add()
    data = req.SerializeToString()
    first, second = impl.split_resources(Signal.TRACES, data)
    assert first.index == 0 and first.items == 2
    assert first.key == rs.resource.SerializeToString()
    assert first.attributes == {"service.name": "pay", "n": 3, "ok": True, "f": 1.5,
                                "raw": "01ff", "list": '["a",1,{"k":[true]}]'}
    assert (second.index, second.key, second.attributes, second.items) == (1, b"", {}, 0)
    assert impl.count_items(Signal.TRACES, data) == 2


def test_all_three_signals(impl):
    plan = Plan(attribute_rules=(AttributeRule("drop.note", "note", "drop"),), detectors=(PAN,))
    for where in ("log.attr", "metric.histogram.attr", "metric.exemplar.attr", "span.link.attr"):
        signal, req = request_with(where, "4111111111111111")
        result = impl.rewrite(signal, req.SerializeToString(), [plan])
        assert b"note" not in result.data and b"4111" not in result.data
        assert result.counts == {("drop.note", "drop"): 1}
    signal, req = request_with("log.body.kvlist", "4111111111111111")
    result = impl.rewrite(signal, req.SerializeToString(), [plan])
    assert result.counts == {("pci.pan", "mask_pan"): 1}


def test_plans_are_compiled_once(impl, monkeypatch):
    data = _trace(("a", "4111111111111111"))
    plan = Plan(detectors=(ValueDetector("p", "pan", "mask_pan"),), reason="once")
    compiled = []
    real = _common._compile
    monkeypatch.setattr(_common, "_compile", lambda p: compiled.append(p) or real(p))
    for _ in range(5):
        assert impl.rewrite(Signal.TRACES, data, [plan]).counts == {("p", "mask_pan"): 1}
    assert compiled == [plan]


def test_a_compiled_plan_is_freed_with_its_plan(impl):
    """The rewriters keep no cache of their own: what the policy caches evict is freed."""
    data = _trace(("a", "4111111111111111"))
    plans = [Plan(detectors=(ValueDetector("p", "pan", "mask_pan"),), reason=f"plan {i}") for i in range(50)]
    for plan in plans:
        impl.rewrite(Signal.TRACES, data, [plan])
    held = [weakref.ref(plan.__dict__["_compiled"]) for plan in plans]
    del plan, plans
    gc.collect()
    assert [ref for ref in held if ref() is not None] == []


def test_a_plan_that_hashes_needs_a_key(impl):
    plan = Plan(attribute_rules=(AttributeRule("h", "x", "hash"),))
    with pytest.raises(ValueError, match="hash_key"):
        impl.rewrite(Signal.TRACES, _trace(("x", "1")), [plan])
