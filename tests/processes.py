"""A real `otlp-sidecar run` process for tests that need signals, exit codes or kill -9."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

from tests.conftest import REPO


class SidecarProcess:
    """Starts ``python -m sidecar run``, learns its ports from the start-up log line, keeps its stderr."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = {**os.environ, **env}
        self.proc: asyncio.subprocess.Process | None = None
        self.ports: dict[str, int] = {}
        self.stderr_lines: list[str] = []
        self._reader: asyncio.Task[None] | None = None

    async def start(self, timeout: float = 30.0) -> dict[str, int]:
        return await self.launch([sys.executable, "-m", "sidecar", "run"], timeout=timeout)

    async def launch(
        self, command: Sequence[str], *, cwd: str | Path = REPO, stdout: int | IO[bytes] = asyncio.subprocess.DEVNULL,
        preexec_fn: Callable[[], None] | None = None, timeout: float = 30.0,
    ) -> dict[str, int]:
        """Run ``command`` (a sidecar however it is started) and wait for its start line."""
        self.proc = await asyncio.create_subprocess_exec(
            *command, cwd=cwd, env=self.env, stdout=stdout, stderr=asyncio.subprocess.PIPE, preexec_fn=preexec_fn,
        )
        assert self.proc.stderr is not None
        async with asyncio.timeout(timeout):
            while True:
                line = (await self.proc.stderr.readline()).decode()
                if not line:
                    await self.proc.wait()
                    code = self.proc.returncode
                    raise AssertionError(f"the sidecar exited ({code}) before it was up:\n{self.stderr}")
                self.stderr_lines.append(line)
                if " up: " in line:
                    for part in line.split(" up: ", 1)[1].split(";", 1)[0].split(","):
                        name, _, address = part.strip().partition(" on ")
                        self.ports[name] = int(address.rsplit(":", 1)[1])
                    break
        self._reader = asyncio.create_task(self._drain())
        return self.ports

    async def _drain(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        async for line in self.proc.stderr:
            self.stderr_lines.append(line.decode())

    @property
    def stderr(self) -> str:
        return "".join(self.stderr_lines)

    async def stop(self, signum: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send ``signum`` and wait for the exit code (killed if it does not exit in time)."""
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signum)
            try:
                await asyncio.wait_for(self.proc.wait(), timeout)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._reader is not None:
            await self._reader
        return int(self.proc.returncode or 0)
