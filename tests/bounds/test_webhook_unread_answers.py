"""The injection webhook as a real process, against clients over TLS that send the reviews with
the largest answers it makes and never read them.

The largest answer: a pod whose owner's name fills the patch up to ``MAX_PATCH_BYTES`` (the name
goes into the sidecar's SIDECAR_WORKLOAD_NAME; the webhook bounds it only through the patch), a
review of 1.05 MB answered with 1.4 MB (the patch in base64). Each connection pipelines four
and never reads: its socket's receive buffer is a few KiB.

Before (2-core machine; 32 connections, then 96 for the cap of 32), 153 and 188 MiB: asyncio's
TLS layer encrypted each answer at once into OpenSSL's memory buffer, which keeps its largest size
for the connection's life, and handed all of it to the TCP transport below, where it waited
without pausing the server (only a second answer, behind it, did); each connection also kept the
1 MB buffer its review was received in; and the webhook's allocator kept what was freed: 123 and
188 MiB were still resident 45 s later, the connections long closed. Now 100-107 MiB, back under
56 MiB about 11 s after the last review was sent (the write-pause timeout, 10 s), normal reviews
answered within 0.4 s throughout.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sidecar.webhook.config import WebhookConfig
from sidecar.webhook.inject import Scope
from sidecar.webhook.review import review
from tests.bounds.test_webhook_connections import CAP, CEILING, MiB, WebhookProcess, _post, webhook_process
from tests.webhook.conftest import largest_review

pytestmark = pytest.mark.timeout(180)

#: reviews each connection pipelines (the kernel's socket buffers take in the first answers)
PIPELINE = 4
#: connections sending at once: the receive budget holds four reviews of 3 MiB, so four senders
#: of 1 MB reviews are never refused with 503 (which closes the connection before any answer)
SENDERS = 4
#: seconds a sender waits for the webhook to read more before it leaves its connection as it is
SEND_STALL = 1.0
#: how long the memory and the connections are watched from the attack's start (seconds)
WATCH = 35.0
#: RSS back under what it was before the attack plus this, within ``BACK_WITHIN`` seconds of the
#: last review sent (the webhook's write-pause timeout is 10 s without progress)
BACK_MARGIN = 16 * MiB
BACK_WITHIN = 15.0


def _largest_request() -> tuple[bytes, int]:
    """The POST of a review whose answer is the largest the webhook makes; (request, answer size)."""
    body = largest_review()
    status, answer, outcome = review(body, Scope.POD, WebhookConfig())
    assert (status, outcome.result) == (200, "injected"), outcome
    return _post("/mutate", body), len(json.dumps(answer))


def _send_unread(port: int, context: ssl.SSLContext, data: bytes) -> tuple[ssl.SSLSocket | None, int]:
    """A TLS connection that sends ``data`` (as long as the webhook reads it) and never reads;
    (the socket, bytes sent)."""
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the kernel takes in next to nothing
    raw.settimeout(10)
    try:
        raw.connect(("127.0.0.1", port))
        tls = context.wrap_socket(raw, server_hostname="localhost")
    except (OSError, ssl.SSLError):
        raw.close()
        return None, 0
    tls.settimeout(SEND_STALL)
    sent = 0
    try:
        while sent < len(data):
            sent += tls.send(data[sent:sent + 16 * 1024])
    except (OSError, ssl.SSLError):
        pass  # the webhook reads no more (or closed the connection)
    return tls, sent


@dataclass
class Watched:
    """What the attack did to the webhook, sampled every 0.25 s from the attack's start."""

    baseline: int
    rss: list[tuple[float, int]] = field(default_factory=list)
    fds: list[tuple[float, int]] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    refused: int = 0
    #: when the attack's last review was sent
    sent_by: float = 0.0

    def peak_at(self) -> float:
        return max(self.rss, key=lambda sample: sample[1])[0]

    def back_at(self) -> float | None:
        """When the RSS came back under the baseline plus ``BACK_MARGIN`` after its peak, for good."""
        after = [(t, rss) for t, rss in self.rss if t >= self.peak_at()]
        for index, (t, _) in enumerate(after):
            if all(rss < self.baseline + BACK_MARGIN for _, rss in after[index:]):
                return t
        return None


async def _attack(webhook: WebhookProcess, connections: int, pipeline: int) -> Watched:
    """``connections`` TLS connections each send ``pipeline`` of the largest reviews and never
    read; a normal review every 0.5 s meanwhile. The attacker keeps its sockets open for ``WATCH``."""
    request, answer = _largest_request()
    loop = asyncio.get_running_loop()
    watched = Watched(webhook.rss())
    started = loop.time()
    held: list[ssl.SSLSocket] = []
    sent = 0

    async def probe() -> None:
        while loop.time() - started < WATCH:
            try:
                watched.latencies.append(await webhook.review())
            except (OSError, ssl.SSLError, asyncio.IncompleteReadError, TimeoutError):
                watched.refused += 1
            await asyncio.sleep(0.5)

    async def sample() -> None:
        while loop.time() - started < WATCH:
            now = loop.time() - started
            watched.rss.append((now, webhook.rss()))
            watched.fds.append((now, webhook.open_fds()))
            await asyncio.sleep(0.25)

    with ThreadPoolExecutor(SENDERS) as pool:
        sending = [loop.run_in_executor(pool, _send_unread, webhook.port, webhook.context, request * pipeline)
                   for _ in range(connections)]
        probing, sampling = asyncio.ensure_future(probe()), asyncio.ensure_future(sample())
        try:
            for sock, count in await asyncio.gather(*sending):
                sent += count
                if sock is not None:
                    held.append(sock)
            watched.sent_by = loop.time() - started
            await asyncio.gather(probing, sampling)
        finally:
            probing.cancel()
            sampling.cancel()
            for sock in held:
                sock.close()
    back = watched.back_at()
    print(f"\n{connections} connections x {pipeline} reviews of {len(request)} bytes (answers of {answer} bytes), "
          f"{sent / len(request):.0f} reviews sent by {watched.sent_by:.1f} s: "
          f"RSS {watched.baseline / MiB:.1f} MiB before, "
          f"peak {webhook.peak_rss() / MiB:.1f} MiB at {watched.peak_at():.1f} s, under the baseline + "
          f"{BACK_MARGIN // MiB} MiB from {'never' if back is None else f'{back:.1f} s'}; descriptors at most "
          f"{max(n for _, n in watched.fds)}, {watched.fds[-1][1]} at the end; normal reviews: "
          f"{len(watched.latencies)} answered (slowest {max(watched.latencies, default=0):.2f} s), "
          f"{watched.refused} failed")
    print("RSS (s: MiB): " + ", ".join(f"{t:.0f}: {rss / MiB:.0f}" for t, rss in watched.rss[::4]))
    return watched


@pytest.mark.parametrize("connections", [CAP, 3 * CAP], ids=["at the cap", "beyond the cap"])
async def test_large_answers_never_read_over_tls_are_cut_and_their_memory_given_back(
    tmp_path: Path, connections: int,
) -> None:
    """(One review a connection is no attack on loopback: the kernel's socket buffers, autotuned
    up to 4 MiB, take in its whole answer.)"""
    async with webhook_process(tmp_path) as webhook:
        watched = await _attack(webhook, connections, PIPELINE)
        idle_timeouts = await webhook.metric('otlp_sidecar_webhook_overload_actions_total{action="idle_timeout"}')
        peak = webhook.peak_rss()
    assert watched.refused == 0
    assert max(watched.latencies) < 1.0, watched.latencies
    # the write-pause timeout (10 s without progress) closed them, while the attacker kept them open
    assert idle_timeouts >= CAP // 2, idle_timeouts
    assert watched.fds[-1][1] <= watched.fds[0][1] + 4, watched.fds
    assert peak < 0.9 * CEILING, f"peak RSS {peak / MiB:.1f} MiB"
    back = watched.back_at()
    assert back is not None and back - watched.sent_by < BACK_WITHIN, f"memory given back from {back} s"
