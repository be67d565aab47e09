"""bench.rewrite_builds compares builds of the C rewriter in one process: here the tree's own
build against itself, which must give equal results and a ratio near 1."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_a_build_compared_with_itself() -> None:
    try:
        built = importlib.import_module("sidecar._ext.rewrite")
    except ImportError:
        pytest.skip("sidecar._ext.rewrite is not built")
    proc = subprocess.run(
        [sys.executable, "-m", "bench.rewrite_builds", f"same={built.__file__}", "--rounds", "3",
         "--seconds", "0.05", "--items", "64", "--only", "logs,metrics"],
        cwd=REPO, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line.split() for line in proc.stdout.splitlines() if line.startswith(("logs", "metrics"))]
    assert [row[:2] for row in rows] == [["logs", "default"], ["logs", "shipped"],
                                         ["metrics", "default"], ["metrics", "shipped"]]
    for row in rows:
        assert 0.5 < float(row[-1]) < 2.0, row  # the same code: only noise between them
