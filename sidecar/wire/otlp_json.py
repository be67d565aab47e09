"""OTLP's JSON mapping to and from protobuf bytes.

OTLP/JSON is proto3's JSON mapping with two differences: trace and span ids are
hex strings, not base64, and enums are integers. Unknown fields are ignored, as
the OTLP specification asks of receivers. JSON is the slow path: it is parsed
into upb messages once, serialized, and from there on handled as bytes like
protobuf requests.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import contextlib
import json
import re
from collections.abc import Iterator
from typing import Any

from google.protobuf.message import DecodeError, Message

from sidecar.masked_text import quoted
from sidecar.overload.budget import Account
from sidecar.overload.reasons import Action
from sidecar.signals import Signal
from sidecar.wire import json_charge

#: JSON keys holding ids that OTLP encodes as hex, with their byte lengths
_ID_KEYS = {"traceId": 16, "spanId": 8, "parentSpanId": 8}


class InvalidJSON(ValueError):
    """The body is not an OTLP/JSON request of the expected signal."""


class JsonRefused(InvalidJSON):
    """A body refused by a bound before or while decoding: ``action`` says which (and its status)."""

    def __init__(self, message: str, action: Action) -> None:
        super().__init__(message)
        self.action = action
        #: the refused-requests metric reason
        self.reason = "busy" if action in (Action.budget_full, Action.connection_share) else (
            "too_large" if action is Action.json_too_many_items else "malformed")


#: default bounds (limits.json_max_depth, limits.json_max_items)
MAX_DEPTH = 64
MAX_ITEMS = 200_000
#: one thread converts OTLP/JSON: json.loads and json_format hold the GIL, but the event loop
#: gets it back every switch interval (5 ms), so a large body never freezes the other clients
_WORKER: concurrent.futures.ThreadPoolExecutor | None = None


def json_cost(text: bytes, max_depth: int = MAX_DEPTH) -> tuple[int, int]:
    """(objects and arrays at most, bytes to charge) for an OTLP/JSON text, without decoding it:
    an upper bound of what converting it holds at once (sidecar.wire.json_cost), found at C speed."""
    return json_charge.charge(text, max_depth)


async def json_to_protobuf_bounded(
    signal: Signal,
    body: bytes | memoryview,
    *,
    account: Account | None = None,
    max_depth: int = MAX_DEPTH,
    max_items: int = MAX_ITEMS,
) -> bytes:
    """:func:`json_to_protobuf` within bounds, off the event loop: more than ``max_items`` objects
    and arrays (counted before decoding) → 413; nested deeper than ``max_depth`` → 400; what
    decoding costs is taken from ``account`` first (503 when the budget or the connection's share
    is short now, 413 when the body and its cost could never fit a connection's share). The
    caller gives back what ``account`` holds beyond before."""
    global _WORKER
    if _WORKER is None:
        _WORKER = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="otlp-json")
    loop = asyncio.get_running_loop()
    # the copy json.loads needs is charged with the rest (json_charge.COPY); the body itself is
    # held (and charged) by the caller until the request is queued
    box = [body.tobytes() if isinstance(body, memoryview) else bytes(body)]
    items, cost = await loop.run_in_executor(_WORKER, json_cost, box[0], max_depth)  # ~4 ms a MiB
    if items > max_items:
        raise JsonRefused(
            f"the JSON body holds {items} objects and arrays, more than the {max_items} allowed "
            "(limits.json_max_items); send smaller requests", Action.json_too_many_items)
    if account is not None and not account.take(cost):
        if len(body) + cost > account.share:  # this request alone: it never fits, retrying cannot help
            raise JsonRefused(
                f"the JSON body would take about {cost} bytes to decode, with its {len(body)} bytes more "
                f"than the {account.share} one connection may hold; send smaller requests",
                Action.json_too_many_items)
        raise JsonRefused(account.message(), account.refused or Action.budget_full)
    return await loop.run_in_executor(_WORKER, _convert, signal, box, max_depth)


def _convert(signal: Signal, box: list[bytes], max_depth: int) -> bytes:
    """Decode the text ``box`` holds (taken out of it: nothing holds the text once decoded)."""
    document = _loads(box.pop(), max_depth)
    _check_depth(document, max_depth)
    return _to_protobuf(signal, document)


def _too_deep(max_depth: int) -> JsonRefused:
    return JsonRefused(
        f"the JSON body is nested more than {max_depth} levels deep (limits.json_max_depth)", Action.json_too_deep)


def _loads(text: bytes, max_depth: int) -> Any:
    try:
        return json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidJSON(f"body is not valid JSON: {exc}") from None
    except RecursionError:  # deeper than the decoder goes (about 1,000 levels): deeper than max_depth
        raise _too_deep(max_depth) from None
    except ValueError as exc:  # an integer of more digits than Python converts (4,300)
        raise JsonRefused(f"body is not valid OTLP/JSON: {exc}", Action.json_invalid) from None


def _check_depth(document: Any, max_depth: int) -> None:
    """Refuse a document nested deeper than ``max_depth`` (walked without recursion, holding one
    iterator per level: at most ``max_depth`` of them)."""
    if not isinstance(document, dict | list):
        return
    stack: list[Iterator[Any]] = [iter(document.values() if isinstance(document, dict) else document)]
    while stack:
        node = next(stack[-1], _END)
        if node is _END:
            stack.pop()
        elif isinstance(node, dict | list):
            if len(stack) >= max_depth:
                raise _too_deep(max_depth)
            stack.append(iter(node.values() if isinstance(node, dict) else node))


_END = object()


def json_to_protobuf(signal: Signal, body: bytes | memoryview, max_depth: int = MAX_DEPTH) -> bytes:
    """Convert an OTLP/JSON request body to the protobuf bytes of the same request."""
    document = _loads(body if not isinstance(body, memoryview) else body.tobytes(), max_depth)
    _check_depth(document, max_depth)
    return _to_protobuf(signal, document)


def _to_protobuf(signal: Signal, document: Any) -> bytes:
    if not isinstance(document, dict):
        raise InvalidJSON("body must be a JSON object")
    _ids_hex_to_base64(document, "$")
    from google.protobuf import json_format  # here: ~2 MiB that protobuf-only traffic never needs

    message = signal.request_class()
    try:
        json_format.ParseDict(document, message, ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError, RecursionError) as exc:
        raise InvalidJSON(f"not a valid {message.DESCRIPTOR.name}: {_parse_error_text(exc)}") from None
    return bytes(message.SerializeToString())


#: the protobuf library's wording: "Failed to parse a field: Failed to parse b field: ..." and,
#: in some cases, the place at the end (" at ExportTraceServiceRequest.resourceSpans[0]...")
_FAILED_FIELD = re.compile(r"Failed to parse (\w+) field: ")
_AT_PLACE = re.compile(r" at Export\w+ServiceRequest\.?([\w\[\]\.]*?)\.*$")
#: Python's wording of a bad number or type, as a client reads it
_PYTHON_WORDING = (
    (re.compile(r"invalid literal for int\(\) with base 10: (.*)"), r"\1 is not an integer"),
    (re.compile(r"could not convert string to float: (.*)"), r"\1 is not a number"),
    (re.compile(r"expected string or bytes-like object, got '(\w+)'"), r"a string was expected, not \1"),
)


def _parse_error_text(exc: BaseException) -> str:
    """What the protobuf library says of a document it cannot read, as ``$.path: reason``: its
    own text nests a sentence per field ("Failed to parse resourceSpans field: ...") and may
    end in Python's wording ("invalid literal for int() with base 10")."""
    text = str(exc)
    names = _FAILED_FIELD.findall(text)
    text = _FAILED_FIELD.sub("", text).strip().rstrip(".")
    at = _AT_PLACE.search(text)
    place = at.group(1) if at else ".".join(names)
    if at:
        text = text[: at.start()]
    for pattern, wording in _PYTHON_WORDING:
        text = pattern.sub(wording, text)
    return f"$.{place}: {text}" if place else text


def message_to_json(message: Message) -> dict[str, Any]:
    """A message as an OTLP/JSON object (hex ids, integer enums, lowerCamelCase keys)."""
    from google.protobuf import json_format

    document = json_format.MessageToDict(
        message, use_integers_for_enums=True, preserving_proto_field_name=False
    )
    _ids_base64_to_hex(document)
    return document


def protobuf_to_json(signal: Signal, data: bytes) -> dict[str, Any]:
    """Decode request bytes of ``signal`` into an OTLP/JSON object (for the debug exporter)."""
    message = signal.request_class()
    try:
        message.ParseFromString(data)
    except DecodeError as exc:
        raise InvalidJSON(f"not a valid {message.DESCRIPTOR.name}: {exc}") from None
    return message_to_json(message)


def response_json(message: Message) -> bytes:
    return json.dumps(message_to_json(message), separators=(",", ":")).encode()


def _ids_hex_to_base64(node: Any, path: _Path) -> None:
    """Hex ids as base64, in place. ``path`` is only formatted for an error: a string per level
    would hold the keys above it at every level (quadratic in the depth)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _ID_KEYS and isinstance(value, str):
                node[key] = _hex_id(value, _ID_KEYS[key], (path, key))
            elif isinstance(value, dict | list):
                _ids_hex_to_base64(value, (path, key))
    elif isinstance(node, list):
        for index, item in enumerate(node):
            if isinstance(item, dict | list):
                _ids_hex_to_base64(item, (path, index))


#: where a value is: (the path of its container, its key or index), "$" at the top
_Path = tuple[Any, str | int] | str


def _format_path(path: _Path) -> str:
    parts: list[str] = []
    while isinstance(path, tuple):
        path, step = path
        parts.append(f"[{step}]" if isinstance(step, int) else f".{quoted(step, 40)}")
    return path + "".join(reversed(parts))


def _hex_id(value: str, size: int, path: _Path) -> str:
    if value == "":
        return ""
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise InvalidJSON(f"{_format_path(path)} must be a hex string, got {quoted(value, 40)!r}") from None
    if len(raw) != size:
        raise InvalidJSON(f"{_format_path(path)} must be {size * 2} hex digits, got {len(value)}")
    return base64.b64encode(raw).decode("ascii")


def _ids_base64_to_hex(node: Any) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _ID_KEYS and isinstance(value, str):
                with contextlib.suppress(binascii.Error):
                    node[key] = base64.b64decode(value).hex()
            else:
                _ids_base64_to_hex(value)
    elif isinstance(node, list):
        for item in node:
            _ids_base64_to_hex(item)
