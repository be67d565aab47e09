"""The bundled policies are standard Rego: OPA's own `opa check --strict` and `opa test` pass on them."""

from __future__ import annotations

import subprocess

import pytest

from tests.conftest import REPO
from tests.peers import peer

POLICY_DIRS = ("policies", "helm/otlp-sidecar/policies")


def _opa(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(peer("opa")), *args], cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )


@pytest.mark.parametrize("folder", POLICY_DIRS)
def test_opa_check_strict(folder: str) -> None:
    result = _opa("check", "--strict", folder)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("folder", POLICY_DIRS)
def test_opa_test_passes(folder: str) -> None:
    result = _opa("test", "--verbose", folder)
    assert result.returncode == 0, result.stdout + result.stderr
    # the rule tests beside each .rego ran, none failed or was skipped
    assert "PASS" in result.stdout and "FAIL" not in result.stdout, result.stdout
    assert " 0/" not in result.stdout.splitlines()[-1], result.stdout
