# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True, auto_pickle=False
"""HPACK header block decoding (RFC 7541) for the HTTP/2 server: the compiled twin of
``sidecar.wire.http2._hpack_py`` (same API and behaviour; the tests decode the same blocks with
both).

Every gRPC call's header block is decoded; in pure Python that was about a tenth of the
sidecar's CPU on a gRPC receive path. The block comes from a client: every length and index is
checked against what is there, integers are at most 28 bits, Huffman strings are decoded four
bits at a time by the automaton of ``_hpack_common`` (which rejects EOS and bad padding), and the
decoded list is bounded by ``max_header_list_size`` as it grows.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport uint8_t, uint16_t

from sidecar.wire.http2._hpack_common import (
    ENTRY_OVERHEAD,
    STATIC_TABLE,
    HeaderListTooLarge,
    HpackError,
    huffman_automaton,
)

__all__ = ["IMPLEMENTATION", "Decoder", "HeaderListTooLarge", "HpackError"]

IMPLEMENTATION = "cython"

cdef uint16_t _next_state[4096]
cdef uint8_t _symbol[4096]
cdef uint8_t _flags[4096]
cdef enum:
    EMIT = 1
    FAIL = 2
    ACCEPT = 4


def _load_automaton() -> None:
    cdef Py_ssize_t i
    for i, (state, symbol, flags) in enumerate(huffman_automaton()):
        _next_state[i] = state
        _symbol[i] = symbol
        _flags[i] = flags


_load_automaton()

cdef Py_ssize_t _OVERHEAD = ENTRY_OVERHEAD
#: static entries as the dynamic ones are kept: name, value, name octets, entry size
cdef list _STATIC = [(name, value, len(name), len(name) + len(value) + ENTRY_OVERHEAD)
                     for name, value in STATIC_TABLE]
cdef Py_ssize_t _STATIC_COUNT = len(_STATIC)


cdef inline Py_ssize_t _integer(const uint8_t* block, Py_ssize_t* at, Py_ssize_t end, int prefix_bits) except -1:
    """The integer at ``block[at]`` with an N-bit prefix (RFC 7541 5.1); moves ``at`` past it."""
    cdef Py_ssize_t mask = (1 << prefix_bits) - 1
    cdef Py_ssize_t i = at[0]
    cdef Py_ssize_t value = block[i] & mask
    cdef int shift = 0
    cdef uint8_t byte
    i += 1
    if value < mask:
        at[0] = i
        return value
    while True:
        if i >= end:
            raise HpackError("a truncated integer")
        byte = block[i]
        i += 1
        value += <Py_ssize_t>(byte & 0x7F) << shift
        if not byte & 0x80:
            at[0] = i
            return value
        shift += 7
        if shift >= 28:
            raise HpackError("an integer over 28 bits")


cdef inline str _text(const char* data, Py_ssize_t length):
    try:
        return PyUnicode_DecodeUTF8(data, length, NULL)
    except UnicodeDecodeError:
        raise HpackError("a name or value that is not UTF-8") from None


cdef class Decoder:
    """One connection's HPACK decoding context (its dynamic table).

    ``max_allowed_table_size`` is the SETTINGS_HEADER_TABLE_SIZE the server announced: the
    encoder may not set a larger table. After an error the context is no longer the encoder's:
    the connection must end (COMPRESSION_ERROR)."""

    cdef public Py_ssize_t max_header_list_size
    cdef public Py_ssize_t max_allowed_table_size
    cdef Py_ssize_t _max_size
    cdef Py_ssize_t _size
    cdef list _entries  # newest last: name, value, name octets, entry size
    cdef char* _scratch  # Huffman output
    cdef Py_ssize_t _scratch_size

    def __init__(self, Py_ssize_t max_header_list_size=65536, Py_ssize_t max_allowed_table_size=4096) -> None:
        self.max_header_list_size = max_header_list_size
        self.max_allowed_table_size = max_allowed_table_size
        self._max_size = max_allowed_table_size
        self._size = 0
        self._entries = []

    def __dealloc__(self) -> None:
        PyMem_Free(self._scratch)

    @property
    def table_size(self) -> int:
        """The dynamic table's size in octets (RFC 7541 4.1)."""
        return self._size

    @property
    def table_entries(self) -> list:
        """The dynamic table, newest first (index 62 first)."""
        return [(entry[0], entry[1]) for entry in reversed(self._entries)]

    cdef tuple _entry(self, Py_ssize_t index):
        cdef Py_ssize_t dynamic = index - _STATIC_COUNT
        if 0 < index <= _STATIC_COUNT:
            return <tuple>_STATIC[index - 1]
        if index == 0 or dynamic > len(self._entries):
            raise HpackError(f"index {index} is not in the table")
        return <tuple>self._entries[len(self._entries) - dynamic]

    cdef void _evict(self, Py_ssize_t room):
        cdef Py_ssize_t drop = 0
        cdef Py_ssize_t count = len(self._entries)
        while drop < count and self._size > room:
            self._size -= <Py_ssize_t>(<tuple>self._entries[drop])[3]
            drop += 1
        if drop:
            del self._entries[:drop]

    cdef int _add(self, str name, str value, Py_ssize_t name_octets, Py_ssize_t size) except -1:
        if size > self._max_size:
            self._entries.clear()  # RFC 7541 4.4: the table is emptied, the entry not added
            self._size = 0
            return 0
        self._evict(self._max_size - size)
        self._entries.append((name, value, name_octets, size))
        self._size += size
        return 0

    cdef str _string(self, const uint8_t* block, Py_ssize_t* at, Py_ssize_t end, Py_ssize_t* octets):
        """The string literal at ``block[at]`` (RFC 7541 5.2); its octets go to ``octets``."""
        cdef Py_ssize_t length, i, n = 0, need
        cdef bint huffman
        cdef int state = 0, flags = ACCEPT, step
        cdef uint8_t byte
        cdef char* grown
        if at[0] >= end:
            raise HpackError("a truncated header field")
        huffman = block[at[0]] & 0x80
        length = _integer(block, at, end, 7)
        if length > end - at[0]:
            raise HpackError("a string longer than the block")
        i = at[0]
        at[0] = i + length
        if not huffman:
            octets[0] = length
            return _text(<const char*>block + i, length)
        need = length * 8 // 5 + 1  # the shortest code is five bits
        if need > self._scratch_size:
            grown = <char*>PyMem_Realloc(self._scratch, need)
            if grown == NULL:
                raise MemoryError()
            self._scratch, self._scratch_size = grown, need
        for i in range(2 * i, 2 * (i + length)):  # nibble by nibble, high one first
            byte = block[i >> 1]
            step = state << 4 | (byte & 0xF if i & 1 else byte >> 4)
            flags = _flags[step]
            if flags & FAIL:
                raise HpackError("EOS in a Huffman-coded string")
            if flags & EMIT:
                self._scratch[n] = <char>_symbol[step]
                n += 1
            state = _next_state[step]
        if not flags & ACCEPT:
            raise HpackError("a Huffman-coded string with bad padding")
        octets[0] = n
        return _text(self._scratch, n)

    def decode(self, bytes block not None) -> list:
        """The header list of one complete header block; updates the dynamic table."""
        cdef const uint8_t* data = <const uint8_t*>PyBytes_AS_STRING(block)
        cdef Py_ssize_t end = PyBytes_GET_SIZE(block)
        cdef Py_ssize_t at = 0, index, limit, size, listed = 0, name_octets, value_octets
        cdef uint8_t byte
        cdef list fields = []
        cdef tuple entry
        cdef str name, value
        while at < end:
            byte = data[at]
            if byte & 0x80:  # indexed field
                index = _integer(data, &at, end, 7)
                entry = self._entry(index)
                name, value, size = entry[0], entry[1], entry[3]
            elif byte & 0x40 or not byte & 0x20:  # a literal, added to the table or not
                index = _integer(data, &at, end, 6 if byte & 0x40 else 4)
                if index:
                    entry = self._entry(index)
                    name, name_octets = entry[0], entry[2]
                else:
                    name = self._string(data, &at, end, &name_octets)
                value = self._string(data, &at, end, &value_octets)
                size = name_octets + value_octets + _OVERHEAD
                if byte & 0x40:
                    self._add(name, value, name_octets, size)
            else:  # dynamic table size update
                if fields:
                    raise HpackError("a table size update after a header field")
                limit = _integer(data, &at, end, 5)
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
