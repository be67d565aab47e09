"""Card numbers: every positive masked wherever it hides, every negative left byte for byte.

The cases are built here from public test numbers and the rule (tests/rewrite/pan_cases.py);
the shared corpus (<repo>/../shared/corpus/pan_cases.json) is an extra check where it exists.
"""

from __future__ import annotations

import hmac
import json
import re
from pathlib import Path

import pytest

from sidecar.rewrite.plan import HASH_PREFIX, Plan, ValueDetector

from .builders import ALL_LOCATIONS, parse, request_with
from .pan_cases import NEGATIVE_CASES, POSITIVE_CASES, VALID_NUMBERS
from .reference import cards as reference_cards

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus" / "pan_cases.json"
MASK = Plan(detectors=(ValueDetector("pci.pan", "pan", "mask_pan"),))
KEY = b"test-hmac-key"


def _digits_only(b: bytes) -> bytes:
    """``b`` without separators, full-width digits read as ASCII ones."""
    for d in range(10):
        b = b.replace(chr(0xFF10 + d).encode(), str(d).encode())
    return re.sub(rb"[ -]|\xe3\x80\x80|\xef\xbc\x8d", b"", b)


def _assert_masked(impl, where: str, value: str, pans: list[str]) -> None:
    signal, req = request_with(where, value)
    data = req.SerializeToString()
    result = impl.rewrite(signal, data, [MASK])
    assert result.counts == {("pci.pan", "mask_pan"): len(pans)}, (where, value)
    assert len(result.data) == len(data)  # masking keeps every length
    parse(signal, result.data)
    flat = _digits_only(result.data)
    for pan in pans:
        assert pan.encode() not in flat, (where, value)
        assert pan[:-4].encode() not in flat, (where, value)
        assert pan[-4:].encode() in flat  # the last four stay


def _assert_untouched(impl, where: str, value: str) -> None:
    signal, req = request_with(where, value)
    data = req.SerializeToString()
    result = impl.rewrite(signal, data, [MASK])
    assert result.data == data, (where, value)
    assert result.counts == {}


@pytest.mark.parametrize("where", ALL_LOCATIONS)
def test_generated_positives_masked_everywhere(impl, where):
    for value, pans in POSITIVE_CASES[::7]:
        _assert_masked(impl, where, value, pans)


@pytest.mark.parametrize("where", ALL_LOCATIONS)
def test_generated_negatives_untouched_everywhere(impl, where):
    for value in NEGATIVE_CASES:
        _assert_untouched(impl, where, value)


def test_every_generated_case_in_a_span_attribute(impl):
    for value, pans in POSITIVE_CASES:
        _assert_masked(impl, "span.attr", value, pans)


def test_find_pans_rule(impl):
    assert impl.find_pans(b"pay 4111 1111 1111 1111 now") == [(4, 23, b"4111111111111111")]
    assert impl.find_pans(b"x4111-1111-1111-1111y") == [(1, 20, b"4111111111111111")]
    for n in VALID_NUMBERS:
        assert impl.find_pans(n.encode()) == [(0, len(n), n.encode())]
    # after '+' a phone number has at most 15 digits (E.164): a 16-19 digit card is no phone
    assert impl.find_pans(b"+378282246310005") == []
    assert impl.find_pans(b"card+4111111111111111") == [(5, 21, b"4111111111111111")]
    assert impl.find_pans(b"7.4111111111111111") == []
    assert impl.find_pans(b".4111111111111111") == [(1, 17, b"4111111111111111")]
    assert impl.find_pans(b"41111111111111111111") == []
    assert impl.find_pans(b"a4111111111111111 ") == [(1, 17, b"4111111111111111")]
    # the run goes on (20 digits): not a card as a whole, its first group is one
    assert impl.find_pans(b"{4111111111111111-1234}") == [(1, 17, b"4111111111111111")]
    assert impl.find_pans(b"12 4111 1111 1111 1111") == [(3, 22, b"4111111111111111")]
    # after '+' (a phone number) or a fraction, the run's first group is that, never a card's start
    assert impl.find_pans(b"1,4111111111111111 5") == []
    assert impl.find_pans(b"+4111 1111 1111 1111") == [(1, 20, b"4111111111111111")]
    assert impl.find_pans(b"+353 4111 1111 1111 1111") == [(5, 24, b"4111111111111111")]
    assert impl.find_pans(b"+1 555 4111111111111111") == [(7, 23, b"4111111111111111")]
    assert impl.find_pans(b"3,14 4111111111111111") == [(5, 21, b"4111111111111111")]
    # a card's groups are found whatever joins them (the first find from 4111 takes four groups)
    assert impl.find_pans(b"0435 4111 1111 1111 1111 1111 1111") == [(5, 24, b"4111111111111111")]
    # groups under 3 digits are no part of a card number found by its groups
    assert impl.find_pans(b"1 2 3 4 4111111111111111 5 6") == [(8, 24, b"4111111111111111")]
    # a UUID holds a run only when all of it is inside: the digits beyond it may be a card
    assert impl.find_pans(b"98119674-9479-8210-6701-378282246310005") == [(24, 39, b"378282246310005")]
    uuid = b"41111111-1111-1111-1111-111111111111"
    assert impl.find_pans(uuid) == []


def test_hash_detector_replaces_the_number_with_its_keyed_hash(impl):
    plan = Plan(detectors=(ValueDetector("pci.pan", "pan", "hash"),), hash_key=KEY)
    signal, req = request_with("span.name", "card 4111-1111-1111-1111 declined")
    result = impl.rewrite(signal, req.SerializeToString(), [plan])
    span = parse(signal, result.data).resource_spans[0].scope_spans[0].spans[0]
    digest = hmac.new(KEY, b"4111111111111111", "sha256").hexdigest()
    assert span.name == f"card {HASH_PREFIX}{digest} declined"
    assert result.counts == {("pci.pan", "hash"): 1}


def test_full_width_card_numbers_are_masked_with_full_width_asterisks_or_hashed(impl):
    """Typed with a Japanese or Chinese input method: the text keeps its characters and length."""
    signal, req = request_with("log.body", "カード ４１１１－１１１１－１１１１－１１１１ を登録")
    result = impl.rewrite(signal, req.SerializeToString(), [MASK])
    record = parse(signal, result.data).resource_logs[0].scope_logs[0].log_records[0]
    assert record.body.string_value == "カード ＊＊＊＊－＊＊＊＊－＊＊＊＊－１１１１ を登録"
    plan = Plan(detectors=(ValueDetector("pci.pan", "pan", "hash"),), hash_key=KEY)
    signal, req = request_with("span.name", "card ４１１１　１１１１　１１１１　１１１１.")
    span = parse(signal, impl.rewrite(signal, req.SerializeToString(), [plan]).data).resource_spans[0]
    digest = hmac.new(KEY, b"4111111111111111", "sha256").hexdigest()
    assert span.scope_spans[0].spans[0].name == f"card {HASH_PREFIX}{digest}."  # as its ASCII spelling


def test_redact_detector_replaces_the_whole_value(impl):
    plan = Plan(detectors=(ValueDetector("pci.pan", "pan", "redact"),), redaction="<pan>")
    signal, req = request_with("log.body", "old 4111111111111111, new 5555555555554444")
    result = impl.rewrite(signal, req.SerializeToString(), [plan])
    record = parse(signal, result.data).resource_logs[0].scope_logs[0].log_records[0]
    assert record.body.string_value == "<pan>"
    assert result.counts == {("pci.pan", "redact"): 2}


@pytest.mark.skipif(not CORPUS.exists(), reason="no shared corpus beside this clone")
def test_shared_corpus(impl):
    cases = json.loads(CORPUS.read_text())["cases"]
    for case in cases:
        if case["expect"] == "mask":
            _assert_masked(impl, case["where"], case["value"], case["pans"])
        else:
            _assert_untouched(impl, case["where"], case["value"])


def test_full_width_runs_are_found_wherever_the_string_puts_them(impl):
    """Every grouping and separator, after prefixes of every length: a C scan probes every 12th
    byte, and a full-width run must be found whichever of its bytes the probes land on."""
    for card in ("4111111111111111", "378282246310005", "4222222222222"):
        wide = card.translate({ord("0") + d: 0xFF10 + d for d in range(10)})
        for group in (1, 2, 3, 4, 5):
            for sep in (" ", "-", "\u3000", "\uff0d"):
                body = sep.join(wide[k : k + group] for k in range(0, len(wide), group))
                for prefix in ("", "a", "é", "ab" * 3, "\u3000" * 4, "x" * 11, "1" * 7):
                    value = (prefix + body + ".").encode()
                    found = [(i, j, digits.decode()) for i, j, digits in impl.find_pans(value)]
                    assert found == reference_cards(value), (prefix, group, sep)
                    assert [digits for _, _, digits in found] == [card]
