"""Attribute keys a client never sent before, against a real sidecar enforcing the bundled
policies (223 key rules): each new key is matched against the rules on the event loop.

Before this change a key the rewriter's cache did not hold (every key of a request of distinct
keys, and every key longer than 48 bytes) was tried against every rule in turn: about 0.4 µs a
20-byte key, so one 15 MB request of them held the loop for over 0.25 s (the sidecar's own loop
check saw it). Now a new key is tried against the rules its own bytes could match (an index of
the plan's rules): about 0.07 µs."""

from __future__ import annotations

import gzip
import time

import pytest

from tests.bounds.harness import BoundedSidecar, Probe, http_post, status_message
from tests.conftest import NO_EXTENSIONS
from tests.rewrite.builders import field as _ld

pytestmark = pytest.mark.timeout(180)

ENFORCE = {"SIDECAR_POLICY_MODE": "enforce"}
#: requests of the attack, one after the other (the export queue, 16 MiB, holds one: no upstream)
REQUESTS = 1
#: the attack's size and how long the normal client may wait meanwhile: the C rewriter takes
#: ~0.07 s for 15 MB of new 12-byte keys now (0.24 s before); the pure-Python twin
#: (OTLP_SIDECAR_NO_EXTENSIONS=1) walks attributes at Python speed whatever their keys, about
#: 8 µs each, so it is sent a thirtieth of that (a client's requests hold its loop that long; a
#: tenth held it over 5 s on 2026-12-07, the base revision too, with this machine's CPU slower)
SIZE, LATENCY = (500_000, 3.0) if NO_EXTENSIONS else (15_000_000, 0.1)


def _kv(key: bytes, value: bytes) -> bytes:
    return _ld(1, key) + _ld(2, _ld(1, value))


def _name(number: int, width: int) -> str:
    """``number`` in ``width`` letters (no digits: a run of digits in a key is scanned for card
    numbers, a cost of its own)."""
    letters = []
    for _ in range(width):
        number, digit = divmod(number, 26)
        letters.append(chr(97 + digit))
    return "".join(reversed(letters))


def distinct_keys_span(size: int, key_bytes: int, start: int = 0) -> bytes:
    """One span under one resource with about ``size`` bytes of attributes, each key new: the
    keys end with `.q`, which no rule of the bundled policies matches."""
    count = size // (key_bytes + 7)
    attrs = b"".join(
        _ld(9, _kv(f"app.{_name(start + i, key_bytes - 6)}.q".encode(), b"x")) for i in range(count)
    )
    span = _ld(2, _ld(1, b"\xff" * 16) + _ld(2, b"\x02" * 8) + _ld(5, b"op") + attrs)
    resource = _ld(1, _ld(1, _kv(b"service.name", b"svc")))
    return _ld(1, resource + _ld(2, span))


@pytest.mark.parametrize("key_bytes", [12, 60], ids=["12-byte keys", "60-byte keys"])
async def test_requests_of_keys_never_seen_before_do_not_hold_the_event_loop(key_bytes: int) -> None:
    bodies = [distinct_keys_span(SIZE, key_bytes, start=n * 10_000_000) for n in range(REQUESTS)]
    packed = [gzip.compress(body, 6) for body in bodies]
    async with BoundedSidecar(**ENFORCE) as sidecar:
        async with Probe(sidecar, kind="http", interval=0.02) as probe:
            started = time.perf_counter()
            for gz in packed:
                status, answer = await http_post(sidecar.http, "/v1/traces", gz, headers={"Content-Encoding": "gzip"})
                assert status == 200, status_message(answer)
            elapsed = time.perf_counter() - started
        sidecar.assert_peak_under()
        received = await sidecar.metric("otlp_sidecar_receiver_received_items_total", signal="traces",
                                        transport="http")
        assert received >= REQUESTS  # each request's one span (and the probe's)
        result = probe.assert_served(LATENCY)
        print(f"{REQUESTS} requests of {key_bytes}-byte keys in {elapsed:.2f} s; the normal client "
              f"waited at most {result.max_latency * 1000:.0f} ms ({len(result.latencies)} requests)")
