"""The probe's shadowed shapes: card numbers in bytes a protobuf parser reads past.

Protobuf keeps the last of a singular field and merges a sub-message written twice. A KeyValue
with two ``key`` fields parses as its last, an AnyValue with two ``string_value`` fields as its
last, but the earlier ones are in the bytes the sidecar forwards and queues. The rewriter masks
them (docs/rewriter.md, "Shadowed fields"); these shapes check it at every load with the plan
at hand: the keys it stamps and the keys its exemptions keep are planted behind a card number,
as are the probe's own keys, at the resource, the scope and one item of the signal.

The protobuf library cannot write such bytes (it would keep the last field only), so the
request is written here field by field.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from sidecar.masked_text import mask_card_numbers
from sidecar.rewrite.plan import Plan
from sidecar.signals import Signal

#: the probe's own key: no policy exempts it
NOTE = "otlp_sidecar.probe.note"
_LENGTH_DELIMITED = 2


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """One length-delimited field: its tag, its length, ``payload``."""
    return _varint(number << 3 | _LENGTH_DELIMITED) + _varint(len(payload)) + payload


def _text(number: int, text: str) -> bytes:
    return _field(number, text.encode())


def _string(text: str) -> bytes:
    """An AnyValue holding ``text`` (string_value)."""
    return _text(1, text)


def _kv(*keys: str, values: Iterable[bytes] = (_string("shadowed"),)) -> bytes:
    """A KeyValue with every key in ``keys`` (a parser keeps the last) and every value."""
    return b"".join(_text(1, key) for key in keys) + b"".join(_field(2, value) for value in values)


Planter = Callable[[str], str]


def _shadowed(plant: Planter, level: str, keys: Iterable[str], kept: Iterable[str]) -> list[bytes]:
    """KeyValues that a parser shows as ``key`` (for each of ``keys``) with a plain value, a card
    number before it: in an earlier key, and unless the key is ``kept`` (an exemption's value may
    hold card numbers) in an earlier member of the value and in an earlier value."""
    found = []
    for key in keys:
        named = f"{level} attribute {_shown(key)}"
        found.append(_kv(plant(f"{named} behind an earlier key"), key))
        if key not in kept:
            found.append(_kv(key, values=[_string(plant(f"{named} in an earlier string of its value"))
                                          + _string("shadowed")]))
            found.append(_kv(key, values=[_string(plant(f"{named} in an earlier value")),
                                          _string("shadowed")]))
    return found


def _shown(key: str) -> str:
    """A key as a place names it (the error is logged: a key written as a card number is masked)."""
    return repr(mask_card_numbers(key))


def _attributes(number: int, kvs: Iterable[bytes]) -> bytes:
    return b"".join(_field(number, kv) for kv in kvs)


def _item(signal: Signal, attributes: list[bytes]) -> bytes:
    """One span, log record or gauge metric (with one data point) of the signal, with attributes."""
    if signal is Signal.TRACES:  # Span: trace_id 1, span_id 2, name 5, attributes 9
        return (_field(1, bytes(range(1, 17))) + _field(2, bytes(range(1, 9))) + _text(5, "shadow")
                + _attributes(9, attributes))
    if signal is Signal.LOGS:  # LogRecord: body 5, attributes 6
        return _field(5, _string("shadow")) + _attributes(6, attributes)
    point = b"\x31" + bytes(8) + _attributes(7, attributes)  # NumberDataPoint: as_int 6, attributes 7
    return _text(1, "probe.shadow") + _field(5, _field(1, point))  # Metric: name 1, gauge 5


def shadowed_request(signal: Signal, plan: Plan, plant: Planter) -> bytes:
    """An export request of ``signal``: one resource, one scope, one item, each holding the
    shadowed shapes of the probe's key and of the keys ``plan`` keeps (exemptions); the resource
    also those of the keys it stamps. ``plant(place)`` gives a card number for a place."""
    kept = [rule.pattern for rule in plan.attribute_rules
            if rule.action == "keep" and "*" not in rule.pattern and "?" not in rule.pattern]
    keys = list(dict.fromkeys([NOTE, *kept]))
    stamps = [stamp.key for stamp in plan.stamps]
    resource = _attributes(1, [_text(1, "service.name") + _field(2, _string("otlp-sidecar-pci-probe"))])
    resource += _attributes(1, _shadowed(plant, "resource", keys, kept))
    for stamp in plan.stamps:  # behind the card number, the stamp as an encoder writes it
        named = f"resource stamp {_shown(stamp.key)}"
        resource += _field(1, _kv(plant(f"{named} behind an earlier key"), stamp.key, values=[_string(stamp.value)]))
        resource += _field(1, _kv(stamp.key, values=[
            _string(plant(f"{named} in an earlier string of its value")) + _string(stamp.value)]))
    scope = _text(1, "probe") + _attributes(3, _shadowed(plant, "scope", keys, kept))
    item = _item(signal, _shadowed(plant, "item", list(dict.fromkeys([*keys, *stamps])), kept))
    # every signal: request.resource_* 1; Resource* .resource 1, .scope_* 2; Scope* .scope 1, items 2
    return _field(1, _field(1, resource) + _field(2, _field(1, scope) + _field(2, item)))
