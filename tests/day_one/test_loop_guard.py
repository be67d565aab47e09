"""The request-level loop guard (issue 15, item 7), as a user meets it.

The start-time guard refuses an upstream that is one of the sidecar's own listeners. A loop it
cannot see (here: a port forward on another port that leads back to the sidecar, as a
kubectl port-forward or a misrouted Service would) must not copy one span into fifty: the
exporters mark what they send, and a request that carries this sidecar's own mark is refused
with a final status, so the batch fails once, visibly, instead of going round forever.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from sidecar import loop_guard
from tests.bounds.harness import SMALL_TRACES, http_post
from tests.conftest import sidecar_env
from tests.processes import SidecarProcess


class Forward:
    """A TCP forwarder on a free loopback port to a target port set after it started."""

    def __init__(self) -> None:
        self.target = 0
        self.connections = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def _metric(admin: int, name: str, **labels: str) -> float:
    from tests.bounds.harness import http_request

    status, body = await http_request(admin, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 200
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith(name + "{"):
            sample, _, value = line.rpartition(" ")
            got = ",".join(sorted(sample[len(name) + 1:-1].split(",")))
            if all(part in got.split(",") for part in wanted.split(",")):
                total += float(value)
    return total


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
async def test_an_upstream_that_leads_back_fails_the_batch_once_instead_of_looping(protocol: str) -> None:
    forward = Forward()
    forward_port = await forward.start()
    env = sidecar_env(
        None, SIDECAR_POLICY_MODE="passthrough",
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{forward_port}", OTEL_EXPORTER_OTLP_PROTOCOL=protocol,
    )
    sidecar = SidecarProcess(env)
    try:
        ports = await sidecar.start()
        forward.target = ports["grpc" if protocol == "grpc" else "http"]
        status, _ = await http_post(ports["http"], "/v1/traces", SMALL_TRACES)
        assert status == 200  # the app's spans are accepted once
        transport = "grpc" if protocol == "grpc" else "http"
        async with asyncio.timeout(15):
            while not await _metric(ports["admin"], "otlp_sidecar_receiver_refused_requests_total",
                                    transport=transport, reason=loop_guard.REASON):
                await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # time enough for a loop to copy the spans many times over
        accepted = await _metric(ports["admin"], "otlp_sidecar_receiver_accepted_items_total", signal="traces")
        assert accepted == 3, f"the loop copied the spans: {accepted} accepted"
        # the export failed as a final error, once, and the log says why
        assert await _metric(ports["admin"], "otlp_sidecar_receiver_refused_requests_total",
                             reason=loop_guard.REASON) == 1
        assert forward.connections >= 1
    finally:
        await sidecar.stop()
        await forward.stop()
    assert "leads back to one of its own listeners" in sidecar.stderr


def test_a_mark_names_only_this_process() -> None:
    assert loop_guard.passed_here(loop_guard.INSTANCE)
    assert loop_guard.passed_here(f"0123456789abcdef, {loop_guard.INSTANCE}")
    assert not loop_guard.passed_here("0123456789abcdef")
    assert not loop_guard.passed_here(None) and not loop_guard.passed_here("")
