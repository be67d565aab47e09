"""What the policies may add to a request as they rewrite it (limits.max_rewrite_growth_bytes),
against a real sidecar process enforcing the bundled policies (they hash `card_holder`).

Before this change: one span of 800,000 attributes `card_holder = "x"` (16 MB, 39 kB gzip) was
rewritten whole, ~76 MB of output and an HMAC and an edit per attribute on the event loop: peak
RSS 276 MiB here (over the 256 Mi container limit), every port frozen 1.7 s, then a 413 only
because the output was larger than the export queue. Now the rewrite stops once its edits would
add more than 4 MiB: 413 / RESOURCE_EXHAUSTED, nothing past the limit built."""

from __future__ import annotations

import gzip
import time

import pytest

from tests.bounds.harness import BoundedSidecar, Probe, http_post, refused_traces, status_message
from tests.conftest import NO_EXTENSIONS
from tests.rewrite.builders import field as _ld

pytestmark = pytest.mark.timeout(120)

ENFORCE = {"SIDECAR_POLICY_MODE": "enforce"}
#: how long the attack may take, and others wait meanwhile: the pure-Python twin
#: (OTLP_SIDECAR_NO_EXTENSIONS=1) reads a 16 MB span at Python speed before the rewrite even
#: starts (every request that size holds its loop that long, rewritten or not); the C one 0.1 s
ELAPSED, LATENCY = (6.0, 3.0) if NO_EXTENSIONS else (2.0, 0.5)


def _kv(key: bytes, value: bytes) -> bytes:
    return _ld(1, key) + _ld(2, _ld(1, value))


def hashed_spans(spans: int, attributes: int, value: bytes = b"x") -> bytes:
    """``spans`` spans of ``attributes`` attributes ``card_holder`` each (hashed by the bundled
    policies), under one resource."""
    kv = _ld(9, _kv(b"card_holder", value))
    span = _ld(2, _ld(1, b"\xff" * 16) + _ld(2, bytes(8)) + _ld(5, b"s") + kv * attributes)
    resource = _ld(1, _ld(1, _kv(b"service.name", b"svc")))
    return _ld(1, resource + _ld(2, span * spans))


@pytest.mark.parametrize("transport", ["http", "grpc"])
async def test_eight_hundred_thousand_hashed_attributes_are_refused_at_the_limit(transport: str) -> None:
    body = hashed_spans(1, 800_000)
    packed = gzip.compress(body, 9)
    assert len(packed) < 64 * 1024 and len(body) > 15_000_000
    async with BoundedSidecar(**ENFORCE) as sidecar:
        async with Probe(sidecar, kind="http" if transport == "http" else "grpc") as probe:
            started = time.perf_counter()
            status, message = await refused_traces(sidecar, transport, body, packed, "gzip")
            elapsed = time.perf_counter() - started
        assert status == 413, message
        # the bounds first (before the limit the answer was 413 too, once the memory was spent)
        sidecar.assert_peak_under()
        assert elapsed < ELAPSED
        probe.assert_served(LATENCY)
        assert ("the policies would grow this request by more than 4194304 bytes "
                "(limits.max_rewrite_growth_bytes); send it in smaller requests") in message
        assert await sidecar.action(f"otlp_{transport}", "rewrite_too_large") == 1
        refused_items = await sidecar.metric("otlp_sidecar_receiver_refused_items_total", signal="traces",
                                             transport=transport, reason="too_large")
        assert refused_items == 1  # its one span, counted as received and refused


async def test_a_request_of_many_hashed_attributes_under_the_limit_is_accepted() -> None:
    """512 spans of 10 hashed attributes each (~415 kB added): far under the default; a lower
    limit applies and answers with its own figure."""
    body = hashed_spans(512, 10, value=b"Jane Q. Cardholder")
    async with BoundedSidecar(**ENFORCE) as sidecar:
        status, answer = await http_post(sidecar.http, "/v1/traces", gzip.compress(body),
                                         headers={"Content-Encoding": "gzip"})
        assert status == 200, status_message(answer)
        received = await sidecar.metric("otlp_sidecar_receiver_received_items_total", signal="traces",
                                        transport="http")
        assert received == 512
        assert await sidecar.action("otlp_http", "rewrite_too_large") == 0
        sidecar.assert_peak_under()
    async with BoundedSidecar(SIDECAR_LIMITS_MAX_REWRITE_GROWTH_BYTES="256KiB", **ENFORCE) as sidecar:
        status, answer = await http_post(sidecar.http, "/v1/traces", body)
        assert status == 413
        assert "more than 262144 bytes (limits.max_rewrite_growth_bytes)" in status_message(answer)
        assert await sidecar.action("otlp_http", "rewrite_too_large") == 1
