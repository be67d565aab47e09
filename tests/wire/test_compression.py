"""Body and message compression: round trips, bounds, and thread safety of the worker-thread path."""

from __future__ import annotations

import asyncio
import gzip
import os
import zlib

import pytest
import zstandard

from sidecar.overload.budget import MemoryBudget
from sidecar.wire import compression


@pytest.mark.parametrize("encoding", ["gzip", "zstd", "deflate", "identity"])
def test_round_trip_and_interop(encoding: str) -> None:
    data = os.urandom(1000) + b"otlp" * 10_000
    packed = compression.compress(encoding, data)
    assert compression.decompress(encoding, packed, len(data)) == data
    # what other libraries made decodes too
    foreign = {"gzip": gzip.compress, "zstd": zstandard.ZstdCompressor(write_content_size=False).compress,
               "deflate": zlib.compress, "identity": bytes}[encoding](data)
    assert compression.decompress(encoding, foreign, len(data)) == data


@pytest.mark.parametrize("encoding", ["gzip", "zstd", "deflate"])
def test_every_level_round_trips_and_higher_levels_do_not_grow(encoding: str) -> None:
    data = b"".join(b"span %d GET /api/orders/%d status=200\n" % (i, i % 97) for i in range(20_000))
    sizes = []
    for level in (-7, 1, 3, 9, 19):
        packed = compression.compress(encoding, data, level)
        assert compression.decompress(encoding, packed, len(data)) == data
        sizes.append(len(packed))
    assert sizes[-1] <= sizes[1] <= sizes[0]
    if encoding == "zstd":  # the level reaches the codec
        assert sizes[0] > sizes[-1]


@pytest.mark.parametrize("encoding", ["gzip", "zstd", "deflate"])
def test_a_bomb_stops_at_the_limit(encoding: str) -> None:
    bomb = compression.compress(encoding, b"\x00" * (32 << 20))
    with pytest.raises(compression.TooLarge):
        compression.decompress(encoding, bomb, 1 << 20)


def test_normalize() -> None:
    assert compression.normalize(None) == "identity"
    assert compression.normalize(" GZIP ") == "gzip"
    assert compression.normalize("x-gzip") == "gzip"
    with pytest.raises(compression.UnsupportedEncoding, match="supported: identity, gzip, zstd, deflate"):
        compression.normalize("br")


# -- bounded steps (issue 14) ---------------------------------------------------------------------


def _pieces(encoding: str, data: bytes) -> bytes:
    """``data`` as two members / frames from other libraries, plus what streams leave (gzip
    trailing zeros, a zstd frame without its size, a skippable frame)."""
    half = len(data) // 2
    if encoding == "gzip":
        return gzip.compress(data[:half]) + gzip.compress(data[half:]) + b"\x00" * 7
    if encoding == "deflate":
        return zlib.compress(data[:half]) + zlib.compress(data[half:])
    stream = zstandard.ZstdCompressor(write_content_size=False, write_checksum=True).compressobj()
    skippable = (0x184D2A5A).to_bytes(4, "little") + (3).to_bytes(4, "little") + b"abc"
    return (zstandard.ZstdCompressor().compress(data[:half]) + skippable
            + stream.compress(data[half:]) + stream.flush())


@pytest.mark.parametrize("encoding", ["gzip", "zstd", "deflate"])
async def test_bounded_steps_decode_what_other_libraries_made(encoding: str) -> None:
    data = os.urandom(200_000) + b"otlp span " * 300_000
    body = _pieces(encoding, data)
    assert bytes(compression.decompress(encoding, body, len(data))) == data
    budget = MemoryBudget(16 << 20)
    account = budget.account()
    assert bytes(await compression.decompress_bounded(encoding, body, len(data), account=account)) == data
    assert account.held == len(data)  # the caller gives it back once the request is done
    account.close()
    assert budget.in_use == 0


@pytest.mark.parametrize("encoding", ["gzip", "zstd", "deflate"])
@pytest.mark.parametrize("cut", [1, 9, 200])
def test_truncated_and_corrupt_bodies_are_decompression_errors(encoding: str, cut: int) -> None:
    body = compression.compress(encoding, os.urandom(5000) + b"x" * 50_000)
    with pytest.raises(compression.DecompressionError):
        compression.decompress(encoding, body[:-cut], 1 << 20)
    with pytest.raises(compression.DecompressionError):
        compression.decompress(encoding, b"\x00\x01" + body, 1 << 20)


@pytest.mark.parametrize("encoding", ["gzip", "zstd", "deflate"])
def test_members_are_counted_as_they_start(encoding: str) -> None:
    one = compression.compress(encoding, b"")
    assert compression.decompress(encoding, one * 3, 100, max_members=3) == b""
    with pytest.raises(compression.TooManyMembers, match="more than 3"):
        compression.decompress(encoding, one * 4, 100, max_members=3)


@pytest.mark.parametrize("encoding", ["gzip", "zstd", "deflate"])
def test_each_step_is_bounded_whatever_the_ratio(encoding: str) -> None:
    """A bomb decodes step by step: no step produces more than a few steps' worth, and it stops
    at the limit."""
    bomb = compression.compress(encoding, b"\x00" * (32 << 20), level=9 if encoding != "zstd" else 19)
    decoder = compression.Decoder(encoding, bomb, 16 << 20, step=256 * 1024)
    largest = 0
    with pytest.raises(compression.TooLarge):
        for produced in decoder.steps():
            largest = max(largest, produced)
    assert largest <= 1 << 20
    assert len(decoder.out) <= 16 << 20


async def test_a_bomb_over_the_connection_share_is_413_and_gives_everything_back() -> None:
    budget = MemoryBudget(8 << 20, per_connection=4 << 20)
    account = budget.account()
    with pytest.raises(compression.TooLarge, match="one connection may hold"):
        await compression.decompress_bounded("gzip", gzip.compress(b"\x00" * (6 << 20)), 64 << 20, account=account)
    assert account.held == 0 and budget.in_use == 0


async def test_a_short_budget_waits_then_answers_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compression, "BUDGET_WAIT", 0.2)
    budget = MemoryBudget(4 << 20, per_connection=4 << 20)
    other = budget.account()
    assert other.take(3 << 20)  # another connection holds most of it
    account = budget.account()
    body = gzip.compress(os.urandom(1 << 20) * 2)
    with pytest.raises(compression.BudgetExhausted) as refused:
        await compression.decompress_bounded("gzip", body, 64 << 20, account=account)
    assert refused.value.action.value == "budget_full"
    assert account.held == 0
    # once the other gives back, the same body decodes
    other.close()
    assert len(await compression.decompress_bounded("gzip", body, 64 << 20, account=account)) == 2 << 20


async def test_a_request_that_fits_the_share_alone_waits_for_the_connections_other_calls() -> None:
    """Another call of the same connection holds most of its share: a request that would fit
    alone is no final refusal (it was RESOURCE_EXHAUSTED / 413 once over half the share)."""
    budget = MemoryBudget(16 << 20, per_connection=4 << 20)
    account = budget.account()
    assert account.take(2 << 20)  # the other call's bytes, given back once it is queued
    body = gzip.compress(os.urandom(8192) * 384)  # 3 MiB decoded: fits the 4 MiB share alone
    decoding = asyncio.create_task(compression.decompress_bounded("gzip", body, 64 << 20, account=account))
    await asyncio.sleep(0.1)
    assert not decoding.done()
    account.give(2 << 20)
    assert len(await decoding) == 3 << 20
    assert account.held == 3 << 20


async def test_a_share_others_keep_is_a_retryable_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compression, "BUDGET_WAIT", 0.2)
    budget = MemoryBudget(16 << 20, per_connection=4 << 20)
    account = budget.account()
    assert account.take(2 << 20)
    body = gzip.compress(os.urandom(8192) * 384)
    with pytest.raises(compression.BudgetExhausted) as refused:
        await compression.decompress_bounded("gzip", body, 64 << 20, account=account)
    assert refused.value.action.value == "connection_share"
    assert account.held == 2 << 20  # only the other call's
