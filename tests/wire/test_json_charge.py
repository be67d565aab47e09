"""sidecar.wire.json_charge: the charge for decoding OTLP/JSON is at least what decoding holds at
once, for any shape a client can send (review: 7.5 MiB of ["ab",...] was charged 2x its text and
held 13x), measured with tracemalloc (Python's allocations) and the malloc heap (upb's arena)."""

from __future__ import annotations

import ctypes
import gc
import json
import tracemalloc

import pytest

from sidecar.signals import Signal

KiB = 1024
SIZE = 256 * KiB


def _array(item: bytes, size: int = SIZE) -> bytes:
    return b'{"resourceSpans":[],"x":[' + b",".join([item] * (size // (len(item) + 1))) + b"]}"


def _in_spans(items: bytes) -> bytes:
    return b'{"resourceSpans":[{"scopeSpans":[{"spans":[' + items + b"]}]}]}"


def _bounds(item: bytes) -> bytes:
    return (b'{"resourceMetrics":[{"scopeMetrics":[{"metrics":[{"name":"m","histogram":{"dataPoints":[{'
            b'"explicitBounds":[' + b",".join([item] * (SIZE // (len(item) + 1))) + b'],"bucketCounts":[]}]}}]}]}]}')


def _realistic(count: int = 512) -> bytes:
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    from sidecar.wire.otlp_json import message_to_json
    from tests import sdk

    return json.dumps(message_to_json(encode_spans(sdk.make_spans(count, attributes={"batch": "json"})))).encode()


SHAPES = {
    "short strings": lambda: _array(b'"ab"'),
    "negative ints": lambda: _array(b"-6"),
    "floats": lambda: _array(b"1e9"),
    "repeated doubles": lambda: _bounds(b"1"),
    "unique keys": lambda: b'{"resourceSpans":[],"x":{' + b",".join(b'"k%d":1' % i for i in range(SIZE // 10)) + b"}}",
    "empty arrays": lambda: _array(b"[]"),
    "empty spans": lambda: _in_spans(b",".join([b"{}"] * (SIZE // 3))),
    "escapes": lambda: _array(b'"\\u00e9\\n"'),
    "a string widened by an escaped emoji": lambda: b'{"resourceSpans":[],"x":"' + b"a" * SIZE + b'\\ud83d\\ude00"}',
    "UTF-8 emoji": lambda: _array('"ab😀"'.encode()),
    "nested 60 deep": lambda: _array(b"[" * 60 + b"]" * 60),
    "bytes values": lambda: _in_spans(b'{"attributes":[' + b",".join(
        [b'{"key":"k","value":{"bytesValue":"' + b"QUJD" * 1000 + b'"}}'] * (SIZE // 4030)) + b"]}"),
    "realistic 512 spans": _realistic,
}


class _Mallinfo(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def _malloc_heap() -> int:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _Mallinfo
    info = libc.mallinfo2()
    return int(info.uordblks + info.hblkhd)


def _measured(signal: Signal, text: bytes) -> int:
    """Python's peak while converting (from the copy of the text on) plus upb's message."""
    from google.protobuf import json_format

    from sidecar.wire import otlp_json

    gc.collect()
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        otlp_json._convert(signal, [memoryview(text).tobytes()], otlp_json.MAX_DEPTH)
        python = tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()
    document = otlp_json._loads(text, otlp_json.MAX_DEPTH)
    otlp_json._ids_hex_to_base64(document, "$")
    message = signal.request_class()
    before = _malloc_heap()
    json_format.ParseDict(document, message, ignore_unknown_fields=True)
    return python + max(0, _malloc_heap() - before)


@pytest.mark.parametrize("make", SHAPES.values(), ids=SHAPES.keys())
def test_the_charge_is_at_least_what_decoding_holds(make) -> None:
    from sidecar.wire.otlp_json import json_cost

    text = make()
    signal = Signal.METRICS if text.startswith(b'{"resourceMetrics"') else Signal.TRACES
    measured = _measured(signal, text)
    charged = json_cost(text)[1]
    print(f"{len(text)} bytes: held {measured / len(text):.1f}x, charged {charged / len(text):.1f}x")
    assert charged >= measured


def test_an_sdk_batch_of_512_spans_fits_a_connection_with_room() -> None:
    from sidecar.overload.config import LimitsConfig
    from sidecar.wire.otlp_json import json_cost

    text = _realistic()
    share = LimitsConfig().connection_share_bytes
    assert len(text) + json_cost(text)[1] < share // 2


@pytest.mark.parametrize(("text", "width"), [
    (b'{"a":"b"}', 1), (b'{"a":"\\u00e9"}', 2), ('{"a":"é"}'.encode(), 2), ('{"a":"€"}'.encode(), 2),
    ('{"a":"😀"}'.encode(), 4), (b'{"a":"\\ud83d\\ude00"}', 4), ('{"a":"b"}'.encode("utf-16-le"), 4),
])
def test_char_width(text: bytes, width: int) -> None:
    from sidecar.wire.json_charge import char_width

    assert char_width(text) == width
