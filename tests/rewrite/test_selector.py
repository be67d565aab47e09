"""The selector: sidecar.rewrite loads the C module unless told not to, and says which."""

from __future__ import annotations

import importlib
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


#: each compiled module (ext/<name>.pyx) and the pure-Python module that is its twin
TWINS = {"wire": "sidecar.rewrite._wire", "cards": "sidecar.rewrite._cards", "sampling": "sidecar.rewrite._sampling",
         "stamps": "sidecar.rewrite._stamps", "rewrite": "sidecar.rewrite._py",
         "hpack": "sidecar.wire.http2._hpack_py"}


def test_every_c_module_has_a_twin_and_is_the_compiled_one():
    assert sorted(p.stem for p in (REPO / "ext").glob("*.pyx")) == sorted(TWINS)
    for twin in TWINS.values():
        assert importlib.import_module(twin) is not None
    if load_c() is None:
        pytest.skip("sidecar._ext.rewrite is not built")
    for name in TWINS:
        mod = importlib.import_module(f"sidecar._ext.{name}")
        assert mod.IMPLEMENTATION == "cython", name
        assert mod.__file__.endswith((".so", ".pyd")), mod.__file__


def test_the_c_detector_is_the_cards_module():
    c = load_c()
    if c is None:
        pytest.skip("sidecar._ext.rewrite is not built")
    cards = importlib.import_module("sidecar._ext.cards")
    assert c.find_pans is cards.find_pans
    assert cards.find_pans(b"card 4111 1111 1111 1111.") == [(5, 24, b"4111111111111111")]
    twin = importlib.import_module("sidecar.rewrite._cards")
    assert twin.IMPLEMENTATION == "python"
    assert twin.find_pans(b"card 4111 1111 1111 1111.") == cards.find_pans(b"card 4111 1111 1111 1111.")
