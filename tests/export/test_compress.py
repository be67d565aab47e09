"""An export batch compressed from its parts decodes, in every encoding, to the parts joined."""

from __future__ import annotations

import asyncio
import gzip
import os
import threading
import time
import zlib
from pathlib import Path

import aiohttp
import pytest
import zstandard
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

from sidecar.export import compress
from sidecar.export.grpc_client import frame_message
from sidecar.wire import compression
from tests import sdk
from tests.conftest import StartSidecar, sidecar_env
from tests.upstream import Upstream

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


@pytest.mark.parametrize("encoding", ["zstd", "gzip"])
async def test_the_worker_thread_and_the_loop_compress_at_once(encoding: str) -> None:
    """Regression: one zstd compressor used by two threads at once crashed the process. Large
    batches go to the worker thread while the loop compresses small ones with its own."""
    payloads = [os.urandom(2048) * 64 + bytes([n]) * 4096 for n in range(48)]
    work = [asyncio.ensure_future(compress.compress_async(encoding, [p, p[:100]], 1, "thread")) for p in payloads]
    await asyncio.sleep(0)  # submitted: the worker compresses from here
    small = [compress.compress(encoding, p[:30000], 1) for p in payloads]  # on the loop, meanwhile
    for original, result in zip(payloads, await asyncio.gather(*work), strict=True):
        assert decode(encoding, result) == original + original[:100]
    for original, result in zip(payloads, small, strict=True):
        assert decode(encoding, result) == original[:30000]


def test_a_large_batch_compresses_in_the_worker_thread_and_a_small_one_inline() -> None:
    large = PARTS * 2
    assert compress.size_of(large) >= compress.THREAD_THRESHOLD
    assert decode("zstd", asyncio.run(compress.compress_async("zstd", large))) == b"".join(large)
    assert decode("gzip", asyncio.run(compress.compress_async("gzip", [b"a" * 10, b"b"]))) == b"a" * 10 + b"b"


@pytest.mark.parametrize("place", ["loop", "thread"])
@pytest.mark.parametrize("encoding", ["zstd", "gzip", "identity"])
def test_a_grpc_export_frames_the_compressed_pieces_as_one_message(encoding: str, place: str) -> None:
    """The gRPC exporter joins its 5-byte prefix to the compressor's pieces (one copy of the
    compressed batch): the message is the prefix of the whole, then the bytes that decode to it."""
    large = PARTS * 2
    pieces = asyncio.run(compress.compress_parts_async(encoding, large, 1, place))
    if encoding != "identity":
        assert len(pieces) > 1 or place == "thread"
    message = frame_message(pieces, compressed=encoding != "identity")
    assert message == frame_message(b"".join(pieces), compressed=encoding != "identity")
    flag, length = message[0], int.from_bytes(message[1:5], "big")
    assert (flag, length) == (int(encoding != "identity"), len(message) - 5)
    assert decode(encoding, message[5:]) == b"".join(large)


def test_an_unknown_encoding_is_refused() -> None:
    with pytest.raises(compression.UnsupportedEncoding):
        compress.compress("br", PARTS)


# -- where a large batch is compressed ------------------------------------------------------------

LARGE = [os.urandom(20_000) + b"log body with a card number 4111 1111 1111 1111 " * 20_000 for _ in range(4)]


async def ticks_while(work: asyncio.Future[bytes] | asyncio.Task[bytes]) -> tuple[bytes, int, float]:
    """Run ``work``; count the turns another task got on the loop meanwhile, and the longest gap."""
    ticks, longest = 0, 0.0
    last = time.perf_counter()
    while not work.done():
        await asyncio.sleep(0)
        now = time.perf_counter()
        ticks, longest, last = ticks + 1, max(longest, now - last), now
    return await work, ticks, longest


@pytest.mark.parametrize("encoding", ["zstd", "gzip", "deflate"])
async def test_on_the_loop_a_large_batch_is_compressed_in_slices_between_other_work(encoding: str) -> None:
    size = compress.size_of(LARGE)
    work = asyncio.create_task(compress.compress_async(encoding, LARGE, 1, "loop"))
    body, ticks, longest = await ticks_while(work)
    assert decode(encoding, body) == b"".join(LARGE)
    assert ticks >= size // compress.SLICE // 2  # the other task ran between slices, not once at the end
    assert longest < 0.25, f"the loop was held {longest:.3f} s at once"


async def test_the_turns_grow_as_the_export_queue_fills(monkeypatch: pytest.MonkeyPatch) -> None:
    assert compress.turn_for(0.0) == 0.0 < compress.turn_for(0.1) < compress.turn_for(0.25)
    assert compress.turn_for(0.5) == compress.turn_for(1.0) == compress.turn_for(3.0) == compress.MAX_TURN
    monkeypatch.setattr(compress, "MAX_TURN", 10.0)  # a full queue: one turn for the whole batch

    async def ticks_at(fill: float) -> int:
        compress.backlog.set(fill)
        work = asyncio.create_task(compress.compress_async("zstd", LARGE, 1, "loop"))
        body, ticks, _ = await ticks_while(work)
        assert decode("zstd", body) == b"".join(LARGE)
        return ticks

    assert await ticks_at(1.0) <= 3 < compress.size_of(LARGE) // compress.SLICE // 2 <= await ticks_at(0.0)


async def test_compressions_at_once_on_the_loop_and_inline_do_not_mix() -> None:
    batches = [[bytes([n]) * 1000 + os.urandom(100) + part for part in LARGE[:2]] for n in range(3)]
    small = [b"x" * 1000, b"y" * 1000]  # below the threshold: compressed inline, in the meantime
    results = await asyncio.gather(
        *(compress.compress_async("zstd", batch, 1, "loop") for batch in batches),
        compress.compress_async("zstd", small, 1, "loop"),
        compress.compress_async("zstd", batches[0], 3, "loop"),
    )
    for batch, body in zip([*batches, small, batches[0]], results, strict=True):
        assert decode("zstd", body) == b"".join(batch)


@pytest.mark.parametrize(("cores", "place"), [(1.0, "loop"), (0.5, "loop"), (2.0, "thread"), (8.0, "thread")])
async def test_auto_compresses_on_the_loop_with_less_than_two_cores(
    monkeypatch: pytest.MonkeyPatch, cores: float, place: str
) -> None:
    monkeypatch.setattr(compress, "usable_cores", lambda: cores)
    threads: set[str] = set()
    real = compress.compress

    def spy(*args: object) -> bytes:
        threads.add(threading.current_thread().name)
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(compress, "compress", spy)
    body = await compress.compress_async("zstd", LARGE, 1)
    assert decode("zstd", body) == b"".join(LARGE)
    if place == "thread":
        assert len(threads) == 1 and next(iter(threads)).startswith("compress")
    else:
        assert threads == set()  # sliced on the loop, not through the one-shot compress


@pytest.mark.parametrize(
    ("files", "affinity", "cores"),
    [
        ({"cpu.max": "50000 100000\n"}, 4, 0.5),  # cgroup v2, half a core
        ({"cpu.max": "200000 100000\n"}, 1, 1.0),  # quota above the affinity
        ({"cpu.max": "max 100000\n"}, 2, 2.0),  # no quota
        ({"cpu/cpu.cfs_quota_us": "150000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 8, 1.5),  # cgroup v1
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3, 3.0),
        ({}, 2, 2.0),  # no cgroup files at all
        ({"cpu.max": "garbage\n"}, 2, 2.0),
    ],
)
def test_usable_cores_follow_the_affinity_and_the_cgroup_quota(
    tmp_path: Path, files: dict[str, str], affinity: int, cores: float
) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert compress.cores_from(affinity, tmp_path) == cores


def test_this_process_has_a_usable_core_count() -> None:
    assert 0 < compress.usable_cores() <= len(os.sched_getaffinity(0))


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
async def test_a_sidecar_compressing_on_its_loop_delivers_every_span(
    upstream: Upstream, start_sidecar: StartSidecar, protocol: str
) -> None:
    """``exporter.compress_in = loop`` through the environment, as a user sets it: large batches
    in zstd reach an upstream that decodes them (h2 / aiohttp, not our code), whole."""
    sidecar = await start_sidecar(sidecar_env(upstream, protocol, SIDECAR_EXPORTER_COMPRESS_IN="loop",
                                              OTEL_EXPORTER_OTLP_COMPRESSION="zstd"))
    assert sidecar.config.exporter.compress_in == "loop"
    bodies = [encode_spans(sdk.make_spans(900, attributes={"batch": n})).SerializeToString() for n in range(4)]
    async with aiohttp.ClientSession() as session:
        for body in bodies:
            url = f"http://127.0.0.1:{sidecar.addresses['http'][1]}/v1/traces"
            async with session.post(url, data=body, headers={"Content-Type": "application/x-protobuf"}) as r:
                assert r.status == 200
    await upstream.wait_for(lambda: len(upstream.spans()) == 4 * 900)
    assert {r.encoding for r in upstream.received} == {"zstd"}
    assert max(len(r.message.SerializeToString()) for r in upstream.received) > compress.THREAD_THRESHOLD
    got = sorted((a["batch"], a["index"]) for a in ({x.key: x.value.int_value for x in s.attributes}
                                                    for s in upstream.spans()))
    assert got == [(n, i) for n in range(4) for i in range(900)]


@pytest.mark.parametrize("place", ["loop", "thread"])
async def test_a_batch_in_parts_is_one_zstd_window_as_large_as_the_batch(place: str) -> None:
    """zstd's level 1 window is 512 KiB: a larger batch streamed through it took zstd's slower
    path for matches across its wrapped buffer. The batch's frame is one window of its size."""
    parts = [os.urandom(64) + b"log record body %d " % n * 20_000 for n in range(4)]  # about 1.5 MB
    size = compress.size_of(parts)
    assert size > 1 << 20
    body = await compress.compress_async("zstd", parts, 1, place)
    frame = zstandard.get_frame_parameters(body)
    assert frame.content_size == size
    assert frame.window_size == size  # one segment, no wrap
    assert decode("zstd", body) == b"".join(parts)
    assert bytes(compression.decompress("zstd", body, size, max_members=1)) == b"".join(parts)


def test_a_batch_larger_than_the_window_still_decodes() -> None:
    parts = [os.urandom(1 << 16) * 40 for _ in range(4)]  # 10 MiB, more than the 8 MiB window
    body = compress.compress("zstd", parts, level=1)
    assert zstandard.get_frame_parameters(body).window_size == 1 << compress.STREAM_WINDOW_LOG
    assert decode("zstd", body) == b"".join(parts)
