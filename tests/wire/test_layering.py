"""The wire layer stands below TLS: importing any sidecar.wire module loads no sidecar.tls module
(the servers take TLS as a protocol wrapper from their caller, sidecar.app)."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import sidecar.wire

WIRE_MODULES = sorted(
    info.name for info in pkgutil.walk_packages(sidecar.wire.__path__, prefix="sidecar.wire.")
)
ROOT = Path(__file__).resolve().parents[2]


def test_the_wire_package_has_the_servers() -> None:
    assert {"sidecar.wire.http1.server", "sidecar.wire.http2.server", "sidecar.wire.http2.connection"} <= set(
        WIRE_MODULES
    )


@pytest.mark.parametrize("module", ["sidecar.wire", *WIRE_MODULES])
def test_importing_a_wire_module_loads_no_tls_module(module: str) -> None:
    probe = (
        "import importlib, sys\n"
        f"importlib.import_module({module!r})\n"
        "print(' '.join(sorted(m for m in sys.modules if m == 'sidecar.tls' or m.startswith('sidecar.tls.'))))\n"
    )
    child = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert child.returncode == 0, child.stderr
    assert child.stdout.strip() == "", f"importing {module} loaded {child.stdout.strip()}"
