"""Memory footprint: what a sidecar without TLS or JSON traffic never loads.

cryptography (~8 MiB resident) is needed only to read certificates, protobuf's JSON mapping
(~2 MiB) only for OTLP/JSON, and aiohttp (~9 MiB with the system CA store it loads at import)
only for the OTLP/HTTP exporter, OAuth2 tokens, a remote OPA and bundles; all are imported where
they are used.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, sidecar_env
from tests.processes import SidecarProcess


def test_a_plaintext_protobuf_sidecar_does_not_load_cryptography_json_format_or_aiohttp() -> None:
    code = (
        "import sys, sidecar.app, sidecar.commands, sidecar.policy.service, sidecar.receivers.http;"
        "print(sorted({m.split('.')[0] for m in sys.modules if m.startswith(('cryptography', 'aiohttp'))}"
        " | {m for m in sys.modules if m.endswith('json_format')}))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


async def test_a_running_sidecar_with_the_bundled_policies_maps_neither_cryptography_yaml_nor_aiohttp(
        tmp_path) -> None:
    """The process users start (`otlp-sidecar run`, enforce, bundled policies, no TLS, no bundles,
    the default gRPC exporter).

    Building the command line once pulled in the bundle commands' yaml and cryptography: 6-8 MiB
    resident in every sidecar; building the exporter's (empty) auth and the policy service pulled
    in aiohttp: 13.6 MiB (docs/performance.md). Checked on the process's own memory map.
    """
    key = tmp_path / "hash.key"
    key.write_bytes(b"k" * 32)
    env = sidecar_env(None, SIDECAR_POLICY_MODE="enforce", SIDECAR_POLICY_HASH_KEY_FILE=str(key))
    env.pop("SIDECAR_POLICY_DIR", None)
    process = SidecarProcess(env)
    await process.start()
    try:
        assert process.proc is not None
        maps = Path(f"/proc/{process.proc.pid}/maps").read_text()
        loaded = {line.rsplit("/", 1)[-1] for line in maps.splitlines() if "/" in line}
        assert not [name for name in loaded if "_rust" in name or "_cffi_backend" in name or "_yaml" in name], loaded
        assert "aiohttp" not in maps, [line for line in maps.splitlines() if "aiohttp" in line][:3]
        assert any("rewrite" in name and name.endswith(".so") for name in loaded) or os.environ.get(
            "OTLP_SIDECAR_NO_EXTENSIONS") == "1", "the map was read from the wrong process"
    finally:
        assert await process.stop() == 0
