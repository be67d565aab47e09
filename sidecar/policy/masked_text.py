"""Card numbers masked in text the sidecar prints or logs (CLI output, errors quoted from a
remote OPA): the detector's rule, the last four digits kept, as the ``mask_pan`` action does."""

from __future__ import annotations

from sidecar.rewrite._cards import find_pans, mask_digits


def mask_card_numbers(text: str) -> str:
    """``text`` with every card number masked to its last four digits."""
    raw = bytearray(text.encode("utf-8"))
    for start, end, _ in find_pans(bytes(raw)):
        mask_digits(raw, start, end)
    return raw.decode("utf-8")
