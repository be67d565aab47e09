"""A real OPA server (``opa run --server``, built by ``make peers``) on a loopback port, with its
decision log on the console."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from pathlib import Path
from typing import Any

from tests.peers import peer
from tests.peers.process import free_port, wait_healthy


class Opa:
    """A real ``opa run --server`` on a loopback port, with console decision logs."""

    def __init__(self, workdir: Path, *paths: Path, port: int = 0) -> None:
        self.paths = paths
        self.port = port or free_port()
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
            await wait_healthy(self.proc, f"{self.url}/health", what="OPA", log=self.log_path.read_text,
                               timeout=timeout)
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
