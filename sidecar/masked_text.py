"""Card numbers masked in text the sidecar prints, logs or answers (CLI output, errors quoted
from a remote OPA, error messages to clients): the detector's rule, the last four digits kept, as
the ``mask_pan`` action does."""

from __future__ import annotations

import re
from typing import Any

from sidecar.rewrite._cards import find_pans, mask_digits

#: a \\uXXXX escape of a character the detector reads (a full-width digit, sign or separator,
#: the ideographic space): ``repr`` writes U+3000 so, JSON text any of them
_ESCAPED = re.compile(r"\\u(3000|[fF][fF]0[bBcCdDeE]|[fF][fF]1[0-9])")


def holds_card_number(text: str) -> bool:
    """Whether ``text`` holds a card number (a lone surrogate, which policy output and JSON text may
    hold, is read past, never an error)."""
    return bool(find_pans(text.encode("utf-8", "surrogatepass")))


def encodable(text: str) -> bool:
    """Whether ``text`` can be written as UTF-8 (no lone surrogate)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def text_problem(text: str, why: str = "") -> str | None:
    """Why text the sidecar writes as it is (policy text: a stamp, a header, an exemption) is
    refused, ``why`` after a card number's reason; None when it may be written."""
    if holds_card_number(text):
        return f"holds a card number{why}"
    if not encodable(text):
        return "is not text UTF-8 can hold (a lone surrogate)"
    return None


def mask_card_numbers(text: str) -> str:
    """``text`` with every card number masked to its last four digits (a lone surrogate, which
    JSON text may hold, is kept as it is)."""
    raw = bytearray(text.encode("utf-8", "surrogatepass"))
    for start, end, _ in find_pans(bytes(raw)):
        mask_digits(raw, start, end)
    return raw.decode("utf-8", "surrogatepass")


#: the most of an error message answered to a client, in UTF-8 bytes (grpc-message, the
#: google.rpc.Status of an OTLP/HTTP answer, partial_success.error_message)
MAX_CLIENT_MESSAGE = 1024
#: read past the cut when masking, so that a card number the cut splits is still found whole
#: (19 digits, 18 separators, full-width: 111 bytes)
_CUT_MARGIN = 128


def client_message(text: str) -> str:
    """An error message as answered to a client: card numbers masked, at most
    MAX_CLIENT_MESSAGE bytes of UTF-8 (whole characters; a lone surrogate, which JSON text may
    hold, becomes U+FFFD). A message may quote the request (a parser's error names the value it
    could not read, a policy's reason may be built from resource attributes), and SDKs log the
    answers they get where nothing masks them."""
    text = quoted(text, MAX_CLIENT_MESSAGE).encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    raw = text.encode("utf-8")
    return text if len(raw) <= MAX_CLIENT_MESSAGE else raw[:MAX_CLIENT_MESSAGE].decode("utf-8", "ignore")


def quoted(text: str, limit: int) -> str:
    """A client's or a peer's ``text`` to quote in a message: card numbers masked (through the
    escapes of ``repr``, JSON or Go's ``%q``), then cut to ``limit`` characters (cut first, a
    number would lose the digits that make it one and show the rest)."""
    masked = mask_card_numbers(_unescaped(text[: limit + _CUT_MARGIN]))
    return masked if len(masked) <= limit else masked[:limit]


def _unescaped(text: str) -> str:
    """``text`` with the escapes of the characters the detector reads written as those characters:
    a message may quote a value through ``repr`` (which escapes U+3000) or as JSON."""
    if "\\u" not in text:
        return text
    return _ESCAPED.sub(lambda m: chr(int(m.group(1), 16)), text)


#: the most of a quoted text (an engine's error, an unreadable result) kept for the logs
MAX_QUOTED_TEXT = 300


def loggable(text: str) -> str:
    """Text an engine answered (OPA's error, or a proxy's before it; a result that could not be
    read), for the log and the decision log: it may quote the input, whose resource attributes
    are the app's, so card numbers are masked, then the text is cut short."""
    text = quoted(text, MAX_QUOTED_TEXT + 1)  # one more: says whether it was cut
    return text if len(text) <= MAX_QUOTED_TEXT else text[: MAX_QUOTED_TEXT - 3] + "..."


def mask_strings(value: Any) -> Any:
    """A JSON-like document with card numbers masked in every string, keys included, before it is
    printed: masking the printed text instead would miss a number that an escape (``\\u0001``)
    joins to other digits. A number that is a card number as written is printed as the masked
    string."""
    if isinstance(value, str):
        return mask_card_numbers(value)
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return _masked_number(value)
    if isinstance(value, dict):
        return {mask_strings(k): mask_strings(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [mask_strings(v) for v in value]
    return value


def _masked_number(value: int | float) -> int | float | str:
    """A JSON number as printed, or its masked digits when they are a card number."""
    if isinstance(value, float):
        if not value.is_integer() or abs(value) >= 1e20:
            return value
        text = str(int(value))
    else:
        text = str(value)
    masked = mask_card_numbers(text)
    return value if masked == text else masked
