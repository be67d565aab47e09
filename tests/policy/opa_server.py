"""A real OPA server (``opa run --server``, built by ``make peers``) on a loopback port, with its
decision log on the console."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import time
from pathlib import Path
from typing import Any

import aiohttp

from tests.peers import peer


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Opa:
    """A real ``opa run --server`` on a loopback port, with console decision logs."""

    def __init__(self, workdir: Path, *paths: Path, port: int = 0) -> None:
        self.paths = paths
        self.port = port or _free_port()
        self.log_path = workdir / f"opa-{self.port}.log"
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, timeout: float = 30.0) -> None:
        log = self.log_path.open("ab")
        self.proc = await asyncio.create_subprocess_exec(
            str(peer("opa")), "run", "--server", "--addr", f"127.0.0.1:{self.port}",
            "--log-level", "info", "--set", "decision_logs.console=true", *map(str, self.paths),
            stdout=log, stderr=log,
        )
        log.close()
        try:
            deadline = time.monotonic() + timeout
            async with aiohttp.ClientSession() as session:
                while True:
                    assert self.proc.returncode is None, self.log_path.read_text()
                    with contextlib.suppress(aiohttp.ClientError):
                        async with session.get(f"{self.url}/health") as response:
                            if response.status == 200:
                                return
                    assert time.monotonic() < deadline, f"OPA not healthy in {timeout} s"
                    await asyncio.sleep(0.05)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()

    def decision_logs(self) -> list[dict[str, Any]]:
        entries = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if entry.get("msg") == "Decision Log":
                    entries.append(entry)
        return entries
