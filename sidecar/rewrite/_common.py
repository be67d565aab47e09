"""What both rewriter implementations share: result types, the error, plan compilation.

Nothing here runs per span. :func:`compile_plan` turns a :class:`~sidecar.rewrite.plan.Plan`
into a :class:`CompiledPlan` once (memoized); the Cython module converts that further into
C structs, the pure-Python twin uses it as is.
"""

from __future__ import annotations

import functools
import json
import math
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sidecar.rewrite.plan import HASH_PREFIX, KeepRule, Plan

__all__ = [
    "ACT_DROP",
    "ACT_HASH",
    "ACT_KEEP",
    "ACT_MASK",
    "ACT_REDACT",
    "MAX_GROWTH",
    "CompiledPlan",
    "MalformedRequest",
    "RequestData",
    "ResourceInfo",
    "RewriteResult",
    "RewriteTooLarge",
    "compile_plan",
    "decode_attributes",
    "threshold_for_ratio",
]

#: what the rewriter reads a request from (in place; a memoryview must be contiguous)
RequestData = bytes | bytearray | memoryview

ACT_DROP, ACT_REDACT, ACT_HASH, ACT_MASK, ACT_KEEP = 1, 2, 3, 4, 5
_ACTION_CODES = {"drop": ACT_DROP, "redact": ACT_REDACT, "hash": ACT_HASH,
                 "mask_pan": ACT_MASK, "keep": ACT_KEEP}
_DETECTOR_CODES = {"mask_pan": ACT_MASK, "redact": ACT_REDACT, "hash": ACT_HASH}

KEEP_STATUS_ERROR, KEEP_EQUALS, KEEP_AT_LEAST = 1, 2, 3
VT_STR, VT_BOOL, VT_INT, VT_DOUBLE = 1, 2, 3, 4

MAX_THRESHOLD = 1 << 56
HASH_PREFIX_BYTES = HASH_PREFIX.encode()


class MalformedRequest(ValueError):
    """The request bytes are not a well-formed OTLP export request (answer 400 / INVALID_ARGUMENT)."""


#: what a rewrite may add beyond its input by default (``rewrite(max_growth=...)``; the sidecar
#: passes ``limits.max_rewrite_growth_bytes``): far above a legitimate request's (512 spans x 10
#: hashed attributes x ~70 bytes = 360 kB), far below what a request of many hashed attributes
#: would cost unbounded (800,000 in 39 kB of gzip: 76 MB)
MAX_GROWTH = 4 * 1024 * 1024
#: what one edit record is charged (the C rewriter's ``Edit``: four Py_ssize_t)
EDIT_BYTES = 32


class RewriteTooLarge(Exception):
    """The edits would add more than ``limit`` bytes to the request: its replacement bytes plus
    ``EDIT_BYTES`` per edit record, masks (same length, copied by the C rewriter) included. The
    walk stopped there: nothing past the limit was built (answer 413 / RESOURCE_EXHAUSTED)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the policies would grow this request by more than {limit} bytes")
        self.limit = limit


@dataclass(frozen=True)
class ResourceInfo:
    """One top-level Resource{Spans,Metrics,Logs} of a request."""

    index: int
    #: raw bytes of the Resource sub-message (b"" when absent): the plan-cache key
    key: bytes
    #: spans / data points / log records under it
    items: int

    @functools.cached_property
    def attributes(self) -> dict[str, str | bool | int | float]:
        """The resource's attributes, decoded on first use: only a plan-cache miss needs them,
        so the hot path (a cached plan) never pays for decoding."""
        return decode_attributes(self.key)


@dataclass(slots=True)
class RewriteResult:
    """The rewritten request and what the plans did to it. Made once a request: slots, not
    frozen (a frozen dataclass's ``__init__`` costs four times as much); nothing changes it."""

    data: bytes
    items_in: int
    items_out: int
    rejected_items: int
    sampled_out: int
    refusals: tuple[str, ...]
    counts: dict[tuple[str, str], int] = field(hash=False)
    #: whether ``data`` may hold a field OTLP does not define (the egress allowlist,
    #: ``unknown_field``, then reads it): False only when the walk met every field it copied and
    #: each was OTLP's, the sub-messages it does not enter (buckets, quantiles) checked whole.
    #: True by default: a result made anywhere else is checked
    maybe_unknown: bool = True


def threshold_for_ratio(ratio: float) -> int:
    """OTEP 235 rejection threshold for a sampling probability: ``2**56 - round(ratio * 2**56)``."""
    ratio = min(max(float(ratio), 0.0), 1.0)
    return MAX_THRESHOLD - round(ratio * MAX_THRESHOLD)


@dataclass(frozen=True)
class CompiledRule:
    pattern: bytes  # ASCII-lowercased
    is_glob: bool
    regex: re.Pattern[bytes] | None
    action: int
    slot: int


@dataclass(frozen=True)
class CompiledStamp:
    key: bytes
    value: bytes
    reject: bool
    stamp_slot: int
    refuse_slot: int
    reason: str


@dataclass(frozen=True)
class CompiledKeep:
    kind: int
    key: bytes
    vtype: int
    svalue: bytes
    ivalue: int
    dvalue: float
    int_threshold: bool  # attr_at_least with an int value: int attributes compare exactly
    slot: int


@dataclass(frozen=True, eq=False)
class CompiledPlan:
    """A plan in the form the walkers use. ``slots`` name the count keys by index."""

    slots: tuple[tuple[str, str], ...]
    noop: bool
    allow: bool
    refuse_slot: int
    refuse_reason: str
    rules: tuple[CompiledRule, ...]
    det_action: int  # 0: no detector
    det_slot: int
    stamps: tuple[CompiledStamp, ...]
    sampling: bool
    threshold: int
    sample_slot: int
    keeps: tuple[CompiledKeep, ...]
    redaction: bytes
    hash_key: bytes
    dry_run: bool


def _glob_regex(pattern: bytes) -> re.Pattern[bytes]:
    parts = []
    for ch in pattern:
        c = bytes([ch])
        parts.append(b".*" if c == b"*" else b"." if c == b"?" else re.escape(c))
    return re.compile(b"(?s:" + b"".join(parts) + b")", re.IGNORECASE)


def _ascii_lower(s: str) -> bytes:
    return s.encode("utf-8").lower()  # bytes.lower() touches ASCII letters only


def compile_plan(plan: Plan) -> CompiledPlan:
    """The compiled form of ``plan``; raises ValueError for a plan that cannot be applied.

    Made once per plan object and kept on it, so it lives exactly as long as the plan: the
    policy service's caches, bounded in entries and bytes, bound the compiled forms too (a
    separate cache here kept up to 4,096 of them, whatever those caches had evicted).
    """
    compiled: CompiledPlan | None = plan.__dict__.get("_compiled")
    if compiled is None:
        compiled = _compile(plan)
        object.__setattr__(plan, "_compiled", compiled)
    return compiled


def _compile(plan: Plan) -> CompiledPlan:
    slots: dict[tuple[str, str], int] = {}

    def slot(rule_id: str, action: str) -> int:
        return slots.setdefault((rule_id, action), len(slots))

    refuse_slot = slot(plan.refuse_rule_id or "policy", "refuse") if not plan.allow else -1
    rules = []
    for r in plan.attribute_rules:
        if r.action not in _ACTION_CODES:
            raise ValueError(f"attribute rule {r.rule_id}: unknown action {r.action!r}")
        pat = _ascii_lower(r.pattern)
        is_glob = "*" in r.pattern or "?" in r.pattern
        rules.append(CompiledRule(pat, is_glob, _glob_regex(pat) if is_glob else None,
                                  _ACTION_CODES[r.action], slot(r.rule_id, r.action)))
    det_action, det_slot = 0, -1
    for d in plan.detectors:
        if d.kind != "pan":
            raise ValueError(f"detector {d.rule_id}: unknown kind {d.kind!r}")
        if d.action not in _DETECTOR_CODES:
            raise ValueError(f"detector {d.rule_id}: unknown action {d.action!r}")
        if det_action == 0:  # the first pan detector acts; later ones are shadowed
            det_action, det_slot = _DETECTOR_CODES[d.action], slot(d.rule_id, d.action)
    stamps = []
    seen_keys: set[bytes] = set()
    for s in plan.stamps:
        if s.on_conflict not in ("overwrite", "reject"):
            raise ValueError(f"stamp {s.rule_id}: unknown on_conflict {s.on_conflict!r}")
        stamp_key = s.key.encode("utf-8")
        if stamp_key in seen_keys:
            continue
        seen_keys.add(stamp_key)
        reject = s.on_conflict == "reject"
        stamps.append(CompiledStamp(
            stamp_key, s.value.encode("utf-8"), reject, slot(s.rule_id, "stamp"),
            slot(s.rule_id, "refuse") if reject else -1,
            f"resource attribute {s.key!r} claims another value than this pod's ({s.rule_id})",
        ))
    sampling = plan.sampling is not None and plan.sampling.ratio < 1.0
    threshold, sample_slot, keeps = 0, -1, []
    if sampling:
        assert plan.sampling is not None
        threshold = threshold_for_ratio(plan.sampling.ratio)
        sample_slot = slot(plan.sampling.rule_id, "sample_out")
        for k in plan.sampling.keep:
            keeps.append(_compile_keep(k, slot(k.rule_id, "keep")))
    if plan.needs_hash_key() and not plan.hash_key:
        raise ValueError("the plan hashes values but carries no hash_key")
    return CompiledPlan(
        slots=tuple(slots), noop=plan.is_noop, allow=plan.allow, refuse_slot=refuse_slot,
        refuse_reason=plan.reason or "refused by policy", rules=tuple(rules),
        det_action=det_action, det_slot=det_slot, stamps=tuple(stamps), sampling=sampling,
        threshold=threshold, sample_slot=sample_slot, keeps=tuple(keeps),
        redaction=plan.redaction.encode("utf-8"), hash_key=bytes(plan.hash_key),
        dry_run=plan.dry_run,
    )


def _compile_keep(k: KeepRule, slot_: int) -> CompiledKeep:
    if k.kind == "status_error":
        return CompiledKeep(KEEP_STATUS_ERROR, b"", 0, b"", 0, 0.0, False, slot_)
    key = k.key.encode("utf-8")
    v = k.value
    if k.kind == "attr_equals":
        if isinstance(v, bool):
            return CompiledKeep(KEEP_EQUALS, key, VT_BOOL, b"", int(v), 0.0, False, slot_)
        if isinstance(v, int):
            return CompiledKeep(KEEP_EQUALS, key, VT_INT, b"", _clamp64(v), float(v), False, slot_)
        if isinstance(v, float):
            return CompiledKeep(KEEP_EQUALS, key, VT_DOUBLE, b"", 0, v, False, slot_)
        if isinstance(v, str):
            return CompiledKeep(KEEP_EQUALS, key, VT_STR, v.encode("utf-8"), 0, 0.0, False, slot_)
        raise ValueError(f"keep rule {k.rule_id}: attr_equals needs a str, bool, int or float value")
    if k.kind == "attr_at_least":
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ValueError(f"keep rule {k.rule_id}: attr_at_least needs an int or float value")
        if isinstance(v, int):
            return CompiledKeep(KEEP_AT_LEAST, key, VT_DOUBLE, b"", _clamp64(v), float(v), True,
                                slot_)
        return CompiledKeep(KEEP_AT_LEAST, key, VT_DOUBLE, b"", 0, float(v), False, slot_)
    raise ValueError(f"keep rule {k.rule_id}: unknown kind {k.kind!r}")


def _clamp64(v: int) -> int:
    return max(-(1 << 63), min((1 << 63) - 1, v))


# -- decoding resource attributes for the policy input (once per resource, not hot) --


def _read_varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise MalformedRequest(f"truncated varint at offset {pos}")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result & 0xFFFFFFFFFFFFFFFF, pos
        shift += 7


def _fields(buf: bytes, start: int, end: int) -> Iterator[tuple[int, int, Any]]:
    """Yield (field number, wire type, value or (start, end)) of one message, validating framing."""
    pos = start
    while pos < end:
        tag_pos = pos
        key, pos = _read_varint(buf, pos, end)
        fn, wt = key >> 3, key & 7
        if fn == 0:
            raise MalformedRequest(f"invalid field number 0 at offset {tag_pos}")
        if wt == 0:
            v, pos = _read_varint(buf, pos, end)
            yield fn, wt, v
        elif wt == 2:
            ln, pos = _read_varint(buf, pos, end)
            if ln > end - pos:
                raise MalformedRequest(
                    f"truncated length-delimited field {fn} at offset {tag_pos}")
            yield fn, wt, (pos, pos + ln)
            pos += ln
        elif wt == 1 or wt == 5:
            n = 8 if wt == 1 else 4
            if end - pos < n:
                raise MalformedRequest(f"truncated fixed-width field {fn} at offset {tag_pos}")
            yield fn, wt, buf[pos:pos + n]
            pos += n
        else:
            raise MalformedRequest(f"invalid wire type {wt} for field {fn} at offset {tag_pos}")


def _any_value(buf: bytes, start: int, end: int) -> object:
    """Decode an AnyValue to a JSON-able Python value (bytes as hex)."""
    value: object = ""
    for fn, wt, v in _fields(buf, start, end):
        if fn == 1 and wt == 2:
            value = buf[v[0]:v[1]].decode("utf-8", "replace")
        elif fn == 2 and wt == 0:
            value = v != 0
        elif fn == 3 and wt == 0:
            value = v - (1 << 64) if v >= 1 << 63 else v
        elif fn == 4 and wt == 1:
            value = _json_double(struct.unpack("<d", v)[0])
        elif fn == 5 and wt == 2:
            value = [_any_value(buf, s, e) for f2, w2, (s, e) in _len_fields(buf, v[0], v[1], 1)]
        elif fn == 6 and wt == 2:
            value = dict(_key_values(buf, *v))
        elif fn == 7 and wt == 2:
            value = buf[v[0]:v[1]].hex()
    return value


#: the smallest normal double; rego-cpp cannot read a smaller one (its arithmetic fails)
_SMALLEST_NORMAL = 2.2250738585072014e-308


def _json_double(value: float) -> float | str:
    """A double as JSON and the policy engines can hold it: NaN and the infinities as OTLP/JSON
    writes them, strings; a subnormal (below 2.2e-308) as 0.0, which rego-cpp can compare."""
    if math.isfinite(value):
        return value if abs(value) >= _SMALLEST_NORMAL else 0.0
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


def _len_fields(buf: bytes, start: int, end: int, want: int) -> Iterator[tuple[int, int, Any]]:
    for fn, wt, v in _fields(buf, start, end):
        if fn == want and wt == 2:
            yield fn, wt, v


def _key_values(buf: bytes, start: int, end: int) -> Iterator[tuple[str, object]]:
    for _, _, (s, e) in _len_fields(buf, start, end, 1):
        key, value = "", None
        for fn, wt, v in _fields(buf, s, e):
            if fn == 1 and wt == 2:
                key = buf[v[0]:v[1]].decode("utf-8", "replace")
            elif fn == 2 and wt == 2:
                value = _any_value(buf, *v)
        yield key, ("" if value is None else value)


def decode_attributes(resource: bytes) -> dict[str, str | bool | int | float]:
    """The attributes of a serialized Resource; nested values as compact JSON text."""
    out: dict[str, str | bool | int | float] = {}
    for key, value in _key_values(resource, 0, len(resource)):
        if isinstance(value, str | bool | int | float):
            out[key] = value
        else:  # an array or a map
            out[key] = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return out
