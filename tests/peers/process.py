"""What the tests that run a peer process share: a free loopback port, and waiting for the peer's
health endpoint (failing at once, with its log, if the process exits)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable

import aiohttp


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_healthy(
    proc: asyncio.subprocess.Process, url: str, *, what: str, log: Callable[[], str], timeout: float = 30.0,
) -> None:
    """Poll ``url`` until it answers 200; ``what`` and ``log()`` say which peer failed and why."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            assert proc.returncode is None, f"{what} exited:\n{log()}"
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            assert time.monotonic() < deadline, f"{what} not healthy in {timeout} s:\n{log()}"
            await asyncio.sleep(0.05)
