"""Connections per listener against a real sidecar process (issue 14): a cap per listener, below
the descriptor limit; at the cap the connection that has waited longest for a request goes, so a
new client is served while silent ones pile up."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from tests.bounds.harness import ACCEPT_MARGIN, BoundedSidecar, Probe

pytestmark = pytest.mark.timeout(120)


async def open_silent(port: int, count: int) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """``count`` connections that send one header line and stop."""
    connections = []
    for _ in range(count):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /v1/traces HTTP/1.1\r\n")
        connections.append((reader, writer))
    return connections


async def test_silent_connections_beyond_the_cap_do_not_lock_clients_out() -> None:
    async with BoundedSidecar(SIDECAR_LIMITS_HTTP_MAX_CONNECTIONS="50") as sidecar:
        fds_before = sidecar.open_fds()
        async with Probe(sidecar) as probe:
            silent = await open_silent(sidecar.http, 300)
            burst_end = await sidecar.accepted_all(sidecar.http)
            await asyncio.sleep(1.0)
            held = sidecar.open_fds() - fds_before
        assert held <= 50 + 5, f"the sidecar holds {held} more descriptors than before"
        probe.assert_served(0.5, min_ok=5, refused_until=burst_end + ACCEPT_MARGIN)
        assert await sidecar.metric("otlp_sidecar_receiver_connections", listener="otlp_http") <= 50
        assert await sidecar.metric("otlp_sidecar_receiver_connections_limit", listener="otlp_http") == 50
        # every connection over the cap was closed: 300 silent ones plus the probe's, minus 50 kept
        assert await sidecar.action("otlp_http", "connection_limit") >= 250
        for _, writer in silent:
            writer.close()
        sidecar.assert_peak_under()


async def test_caps_stay_below_the_descriptor_limit() -> None:
    """With 1,024 descriptors, the listeners' caps leave room for the process's own files: a
    flood on the OTLP/HTTP and admin ports never runs the process out of descriptors."""
    async with BoundedSidecar(nofile=1024) as sidecar:
        async with Probe(sidecar, "health") as probe:
            floods = await open_silent(sidecar.http, 600) + await open_silent(sidecar.admin, 600)
            burst_end = max(await sidecar.accepted_all(sidecar.http), await sidecar.accepted_all(sidecar.admin))
            await asyncio.sleep(1.0)
            fds = sidecar.open_fds()
        assert fds < 1024 - 64, f"{fds} descriptors open of 1024"
        # a probe connecting amid a burst of accepts beyond the admin cap may be refused (closed
        # at once, never left hanging): the kubelet's next probe is served
        probe.assert_served(0.5, min_ok=5, refused_until=burst_end + ACCEPT_MARGIN)
        caps = {listener: await sidecar.metric("otlp_sidecar_receiver_connections_limit", listener=listener)
                for listener in ("otlp_http", "admin")}
        assert caps["admin"] <= 32 and caps["otlp_http"] <= 256, caps
        assert "out of system resource" not in sidecar.log and "Traceback" not in sidecar.log
        for _, writer in floods:
            writer.close()
        with contextlib.suppress(Exception):
            await asyncio.sleep(0.1)
