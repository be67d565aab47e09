"""What converting an OTLP/JSON text can hold at once, bounded from above before decoding it.

The bound is made of counts of single bytes (``bytes.count`` at C speed, a few ms a MiB) and of
what CPython 3.11 and upb hold per value, so that no JSON a client can send holds more than it is
charged, whatever its shape (arrays of short scalars, unique keys, empty containers, escapes):

- every value but the first of an object or array follows a ``,``, and every value is a string,
  number, literal, object or array: so a text with ``c`` commas, ``o`` ``{`` and ``a`` ``[``
  holds at most ``c + o + a`` entries (pairs and elements), ``c + 1`` scalars, ``"``/2 strings
  and ``:`` pairs (these bytes inside strings count too: more, never less);
- each costs at most its object (CPython's header, rounded to pymalloc's 16 bytes) plus its
  slot (list or dict entry, with their growth and the copy made while growing), plus its
  characters at the widest width the text may decode to (1, 2 or 4 bytes a character: one
  character needs at least one byte of text);
- json.loads holds the copy of the text, its decoded ``str`` and a memo of the keys;
  json_format then builds the upb message (a struct per object, 8 bytes per repeated scalar with
  its arena's growth, the strings copied) and its serialized bytes, while the document lives.
  The charge is the larger of these two moments.

Measured against tracemalloc and the malloc heap (tests/wire/test_json_charge.py).
"""

from __future__ import annotations

#: a string object: the header of a non-ASCII compact str (72 bytes) + its NUL, rounded up;
#: ASCII-only strings have a 48-byte header
STR = 96
ASCII_STR = 64
#: a number: an int of up to 30 bits (28 bytes) or a float (24), rounded, with room for the
#: digits' own bytes of a larger int (0.45 byte a digit: within the text's bytes)
NUMBER = 48
#: an entry's slot: 8 bytes in a list, over-allocated by 1/8, and the old slots while it grows
SLOT = 24
#: a list: object with its GC header (56 bytes), its first slots (4) allocated
LIST = 128
#: a dict: object with its GC header (64 bytes) and its first keys table (8 slots, 5 usable)
DICT = 192
#: a pair in a dict (a str-keyed entry is 16 bytes, index 1-8 bytes, the table 1.5-3x the
#: entries, and the old table while it grows) and as many again in json's key memo
PAIR = 132
#: upb: a message struct with its arena slack and repeated slot (measured: a span 182 bytes, a
#: log record or exponential histogram point 141, a metric 101)
MESSAGE = 256
#: upb: a repeated scalar (8 bytes; the arena keeps the storage an array outgrew)
REPEATED = 32
#: serialized protobuf per value beyond the text's bytes (a tag and a 10-byte varint)
ENCODED = 12
#: the Python frames, dicts and paths json_format holds for each level it is inside
LEVEL = 4096
#: the decoded text's str header and the small things each conversion holds
BASE = 4096


def char_width(text: bytes) -> int:
    """The widest a character of ``text`` decodes to (bytes): 1 for ASCII without ``\\u``
    escapes, 4 when a character past U+FFFF may appear (a 4-byte UTF-8 sequence, a surrogate
    escape, a UTF-16/32 text), else 2."""
    if text.isascii() and b"\\u" not in text and b"\x00" not in text:
        return 1
    if b"\x00" in text or text.startswith((b"\xff\xfe", b"\xfe\xff")):
        return 4  # json.loads takes UTF-16 and UTF-32 too
    if b"\\ud" in text or b"\\uD" in text or any(bytes([lead]) in text for lead in range(0xF0, 0xF5)):
        return 4  # a surrogate escape, or a 4-byte UTF-8 sequence
    return 2


def charge(text: bytes, max_depth: int) -> tuple[int, int]:
    """(objects and arrays at most, bytes converting ``text`` may hold at once beyond the body)."""
    size = len(text)
    objects = text.count(b"{")
    arrays = text.count(b"[")
    commas = text.count(b",")
    strings = text.count(b'"') // 2
    width = char_width(text)
    scalars = commas + 1
    entries = commas + objects + arrays
    pairs = min(text.count(b":"), commas + objects)  # each pair of an object but its first follows a ,
    levels = min(max_depth, objects + arrays) + 1
    document = (
        objects * DICT + arrays * LIST + entries * SLOT + pairs * PAIR
        + strings * (ASCII_STR if width == 1 else STR) + scalars * NUMBER + width * size
    )
    # json.loads: the bytes copy, the decoded str, the key memo, and the string (or number) being
    # built: over-allocated by 1/4, and widened from 1 byte a character to ``width`` (both at once)
    building = size + size // 4 if width == 1 else (1 + width) * size + size // 4
    decoding = size + width * size + pairs * PAIR + building
    # json_format: upb's message (strings copied, UTF-8 kept on non-ASCII strs), the serialized
    # request, the bytes base64-decoded for one field (its str encoded, padded, decoded)
    upb = objects * MESSAGE + scalars * REPEATED + strings * 16 + size * (1 if width == 1 else 2)
    converting = upb + size + (scalars + objects) * ENCODED + 3 * size + levels * LEVEL
    return objects + arrays, BASE + document + max(decoding, converting)
