"""HPACK decoding (RFC 7541): the compiled decoder and its pure-Python twin, crossed.

Every test runs against both (ids ``py`` and ``c``). The blocks come from the RFC's own examples,
from a real encoder (the ``hpack`` package, which the server used before), and from those blocks
mutated at random, on which the two decoders, and the ``hpack`` package, must agree.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import hpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.wire.http2 import hpack_decoder
from sidecar.wire.http2._hpack_common import STATIC_TABLE, HeaderListTooLarge, HpackError, huffman_codes

REQUIRE_EXTENSIONS = os.environ.get("OTLP_SIDECAR_REQUIRE_EXTENSIONS", "") not in ("", "0")


def _compiled() -> ModuleType | None:
    try:
        return importlib.import_module("sidecar._ext.hpack")
    except ImportError as exc:
        if REQUIRE_EXTENSIONS:
            pytest.fail(f"OTLP_SIDECAR_REQUIRE_EXTENSIONS=1 but sidecar._ext.hpack is missing: {exc}")
        return None


@pytest.fixture(params=["py", "c"])
def impl(request: pytest.FixtureRequest) -> ModuleType:
    if request.param == "py":
        return importlib.import_module("sidecar.wire.http2._hpack_py")
    mod = _compiled()
    if mod is None:
        pytest.skip("sidecar._ext.hpack is not built")
    return mod


def _both() -> list[ModuleType]:
    mods = [importlib.import_module("sidecar.wire.http2._hpack_py")]
    compiled = _compiled()
    return mods + ([compiled] if compiled is not None else [])


def test_the_selector_picks_the_compiled_decoder_unless_told_not_to() -> None:
    expected = "python" if os.environ.get("OTLP_SIDECAR_NO_EXTENSIONS") not in (None, "", "0") else "cython"
    if expected == "cython" and _compiled() is None:
        pytest.skip("sidecar._ext.hpack is not built")
    assert expected == hpack_decoder.IMPLEMENTATION
    for mod in _both():
        assert mod.HpackError is HpackError and mod.HeaderListTooLarge is HeaderListTooLarge


def test_the_tables_are_rfc_7541s() -> None:
    assert len(STATIC_TABLE) == 61 and STATIC_TABLE[1] == (":method", "GET")
    assert STATIC_TABLE[60][0] == "www-authenticate"
    assert tuple((n.decode(), v.decode()) for n, v in hpack.table.HeaderTable.STATIC_TABLE) == STATIC_TABLE
    from hpack.huffman_constants import REQUEST_CODES

    assert huffman_codes() == list(REQUEST_CODES)


# RFC 7541 Appendix C.3 (literals) and C.4 (the same requests, Huffman-coded): one connection,
# three requests, the table growing (C.3.1-C.3.3: 57, 110 and 164 octets)
REQUESTS = [
    [(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "www.example.com")],
    [(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "www.example.com"),
     ("cache-control", "no-cache")],
    [(":method", "GET"), (":scheme", "https"), (":path", "/index.html"), (":authority", "www.example.com"),
     ("custom-key", "custom-value")],
]
C3 = ["828684410f7777772e6578616d706c652e636f6d", "828684be58086e6f2d6361636865",
      "828785bf400a637573746f6d2d6b65790c637573746f6d2d76616c7565"]
C4 = ["828684418cf1e3c2e5f23a6ba0ab90f4ff", "828684be5886a8eb10649cbf",
      "828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf"]


@pytest.mark.parametrize("blocks", [C3, C4], ids=["C.3", "C.4 Huffman"])
def test_the_rfc_examples(impl: ModuleType, blocks: list[str]) -> None:
    decoder = impl.Decoder()
    for block, request, size in zip(blocks, REQUESTS, (57, 110, 164), strict=True):
        assert decoder.decode(bytes.fromhex(block)) == request
        assert decoder.table_size == size
    assert decoder.table_entries[0] == ("custom-key", "custom-value")
    assert decoder.table_entries[-1] == (":authority", "www.example.com")


def test_eviction_and_table_size_updates(impl: ModuleType) -> None:
    encoder = hpack.Encoder()
    encoder.header_table_size = 100  # the block starts with a size update to 100
    decoder = impl.Decoder(max_allowed_table_size=4096)
    first = [("x-a", "1" * 40), ("x-b", "2" * 40)]  # 75 and 75 octets: only the last one fits
    assert decoder.decode(encoder.encode(first)) == first
    assert decoder.table_entries == [("x-b", "2" * 40)] and decoder.table_size == 75
    # an entry larger than the whole table empties it (RFC 7541 4.4)
    big = [("x-c", "3" * 90)]
    assert decoder.decode(encoder.encode(big)) == big
    assert decoder.table_entries == [] and decoder.table_size == 0
    # size 0 then back: a size update evicts everything; two updates may start a block
    decoder.decode(encoder.encode([("x-d", "4")]))
    assert decoder.table_size == 36
    assert decoder.decode(b"\x20\x3f\xe1\x1f") == []  # 0, then 4096
    assert decoder.table_size == 0


@pytest.mark.parametrize(
    ("block", "error", "why"),
    [
        (b"\x80", HpackError, "index 0"),
        (b"\xbe", HpackError, "index 62 with an empty dynamic table"),
        (b"\xff\x80\x80\x80\x80\x01", HpackError, "an integer over 28 bits"),
        (b"\xff", HpackError, "an integer cut short"),
        (b"\x00\x05abc", HpackError, "a string longer than the block"),
        (b"\x00", HpackError, "a literal without its name"),
        (b"\x00\x01a", HpackError, "a literal without its value"),
        (b"\x00\x81\xff\x01a", HpackError, "a Huffman string of eight 1 bits: padding over 7 bits"),
        (b"\x00\x81\x00\x01a", HpackError, "Huffman padding of zeros ('0' is 00000, then 000)"),
        (b"\x00\x84\xff\xff\xff\xff\x01a", HpackError, "EOS (thirty 1 bits) in a Huffman string"),
        (b"\x82\x20", HpackError, "a table size update after a field"),
        (b"\x3f\xe2\x1f", HpackError, "a table size update over the announced 4096"),
        (b"\x00\x01\xff\x01a", HpackError, "a name that is not UTF-8"),
    ],
)
def test_malformed_blocks_are_hpack_errors(impl: ModuleType, block: bytes, error: type, why: str) -> None:
    with pytest.raises(error):
        impl.Decoder().decode(block)


def test_the_header_list_is_bounded_as_it_grows(impl: ModuleType) -> None:
    decoder = impl.Decoder(max_header_list_size=100)
    assert decoder.decode(b"\x82" * 2) == [(":method", "GET")] * 2  # 42 octets each
    with pytest.raises(HeaderListTooLarge):
        decoder.decode(b"\x82" * 3)
    # a block of a few bytes that would decode to megabytes: index one large entry many times
    decoder = impl.Decoder(max_header_list_size=65536)
    decoder.decode(hpack.Encoder().encode([("x-big", "v" * 4000)]))
    with pytest.raises(HeaderListTooLarge):
        decoder.decode(b"\xbe" * 1000)


_names = st.sampled_from([":path", ":authority", "content-type", "grpc-timeout", "user-agent", "x-tenant", "a"])
_values = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=60)
_header_lists = st.lists(st.tuples(_names, _values), max_size=8)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blocks=st.lists(st.tuples(_header_lists, st.booleans(), st.booleans()), min_size=1, max_size=6),
       table=st.sampled_from([0, 64, 256, 4096]))
def test_what_a_real_encoder_writes_decodes_to_what_it_was_given(
    impl: ModuleType, blocks: list[tuple[list[tuple[str, str]], bool, bool]], table: int,
) -> None:
    encoder = hpack.Encoder()
    encoder.header_table_size = table
    decoder = impl.Decoder(max_header_list_size=1 << 20)
    for headers, huffman, never_indexed in blocks:
        fields = [hpack.NeverIndexedHeaderTuple(n, v) if never_indexed else (n, v) for n, v in headers]
        assert decoder.decode(encoder.encode(fields, huffman=huffman)) == headers
    assert decoder.table_size <= table


def _outcome(decoder: object, blocks: list[bytes]) -> list[object]:
    out: list[object] = []
    for block in blocks:
        try:
            out.append(decoder.decode(block))  # type: ignore[attr-defined]
        except HeaderListTooLarge:
            return [*out, "too large"]
        except HpackError:
            return [*out, "error"]
        out.append(decoder.table_size)  # type: ignore[attr-defined]
    return out


def _reference_outcome(blocks: list[bytes]) -> list[object]:
    decoder = hpack.Decoder()
    decoder.max_header_list_size = 2048
    out: list[object] = []
    for block in blocks:
        try:
            out.append([(n, v) for n, v in decoder.decode(block)])
        except hpack.OversizedHeaderListError:
            return [*out, "too large"]
        except (hpack.HPACKError, UnicodeDecodeError, IndexError, ValueError):
            return [*out, "error"]
        out.append(decoder.header_table._current_size)  # no public accessor
    return out


@st.composite
def _mutated_blocks(draw: st.DrawFn) -> list[bytes]:
    encoder = hpack.Encoder()
    encoder.header_table_size = draw(st.sampled_from([0, 64, 256, 4096]))
    blocks = []
    for headers in draw(st.lists(_header_lists, min_size=1, max_size=4)):
        block = bytearray(encoder.encode(headers, huffman=draw(st.booleans())))
        for _ in range(draw(st.integers(0, 3))):
            if not block:
                break
            at = draw(st.integers(0, len(block) - 1))
            kind = draw(st.sampled_from(["set", "cut", "insert"]))
            if kind == "set":
                block[at] = draw(st.integers(0, 255))
            elif kind == "cut":
                del block[at:]
            else:
                block.insert(at, draw(st.integers(0, 255)))
        blocks.append(bytes(block))
    return blocks


@settings(max_examples=400, deadline=None)
@given(blocks=_mutated_blocks())
def test_the_twins_and_the_hpack_package_agree_on_any_block(blocks: list[bytes]) -> None:
    outcomes = [_outcome(mod.Decoder(2048, 4096), blocks) for mod in _both()]
    assert all(outcome == outcomes[0] for outcome in outcomes)
    assert outcomes[0] == _reference_outcome(blocks)
