"""The OTLP/HTTP receiver on sidecar.wire.http1, through a real sidecar: what is decided from the
head (path, method, media type, size) and the framings clients use (Content-Length, chunked);
and, on a receiver of its own, the answer to a body that does not fit the receive budget."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from google.rpc import status_pb2
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

from sidecar.metrics import SidecarMetrics
from sidecar.pipeline import Outcome
from sidecar.receivers.config import ReceiversConfig
from sidecar.receivers.http import HttpReceiver
from sidecar.wire.budget import ReceiveBudget
from tests import sdk
from tests.conftest import sidecar_env

GOOD = encode_spans(sdk.make_spans(4)).SerializeToString()
PB = {"Content-Type": "application/x-protobuf"}
LIMIT = 64 * 1024


@pytest.fixture
async def sidecar(upstream, start_sidecar):
    return await start_sidecar(sidecar_env(upstream, "grpc", SIDECAR_RECEIVERS_MAX_REQUEST_BYTES="64KiB"))


def url(sidecar, path: str = "/v1/traces") -> str:
    return f"http://127.0.0.1:{sidecar.addresses['http'][1]}{path}"


def refused(sidecar, reason: str) -> float:
    labels = {"signal": "traces", "transport": "http", "reason": reason}
    return sidecar.metrics.registry.get_sample_value("otlp_sidecar_receiver_refused_requests_total", labels) or 0


async def raw_exchange(sidecar, head: bytes) -> bytes:
    """Send a head alone; what the sidecar answers before any body is sent."""
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.addresses["http"][1])
    try:
        writer.write(head)
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


async def test_json_with_a_charset_parameter(sidecar, upstream) -> None:
    headers = {"Content-Type": "application/json; charset=utf-8"}
    async with aiohttp.ClientSession() as session:
        async with session.post(url(sidecar), data=b"{}", headers=headers) as r:
            assert (r.status, r.headers["Content-Type"], await r.read()) == (200, "application/json", b"{}")


async def test_unknown_path_and_wrong_method_answer_in_the_otlp_format(sidecar) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(url(sidecar, "/v1/profiles"), data=GOOD, headers=PB) as r:
            assert r.status == 404
            assert status_pb2.Status.FromString(await r.read()).code == 5  # NOT_FOUND
        async with session.get(url(sidecar), headers={"Content-Type": "application/json"}) as r:
            assert (r.status, r.headers["Allow"], r.headers["Content-Type"]) == (405, "POST", "application/json")
            assert "use POST" in (await r.json())["message"]
        # a refusal without a body keeps the connection: the next request on it is served
        async with session.post(url(sidecar), data=GOOD, headers=PB) as r:
            assert r.status == 200


async def test_a_chunked_body(sidecar, upstream) -> None:
    async def pieces() -> AsyncIterator[bytes]:
        for at in range(0, len(GOOD), 100):
            yield GOOD[at:at + 100]

    async with aiohttp.ClientSession() as session, session.post(url(sidecar), data=pieces(), headers=PB) as r:
        assert r.status == 200
    await upstream.wait_for(lambda: len(upstream.spans()) == 4)


async def test_a_chunked_body_over_the_limit_is_refused_and_counted(sidecar) -> None:
    async def pieces() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b"\0" * 8192

    async with aiohttp.ClientSession() as session, session.post(url(sidecar), data=pieces(), headers=PB) as r:
        assert r.status == 413
        assert "exceeds the limit" in status_pb2.Status.FromString(await r.read()).message
    assert refused(sidecar, "too_large") == 1


@pytest.mark.parametrize(
    ("fields", "status", "text", "reason"),
    [
        (b"Content-Type: text/plain\r\nContent-Length: 10", 415, "unsupported content type", "unsupported_media_type"),
        (b"Content-Type: application/x-protobuf\r\nContent-Encoding: br\r\nContent-Length: 10", 415, "br",
         "unsupported_encoding"),
        (b"Content-Type: application/x-protobuf\r\nContent-Length: 10000000", 413, "exceeds the limit", "too_large"),
    ],
)
async def test_refused_from_the_head_before_100_continue(sidecar, fields, status, text, reason) -> None:
    head = b"POST /v1/traces HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n" + fields + b"\r\n\r\n"
    answer = await raw_exchange(sidecar, head)
    assert answer.startswith(b"HTTP/1.1 %d " % status), answer[:80]
    assert b"100 Continue" not in answer and b"Connection: close\r\n" in answer
    assert text in status_pb2.Status.FromString(answer.split(b"\r\n\r\n", 1)[1]).message
    assert refused(sidecar, reason) == 1


async def test_100_continue_then_the_body(sidecar, upstream) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.addresses["http"][1])
    try:
        writer.write(b"POST /v1/traces HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
                     b"Content-Type: application/x-protobuf\r\nContent-Length: %d\r\n\r\n" % len(GOOD))
        assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5) == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(GOOD)
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(b"HTTP/1.1 200 OK\r\n")
    finally:
        writer.close()
    await upstream.wait_for(lambda: len(upstream.spans()) == 4)


class HeldPipeline:
    """A pipeline whose ``submit`` waits for ``release``."""

    def __init__(self) -> None:
        self.holding = asyncio.Event()
        self.release = asyncio.Event()

    async def submit(self, *_: object) -> Outcome:
        self.holding.set()
        await self.release.wait()
        return Outcome(accepted=4)


async def test_a_body_over_the_receive_budget_gets_503_with_retry_after_and_is_counted() -> None:
    metrics = SidecarMetrics()
    pipeline = HeldPipeline()
    receiver = HttpReceiver(ReceiversConfig(), pipeline, metrics)  # type: ignore[arg-type]
    budget = ReceiveBudget(len(GOOD) + 100)  # fits one request
    server = receiver.server(budget=budget)
    _, port = await server.start("127.0.0.1", 0)
    address = f"http://127.0.0.1:{port}/v1/traces"
    try:
        async with aiohttp.ClientSession() as session:

            async def export() -> tuple[int, bytes]:
                async with session.post(address, data=GOOD, headers=PB) as r:
                    return r.status, await r.read()

            first = asyncio.ensure_future(export())
            await asyncio.wait_for(pipeline.holding.wait(), 5)
            assert budget.in_use == len(GOOD)
            async with session.post(address, data=GOOD, headers=PB) as r:
                assert (r.status, r.headers["Retry-After"], r.headers["Content-Type"]) == (
                    503, "1", "application/x-protobuf"
                )
                status = status_pb2.Status.FromString(await r.read())
            assert (status.code, status.message) == (14, budget.message())  # UNAVAILABLE: retried
            labels = {"signal": "traces", "transport": "http", "reason": "busy"}
            assert metrics.registry.get_sample_value("otlp_sidecar_receiver_refused_requests_total", labels) == 1
            pipeline.release.set()
            assert await asyncio.wait_for(first, 5) == (200, b"")
            assert budget.in_use == 0
    finally:
        await server.close(1.0)


async def test_large_bodies_reach_the_pipeline_in_place_and_arrive_whole(upstream, start_sidecar) -> None:
    """Bodies larger than a connection's buffer are handed over without a copy, as a view of
    the buffer they were received in: what is queued must not be that view, or the next body
    received there would overwrite it. Different bodies, one after another on one connection
    and at once on several, must all arrive intact."""
    sidecar = await start_sidecar(sidecar_env(upstream, "grpc"))
    bodies = [encode_spans(sdk.make_spans(900, attributes={"batch": n})).SerializeToString() for n in range(6)]
    assert min(len(body) for body in bodies) > 2 * 64 * 1024  # twice a connection's own buffer

    async def send(session: aiohttp.ClientSession, body: bytes) -> None:
        async with session.post(url(sidecar), data=body, headers=PB) as r:
            assert r.status == 200

    connector = aiohttp.TCPConnector(limit=3)
    async with aiohttp.ClientSession(connector=connector) as session:
        for body in bodies[:2]:  # one connection, one after the other
            await send(session, body)
        await asyncio.gather(*(send(session, body) for body in bodies[2:]))
    await upstream.wait_for(lambda: len(upstream.spans()) == 6 * 900)
    got = []
    for span in upstream.spans():
        attributes = {a.key: a.value.int_value for a in span.attributes}
        got.append((attributes["batch"], attributes["index"], span.name))
    assert sorted(got) == [(n, index, f"op-{index}") for n in range(6) for index in range(900)]
