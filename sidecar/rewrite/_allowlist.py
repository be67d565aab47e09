"""The egress allowlist, in pure Python: find, and drop, every field of a request that is not
OTLP's (``sidecar.rewrite._schema.ALLOWED``), at any depth.

The rewriter copies the fields it does not walk as they are, so a field OTLP does not define (a
number of a newer or older protocol, such as the deprecated field 1000 that the Collector still
turns into spans, or one a client made up) would leave the sidecar unscanned. The pipeline asks
:func:`unknown_field` of every rewritten request, and sends what :func:`without_unknown_fields`
leaves of one that has any. Both are compiled in ``sidecar._ext.rewrite``; this module is their
twin.
"""

from __future__ import annotations

from sidecar.rewrite._common import MalformedRequest
from sidecar.rewrite._schema import (
    ALLOWED,
    ALLOWED_NAMES,
    ARRAY,
    BUCKETS,
    EDP,
    KVLIST,
    MAX_NESTING,
    REQUEST_TYPE,
    SDP,
)
from sidecar.rewrite._wire import encode_varint, next_field
from sidecar.signals import Signal


def unknown_field(signal: Signal, data: bytes | bytearray | memoryview) -> str | None:
    """Where the first field of ``data`` that OTLP does not define is (``field 1000 (wire type 2)
    of ResourceSpans at offset 12``), or None when every field is OTLP's."""
    buf = bytes(data)
    return _first_unknown(buf, REQUEST_TYPE[signal], 0, len(buf), 0)


def _named(t: int) -> int:
    """The walk's type to name in a parse error (its messages know the walk's types only)."""
    return t if t < BUCKETS else EDP if t == BUCKETS else SDP


def _too_deep(sub: int, nest: int) -> bool:
    """Values nest (arrays, maps) at most MAX_NESTING levels, as the rewriter counts them."""
    return sub in (ARRAY, KVLIST) and nest >= MAX_NESTING


def _nested(sub: int, nest: int) -> int:
    return nest + 1 if sub in (ARRAY, KVLIST) else nest


def _first_unknown(buf: bytes, t: int, start: int, end: int, nest: int) -> str | None:
    pos = start
    fields = ALLOWED[t]
    while pos < end:
        tag_pos = pos
        fn, wt, vs, ve, _ = next_field(buf, pos, end, _named(t))
        pos = ve
        mask, sub = fields.get(fn, (0, -1))
        if not mask & (1 << wt):
            return f"field {fn} (wire type {wt}) of {ALLOWED_NAMES[t]} at offset {tag_pos}"
        if sub >= 0:
            if _too_deep(sub, nest):
                return f"{ALLOWED_NAMES[sub]} nested deeper than {MAX_NESTING} levels at offset {tag_pos}"
            found = _first_unknown(buf, sub, vs, ve, _nested(sub, nest))
            if found is not None:
                return found
    return None


def is_otlp(buf: bytes, t: int, fn: int, wt: int, vs: int, ve: int) -> bool:
    """Whether field ``fn`` (wire type ``wt``, its value in buf[vs:ve]) of a message of type ``t``,
    one the rewriter copies without walking it, is OTLP's, and all it holds: a sub-message only
    this allowlist enters (buckets, quantiles) is read whole; one it cannot read is not (the
    pipeline's check of the output then names the error). The rewriter's walk asks this of every
    field it does not walk (``RewriteResult.maybe_unknown``)."""
    mask, sub = ALLOWED[t].get(fn, (0, -1))
    if not mask & (1 << wt):
        return False
    if sub < 0:
        return True
    if sub in (ARRAY, KVLIST):  # values the walk enters itself; their depth is not known here
        return False
    try:
        return _first_unknown(buf, sub, vs, ve, 0) is None
    except MalformedRequest:
        return False


def without_unknown_fields(signal: Signal, data: bytes | bytearray | memoryview) -> tuple[bytes, int]:
    """(``data`` with every field OTLP does not define dropped, sub-messages re-encoded around what
    they lose; how many fields were dropped). MalformedRequest if it does not parse."""
    buf = bytes(data)
    out = bytearray()
    dropped = _copy_known(buf, REQUEST_TYPE[signal], 0, len(buf), 0, out)
    return (bytes(out), dropped) if dropped else (buf, 0)


def _copy_known(buf: bytes, t: int, start: int, end: int, nest: int, out: bytearray) -> int:
    pos = start
    dropped = 0
    fields = ALLOWED[t]
    while pos < end:
        tag_pos = pos
        fn, wt, vs, ve, _ = next_field(buf, pos, end, _named(t))
        pos = ve
        mask, sub = fields.get(fn, (0, -1))
        if not mask & (1 << wt) or (sub >= 0 and _too_deep(sub, nest)):
            dropped += 1
            continue
        if sub < 0:
            out += buf[tag_pos:ve]
            continue
        inner = bytearray()
        lost = _copy_known(buf, sub, vs, ve, _nested(sub, nest), inner)
        if not lost:
            out += buf[tag_pos:ve]
            continue
        dropped += lost
        out += encode_varint((fn << 3) | 2)
        out += encode_varint(len(inner))
        out += inner
    return dropped


__all__ = ["MalformedRequest", "is_otlp", "unknown_field", "without_unknown_fields"]
