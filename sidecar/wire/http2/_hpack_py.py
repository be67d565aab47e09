"""HPACK header block decoding (RFC 7541), in pure Python: the twin of ``ext/hpack.pyx``.

Same API and behaviour as the compiled module (the tests decode the same blocks with both).
The block comes from a client, so every length and index is checked against what is there,
integers are at most 28 bits, and the decoded list is bounded by ``max_header_list_size``
as it grows.
"""

from __future__ import annotations

from sidecar.wire.http2._hpack_common import (
    ENTRY_OVERHEAD,
    HUFFMAN_ACCEPT,
    HUFFMAN_EMIT,
    HUFFMAN_FAIL,
    STATIC_TABLE,
    HeaderListTooLarge,
    HpackError,
    huffman_automaton,
)

__all__ = ["IMPLEMENTATION", "Decoder", "HeaderListTooLarge", "HpackError"]

IMPLEMENTATION = "python"

_AUTOMATON = huffman_automaton()
#: static entries as the dynamic ones are kept: name, value, name octets, entry size
_STATIC = [(name, value, len(name), len(name) + len(value) + ENTRY_OVERHEAD) for name, value in STATIC_TABLE]
_STATIC_COUNT = len(_STATIC)


def _integer(block: bytes, i: int, prefix_bits: int) -> tuple[int, int]:
    """The integer at ``block[i]`` with an N-bit prefix (RFC 7541 5.1), and the index after it."""
    mask = (1 << prefix_bits) - 1
    value = block[i] & mask
    i += 1
    if value < mask:
        return value, i
    shift = 0
    while True:
        if i >= len(block):
            raise HpackError("a truncated integer")
        byte = block[i]
        i += 1
        value += (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i
        shift += 7
        if shift >= 28:
            raise HpackError("an integer over 28 bits")


def _text(raw: bytes) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise HpackError("a name or value that is not UTF-8") from None


def _huffman(data: bytes) -> bytes:
    out = bytearray()
    state, flags = 0, HUFFMAN_ACCEPT
    for byte in data:
        for nibble in (byte >> 4, byte & 0xF):
            state, symbol, flags = _AUTOMATON[state << 4 | nibble]
            if flags & HUFFMAN_FAIL:
                raise HpackError("EOS in a Huffman-coded string")
            if flags & HUFFMAN_EMIT:
                out.append(symbol)
    if not flags & HUFFMAN_ACCEPT:
        raise HpackError("a Huffman-coded string with bad padding")
    return bytes(out)


def _string(block: bytes, i: int) -> tuple[str, int, int]:
    """The string literal at ``block[i]`` (RFC 7541 5.2): text, its octets, the index after it."""
    if i >= len(block):
        raise HpackError("a truncated header field")
    huffman = block[i] & 0x80
    length, i = _integer(block, i, 7)
    if length > len(block) - i:
        raise HpackError("a string longer than the block")
    raw = block[i:i + length]
    if huffman:
        raw = _huffman(raw)
    return _text(raw), len(raw), i + length


class Decoder:
    """One connection's HPACK decoding context (its dynamic table).

    ``max_allowed_table_size`` is the SETTINGS_HEADER_TABLE_SIZE the server announced: the
    encoder may not set a larger table. After an error the context is no longer the encoder's:
    the connection must end (COMPRESSION_ERROR)."""

    def __init__(self, max_header_list_size: int = 65536, max_allowed_table_size: int = 4096) -> None:
        self.max_header_list_size = max_header_list_size
        self.max_allowed_table_size = max_allowed_table_size
        self._max_size = max_allowed_table_size
        self._size = 0
        self._entries: list[tuple[str, str, int, int]] = []  # newest last

    @property
    def table_size(self) -> int:
        """The dynamic table's size in octets (RFC 7541 4.1)."""
        return self._size

    @property
    def table_entries(self) -> list[tuple[str, str]]:
        """The dynamic table, newest first (index 62 first)."""
        return [(name, value) for name, value, _, _ in reversed(self._entries)]

    def _entry(self, index: int) -> tuple[str, str, int, int]:
        if 0 < index <= _STATIC_COUNT:
            return _STATIC[index - 1]
        dynamic = index - _STATIC_COUNT
        if index == 0 or dynamic > len(self._entries):
            raise HpackError(f"index {index} is not in the table")
        return self._entries[-dynamic]

    def _evict(self, room: int) -> None:
        while self._entries and self._size > room:
            self._size -= self._entries.pop(0)[3]

    def _add(self, name: str, value: str, name_octets: int, size: int) -> None:
        if size > self._max_size:
            self._entries.clear()  # RFC 7541 4.4: the table is emptied, the entry not added
            self._size = 0
            return
        self._evict(self._max_size - size)
        self._entries.append((name, value, name_octets, size))
        self._size += size

    def decode(self, block: bytes) -> list[tuple[str, str]]:
        """The header list of one complete header block; updates the dynamic table."""
        fields: list[tuple[str, str]] = []
        listed = 0
        i, end = 0, len(block)
        while i < end:
            byte = block[i]
            if byte & 0x80:  # indexed field
                index, i = _integer(block, i, 7)
                name, value, _, size = self._entry(index)
            elif byte & 0x40 or not byte & 0x20:  # a literal, added to the table or not
                index, i = _integer(block, i, 6 if byte & 0x40 else 4)
                if index:
                    name, _, name_octets, _ = self._entry(index)
                else:
                    name, name_octets, i = _string(block, i)
                value, value_octets, i = _string(block, i)
                size = name_octets + value_octets + ENTRY_OVERHEAD
                if byte & 0x40:
                    self._add(name, value, name_octets, size)
            else:  # dynamic table size update
                if fields:
                    raise HpackError("a table size update after a header field")
                limit, i = _integer(block, i, 5)
                if limit > self.max_allowed_table_size:
                    raise HpackError("a table size update over the announced maximum")
                self._max_size = limit
                self._evict(limit)
                continue
            listed += size
            if listed > self.max_header_list_size:
                raise HeaderListTooLarge(f"a header list over {self.max_header_list_size} octets")
            fields.append((name, value))
        return fields
