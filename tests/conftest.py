"""Shared fixtures: an upstream the test controls, and a real sidecar on loopback ports."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from sidecar import config as config_mod
from sidecar.app import Sidecar
from tests.upstream import Upstream

REPO = Path(__file__).resolve().parent.parent
#: the project's shared test data, present in the development workspace only
SHARED_CORPUS = REPO.parent / "shared" / "corpus"

StartSidecar = Callable[..., Awaitable[Sidecar]]

#: which rewriter this run is on: ``make test`` requires the C module, ``make test-twin`` sets
#: OTLP_SIDECAR_NO_EXTENSIONS=1 (and the sidecar processes the tests spawn inherit it)
NO_EXTENSIONS = os.environ.get("OTLP_SIDECAR_NO_EXTENSIONS", "") not in ("", "0")
REQUIRE_EXTENSIONS = os.environ.get("OTLP_SIDECAR_REQUIRE_EXTENSIONS", "") not in ("", "0")


def expected_implementation() -> str | None:
    """The rewriter the environment asks for: "python", "cython" or None (whichever is built)."""
    if NO_EXTENSIONS:
        return "python"
    return "cython" if REQUIRE_EXTENSIONS else None


def pytest_report_header() -> str:
    from sidecar.rewrite import IMPLEMENTATION

    return f"otlp-sidecar rewriter: {IMPLEMENTATION} (OTLP_SIDECAR_NO_EXTENSIONS={NO_EXTENSIONS:d})"


def pytest_sessionstart(session: pytest.Session) -> None:
    """Fail the run at once when it is not on the rewriter it was asked to test."""
    from sidecar.rewrite import IMPLEMENTATION
    from sidecar.wire.http2.hpack_decoder import IMPLEMENTATION as HPACK_IMPLEMENTATION

    expected = expected_implementation()
    if expected is not None and expected != IMPLEMENTATION:
        raise pytest.UsageError(f"this run must test the {expected} rewriter but {IMPLEMENTATION} is loaded")
    if expected is not None and expected != HPACK_IMPLEMENTATION:
        raise pytest.UsageError(f"this run must test the {expected} HPACK decoder but {HPACK_IMPLEMENTATION} is"
                                " loaded")


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    server = Upstream()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def sidecar_env(upstream: Upstream | None, protocol: str = "grpc", **extra: str) -> dict[str, str]:
    """Environment for a sidecar on free loopback ports, exporting to ``upstream``."""
    env = {
        "SIDECAR_GRPC_ENDPOINT": "127.0.0.1:0",
        "SIDECAR_HTTP_ENDPOINT": "127.0.0.1:0",
        "SIDECAR_ADMIN_ENDPOINT": "127.0.0.1:0",
        "SIDECAR_EXPORTER_BATCH_TIMEOUT": "0.05",
        "SIDECAR_EXPORTER_RETRY_INITIAL_INTERVAL": "0.05",
        "SIDECAR_EXPORTER_RETRY_MAX_INTERVAL": "0.2",
    }
    if upstream is not None:
        port = upstream.grpc_port if protocol == "grpc" else upstream.http_port
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{port}"
        env["OTEL_EXPORTER_OTLP_PROTOCOL"] = protocol
    env.update(extra)
    if not any(key in env for key in ("SIDECAR_POLICY_DIR", "SIDECAR_POLICY_MODE", "SIDECAR_POLICY_BACKEND")):
        # the sidecar applies its bundled policies by default (issue 15): transport tests that
        # count items unchanged ask for pass-through explicitly, as a user must
        env["SIDECAR_POLICY_MODE"] = "passthrough"
    return env


@pytest.fixture
async def start_sidecar() -> AsyncIterator[StartSidecar]:
    """Start real sidecars in this event loop; all are stopped (flushed) at teardown."""
    running: list[Sidecar] = []

    async def start(env: dict[str, str], config_file: str | None = None) -> Sidecar:
        sidecar = Sidecar(config_mod.load(config_file, env=env))
        running.append(sidecar)
        await sidecar.start()
        return sidecar

    try:
        yield start
    finally:
        for sidecar in running:
            await sidecar.stop(grace=2.0)
