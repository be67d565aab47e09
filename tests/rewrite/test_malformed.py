"""Malformed input: one clear error (MalformedRequest), never a crash or an out-of-bounds read,
and the same answer from both implementations. Includes a short fuzz run."""

from __future__ import annotations

import functools
import importlib
import random

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from sidecar.rewrite import MalformedRequest
from sidecar.rewrite.plan import AttributeRule, KeepRule, Plan, ResourceStamp, Sampling
from sidecar.rewrite.plan import ValueDetector as Det
from sidecar.signals import Signal

from .builders import kv as attr
from .builders import request_with
from .conftest import load_c

PY = importlib.import_module("sidecar.rewrite._py")
BUSY = Plan(attribute_rules=(AttributeRule("d", "*cvv*", "drop"), AttributeRule("h", "h*", "hash")),
            detectors=(Det("p", "pan", "mask_pan"),),
            stamps=(ResourceStamp("t", "tenant", "acme"),),
            sampling=Sampling("s", 0.5, (KeepRule("k", "attr_equals", "note", "x"),)),
            hash_key=b"k")


@pytest.mark.parametrize(("data", "message"), [
    (b"\x0a\x05\x12", "truncated length-delimited field 1 in ExportTraceServiceRequest at offset 0"),
    (b"\x0f", "invalid wire type 7 for field 1 in ExportTraceServiceRequest at offset 0"),
    (b"\x08", "truncated varint in ExportTraceServiceRequest at offset 1"),
    (b"\x00\x01", "invalid field number 0 in ExportTraceServiceRequest at offset 0"),
    (b"\x08" + b"\xff" * 10 + b"\x01", "varint too long in ExportTraceServiceRequest at offset 1"),
    (b"\x08\x01", "wrong wire type 0 for field 1 in ExportTraceServiceRequest at offset 0"),
    (b"\x0a\x04\x12\x02\x12\x05", "truncated length-delimited field 2 in ScopeSpans at offset 4"),
    (b"\x0a\x02\x11\x00", "truncated fixed64 field 2 in ResourceSpans at offset 2"),
    (b"\x0a\x06\x12\x04\x12\x02\x4a\x03",
     "truncated length-delimited field 9 in Span at offset 6"),
    (b"\x0a\x08\x12\x06\x12\x04\x4a\x02\x10\x01", "wrong wire type 0 for field 2 in KeyValue"
                                                  " at offset 8"),
])
def test_clear_errors(impl, data, message):
    for call in (lambda: impl.count_items(Signal.TRACES, data),
                 lambda: impl.split_resources(Signal.TRACES, data),
                 lambda: impl.rewrite(Signal.TRACES, data, [BUSY])):
        with pytest.raises(MalformedRequest) as info:
            call()
        assert str(info.value) == message


@pytest.mark.parametrize(("data", "message"), [
    (b"\x0a\x05\x12", "truncated length-delimited field 1 in ExportTraceServiceRequest at offset 0"),
    (b"\x0f", "invalid wire type 7 for field 1 in ExportTraceServiceRequest at offset 0"),
    (b"\x00\x01", "invalid field number 0 in ExportTraceServiceRequest at offset 0"),
    (b"\x08\x01", "wrong wire type 0 for field 1 in ExportTraceServiceRequest at offset 0"),
])
def test_counting_resources_checks_the_top_level_framing(impl, data, message):
    with pytest.raises(MalformedRequest) as info:
        impl.count_resources(Signal.TRACES, data)
    assert str(info.value) == message


def test_resources_are_counted_up_to_where_asked_and_nothing_past_it_is_read(impl):
    """The pipeline checks the resource cap with this before split_resources makes an object per
    resource: it counts as the split does, and stops one over the cap."""
    one = ExportTraceServiceRequest()
    for n in range(3):
        one.resource_spans.add().resource.attributes.append(attr("service.name", f"s{n}"))
    data = one.SerializeToString()
    assert impl.count_resources(Signal.TRACES, data) == len(impl.split_resources(Signal.TRACES, data)) == 3
    assert impl.count_resources(Signal.TRACES, b"") == 0
    empty = b"\x0a\x00" * 100_000  # empty ResourceSpans: two bytes each
    assert impl.count_resources(Signal.TRACES, empty) == 100_000
    assert impl.count_resources(Signal.TRACES, empty, stop_at=513) == 513
    # past the stop nothing is read: the malformed tail is left to the split, which refuses it
    assert impl.count_resources(Signal.TRACES, empty[:20] + b"\x0f", stop_at=5) == 5
    with pytest.raises(MalformedRequest):
        impl.count_resources(Signal.TRACES, empty[:20] + b"\x0f")
    for signal in (Signal.METRICS, Signal.LOGS):
        assert impl.count_resources(signal, b"\x0a\x00" * 7) == 7


def _outcome(mod, signal: Signal, data: bytes, plans_for):
    try:
        infos = mod.split_resources(signal, data)
        result = mod.rewrite(signal, data, plans_for(len(infos)))
    except MalformedRequest as exc:
        return ("malformed", str(exc))
    return ("ok", infos, result)


def _requests():
    for where in ("span.attr.kvlist", "span.event.attr", "log.body.kvlist",
                  "metric.exemplar.attr", "metric.histogram.attr"):
        signal, req = request_with(where, "card 4111 1111 1111 1111 and more")
        yield signal, req.SerializeToString()


def test_every_truncation_is_an_error_or_a_valid_shorter_request(impl):
    for signal, data in _requests():
        for cut in range(len(data)):
            outcome = _outcome(impl, signal, data[:cut], lambda n: [BUSY] * n)
            assert outcome == _outcome(PY, signal, data[:cut], lambda n: [BUSY] * n)


def test_every_byte_corruption_is_an_error_or_a_valid_request(impl):
    # replacing a byte keeps the outer lengths, so the walk reaches the inner messages
    seen = set()
    for signal, data in _requests():
        for pos in range(len(data)):
            for value in (0x00, 0x07, 0x7F, 0x80, 0xFF, data[pos] ^ 0x08):
                mutated = data[:pos] + bytes([value]) + data[pos + 1:]
                outcome = _outcome(impl, signal, mutated, lambda n: [BUSY] * n)
                assert outcome == _outcome(PY, signal, mutated, lambda n: [BUSY] * n)
                seen.add(outcome[1].split(" at ")[0] if outcome[0] == "malformed" else "ok")
    assert "ok" in seen and len(seen) > 10  # deep errors in many messages were reached


REFUSE = Plan(allow=False, reason="no", refuse_rule_id="r")


def _quick_outcome(mod, signal: Signal, data: bytes, plan: Plan, count: bool):
    """The pipeline's way: a quick split, then rewrite (which checks every byte)."""
    try:
        infos = mod.split_resources(signal, data, validate=False, count=count)
        result = mod.rewrite(signal, data, [plan] * len(infos))
    except MalformedRequest:
        return "malformed"
    items = [info.items for info in infos]
    assert items == [0] * len(infos) if not count else sum(items) == result.items_in
    return ("ok", [(info.index, info.key, info.attributes) for info in infos], result.items_in)


def _full_outcome(mod, signal: Signal, data: bytes):
    try:
        infos = mod.split_resources(signal, data)
    except MalformedRequest:
        return "malformed"
    return ("ok", [(info.index, info.key, info.attributes) for info in infos],
            sum(info.items for info in infos))


@pytest.mark.parametrize("count", [True, False], ids=["counting", "resources_only"])
@pytest.mark.parametrize("plan", [Plan(), BUSY, REFUSE], ids=["noop", "busy", "refuse"])
def test_quick_split_then_rewrite_refuses_exactly_what_the_full_split_refuses(impl, plan, count):
    seen = set()
    for signal, data in _requests():
        for pos in range(len(data)):
            for mutated in (data[:pos], data[:pos] + bytes([data[pos] ^ 0x08]) + data[pos + 1:],
                            data[:pos] + b"\xff" + data[pos + 1:]):
                full = _full_outcome(impl, signal, mutated)
                assert _quick_outcome(impl, signal, mutated, plan, count) == full
                seen.add(full == "malformed")
    assert seen == {True, False}


def test_short_fuzz_run_c_matches_the_twin():
    c = load_c()
    if c is None:
        pytest.skip("sidecar._ext.rewrite is not built")
    rng = random.Random(1234)
    corpus = list(_requests())
    for _ in range(3000):
        signal, data = rng.choice(corpus)
        buf = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            op = rng.random()
            pos = rng.randrange(len(buf) + 1)
            if op < 0.8 and buf:
                buf[min(pos, len(buf) - 1)] = rng.randrange(256)
            elif op < 0.9:
                buf[pos:pos] = bytes([rng.randrange(256)])
            elif buf:
                del buf[min(pos, len(buf) - 1)]
        mutated = bytes(buf)
        assert _outcome(c, signal, mutated, lambda n: [BUSY] * n) == \
            _outcome(PY, signal, mutated, lambda n: [BUSY] * n)


@functools.cache
def _nested_array(depth: int) -> bytes:
    """AnyValue bytes of ``depth`` arrays nested in each other around a string."""
    value = b"\x0a\x01x"
    for _ in range(depth):
        array = b"\x0a" + _len(value) + value  # ArrayValue.values
        value = b"\x2a" + _len(array) + array  # AnyValue.array_value
    return value


def _len(b: bytes) -> bytes:
    n, out = len(b), bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _trace_with_value(value: bytes) -> bytes:
    kv = b"\x0a\x01k\x12" + _len(value) + value
    span = b"\x4a" + _len(kv) + kv
    scope = b"\x12" + _len(span) + span
    rs = b"\x12" + _len(scope) + scope
    return b"\x0a" + _len(rs) + rs


@pytest.mark.parametrize("plan", [Plan(), BUSY], ids=["validate", "rewrite"])
def test_deep_nesting_is_refused_not_a_stack_overflow(impl, plan):
    ok = _trace_with_value(_nested_array(30))
    assert impl.rewrite(Signal.TRACES, ok, [plan]).items_in == 1
    for depth in (31, 3000):
        data = _trace_with_value(_nested_array(depth))
        with pytest.raises(MalformedRequest, match="values nested deeper than 30 levels"):
            impl.rewrite(Signal.TRACES, data, [plan])
        with pytest.raises(MalformedRequest, match="values nested deeper than 30 levels"):
            impl.count_items(Signal.TRACES, data)


def test_quick_split_checks_the_whole_resource(impl):
    """The policy engine decodes resource attributes before rewrite() runs: the quick split must
    refuse a malformed resource as the full split does."""
    value = _nested_array(31)
    kv = b"\x0a\x01k\x12" + _len(value) + value
    resource = b"\x0a" + _len(kv) + kv
    rs = b"\x0a" + _len(resource) + resource
    data = b"\x0a" + _len(rs) + rs
    for validate in (True, False):
        with pytest.raises(MalformedRequest, match="values nested deeper than 30 levels"):
            impl.split_resources(Signal.TRACES, data, validate=validate)
    wrong_type = b"\x0a\x04\x0a\x02\x08\x01"  # Resource.attributes as a varint
    for validate in (True, False):
        with pytest.raises(MalformedRequest, match="wrong wire type 0 for field 1 in Resource"):
            impl.split_resources(Signal.TRACES, wrong_type, validate=validate)


SAMPLE_OUT = Plan(detectors=(Det("p", "pan", "mask_pan"),),
                  sampling=Sampling("s", 0.0, (KeepRule("e", "status_error"),
                                               KeepRule("k", "attr_at_least", "amount", 100))))
HALF = Plan(attribute_rules=(AttributeRule("d", "*cvv*", "drop"),),
            sampling=Sampling("s", 0.5, (KeepRule("k", "attr_equals", "note", "x"),)))


def _sampled_spans() -> bytes:
    """Spans a sampling plan drops and keeps (by the threshold, a status, an attribute),
    with attributes of every kind, an event and a link."""
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.append(attr("service.name", "checkout"))
    spans = rs.scope_spans.add().spans
    for i in range(6):
        sp = spans.add(trace_id=bytes([i * 40]) * 16, span_id=bytes([i + 1]) * 8, name=f"op{i}",
                       kind=2, start_time_unix_nano=1_700_000_000_000_000_000 + i,
                       end_time_unix_nano=1_700_000_000_050_000_000)
        sp.attributes.extend([attr("note", "x" if i == 1 else "card 4111 1111 1111 1111"),
                              attr("amount", 150 if i == 2 else 7), attr("ok", True),
                              attr("ratio", 0.5), attr("tags", ["a", 1]), attr("m", {"k": "v"})])
        if i == 3:
            sp.status.code = 2
        sp.events.add(time_unix_nano=5, name="ev").attributes.append(attr("cvv", "123"))
        sp.links.add(trace_id=bytes(16), span_id=bytes(8)).attributes.append(attr("l", 1))
    return req.SerializeToString()


def _pipeline_outcome(mod, data: bytes, plan: Plan):
    """The pipeline's way, with the error's text: the quick split, then rewrite."""
    try:
        infos = mod.split_resources(Signal.TRACES, data, validate=False, count=False)
        result = mod.rewrite(Signal.TRACES, data, [plan] * len(infos))
    except MalformedRequest as exc:
        return ("malformed", str(exc))
    return ("ok", infos, result)


@pytest.mark.parametrize("plan", [SAMPLE_OUT, HALF], ids=["sample_out", "half"])
def test_sampled_spans_malformed_the_pipeline_way_c_matches_the_twin(plan):
    """The Cython rewriter checks a span it drops in its first pass (no second walk): what it
    refuses, and the error it names, must stay the twin's."""
    c = load_c()
    if c is None:
        pytest.skip("sidecar._ext.rewrite is not built")
    data = _sampled_spans()
    kinds = set()
    outcome = _pipeline_outcome(c, data, plan)
    assert outcome == _pipeline_outcome(PY, data, plan)
    assert 0 < outcome[2].sampled_out < outcome[2].items_in  # some spans kept, some dropped
    for pos in range(len(data)):
        for mutated in (data[:pos], *(data[:pos] + bytes([v]) + data[pos + 1:]
                                      for v in (0x00, 0x07, 0x7F, 0x80, 0xFF, data[pos] ^ 0x08))):
            outcome = _pipeline_outcome(c, mutated, plan)
            assert outcome == _pipeline_outcome(PY, mutated, plan), pos
            kinds.add(outcome[1].split(" at ")[0] if outcome[0] == "malformed" else "ok")
    assert "ok" in kinds and len(kinds) > 10
