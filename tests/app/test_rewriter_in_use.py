"""The run is on the rewriter it says: this process and the sidecar processes the tests spawn.

``make test`` requires the C module and ``make test-twin`` sets OTLP_SIDECAR_NO_EXTENSIONS=1; a
spawned ``python -m sidecar run`` inherits the environment, and its start line names the rewriter.
"""

from __future__ import annotations

from pathlib import Path

import sidecar.rewrite
from tests.conftest import expected_implementation, sidecar_env
from tests.processes import SidecarProcess

#: how the start line names each implementation (sidecar/app.py start_line)
START_LINE = {"cython": "rewriter C (Cython)", "python": "rewriter pure Python"}


async def test_spawned_sidecars_run_the_rewriter_of_this_run() -> None:
    expected = expected_implementation() or sidecar.rewrite.IMPLEMENTATION
    assert expected == sidecar.rewrite.IMPLEMENTATION
    process = SidecarProcess(sidecar_env(None))
    await process.start()
    try:
        start_line = next(line for line in process.stderr_lines if " up: " in line)
        assert START_LINE[expected] in start_line, start_line
        assert process.proc is not None
        # the process's own memory map agrees: the compiled rewriter is mapped only on the C run
        maps = Path(f"/proc/{process.proc.pid}/maps").read_text()
        mapped = any("/sidecar/_ext/rewrite" in line and ".so" in line for line in maps.splitlines())
        assert mapped == (expected == "cython"), start_line
        # and so is the HTTP/2 server's HPACK decoder, the other compiled module
        mapped = any("/sidecar/_ext/hpack" in line and ".so" in line for line in maps.splitlines())
        assert mapped == (expected == "cython"), "the HPACK decoder is not the run's implementation"
    finally:
        assert await process.stop() == 0
