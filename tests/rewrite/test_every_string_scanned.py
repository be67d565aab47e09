"""Every string field of every OTLP request is scanned for card numbers: a card number put in
each of them, one at a time, comes out masked, through both rewriters. The fields are read from
the protobuf descriptors, so a string field a new opentelemetry-proto adds fails here until the
rewriter's schema (sidecar/rewrite/_schema.py) scans it. Attribute keys included (a log body
that is a map keyed by card numbers): they are masked after the rules matched them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from bench.corpus_requests import DEFAULT_PLAN
from sidecar.rewrite._cards import find_pans
from sidecar.signals import Signal

CARD = "4111 1111 1111 1111"
#: how deep to follow sub-messages (AnyValue nests through arrays and maps)
DEPTH = 9


def string_paths(
    descriptor: Descriptor, depth: int = 0, seen: tuple[str, ...] = (),
) -> Iterator[tuple[FieldDescriptor, ...]]:
    """Paths (field after field) from a request to each string field it can hold."""
    for field in descriptor.fields:
        if field.type == FieldDescriptor.TYPE_STRING:
            yield (field,)
        elif field.type == FieldDescriptor.TYPE_MESSAGE and depth < DEPTH:
            sub = field.message_type
            # each message type once per path: AnyValue -> ArrayValue -> AnyValue ... once
            if sub.full_name in seen:
                continue
            for rest in string_paths(sub, depth + 1, (*seen, sub.full_name)):
                yield (field, *rest)


def request_with(signal: Signal, path: tuple[FieldDescriptor, ...]) -> Message:
    """A request whose only string on ``path`` holds the card number."""
    request = signal.request_class()
    message = request
    for field in path[:-1]:
        if field.is_repeated:
            message = getattr(message, field.name).add()
        else:
            message = getattr(message, field.name)
            message.SetInParent()
        if field.message_type.full_name == "opentelemetry.proto.trace.v1.Span":
            message.trace_id, message.span_id = b"\x01" * 16, b"\x02" * 8
    last = path[-1]
    if last.is_repeated:
        getattr(message, last.name).append(f"x {CARD} y")
    else:
        setattr(message, last.name, f"x {CARD} y")
    return request


def strings(message: Message) -> Iterator[str]:
    for field, value in message.ListFields():
        values = value if field.is_repeated else [value]
        for v in values:
            if field.type == FieldDescriptor.TYPE_STRING:
                yield v
            elif field.type == FieldDescriptor.TYPE_MESSAGE:
                yield from strings(v)


CASES = [
    pytest.param(signal, path, id=f"{signal.value}:" + ".".join(f.name for f in path))
    for signal in Signal
    for path in string_paths(signal.request_class.DESCRIPTOR)
]

#: the plan the sidecar gives by default: the card detector on, rules on some keys, no sampling
#: (a sampled-out span leaves nothing to check)
PLAN = dataclasses.replace(DEFAULT_PLAN, sampling=None)


def test_the_fields_cover_every_signal_and_its_nesting() -> None:
    names = {path[-1].full_name for _signal, path in (case.values for case in CASES)}
    for expected in ("trace.v1.Span.Link.trace_state", "trace.v1.Span.trace_state",
                     "common.v1.InstrumentationScope.name", "metrics.v1.Metric.unit",
                     "logs.v1.LogRecord.severity_text", "common.v1.AnyValue.string_value",
                     "common.v1.EntityRef.type", "common.v1.KeyValue.key"):
        assert f"opentelemetry.proto.{expected}" in names
    assert len(CASES) > 50


@pytest.mark.parametrize(("signal", "path"), CASES)
def test_a_card_number_in_any_string_field_comes_out_masked(impl, signal: Signal, path) -> None:
    request = request_with(signal, path)
    assert any(find_pans(s.encode()) for s in strings(request))  # the case holds its card number
    result = impl.rewrite(signal, request.SerializeToString(), [PLAN])
    out = signal.request_class.FromString(result.data)
    leaked = [s for s in strings(out) if find_pans(s.encode())]
    assert not leaked, f"{'.'.join(f.name for f in path)} came out unmasked: {leaked}"
    assert result.counts.get(("pci.pan", "mask_pan"), 0) + result.counts.get(("pci.card", "mask_pan"), 0) >= 1
