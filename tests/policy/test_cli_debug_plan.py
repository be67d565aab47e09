"""``GET /debug/plan`` on the admin port of a real ``otlp-sidecar run`` process: the live plan
for a resource given as query parameters, as an operator would ask it (curl), without values."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import sidecar_env
from tests.policy.conftest import HASH_KEY, POLICIES
from tests.processes import SidecarProcess


def curl(port: int, query: str) -> tuple[int, dict[str, object]]:
    done = subprocess.run(
        ["curl", "-s", "-g", "-o", "-", "-w", "\n%{http_code}", f"http://127.0.0.1:{port}/debug/plan?{query}"],
        capture_output=True, text=True, timeout=30, check=True,
    )
    body, _, code = done.stdout.rpartition("\n")
    return int(code), json.loads(body)


@pytest.fixture
async def sidecar(upstream, tmp_path: Path):  # type: ignore[no-untyped-def]
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    key = tmp_path / "key"
    key.write_bytes(HASH_KEY)
    process = SidecarProcess(sidecar_env(
        upstream, "grpc", SIDECAR_POLICY_DIR=str(POLICIES), SIDECAR_POLICY_HASH_KEY_FILE=str(key),
        SIDECAR_TENANT="acme", SIDECAR_POD_NAME="api-0",
    ))
    await process.start()
    try:
        yield process
    finally:
        assert await process.stop() == 0


async def test_debug_plan_shows_the_live_plan_without_values(sidecar: SidecarProcess) -> None:
    admin = sidecar.ports["admin"]
    status, body = curl(admin, "resource.service.name=checkout&signal=traces")
    assert status == 200, body
    plan = body["plan"]
    assert plan["allow"] is True  # type: ignore[index]
    rules = {(r["rule_id"], r["action"]) for r in plan["attribute_rules"]}  # type: ignore[index]
    assert ("pci.sensitive", "drop") in rules and ("pci.card_number", "mask_pan") in rules
    assert {"rule_id": "pci.pan", "kind": "pan", "action": "mask_pan"} in plan["detectors"]  # type: ignore[index]
    assert {"rule_id": "tenant.stamp", "key": "tenant.id", "on_conflict": "reject"} in plan["stamps"]  # type: ignore[index]
    assert plan["sampling"]["ratio"] == 0.1  # type: ignore[index]
    assert body["resource_keys"] == ["service.name"]
    text = json.dumps(body)
    assert "acme" not in text and "checkout" not in text  # no stamp value, no attribute value


async def test_debug_plan_for_a_spoofed_tenant_names_the_rule_not_the_reason(sidecar: SidecarProcess) -> None:
    admin = sidecar.ports["admin"]
    status, body = curl(admin, 'resource={"tenant.id":"globex","service.name":"cart"}&signal=logs&transport=http')
    assert status == 200, body
    assert body["plan"]["allow"] is False and body["plan"]["refuse_rule_id"] == "tenant.spoofed"  # type: ignore[index]
    assert body["plan"]["sampling"] is None  # logs are not sampled  # type: ignore[index]
    assert "globex" not in json.dumps(body)  # the reason quotes the claimed tenant: left out


async def test_debug_plan_rejects_a_bad_query(sidecar: SidecarProcess) -> None:
    admin = sidecar.ports["admin"]
    assert curl(admin, "signal=spans") == (400, {"error": "signal must be traces, metrics or logs"})
    status, body = curl(admin, "colour=blue")
    assert status == 400 and "unknown parameter 'colour'" in body["error"]  # type: ignore[operator]
    status, body = curl(admin, "resource=[1,2]")
    assert status == 400 and "JSON object" in body["error"]  # type: ignore[operator]
    assert "Traceback" not in sidecar.stderr


async def test_debug_plan_never_shows_a_card_number_it_was_given(sidecar: SidecarProcess) -> None:
    """The admin port listens on every address (for the kubelet's probes): a parameter name or
    key that is a card number comes back masked, and one cut to 40 characters is masked before
    the cut (cut first, 12 of its digits would show)."""
    admin = sidecar.ports["admin"]
    status, body = curl(admin, "4111%201111%201111%201111=x")
    assert status == 400 and "'**** **** **** 1111'" in body["error"], body  # type: ignore[operator]
    status, body = curl(admin, "q" * 28 + "4111111111111111=x")
    assert status == 400 and "4111" not in body["error"], body  # type: ignore[operator]
    status, body = curl(admin, "resource.4111111111111111=x&resource.5555-5555-5555-4444=y")
    assert status == 200 and body["resource_keys"] == ["************1111", "****-****-****-4444"], body
    assert "4111111111111111" not in sidecar.stderr


async def test_debug_plan_answers_400_for_values_protobuf_cannot_hold(sidecar: SidecarProcess) -> None:
    """An integer past 64 bits or a lone surrogate in the resource: 400 naming the problem (was a
    500 and a traceback in the log quoting the value)."""
    admin = sidecar.ports["admin"]
    status, body = curl(admin, 'resource={"k":41111111111111111111111111111111}')
    assert status == 400 and "out of range" in body["error"], body  # type: ignore[operator]
    status, body = curl(admin, 'resource={"\\ud800":1}')
    assert status == 400, body
    assert "Traceback" not in sidecar.stderr
