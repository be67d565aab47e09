"""Body and message compression: round trips, bounds, and thread safety of the worker-thread path."""

from __future__ import annotations

import asyncio
import gzip
import os
import zlib

import pytest
import zstandard

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


@pytest.mark.parametrize("encoding", ["zstd", "gzip"])
async def test_many_batches_compressed_at_once_in_threads(encoding: str) -> None:
    """Regression: one shared zstd compressor used from two threads crashed the process."""
    payloads = [os.urandom(2048) * 64 + bytes([n]) * 4096 for n in range(48)]
    packed = await asyncio.gather(*(compression.compress_async(encoding, p) for p in payloads))
    for original, result in zip(payloads, packed, strict=True):
        assert compression.decompress(encoding, result, len(original)) == original
