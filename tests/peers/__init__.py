"""Peers built by ``make peers``: OPA, an OpenTelemetry Collector, telemetrygen, h2spec (from their Go
modules) and the OpenTelemetry JS SDK's exporters (``js``: a Node.js script, from npm).

``peer(name)`` gives a built binary to a test. Where it is missing the test is skipped with a
message saying how to build it, except when ``OTLP_SIDECAR_REQUIRE_PEERS=1`` (CI sets it), where a
missing peer fails the test.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

#: every peer ``make peers`` builds, and its path under the peers folder
PATHS = {
    "opa": "bin/opa",
    "otelcol": "bin/otelcol",
    "telemetrygen": "bin/telemetrygen",
    "h2spec": "bin/h2spec",
    "js": "js/send_spans.cjs",
}
NAMES = tuple(PATHS)


def peers_dir() -> Path:
    """The cache folder the peers are built into (outside the repository)."""
    configured = os.environ.get("OTLP_SIDECAR_PEERS_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "otlp-sidecar" / "peers"


def required() -> bool:
    """True where a missing peer is an error, not a skip (CI)."""
    return os.environ.get("OTLP_SIDECAR_REQUIRE_PEERS", "") not in ("", "0")


def peer(name: str) -> Path:
    """The path of peer ``name``; skips the test (fails it under OTLP_SIDECAR_REQUIRE_PEERS=1) if absent."""
    if name not in NAMES:
        raise ValueError(f"unknown peer {name!r}; known: {', '.join(NAMES)}")
    path = peers_dir() / PATHS[name]
    ready = (path.is_file() and (path.parent / "node_modules").is_dir()) if name == "js" else (
        path.is_file() and os.access(path, os.X_OK))
    if ready:
        return path
    needs = "Node.js and npm" if name == "js" else "Go 1.26"
    message = f"peer {name!r} is not built at {path}: run `make peers` (needs {needs})"
    if required():
        pytest.fail(message + " [OTLP_SIDECAR_REQUIRE_PEERS=1]", pytrace=False)
    pytest.skip(message)
