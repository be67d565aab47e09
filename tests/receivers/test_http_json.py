"""Raw OTLP/JSON posts (as `curl -d @traces.json` sends them) through the HTTP receiver of a real
sidecar arrive upstream as the same data. The bounded conversion itself: tests/wire/test_otlp_json.py."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest

from sidecar.signals import Signal
from tests.conftest import sidecar_env

EXAMPLES = Path(__file__).resolve().parent.parent / "testdata" / "otlp_json"


async def post_json(port: int, signal: Signal, body: bytes) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"http://127.0.0.1:{port}{signal.http_path}", data=body, headers={"Content-Type": "application/json"}
        ) as response:
            return response.status, json.loads(await response.read())


async def test_trace_example(upstream, start_sidecar) -> None:
    sidecar = await start_sidecar(sidecar_env(upstream, "grpc"))
    status, answer = await post_json(
        sidecar.addresses["http"][1], Signal.TRACES, (EXAMPLES / "traces.json").read_bytes()
    )
    assert (status, answer) == (200, {})
    await upstream.wait_for(lambda: len(upstream.spans()) == 1)
    span = upstream.spans()[0]
    assert span.trace_id.hex() == "5b8efff798038103d269b633813fc60c"  # hex in JSON, bytes on the wire
    assert span.span_id.hex() == "eee19b7ec3c1b174"
    assert span.parent_span_id.hex() == "eee19b7ec3c1b173"
    assert span.links[0].trace_id.hex() == "0af7651916cd43dd8448eb211c80319c"
    assert span.name == "I'm a server span"
    assert span.kind == 2 and span.status.code == 2 and span.status.message == "boom"
    assert span.start_time_unix_nano == 1544712660000000000
    attributes = {a.key: a.value for a in span.attributes}
    assert attributes["http.status_code"].int_value == 500
    assert attributes["retry"].bool_value is True
    assert attributes["ratio"].double_value == 0.25
    assert [v.WhichOneof("value") for v in attributes["tags"].array_value.values] == ["string_value", "int_value"]
    assert span.events[0].attributes[0].value.int_value == 2
    scope = upstream.messages(Signal.TRACES)[0].resource_spans[0].scope_spans[0].scope
    assert (scope.name, scope.version) == ("my.library", "1.0.0")


async def test_metrics_example(upstream, start_sidecar) -> None:
    sidecar = await start_sidecar(sidecar_env(upstream, "http/protobuf"))
    status, _ = await post_json(sidecar.addresses["http"][1], Signal.METRICS, (EXAMPLES / "metrics.json").read_bytes())
    assert status == 200
    await upstream.wait_for(lambda: len(upstream.metrics()) == 3)
    counter, gauge, histogram = upstream.metrics()
    assert counter.sum.is_monotonic and counter.sum.data_points[0].as_double == 5
    assert gauge.gauge.data_points[0].as_int == 10
    point = histogram.histogram.data_points[0]
    assert list(point.bucket_counts) == [1, 1] and list(point.explicit_bounds) == [1.0]
    assert point.exemplars[0].trace_id.hex() == "5b8efff798038103d269b633813fc60c"
    assert point.exemplars[0].filtered_attributes[0].value.string_value == "u1"


async def test_logs_example_and_json_partial_answer(upstream, start_sidecar) -> None:
    sidecar = await start_sidecar(sidecar_env(upstream, "grpc"))
    status, _ = await post_json(sidecar.addresses["http"][1], Signal.LOGS, (EXAMPLES / "logs.json").read_bytes())
    assert status == 200
    await upstream.wait_for(lambda: len(upstream.log_records()) == 1)
    record = upstream.log_records()[0]
    assert record.body.string_value == "Example log record"
    assert record.severity_number == 10 and record.span_id.hex() == "eee19b7ec3c1b174"
    kv = record.attributes[1].value.kvlist_value.values[0]
    assert (kv.key, kv.value.string_value) == ("some.map.key", "some value")


@pytest.mark.parametrize("signal", list(Signal))
async def test_empty_json_object_is_an_empty_request(upstream, start_sidecar, signal: Signal) -> None:
    sidecar = await start_sidecar(sidecar_env(upstream, "grpc"))
    assert await post_json(sidecar.addresses["http"][1], signal, b"{}") == (200, {})
