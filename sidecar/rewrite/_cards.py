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
    """Does an 8-4-4-4-12 hex group hold all of s[i:j]? (one that only overlaps it does not: the
    digits beyond it may be a card number)"""
    for st in range(max(0, j - 36), min(i, len(s) - 36) + 1):
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


#: the first digits a brand's prefix can start with (table in brand_ok)
_BRAND_FIRST = frozenset(b"234568")
#: the fewest digits of a group the group search takes: card numbers are printed in groups of 3
#: to 6 (4-4-4-4, 4-6-5, 4-4-4-4-3); a day, a month or a small quantity is not part of one there
_MIN_GROUP = 3


def _groups_holding_pans(s: bytes, i: int, j: int, skip_first: bool = False) -> list[tuple[int, int, bytes]]:
    """Card numbers made of whole groups of the run s[i:j] (digits between its separators), for a
    run that is not one as a whole: a date, a quantity, a CVV or another card joined to it by one
    space or dash. Every group of 3 or more digits on a brand's first digit starts a search for the
    longest card number of whole groups of 3 or more digits from it; overlapping finds are merged
    into one span (masked as one: the last four digits of the span stay), so a spurious find
    cannot take a real card's first groups from it. A merged span carries the digits of its first
    find. ``skip_first``: the first group is a phone number's or a fraction's, and starts no
    search. (The C module composes each window's Luhn sum from its groups', read once; the
    results are the same.)"""
    windows: list[tuple[int, int, bytes]] = []
    k = i
    while k < j:
        g = k
        while k < j and 48 <= s[k] <= 57:
            k += 1
        # s[g:k] is a group; search from it when it can start a card number
        if k - g >= _MIN_GROUP and s[g] in _BRAND_FIRST and not (skip_first and g == i):
            best = None
            digits = bytearray()
            a = b = 0  # Luhn sums with the last digit at an even / odd place from the right
            maxg, spaced = 0, False
            p = g
            while p < j:
                if p > g and s[p - 1] == 32:
                    spaced = True
                q = p
                while p < j and 48 <= s[p] <= 57:
                    d = s[p] - 48
                    a, b = b + d, a + (2 * d - 9 if d > 4 else 2 * d)
                    digits.append(s[p])
                    p += 1
                if len(digits) > 19 or p - q < _MIN_GROUP:
                    break
                maxg = max(maxg, p - q)
                # inside a UUID only with dashes and groups of at most 12 (its longest)
                if (len(digits) >= 12 and a % 10 == 0 and brand_ok(bytes(digits))
                        and not (maxg <= 12 and not spaced and in_uuid(s, g, p))):
                    best = (g, p, bytes(digits))
                p += 1  # the separator
            if best is not None:
                windows.append(best)
        k += 1  # the separator
    merged: list[tuple[int, int, bytes]] = []
    for start, end, found in windows:
        if merged and start < merged[-1][1]:
            first = merged[-1]
            merged[-1] = (first[0], max(first[1], end), first[2])
        else:
            merged.append((start, end, found))
    return merged


#: a full-width digit (U+FF10-U+FF19)
_WIDE_DIGIT = re.compile(rb"\xef\xbc[\x90-\x99]")
#: what full-width characters fold to: digits, + , - . (U+FF0B-U+FF0E) and U+3000 (a space)
_WIDE = re.compile(rb"\xef\xbc[\x8b-\x8e\x90-\x99]|\xe3\x80\x80|[0-9]")
_FOLDED = {bytes([0xEF, 0xBC, 0x90 + d]): bytes([48 + d]) for d in range(10)} | {
    b"\xef\xbc\x8b": b"+", b"\xef\xbc\x8c": b",", b"\xef\xbc\x8d": b"-", b"\xef\xbc\x8e": b".",
    b"\xe3\x80\x80": b" ",
}


def find_pans(s: bytes) -> list[tuple[int, int, bytes]]:
    """Card numbers in ``s``: (start, end, digits) by the rule in docs/rewriter.md. Runs of ASCII
    digits, then runs of full-width digits (read the same way once folded to ASCII; the two kinds
    never join in one run)."""
    found = _find_runs(s)
    if len(s) >= 36 and _WIDE_DIGIT.search(s):  # a card number: 12 full-width digits or more
        found = sorted(found + _find_wide(s))
    return found


def _find_wide(s: bytes) -> list[tuple[int, int, bytes]]:
    """The card numbers of the full-width runs of ``s``: read in a copy where full-width digits
    and their separators are ASCII and ASCII digits hidden (as ``x``), mapped back to ``s``."""
    folded = bytearray()
    offsets = []  # offsets[m]: where folded[m] comes from in s
    pos = 0
    for m in _WIDE.finditer(s):
        for k in range(pos, m.start()):
            offsets.append(k)
        folded += s[pos:m.start()]
        offsets.append(m.start())
        folded += _FOLDED.get(m.group(), b"x")
        pos = m.end()
    offsets.extend(range(pos, len(s) + 1))
    folded += s[pos:]
    return [(offsets[i], offsets[j], digits) for i, j, digits in _find_runs(bytes(folded))]


def _find_runs(s: bytes) -> list[tuple[int, int, bytes]]:
    """The card numbers of the ASCII runs of ``s``."""
    found = []
    for m in _RUN.finditer(s):
        i, j = m.span()
        digits = m.group().replace(b" ", b"").replace(b"-", b"")
        if len(digits) < 12:
            continue
        # '+': a phone number (E.164: at most 15 digits); a digit and '.' or ',': the fraction of
        # a number. Then the run's first group is that, and only groups after it may start a card
        # number; 16 digits or more after '+' are no phone number as a whole
        prev = s[i - 1] if i > 0 else 0
        exempt = prev == 43 or (prev in (44, 46) and i > 1 and 48 <= s[i - 2] <= 57)
        if (not exempt or (prev == 43 and len(digits) > 15)) and _is_pan(s, i, j, digits):
            found.append((i, j, digits))
        elif len(digits) < j - i:  # separators in it: search its groups
            found += _groups_holding_pans(s, i, j, exempt)
    return found


def mask_digits(b: bytearray, i: int, j: int) -> None:
    """Replace every digit of b[i:j] but the last four with '*' (a full-width digit with a
    full-width asterisk, U+FF0A: the length stays)."""
    keep = 4
    k = j - 1
    while k >= i:
        c = b[k]
        if 48 <= c <= 57:
            if keep:
                keep -= 1
            else:
                b[k] = 42
        elif 0x90 <= c <= 0x99 and k - 2 >= i and b[k - 1] == 0xBC and b[k - 2] == 0xEF:
            if keep:
                keep -= 1
            else:
                b[k] = 0x8A
            k -= 2
        k -= 1
