"""The pure-Python rewriter: reference, fallback and test oracle for ``ext/rewrite.pyx``.

It walks the protobuf wire format of an Export{Trace,Metrics,Logs}ServiceRequest
directly. Edits that keep the length (masking digits) are written in place into a
copy; every other edit is recorded as ``(start, end, replacement)`` over the input,
and the length prefixes of the enclosing messages are re-encoded as edits too. The
output is the input with the edits spliced in. ``ext/rewrite.pyx`` is a line-by-line
port of this module; keep the two in step (the tests cross them byte for byte).
"""

from __future__ import annotations

import hmac
import re
import struct
from collections.abc import Sequence

from sidecar.rewrite._common import (
    ACT_DROP,
    ACT_HASH,
    ACT_KEEP,
    ACT_MASK,
    ACT_REDACT,
    HASH_PREFIX_BYTES,
    KEEP_AT_LEAST,
    KEEP_EQUALS,
    KEEP_STATUS_ERROR,
    MAX_THRESHOLD,
    VT_BOOL,
    VT_DOUBLE,
    VT_INT,
    VT_STR,
    CompiledPlan,
    MalformedRequest,
    ResourceInfo,
    RewriteResult,
    compile_plan,
)
from sidecar.rewrite._schema import (
    ANY,
    ARRAY,
    F_KV,
    F_STR,
    F_SUB,
    F_TS,
    FIELDS,
    HOLDS_ITEMS,
    ITEMS,
    KV,
    KVLIST,
    MAX_NESTING,
    NAMES,
    REQUEST_TYPE,
    RESOURCE,
    RS_LOGS,
    RS_METRICS,
    RS_SPANS,
    RS_TYPE,
    SPAN,
    STATUS,
)
from sidecar.rewrite.plan import Plan
from sidecar.signals import Signal

__all__ = ["IMPLEMENTATION", "MalformedRequest", "ResourceInfo", "RewriteResult",
           "count_items", "find_pans", "rewrite", "split_resources"]

IMPLEMENTATION = "python"

_NULL_PLAN = compile_plan(Plan())


# ---- wire-format primitives ----

def _varint(buf: bytes, pos: int, end: int, t: int) -> tuple[int, int]:
    result = shift = 0
    start = pos
    while True:
        if pos >= end:
            raise MalformedRequest(f"truncated varint in {NAMES[t]} at offset {start}")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result & 0xFFFFFFFFFFFFFFFF, pos
        shift += 7
        if shift >= 70:
            raise MalformedRequest(f"varint too long in {NAMES[t]} at offset {start}")


def _encode_varint(v: int) -> bytes:
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def _len_field(fn: int, content: bytes) -> bytes:
    return _encode_varint(fn << 3 | 2) + _encode_varint(len(content)) + content


def _next_field(buf: bytes, pos: int, end: int, t: int) -> tuple[int, int, int, int, int]:
    """Parse one field at ``pos``: (field number, wire type, value start, value end, varint)."""
    tag_pos = pos
    key, pos = _varint(buf, pos, end, t)
    fn, wt = key >> 3, key & 7
    if key > 0xFFFFFFFF:
        raise MalformedRequest(f"invalid tag in {NAMES[t]} at offset {tag_pos}")
    if fn == 0:
        raise MalformedRequest(f"invalid field number 0 in {NAMES[t]} at offset {tag_pos}")
    if wt == 2:
        ln, pos = _varint(buf, pos, end, t)
        if ln > end - pos:
            raise MalformedRequest(
                f"truncated length-delimited field {fn} in {NAMES[t]} at offset {tag_pos}")
        return fn, wt, pos, pos + ln, 0
    if wt == 0:
        v, pos2 = _varint(buf, pos, end, t)
        return fn, wt, pos, pos2, v
    if wt == 1 or wt == 5:
        n = 8 if wt == 1 else 4
        if end - pos < n:
            raise MalformedRequest(
                f"truncated fixed{n * 8} field {fn} in {NAMES[t]} at offset {tag_pos}")
        return fn, wt, pos, pos + n, 0
    raise MalformedRequest(f"invalid wire type {wt} for field {fn} in {NAMES[t]} at offset {tag_pos}")


def _wrong_wire_type(fn: int, wt: int, t: int, tag_pos: int) -> MalformedRequest:
    return MalformedRequest(
        f"wrong wire type {wt} for field {fn} in {NAMES[t]} at offset {tag_pos}")


# ---- card numbers ----

_RUN = re.compile(rb"[0-9](?:[ -]?[0-9])*")
_HEX = frozenset(b"0123456789abcdefABCDEF")


def _brand_ok(d: bytes) -> bool:
    """Is there a brand that issues this many digits on this prefix? (corpus README table)"""
    n = len(d)
    p1, p2, p3, p4 = d[0] - 48, int(d[:2]), int(d[:3]), int(d[:4])
    if p1 == 4 and n in (13, 16, 19):
        return True
    if n == 16 and (51 <= p2 <= 55 or 2221 <= p4 <= 2720):
        return True
    if n == 15 and p2 in (34, 37):
        return True
    if n in (16, 19) and (p4 == 6011 or 644 <= p3 <= 649 or p2 == 65):
        return True
    if 16 <= n <= 19 and (3528 <= p4 <= 3589 or p2 in (62, 81) or 2200 <= p4 <= 2204):
        return True
    if n in (14, 16) and (300 <= p3 <= 305 or p2 in (36, 38, 39)):
        return True
    return 12 <= n <= 19 and (p4 in (5018, 5020, 5038, 5893, 6304, 6759) or 6761 <= p4 <= 6763)


def _luhn_ok(d: bytes) -> bool:
    total = 0
    for i, c in enumerate(reversed(d)):
        v = c - 48
        if i & 1:
            v *= 2
            if v > 9:
                v -= 9
        total += v
    return total % 10 == 0


def _in_uuid(s: bytes, i: int, j: int) -> bool:
    """Does an 8-4-4-4-12 hex group overlap s[i:j]?"""
    for st in range(max(0, i - 35), min(j - 1, len(s) - 36) + 1):
        for k in range(36):
            c = s[st + k]
            if k in (8, 13, 18, 23):
                if c != 45:
                    break
            elif c not in _HEX:
                break
        else:
            return True
    return False


def find_pans(s: bytes) -> list[tuple[int, int, bytes]]:
    """Card numbers in ``s``: (start, end, digits) by the rule in docs/rewriter.md."""
    found = []
    for m in _RUN.finditer(s):
        i, j = m.span()
        digits = m.group().replace(b" ", b"").replace(b"-", b"")
        if not 12 <= len(digits) <= 19:
            continue
        if i > 0:
            prev = s[i - 1]
            if prev == 43:  # '+': a phone number
                continue
            if prev in (44, 46) and i > 1 and 48 <= s[i - 2] <= 57:  # fraction of a number
                continue
        if _brand_ok(digits) and _luhn_ok(digits) and not _in_uuid(s, i, j):
            found.append((i, j, digits))
    return found


def _mask_digits(b: bytearray, i: int, j: int) -> None:
    """Replace every digit of b[i:j] but the last four with '*'."""
    keep = 4
    for k in range(j - 1, i - 1, -1):
        if 48 <= b[k] <= 57:
            if keep:
                keep -= 1
            else:
                b[k] = 42


def _hmac_hex(key: bytes, material: bytes) -> bytes:
    return HASH_PREFIX_BYTES + hmac.digest(key, material, "sha256").hex().encode()


# ---- tracestate (W3C) with the OpenTelemetry `ot` entry ----

def _is_hex(b: bytes) -> bool:
    return all(48 <= c <= 57 or 97 <= c <= 102 for c in b)


def _parse_tracestate(ts: bytes) -> tuple[list[bytes], int, int, int, list[bytes], bool]:
    """(members, index of `ot`, rv or -1, th or -1, other ot sub-keys, th present)."""
    members = [m for m in (x.strip(b" \t") for x in ts.split(b",")) if m]
    ot_index, rv, th, rest, has_th = -1, -1, -1, [], False
    for i, m in enumerate(members):
        if m[:3] == b"ot=":
            ot_index = i
            for sk in m[3:].split(b";"):
                if sk[:3] == b"th:":
                    has_th = True
                    v = sk[3:]
                    if 1 <= len(v) <= 14 and _is_hex(v):
                        th = int(v.ljust(14, b"0"), 16)
                    continue
                if sk[:3] == b"rv:" and len(sk) == 17 and _is_hex(sk[3:]):
                    rv = int(sk[3:], 16)
                if sk:
                    rest.append(sk)
            break
    return members, ot_index, rv, th, rest, has_th


def _join_tracestate(members: list[bytes], ot_index: int, ot_value: bytes | None) -> bytes:
    others = [m for i, m in enumerate(members) if i != ot_index]
    out = ([b"ot=" + ot_value] if ot_value else []) + others
    return b",".join(out[:32])


def _threshold_hex(t: int) -> bytes:
    return (b"%014x" % t).rstrip(b"0") or b"0"


# ---- the walk ----

class _State:
    __slots__ = ("counts", "data", "depth", "dry", "edits", "items_in", "plan", "sampled_out",
                 "ts_last", "ts_new", "work")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.work: bytearray | None = None
        self.edits: list[tuple[int, int, bytes]] = []
        self.plan: CompiledPlan = _NULL_PLAN
        self.counts: list[int] = []
        self.dry = False
        self.items_in = 0
        self.sampled_out = 0
        self.ts_new: bytes | None = None
        self.ts_last = -1
        self.depth = 0

    def edit(self, start: int, end: int, repl: bytes, at: int = -1) -> None:
        if self.dry:
            return
        if at < 0:
            self.edits.append((start, end, repl))
        else:
            self.edits.insert(at, (start, end, repl))

    def writable(self) -> bytearray:
        if self.work is None:
            self.work = bytearray(self.data)
        return self.work


def _walk(st: _State, t: int, start: int, end: int, active: bool) -> int:
    """Walk the fields of a message of type ``t`` in data[start:end]; return the size change."""
    if t in (ARRAY, KVLIST):  # the only messages that nest without bound
        if st.depth >= MAX_NESTING:
            raise MalformedRequest(
                f"values nested deeper than {MAX_NESTING} levels in {NAMES[t]} at offset {start}")
        st.depth += 1
        try:
            return _walk_fields(st, t, start, end, active)
        finally:
            st.depth -= 1
    return _walk_fields(st, t, start, end, active)


def _walk_fields(st: _State, t: int, start: int, end: int, active: bool) -> int:
    buf = st.data
    fmap = FIELDS[t]
    pos = start
    delta = 0
    plan = st.plan
    has_resource = False
    while pos < end:
        tag_pos = pos
        fn, wt, vs, ve, _ = _next_field(buf, pos, end, t)
        pos = ve
        code = fmap.get(fn, 0)
        if code == 0:
            continue
        if wt != 2:
            raise _wrong_wire_type(fn, wt, t, tag_pos)
        if code == F_STR:
            if active and plan.det_action:
                delta += _scan_string(st, tag_pos, vs, ve, fn)
        elif code == F_KV:
            if t == RESOURCE and active and plan.stamps:
                delta += _stamp_kv(st, tag_pos, vs, ve)
            else:
                delta += _kv(st, tag_pos, vs, ve, active)
        elif code == F_TS:
            if active and st.ts_new is not None:
                if tag_pos == st.ts_last:
                    repl = _len_field(3, st.ts_new)
                    st.edit(tag_pos, ve, repl)
                    delta += len(repl) - (ve - tag_pos)
                else:  # an earlier duplicate: the last one counts
                    st.edit(tag_pos, ve, b"")
                    delta -= ve - tag_pos
        else:
            sub = code - F_SUB
            if sub == RESOURCE:
                has_resource = True
            if sub == SPAN and active and plan.sampling:
                delta += _span(st, tag_pos, vs, ve)
                continue
            if sub in ITEMS:
                st.items_in += 1
            delta += _sub(st, sub, tag_pos, vs, ve, active)
    if active:
        if t == SPAN and st.ts_new is not None and st.ts_last < 0:
            repl = _len_field(3, st.ts_new)
            st.edit(end, end, repl)
            delta += len(repl)
        elif t == RESOURCE and plan.stamps:
            delta += _insert_stamps(st, end, start, t)
        elif t in (RS_SPANS, RS_METRICS, RS_LOGS) and plan.stamps and not has_resource:
            resource = b"".join(_len_field(1, _stamp_kv_bytes(s)) for s in plan.stamps)
            for s in plan.stamps:
                _count(st, s.stamp_slot, 1)
            repl = _len_field(1, resource)
            st.edit(end, end, repl)
            delta += len(repl)
    return delta


def _sub(st: _State, t: int, tag_pos: int, vs: int, ve: int, active: bool) -> int:
    """Walk a length-delimited sub-message; re-encode its length when its size changed."""
    at = len(st.edits)
    d = _walk(st, t, vs, ve, active)
    if d == 0:
        return 0
    len_pos = tag_pos + len(_encode_varint(_tag_at(st.data, tag_pos)))
    new_len = _encode_varint(ve - vs + d)
    st.edit(len_pos, vs, new_len, at)
    return d + len(new_len) - (vs - len_pos)


def _tag_at(buf: bytes, pos: int) -> int:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result
        shift += 7


def _count(st: _State, slot: int, n: int) -> None:
    st.counts[slot] += n


def _scan_string(st: _State, tag_pos: int, vs: int, ve: int, fn: int) -> int:
    """Apply the value detector to the string field data[vs:ve]."""
    plan = st.plan
    s = st.data[vs:ve]
    pans = find_pans(s)
    if not pans:
        return 0
    _count(st, plan.det_slot, len(pans))
    if plan.det_action == ACT_MASK:
        if not st.dry:
            w = st.writable()
            for i, j, _ in pans:
                _mask_digits(w, vs + i, vs + j)
        return 0
    if plan.det_action == ACT_REDACT:
        new = plan.redaction
    else:
        parts, last = [], 0
        for i, j, digits in pans:
            parts.append(s[last:i])
            parts.append(_hmac_hex(plan.hash_key, digits))
            last = j
        parts.append(s[last:])
        new = b"".join(parts)
    repl = _len_field(fn, new)
    st.edit(tag_pos, ve, repl)
    return len(repl) - (ve - tag_pos)


def _kv_key(st: _State, vs: int, ve: int) -> bytes:
    """The key of a KeyValue (the last `key` field; b"" when absent)."""
    buf = st.data
    pos, ks, ke = vs, vs, vs
    while pos < ve:
        fn, wt, s, e, _ = _next_field(buf, pos, ve, KV)
        if fn == 1 and wt == 2:
            ks, ke = s, e
        pos = e
    return buf[ks:ke]


def _match_rule(plan: CompiledPlan, key: bytes):
    low = key.lower()
    for r in plan.rules:
        if r.is_glob:
            assert r.regex is not None
            if r.regex.fullmatch(key):
                return r
        elif r.pattern == low:
            return r
    return None


def _kv(st: _State, tag_pos: int, vs: int, ve: int, active: bool) -> int:
    """An attribute (KeyValue field): apply the first matching rule, else the detectors."""
    plan = st.plan
    if not active or not plan.rules:
        return _sub(st, KV, tag_pos, vs, ve, active and plan.det_action != 0)
    rule = _match_rule(plan, _kv_key(st, vs, ve))
    if rule is None:
        return _sub(st, KV, tag_pos, vs, ve, True)
    _walk(st, KV, vs, ve, False)  # validate what the rule replaces or exempts
    _count(st, rule.slot, 1)  # a `keep` (an exemption) is counted too: each use is audited
    if rule.action == ACT_KEEP:
        return 0
    if rule.action == ACT_DROP:
        st.edit(tag_pos, ve, b"")
        return -(ve - tag_pos)
    at = len(st.edits)
    d = _replace_value(st, vs, ve, rule.action)
    if d == 0:
        return 0
    len_pos = tag_pos + len(_encode_varint(_tag_at(st.data, tag_pos)))
    new_len = _encode_varint(ve - vs + d)
    st.edit(len_pos, vs, new_len, at)
    return d + len(new_len) - (vs - len_pos)


def _value_fields(st: _State, vs: int, ve: int) -> list[tuple[int, int, int]]:
    """(tag position, value start, value end) of each `value` field of a KeyValue."""
    out = []
    pos = vs
    while pos < ve:
        tag_pos = pos
        fn, wt, s, e, _ = _next_field(st.data, pos, ve, KV)
        if fn == 2 and wt == 2:
            out.append((tag_pos, s, e))
        pos = e
    return out


def _any_kind(st: _State, vs: int, ve: int) -> tuple[int, int, int, int]:
    """(kind = field number of the last oneof field or 0, its start, end, varint value)."""
    kind, ks, ke, kv = 0, vs, vs, 0
    pos = vs
    while pos < ve:
        fn, _wt, s, e, v = _next_field(st.data, pos, ve, ANY)
        if 1 <= fn <= 8:
            kind, ks, ke, kv = fn, s, e, v
        pos = e
    return kind, ks, ke, kv


def _replace_value(st: _State, vs: int, ve: int, action: int) -> int:
    """Rewrite the value of the KeyValue in data[vs:ve] by ``action`` (redact, hash, mask)."""
    plan = st.plan
    buf = st.data
    values = _value_fields(st, vs, ve)
    delta = 0
    for tag_pos, _s, e in values[:-1]:  # earlier duplicates would merge into the value
        st.edit(tag_pos, e, b"")
        delta -= e - tag_pos
    if values:
        tag_pos, s, e = values[-1]
        kind, ks, ke, kv = _any_kind(st, s, e)
    else:
        tag_pos, s, e = ve, ve, ve
        kind, ks, ke, kv = 0, ve, ve, 0
    new: bytes | None
    if action == ACT_REDACT:
        new = plan.redaction
    elif action == ACT_HASH:
        if kind == 1 or kind == 7:
            material = buf[ks:ke]
        elif kind == 3:
            material = str(_signed(kv)).encode()
        else:
            material = buf[s:e]
        new = _hmac_hex(plan.hash_key, material)
    else:  # ACT_MASK
        if kind == 1:
            if not st.dry:
                w = st.writable()
                pos = s
                while pos < e:
                    fn, wt, fs, fe, _ = _next_field(buf, pos, e, ANY)
                    if fn == 1 and wt == 2:
                        _mask_digits(w, fs, fe)
                    pos = fe
            return delta
        if kind == 0 or kind == 2:
            return delta
        if kind == 3:
            b = bytearray(str(_signed(kv)).encode())
            _mask_digits(b, 0, len(b))
            new = bytes(b)
        else:
            new = plan.redaction
    repl = _len_field(2, _len_field(1, new))
    st.edit(tag_pos, e, repl)
    return delta + len(repl) - (e - tag_pos)


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _stamp_kv_bytes(s) -> bytes:
    return _len_field(1, s.key) + _len_field(2, _len_field(1, s.value))


def _stamp_kv(st: _State, tag_pos: int, vs: int, ve: int) -> int:
    """A resource attribute while stamps apply: a stamped key gets the stamp's value."""
    plan = st.plan
    key = _kv_key(st, vs, ve)
    for s in plan.stamps:
        if s.key == key:
            break
    else:
        return _kv(st, tag_pos, vs, ve, True)
    _walk(st, KV, vs, ve, False)
    values = _value_fields(st, vs, ve)
    if values:
        _, s_, e_ = values[-1]
        kind, ks, ke, _ = _any_kind(st, s_, e_)
        if len(values) == 1 and kind == 1 and st.data[ks:ke] == s.value and \
                _only_string(st, s_, e_):
            return 0
    _count(st, s.stamp_slot, 1)
    repl = _len_field(1, _stamp_kv_bytes(s))
    st.edit(tag_pos, ve, repl)
    return len(repl) - (ve - tag_pos)


def _only_string(st: _State, vs: int, ve: int) -> bool:
    pos = vs
    while pos < ve:
        fn, _wt, _s, e, _ = _next_field(st.data, pos, ve, ANY)
        if fn != 1:
            return False
        pos = e
    return True


def _insert_stamps(st: _State, end: int, start: int, t: int) -> int:
    """Append the stamps whose key the resource does not carry yet."""
    plan = st.plan
    present = set()
    pos = start
    while pos < end:
        fn, wt, s, e, _ = _next_field(st.data, pos, end, t)
        if fn == 1 and wt == 2:
            present.add(_kv_key(st, s, e))
        pos = e
    parts = []
    for s in plan.stamps:
        if s.key not in present:
            _count(st, s.stamp_slot, 1)
            parts.append(_len_field(1, _stamp_kv_bytes(s)))
    if not parts:
        return 0
    repl = b"".join(parts)
    st.edit(end, end, repl)
    return len(repl)


# ---- sampling ----

def _span(st: _State, tag_pos: int, vs: int, ve: int) -> int:
    """A span under a sampling plan: keep (and record the threshold) or drop it."""
    plan = st.plan
    buf = st.data
    st.items_in += 1
    trace_id = b""
    ts, ts_last = b"", -1
    status_code = 0
    attrs: list[tuple[int, int]] = []
    pos = vs
    while pos < ve:
        ftag = pos
        fn, wt, s, e, _ = _next_field(buf, pos, ve, SPAN)
        pos = e
        if wt != 2:
            continue
        if fn == 1:
            trace_id = buf[s:e]
        elif fn == 3:
            ts, ts_last = buf[s:e], ftag
        elif fn == 15:
            p = s
            while p < e:
                f2, w2, _s2, e2, v2 = _next_field(buf, p, e, STATUS)
                if f2 == 3 and w2 == 0:
                    status_code = v2
                p = e2
        elif fn == 9 and plan.keeps:
            attrs.append((s, e))
    members, ot_index, rv, th_old, rest, has_th = _parse_tracestate(ts)
    randomness = rv if rv >= 0 else int.from_bytes(trace_id[-7:], "big")
    threshold = max(plan.threshold, th_old)
    new_ts: bytes | None = None
    if threshold < MAX_THRESHOLD and randomness >= threshold:
        ot_value = b";".join([b"th:" + _threshold_hex(threshold), *rest])
        new_ts = _join_tracestate(members, ot_index, ot_value)
    else:
        slot = _keep_rule(st, status_code, attrs)
        if slot < 0:
            _count(st, plan.sample_slot, 1)
            st.sampled_out += 1
            _walk(st, SPAN, vs, ve, False)  # validate what is dropped
            st.edit(tag_pos, ve, b"")
            return -(ve - tag_pos)
        _count(st, slot, 1)
        if has_th:  # kept by a rule, not by the threshold: erase the threshold
            new_ts = _join_tracestate(members, ot_index, b";".join(rest))
    if new_ts == ts:
        new_ts = None
    st.ts_new, st.ts_last = new_ts, ts_last
    try:
        return _sub(st, SPAN, tag_pos, vs, ve, True)
    finally:
        st.ts_new, st.ts_last = None, -1


def _keep_rule(st: _State, status_code: int, attrs: list[tuple[int, int]]) -> int:
    """The count slot of the first keep rule the span meets, or -1."""
    buf = st.data
    for k in st.plan.keeps:
        if k.kind == KEEP_STATUS_ERROR:
            if status_code == 2:
                return k.slot
            continue
        for s, e in attrs:
            if _kv_key(st, s, e) != k.key:
                continue
            values = _value_fields(st, s, e)
            if not values:
                continue
            _, vs, ve = values[-1]
            kind, ks, ke, kv = _any_kind(st, vs, ve)
            if _keep_matches(k, kind, buf, ks, ke, kv):
                return k.slot
    return -1


def _keep_matches(k, kind: int, buf: bytes, ks: int, ke: int, kv: int) -> bool:
    if k.kind == KEEP_EQUALS:
        if k.vtype == VT_STR:
            return kind == 1 and buf[ks:ke] == k.svalue
        if k.vtype == VT_BOOL:
            return kind == 2 and (kv != 0) == (k.ivalue != 0)
        if k.vtype == VT_INT:
            return kind == 3 and _signed(kv) == k.ivalue
        if k.vtype == VT_DOUBLE:
            return kind == 4 and struct.unpack("<d", buf[ks:ke])[0] == k.dvalue
        return False
    if k.kind == KEEP_AT_LEAST:
        if kind == 3:
            return _signed(kv) >= k.ivalue if k.int_threshold else float(_signed(kv)) >= k.dvalue
        if kind == 4:
            return struct.unpack("<d", buf[ks:ke])[0] >= k.dvalue
    return False


# ---- the public API ----

def _as_bytes(data) -> bytes:
    """The request's bytes: any buffer (bytes, bytearray, a memoryview), never an int or str."""
    return data if isinstance(data, bytes) else bytes(memoryview(data))


def _resource_ranges(signal: Signal, data: bytes) -> list[tuple[int, int, int]]:
    """(tag position, start, end) of each top-level Resource* field, validating the framing."""
    t = REQUEST_TYPE[signal]
    out = []
    pos, end = 0, len(data)
    while pos < end:
        tag_pos = pos
        fn, wt, s, e, _ = _next_field(data, pos, end, t)
        pos = e
        if fn == 1:
            if wt != 2:
                raise _wrong_wire_type(fn, wt, t, tag_pos)
            out.append((tag_pos, s, e))
    return out


def count_items(signal: Signal, data) -> int:
    """Validate the request and count its spans / data points / log records."""
    data = _as_bytes(data)
    st = _State(data)
    _walk(st, REQUEST_TYPE[signal], 0, len(data), False)
    return st.items_in


def _resource_bytes(data: bytes, signal: Signal, s: int, e: int) -> bytes:
    t = RS_TYPE[signal]
    parts = []
    pos = s
    while pos < e:
        fn, wt, fs, fe, _ = _next_field(data, pos, e, t)
        if fn == 1 and wt == 2:
            parts.append(data[fs:fe])
        pos = fe
    return b"".join(parts)


def split_resources(signal: Signal, data, validate: bool = True, count: bool = True) -> list[ResourceInfo]:
    """One :class:`ResourceInfo` per top-level resource, in order.

    ``validate=False`` checks only the framing down to the items (enough to count them), not
    the items' insides: for a caller that hands the request to :func:`rewrite` next, which
    checks every byte. ``count=False`` (with ``validate=False``) does not go down to the items
    either: it checks the framing of the resources and all of each ``Resource``, and every
    ``items`` is 0.
    """
    data = _as_bytes(data)
    t = RS_TYPE[signal]
    out = []
    for index, (_tag, s, e) in enumerate(_resource_ranges(signal, data)):
        st = _State(data)
        if validate:
            _walk(st, t, s, e, False)
        else:
            _count_quickly(st, t, s, e, count)
        key = _resource_bytes(data, signal, s, e)
        out.append(ResourceInfo(index, key, st.items_in))
    return out


def _count_quickly(st: _State, t: int, start: int, end: int, descend: bool = True) -> None:
    """Count the items in data[start:end], checking the framing of the messages that hold them
    and all of the Resource; ``descend=False``: only this message's framing and the Resource."""
    buf = st.data
    fmap = FIELDS[t]
    pos = start
    while pos < end:
        tag_pos = pos
        fn, wt, vs, ve, _ = _next_field(buf, pos, end, t)
        pos = ve
        code = fmap.get(fn, 0)
        if code == 0:
            continue
        if wt != 2:
            raise _wrong_wire_type(fn, wt, t, tag_pos)
        sub = code - F_SUB
        if sub in ITEMS:
            st.items_in += 1
        elif sub in HOLDS_ITEMS:
            if descend:
                _count_quickly(st, sub, vs, ve)
        elif sub == RESOURCE:
            # checked whole: the policy engine decodes its attributes before rewrite() runs
            _walk(st, RESOURCE, vs, ve, False)


def _refusal(st: _State, signal: Signal, s: int, e: int) -> tuple[int, str] | None:
    """(count slot, reason) when the current plan refuses the resource in data[s:e]."""
    plan = st.plan
    if not plan.allow:
        return plan.refuse_slot, plan.refuse_reason
    if not any(x.reject for x in plan.stamps):
        return None
    buf = st.data
    t = RS_TYPE[signal]
    pos = s
    while pos < e:
        fn, wt, rs, re_, _ = _next_field(buf, pos, e, t)
        pos = re_
        if fn != 1 or wt != 2:
            continue
        p = rs
        while p < re_:
            f2, w2, ks, ke, _ = _next_field(buf, p, re_, RESOURCE)
            p = ke
            if f2 == 1 and w2 == 2:
                refusal = _stamp_conflict(st, ks, ke)
                if refusal is not None:
                    return refusal
    return None


def _stamp_conflict(st: _State, vs: int, ve: int) -> tuple[int, str] | None:
    key = _kv_key(st, vs, ve)
    for x in st.plan.stamps:
        if not x.reject or x.key != key:
            continue
        values = _value_fields(st, vs, ve)
        if values:
            _, s, e = values[-1]
            kind, ks, ke, _ = _any_kind(st, s, e)
            if kind == 1 and st.data[ks:ke] == x.value:
                continue
        return x.refuse_slot, x.reason
    return None


def rewrite(signal: Signal, data, plans: Sequence[Plan]) -> RewriteResult:
    """Apply ``plans`` (aligned with :func:`split_resources`) to the request ``data``."""
    data = _as_bytes(data)
    compiled = [compile_plan(p) for p in plans]
    ranges = _resource_ranges(signal, data)
    if len(ranges) != len(compiled):
        raise ValueError(f"{len(compiled)} plans for {len(ranges)} resources")
    st = _State(data)
    t = RS_TYPE[signal]
    counts: dict[tuple[str, str], int] = {}
    rejected = sampled = 0
    refusals: list[str] = []
    delta = 0
    if all(c.noop for c in compiled):
        return RewriteResult(data, *_pass_through(st, signal))
    for (tag_pos, s, e), plan in zip(ranges, compiled, strict=True):
        st.plan = plan
        st.dry = plan.dry_run
        st.counts = [0] * len(plan.slots)
        before_items, before_sampled = st.items_in, st.sampled_out
        refusal = None if plan.noop else _refusal(st, signal, s, e)
        if refusal is not None:
            _walk(st, t, s, e, False)
            n = st.items_in - before_items
            _count(st, refusal[0], n)
            if not plan.dry_run:
                rejected += n
                refusals.append(refusal[1])
                st.edit(tag_pos, e, b"")
                delta -= e - tag_pos
        else:
            delta += _sub(st, t, tag_pos, s, e, not plan.noop)
        if plan.dry_run:
            st.sampled_out = before_sampled
        for slot, n in enumerate(st.counts):
            if n:
                key = plan.slots[slot]
                counts[key] = counts.get(key, 0) + n
    sampled = st.sampled_out
    # the request's other fields were validated by _resource_ranges; nothing else to check
    out = _splice(st.work if st.work is not None else data, st.edits)
    return RewriteResult(out, st.items_in, st.items_in - rejected - sampled, rejected, sampled,
                         tuple(refusals), counts)


def _pass_through(st: _State, signal: Signal) -> tuple:
    _walk(st, REQUEST_TYPE[signal], 0, len(st.data), False)
    return st.items_in, st.items_in, 0, 0, (), {}


def _splice(src, edits: list[tuple[int, int, bytes]]) -> bytes:
    if not edits:
        return bytes(src)
    parts = []
    pos = 0
    for s, e, repl in edits:
        parts.append(src[pos:s])
        parts.append(repl)
        pos = e
    parts.append(src[pos:])
    return b"".join(parts)
