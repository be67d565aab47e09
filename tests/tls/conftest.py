"""Fixtures of the TLS tests: a fresh private PKI per test (tests/tls/pki.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tls.pki import PKI, make_pki


@pytest.fixture
def pki(tmp_path: Path) -> PKI:
    """A CA, a server pair for localhost, 127.0.0.1 and ::1, and a client pair with its SPIFFE ID."""
    return make_pki(tmp_path)
