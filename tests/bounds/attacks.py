"""Hostile bodies for the bounds tests, built once per process (module-level caches)."""

from __future__ import annotations

import functools
import gzip
import random
import zlib

import zstandard
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

MiB = 1024 * 1024


@functools.cache
def empty_members(encoding: str, size: int = 4 * MiB) -> bytes:
    """``size`` bytes of concatenated empty gzip members / zstd frames / zlib streams."""
    if encoding == "gzip":
        one = gzip.compress(b"", mtime=0)
    elif encoding == "zstd":
        one = zstandard.ZstdCompressor().compress(b"")
    else:
        one = zlib.compress(b"")
    return one * (size // len(one))


@functools.cache
def gzip_bomb(size: int = 64 * MiB) -> bytes:
    """``size`` zero bytes in one gzip member (64 MiB: about 65 kB)."""
    return gzip.compress(b"\x00" * size, compresslevel=9, mtime=0)


@functools.cache
def zstd_bomb(size: int = 64 * MiB) -> bytes:
    """``size`` zero bytes in one zstd frame that does not state its size."""
    compressor = zstandard.ZstdCompressor(level=19, write_content_size=False)
    return compressor.compress(b"\x00" * size)


@functools.cache
def zstd_wide_window(window_log: int, size: int) -> bytes:
    """``size`` bytes of a repeating 64 KiB random pattern in one zstd frame that does not state
    its size and asks for a window of ``2 ** window_log`` bytes (27: 128 MiB, zstd's default
    decoder limit): the decoder's window buffer fills as the body is decoded."""
    pattern = random.Random(window_log).randbytes(64 * 1024)
    params = zstandard.ZstdCompressionParameters.from_level(1, window_log=window_log)
    compressor = zstandard.ZstdCompressor(compression_params=params)  # streamed: no size stated
    chunker = compressor.compressobj()
    return chunker.compress(pattern * (size // len(pattern))) + chunker.flush()


@functools.cache
def deflate_bomb(gib: int = 10) -> bytes:
    """A zlib ("deflate") stream of ``gib`` GiB of zeros (10 GiB: about 10 MB), made of one fully
    flushed 1 MiB block repeated: built without compressing 10 GiB."""
    compressor = zlib.compressobj(9)
    head = compressor.compress(b"\x00" * MiB) + compressor.flush(zlib.Z_FULL_FLUSH)
    block = compressor.compress(b"\x00" * MiB) + compressor.flush(zlib.Z_FULL_FLUSH)
    tail = compressor.flush(zlib.Z_FINISH)
    total = gib * 1024 * MiB
    # adler32 of n zero bytes: a = 1, b = n mod 65521
    checksum = ((total % 65521) << 16) | 1
    return head + block * (gib * 1024 - 2) + block + tail[:-4] + checksum.to_bytes(4, "big")


def json_deep_arrays(depth: int = 100_000) -> bytes:
    return b'{"resourceSpans":' + b"[" * depth + b"]" * depth + b"}"


def json_deep_objects(depth: int = 995) -> bytes:
    return b'{"resourceSpans":[' + b'{"a":' * depth + b"1" + b"}" * depth + b"]}"


def json_long_integer(digits: int = 5000) -> bytes:
    return (b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"name":"x","startTimeUnixNano":'
            + b"9" * digits + b"}]}]}]}")


@functools.cache
def json_empty_spans(count: int = 5_000_000) -> bytes:
    """OTLP/JSON with ``count`` empty spans (5,000,000: 15 MB)."""
    return b'{"resourceSpans":[{"scopeSpans":[{"spans":[' + b",".join([b"{}"] * count) + b"]}]}]}"


@functools.cache
def distinct_resources(count: int = 5000, salt: str = "") -> bytes:
    """An ExportTraceServiceRequest with ``count`` resources, each its own service.name, one span each."""
    request = trace_service_pb2.ExportTraceServiceRequest()
    for index in range(count):
        resource_spans = request.resource_spans.add()
        resource_spans.resource.attributes.append(
            common_pb2.KeyValue(key="service.name", value=common_pb2.AnyValue(string_value=f"svc-{salt}{index}"))
        )
        span = resource_spans.scope_spans.add().spans.add()
        span.trace_id = index.to_bytes(16, "big")
        span.span_id = (index + 1).to_bytes(8, "big")
        span.name = "op"
        span.kind = trace_pb2.Span.SPAN_KIND_SERVER
    return request.SerializeToString()
