"""Card numbers masked in text the sidecar prints or logs (CLI output, errors quoted from a
remote OPA): the detector's rule, the last four digits kept, as the ``mask_pan`` action does."""

from __future__ import annotations

from typing import Any

from sidecar.rewrite._cards import find_pans, mask_digits


def mask_card_numbers(text: str) -> str:
    """``text`` with every card number masked to its last four digits (a lone surrogate, which
    JSON text may hold, is kept as it is)."""
    raw = bytearray(text.encode("utf-8", "surrogatepass"))
    for start, end, _ in find_pans(bytes(raw)):
        mask_digits(raw, start, end)
    return raw.decode("utf-8", "surrogatepass")


#: the most of a quoted text (an engine's error, an unreadable result) kept for the logs
MAX_QUOTED_TEXT = 300


def loggable(text: str) -> str:
    """Text an engine answered (OPA's error, or a proxy's before it; a result that could not be
    read), for the log and the decision log: it may quote the input, whose resource attributes
    are the app's, so card numbers are masked, then the text is cut short."""
    text = mask_card_numbers(text)
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
