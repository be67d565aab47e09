"""The cap on TLS handshakes in progress (``sidecar.tls.acceptor._Pending``): which connection is
closed at the cap, and how the acceptor learns that a client has sent its first bytes.

At the cap a new connection closes the oldest handshake whose client has sent nothing yet, whatever
its age; only when every one has sent something does the age rule apply (the oldest once it waited
``EVICT_AFTER``, else the new connection). Before, only the age rule: a steady flood of silent TCP
connections kept the table young, and the new connections closed were the real clients'.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.tls import acceptor
from sidecar.tls.acceptor import EVICT_AFTER, _FirstRead, _Pending, _TLSAcceptor, tls_wrapper
from sidecar.tls.server import ServerTLS
from sidecar.wire.http1 import Http1Server, Limits, Request, Response
from tests.tls.pki import make_pki


class FakeTransport(asyncio.Transport):
    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.aborted = False

    def abort(self) -> None:
        assert not self.aborted, f"{self.name} aborted twice"
        self.aborted = True

    def __repr__(self) -> str:
        return self.name


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def _table(limit: int, clock: Clock) -> tuple[_Pending, list[None], dict[str, FakeTransport]]:
    refused: list[None] = []
    return _Pending(limit, lambda: refused.append(None), clock), refused, {}


def _enter(pending: _Pending, transports: dict[str, FakeTransport], name: str, source: str = "") -> bool:
    transports[name] = FakeTransport(name)
    return pending.enter(name, transports[name], source)


def _aborted(transports: dict[str, FakeTransport]) -> list[str]:
    return [name for name, transport in transports.items() if transport.aborted]


def test_the_oldest_silent_connection_is_closed_however_young(clock: Clock) -> None:
    pending, refused, transports = _table(3, clock)
    for name in "abc":
        assert _enter(pending, transports, name)
        clock.now += 0.001
    pending.heard("a")  # a real client: its ClientHello came at once
    assert _enter(pending, transports, "d")  # b is 2 ms old, but silent
    assert _aborted(transports) == ["b"] and len(refused) == 1
    # a flood: each new silent connection is itself the newest, the oldest silent one goes
    for name in "efgh":
        assert _enter(pending, transports, name)
        clock.now += 0.001
    assert _aborted(transports) == ["b", "c", "d", "e", "f"]
    assert len(refused) == 5 and len(pending) == 3 and pending.silent() == 2
    assert not transports["a"].aborted  # the client that spoke is never closed for a silent one


def test_when_all_have_spoken_the_new_connection_is_closed_while_they_are_young(clock: Clock) -> None:
    pending, refused, transports = _table(2, clock)
    for name in "ab":
        assert _enter(pending, transports, name)
        pending.heard(name)
    clock.now += EVICT_AFTER - 0.01
    assert not _enter(pending, transports, "c")  # a burst: the handshakes in progress go on
    assert _aborted(transports) == ["c"] and len(refused) == 1 and len(pending) == 2
    clock.now += 0.01
    assert _enter(pending, transports, "d")  # a waited EVICT_AFTER
    assert _aborted(transports) == ["a", "c"] and len(refused) == 2
    # d is silent: the next one closes it, not b (which spoke)
    assert _enter(pending, transports, "e")
    assert _aborted(transports) == ["a", "c", "d"] and len(refused) == 3


def test_an_address_holding_more_than_the_new_connections_loses_one(clock: Clock) -> None:
    """A flood from one address that sends a byte and stalls (so nothing is silent, nothing old)
    cannot keep another address out; at the top, an address only closes its own."""
    pending, refused, transports = _table(4, clock)
    for name in "abc":
        assert _enter(pending, transports, name, "10.0.0.9")
        pending.heard(name)
    assert _enter(pending, transports, "d", "10.0.0.9")  # silent for now
    assert _enter(pending, transports, "api1", "10.0.0.1")  # 10.0.0.9 holds 4: its silent one goes
    pending.heard("api1")
    assert _enter(pending, transports, "api2", "10.0.0.1")  # 3 against 1: its oldest, however young
    assert set(_aborted(transports)) == {"d", "a"}
    assert not _enter(pending, transports, "e", "10.0.0.9")  # 2 against 2: the age rule, its own
    pending.heard("api2")
    assert not _enter(pending, transports, "api3", "10.0.0.1")  # 2 against 2, none silent, young
    assert set(_aborted(transports)) == {"d", "a", "e", "api3"} and len(refused) == 4
    clock.now += EVICT_AFTER
    assert _enter(pending, transports, "f", "10.0.0.9")  # its own oldest, b, waited long enough
    assert set(_aborted(transports)) == {"d", "a", "e", "api3", "b"} and len(pending) == 4
    assert not transports["api1"].aborted


def test_a_connection_that_left_is_forgotten(clock: Clock) -> None:
    pending, refused, transports = _table(2, clock)
    assert _enter(pending, transports, "a")
    assert _enter(pending, transports, "b")
    pending.leave("a")
    pending.heard("a")  # late: nothing happens
    assert len(pending) == 1 and pending.silent() == 1
    assert _enter(pending, transports, "c")
    assert refused == [] and _aborted(transports) == []


@settings(max_examples=300, deadline=None)
@given(
    limit=st.integers(1, 5),
    steps=st.lists(st.tuples(st.sampled_from(["enter", "heard", "leave", "wait"]), st.integers(0, 30)), max_size=80),
)
def test_the_cap_holds_and_each_closure_is_counted_once(limit: int, steps: list[tuple[str, int]]) -> None:
    """Any sequence of arrivals (from three addresses), first bytes, ends and waits: the table never
    exceeds the cap; each arrival at the cap closes exactly one connection and calls ``refused()``
    once; the one closed is an address's that holds the most, when the new one's holds fewer
    (its oldest silent, else its oldest), else the new one's address's oldest silent, else its
    oldest once it waited ``EVICT_AFTER``, else the new one; nothing closed stays."""
    clock = Clock()
    pending, refused, transports = _table(limit, clock)
    since: dict[str, float] = {}
    spoke: set[str] = set()
    source_of: dict[str, str] = {}
    inside: list[str] = []  # the model: in the order they came
    for number, (action, arg) in enumerate(steps):
        if action == "wait":
            clock.now += arg / 20
            continue
        if action in ("heard", "leave"):
            if inside:
                name = inside[arg % len(inside)]
                if action == "heard":
                    pending.heard(name)
                    spoke.add(name)
                else:
                    pending.leave(name)
                    inside.remove(name)
            continue
        name = f"c{number}"
        source = "abc"[arg % 3]
        source_of[name] = source
        at_cap = len(inside) >= limit
        by_source = {s: [n for n in inside if source_of[n] == s] for s in "abc"}
        most = max(len(names) for names in by_source.values())
        closed_before = set(_aborted(transports))
        counted = len(refused)
        admitted = _enter(pending, transports, name, source)
        newly = set(_aborted(transports)) - closed_before
        if not at_cap:
            assert admitted and not newly and len(refused) == counted
        else:
            assert len(refused) == counted + 1 and len(newly) == 1
            (victim,) = newly
            if len(by_source[source]) < most:  # another address holds more: it loses one
                keys = by_source[source_of.get(victim, "")] if victim != name else []
                assert len(keys) == most and victim == next((n for n in keys if n not in spoke), keys[0])
            else:
                own = by_source[source]
                silent = [n for n in own if n not in spoke]
                if silent:
                    assert victim == silent[0]
                elif clock.now - since[own[0]] >= EVICT_AFTER:
                    assert victim == own[0]
                else:
                    assert victim == name and not admitted
            if victim != name:
                inside.remove(victim)
        if admitted:
            inside.append(name)
            since[name] = clock.now
        assert len(pending) == len(inside) <= limit
        assert pending.silent() == len([n for n in inside if n not in spoke])
        assert not any(transports[n].aborted for n in inside)


class FakeSocketTransport:
    """What ``_watch_first_read`` asks of the socket transport."""

    def __init__(self, protocol: asyncio.BaseProtocol, reading: bool = False) -> None:
        self.protocol, self.reading, self.closing = protocol, reading, False

    def is_closing(self) -> bool:
        return self.closing

    def is_reading(self) -> bool:
        return self.reading

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self.protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol


class FakeTLSProtocol(asyncio.BufferedProtocol):
    def __init__(self) -> None:
        self.buffer = bytearray(16)
        self.updates: list[int] = []

    def get_buffer(self, sizehint: int) -> bytearray:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.updates.append(nbytes)


def _acceptor_in(pending: _Pending) -> tuple[_TLSAcceptor, FakeTransport]:
    tls = cast(ServerTLS, None)
    connection = _TLSAcceptor(cast(Any, None), tls, 10.0, acceptor._HandshakeLog(), pending)
    raw = FakeTransport("raw")
    assert pending.enter(connection, raw)
    return connection, raw


def test_the_first_read_marks_the_connection_heard_and_steps_aside() -> None:
    pending = _Pending(4, None)
    connection, _ = _acceptor_in(pending)
    tls_protocol = FakeTLSProtocol()
    transport = FakeSocketTransport(tls_protocol)  # start_tls handed it over, reading still paused
    connection._watch_first_read(cast(asyncio.Transport, transport), pending)
    assert isinstance(transport.protocol, _FirstRead) and pending.silent() == 1
    assert transport.protocol.get_buffer(-1) is tls_protocol.buffer
    transport.protocol.buffer_updated(5)
    assert transport.get_protocol() is tls_protocol and tls_protocol.updates == [5]
    assert pending.silent() == 0 and len(pending) == 1


@pytest.mark.parametrize("case", ["not_handed_over", "already_reading"])
def test_an_unexpected_order_counts_the_connection_heard(case: str) -> None:
    """Another event loop's start_tls might not hand the socket over before it reads: the
    connection is then closed only under the age rule, as before (never wrongly as silent)."""
    pending = _Pending(4, None)
    connection, _ = _acceptor_in(pending)
    if case == "not_handed_over":
        transport = FakeSocketTransport(connection)
    else:
        transport = FakeSocketTransport(FakeTLSProtocol(), reading=True)
    before = transport.protocol
    connection._watch_first_read(cast(asyncio.Transport, transport), pending)
    assert transport.protocol is before
    assert pending.silent() == 0 and len(pending) == 1


async def _ok(request: Request) -> Response:
    return Response(200, b"ok")


async def test_a_steady_silent_flood_does_not_refuse_tls_clients(tmp_path: Path) -> None:
    """An OTLP listener's acceptor at the receivers' default cap (16): 150 silent TCP connections a
    second for 2.5 s while a TLS client makes a request every 30 ms on a new connection; every
    request is served, and every silent connection over the cap is closed and counted."""
    pki = make_pki(tmp_path)
    tls = ServerTLS(cert_file=pki.server_cert, key_file=pki.server_key)
    context = ssl.create_default_context(cafile=pki.ca_cert)
    refused: list[None] = []
    server = Http1Server(_ok, limits=Limits())
    _, port = await server.start("127.0.0.1", 0, tls_wrapper(tls, handshake_timeout=10.0, max_handshakes=16,
                                                             refused=lambda: refused.append(None)))
    loop = asyncio.get_running_loop()
    silent: list[asyncio.StreamWriter] = []
    opened = 0

    async def flood() -> None:
        nonlocal opened
        started = loop.time()
        while (elapsed := loop.time() - started) < 2.5:
            for _ in range(int(elapsed * 150) - opened):
                opened += 1
                silent.append((await asyncio.open_connection("127.0.0.1", port))[1])
            await asyncio.sleep(0.005)

    served = failed = 0
    attack = asyncio.ensure_future(flood())
    try:
        await asyncio.sleep(0.3)
        while not attack.done():
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="localhost"), 5.0)
                writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                assert (await asyncio.wait_for(reader.readuntil(b"\r\n"), 5.0)).startswith(b"HTTP/1.1 200")
                writer.close()
                served += 1
            except (OSError, ssl.SSLError):
                failed += 1
            await asyncio.sleep(0.03)
        await attack
    finally:
        attack.cancel()
        for writer in silent:
            writer.close()
        await server.close(1.0)
    assert opened >= 300
    assert failed == 0, f"{failed} of {failed + served} TLS clients refused"
    assert served >= 20
    # every silent connection over the cap was closed and counted (plus, at most, one for each
    # client: it closed a silent one, then its handshake ended and left room)
    assert opened - 16 <= len(refused) <= opened - 16 + served
