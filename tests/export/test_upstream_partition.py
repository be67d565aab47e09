"""An upstream that vanishes without closing its connection: the sidecar notices and reconnects.

A real sidecar (configured through the standard ``OTEL_EXPORTER_OTLP_*`` variables) exports over
gRPC to the test upstream (a grpclib server) through a relay on loopback. The relay stands for the
network: it can cut the connections it carries without a word to either end (bytes stop in both
directions, the sockets stay open), which is what a partition, or a Collector's node lost, looks
like from the sidecar. Such a cut cannot be made between two loopback sockets otherwise without
privileges, hence the relay; everything else is real.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tests.conftest import sidecar_env
from tests.export.app_client import App, wait_all_arrived
from tests.upstream import Upstream


class Relay:
    """Carries TCP connections to ``port``; :meth:`cut` silences the ones open now for good."""

    def __init__(self, port: int) -> None:
        self._port = port
        self._server: asyncio.Server | None = None
        self._generation = 0
        self._cut = asyncio.Event()
        self._writers: list[asyncio.StreamWriter] = []
        self.connections = 0
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._carry, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def cut(self) -> None:
        """The connections open now carry nothing more, either way; later ones are carried."""
        self._cut.set()
        self._cut = asyncio.Event()

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()

    async def _carry(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._port)
        self._writers += [writer, up_writer]
        cut = self._cut
        await asyncio.gather(self._pump(reader, up_writer, cut), self._pump(up_reader, writer, cut))

    @staticmethod
    async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter, cut: asyncio.Event) -> None:
        try:
            while not cut.is_set():
                read = asyncio.ensure_future(source.read(65536))
                stop = asyncio.ensure_future(cut.wait())
                await asyncio.wait({read, stop}, return_when=asyncio.FIRST_COMPLETED)
                if cut.is_set():
                    read.cancel()
                    return  # the bytes in flight are lost, and nothing tells either end
                stop.cancel()
                data = read.result()
                if not data:
                    sink.close()
                    return
                sink.write(data)
                await sink.drain()
        except (ConnectionError, asyncio.CancelledError):
            return


@pytest.fixture
async def relay(upstream: Upstream, protocol: str) -> AsyncIterator[Relay]:
    relay = Relay(upstream.grpc_port if protocol == "grpc" else upstream.http_port)
    await relay.start()
    try:
        yield relay
    finally:
        await relay.stop()


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
async def test_an_upstream_gone_silent_is_replaced_and_nothing_is_lost(upstream, relay, start_sidecar,
                                                                       protocol) -> None:
    """gRPC: the PING finds the connection dead (counted); HTTP/1.1: a request that timed out
    leaves its connection, which is closed, never reused."""
    env = sidecar_env(upstream, protocol, SIDECAR_EXPORTER_BATCH_SIZE="50", OTEL_EXPORTER_OTLP_TIMEOUT="1000")
    env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{relay.port}"
    sidecar = await start_sidecar(env)
    registry = sidecar.metrics.registry
    app = App(sidecar.addresses["http"][1])
    await app.send(3)
    await wait_all_arrived(upstream, app)
    before = relay.connections
    assert registry.get_sample_value("otlp_sidecar_exporter_dead_connections_total") == 0

    relay.cut()  # the Collector's node is gone: no FIN, no reset, nothing
    await app.send(3)
    # one export times out (1 s), the PING is not answered (min(5 s, the timeout)), the export is
    # retried on a new connection: well within the wait below, where without the PING every retry
    # would time out on the dead connection
    got = await wait_all_arrived(upstream, app, timeout=15.0)
    assert app.accepted <= set(got) and app.refused == 0
    assert relay.connections > before  # a new connection (gRPC: one channel, one connection)
    if protocol == "grpc":
        assert (before, relay.connections) == (1, 2)
    dead = 1 if protocol == "grpc" else 0
    assert registry.get_sample_value("otlp_sidecar_exporter_dead_connections_total") == dead
    assert registry.get_sample_value("otlp_sidecar_exporter_failed_items_total",
                                     {"signal": "traces", "reason": "timeout"}) == 0
