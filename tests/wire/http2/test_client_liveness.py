"""The exporter's HTTP/2 client and a server that went silent, on loopback.

A Collector whose node was lost, or a network partition, closes nothing: the connection stays
open and nothing comes back, so every export on it would time out until the kernel gives up on
the flow (a quarter of an hour of retransmissions). The client sends a PING when a request
is given up on before its answer began, and replaces the connection when not even that is answered.
The servers here are written frame by frame (tests/wire/http2/test_client.py's ``Peer``).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from sidecar.wire.http2.client import Channel, ConnectionClosed, Unresponsive
from sidecar.wire.http2.frames import ACK, PING, RST_STREAM, frame
from tests.wire.http2.test_client import ANSWER, BLOCK, Peer


@asynccontextmanager
async def peers_of(channel_options: dict[str, float]) -> AsyncIterator[tuple[Channel, asyncio.Queue[Peer], list[int]]]:
    """A listening socket whose connections arrive as peers, a channel to it, and how many times
    the channel's ``on_unresponsive`` was called."""
    peers: asyncio.Queue[Peer] = asyncio.Queue()
    dead: list[int] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await peers.put(Peer(reader, writer))

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    channel = Channel("127.0.0.1", server.sockets[0].getsockname()[1],
                      on_unresponsive=lambda: dead.append(1), **channel_options)
    try:
        yield channel, peers, dead
    finally:
        channel.close()
        server.close()
        while not peers.empty():
            peers.get_nowait().writer.close()


async def first_call(
    channel: Channel, peers: asyncio.Queue[Peer], body: bytes, deadline: float
) -> tuple[asyncio.Task[object], Peer]:
    """A call with ``deadline`` on a new connection, taken by the server (which answers nothing)."""
    call = asyncio.create_task(asyncio.wait_for(channel.request(BLOCK, body, 1000), deadline))
    peer = await peers.get()
    await peer.handshake()
    await peer.request(1)
    return call, peer


async def test_a_silent_connection_is_pinged_then_replaced() -> None:
    async with peers_of({"ping_timeout": 0.5}) as (channel, peers, dead):
        call, peer = await first_call(channel, peers, b"first", 1.0)
        # from here the server is gone without a word: it reads what comes and answers nothing
        with pytest.raises(TimeoutError):
            await call
        gave_up = time.monotonic()
        assert (await peer.until(RST_STREAM, 1))[2] == 1
        _, flags, _, payload = await peer.until(PING)
        assert flags == 0 and len(payload) == 8
        assert await peer.read_frame(timeout=3.0) is None  # closed, without waiting for a GOAWAY
        assert 0.4 < time.monotonic() - gave_up < 3.0  # once the PING had its time
        assert dead == [1]

        again = asyncio.create_task(channel.request(BLOCK, b"again", 1000))
        fresh = await asyncio.wait_for(peers.get(), 5)
        await fresh.handshake()
        assert await fresh.request(1) == b"again"
        fresh.answer(1)
        assert (await again).data == b"ok"


async def test_requests_in_flight_on_a_dead_connection_fail_so_they_can_be_retried() -> None:
    async with peers_of({"ping_timeout": 0.3}) as (channel, peers, _):
        first, peer = await first_call(channel, peers, b"first", 1.0)
        second = asyncio.create_task(channel.request(BLOCK, b"second", 1000))  # no deadline of its own
        await peer.request(3)
        with pytest.raises(TimeoutError):
            await first
        with pytest.raises(Unresponsive):
            await asyncio.wait_for(second, 3)


async def test_a_slow_server_that_answers_the_ping_keeps_its_connection() -> None:
    async with peers_of({"ping_timeout": 0.3}) as (channel, peers, dead):
        call, peer = await first_call(channel, peers, b"slow", 1.0)
        with pytest.raises(TimeoutError):
            await call
        _, _, _, payload = await peer.until(PING)
        peer.send(frame(PING, ACK, 0, payload))  # busy, but there
        await asyncio.sleep(0.6)  # twice the PING's time
        assert dead == []
        nxt = asyncio.create_task(channel.request(BLOCK, b"next", 1000))
        assert await peer.request(3) == b"next"  # the same connection
        peer.answer(3)
        assert (await nxt).data == b"ok"
        assert peers.empty()


async def test_no_ping_when_the_answer_had_begun() -> None:
    """A request given up on after the server began its answer (the response headers came) is a
    slow answer, not a silent server: no PING, and the connection stays."""
    async with peers_of({"ping_timeout": 0.3}) as (channel, peers, dead):
        slow, peer = await first_call(channel, peers, b"slow", 1.0)
        peer.headers(1, ANSWER)  # the answer begins, and its data never comes
        with pytest.raises(TimeoutError):
            await slow
        kinds = []
        with contextlib.suppress(TimeoutError):  # quiet for twice the PING's time
            while (got := await peer.read_frame(timeout=0.6)) is not None:
                kinds.append(got[0])
        assert PING not in kinds and RST_STREAM in kinds
        assert dead == []
        nxt = asyncio.create_task(channel.request(BLOCK, b"next", 1000))
        assert await peer.request(3) == b"next"  # the same connection
        peer.answer(3)
        assert (await nxt).data == b"ok"


async def test_connecting_to_a_server_that_answers_no_syn_is_bounded() -> None:
    """A listener whose accept queue is full drops the next SYN, as a host that is gone does:
    the connection attempt ends at ``connect_timeout``, not after the kernel's two minutes."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    filler = socket.socket()
    filler.connect(("127.0.0.1", port))  # the one connection its queue holds
    channel = Channel("127.0.0.1", port, connect_timeout=0.5)
    try:
        started = time.monotonic()
        with pytest.raises(ConnectionClosed, match=r"no connection to 127\.0\.0\.1:\d+ within 0\.5 s") as caught:
            await channel.request(BLOCK, b"x", 1000)
        assert caught.value.unprocessed  # nothing was sent: safe to send again
        assert time.monotonic() - started < 3.0
    finally:
        channel.close()
        filler.close()
        listener.close()
