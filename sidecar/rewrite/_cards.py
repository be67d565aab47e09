"""The card-number detector (the rule in docs/rewriter.md). The twin of ``ext/cards.pyx``."""

from __future__ import annotations

import re

__all__ = ["IMPLEMENTATION", "find_pans"]

IMPLEMENTATION = "python"

_RUN = re.compile(rb"[0-9](?:[ -]?[0-9])*")
_HEX = frozenset(b"0123456789abcdefABCDEF")


def brand_ok(d: bytes) -> bool:
    """Is there a brand that issues this many digits on this prefix? (corpus README table)"""
    n = len(d)
    p1, p2, p3, p4 = d[0] - 48, int(d[:2]), int(d[:3]), int(d[:4])
    if p1 == 4 and n in (13, 16, 19):
        return True
    if n == 16 and (51 <= p2 <= 55 or 2221 <= p4 <= 2720):
        return True
    if n == 15 and p2 in (34, 37):
        return True
    if n in (16, 19) and (p4 == 6011 or 644 <= p3 <= 649 or p2 == 65):
        return True
    if 16 <= n <= 19 and (3528 <= p4 <= 3589 or p2 in (62, 81) or 2200 <= p4 <= 2204):
        return True
    if n in (14, 16) and (300 <= p3 <= 305 or p2 in (36, 38, 39)):
        return True
    return 12 <= n <= 19 and (p4 in (5018, 5020, 5038, 5893, 6304, 6759) or 6761 <= p4 <= 6763)


def luhn_ok(d: bytes) -> bool:
    total = 0
    for i, c in enumerate(reversed(d)):
        v = c - 48
        if i & 1:
            v *= 2
            if v > 9:
                v -= 9
        total += v
    return total % 10 == 0


def in_uuid(s: bytes, i: int, j: int) -> bool:
    """Does an 8-4-4-4-12 hex group overlap s[i:j]?"""
    for st in range(max(0, i - 35), min(j - 1, len(s) - 36) + 1):
        for k in range(36):
            c = s[st + k]
            if k in (8, 13, 18, 23):
                if c != 45:
                    break
            elif c not in _HEX:
                break
        else:
            return True
    return False


def _is_pan(s: bytes, i: int, j: int, digits: bytes) -> bool:
    return 12 <= len(digits) <= 19 and brand_ok(digits) and luhn_ok(digits) and not in_uuid(s, i, j)


def _groups_holding_pans(s: bytes, i: int, j: int) -> list[tuple[int, int, bytes]]:
    """Card numbers made of whole groups of the run s[i:j] (digits between its separators), for a
    run that is not one as a whole: a date, a quantity or a CVV joined to a card number by one
    space or dash. From each group on, the longest card number of 12-19 digits is taken, and the
    search goes on after it."""
    starts = [k for k in range(i, j) if 48 <= s[k] <= 57 and (k == i or not 48 <= s[k - 1] <= 57)]
    found = []
    g = 0
    while g < len(starts):
        best = None
        digits = b""
        k = starts[g]
        for h in range(g, len(starts)):
            end = starts[h + 1] - 1 if h + 1 < len(starts) else j
            digits += s[starts[h]:end]
            if len(digits) > 19:
                break
            if _is_pan(s, k, end, digits):
                best = (k, end, digits, h)
        if best is None:
            g += 1
            continue
        found.append(best[:3])
        g = best[3] + 1
    return found


def find_pans(s: bytes) -> list[tuple[int, int, bytes]]:
    """Card numbers in ``s``: (start, end, digits) by the rule in docs/rewriter.md."""
    found = []
    for m in _RUN.finditer(s):
        i, j = m.span()
        digits = m.group().replace(b" ", b"").replace(b"-", b"")
        if len(digits) < 12:
            continue
        if i > 0:
            prev = s[i - 1]
            if prev == 43:  # '+': a phone number
                continue
            if prev in (44, 46) and i > 1 and 48 <= s[i - 2] <= 57:  # fraction of a number
                continue
        if _is_pan(s, i, j, digits):
            found.append((i, j, digits))
        elif len(digits) < j - i:  # separators in it: search its groups
            found += _groups_holding_pans(s, i, j)
    return found


def mask_digits(b: bytearray, i: int, j: int) -> None:
    """Replace every digit of b[i:j] but the last four with '*'."""
    keep = 4
    for k in range(j - 1, i - 1, -1):
        if 48 <= b[k] <= 57:
            if keep:
                keep -= 1
            else:
                b[k] = 42
