"""The OTLP messages the rewriter walks, and what it does with each of their fields.

Shared by the pure-Python twin and the Cython module (which copies the tables into C
arrays at import). Field codes: ``F_STR`` a string the value detectors scan, ``F_KV`` an
attribute (KeyValue), ``F_TS`` the span's tracestate (scanned too, unless sampling rewrites
it), ``F_SUB + type`` a sub-message.
"""

from __future__ import annotations

from sidecar.signals import Signal

(RS_SPANS, RS_METRICS, RS_LOGS, RESOURCE, SCOPE_SPANS, SCOPE_METRICS, SCOPE_LOGS, SCOPE, SPAN,
 EVENT, LINK, STATUS, LOG, METRIC, GAUGE, HIST, EXPH, SUMMARY, NDP, HDP, EDP, SDP, EXEMPLAR, KV,
 ANY, ARRAY, KVLIST, REQ_TRACES, REQ_METRICS, REQ_LOGS, ENTITY_REF) = range(31)
NAMES = ("ResourceSpans", "ResourceMetrics", "ResourceLogs", "Resource", "ScopeSpans",
         "ScopeMetrics", "ScopeLogs", "InstrumentationScope", "Span", "Span.Event", "Span.Link",
         "Status", "LogRecord", "Metric", "Gauge/Sum", "Histogram", "ExponentialHistogram",
         "Summary", "NumberDataPoint", "HistogramDataPoint", "ExponentialHistogramDataPoint",
         "SummaryDataPoint", "Exemplar", "KeyValue", "AnyValue", "ArrayValue", "KeyValueList",
         "ExportTraceServiceRequest", "ExportMetricsServiceRequest", "ExportLogsServiceRequest",
         "EntityRef")
#: arrays and maps inside attribute values may nest this deep (upb parses up to 100 levels)
MAX_NESTING = 30
F_STR, F_KV, F_TS, F_SUB = 1, 2, 3, 32  # F_SUB + type: descend into a sub-message
_S = F_SUB
FIELDS: dict[int, dict[int, int]] = {
    # every string field is scanned (schema URLs, scope names, metric names and units, trace
    # states too), so a card number has no field to hide in; attribute keys are the exception
    # (docs/policy.md, "The PCI guarantee")
    RS_SPANS: {1: _S + RESOURCE, 2: _S + SCOPE_SPANS, 3: F_STR},
    RS_METRICS: {1: _S + RESOURCE, 2: _S + SCOPE_METRICS, 3: F_STR},
    RS_LOGS: {1: _S + RESOURCE, 2: _S + SCOPE_LOGS, 3: F_STR},
    RESOURCE: {1: F_KV, 3: _S + ENTITY_REF},
    ENTITY_REF: {1: F_STR, 2: F_STR, 3: F_STR, 4: F_STR},  # schema URL, type, key names
    SCOPE_SPANS: {1: _S + SCOPE, 2: _S + SPAN, 3: F_STR},
    SCOPE_METRICS: {1: _S + SCOPE, 2: _S + METRIC, 3: F_STR},
    SCOPE_LOGS: {1: _S + SCOPE, 2: _S + LOG, 3: F_STR},
    SCOPE: {1: F_STR, 2: F_STR, 3: F_KV},
    SPAN: {3: F_TS, 5: F_STR, 9: F_KV, 11: _S + EVENT, 13: _S + LINK, 15: _S + STATUS},
    EVENT: {2: F_STR, 3: F_KV},
    LINK: {3: F_STR, 4: F_KV},
    STATUS: {2: F_STR},
    LOG: {3: F_STR, 5: _S + ANY, 6: F_KV, 12: F_STR},
    METRIC: {1: F_STR, 2: F_STR, 3: F_STR, 5: _S + GAUGE, 7: _S + GAUGE, 9: _S + HIST,
             10: _S + EXPH, 11: _S + SUMMARY, 12: F_KV},
    GAUGE: {1: _S + NDP},
    HIST: {1: _S + HDP},
    EXPH: {1: _S + EDP},
    SUMMARY: {1: _S + SDP},
    NDP: {7: F_KV, 5: _S + EXEMPLAR},
    HDP: {9: F_KV, 8: _S + EXEMPLAR},
    EDP: {1: F_KV, 11: _S + EXEMPLAR},
    SDP: {7: F_KV},
    EXEMPLAR: {7: F_KV},
    KV: {2: _S + ANY},
    ANY: {1: F_STR, 5: _S + ARRAY, 6: _S + KVLIST},
    ARRAY: {1: _S + ANY},
    KVLIST: {1: F_KV},
    REQ_TRACES: {1: _S + RS_SPANS},
    REQ_METRICS: {1: _S + RS_METRICS},
    REQ_LOGS: {1: _S + RS_LOGS},
}
ITEMS = frozenset({SPAN, LOG, NDP, HDP, EDP, SDP})

# ---- the egress allowlist: every field of OTLP, and nothing else, leaves the sidecar ----
# Fields the walk above does not list pass through the rewriter as they are. Those that are
# OTLP's (ids, times, counts, flags, numbers) are listed here with their wire types; any other
# field (a number OTLP does not define, or a defined one with another wire type: what an old SDK
# sends in the deprecated field 1000, or what a client smuggles) is dropped before export, since
# nothing scanned it (docs/policy.md, "The PCI guarantee").

#: messages only the allowlist descends into (the rewriter has nothing to scan in them)
BUCKETS, QUANTILE = 31, 32
NALLOWED = 33
#: wire types, as bits of a mask: varint, 64-bit, length-delimited, 32-bit
VARINT, I64, LEN, I32 = 1 << 0, 1 << 1, 1 << 2, 1 << 5
#: a packed repeated number is length-delimited, or one field per value
PACKED_I64, PACKED_VARINT = I64 | LEN, VARINT | LEN
KEEP: dict[int, dict[int, int]] = {
    RESOURCE: {2: VARINT},
    SCOPE: {4: VARINT},
    SPAN: {1: LEN, 2: LEN, 4: LEN, 6: VARINT, 7: I64, 8: I64, 10: VARINT, 12: VARINT, 14: VARINT, 16: I32},
    EVENT: {1: I64, 4: VARINT},
    LINK: {1: LEN, 2: LEN, 5: VARINT, 6: I32},
    STATUS: {3: VARINT},
    LOG: {1: I64, 2: VARINT, 7: VARINT, 8: I32, 9: LEN, 10: LEN, 11: I64},
    GAUGE: {2: VARINT, 3: VARINT},  # Sum's aggregation temporality and monotonicity (Gauge has none)
    HIST: {2: VARINT},
    EXPH: {2: VARINT},
    NDP: {2: I64, 3: I64, 4: I64, 6: I64, 8: VARINT},
    HDP: {2: I64, 3: I64, 4: I64, 5: I64, 6: PACKED_I64, 7: PACKED_I64, 10: VARINT, 11: I64, 12: I64},
    EDP: {2: I64, 3: I64, 4: I64, 5: I64, 6: VARINT, 7: I64, 10: VARINT, 12: I64, 13: I64, 14: I64},
    SDP: {2: I64, 3: I64, 4: I64, 5: I64, 8: VARINT},
    EXEMPLAR: {2: I64, 3: I64, 4: LEN, 5: LEN, 6: I64},
    KV: {1: LEN, 3: VARINT},  # the key (scanned by the attribute walk), key_strindex
    ANY: {2: VARINT, 3: VARINT, 4: I64, 7: LEN, 8: VARINT},
    BUCKETS: {1: VARINT, 2: PACKED_VARINT},
    QUANTILE: {1: I64, 2: I64},
}
#: sub-messages of OTLP the walk does not enter: the allowlist does
KEEP_SUB: dict[int, dict[int, int]] = {EDP: {8: BUCKETS, 9: BUCKETS}, SDP: {6: QUANTILE}}


def _allowed() -> dict[int, dict[int, tuple[int, int]]]:
    """For each message type: field number -> (wire-type mask, sub-message type or -1)."""
    table: dict[int, dict[int, tuple[int, int]]] = {t: {} for t in range(NALLOWED)}
    for t, fmap in FIELDS.items():
        for fn, code in fmap.items():
            sub = code - F_SUB if code >= F_SUB else KV if code == F_KV else -1
            table[t][fn] = (LEN, sub)
    for t, fmap in KEEP.items():
        for fn, mask in fmap.items():
            table[t][fn] = (mask, -1)
    for t, fmap in KEEP_SUB.items():
        for fn, sub in fmap.items():
            table[t][fn] = (LEN, sub)
    return table


ALLOWED = _allowed()
ALLOWED_NAMES = (*NAMES, "ExponentialHistogramDataPoint.Buckets", "SummaryDataPoint.ValueAtQuantile")


def _holding_items() -> frozenset[int]:
    """Types with items below them (not counting the items' own insides)."""
    holds: set[int] = set()
    changed = True
    while changed:
        changed = False
        for t, fmap in FIELDS.items():
            if t in holds or t in ITEMS:
                continue
            subs = {code - F_SUB for code in fmap.values() if code >= F_SUB}
            if subs & (ITEMS | holds):
                holds.add(t)
                changed = True
    return frozenset(holds)


#: what the quick walk of ``split_resources(validate=False)`` descends into
HOLDS_ITEMS = _holding_items()
REQUEST_TYPE = {Signal.TRACES: REQ_TRACES, Signal.METRICS: REQ_METRICS, Signal.LOGS: REQ_LOGS}
RS_TYPE = {Signal.TRACES: RS_SPANS, Signal.METRICS: RS_METRICS, Signal.LOGS: RS_LOGS}

