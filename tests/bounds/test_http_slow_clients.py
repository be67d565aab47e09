"""Slow and silent OTLP/HTTP clients against a real sidecar process (issue 14).

The receive budget is taken as bytes arrive, never from a declared Content-Length; a body that
arrives slower than limits.min_receive_rate (after limits.min_rate_grace) or not within
limits.request_deadline is answered 408 and closed; heads and idle connections time out; every
such action is counted in otlp_sidecar_overload_actions_total."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from tests.bounds.harness import BoundedSidecar, MiB, Probe, read_response

pytestmark = pytest.mark.timeout(120)

LATENCY = 0.5
HEAD_16_MIB = (b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
               b"Content-Length: " + str(16 * MiB).encode() + b"\r\n\r\n")


async def test_bodies_declaring_16_mib_and_trickling_lock_nobody_out_and_are_cut() -> None:
    """Four requests declare 16 MiB (64 MiB, more than the 40 MiB budget) and send a byte a
    second: they hold a few bytes of the budget, others are served, and after the grace each
    gets 408 for its rate."""
    async with BoundedSidecar(SIDECAR_LIMITS_MIN_RATE_GRACE="2") as sidecar:
        async with Probe(sidecar) as probe:
            clients = [await asyncio.open_connection("127.0.0.1", sidecar.http) for _ in range(4)]
            for _, writer in clients:
                writer.write(HEAD_16_MIB)
            started = time.perf_counter()
            answers: list[int] = []

            async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                answer = asyncio.ensure_future(read_response(reader))
                for _ in range(15):
                    if answer.done():
                        break
                    writer.write(b"\x00")
                    await asyncio.sleep(1.0)
                answers.append((await asyncio.wait_for(answer, 5))[0])
                writer.close()

            tasks = [asyncio.ensure_future(trickle(*client)) for client in clients]
            await asyncio.sleep(1.5)
            in_use = await sidecar.metric("otlp_sidecar_overload_budget_in_use_bytes")
            await asyncio.gather(*tasks)
            elapsed = time.perf_counter() - started
        assert in_use < 1 * MiB, f"{in_use} bytes of the budget held for bodies that sent a few bytes"
        assert answers == [408] * 4
        assert 2.0 < elapsed < 6.0
        probe.assert_served(LATENCY, min_ok=20)
        sidecar.assert_peak_under()
        assert await sidecar.action("otlp_http", "slow_body") == 4
        assert await sidecar.action("otlp_http", "budget_full") == 0


async def test_a_steady_trickle_is_cut_at_the_request_deadline() -> None:
    async with BoundedSidecar(SIDECAR_LIMITS_REQUEST_DEADLINE="2", SIDECAR_LIMITS_MIN_RECEIVE_RATE="0") as sidecar:
        reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.http)
        writer.write(HEAD_16_MIB)
        answer = asyncio.ensure_future(read_response(reader))
        started = time.perf_counter()
        while not answer.done() and time.perf_counter() - started < 10:
            writer.write(b"\x00" * 100)
            await asyncio.sleep(0.2)
        status, body = await asyncio.wait_for(answer, 5)
        writer.close()
        assert status == 408 and b"not received within 2 s" in body
        assert 1.5 < time.perf_counter() - started < 4.5
        assert await sidecar.action("otlp_http", "request_deadline") == 1


async def test_heads_and_idle_connections_time_out_and_are_counted() -> None:
    async with BoundedSidecar(SIDECAR_LIMITS_HEADER_TIMEOUT="1", SIDECAR_LIMITS_IDLE_TIMEOUT="1") as sidecar:
        partial = [await asyncio.open_connection("127.0.0.1", sidecar.http) for _ in range(5)]
        for _, writer in partial:
            writer.write(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\n")
        idle = [await asyncio.open_connection("127.0.0.1", sidecar.http) for _ in range(3)]
        started = time.perf_counter()
        for reader, _ in partial + idle:
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the sidecar
        assert time.perf_counter() - started < 3.5
        for _, writer in partial + idle:
            writer.close()
        assert await sidecar.action("otlp_http", "header_timeout") == 5
        assert await sidecar.action("otlp_http", "idle_timeout") == 3


async def test_malformed_requests_are_answered_and_counted() -> None:
    async with BoundedSidecar() as sidecar:
        bad = [
            b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST /v1/traces HTTP/1.1\nHost: x\n\n",
            b"GET /v1/traces HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 100_000 + b"\r\n\r\n",
        ]
        statuses = []
        for raw in bad:
            reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.http)
            writer.write(raw)
            statuses.append((await asyncio.wait_for(read_response(reader), 5))[0])
            writer.close()
        assert statuses == [400, 400, 431]
        assert await sidecar.action("otlp_http", "malformed_request") == 3
        assert "Traceback" not in sidecar.log


async def test_pipelined_requests_whose_answers_are_never_read_wait_in_tcp_not_in_the_sidecar() -> None:
    """Found in an attacker's review: requests pipelined behind answers the client never reads
    (a 30 kB Content-Type quoted back in each 415) were read ahead into a buffer that doubled,
    charged to no account, until the write-pause timeout: 100 connections held 43 MiB outside the
    receive budget (220 MiB at the connection cap). Once its answers back up, a connection reads
    no more: the rest waits in TCP."""
    request = (b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Type: "
               + b"a" * 30_000 + b"\r\n\r\n")
    async with BoundedSidecar() as sidecar, Probe(sidecar) as probe:
        await asyncio.sleep(0.5)
        before = sidecar.rss()
        writers = []
        for _ in range(100):
            reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.http, limit=4096)
            writer.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            writer.transport.set_write_buffer_limits(high=64 << 20)  # keep writing whatever the peer reads
            writer.write(request * 200)  # 6 MB each; none of the answers is read
            writers.append((reader, writer))
        await asyncio.sleep(4.0)  # the sidecar reads, answers, its writes back up, it stops reading
        held = sidecar.rss() - before
        assert held < 30 * MiB, f"100 silent pipelining connections hold {held / MiB:.0f} MiB"
        probe.assert_served(max_latency=LATENCY * 2)
        sidecar.assert_peak_under()
        for _, writer in writers:
            writer.transport.abort()
