"""The naive baseline: decode with upb, apply the policy in Python, encode.

What a straightforward Python sidecar would do. It implements the same plan semantics as
the rewriter for trace requests (``naive_rewrite``), and for log and metric requests
(``naive_rewrite_logs``, ``naive_rewrite_metrics``: no sampling, every item kept) enough for
the benchmark; the test oracle in tests/rewrite/reference.py covers every case.
"""

from __future__ import annotations

import fnmatch
import hmac
import re

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from sidecar.rewrite.plan import HASH_PREFIX, Plan

_RUN = re.compile(r"[0-9](?:[ -]?[0-9])*")
_BRANDS = [("4", "4", (13, 16, 19)), ("51", "55", (16,)), ("2221", "2720", (16,)),
           ("34", "34", (15,)), ("37", "37", (15,)), ("6011", "6011", (16, 19)),
           ("644", "649", (16, 19)), ("65", "65", (16, 19)), ("3528", "3589", (16, 17, 18, 19)),
           ("300", "305", (14, 16)), ("36", "36", (14, 16)), ("38", "39", (14, 16)),
           ("62", "62", (16, 17, 18, 19)), ("81", "81", (16, 17, 18, 19)),
           ("2200", "2204", (16, 17, 18, 19))]
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def _luhn(d: str) -> bool:
    s = 0
    for i, c in enumerate(reversed(d)):
        v = int(c) * (2 if i % 2 else 1)
        s += v - 9 if v > 9 else v
    return s % 10 == 0


#: a run of at least 12 digits (the shortest card number): strings without one need no closer look
_LONG_RUN = re.compile(r"[0-9](?:[ -]?[0-9]){11}")


def _mask(s: str) -> str:
    if not _LONG_RUN.search(s):
        return s
    out = []
    last = 0
    uuids = [m.span() for m in _UUID.finditer(s)]
    for m in _RUN.finditer(s):
        d = m.group().replace(" ", "").replace("-", "")
        i, j = m.span()
        if not 12 <= len(d) <= 19 or (i and s[i - 1] == "+"):
            continue
        if i > 1 and s[i - 1] in ".," and s[i - 2].isdigit():
            continue
        if not any(lo <= d[:len(lo)] <= hi and len(d) in ls for lo, hi, ls in _BRANDS):
            continue
        if not _luhn(d) or any(a < j and i < b for a, b in uuids):
            continue
        piece = list(m.group())
        seen = 0
        for k in range(len(piece) - 1, -1, -1):
            if piece[k].isdigit():
                seen += 1
                if seen > 4:
                    piece[k] = "*"
        out.append(s[last:i])
        out.append("".join(piece))
        last = j
    if not out:
        return s
    out.append(s[last:])
    return "".join(out)


def _mask_all_but_last4(s: str) -> str:
    digits = sum(c in "0123456789" for c in s)
    out = []
    for c in s:
        if c in "0123456789":
            out.append("*" if digits > 4 else c)
            digits -= 1
        else:
            out.append(c)
    return "".join(out)


def _value(v: AnyValue, plan: Plan | None = None) -> None:
    """Mask card numbers in the strings of ``v``; with ``plan``, nested key/value pairs go
    through its attribute rules by their own keys, as the rewriter's do."""
    kind = v.WhichOneof("value")
    if kind == "string_value":
        v.string_value = _mask(v.string_value)
    elif kind == "array_value":
        for x in v.array_value.values:
            _value(x, plan)
    elif kind == "kvlist_value":
        if plan is not None:
            _attributes(v.kvlist_value.values, plan.attribute_rules, plan)
        else:
            for x in v.kvlist_value.values:
                _value(x.value)


#: the rule each key matched, per rules tuple (keyed by id; the tuple is kept alive beside it)
_MATCHED: dict[int, tuple[tuple, dict]] = {}


def _rule_for(key: str, rules: tuple):
    """The first rule whose pattern matches ``key``, remembered per key as any sensible proxy would."""
    entry = _MATCHED.get(id(rules))
    if entry is None or entry[0] is not rules:
        entry = _MATCHED[id(rules)] = (rules, {})
    matched = entry[1]
    if key not in matched:
        lowered = key.lower()
        matched[key] = next((r for r in rules if fnmatch.fnmatchcase(lowered, r.pattern)), None)
    return matched[key]


def _attributes(attrs, rules, plan: Plan) -> None:
    keep = []
    for a in attrs:
        rule = _rule_for(a.key, rules)
        if rule is None:
            _value(a.value, plan)
        elif rule.action == "drop":
            continue
        elif rule.action == "redact":
            a.value.CopyFrom(AnyValue(string_value=plan.redaction))
        elif rule.action == "hash":
            kind = a.value.WhichOneof("value")
            material = str(a.value.int_value) if kind == "int_value" else a.value.string_value
            digest = hmac.new(plan.hash_key, material.encode(), "sha256").hexdigest()
            a.value.CopyFrom(AnyValue(string_value=HASH_PREFIX + digest))
        elif rule.action == "mask_pan":
            kind = a.value.WhichOneof("value")
            if kind in ("string_value", "int_value"):
                text = a.value.string_value if kind == "string_value" else str(a.value.int_value)
                a.value.CopyFrom(AnyValue(string_value=_mask_all_but_last4(text)))
            elif kind not in (None, "bool_value"):
                a.value.CopyFrom(AnyValue(string_value=plan.redaction))
        keep.append(a)
    if len(keep) != len(attrs):
        kept = [type(a).FromString(a.SerializeToString()) for a in keep]
        del attrs[:]
        attrs.extend(kept)


def naive_rewrite(data: bytes, plan: Plan) -> bytes:
    req = ExportTraceServiceRequest.FromString(data)
    threshold = (1 << 56) - round(plan.sampling.ratio * (1 << 56)) if plan.sampling else 0
    th = (f"{threshold:014x}".rstrip("0") or "0") if plan.sampling else ""
    for rs in req.resource_spans:
        for st in plan.stamps:
            for a in rs.resource.attributes:
                if a.key == st.key:
                    a.value.string_value = st.value
                    break
            else:
                rs.resource.attributes.add(key=st.key).value.string_value = st.value
        _attributes(rs.resource.attributes, plan.attribute_rules, plan)
        for ss in rs.scope_spans:
            kept = []
            for span in ss.spans:
                if plan.sampling and int.from_bytes(span.trace_id[-7:], "big") < threshold:
                    attrs = {a.key: a.value for a in span.attributes}
                    if not (span.status.code == 2 or any(
                            (k.kind == "attr_equals" and k.key in attrs
                             and attrs[k.key].string_value == k.value)
                            or (k.kind == "attr_at_least" and k.key in attrs
                                and attrs[k.key].int_value >= k.value)
                            for k in plan.sampling.keep)):
                        continue
                elif plan.sampling:
                    span.trace_state = f"ot=th:{th}" + (
                        "," + span.trace_state if span.trace_state else "")
                span.name = _mask(span.name)
                _attributes(span.attributes, plan.attribute_rules, plan)
                for ev in span.events:
                    ev.name = _mask(ev.name)
                    _attributes(ev.attributes, plan.attribute_rules, plan)
                for ln in span.links:
                    _attributes(ln.attributes, plan.attribute_rules, plan)
                if span.status.message:
                    span.status.message = _mask(span.status.message)
                kept.append(span)
            if len(kept) != len(ss.spans):
                copies = [type(s).FromString(s.SerializeToString()) for s in kept]
                del ss.spans[:]
                ss.spans.extend(copies)
    return req.SerializeToString()


def _stamp(resource, plan: Plan) -> None:
    for st in plan.stamps:
        for a in resource.attributes:
            if a.key == st.key:
                a.value.string_value = st.value
                break
        else:
            resource.attributes.add(key=st.key).value.string_value = st.value
    _attributes(resource.attributes, plan.attribute_rules, plan)


def naive_rewrite_logs(data: bytes, plan: Plan) -> bytes:
    """Log requests: bodies (nested maps and arrays too) and event names scanned for card
    numbers, the attribute rules on record attributes (and nested pairs), the stamps."""
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    req = ExportLogsServiceRequest.FromString(data)
    for rl in req.resource_logs:
        _stamp(rl.resource, plan)
        for sl in rl.scope_logs:
            for lr in sl.log_records:
                if lr.HasField("body"):
                    _value(lr.body, plan)
                if lr.event_name:
                    lr.event_name = _mask(lr.event_name)
                _attributes(lr.attributes, plan.attribute_rules, plan)
    return req.SerializeToString()


def naive_rewrite_metrics(data: bytes, plan: Plan) -> bytes:
    """Metric requests: the attribute rules and card numbers on every data point's attributes
    and its exemplars' filtered attributes, the stamps."""
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
        ExportMetricsServiceRequest,
    )

    req = ExportMetricsServiceRequest.FromString(data)
    for rm in req.resource_metrics:
        _stamp(rm.resource, plan)
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                _attributes(metric.metadata, plan.attribute_rules, plan)
                kind = metric.WhichOneof("data")
                if kind is None:
                    continue
                for dp in getattr(metric, kind).data_points:
                    _attributes(dp.attributes, plan.attribute_rules, plan)
                    for ex in getattr(dp, "exemplars", ()):
                        _attributes(ex.filtered_attributes, plan.attribute_rules, plan)
    return req.SerializeToString()
