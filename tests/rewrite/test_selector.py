"""The selector: sidecar.rewrite loads the C module unless told not to, and says which."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import sidecar.rewrite
from sidecar.rewrite import _py

from .conftest import REQUIRE_EXTENSIONS, load_c

REPO = Path(__file__).resolve().parents[2]


def _implementation(**env: str) -> str:
    environ = {k: v for k, v in os.environ.items() if k != "OTLP_SIDECAR_NO_EXTENSIONS"}
    environ.update(env)
    out = subprocess.run(
        [sys.executable, "-c", "import sidecar.rewrite as r; print(r.IMPLEMENTATION)"],
        cwd=REPO, env=environ, capture_output=True, text=True, timeout=60, check=True)
    return out.stdout.strip()


def test_no_extensions_forces_the_twin():
    assert _implementation(OTLP_SIDECAR_NO_EXTENSIONS="1") == "python"


def test_the_extension_is_used_when_built():
    c = load_c()  # fails (not skips) when OTLP_SIDECAR_REQUIRE_EXTENSIONS=1 and it is missing
    if c is None:
        assert _implementation() == "python"
        pytest.skip("sidecar._ext.rewrite is not built")
    assert _implementation() == "cython"
    assert _implementation(OTLP_SIDECAR_NO_EXTENSIONS="0") == "cython"
    assert c.__file__.endswith((".so", ".pyd"))


def test_this_process_uses_what_the_environment_asks_for():
    if os.environ.get("OTLP_SIDECAR_NO_EXTENSIONS", "") not in ("", "0"):
        assert sidecar.rewrite.IMPLEMENTATION == "python"
    elif REQUIRE_EXTENSIONS:
        assert sidecar.rewrite.IMPLEMENTATION == "cython"
    assert sidecar.rewrite.rewrite is not None


def test_both_implementations_share_the_result_types():
    c = load_c()
    if c is None:
        pytest.skip("sidecar._ext.rewrite is not built")
    assert c.RewriteResult is _py.RewriteResult is sidecar.rewrite.RewriteResult
    assert c.MalformedRequest is _py.MalformedRequest is sidecar.rewrite.MalformedRequest
    assert c.ResourceInfo is _py.ResourceInfo
