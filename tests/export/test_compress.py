"""An export batch compressed from its parts decodes, in every encoding, to the parts joined."""

from __future__ import annotations

import asyncio
import gzip
import os
import zlib

import pytest
import zstandard

from sidecar.export import compress
from sidecar.wire import compression

PARTS = [os.urandom(50) + b"span attributes " * 4000 + bytes([n]) * 300 for n in range(5)]


def decode(encoding: str, body: bytes) -> bytes:
    if encoding == "zstd":
        return zstandard.ZstdDecompressor().decompress(body)  # needs the content size in the frame
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    return body


@pytest.mark.parametrize("encoding", ["zstd", "gzip", "deflate", "identity"])
@pytest.mark.parametrize("parts", [PARTS, PARTS[:1], [b""], [b"", PARTS[0], b""]], ids=["five", "one", "empty", "gaps"])
def test_parts_compress_to_what_their_join_decodes_to(encoding: str, parts: list[bytes]) -> None:
    body = compress.compress(encoding, parts, level=1)
    assert decode(encoding, body) == b"".join(parts)
    # the receivers' bounded decoder takes it as one frame / member
    decoded = compression.decompress(compression.normalize(encoding), body, 1 << 24, max_members=1)
    assert bytes(decoded) == b"".join(parts)
    if encoding != "identity" and len(b"".join(parts)) > 10_000:
        assert len(body) < len(b"".join(parts)) / 4


def test_a_large_batch_compresses_in_the_worker_thread_and_a_small_one_inline() -> None:
    large = PARTS * 2
    assert compress.size_of(large) >= compress.THREAD_THRESHOLD
    assert decode("zstd", asyncio.run(compress.compress_async("zstd", large))) == b"".join(large)
    assert decode("gzip", asyncio.run(compress.compress_async("gzip", [b"a" * 10, b"b"]))) == b"a" * 10 + b"b"


def test_an_unknown_encoding_is_refused() -> None:
    with pytest.raises(compression.UnsupportedEncoding):
        compress.compress("br", PARTS)
