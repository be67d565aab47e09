"""The pure-Python rewriter: reference, fallback and test oracle for ``ext/rewrite.pyx``.

It walks the protobuf wire format of an Export{Trace,Metrics,Logs}ServiceRequest
directly. Edits that keep the length (masking digits) are written in place into a
copy; every other edit is recorded as ``(start, end, replacement)`` over the input,
and the length prefixes of the enclosing messages are re-encoded as edits too. The
output is the input with the edits spliced in. ``ext/rewrite.pyx`` is a line-by-line
port of this module; keep the two in step (the tests cross them byte for byte).

This module is the walk and the public API; its parts are beside it, each the twin of a
C module: ``_state.py`` (``sidecar/_ext/state.pxd``), ``_wire.py`` (``wire.pxd``,
``ext/wire.pyx``), ``_cards.py`` (``ext/cards.pyx``), ``_sampling.py`` (``sampling.pxd``,
``ext/sampling.pyx``) and ``_stamps.py`` (``ext/stamps.pyx``).
"""

from __future__ import annotations

import hmac
from array import array
from collections.abc import Sequence

from sidecar.rewrite._allowlist import is_otlp, unknown_field, without_unknown_fields
from sidecar.rewrite._cards import find_pans, mask_digits
from sidecar.rewrite._common import (
    ACT_DROP,
    ACT_HASH,
    ACT_KEEP,
    ACT_MASK,
    ACT_REDACT,
    HASH_PREFIX_BYTES,
    MAX_GROWTH,
    MAX_THRESHOLD,
    CompiledPlan,
    CompiledRule,
    MalformedRequest,
    RequestData,
    ResourceInfo,
    RewriteResult,
    RewriteTooLarge,
    compile_plan,
)
from sidecar.rewrite._sampling import join_tracestate, keep_rule, parse_tracestate, threshold_hex
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
from sidecar.rewrite._stamps import apply_stamp, find_stamp, insert_stamps, new_resource
from sidecar.rewrite._stamps import refusal as stamps_refusal
from sidecar.rewrite._state import State
from sidecar.rewrite._wire import (
    any_kind,
    encode_varint,
    kv_key,
    kv_key_range,
    len_field,
    next_field,
    signed,
    tag_size,
    value_fields,
    wrong_wire_type,
)
from sidecar.rewrite.plan import Plan
from sidecar.signals import Signal

__all__ = ["IMPLEMENTATION", "MalformedRequest", "ResourceInfo", "RewriteResult", "RewriteTooLarge",
           "count_items", "count_resources", "find_pans", "rewrite", "split_resources",
           "unknown_field", "without_unknown_fields"]

IMPLEMENTATION = "python"


def _hmac_hex(key: bytes, material: bytes) -> bytes:
    return HASH_PREFIX_BYTES + hmac.digest(key, material, "sha256").hex().encode()


# ---- the walk ----

def _walk(st: State, t: int, start: int, end: int, active: bool) -> int:
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


def _walk_fields(st: State, t: int, start: int, end: int, active: bool) -> int:
    buf = st.data
    fmap = FIELDS[t]
    pos = start
    delta = 0
    plan = st.plan
    has_resource = False
    while pos < end:
        tag_pos = pos
        fn, wt, vs, ve, _ = next_field(buf, pos, end, t)
        pos = ve
        code = fmap.get(fn, 0)
        if code == 0:  # copied as it is: is it OTLP's?
            if not st.unknown and not is_otlp(buf, t, fn, wt, vs, ve):
                st.unknown = True
            continue
        if wt != 2:
            raise wrong_wire_type(fn, wt, t, tag_pos)
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
                    repl = len_field(3, st.ts_new)
                    st.edit(tag_pos, ve, repl)
                    delta += len(repl) - (ve - tag_pos)
                else:  # an earlier duplicate: the last one counts
                    st.edit(tag_pos, ve, b"")
                    delta -= ve - tag_pos
            elif active and plan.det_action:  # left as it is: a string like any other
                delta += _scan_string(st, tag_pos, vs, ve, fn)
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
            repl = len_field(3, st.ts_new)
            st.edit(end, end, repl)
            delta += len(repl)
        elif t == RESOURCE and plan.stamps:
            delta += insert_stamps(st, end, start, t)
        elif t in (RS_SPANS, RS_METRICS, RS_LOGS) and plan.stamps and not has_resource:
            delta += new_resource(st, end)  # Resource{attributes: stamps}
    return delta


def _sub(st: State, t: int, tag_pos: int, vs: int, ve: int, active: bool) -> int:
    """Walk a length-delimited sub-message; re-encode its length when its size changed."""
    at = len(st.edits)
    d = _walk(st, t, vs, ve, active)
    if d == 0:
        return 0
    len_pos = tag_pos + tag_size(st.data, tag_pos)
    new_len = encode_varint(ve - vs + d)
    st.edit(len_pos, vs, new_len, at)
    return d + len(new_len) - (vs - len_pos)


def _scan_string(st: State, tag_pos: int, vs: int, ve: int, fn: int) -> int:
    """Apply the value detector to the string field data[vs:ve]."""
    plan = st.plan
    s = st.data[vs:ve]
    pans = find_pans(s)
    if not pans:
        return 0
    st.count(plan.det_slot, len(pans))
    if plan.det_action == ACT_MASK:
        if not st.dry:
            st.masked(vs, ve)
            w = st.writable()
            for i, j, _ in pans:
                mask_digits(w, vs + i, vs + j)
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
    repl = len_field(fn, new)
    st.edit(tag_pos, ve, repl)
    return len(repl) - (ve - tag_pos)


def _match_rule(plan: CompiledPlan, key: bytes) -> CompiledRule | None:
    low = key.lower()
    for r in plan.rules:
        if r.is_glob:
            assert r.regex is not None
            if r.regex.fullmatch(key):
                return r
        elif r.pattern == low:
            return r
    return None


def _kv(st: State, tag_pos: int, vs: int, ve: int, active: bool) -> int:
    """An attribute (KeyValue field): apply the first matching rule, else the detectors; a card
    number in its key is masked unless a rule drops or keeps (exempts) the attribute."""
    plan = st.plan
    if not active or not plan.rules:
        d = _sub(st, KV, tag_pos, vs, ve, active and plan.det_action != 0)
        if active and plan.det_action:
            _mask_keys(st, vs, ve)
        return d
    rule = _match_rule(plan, kv_key(st, vs, ve))
    if rule is None:
        d = _sub(st, KV, tag_pos, vs, ve, True)
        if plan.det_action:
            _mask_keys(st, vs, ve)
        return d
    _walk(st, KV, vs, ve, False)  # validate what the rule replaces or exempts
    st.count(rule.slot, 1)  # a `keep` (an exemption) is counted too: each use is audited
    if rule.action == ACT_KEEP:
        if plan.det_action:  # the exemption names the last key; an earlier `key` field is not it
            _mask_keys(st, vs, ve, but_last=True)
        return 0
    if rule.action == ACT_DROP:
        st.edit(tag_pos, ve, b"")
        return -(ve - tag_pos)
    at = len(st.edits)
    d = _replace_value(st, vs, ve, rule.action)
    if plan.det_action:
        _mask_keys(st, vs, ve)
    if d == 0:
        return 0
    len_pos = tag_pos + tag_size(st.data, tag_pos)
    new_len = encode_varint(ve - vs + d)
    st.edit(len_pos, vs, new_len, at)
    return d + len(new_len) - (vs - len_pos)


def _mask_keys(st: State, vs: int, ve: int, but_last: bool = False) -> None:
    """Mask the card numbers in the key of the KeyValue data[vs:ve] (every `key` field, or every
    one but the last, the key a parser keeps: the digits but the last four, whatever the
    detector's action: the length stays)."""
    buf = st.data
    spare = kv_key_range(st, vs, ve)[0] if but_last else -1
    pos = vs
    while pos < ve:
        fn, wt, s, e, _ = next_field(buf, pos, ve, KV)
        pos = e
        if fn != 1 or wt != 2 or s == spare:
            continue
        pans = find_pans(buf[s:e])
        if not pans:
            continue
        st.count(st.plan.det_slot, len(pans))
        if not st.dry:
            st.masked(s, e)
            w = st.writable()
            for i, j, _digits in pans:
                mask_digits(w, s + i, s + j)


def _replace_value(st: State, vs: int, ve: int, action: int) -> int:
    """Rewrite the value of the KeyValue in data[vs:ve] by ``action`` (redact, hash, mask)."""
    plan = st.plan
    buf = st.data
    values = value_fields(st, vs, ve)
    delta = 0
    for tag_pos, _s, e in values[:-1]:  # earlier duplicates would merge into the value
        st.edit(tag_pos, e, b"")
        delta -= e - tag_pos
    if values:
        tag_pos, s, e = values[-1]
        kind, ks, ke, kv = any_kind(st, s, e)
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
            material = str(signed(kv)).encode()
        else:
            material = buf[s:e]
        new = _hmac_hex(plan.hash_key, material)
    else:  # ACT_MASK
        others = _other_members(st, s, e, kind)
        if kind == 1 and not others:
            if not st.dry:
                w = st.writable()
                pos = s
                while pos < e:
                    fn, wt, fs, fe, _ = next_field(buf, pos, e, ANY)
                    if fn == 1 and wt == 2:
                        st.masked(fs, fe)
                        mask_digits(w, fs, fe)
                    pos = fe
            return delta
        if kind == 0 or (kind == 2 and not others):
            return delta
        if kind == 1 or kind == 2:
            # earlier members of the value (a string, an array of strings beside the string or
            # boolean a parser keeps) leave unscanned otherwise: the value becomes its last alone
            if kind == 1:
                b = bytearray(buf[ks:ke])
                mask_digits(b, 0, len(b))
                member = len_field(1, bytes(b))
            else:
                member = b"\x10" + encode_varint(kv)
            repl = len_field(2, member)
            st.edit(tag_pos, e, repl)
            return delta + len(repl) - (e - tag_pos)
        if kind == 3:
            b = bytearray(str(signed(kv)).encode())
            mask_digits(b, 0, len(b))
            new = bytes(b)
        else:
            new = plan.redaction
    repl = len_field(2, len_field(1, new))
    st.edit(tag_pos, e, repl)
    return delta + len(repl) - (e - tag_pos)


def _other_members(st: State, s: int, e: int, kind: int) -> bool:
    """Does the AnyValue in data[s:e] hold a field other than its last member's (``kind``)?"""
    pos = s
    while pos < e:
        fn, _wt, _fs, fe, _ = next_field(st.data, pos, e, ANY)
        if fn != kind:
            return True
        pos = fe
    return False


def _stamp_kv(st: State, tag_pos: int, vs: int, ve: int) -> int:
    """A resource attribute while stamps apply: a stamped key gets the stamp's value."""
    stamp = find_stamp(st.plan, kv_key(st, vs, ve))
    if stamp is None:
        return _kv(st, tag_pos, vs, ve, True)
    _walk(st, KV, vs, ve, False)
    return apply_stamp(st, stamp, tag_pos, vs, ve)


# ---- sampling ----

def _span(st: State, tag_pos: int, vs: int, ve: int) -> int:
    """A span under a sampling plan: keep (and record the threshold) or drop it."""
    plan = st.plan
    buf = st.data
    st.items_in += 1
    trace_id = b""
    ts, ts_last = b"", -1
    status_code = 0
    attrs = array("q")  # (start, end) of each attribute, flat: 16 bytes each (a tuple: ~120)
    pos = vs
    while pos < ve:
        ftag = pos
        fn, wt, s, e, _ = next_field(buf, pos, ve, SPAN)
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
                f2, w2, _s2, e2, v2 = next_field(buf, p, e, STATUS)
                if f2 == 3 and w2 == 0:
                    status_code = v2
                p = e2
        elif fn == 9 and plan.keeps:
            attrs.append(s)
            attrs.append(e)
    members, ot_index, rv, th_old, rest, has_th = parse_tracestate(ts)
    randomness = rv if rv >= 0 else int.from_bytes(trace_id[-7:], "big")
    threshold = max(plan.threshold, th_old)
    new_ts: bytes | None = None
    if threshold < MAX_THRESHOLD and randomness >= threshold:
        ot_value = b";".join([b"th:" + threshold_hex(threshold), *rest])
        new_ts = join_tracestate(members, ot_index, ot_value)
    else:
        slot = keep_rule(st, status_code, attrs)
        if slot < 0:
            st.count(plan.sample_slot, 1)
            st.sampled_out += 1
            unknown = st.unknown
            _walk(st, SPAN, vs, ve, False)  # validate what is dropped
            if not st.dry:  # nothing of it leaves: a field OTLP does not define in it is not noted
                st.unknown = unknown
            st.edit(tag_pos, ve, b"")
            return -(ve - tag_pos)
        st.count(slot, 1)
        if has_th:  # kept by a rule, not by the threshold: erase the threshold
            new_ts = join_tracestate(members, ot_index, b";".join(rest))
    if new_ts == ts or (new_ts is not None and plan.det_action and (find_pans(ts) or find_pans(new_ts))):
        # a card number in the tracestate: it is masked where it is, and its threshold is not
        # written (the new value would copy the number from its other members). One in the new
        # value only: its members moved (the `ot` entry first) or its threshold's trailing zeros
        # cut make digits a card number: the tracestate leaves as it came, scanned
        new_ts = None
    st.ts_new, st.ts_last = new_ts, ts_last
    try:
        return _sub(st, SPAN, tag_pos, vs, ve, True)
    finally:
        st.ts_new, st.ts_last = None, -1


# ---- the public API ----

def _as_bytes(data: RequestData) -> bytes:
    """The request's bytes: any buffer (bytes, bytearray, a memoryview), never an int or str."""
    return data if isinstance(data, bytes) else bytes(memoryview(data))


def _resource_ranges(signal: Signal, data: bytes, st: State | None = None) -> list[tuple[int, int, int]]:
    """(tag position, start, end) of each top-level Resource* field, validating the framing; the
    request's other fields (none is OTLP's) noted in ``st.unknown``."""
    t = REQUEST_TYPE[signal]
    out = []
    pos, end = 0, len(data)
    while pos < end:
        tag_pos = pos
        fn, wt, s, e, _ = next_field(data, pos, end, t)
        pos = e
        if fn == 1:
            if wt != 2:
                raise wrong_wire_type(fn, wt, t, tag_pos)
            out.append((tag_pos, s, e))
        elif st is not None and not is_otlp(data, t, fn, wt, s, e):
            st.unknown = True
    return out


def count_resources(signal: Signal, data: RequestData, stop_at: int = 0) -> int:
    """The top-level resources of a request, its framing checked at that level only, counted up
    to ``stop_at`` (0: all of them); nothing is made per resource (a request's cap is checked
    with it before :func:`split_resources`)."""
    data = _as_bytes(data)
    t = REQUEST_TYPE[signal]
    count = 0
    pos, end = 0, len(data)
    while pos < end and (stop_at <= 0 or count < stop_at):
        tag_pos = pos
        fn, wt, _, pos, _ = next_field(data, pos, end, t)
        if fn == 1:
            if wt != 2:
                raise wrong_wire_type(fn, wt, t, tag_pos)
            count += 1
    return count


def count_items(signal: Signal, data: RequestData) -> int:
    """Validate the request and count its spans / data points / log records."""
    data = _as_bytes(data)
    st = State(data)
    _walk(st, REQUEST_TYPE[signal], 0, len(data), False)
    return st.items_in


def _resource_bytes(data: bytes, signal: Signal, s: int, e: int) -> bytes:
    t = RS_TYPE[signal]
    parts = []
    pos = s
    while pos < e:
        fn, wt, fs, fe, _ = next_field(data, pos, e, t)
        if fn == 1 and wt == 2:
            parts.append(data[fs:fe])
        pos = fe
    return b"".join(parts)


def split_resources(signal: Signal, data: RequestData, validate: bool = True,
                    count: bool = True) -> list[ResourceInfo]:
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
        st = State(data)
        if validate:
            _walk(st, t, s, e, False)
        else:
            _count_quickly(st, t, s, e, count)
        key = _resource_bytes(data, signal, s, e)
        out.append(ResourceInfo(index, key, st.items_in))
    return out


def _count_quickly(st: State, t: int, start: int, end: int, descend: bool = True) -> None:
    """Count the items in data[start:end], checking the framing of the messages that hold them
    and all of the Resource; ``descend=False``: only this message's framing and the Resource."""
    buf = st.data
    fmap = FIELDS[t]
    pos = start
    while pos < end:
        tag_pos = pos
        fn, wt, vs, ve, _ = next_field(buf, pos, end, t)
        pos = ve
        code = fmap.get(fn, 0)
        if code == 0:
            continue
        if wt != 2:
            raise wrong_wire_type(fn, wt, t, tag_pos)
        sub = code - F_SUB
        if sub in ITEMS:
            st.items_in += 1
        elif sub in HOLDS_ITEMS:
            if descend:
                _count_quickly(st, sub, vs, ve)
        elif sub == RESOURCE:
            # checked whole: the policy engine decodes its attributes before rewrite() runs
            _walk(st, RESOURCE, vs, ve, False)


def rewrite(signal: Signal, data: RequestData, plans: Sequence[Plan],
            max_growth: int = MAX_GROWTH) -> RewriteResult:
    """Apply ``plans`` (aligned with :func:`split_resources`) to the request ``data``.

    Raise :class:`RewriteTooLarge` as soon as the edits would add more than ``max_growth``
    bytes (0: no cap): their replacement bytes plus ``EDIT_BYTES`` per edit record.

    The walk meets every field of the request; those it copies without walking them are checked
    against the egress allowlist as it goes (``RewriteResult.maybe_unknown``: only a result that
    says so needs ``unknown_field``)."""
    data = _as_bytes(data)
    compiled = [compile_plan(p) for p in plans]
    st = State(data, max(0, max_growth))
    ranges = _resource_ranges(signal, data, st)
    if len(ranges) != len(compiled):
        raise ValueError(f"{len(compiled)} plans for {len(ranges)} resources")
    t = RS_TYPE[signal]
    counts: dict[tuple[str, str], int] = {}
    rejected = sampled = 0
    refusals: list[str] = []
    delta = 0
    if all(c.noop for c in compiled):
        return RewriteResult(data, *_pass_through(st, signal), st.unknown)
    for (tag_pos, s, e), plan in zip(ranges, compiled, strict=True):
        st.plan = plan
        st.dry = plan.dry_run
        st.counts = [0] * len(plan.slots)
        before_items, before_sampled = st.items_in, st.sampled_out
        refusal = None if plan.noop else stamps_refusal(st, t, s, e)
        if refusal is not None:
            _walk(st, t, s, e, False)
            n = st.items_in - before_items
            st.count(refusal[0], n)
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
                         tuple(refusals), counts, st.unknown)


def _pass_through(
        st: State, signal: Signal
) -> tuple[int, int, int, int, tuple[str, ...], dict[tuple[str, str], int]]:
    _walk(st, REQUEST_TYPE[signal], 0, len(st.data), False)
    return st.items_in, st.items_in, 0, 0, (), {}


def _splice(src: bytes | bytearray, edits: list[tuple[int, int, bytes]]) -> bytes:
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
