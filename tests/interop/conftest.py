"""Fixtures of the interop tests: the hash key the PCI policy needs, spans with card numbers."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def hash_key_file(tmp_path: Path) -> Path:
    path = tmp_path / "hash.key"
    path.write_bytes(b"0123456789abcdef0123456789abcdef\n")
    path.chmod(0o600)
    return path
