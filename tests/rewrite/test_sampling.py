"""Consistent probability sampling of spans (OTEP 235 thresholds in tracestate)."""

from __future__ import annotations

import random
import re

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from sidecar.rewrite._common import threshold_for_ratio
from sidecar.rewrite.plan import KeepRule, Plan, Sampling
from sidecar.signals import Signal

from .builders import kv, parse, varint

# W3C trace-context: list-member = key "=" value; simple key or tenant@system key
W3C_KEY = r"(?:[a-z][a-z0-9_\-*/]{0,255}|[a-z0-9][a-z0-9_\-*/]{0,240}@[a-z][a-z0-9_\-*/]{0,13})"
W3C_VALUE = r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]"
W3C_MEMBER = re.compile(rf"{W3C_KEY}={W3C_VALUE}")


def assert_w3c_tracestate(ts: str) -> None:
    members = ts.split(",")
    assert 1 <= len(members) <= 32, ts
    for m in members:
        assert W3C_MEMBER.fullmatch(m.strip(" \t")), ts
    keys = [m.strip(" \t").split("=", 1)[0] for m in members]
    assert len(keys) == len(set(keys)), ts


def _raw_spans(trace_ids: bytes) -> bytes:
    """A request whose spans carry only a trace id (built directly: millions of spans)."""
    n = len(trace_ids) // 16
    spans = b"".join(b"\x12\x12\x0a\x10" + trace_ids[i * 16:(i + 1) * 16] for i in range(n))
    rs = b"\x12" + varint(len(spans)) + spans  # ResourceSpans{scope_spans: [{spans}]}
    return b"\x0a" + varint(len(rs)) + rs


def _sample(ratio: float, keep=()) -> Plan:
    return Plan(sampling=Sampling("sample", ratio, tuple(keep)))


def test_threshold_per_otep_235():
    assert threshold_for_ratio(1.0) == 0
    assert threshold_for_ratio(0.0) == 1 << 56
    assert threshold_for_ratio(0.25) == 3 << 54
    assert f"{threshold_for_ratio(0.1):014x}".rstrip("0") == "e6666666666666"


@pytest.mark.parametrize("ratio", [0.1, 0.5])
def test_kept_fraction_matches_the_ratio(impl, ratio):
    # a million random trace ids through the C rewriter; the twin is slower: 100k for it
    n = 1_000_000 if impl.IMPLEMENTATION == "cython" else 100_000
    rng = random.Random(42)
    data = _raw_spans(rng.randbytes(16 * n))
    # no cap on growth (max_growth=0): a record per run of dropped spans and a tracestate per
    # kept one add more than the sidecar's 4 MiB (limits.max_rewrite_growth_bytes) at this size
    result = impl.rewrite(Signal.TRACES, data, [_sample(ratio)], max_growth=0)
    kept = result.items_out / result.items_in
    tolerance = 0.005 if n == 1_000_000 else 0.03  # relative: 0.5 % over a million (seeded)
    assert abs(kept - ratio) <= tolerance * ratio, kept
    assert result.sampled_out == n - result.items_out
    assert result.counts == {("sample", "sample_out"): result.sampled_out}


def test_same_ratio_keeps_the_same_traces_and_lower_ratios_a_subset(impl):
    rng = random.Random(7)
    req = ExportTraceServiceRequest()
    ss = req.resource_spans.add().scope_spans.add()
    for i in range(3000):
        ss.spans.add(trace_id=rng.randbytes(16), name=str(i))
    data = req.SerializeToString()

    def kept(plan: Plan) -> set[str]:
        out = parse(Signal.TRACES, impl.rewrite(Signal.TRACES, data, [plan]).data)
        return {s.name for rs in out.resource_spans for sc in rs.scope_spans for s in sc.spans}

    a = kept(_sample(0.3))
    b = kept(Plan(sampling=Sampling("another-rule", 0.3), reason="another sidecar"))
    assert a == b and 700 < len(a) < 1100
    assert kept(_sample(0.1)) < a < kept(_sample(0.6))


def _one_span(trace_state: str = "", trace_id: bytes = b"\x00" * 9 + b"\xff" * 7, **kw):
    req = ExportTraceServiceRequest()
    sp = req.resource_spans.add().scope_spans.add().spans.add(
        trace_id=trace_id, trace_state=trace_state, name="op")
    for k, v in kw.items():
        sp.attributes.append(kv(k, v))
    return req


def _out_span(impl, req, plan):
    result = impl.rewrite(Signal.TRACES, req.SerializeToString(), [plan])
    spans = [s for rs in parse(Signal.TRACES, result.data).resource_spans
             for sc in rs.scope_spans for s in sc.spans]
    return (spans[0] if spans else None), result


def test_tracestate_records_the_threshold_and_stays_valid(impl):
    for ts in ("", "vendor=abc", "ot=rv:ffffffffffffff;x:1,congo=t61rcWkgMzE", " a=1 ,b=2",
               "ot=th:4"):
        span, _ = _out_span(impl, _one_span(ts), _sample(0.5))
        assert span is not None
        assert_w3c_tracestate(span.trace_state)
        assert span.trace_state.startswith("ot=th:8")
    span, _ = _out_span(impl, _one_span("ot=rv:ffffffffffffff;x:1,congo=t61rcWkgMzE"),
                        _sample(0.5))
    assert span.trace_state == "ot=th:8;rv:ffffffffffffff;x:1,congo=t61rcWkgMzE"
    many = ",".join(f"k{i}=v" for i in range(32))
    span, _ = _out_span(impl, _one_span(many), _sample(0.5))
    assert_w3c_tracestate(span.trace_state)
    assert span.trace_state.split(",")[:2] == ["ot=th:8", "k0=v"]


def test_randomness_comes_from_rv_when_present(impl):
    low_id = b"\x00" * 16
    assert _out_span(impl, _one_span("", low_id), _sample(0.5))[0] is None
    span, _ = _out_span(impl, _one_span("ot=rv:ffffffffffffff", low_id), _sample(0.5))
    assert span is not None
    assert _out_span(impl, _one_span("ot=rv:00000000000000"), _sample(0.9))[0] is None


def test_an_existing_higher_threshold_is_never_lowered(impl):
    # th:c means keep 25 %; our 50 % must not lower it
    span, _ = _out_span(impl, _one_span("ot=th:c", b"\x00" * 9 + b"\xf0" + b"\x00" * 6),
                        _sample(0.5))
    assert span.trace_state == "ot=th:c"
    # randomness 0x80.. passes our 50 % but not the 25 % already decided upstream
    assert _out_span(impl, _one_span("ot=th:c", b"\x00" * 9 + b"\x80" + b"\x00" * 6),
                     _sample(0.5))[0] is None
    span, _ = _out_span(impl, _one_span("ot=th:4", b"\x00" * 9 + b"\xf0" + b"\x00" * 6),
                        _sample(0.5))
    assert span.trace_state == "ot=th:8"


def test_keep_rules_force_spans_through_without_a_threshold(impl):
    low_id = b"\x00" * 16
    keep = (KeepRule("keep.err", "status_error"),
            KeepRule("keep.vip", "attr_equals", "tier", "vip"),
            KeepRule("keep.slow", "attr_at_least", "ms", 500))
    plan = _sample(0.01, keep)
    req = _one_span("ot=th:8;rv:00000000000001,x=y", low_id)
    req.resource_spans[0].scope_spans[0].spans[0].status.code = 2
    span, result = _out_span(impl, req, plan)
    assert span.trace_state == "ot=rv:00000000000001,x=y"  # the th it did not pass is erased
    assert result.counts == {("keep.err", "keep"): 1}
    for attrs, rule in (({"tier": "vip"}, "keep.vip"), ({"ms": 500}, "keep.slow"),
                        ({"ms": 700.5}, "keep.slow")):
        span, result = _out_span(impl, _one_span("", low_id, **attrs), plan)
        assert span is not None and span.trace_state == ""
        assert result.counts == {(rule, "keep"): 1}
    for attrs in ({"tier": "standard"}, {"ms": 499}, {"ms": "900"}, {"tier": True}):
        span, result = _out_span(impl, _one_span("", low_id, **attrs), plan)
        assert span is None and result.sampled_out == 1


def test_ratio_zero_keeps_only_what_keep_rules_keep(impl):
    rng = random.Random(3)
    data = _raw_spans(rng.randbytes(16 * 500))
    result = impl.rewrite(Signal.TRACES, data, [_sample(0.0)])
    assert result.items_out == 0 and result.sampled_out == 500
