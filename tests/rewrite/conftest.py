"""Run every rewriter test against both implementations: ids ``py`` (the twin) and ``c``."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest

REQUIRE_EXTENSIONS = os.environ.get("OTLP_SIDECAR_REQUIRE_EXTENSIONS", "") not in ("", "0")


def load_c() -> ModuleType | None:
    """The Cython module, None when it is not built (a failure when CI requires it)."""
    try:
        mod = importlib.import_module("sidecar._ext.rewrite")
    except ImportError as exc:
        if REQUIRE_EXTENSIONS:
            pytest.fail(f"OTLP_SIDECAR_REQUIRE_EXTENSIONS=1 but the extension is missing: {exc}")
        return None
    assert mod.IMPLEMENTATION == "cython"
    return mod


@pytest.fixture(params=["py", "c"], ids=["py", "c"])
def impl(request) -> ModuleType:
    if request.param == "py":
        mod = importlib.import_module("sidecar.rewrite._py")
        assert mod.IMPLEMENTATION == "python"
        return mod
    mod = load_c()
    if mod is None:
        pytest.skip("sidecar._ext.rewrite is not built (python setup.py build_ext --inplace)")
    return mod


@pytest.fixture
def c_impl() -> ModuleType:
    mod = load_c()
    if mod is None:
        pytest.skip("sidecar._ext.rewrite is not built")
    return mod


@pytest.fixture
def py_impl() -> ModuleType:
    return importlib.import_module("sidecar.rewrite._py")
