"""Sampling (OTEP 235): the span's tracestate (W3C, with OpenTelemetry's `ot` entry) and the
keep rules that keep a span sampling would drop. The twin of ``sidecar/_ext/sampling.pxd`` and
``ext/sampling.pyx``; the walk that decides per span is ``_span`` in ``_py.py``."""

from __future__ import annotations

import struct
from collections.abc import Sequence

from sidecar.rewrite._common import (
    KEEP_AT_LEAST,
    KEEP_EQUALS,
    KEEP_STATUS_ERROR,
    VT_BOOL,
    VT_DOUBLE,
    VT_INT,
    VT_STR,
    CompiledKeep,
)
from sidecar.rewrite._state import State
from sidecar.rewrite._wire import any_kind, kv_key, signed, value_fields


def is_hex(b: bytes) -> bool:
    return all(48 <= c <= 57 or 97 <= c <= 102 for c in b)


def parse_tracestate(ts: bytes) -> tuple[list[bytes], int, int, int, list[bytes], bool]:
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
                    if 1 <= len(v) <= 14 and is_hex(v):
                        th = int(v.ljust(14, b"0"), 16)
                    continue
                if sk[:3] == b"rv:" and len(sk) == 17 and is_hex(sk[3:]):
                    rv = int(sk[3:], 16)
                if sk:
                    rest.append(sk)
            break
    return members, ot_index, rv, th, rest, has_th


def join_tracestate(members: list[bytes], ot_index: int, ot_value: bytes | None) -> bytes:
    """The tracestate with the `ot` entry (when any) first, 32 entries at most."""
    others = [m for i, m in enumerate(members) if i != ot_index]
    out = ([b"ot=" + ot_value] if ot_value else []) + others
    return b",".join(out[:32])


def threshold_hex(t: int) -> bytes:
    return (b"%014x" % t).rstrip(b"0") or b"0"


def keep_rule(st: State, status_code: int, attrs: Sequence[int]) -> int:
    """The count slot of the first keep rule the span meets, or -1. ``attrs``: the start and
    end of each attribute of the span, flat (as the C rewriter's ``St.attrs``)."""
    buf = st.data
    for k in st.plan.keeps:
        if k.kind == KEEP_STATUS_ERROR:
            if status_code == 2:
                return k.slot
            continue
        for i in range(0, len(attrs), 2):
            s, e = attrs[i], attrs[i + 1]
            if kv_key(st, s, e) != k.key:
                continue
            values = value_fields(st, s, e)
            if not values:
                continue
            _, vs, ve = values[-1]
            kind, ks, ke, kv = any_kind(st, vs, ve)
            if keep_matches(k, kind, buf, ks, ke, kv):
                return k.slot
    return -1


def keep_matches(k: CompiledKeep, kind: int, buf: bytes, ks: int, ke: int, kv: int) -> bool:
    if k.kind == KEEP_EQUALS:
        if k.vtype == VT_STR:
            return kind == 1 and buf[ks:ke] == k.svalue
        if k.vtype == VT_BOOL:
            return kind == 2 and (kv != 0) == (k.ivalue != 0)
        if k.vtype == VT_INT:
            return kind == 3 and signed(kv) == k.ivalue
        if k.vtype == VT_DOUBLE:
            return kind == 4 and ke - ks == 8 and bool(struct.unpack("<d", buf[ks:ke])[0] == k.dvalue)
        return False
    if k.kind == KEEP_AT_LEAST:
        if kind == 3:
            return signed(kv) >= k.ivalue if k.int_threshold else float(signed(kv)) >= k.dvalue
        if kind == 4:  # a double_value not written as 8 bytes matches nothing (as in ext/sampling)
            return ke - ks == 8 and bool(struct.unpack("<d", buf[ks:ke])[0] >= k.dvalue)
    return False
