"""Hypothesis strategies: random valid OTLP requests of the three signals, and random plans."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from sidecar.rewrite.plan import (
    AttributeRule,
    KeepRule,
    Plan,
    ResourceStamp,
    Sampling,
    ValueDetector,
)
from sidecar.signals import Signal

from .builders import anyvalue
from .pan_cases import GENERATED_NEGATIVES, GENERATED_POSITIVES

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus" / "pan_cases.json"
CORPUS_VALUES = [c["value"] for c in json.loads(CORPUS.read_text())["cases"]] if CORPUS.exists() else []

KEYS = [
    "http.url",
    "card.number",
    "Card.CVV",
    "payment.card.cvv",
    "user.id",
    "db.statement",
    "msg",
    "tenant",
    "x",
    "retry",
    "priority",
    "note",
    "",
    "4111 1111 1111 1111",  # keys holding card numbers (a map keyed by them, in a log body)
    "card 5555555555554444 x",
]
PATTERNS = ["*cvv*", "card.number", "user.*", "x", "msg?", "*", "?", "tenant", "note", "priority", "db.*",
            "*.number", "*er", "*Id", "us*", "*e", "a*r"]

card_like = st.sampled_from(GENERATED_POSITIVES + GENERATED_NEGATIVES + CORPUS_VALUES[:120])
text = st.one_of(
    st.text(max_size=30),
    card_like,
    st.builds(lambda a, c, b: f"{a}{c}{b}", st.text(max_size=8), card_like, st.text(max_size=8)),
    st.from_regex(r"[0-9 \-+.,a-f]{0,30}", fullmatch=True),
    st.from_regex(r"[０-９0-9 \-　－＋．，x]{0,40}", fullmatch=True),  # full-width digits among ASCII
)
scalars = st.one_of(
    text.map(lambda s: AnyValue(string_value=s)),
    st.booleans().map(lambda b: AnyValue(bool_value=b)),
    st.integers(-(1 << 63), (1 << 63) - 1).map(lambda i: AnyValue(int_value=i)),
    st.sampled_from([4111111111111111, 5, 100, 42]).map(lambda i: AnyValue(int_value=i)),
    st.floats(allow_nan=False).map(lambda d: AnyValue(double_value=d)),
    st.binary(max_size=8).map(lambda b: AnyValue(bytes_value=b)),
    st.just(AnyValue()),
)


def _array(values: list[AnyValue]) -> AnyValue:
    av = AnyValue()
    av.array_value.values.extend(values)
    return av


def _kvlist(pairs: list[tuple[str, AnyValue]]) -> AnyValue:
    av = AnyValue()
    av.kvlist_value.values.extend(KeyValue(key=k, value=v) for k, v in pairs)
    return av


anyvalues = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(_array),
        st.lists(st.tuples(st.sampled_from(KEYS), inner), max_size=3).map(_kvlist),
    ),
    max_leaves=6,
)
attributes = st.lists(st.tuples(st.sampled_from(KEYS), anyvalues), max_size=4)
tracestates = st.sampled_from(
    [
        "",
        "ot=th:8",
        "ot=rv:ffffffffffffff;th:c",
        "vendor=x,ot=th:0",
        "a=1,b=2",
        "card=4111111111111111,ot=th:8",
        "ot=th:0,pan=5555 5555 5555 4444",
        "ot=rv:00000000000001",
        " ot=th:e6666 , congo=t61rcWkgMzE",
        "ot=th:",
        "ot=th:zz;rv:1",
    ]
)


def _fill(target, pairs) -> None:
    for k, v in pairs:
        target.add(key=k).value.CopyFrom(v)


@st.composite
def resource(draw, rx) -> None:
    if draw(st.booleans()):
        rx.resource.SetInParent()
        _fill(rx.resource.attributes, draw(attributes))
        if draw(st.booleans()):
            rx.resource.attributes.add(key="tenant").value.CopyFrom(
                anyvalue(draw(st.sampled_from(["acme", "evil", 7])))
            )


@st.composite
def trace_requests(draw) -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    for _ in range(draw(st.integers(0, 3))):
        rs = req.resource_spans.add()
        draw(resource(rs))
        for _ in range(draw(st.integers(0, 2))):
            ss = rs.scope_spans.add()
            ss.scope.name = draw(st.sampled_from(["", "lib"]) | text)
            ss.scope.version = draw(text)
            ss.schema_url = draw(text)
            _fill(ss.scope.attributes, draw(attributes))
            for _ in range(draw(st.integers(0, 4))):
                sp = ss.spans.add(
                    trace_id=draw(st.binary(min_size=16, max_size=16)),
                    span_id=draw(st.binary(min_size=8, max_size=8)),
                    name=draw(text),
                    trace_state=draw(tracestates),
                )
                _fill(sp.attributes, draw(attributes))
                if draw(st.booleans()):
                    sp.status.code = draw(st.integers(0, 2))
                    sp.status.message = draw(text)
                for _ in range(draw(st.integers(0, 2))):
                    _fill(sp.events.add(name=draw(text)).attributes, draw(attributes))
                for _ in range(draw(st.integers(0, 1))):
                    _fill(sp.links.add(trace_id=b"\x01" * 16, trace_state=draw(text)).attributes, draw(attributes))
        rs.schema_url = draw(text)
    return req


@st.composite
def log_requests(draw) -> ExportLogsServiceRequest:
    req = ExportLogsServiceRequest()
    for _ in range(draw(st.integers(0, 3))):
        rl = req.resource_logs.add()
        draw(resource(rl))
        for _ in range(draw(st.integers(0, 2))):
            sl = rl.scope_logs.add()
            _fill(sl.scope.attributes, draw(attributes))
            for _ in range(draw(st.integers(0, 4))):
                lr = sl.log_records.add(severity_number=9, event_name=draw(text), severity_text=draw(text))
                if draw(st.booleans()):
                    lr.body.CopyFrom(draw(anyvalues))
                _fill(lr.attributes, draw(attributes))
    return req


@st.composite
def metric_requests(draw) -> ExportMetricsServiceRequest:
    req = ExportMetricsServiceRequest()
    for _ in range(draw(st.integers(0, 3))):
        rm = req.resource_metrics.add()
        draw(resource(rm))
        for _ in range(draw(st.integers(0, 2))):
            sm = rm.scope_metrics.add()
            for _ in range(draw(st.integers(0, 3))):
                m = sm.metrics.add(name=draw(st.just("m") | text), description=draw(text), unit=draw(text))
                _fill(m.metadata, draw(attributes))
                kind = draw(st.sampled_from(["gauge", "sum", "histogram", "exponential_histogram", "summary"]))
                data = getattr(m, kind)
                for _ in range(draw(st.integers(0, 3))):
                    dp = data.data_points.add()
                    _fill(dp.attributes, draw(attributes))
                    if kind != "summary" and draw(st.booleans()):
                        _fill(dp.exemplars.add().filtered_attributes, draw(attributes))
                if kind in ("gauge", "sum", "histogram", "exponential_histogram", "summary") and not data.data_points:
                    data.SetInParent()
    return req


requests_by_signal = {Signal.TRACES: trace_requests(), Signal.LOGS: log_requests(), Signal.METRICS: metric_requests()}

keep_rules = st.one_of(
    st.just(KeepRule("keep.err", "status_error")),
    st.builds(lambda v: KeepRule("keep.eq", "attr_equals", "priority", v), st.sampled_from(["high", 5, True, 1.5])),
    st.builds(lambda v: KeepRule("keep.ge", "attr_at_least", "retry", v), st.sampled_from([3, 2.5, 0])),
)


@st.composite
def plans(draw) -> Plan:
    rules = tuple(
        AttributeRule(f"r{i}", pat, action)
        for i, (pat, action) in enumerate(
            draw(
                st.lists(
                    st.tuples(
                        st.sampled_from(PATTERNS), st.sampled_from(["drop", "redact", "hash", "mask_pan", "keep"])
                    ),
                    max_size=6,  # four or more: the C rewriter's rule index and cache (fewer: its scan)
                )
            )
        )
    )
    detectors = tuple(
        ValueDetector(f"d{i}", "pan", a)
        for i, a in enumerate(draw(st.lists(st.sampled_from(["mask_pan", "redact", "hash"]), max_size=2)))
    )
    stamps = tuple(
        ResourceStamp("tenant", "tenant", "acme", c)
        for c in draw(st.lists(st.sampled_from(["overwrite", "reject"]), max_size=1))
    )
    sampling = draw(
        st.one_of(
            st.none(),
            st.builds(
                lambda r, k: Sampling("sample", r, tuple(k)),
                st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0]) | st.floats(0, 1),
                st.lists(keep_rules, max_size=2),
            ),
        )
    )
    allow = draw(st.sampled_from([True] * 9 + [False]))
    return Plan(
        allow=allow,
        reason="" if allow else "denied",
        refuse_rule_id="policy.deny",
        attribute_rules=rules,
        detectors=detectors,
        stamps=stamps,
        sampling=sampling,
        hash_key=b"k3y",
        dry_run=draw(st.sampled_from([False] * 5 + [True])),
    )
