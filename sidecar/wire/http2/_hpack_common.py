"""What both HPACK decoders share: the errors, RFC 7541's tables and the Huffman automaton.

The compiled decoder (``ext/hpack.pyx``) and its pure-Python twin (``_hpack_py``) read their
tables from here, so the spec's data is written once:

- the static table (RFC 7541 Appendix A);
- the Huffman code (Appendix B) as its code lengths: the code is canonical (codes of one length
  are consecutive, in symbol order, after the shorter ones), so the lengths determine it;
- a decoding automaton built from it that consumes four bits at a time: 256 states (the
  internal nodes of the code tree) by 16 nibbles, each giving the next state, the symbol it
  completed (a code is at least five bits long, so at most one a nibble), and whether the string
  may end there (RFC 7541 5.2: padding is at most seven bits, all ones, and EOS is an error).
"""

from __future__ import annotations

__all__ = [
    "ENTRY_OVERHEAD",
    "HUFFMAN_ACCEPT",
    "HUFFMAN_EMIT",
    "HUFFMAN_FAIL",
    "STATIC_TABLE",
    "HeaderListTooLarge",
    "HpackError",
    "huffman_automaton",
]

#: the octets an entry adds to the table's size besides its name and value (RFC 7541 4.1); the
#: header list size of SETTINGS_MAX_HEADER_LIST_SIZE counts the same way (RFC 9113 6.5.2)
ENTRY_OVERHEAD = 32


class HpackError(Exception):
    """The header block is not valid HPACK (an HTTP/2 COMPRESSION_ERROR for the connection)."""


class HeaderListTooLarge(HpackError):
    """The decoded header list is over the decoder's ``max_header_list_size``."""


#: RFC 7541 Appendix A, index 1 first
STATIC_TABLE: tuple[tuple[str, str], ...] = (
    (":authority", ""), (":method", "GET"), (":method", "POST"), (":path", "/"),
    (":path", "/index.html"), (":scheme", "http"), (":scheme", "https"), (":status", "200"),
    (":status", "204"), (":status", "206"), (":status", "304"), (":status", "400"),
    (":status", "404"), (":status", "500"), ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"), ("accept-language", ""), ("accept-ranges", ""),
    ("accept", ""), ("access-control-allow-origin", ""), ("age", ""), ("allow", ""),
    ("authorization", ""), ("cache-control", ""), ("content-disposition", ""),
    ("content-encoding", ""), ("content-language", ""), ("content-length", ""),
    ("content-location", ""), ("content-range", ""), ("content-type", ""), ("cookie", ""),
    ("date", ""), ("etag", ""), ("expect", ""), ("expires", ""), ("from", ""), ("host", ""),
    ("if-match", ""), ("if-modified-since", ""), ("if-none-match", ""), ("if-range", ""),
    ("if-unmodified-since", ""), ("last-modified", ""), ("link", ""), ("location", ""),
    ("max-forwards", ""), ("proxy-authenticate", ""), ("proxy-authorization", ""), ("range", ""),
    ("referer", ""), ("refresh", ""), ("retry-after", ""), ("server", ""), ("set-cookie", ""),
    ("strict-transport-security", ""), ("transfer-encoding", ""), ("user-agent", ""),
    ("vary", ""), ("via", ""), ("www-authenticate", ""),
)

#: RFC 7541 Appendix B: the code length in bits of symbols 0-255 and EOS (256)
HUFFMAN_LENGTHS: tuple[int, ...] = (
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28,
    28, 28, 28, 28, 28, 28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5,
    5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6,
    6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22, 22, 23, 22,
    23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22,
    21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20,
    22, 22, 22, 23, 22, 22, 23, 26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19,
    21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22,
    22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, 30,
)
EOS = 256

#: flags of an automaton step
HUFFMAN_EMIT = 1  # the step completed a symbol
HUFFMAN_FAIL = 2  # the step decoded EOS: the string is malformed
HUFFMAN_ACCEPT = 4  # the string may end after this step


def huffman_codes(lengths: tuple[int, ...] = HUFFMAN_LENGTHS) -> list[int]:
    """The canonical code of each symbol, from the code lengths."""
    order = sorted(range(len(lengths)), key=lambda symbol: (lengths[symbol], symbol))
    codes = [0] * len(lengths)
    code, previous = 0, lengths[order[0]]
    for position, symbol in enumerate(order):
        if position:
            code = (code + 1) << (lengths[symbol] - previous)
            previous = lengths[symbol]
        codes[symbol] = code
    return codes


def huffman_automaton() -> list[tuple[int, int, int]]:
    """The four-bits-at-a-time decoder: entry ``state * 16 + nibble`` is (next state, symbol,
    flags). State 0 is the root of the code tree (between symbols)."""
    children: list[list[int | None]] = [[None, None]]  # internal nodes; a leaf is ~symbol
    depth, all_ones = [0], [True]
    for symbol, (code, length) in enumerate(zip(huffman_codes(), HUFFMAN_LENGTHS, strict=True)):
        node = 0
        for shift in range(length - 1, -1, -1):
            bit = code >> shift & 1
            if shift == 0:
                children[node][bit] = ~symbol
                break
            child = children[node][bit]
            if child is None:
                child = len(children)
                children.append([None, None])
                depth.append(depth[node] + 1)
                all_ones.append(all_ones[node] and bit == 1)
                children[node][bit] = child
            node = child
    table: list[tuple[int, int, int]] = []
    for state in range(len(children)):
        for nibble in range(16):
            node, symbol, flags = state, 0, 0
            for shift in (3, 2, 1, 0):
                child = children[node][nibble >> shift & 1]
                if child is None or child == ~EOS:
                    flags = HUFFMAN_FAIL
                    break
                if child < 0:
                    symbol, flags, node = ~child, HUFFMAN_EMIT, 0
                else:
                    node = child
            if not flags & HUFFMAN_FAIL and (node == 0 or (all_ones[node] and depth[node] <= 7)):
                flags |= HUFFMAN_ACCEPT
            table.append((0 if flags & HUFFMAN_FAIL else node, symbol, flags))
    return table
