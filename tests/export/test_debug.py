"""With no upstream configured, the embedded debug exporter writes each batch as an OTLP/JSON line."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp

from sidecar.signals import Signal
from tests.conftest import sidecar_env

EXAMPLE = Path(__file__).resolve().parent.parent / "testdata" / "otlp_json" / "traces.json"


async def test_debug_exporter_writes_json_lines(start_sidecar, tmp_path: Path) -> None:
    out = tmp_path / "debug.jsonl"
    sidecar = await start_sidecar(sidecar_env(None, SIDECAR_EXPORTER_DEBUG_OUTPUT=str(out)))
    assert sidecar.exporter is not None and sidecar.exporter.name == "debug"
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"http://127.0.0.1:{sidecar.addresses['http'][1]}/v1/traces",
            data=EXAMPLE.read_bytes(),
            headers={"Content-Type": "application/json"},
        ) as resp:
            assert resp.status == 200
    await sidecar.stop(grace=2.0)  # flushes the open batch
    lines = out.read_text().splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["signal"] == Signal.TRACES.value
    span = entry["request"]["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    assert span["traceId"] == "5b8efff798038103d269b633813fc60c"  # hex, as OTLP/JSON writes ids
    assert span["name"] == "I'm a server span"
