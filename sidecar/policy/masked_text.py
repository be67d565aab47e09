"""Card numbers masked in text the sidecar prints or logs (CLI output, errors quoted from a
remote OPA): the detector's rule, the last four digits kept, as the ``mask_pan`` action does."""

from __future__ import annotations

from typing import Any

from sidecar.rewrite._cards import find_pans, mask_digits


def mask_card_numbers(text: str) -> str:
    """``text`` with every card number masked to its last four digits."""
    raw = bytearray(text.encode("utf-8"))
    for start, end, _ in find_pans(bytes(raw)):
        mask_digits(raw, start, end)
    return raw.decode("utf-8")


def mask_strings(value: Any) -> Any:
    """A JSON-like document with card numbers masked in every string, keys included, before it is
    printed: masking the printed text instead would miss a number that an escape (``\\u0001``)
    joins to other digits."""
    if isinstance(value, str):
        return mask_card_numbers(value)
    if isinstance(value, dict):
        return {mask_strings(k): mask_strings(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [mask_strings(v) for v in value]
    return value
