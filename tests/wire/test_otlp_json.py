"""sidecar.wire.otlp_json: the bounded OTLP/JSON to protobuf conversion, refused before decoding
what it cannot hold (issue 14). Through a real sidecar: tests/receivers/test_http_json.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sidecar.signals import Signal
from sidecar.wire.otlp_json import InvalidJSON, json_to_protobuf

EXAMPLES = Path(__file__).resolve().parent.parent / "testdata" / "otlp_json"


# -- bounds before decoding (issue 14) ------------------------------------------------------------


async def test_bounded_conversion_equals_the_plain_one_and_charges_the_account() -> None:
    from sidecar.overload.budget import MemoryBudget
    from sidecar.wire.otlp_json import json_cost, json_to_protobuf, json_to_protobuf_bounded

    body = (EXAMPLES / "traces.json").read_bytes()
    budget = MemoryBudget(1 << 20)
    account = budget.account()
    converted = await json_to_protobuf_bounded(Signal.TRACES, body, account=account)
    assert converted == json_to_protobuf(Signal.TRACES, body)
    assert account.held == json_cost(body)[1]  # taken before decoding; the caller gives it back


@pytest.mark.parametrize(
    ("body", "action", "text"),
    [
        (b'{"resourceSpans":' + b"[" * 5000 + b"]" * 5000 + b"}", "json_too_deep", "nested more than 64 levels"),
        (b'{"resourceSpans":[' + b'{"a":' * 70 + b"1" + b"}" * 70 + b"]}", "json_too_deep", "more than 64 levels"),
        (b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"startTimeUnixNano":' + b"7" * 5000 + b"}]}]}]}",
         "json_invalid", "integer string conversion"),
        (b'{"resourceSpans":[{"scopeSpans":[{"spans":[' + b",".join([b"{}"] * 1001) + b"]}]}]}",
         "json_too_many_items", "more than the 1000 allowed"),
    ],
    ids=["deep arrays", "deep objects", "a 5,000-digit integer", "too many objects"],
)
async def test_hostile_json_is_refused_with_its_action(body: bytes, action: str, text: str) -> None:
    from sidecar.wire.otlp_json import JsonRefused, json_to_protobuf_bounded

    items = 1000 if action == "json_too_many_items" else 100_000
    with pytest.raises(JsonRefused, match=text) as refused:
        await json_to_protobuf_bounded(Signal.TRACES, body, max_items=items)
    assert refused.value.action.value == action
    assert refused.value.action.status.http in (400, 413)


async def test_json_over_the_budget_is_refused_before_decoding() -> None:
    from sidecar.overload.budget import MemoryBudget
    from sidecar.wire.otlp_json import JsonRefused, json_cost, json_to_protobuf_bounded

    body = b'{"resourceSpans":[{"scopeSpans":[{"spans":[' + b",".join([b"{}"] * 2_000) + b"]}]}]}"
    assert 1 << 20 < json_cost(body)[1] < 4 << 20
    small = MemoryBudget(1 << 20, per_connection=1 << 20)
    with pytest.raises(JsonRefused, match="one connection may hold") as refused:
        await json_to_protobuf_bounded(Signal.TRACES, body, account=small.account())
    assert refused.value.action.status.http == 413
    busy = MemoryBudget(4 << 20, per_connection=4 << 20)
    assert busy.account().take(3 << 20)
    with pytest.raises(JsonRefused) as refused:
        await json_to_protobuf_bounded(Signal.TRACES, body, account=busy.account())
    assert (refused.value.action.value, refused.value.action.status.http) == ("budget_full", 503)


SPAN = {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174", "name": "checkout"}


def one_span(**fields: object) -> bytes:
    return json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [{**SPAN, **fields}]}]}]}).encode()


@pytest.mark.parametrize(("body", "message"), [
    (one_span(startTimeUnixNano="12x"),
     "$.resourceSpans.scopeSpans.spans.startTimeUnixNano: '12x' is not an integer"),
    (one_span(name=5), "$.resourceSpans.scopeSpans.spans.name: a string was expected, not int"),
    (one_span(attributes=[{"key": "a", "value": {"doubleValue": "abc"}}]),
     "$.resourceSpans[0].scopeSpans[0].spans[0].attributes[0].value.doubleValue: Couldn't parse float: abc"),
    (one_span(droppedAttributesCount=-1),
     "$.resourceSpans.scopeSpans.spans.droppedAttributesCount: Value out of range: -1"),
])
def test_a_value_of_the_wrong_type_is_named_by_its_place(body: bytes, message: str) -> None:
    """The protobuf library nests a sentence per field and ends in Python's wording ("Failed to parse
    resourceSpans field: ... invalid literal for int() with base 10: '12x'...."): a client gets
    the place, as the id checks give it, and the reason in its own words."""
    with pytest.raises(InvalidJSON) as caught:
        json_to_protobuf(Signal.TRACES, body)
    assert str(caught.value) == f"not a valid ExportTraceServiceRequest: {message}"
