"""Resource stamps (set a resource attribute, e.g. the tenant) and the refusal of a resource
(the plan refuses it, or a rejecting stamp conflicts). The twin of ``ext/stamps.pyx``."""

from __future__ import annotations

from sidecar.rewrite._common import CompiledPlan, CompiledStamp
from sidecar.rewrite._schema import RESOURCE
from sidecar.rewrite._state import State
from sidecar.rewrite._wire import any_kind, kv_key, len_field, next_field, value_fields


def stamp_kv_bytes(s: CompiledStamp) -> bytes:
    """KeyValue{key, string value} of the stamp."""
    return len_field(1, s.key) + len_field(2, len_field(1, s.value))


def find_stamp(plan: CompiledPlan, key: bytes) -> CompiledStamp | None:
    for s in plan.stamps:
        if s.key == key:
            return s
    return None


def apply_stamp(st: State, stamp: CompiledStamp, tag_pos: int, vs: int, ve: int) -> int:
    """The resource attribute in data[vs:ve] (already checked) has the stamp's key: replace it
    by the stamp unless it is the stamp's KeyValue as encoders write it (one key, one value of
    one string): an earlier `key` field or value member, which a parser drops, would otherwise
    leave unscanned. Returns the size change."""
    if st.data[vs:ve] == stamp_kv_bytes(stamp):
        return 0
    st.count(stamp.stamp_slot, 1)
    repl = len_field(1, stamp_kv_bytes(stamp))
    st.edit(tag_pos, ve, repl)
    return len(repl) - (ve - tag_pos)


def insert_stamps(st: State, end: int, start: int, t: int) -> int:
    """Append the stamps whose key the resource does not carry yet."""
    plan = st.plan
    present = set()
    pos = start
    while pos < end:
        fn, wt, vs, ve, _ = next_field(st.data, pos, end, t)
        if fn == 1 and wt == 2:
            present.add(kv_key(st, vs, ve))
        pos = ve
    parts = []
    for stamp in plan.stamps:
        if stamp.key not in present:
            st.count(stamp.stamp_slot, 1)
            parts.append(len_field(1, stamp_kv_bytes(stamp)))
    if not parts:
        return 0
    repl = b"".join(parts)
    st.edit(end, end, repl)
    return len(repl)


def new_resource(st: State, end: int) -> int:
    """Insert Resource{attributes: the stamps} at ``end``, as field 1, for a resource that has
    no Resource message. Returns the size change."""
    plan = st.plan
    resource = b"".join(len_field(1, stamp_kv_bytes(s)) for s in plan.stamps)
    for s in plan.stamps:
        st.count(s.stamp_slot, 1)
    repl = len_field(1, resource)
    st.edit(end, end, repl)
    return len(repl)


def refusal(st: State, t: int, s: int, e: int) -> tuple[int, str] | None:
    """(count slot, reason) when the current plan refuses the resource (of message type ``t``)
    in data[s:e]."""
    plan = st.plan
    if not plan.allow:
        return plan.refuse_slot, plan.refuse_reason
    if not any(x.reject for x in plan.stamps):
        return None
    buf = st.data
    pos = s
    while pos < e:
        fn, wt, rs, re_, _ = next_field(buf, pos, e, t)
        pos = re_
        if fn != 1 or wt != 2:
            continue
        p = rs
        while p < re_:
            f2, w2, ks, ke, _ = next_field(buf, p, re_, RESOURCE)
            p = ke
            if f2 == 1 and w2 == 2:
                conflict = stamp_conflict(st, ks, ke)
                if conflict is not None:
                    return conflict
    return None


def stamp_conflict(st: State, vs: int, ve: int) -> tuple[int, str] | None:
    """(count slot, reason) of a rejecting stamp the attribute in data[vs:ve] conflicts with."""
    key = kv_key(st, vs, ve)
    for x in st.plan.stamps:
        if not x.reject or x.key != key:
            continue
        values = value_fields(st, vs, ve)
        if values:
            _, s, e = values[-1]
            kind, ks, ke, _ = any_kind(st, s, e)
            if kind == 1 and st.data[ks:ke] == x.value:
                continue
        return x.refuse_slot, x.reason
    return None
