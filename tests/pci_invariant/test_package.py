"""The installed package carries the bundled policy set, and `otlp-sidecar run` from it applies it.

A wheel is built from this checkout (pip, no C extensions so it takes a second: the package
data is what is checked here), unpacked as an installation would lay it out, and the sidecar is
started from there (not from the checkout) with nothing configured: a card number sent by an
OTLP/HTTP client reaches the upstream masked.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from sidecar.signals import Signal
from tests.conftest import REPO, sidecar_env
from tests.pci_invariant.helpers import MASTERCARD, POLICIES, get_json, post_traces, span_request


def build_wheel(out: Path) -> Path:
    """A wheel of this checkout, built from a copy (the shared build/ directory is left alone)."""
    source = out.parent / "src"
    for name in ("setup.py", "pyproject.toml", "README.md"):
        source.mkdir(exist_ok=True)
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "sidecar", source / "sidecar",
                    ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.c"))
    env = {**os.environ, "OTLP_SIDECAR_NO_EXTENSIONS": "1"}
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-q",
         "-w", str(out)],
        check=True, env=env, timeout=300, capture_output=True,
    )
    (wheel,) = out.glob("otlp_sidecar-*.whl")
    return wheel


async def test_the_wheel_ships_the_policies_and_applies_them_with_nothing_configured(upstream, tmp_path: Path) -> None:
    wheel = await asyncio.to_thread(build_wheel, tmp_path / "dist")
    with zipfile.ZipFile(wheel) as archive:
        shipped = {n.removeprefix("sidecar/policy/bundled/") for n in archive.namelist()
                   if n.startswith("sidecar/policy/bundled/")}
        archive.extractall(tmp_path / "site")
    expected = {p.relative_to(POLICIES).as_posix() for p in POLICIES.rglob("*") if p.is_file()}
    assert shipped == expected

    env = sidecar_env(upstream, "grpc")
    env.pop("SIDECAR_POLICY_MODE")  # nothing configured
    env["PYTHONPATH"] = str(tmp_path / "site")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sidecar", "run", cwd=tmp_path / "site", env={**os.environ, **env},
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(60):
            while " up: " not in (line := (await process.stderr.readline()).decode()):
                assert line, "".join(lines)
                lines.append(line)
        ports = {part.split(" on ")[0].strip(): int(part.rsplit(":", 1)[1])
                 for part in line.split(" up: ", 1)[1].split(";", 1)[0].split(",")}
        policy = await get_json(ports["admin"], "/policy")
        status, _ = await post_traces(ports["http"], span_request({"note": MASTERCARD}))
        assert status == 200
        await upstream.wait_for(lambda: len(upstream.spans()) >= 1)
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 30)
    assert policy["dir"] == str(tmp_path / "site" / "sidecar" / "policy" / "bundled") and policy["bundled"]
    raw = b"".join(m.SerializeToString() for m in upstream.messages(Signal.TRACES))
    assert MASTERCARD.encode() not in raw and b"**** **** **** 4444" in raw


def test_the_bundled_copy_is_the_repositorys_policies() -> None:
    """What `run` applies with nothing configured is policies/ as reviewed (helm/sync-policies.py)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("sync_policies", REPO / "helm" / "sync-policies.py")
    assert spec and spec.loader
    sync = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sync)
    assert sync.BUNDLED in sync.TARGETS
    drift = sync.differences(sync.SOURCE, sync.BUNDLED)
    assert drift == [], "run: python helm/sync-policies.py\n" + "\n".join(drift)
    assert (sync.BUNDLED / "main.rego").read_bytes() == (POLICIES / "main.rego").read_bytes()
