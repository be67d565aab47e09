"""OTLP's JSON mapping to and from protobuf bytes.

OTLP/JSON is proto3's JSON mapping with two differences: trace and span ids are
hex strings, not base64, and enums are integers. Unknown fields are ignored, as
the OTLP specification asks of receivers. JSON is the slow path: it is parsed
into upb messages once, serialized, and from there on handled as bytes like
protobuf requests.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
from typing import Any

from google.protobuf.message import DecodeError, Message

from sidecar.signals import Signal

#: JSON keys holding ids that OTLP encodes as hex, with their byte lengths
_ID_KEYS = {"traceId": 16, "spanId": 8, "parentSpanId": 8}


class InvalidJSON(ValueError):
    """The body is not an OTLP/JSON request of the expected signal."""


def json_to_protobuf(signal: Signal, body: bytes | memoryview) -> bytes:
    """Convert an OTLP/JSON request body to the protobuf bytes of the same request."""
    try:
        document = json.loads(body if not isinstance(body, memoryview) else body.tobytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidJSON(f"body is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidJSON("body must be a JSON object")
    _ids_hex_to_base64(document, "$")
    from google.protobuf import json_format  # here: ~2 MiB that protobuf-only traffic never needs

    message = signal.request_class()
    try:
        json_format.ParseDict(document, message, ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError) as exc:
        raise InvalidJSON(f"not a valid {message.DESCRIPTOR.name}: {exc}") from None
    return bytes(message.SerializeToString())


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


def _ids_hex_to_base64(node: Any, path: str) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _ID_KEYS and isinstance(value, str):
                node[key] = _hex_id(value, _ID_KEYS[key], f"{path}.{key}")
            else:
                _ids_hex_to_base64(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, item in enumerate(node):
            _ids_hex_to_base64(item, f"{path}[{index}]")


def _hex_id(value: str, size: int, path: str) -> str:
    if value == "":
        return ""
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise InvalidJSON(f"{path} must be a hex string, got {value[:40]!r}") from None
    if len(raw) != size:
        raise InvalidJSON(f"{path} must be {size * 2} hex digits, got {len(value)}")
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
