"""The protobuf wire format as the rewriter reads and writes it: varints, tags, fields, and
the KeyValue / AnyValue readers. The twin of ``sidecar/_ext/wire.pxd`` and ``ext/wire.pyx``."""

from __future__ import annotations

from sidecar.rewrite._common import MalformedRequest
from sidecar.rewrite._schema import ANY, KV, NAMES
from sidecar.rewrite._state import State


def varint(buf: bytes, pos: int, end: int, t: int) -> tuple[int, int]:
    """(value, position after it) of the varint at ``pos`` in a message of type ``t``."""
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


def encode_varint(v: int) -> bytes:
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def len_field(fn: int, content: bytes) -> bytes:
    """A length-delimited field ``fn`` holding ``content``, encoded."""
    return encode_varint(fn << 3 | 2) + encode_varint(len(content)) + content


def next_field(buf: bytes, pos: int, end: int, t: int) -> tuple[int, int, int, int, int]:
    """Parse one field at ``pos``: (field number, wire type, value start, value end, varint)."""
    tag_pos = pos
    key, pos = varint(buf, pos, end, t)
    fn, wt = key >> 3, key & 7
    if key > 0xFFFFFFFF:
        raise MalformedRequest(f"invalid tag in {NAMES[t]} at offset {tag_pos}")
    if fn == 0:
        raise MalformedRequest(f"invalid field number 0 in {NAMES[t]} at offset {tag_pos}")
    if wt == 2:
        ln, pos = varint(buf, pos, end, t)
        if ln > end - pos:
            raise MalformedRequest(
                f"truncated length-delimited field {fn} in {NAMES[t]} at offset {tag_pos}")
        return fn, wt, pos, pos + ln, 0
    if wt == 0:
        v, pos2 = varint(buf, pos, end, t)
        return fn, wt, pos, pos2, v
    if wt == 1 or wt == 5:
        n = 8 if wt == 1 else 4
        if end - pos < n:
            raise MalformedRequest(
                f"truncated fixed{n * 8} field {fn} in {NAMES[t]} at offset {tag_pos}")
        return fn, wt, pos, pos + n, 0
    raise MalformedRequest(f"invalid wire type {wt} for field {fn} in {NAMES[t]} at offset {tag_pos}")


def wrong_wire_type(fn: int, wt: int, t: int, tag_pos: int) -> MalformedRequest:
    return MalformedRequest(
        f"wrong wire type {wt} for field {fn} in {NAMES[t]} at offset {tag_pos}")


def tag_size(buf: bytes, pos: int) -> int:
    """Bytes of the tag at ``pos`` (already checked): a tag may be written longer than it needs
    (``0xDA 0x00`` for ``0x5A``), and the length after it is where it is, not where the shortest
    encoding of the tag would put it."""
    end = pos
    while buf[end] >= 0x80:
        end += 1
    return end + 1 - pos


def signed(v: int) -> int:
    """A varint's uint64 as the int64 it encodes."""
    return v - (1 << 64) if v >= 1 << 63 else v


# ---- reading a KeyValue and an AnyValue ----

def kv_key_range(st: State, vs: int, ve: int) -> tuple[int, int]:
    """Where the key of a KeyValue is (the last `key` field, the one a parser keeps; (vs, vs)
    when absent)."""
    buf = st.data
    pos, ks, ke = vs, vs, vs
    while pos < ve:
        fn, wt, s, e, _ = next_field(buf, pos, ve, KV)
        if fn == 1 and wt == 2:
            ks, ke = s, e
        pos = e
    return ks, ke


def kv_key(st: State, vs: int, ve: int) -> bytes:
    """The key of a KeyValue (the last `key` field; b"" when absent)."""
    ks, ke = kv_key_range(st, vs, ve)
    return st.data[ks:ke]


def value_fields(st: State, vs: int, ve: int) -> list[tuple[int, int, int]]:
    """(tag position, value start, value end) of each `value` field of a KeyValue."""
    out = []
    pos = vs
    while pos < ve:
        tag_pos = pos
        fn, wt, s, e, _ = next_field(st.data, pos, ve, KV)
        if fn == 2 and wt == 2:
            out.append((tag_pos, s, e))
        pos = e
    return out


def any_kind(st: State, vs: int, ve: int) -> tuple[int, int, int, int]:
    """(kind = field number of the last oneof field or 0, its start, end, varint value)."""
    kind, ks, ke, kv = 0, vs, vs, 0
    pos = vs
    while pos < ve:
        fn, _wt, s, e, v = next_field(st.data, pos, ve, ANY)
        if 1 <= fn <= 8:
            kind, ks, ke, kv = fn, s, e, v
        pos = e
    return kind, ks, ke, kv
