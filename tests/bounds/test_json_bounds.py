"""OTLP/JSON against a real sidecar process: bounded before decoding (issue 14).

Before this change: 100,000 `[`, objects nested 995 deep and a 5,000-digit integer were answered
500 with a logged traceback; 5,000,000 empty spans (15 MB) froze every port for over 85 s and
peaked at 1,325 MiB."""

from __future__ import annotations

import json
import time

import pytest
from google.protobuf import json_format

from sidecar.wire.otlp_json import message_to_json
from tests import sdk
from tests.bounds import attacks
from tests.bounds.harness import BoundedSidecar, Probe, http_post

pytestmark = pytest.mark.timeout(120)

LATENCY = 0.5


def message(answer: bytes) -> str:
    return json.loads(answer)["message"]


CASES = {
    "100,000 [ deep": (attacks.json_deep_arrays, 400, "nested more than 64 levels deep", "json_too_deep"),
    "objects nested 995 deep": (attacks.json_deep_objects, 400, "nested more than 64 levels", "json_too_deep"),
    "an integer of 5,000 digits": (attacks.json_long_integer, 400, "integer string conversion", "json_invalid"),
    "5,000,000 empty spans in 15 MB": (
        attacks.json_empty_spans, 413, "more than the 200000 allowed", "json_too_many_items"),
}


@pytest.mark.parametrize(("make", "status", "text", "action"), CASES.values(), ids=CASES.keys())
async def test_hostile_json_gets_a_clear_4xx_and_no_traceback(make, status: int, text: str, action: str) -> None:
    body = make()
    async with BoundedSidecar() as sidecar:
        async with Probe(sidecar) as probe:
            started = time.perf_counter()
            got, answer = await http_post(sidecar.http, "/v1/traces", body, content_type="application/json")
            elapsed = time.perf_counter() - started
        assert got == status
        assert text in message(answer)
        assert elapsed < 3.0
        probe.assert_served(LATENCY)
        sidecar.assert_peak_under()
        assert await sidecar.action("otlp_http", action) == 1
        assert "Traceback" not in sidecar.log and " ERROR " not in sidecar.log


def _scalar_bloat(item: bytes, size: int = int(7.5 * attacks.MiB)) -> bytes:
    """The review's attack: an unknown field holding an array of short scalars (ignored by OTLP,
    13x its text once json.loads built it), 7.5 MiB: within one connection's share as wire bytes."""
    return b'{"resourceSpans":[],"x":[' + b",".join([item] * (size // (len(item) + 1))) + b"]}"


def _bounds_bloat(size: int = int(7.5 * attacks.MiB)) -> bytes:
    """A histogram's explicitBounds of 1e9 (a float each, and 8 bytes of upb each)."""
    return (b'{"resourceMetrics":[{"scopeMetrics":[{"metrics":[{"name":"m","histogram":{"dataPoints":[{'
            b'"explicitBounds":[' + b",".join([b"1e9"] * (size // 4)) + b'],"bucketCounts":[]}]}}]}]}]}')


BLOAT = {
    "7.5 MiB of short strings in an unknown field": (lambda: _scalar_bloat(b'"ab"'), "/v1/traces"),
    "7.5 MiB of small integers in an unknown field": (lambda: _scalar_bloat(b"-6"), "/v1/traces"),
    "7.5 MiB of histogram bounds": (_bounds_bloat, "/v1/metrics"),
}


@pytest.mark.parametrize(("make", "path"), BLOAT.values(), ids=BLOAT.keys())
async def test_json_that_decodes_to_many_times_its_size_is_refused_before_decoding(make, path: str) -> None:
    """Before: charged 2x its text, held 13x: peak RSS 52 -> 191 MiB, answered 200."""
    body = make()
    async with BoundedSidecar() as sidecar:
        async with Probe(sidecar) as probe:
            started = time.perf_counter()
            status, answer = await http_post(sidecar.http, path, body, content_type="application/json")
            elapsed = time.perf_counter() - started
        assert status == 413, answer  # final: the body and its decoding never fit one connection
        assert "one connection may hold" in message(answer)
        assert elapsed < 3.0
        probe.assert_served(LATENCY)
        sidecar.assert_peak_under()
        assert await sidecar.action("otlp_http", "json_too_many_items") == 1
        assert "Traceback" not in sidecar.log and " ERROR " not in sidecar.log


async def test_a_lower_items_limit_applies() -> None:
    body = attacks.json_empty_spans(2000)
    async with BoundedSidecar(SIDECAR_LIMITS_JSON_MAX_ITEMS="1000") as sidecar:
        status, answer = await http_post(sidecar.http, "/v1/traces", body, content_type="application/json")
        assert status == 413 and "more than the 1000 allowed (limits.json_max_items)" in message(answer)


SPANS = 512


async def test_an_sdk_batch_as_json_is_converted_while_others_are_served() -> None:
    """512 SDK spans (an SDK's batch) as OTLP/JSON (about 270 kB): accepted whole, converted off the
    event loop. (5,000 spans, 2.6 MB, hold about 24 MiB decoded: more than one connection's share.)"""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    request = encode_spans(sdk.make_spans(SPANS, attributes={"batch": "json"}))
    body = json.dumps(message_to_json(request)).encode()
    assert json_format  # the JSON mapping the sidecar reads back
    async with BoundedSidecar() as sidecar:
        async with Probe(sidecar) as probe:
            status, answer = await http_post(sidecar.http, "/v1/traces", body, content_type="application/json")
        assert status == 200, answer
        def batch() -> int:  # the probe's spans are there too
            return sum(1 for span in sidecar.upstream.spans() if any(a.key == "batch" for a in span.attributes))

        await sidecar.upstream.wait_for(lambda: batch() == SPANS, timeout=30)
        probe.assert_served(LATENCY)
        sidecar.assert_peak_under()
        print(f"JSON of {len(body) / 2**20:.1f} MiB: peak RSS {sidecar.peak_rss() / 2**20:.1f} MiB")
