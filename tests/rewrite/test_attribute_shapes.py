"""Attributes in every shape the C rewriter reads in one pass, and just outside it.

The C walk reads the common attribute (a key under 128 bytes, then one value holding one string
under 128 bytes, an int, a double, a bool, or nothing) in one pass and leaves every other shape
to the full walk. These requests sit on both sides of each limit, in span, log record and data
point attributes and in log bodies, and each is rewritten by both implementations: the same
bytes, the same counts, and every card number masked.
"""

from __future__ import annotations

import struct

import pytest

from sidecar.rewrite._wire import encode_varint, len_field
from sidecar.rewrite.plan import AttributeRule, Plan, ValueDetector
from sidecar.signals import Signal

PAN = b"4111111111111111"
MASKED = b"************1111"
DETECT = ValueDetector("pci.pan", "pan", "mask_pan")
PLANS = {
    "detector": Plan(detectors=(DETECT,)),
    "rules": Plan(attribute_rules=(
        *(AttributeRule(f"r{i}", f"*nomatch{i}*", "drop") for i in range(6)),
        AttributeRule("drop.secret", "secret.*", "drop"),
        AttributeRule("mask.card", "card.number", "mask_pan"),
    ), detectors=(DETECT,)),
}


def varint_field(fn: int, v: int) -> bytes:
    return encode_varint(fn << 3) + encode_varint(v)


def keyvalue(key: bytes, *values: bytes) -> bytes:
    """KeyValue{key, value...} (more than one value field: a shape the one-pass read leaves)."""
    return len_field(1, key) + b"".join(len_field(2, v) for v in values)


def string(s: bytes) -> bytes:
    return len_field(1, s)


def text(n: int) -> bytes:
    """n bytes of text ending in a card number (n >= 20)."""
    return b"x" * (n - len(PAN) - 1) + b" " + PAN


#: (name, KeyValue bytes): the one-pass shapes and their neighbours
SHAPES = [
    ("short string", keyvalue(b"http.url", string(text(40)))),
    ("string of 127 bytes", keyvalue(b"note", string(text(127)))),
    ("string of 128 bytes (two-byte length)", keyvalue(b"note", string(text(128)))),
    ("key of 127 bytes", keyvalue(b"k" * 127, string(text(30)))),
    ("key of 128 bytes", keyvalue(b"k" * 128, string(text(30)))),
    ("empty value", keyvalue(b"empty")),
    ("empty AnyValue", keyvalue(b"empty", b"")),
    ("empty string", keyvalue(b"empty", string(b""))),
    ("int", keyvalue(b"n", varint_field(3, 4111111111111111))),
    ("negative int", keyvalue(b"n", varint_field(3, (1 << 64) - 5))),
    ("double", keyvalue(b"d", b"\x21" + struct.pack("<d", 1.5))),
    ("bool", keyvalue(b"b", varint_field(2, 1))),
    ("bytes value", keyvalue(b"raw", len_field(7, PAN))),
    ("two values", keyvalue(b"twice", string(b"a"), string(text(30)))),
    ("value before key", len_field(2, string(text(30))) + len_field(1, b"late")),
    ("two strings in one value", keyvalue(b"s", string(b"a") + string(text(30)))),
    ("nested map", keyvalue(b"m", len_field(6, len_field(1, keyvalue(b"inner", string(text(30))))))),
    ("rule drops", keyvalue(b"secret.token", string(text(30)))),
    ("rule masks an int", keyvalue(b"card.number", varint_field(3, 4111111111111111))),
    ("rule masks a string", keyvalue(b"card.number", string(PAN))),
    # earlier members of the value a masking rule matches (a review got them upstream whole: a
    # parser keeps the last member, but the bytes went out)
    ("rule masks: a string, then a bool", keyvalue(b"card.number", string(PAN) + varint_field(2, 1))),
    ("rule masks: an array of strings, then a string",
     keyvalue(b"card.number", len_field(5, len_field(1, string(PAN))) + string(b"x"))),
    ("rule masks: a map, then a string",
     keyvalue(b"card.number", len_field(6, len_field(1, keyvalue(b"k", string(PAN)))) + string(b"y"))),
    ("rule masks: a string, then a bytes value", keyvalue(b"card.number", string(PAN) + len_field(7, b"z"))),
]


def _request(signal: Signal, attrs: bytes, body: bytes | None = None) -> bytes:
    if signal is Signal.TRACES:
        item = len_field(1, b"\x00" * 16) + len_field(9, attrs)  # Span{trace_id, attributes}
        return len_field(1, len_field(2, len_field(2, item)))
    if signal is Signal.LOGS:
        item = len_field(6, attrs) + (len_field(5, body) if body is not None else b"")
        return len_field(1, len_field(2, len_field(2, item)))
    point = b"\x19" + b"\x00" * 8 + len_field(7, attrs)  # NumberDataPoint{time, attributes}
    metric = len_field(1, b"m") + len_field(5, len_field(1, point))  # Metric{name, gauge}
    return len_field(1, len_field(2, len_field(2, metric)))


@pytest.mark.parametrize("plan_name", list(PLANS))
@pytest.mark.parametrize("signal", [Signal.TRACES, Signal.LOGS, Signal.METRICS],
                         ids=["span", "log", "point"])
@pytest.mark.parametrize("shape", SHAPES, ids=[name for name, _ in SHAPES])
def test_every_shape_is_rewritten_alike_and_masked(py_impl, c_impl, shape, signal, plan_name):
    _, attr = shape
    data = _request(signal, attr)
    plan = PLANS[plan_name]
    ours = c_impl.rewrite(signal, data, [plan])
    twin = py_impl.rewrite(signal, data, [plan])
    assert ours == twin
    assert PAN not in ours.data or shape[0] == "bytes value"  # bytes values are not scanned


@pytest.mark.parametrize("length", [20, 127, 128, 300])
@pytest.mark.parametrize("plan_name", list(PLANS))
def test_log_bodies_of_every_length_are_masked_alike(py_impl, c_impl, length, plan_name):
    data = _request(Signal.LOGS, keyvalue(b"k", string(b"v")), body=string(text(length)))
    ours = c_impl.rewrite(Signal.LOGS, data, [PLANS[plan_name]])
    assert ours == py_impl.rewrite(Signal.LOGS, data, [PLANS[plan_name]])
    assert PAN not in ours.data and MASKED in ours.data
    assert ours.counts[("pci.pan", "mask_pan")] == 1


@pytest.mark.parametrize("shape", SHAPES, ids=[name for name, _ in SHAPES])
def test_every_shape_cut_short_is_refused_alike(py_impl, c_impl, shape):
    """Each shape truncated inside the attribute (its enclosing lengths fixed up): both name
    the same error, or both accept it."""
    _, attr = shape
    for cut in range(1, len(attr)):
        data = _request(Signal.LOGS, attr[:cut])
        results = []
        for impl in (c_impl, py_impl):
            try:
                results.append(impl.rewrite(Signal.LOGS, data, [PLANS["rules"]]))
            except ValueError as exc:
                results.append(str(exc))
        assert results[0] == results[1], (cut, results)
