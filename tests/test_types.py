"""The type gate: ``mypy --strict`` over the whole package, as configured in pyproject.toml
([tool.mypy]: files, stub packages, the two untyped libraries), must find nothing; and the
compiled modules must be what their ``.pyi`` stubs say (mypy's stubtest), since mypy reads the
stubs, never the C code.

It runs mypy as a developer would (``python -m mypy --strict`` in the project root), in a
fresh cache so a stale one cannot hide an error, and shows mypy's own report when it fails.
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _modules() -> int:
    """Source files mypy should check: every module of the package (a .pyi stands in for its .py)."""
    files = [p for p in (ROOT / "sidecar").rglob("*") if p.suffix in (".py", ".pyi")]
    return len({p.with_suffix("") for p in files})


@pytest.mark.timeout(600)
def test_the_package_passes_mypy_strict(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / "mypy-cache")],
        cwd=ROOT, capture_output=True, text=True, timeout=540, check=False,
    )
    report = (run.stdout + run.stderr).strip()
    if run.returncode != 0:
        pytest.fail(f"mypy --strict found errors (exit {run.returncode}):\n{report}", pytrace=False)
    checked = re.search(r"Success: no issues found in (\d+) source files", report)
    assert checked, f"mypy did not report a successful check:\n{report}"
    # the configuration names the package: every module of it was checked, not a subset
    assert int(checked.group(1)) == _modules(), report


#: what Cython adds to every compiled module beside the names the stub declares
CYTHON_INTERNALS = ("__pyx_capi__", "__test__")
#: plain values a compiled module imports for its own use (stubtest cannot tell where an int or a
#: tuple came from, as it can for a function or class): not part of the module's API
IMPORTED_VALUES = {"sidecar._ext.wire": ("MAX_NESTING", "NAMES")}  # from sidecar.rewrite._schema
REQUIRE_EXTENSIONS = os.environ.get("OTLP_SIDECAR_REQUIRE_EXTENSIONS", "") not in ("", "0")


def _compiled_modules() -> list[str]:
    """The compiled modules that have a stub (sidecar/_ext/<name>.pyi), each importable here."""
    names = sorted(f"sidecar._ext.{stub.stem}" for stub in (ROOT / "sidecar" / "_ext").glob("*.pyi"))
    missing = []
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            missing.append(f"{name}: {exc}")
    if missing:
        message = "the C extensions are not built: " + "; ".join(missing)
        if REQUIRE_EXTENSIONS:
            pytest.fail(f"OTLP_SIDECAR_REQUIRE_EXTENSIONS=1 but {message}")
        pytest.skip(message)
    return names


@pytest.mark.timeout(600)
def test_the_compiled_modules_match_their_stubs(tmp_path: Path) -> None:
    modules = _compiled_modules()
    assert "sidecar._ext.rewrite" in modules
    allowlist = tmp_path / "allowlist.txt"
    patterns = [rf"sidecar\._ext\.\w+\.{re.escape(name)}" for name in CYTHON_INTERNALS]
    patterns += [re.escape(f"{module}.{name}") for module, names in IMPORTED_VALUES.items() for name in names]
    allowlist.write_text("".join(pattern + "\n" for pattern in patterns))
    run = subprocess.run(
        # the stubs themselves are checked strictly by the test above; this compares them to the modules
        [sys.executable, "-m", "mypy.stubtest", "--allowlist", str(allowlist), *modules],
        cwd=ROOT, capture_output=True, text=True, timeout=540, check=False,
    )
    if run.returncode != 0:
        report = (run.stdout + run.stderr).strip()
        pytest.fail(f"the stubs do not match the compiled modules (stubtest exit {run.returncode}):\n{report}",
                    pytrace=False)
