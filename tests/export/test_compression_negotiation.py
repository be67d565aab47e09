"""Compression negotiation of the exporters against servers we did not write.

A grpcio (C-core) server does not take zstd and, once it has seen a zstd call on a connection,
refuses gzip on that connection too; an aiohttp server without zstd answers 400 naming the
encoding; a server may answer 415 with the encodings it takes. Each time the same batch is sent
again with the next encoding, nothing is lost, and the configured encoding is probed again later.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
from aiohttp import web
from grpclib.const import Status
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from sidecar.export.config import ExporterConfig
from sidecar.export.grpc import GrpcExporter
from sidecar.export.grpc_client import CallError, Channel, call_unary
from sidecar.export.http import HttpExporter
from sidecar.export.negotiate import Negotiator, names_encoding, parse_accepted
from sidecar.signals import Signal
from tests.interop.harness import AiohttpUpstream, Delivery, GrpcioUpstream
from tests.policy.conftest import trace_request

pytestmark = pytest.mark.timeout(60)


def batch(name: str) -> bytes:
    return trace_request([({"service.name": name}, [{"n": 1}, {"n": 2}])])


def services(bodies: list[bytes]) -> list[str]:
    names = []
    for request in Delivery.of_bodies(bodies).requests:
        for rs in request.resource_spans:
            names.extend(a.value.string_value for a in rs.resource.attributes if a.key == "service.name")
    return names


@pytest.fixture
def grpcio_server() -> Iterator[GrpcioUpstream]:
    server = GrpcioUpstream()
    server.start()
    yield server
    server.stop()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_negotiator_steps_down_once_and_probes_back() -> None:
    clock = Clock()
    seen: list[tuple[str, str]] = []
    negotiator = Negotiator("zstd", probe_interval=60, clock=clock)
    negotiator.watch(lambda old, new: seen.append((old, new)))
    assert negotiator.select() == "zstd"
    assert negotiator.refused("zstd", "no zstd") == "gzip"
    # a concurrent request refused with zstd too: retried with gzip, no second downgrade
    assert negotiator.refused("zstd", "no zstd") == "gzip"
    assert seen == [("zstd", "gzip")] and negotiator.select() == "gzip"
    clock.now += 59
    assert negotiator.select() == "gzip"
    clock.now += 1
    generation = negotiator.generation
    assert negotiator.select() == "zstd" and negotiator.generation == generation + 1  # the probe
    assert negotiator.refused("zstd", "still no zstd") == "gzip"
    assert negotiator.refused("gzip", "no gzip either", accepted={"identity"}) == "identity"
    assert negotiator.refused("identity", "whatever") is None
    assert seen == [("zstd", "gzip"), ("zstd", "gzip"), ("gzip", "identity")]


def test_the_downgrade_warning_quotes_the_upstream_masked(caplog: pytest.LogCaptureFixture) -> None:
    """The upstream's refusal may quote data: the warning masks it before cutting it to 200
    characters (cut first, the 12 digits before the cut would show)."""
    negotiator = Negotiator("zstd", probe_interval=60, clock=Clock())
    reason = "zstd refused near " + "x" * 170 + "4111111111111111 " + "y" * 500
    with caplog.at_level("WARNING", logger="sidecar.export.negotiate"):
        assert negotiator.refused("zstd", reason) == "gzip"
    (line,) = [r.getMessage() for r in caplog.records if r.name == "sidecar.export.negotiate"]
    assert "upstream does not accept zstd compression" in line and "x" * 170 + "*" in line
    assert "4111" not in line and "y" * 200 not in line


def test_refusal_messages_and_accept_lists() -> None:
    assert names_encoding("400: Can not decode content-encoding: zstandard (zstd)")
    assert names_encoding("Error parsing 'grpc-encoding' metadata")
    assert not names_encoding("proto: cannot parse invalid wire-format data")
    assert parse_accepted("gzip, deflate;q=0.5") == {"gzip", "deflate", "identity"}
    assert parse_accepted(None) is None


async def test_grpcio_takes_gzip_on_the_connection_that_refused_zstd(grpcio_server: GrpcioUpstream) -> None:
    """grpcio 1.85 (C-core) refused ``grpc-encoding: gzip`` on a connection that had carried a
    zstd call when the client's HPACK encoder indexed the header (grpclib's did: the server's
    table no longer matched). Our client sends fields as literals that are never indexed, so the
    connection stays usable; the exporter still moves to a fresh one after a downgrade."""
    path = Signal.TRACES.grpc_path
    used = Channel("127.0.0.1", grpcio_server.port)
    try:
        with pytest.raises(CallError, match=r"(?i)encoding") as refused:
            await call_unary(used, path, batch("a"), encoding="zstd", timeout=5)
        assert refused.value.status in (Status.UNIMPLEMENTED, Status.INTERNAL)
        await call_unary(used, path, batch("b"), encoding="gzip", timeout=5)
        await call_unary(used, path, batch("c"), encoding="gzip", timeout=5)
    finally:
        used.close()
    assert services([r.body for r in grpcio_server.received]) == ["b", "c"]


async def test_grpc_exporter_keeps_gzip_and_probes_zstd_again(grpcio_server: GrpcioUpstream) -> None:
    exporter = GrpcExporter(ExporterConfig(endpoint=f"http://127.0.0.1:{grpcio_server.port}", compression="zstd"))
    downgrades: list[tuple[str, str]] = []
    exporter.watch_downgrades(lambda old, new: downgrades.append((old, new)))
    await exporter.start()
    try:
        for name in ("a", "b", "c"):
            await exporter.export(Signal.TRACES, batch(name))
        assert exporter.negotiator.current == "gzip" and downgrades == [("zstd", "gzip")]
        exporter.negotiator.probe_interval = 0.0  # the next export probes zstd again
        await exporter.export(Signal.TRACES, batch("d"))
        assert exporter.negotiator.current == "gzip" and downgrades == [("zstd", "gzip")] * 2
    finally:
        await exporter.stop()
    assert services([r.body for r in grpcio_server.received]) == ["a", "b", "c", "d"]


async def test_http_exporter_to_aiohttp_without_zstd() -> None:
    server = AiohttpUpstream()
    await server.start()
    exporter = HttpExporter(ExporterConfig(endpoint=f"http://127.0.0.1:{server.port}", protocol="http/protobuf",
                                           compression="zstd"))
    await exporter.start()
    try:
        await asyncio.gather(*(exporter.export(Signal.TRACES, batch(n)) for n in ("a", "b", "c")))
        await exporter.export(Signal.TRACES, batch("d"))
        assert exporter.negotiator.current == "gzip"
    finally:
        await exporter.stop()
        await server.stop()
    assert sorted(services([r.body for r in server.received])) == ["a", "b", "c", "d"]
    assert {r.encoding for r in server.received} == {"gzip"}


@pytest.fixture
async def picky_server() -> AsyncIterator[tuple[int, list[str]]]:
    """Takes only uncompressed bodies: 415 with ``Accept-Encoding: identity`` for others (RFC 7694)."""
    seen: list[str] = []

    async def traces(request: web.Request) -> web.Response:
        encoding = request.headers.get("Content-Encoding", "identity")
        seen.append(encoding)
        if encoding != "identity":
            return web.Response(status=415, headers={"Accept-Encoding": "identity"})
        trace_service_pb2.ExportTraceServiceRequest.FromString(await request.read())
        return web.Response(body=b"", content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield site._server.sockets[0].getsockname()[1], seen  # type: ignore[union-attr]
    await runner.cleanup()


async def test_http_415_with_accept_encoding_goes_to_what_it_takes(picky_server) -> None:
    port, seen = picky_server
    exporter = HttpExporter(ExporterConfig(endpoint=f"http://127.0.0.1:{port}", protocol="http/protobuf",
                                           compression="gzip"))
    await exporter.start()
    try:
        await exporter.export(Signal.TRACES, batch("a"))
        await exporter.export(Signal.TRACES, batch("b"))
    finally:
        await exporter.stop()
    assert seen == ["gzip", "identity", "identity"]  # batch a resent uncompressed, b sent so
