"""The egress allowlist (sidecar/rewrite/_allowlist.py, compiled in sidecar._ext.rewrite): every
field of OTLP, and nothing else, leaves the sidecar.

The table is checked against the protobuf descriptors (a field OTLP defines and the table lacks
would be dropped; one the table has and OTLP does not would be a hole a card number goes through
unscanned). Then a field OTLP does not define is put in every message of every request, at every
depth the descriptors reach: both implementations find it, and dropping it gives back the request
without it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor

import bench.corpus_requests as corpus
from sidecar.rewrite._schema import ALLOWED, ALLOWED_NAMES, I32, I64, LEN, MAX_NESTING, REQUEST_TYPE, VARINT
from sidecar.rewrite._wire import encode_varint
from sidecar.rewrite.plan import Plan
from sidecar.signals import Signal

WIRE = {
    FieldDescriptor.TYPE_DOUBLE: I64, FieldDescriptor.TYPE_FIXED64: I64, FieldDescriptor.TYPE_SFIXED64: I64,
    FieldDescriptor.TYPE_FLOAT: I32, FieldDescriptor.TYPE_FIXED32: I32, FieldDescriptor.TYPE_SFIXED32: I32,
    FieldDescriptor.TYPE_STRING: LEN, FieldDescriptor.TYPE_BYTES: LEN, FieldDescriptor.TYPE_MESSAGE: LEN,
}
CARD = b"4111111111111111"
#: how deep to follow sub-messages (AnyValue nests through arrays and maps)
DEPTH = 8


def expected_mask(field: FieldDescriptor) -> int:
    mask = WIRE.get(field.type, VARINT)
    if field.is_repeated and mask != LEN:
        mask |= LEN  # packed
    return mask


def descriptors_of_types() -> dict[int, list[Descriptor]]:
    """The allowlist's message types, each with the OTLP messages it stands for (Gauge/Sum share one)."""
    found: dict[int, list[Descriptor]] = {}
    todo = [(REQUEST_TYPE[signal], signal.request_class.DESCRIPTOR) for signal in Signal]
    while todo:
        t, descriptor = todo.pop()
        if descriptor in found.setdefault(t, []):
            continue
        found[t].append(descriptor)
        for number, (_mask, sub) in ALLOWED[t].items():
            field = descriptor.fields_by_number.get(number)
            if sub >= 0 and field is not None:
                todo.append((sub, field.message_type))
    return found


def test_the_allowlist_is_exactly_the_fields_of_otlp() -> None:
    types = descriptors_of_types()
    assert len(types) == len(ALLOWED_NAMES)  # every type of the table is reached from a request
    for t, descriptors in types.items():
        defined: dict[int, int] = {}
        for descriptor in descriptors:
            for field in descriptor.fields:
                defined[field.number] = expected_mask(field)
        allowed = {number: mask for number, (mask, _sub) in ALLOWED[t].items()}
        assert allowed == defined, f"{ALLOWED_NAMES[t]} ({[d.full_name for d in descriptors]})"
        for descriptor in descriptors:  # every message field is descended into
            for field in descriptor.fields:
                if field.type == FieldDescriptor.TYPE_MESSAGE:
                    assert ALLOWED[t][field.number][1] >= 0, f"{descriptor.full_name}.{field.name}"


def message_paths(
    descriptor: Descriptor, depth: int = 0, seen: tuple[str, ...] = (),
) -> Iterator[tuple[FieldDescriptor, ...]]:
    """Paths (field after field) from a request to each message it can hold (the empty path: the
    request itself)."""
    yield ()
    if depth >= DEPTH:
        return
    for field in descriptor.fields:
        if field.type != FieldDescriptor.TYPE_MESSAGE or field.message_type.full_name in seen:
            continue
        sub = field.message_type
        for rest in message_paths(sub, depth + 1, (*seen, sub.full_name)):
            yield (field, *rest)


def planted(path: tuple[FieldDescriptor, ...], extra: bytes) -> tuple[bytes, bytes]:
    """(a request whose messages along ``path`` hold nothing but the next one, and ``extra`` in the
    innermost; the same request without ``extra``)."""
    inner, clean = extra, b""
    for field in reversed(path):
        tag = encode_varint(field.number << 3 | 2)
        inner = tag + encode_varint(len(inner)) + inner
        clean = tag + encode_varint(len(clean)) + clean
    return inner, clean


#: (field number, wire type, the field's bytes) of fields no message of OTLP defines as they are
EXTRAS = {
    "deprecated-1000": (1000, 2, encode_varint(1000 << 3 | 2) + encode_varint(len(CARD)) + CARD),
    "made-up-16-string": (16, 2, encode_varint(16 << 3 | 2) + encode_varint(len(CARD)) + CARD),
    "made-up-15-varint": (15, 0, encode_varint(15 << 3 | 0) + encode_varint(12345)),
}


def defines(descriptor: Descriptor, number: int, wire_type: int) -> bool:
    field = descriptor.fields_by_number.get(number)
    return field is not None and bool(expected_mask(field) & (1 << wire_type))


CASES = [
    pytest.param(signal, path, extra, id=f"{signal.value}:{'.'.join(f.name for f in path) or 'request'}:{name}")
    for signal in Signal
    for path in message_paths(signal.request_class.DESCRIPTOR)
    for name, (number, wire_type, extra) in EXTRAS.items()
    if not defines(path[-1].message_type if path else signal.request_class.DESCRIPTOR, number, wire_type)
]


@pytest.mark.parametrize(("signal", "path", "extra"), CASES)
def test_a_field_otlp_does_not_define_is_found_and_dropped_at_any_depth(
    impl, signal: Signal, path: tuple[FieldDescriptor, ...], extra: bytes,
) -> None:
    data, clean = planted(path, extra)
    assert impl.unknown_field(signal, clean) is None
    where = impl.unknown_field(signal, data)
    assert where is not None and "of " in where
    out, dropped = impl.without_unknown_fields(signal, data)
    assert dropped == 1
    assert impl.unknown_field(signal, out) is None
    assert signal.request_class.FromString(out) == signal.request_class.FromString(clean)
    if CARD in extra:
        assert CARD not in out


def test_both_implementations_name_the_same_place(c_impl, py_impl) -> None:
    for signal, path, extra in (case.values for case in CASES[::7]):
        data, _clean = planted(path, extra)
        assert c_impl.unknown_field(signal, data) == py_impl.unknown_field(signal, data)
        assert c_impl.without_unknown_fields(signal, data) == py_impl.without_unknown_fields(signal, data)


def test_a_known_field_with_another_wire_type_is_not_otlp(impl) -> None:
    # Span.name (5) as a varint, and Span.start_time_unix_nano (7, fixed64) as a string
    for extra in (encode_varint(5 << 3 | 0) + b"\x01", encode_varint(7 << 3 | 2) + encode_varint(len(CARD)) + CARD):
        span = encode_varint(1 << 3 | 2) + encode_varint(16) + b"\x01" * 16 + extra
        scope = encode_varint(2 << 3 | 2) + encode_varint(len(span)) + span
        resource = encode_varint(2 << 3 | 2) + encode_varint(len(scope)) + scope
        data = encode_varint(1 << 3 | 2) + encode_varint(len(resource)) + resource
        assert "of Span at offset" in impl.unknown_field(Signal.TRACES, data)
        out, dropped = impl.without_unknown_fields(Signal.TRACES, data)
        assert dropped == 1 and CARD not in out


@pytest.mark.parametrize("signal", list(Signal), ids=[s.value for s in Signal])
def test_requests_as_sdks_send_them_have_nothing_to_drop(impl, signal: Signal) -> None:
    data = {Signal.TRACES: corpus.trace_request, Signal.LOGS: corpus.log_request,
            Signal.METRICS: corpus.metric_request}[signal](64)
    assert impl.unknown_field(signal, data) is None
    assert impl.without_unknown_fields(signal, data) == (data, 0)


def nested_maps(levels: int) -> bytes:
    """A logs request whose record's body is ``levels`` maps nested in each other, a string inside."""
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue, KeyValueList
    from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs

    value = AnyValue(string_value="leaf")
    for _ in range(levels):
        value = AnyValue(kvlist_value=KeyValueList(values=[KeyValue(key="k", value=value)]))
    record = LogRecord(body=value)
    return ExportLogsServiceRequest(resource_logs=[ResourceLogs(scope_logs=[ScopeLogs(log_records=[record])])]
                                    ).SerializeToString()


def test_the_allowlist_follows_values_as_deep_as_the_rewriter_takes_them(impl) -> None:
    """A review found the allowlist's own depth bound cutting valid bodies of 25-30 nested maps
    the rewriter had accepted: it counts nesting as the rewriter does now (arrays and maps)."""
    deepest = nested_maps(MAX_NESTING)
    assert impl.rewrite(Signal.LOGS, deepest, [Plan()]).data == deepest  # the rewriter takes it
    assert impl.unknown_field(Signal.LOGS, deepest) is None
    assert impl.without_unknown_fields(Signal.LOGS, deepest) == (deepest, 0)
    too_deep = nested_maps(MAX_NESTING + 1)
    assert "KeyValueList nested deeper than 30 levels" in impl.unknown_field(Signal.LOGS, too_deep)


def test_the_sanitizer_is_linear_and_agrees_with_its_twin_on_nested_unknown_fields(c_impl, py_impl) -> None:
    """Unknown fields at several depths of one nested value, and beside it: both implementations
    drop the same fields and give the same bytes, which parse to the request without them."""
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    data = bytearray(nested_maps(12))
    # append a made-up field to the request and splice one in front of the record's body: re-encode
    clean = ExportLogsServiceRequest.FromString(bytes(data))
    extra = encode_varint(9 << 3 | 2) + encode_varint(len(CARD)) + CARD
    smuggled = bytes(data) + extra
    for impl in (c_impl, py_impl):
        out, dropped = impl.without_unknown_fields(Signal.LOGS, smuggled)
        assert dropped == 1 and CARD not in out
        assert ExportLogsServiceRequest.FromString(out) == clean
    assert c_impl.without_unknown_fields(Signal.LOGS, smuggled) == py_impl.without_unknown_fields(Signal.LOGS, smuggled)
