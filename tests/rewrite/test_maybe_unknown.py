"""The rewriter's own egress allowlist check: ``RewriteResult.maybe_unknown``.

The pipeline (``Pipeline._only_otlp``) reads a rewritten request again with ``unknown_field`` only
when the rewrite says it may hold a field OTLP does not define. The walk meets every field of the
request and checks those it copies without walking them (ids, times, numbers, the fields of no
message of OTLP) against ``ALLOWED``, and reads whole the sub-messages it does not enter
(exponential histogram buckets, summary quantiles). A result that says "clean" while
``unknown_field`` finds something in its output would send an unscanned field upstream: every
test here checks that this never happens, on both implementations (``impl``, ids ``py`` / ``c``),
and that a request without such a field is not read twice (what the fold-in is for).

Targeted: a field planted in every message of every request (the paths of test_unknown_fields),
under plans that take each of the walk's paths (pass-through, masking, key rules, stamps, refusal,
sampling, dry run); spans kept and dropped by sampling; buckets and quantiles, unreadable ones
included. Differential: random requests of the three signals (tests/rewrite/strategies.py, metric
data points given buckets and quantiles) with fields planted in random messages of every type,
under random plans, with fixed seeds (``OTLP_SIDECAR_PROPERTY_EXAMPLES`` for more).
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from bench.corpus_requests import DEFAULT_PLAN
from sidecar.rewrite import MalformedRequest
from sidecar.rewrite._schema import (
    ALLOWED,
    ALLOWED_NAMES,
    BUCKETS,
    EDP,
    QUANTILE,
    REQUEST_TYPE,
    SDP,
)
from sidecar.rewrite._wire import encode_varint, next_field
from sidecar.rewrite.plan import AttributeRule, KeepRule, Plan, ResourceStamp, Sampling, ValueDetector
from sidecar.signals import Signal

from .builders import anyvalue, kv
from .conftest import load_c
from .strategies import plans, requests_by_signal
from .test_unknown_fields import CARD, CASES, planted

PAN = ValueDetector("pci.pan", "pan", "mask_pan")
#: plans that take the walk's different paths: each with its id
PLANS = {
    "pass-through": Plan(),
    "mask": Plan(detectors=(PAN,)),
    "rules-no-match": Plan(attribute_rules=(AttributeRule("cvv", "*cvv*", "drop"),), detectors=(PAN,)),
    "many-rules": Plan(attribute_rules=tuple(AttributeRule(f"r{i}", f"k{i}.*", "drop") for i in range(6)),
                       detectors=(ValueDetector("pci.pan", "pan", "hash"),), hash_key=b"k3y"),
    "hash-every-key": Plan(attribute_rules=(AttributeRule("all", "*", "hash"),), hash_key=b"k3y"),
    "keep-every-key": Plan(attribute_rules=(AttributeRule("all", "*", "keep"),), detectors=(PAN,)),
    "mask-every-key": Plan(attribute_rules=(AttributeRule("all", "*", "mask_pan"),)),
    "redact-every-key": Plan(attribute_rules=(AttributeRule("all", "*", "redact"),)),
    "drop-every-key": Plan(attribute_rules=(AttributeRule("all", "*", "drop"),)),
    "stamp": Plan(stamps=(ResourceStamp("tenant", "tenant.id", "acme"),), detectors=(PAN,)),
    "stamp-reject": Plan(stamps=(ResourceStamp("tenant", "", "acme", "reject"),)),
    "refuse": Plan(allow=False, reason="denied"),
    "sample": Plan(sampling=Sampling("sample", 0.5, (KeepRule("keep", "attr_equals", "", "x"),)), detectors=(PAN,)),
    "sample-status": Plan(sampling=Sampling("sample", 0.5, (KeepRule("keep", "status_error"),))),
    "dry-run": Plan(detectors=(PAN,), attribute_rules=(AttributeRule("all", "*", "drop"),), dry_run=True),
    "default": DEFAULT_PLAN,
}


def found_in(impl: ModuleType, signal: Signal, data: bytes) -> str | None:
    """What ``unknown_field`` says of ``data``; a request it cannot read is as good as one with an
    unknown field (the pipeline then refuses it as malformed, as before the fold-in)."""
    try:
        return impl.unknown_field(signal, data)
    except MalformedRequest as exc:
        return f"unreadable: {exc}"


def resources(impl: ModuleType, signal: Signal, data: bytes) -> int:
    """How many plans ``data`` needs: 0 when its framing is broken (the rewrite refuses it first)."""
    try:
        return int(impl.count_resources(signal, data))
    except MalformedRequest:
        return 0


def check(impl: ModuleType, signal: Signal, data: bytes, plan_list: list[Plan]):
    """Rewrite ``data``; the result, after checking the guarantee: whenever ``unknown_field`` finds
    something in the output, the result says it may. None when the request is refused as malformed."""
    try:
        result = impl.rewrite(signal, data, plan_list)
    except MalformedRequest:
        return None
    where = found_in(impl, signal, result.data)
    assert where is None or result.maybe_unknown, (where, plan_list)
    return result


# ---- a field planted in every message of every request ----

@pytest.mark.parametrize(("signal", "path", "extra"), CASES)
def test_a_field_planted_anywhere_is_noted_whatever_the_plan(impl, signal, path, extra) -> None:
    data, clean = planted(path, extra)
    # one of the walk's own fields with another wire type (Span.status as a varint) is refused
    refused = check(impl, signal, data, [Plan()] * resources(impl, signal, data)) is None
    for name, plan in PLANS.items():
        result = check(impl, signal, data, [plan] * resources(impl, signal, data))
        assert (result is None) == refused, name
        if result is not None and name in ("pass-through", "dry-run"):  # sent as it is, and noted
            assert result.data == data and result.maybe_unknown, name
        clean_result = check(impl, signal, clean, [plan] * resources(impl, signal, clean))
        assert clean_result is not None and not clean_result.maybe_unknown, name


def test_both_implementations_note_the_same_requests(c_impl, py_impl) -> None:
    for signal, path, extra in (case.values for case in CASES[::5]):
        data, _clean = planted(path, extra)
        for plan in PLANS.values():
            plan_list = [plan] * resources(py_impl, signal, data)
            assert c_impl.rewrite(signal, data, plan_list) == py_impl.rewrite(signal, data, plan_list)


# ---- spans under sampling (the C rewriter checks a span in the pass that samples it) ----

def spans_request(extra: bytes, where: str, spans: tuple[int, ...] = (0, 1)) -> bytes:
    """Two spans, one sampled in (trace id all ff) and one out (all 00) at ratio 0.5, ``extra``
    planted in those of ``spans``, in the span itself or in one of its attributes (``where``)."""
    req = ExportTraceServiceRequest()
    added = req.resource_spans.add().scope_spans.add().spans
    for trace_id in (b"\xff" * 16, b"\x00" * 16):
        span = added.add(trace_id=trace_id, span_id=b"\x01" * 8, name="op", start_time_unix_nano=1,
                         end_time_unix_nano=2)
        span.attributes.append(kv("retry", 1))
        span.attributes.append(kv("note", "text"))
    # the attributes, in order: retry and note of the first span, then of the second
    return inject(Signal.TRACES, req.SerializeToString(),
                  {("Span", n) if where == "span" else ("KeyValue", 2 * n + 1): extra for n in spans})


@pytest.mark.parametrize("where", ["span", "attribute"])
@pytest.mark.parametrize("keep", ["none", "attr_at_least", "status_error"])
@pytest.mark.parametrize("dry_run", [False, True], ids=["live", "dry-run"])
def test_spans_sampled_in_and_out_with_a_field_otlp_does_not_define(impl, where: str, keep: str,
                                                                     dry_run: bool) -> None:
    extra = encode_varint(1000 << 3 | 2) + encode_varint(len(CARD)) + CARD
    keeps = () if keep == "none" else (KeepRule("keep", keep, "retry", 1) if keep != "status_error"
                                       else KeepRule("keep", "status_error"),)
    plan = Plan(sampling=Sampling("sample", 0.5, keeps), detectors=(PAN,), dry_run=dry_run)
    for spans in ((0, 1), (0,), (1,), ()):
        data = spans_request(extra, where, spans)
        result = check(impl, Signal.TRACES, data, [plan])
        assert result is not None
        assert result.items_out == (2 if keep == "attr_at_least" or dry_run else 1)
        # the second span is sampled out: noted only when it stays (kept by a rule, a dry run)
        leaves = 0 in spans or (1 in spans and result.items_out == 2)
        assert result.maybe_unknown == leaves, spans
        assert (impl.unknown_field(Signal.TRACES, result.data) is not None) == leaves


# ---- what the walk never enters: exponential histogram buckets, summary quantiles ----

def points_request() -> bytes:
    req = ExportMetricsServiceRequest()
    metrics = req.resource_metrics.add().scope_metrics.add().metrics
    exp = metrics.add(name="latency").exponential_histogram.data_points.add(count=3, scale=1)
    exp.positive.offset = 2
    exp.positive.bucket_counts.extend([1, 2])
    exp.negative.bucket_counts.extend([0])
    summary = metrics.add(name="sizes").summary.data_points.add(count=2, sum=3.0)
    summary.quantile_values.add(quantile=0.5, value=1.0)
    summary.quantile_values.add(quantile=0.99, value=2.0)
    return req.SerializeToString()


@pytest.mark.parametrize("target", [("ExponentialHistogramDataPoint.Buckets", 0),
                                    ("ExponentialHistogramDataPoint.Buckets", 1),
                                    ("SummaryDataPoint.ValueAtQuantile", 1)])
@pytest.mark.parametrize("plan", ["pass-through", "mask", "default", "drop-every-key"])
def test_buckets_and_quantiles_are_read_whole(impl, target: tuple[str, int], plan: str) -> None:
    clean = points_request()
    result = check(impl, Signal.METRICS, clean, [PLANS[plan]])
    assert result is not None and not result.maybe_unknown
    for extra in (encode_varint(3 << 3 | 0) + b"\x07",  # a field number Buckets / ValueAtQuantile lack
                  encode_varint(1 << 3 | 2) + b"\x01\x02",  # theirs, with another wire type
                  encode_varint(1000 << 3 | 2) + encode_varint(len(CARD)) + CARD):
        data = inject(Signal.METRICS, clean, {target: extra})
        result = check(impl, Signal.METRICS, data, [PLANS[plan]])
        assert result is not None and result.maybe_unknown
        assert impl.unknown_field(Signal.METRICS, result.data) is not None


def test_an_unreadable_bucket_is_noted_and_refused_as_before(impl) -> None:
    """Inside buckets the rewriter reads nothing: a truncated varint there was found by the
    allowlist's walk of the output (MalformedRequest, a 400). It still is: the rewrite notes it."""
    data = inject(Signal.METRICS, points_request(), {("ExponentialHistogramDataPoint.Buckets", 0): b"\x08"})
    result = check(impl, Signal.METRICS, data, [DEFAULT_PLAN])
    assert result is not None and result.maybe_unknown
    with pytest.raises(MalformedRequest, match="truncated varint"):
        impl.unknown_field(Signal.METRICS, result.data)


def test_a_field_of_the_request_itself_is_noted(impl) -> None:
    """Beside the resources (the rewriter walks each resource, not the request around them)."""
    for signal, plan in ((Signal.TRACES, DEFAULT_PLAN), (Signal.LOGS, Plan()), (Signal.METRICS, PLANS["stamp"])):
        data = spans_request(b"", "span") if signal is Signal.TRACES else points_request() \
            if signal is Signal.METRICS else b""
        smuggled = data + encode_varint(2 << 3 | 2) + encode_varint(len(CARD)) + CARD
        n = resources(impl, signal, smuggled)
        result = check(impl, signal, smuggled, [plan] * n)
        assert result is not None and result.maybe_unknown, signal
        assert CARD in result.data


# ---- planting fields in any message of a request ----

#: the walk's type that names a message only the allowlist knows in a parse error
NAMED = {BUCKETS: EDP, QUANTILE: SDP}


def _messages(buf: bytes, t: int, start: int, end: int, found: list[int]) -> None:
    """The types of the messages of data[start:end] (of type t) and below, in pre-order."""
    found.append(t)
    pos = start
    while pos < end:
        fn, wt, vs, ve, _ = next_field(buf, pos, end, NAMED.get(t, t))
        pos = ve
        mask, sub = ALLOWED[t].get(fn, (0, -1))
        if sub >= 0 and mask & (1 << wt):
            _messages(buf, sub, vs, ve, found)


def _rebuilt(buf: bytes, t: int, start: int, end: int, plant: dict[int, tuple[int, bytes]], seen: list[int]) -> bytes:
    """data[start:end] (of type t) with ``plant[i]`` (a place among its fields, the bytes) put in
    the i-th message met in pre-order, the length of every message around it re-encoded."""
    index = seen[0]
    seen[0] += 1
    fields = []
    pos = start
    while pos < end:
        tag_pos = pos
        fn, wt, vs, ve, _ = next_field(buf, pos, end, NAMED.get(t, t))
        pos = ve
        mask, sub = ALLOWED[t].get(fn, (0, -1))
        if sub >= 0 and mask & (1 << wt):
            inner = _rebuilt(buf, sub, vs, ve, plant, seen)
            fields.append(encode_varint(fn << 3 | 2) + encode_varint(len(inner)) + inner)
        else:
            fields.append(buf[tag_pos:ve])
    if index in plant:
        at, extra = plant[index]
        fields.insert(min(at, len(fields)), extra)
    return b"".join(fields)


def message_types(signal: Signal, data: bytes) -> list[int]:
    found: list[int] = []
    _messages(data, REQUEST_TYPE[signal], 0, len(data), found)
    return found


def inject(signal: Signal, data: bytes, where: dict[tuple[str, int], bytes]) -> bytes:
    """``data`` with bytes put at the end of messages named by (type name, n-th of that type)."""
    types = message_types(signal, data)
    plant = {}
    for (name, n), extra in where.items():
        indexes = [i for i, t in enumerate(types) if ALLOWED_NAMES[t] == name]
        plant[indexes[n]] = (1 << 30, extra)
    return _rebuilt(data, REQUEST_TYPE[signal], 0, len(data), plant, [0])


def field_bytes(fn: int, wt: int) -> bytes:
    tag = encode_varint(fn << 3 | wt)
    if wt == 0:
        return tag + encode_varint(4111111111111111)
    if wt == 1:
        return tag + b"\x01" * 8
    if wt == 5:
        return tag + b"\x01" * 4
    return tag + encode_varint(len(CARD)) + CARD


def strangers(t: int) -> list[bytes]:
    """Fields a message of type t must not carry: numbers it does not define, and its own with a
    wire type it does not take (a walked one so is malformed: the rewrite refuses it)."""
    out = []
    for fn in (1000, 99, 17, 16, (1 << 29) - 1, *ALLOWED[t]):
        mask = ALLOWED[t].get(fn, (0, -1))[0]
        out.extend(field_bytes(fn, wt) for wt in (0, 1, 2, 5) if not mask & (1 << wt))
    if t in (BUCKETS, QUANTILE):
        out.append(b"\x08")  # a truncated varint where nothing reads but the allowlist
    return out


@st.composite
def metric_requests_with_buckets(draw) -> ExportMetricsServiceRequest:
    """The strategies' metric requests, their data points given buckets and quantiles."""
    req = draw(requests_by_signal[Signal.METRICS])
    for rm in req.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                kind = m.WhichOneof("data")
                for dp in getattr(m, kind).data_points if kind else ():
                    if kind == "exponential_histogram":
                        for side in (dp.positive, dp.negative):
                            if draw(st.booleans()):
                                side.offset = draw(st.integers(-5, 5))
                                side.bucket_counts.extend(draw(st.lists(st.integers(0, 1 << 40), max_size=3)))
                    elif kind == "summary":
                        for q in draw(st.lists(st.floats(0, 1), max_size=2)):
                            dp.quantile_values.add(quantile=q, value=q * 10)
                    elif kind == "histogram":
                        dp.explicit_bounds.extend([1.0, 5.0])
                        dp.bucket_counts.extend([1, 2, 3])
    return req


@st.composite
def every_message(draw, signal: Signal) -> bytes:
    """:func:`full_request` with drawn trace ids and status codes (sampling keeps or drops)."""
    ids = draw(st.lists(st.binary(min_size=16, max_size=16), min_size=2, max_size=2))
    return full_request(signal, ids, draw(st.sampled_from([0, 2])))


def full_request(signal: Signal, trace_ids: list[bytes] | None = None, status: int = 2) -> bytes:
    """A resource of ``signal`` that holds every message the allowlist knows, at least once (the
    strategies' requests are often small)."""
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    values = {"s": "text 4111111111111111", "n": 7, "d": 1.5, "b": True, "a": ["x", 1, {"k": "v"}],
              "m": {"inner": {"deeper": ["y"]}, "bytes": b"\x01"}}
    attrs = [kv(k, v) for k, v in values.items()]
    if signal is Signal.TRACES:
        req = ExportTraceServiceRequest()
        rs = req.resource_spans.add(schema_url="u")
        rs.resource.attributes.extend(attrs)
        rs.resource.entity_refs.add(type="service", id_keys=["service.name"])
        ss = rs.scope_spans.add()
        ss.scope.attributes.extend(attrs)
        for trace_id in trace_ids or (b"\xff" * 16, b"\x00" * 16):
            span = ss.spans.add(trace_id=trace_id, span_id=b"\x01" * 8,
                                name="op", trace_state="ot=th:8", start_time_unix_nano=1, end_time_unix_nano=2)
            span.attributes.extend(attrs)
            span.events.add(name="ev", time_unix_nano=3).attributes.extend(attrs)
            span.links.add(trace_id=b"\x02" * 16, span_id=b"\x03" * 8).attributes.extend(attrs)
            span.status.code = status
        return req.SerializeToString()
    if signal is Signal.LOGS:
        logs = ExportLogsServiceRequest()
        rl = logs.resource_logs.add()
        rl.resource.attributes.extend(attrs)
        sl = rl.scope_logs.add()
        sl.scope.name = "lib"
        for body in ("plain", values["m"], values["a"]):
            record = sl.log_records.add(time_unix_nano=1, severity_number=9, event_name="e")
            record.body.CopyFrom(anyvalue(body))
            record.attributes.extend(attrs)
        return logs.SerializeToString()
    metrics = ExportMetricsServiceRequest()
    rm = metrics.resource_metrics.add()
    rm.resource.attributes.extend(attrs)
    sm = rm.scope_metrics.add()
    for kind in ("gauge", "sum", "histogram", "exponential_histogram", "summary"):
        metric = sm.metrics.add(name=kind)
        metric.metadata.extend(attrs[:2])
        point = getattr(metric, kind).data_points.add(time_unix_nano=1)
        point.attributes.extend(attrs)
        if kind != "summary":
            point.exemplars.add(as_int=1, span_id=b"\x01" * 8).filtered_attributes.extend(attrs)
        if kind == "histogram":
            point.bucket_counts.extend([1, 2])
            point.explicit_bounds.append(1.0)
        elif kind == "exponential_histogram":
            point.positive.bucket_counts.extend([1, 2])
            point.negative.offset = -1
            point.negative.bucket_counts.append(3)
        elif kind == "summary":
            point.quantile_values.add(quantile=0.5, value=1.0)
    return metrics.SerializeToString()


REQUESTS = {**requests_by_signal, Signal.METRICS: metric_requests_with_buckets()}
#: a few plans for the sweep below: one per kind of walk
SWEEP_PLANS = ("pass-through", "default", "hash-every-key", "sample", "stamp-reject")


@pytest.mark.parametrize("signal", list(Signal), ids=lambda s: s.value)
def test_a_field_planted_in_each_message_of_a_full_request_is_noted(impl, signal: Signal) -> None:
    """Every message type of a request that holds them all (first and last of each), every kind
    of stranger field, a few plans: realistic neighbours for the planted field (the C rewriter's
    fast paths take the common attribute, the common log body, a sampled-out span)."""
    full = full_request(signal)
    types = message_types(signal, full)
    for t in sorted(set(types)):
        indexes = [i for i, u in enumerate(types) if u == t]
        kinds = strangers(t)
        for index in {indexes[0], indexes[-1]}:
            for extra in (kinds[0], kinds[len(kinds) // 2], kinds[-1]):
                request = _rebuilt(full, REQUEST_TYPE[signal], 0, len(full), {index: (1 << 30, extra)}, [0])
                for name in SWEEP_PLANS:
                    result = check(impl, signal, request, [PLANS[name]] * resources(impl, signal, request))
                    if result is not None and name == "pass-through":  # sent as it is, and noted
                        assert result.maybe_unknown, (ALLOWED_NAMES[t], extra, name)
#: requests (each planted once per message type): OTLP_SIDECAR_PROPERTY_EXAMPLES / 10 of them
EXAMPLES = max(1, int(os.environ.get("OTLP_SIDECAR_PROPERTY_EXAMPLES", "150")) // 10)
PY = importlib.import_module("sidecar.rewrite._py")


@pytest.mark.parametrize("signal", list(Signal), ids=lambda s: s.value)
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
          phases=[Phase.explicit, Phase.generate])  # a failure names its planting: no minutes of shrinking
@given(data=st.data())
def test_fields_planted_at_random_are_noted_by_both_implementations(signal: Signal, data) -> None:
    """A random request (and a resource holding every message), random plans; then, one at a
    time, a stranger field planted in a random message of each type (one field a rewrite: two
    would hide each other from the one flag), and the request as it is."""
    payload = data.draw(REQUESTS[signal], label="request").SerializeToString()
    payload += data.draw(every_message(signal), label="a resource with every message")  # one request
    n = resources(PY, signal, payload)
    plan_list = data.draw(st.one_of(st.just([Plan()] * n), st.just([DEFAULT_PLAN] * n),
                                     st.lists(plans(), min_size=n, max_size=n)), label="plans")
    types = message_types(signal, payload)
    requests = {"as it is": payload}
    for t in sorted(set(types)):
        index = data.draw(st.sampled_from([i for i, u in enumerate(types) if u == t]))
        extra = data.draw(st.sampled_from(strangers(t)))
        place = 1 << 30 if extra == b"\x08" else data.draw(st.integers(0, 8))
        requests[f"{ALLOWED_NAMES[t]} #{index}: {extra!r} at {place}"] = _rebuilt(
            payload, REQUEST_TYPE[signal], 0, len(payload), {index: (place, extra)}, [0])
    c = load_c()
    for planted_as, request in requests.items():
        outcomes = []
        for impl in (PY, c) if c is not None else (PY,):
            result = check(impl, signal, request, plan_list)
            outcomes.append(result)
            if result is not None and result.maybe_unknown:
                # and nothing more: a request without such a field is not read twice (one in a
                # span sampling drops is not noted: nothing of it leaves)
                assert found_in(impl, signal, request) is not None, planted_as
        assert all(o == outcomes[0] for o in outcomes), planted_as  # the C rewriter and the twin agree
