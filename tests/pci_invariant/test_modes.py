"""Secure by default, and every way of not masking is explicit and loud (a real sidecar process).

- nothing configured (no policy directory, no hash key): the bundled set applies, card numbers
  are masked, holders hashed with a per-pod random key, and the sidecar says so;
- `policy.mode = "passthrough"` and `dry_run` (also as the old `policy.dry_run = true`) forward
  card numbers in clear, and say so in a WARNING, /policy, /ready's body and a metric.
"""

from __future__ import annotations

import pytest

from sidecar.signals import Signal
from tests.conftest import sidecar_env
from tests.pci_invariant.helpers import (
    MASTERCARD,
    POLICIES,
    get,
    get_json,
    metric,
    post_traces,
    run_until_exit,
    span_request,
)
from tests.processes import SidecarProcess

HOLDER = "Jane Roe"


async def run_one_request(upstream, env: dict[str, str]) -> tuple[SidecarProcess, dict, dict, str]:
    """Start the sidecar, send one span with a card number and a holder, read the admin views."""
    sidecar = SidecarProcess(env)
    ports = await sidecar.start()
    try:
        status, _ = await post_traces(ports["http"], span_request({"note": MASTERCARD, "cardholder_name": HOLDER}))
        assert status == 200
        await upstream.wait_for(lambda: len(upstream.spans()) >= 1)
        policy = await get_json(ports["admin"], "/policy")
        ready = await get_json(ports["admin"], "/ready")
        _, metrics = await get(ports["admin"], "/metrics")
    finally:
        assert await sidecar.stop() == 0
    return sidecar, policy, ready, metrics


def upstream_bytes(upstream) -> bytes:
    return b"".join(m.SerializeToString() for m in upstream.messages(Signal.TRACES))


async def test_nothing_configured_masks_with_the_bundled_set(upstream) -> None:
    env = sidecar_env(upstream, "grpc")
    env.pop("SIDECAR_POLICY_MODE")  # as `pip install` + `otlp-sidecar run`: no policy settings at all
    sidecar, policy, ready, metrics = await run_one_request(upstream, env)
    raw = upstream_bytes(upstream)
    assert MASTERCARD.encode() not in raw and b"**** **** **** 4444" in raw
    assert HOLDER.encode() not in raw and b"hmac-sha256:" in raw  # hashed, no exit 2 for a missing key
    assert (policy["mode"], policy["bundled"], policy["hash_key"]) == ("enforce", True, "random, made for this pod")
    assert policy["pci_probe"]["cards_planted"] > 100
    assert ready["status"] == "ready" and ready["policy_mode"] == "enforce" and "policy_warning" not in ready
    assert metric(metrics, "otlp_sidecar_policy_mode", mode="enforce") == 1
    assert metric(metrics, "otlp_sidecar_policy_mode", mode="passthrough") == 0
    assert "WARNING" in sidecar.stderr and "random key made for this pod" in sidecar.stderr
    assert "(bundled) is live: mode enforce" in sidecar.stderr


async def test_passthrough_forwards_in_clear_and_says_so_everywhere(upstream) -> None:
    env = sidecar_env(upstream, "grpc", SIDECAR_POLICY_MODE="passthrough")
    sidecar, policy, ready, metrics = await run_one_request(upstream, env)
    assert MASTERCARD.encode() in upstream_bytes(upstream)  # the explicit choice
    assert policy["mode"] == "passthrough" and "card numbers are not masked" in policy["warning"]
    assert ready["policy_mode"] == "passthrough" and "card numbers are not masked" in ready["policy_warning"]
    assert metric(metrics, "otlp_sidecar_policy_mode", mode="passthrough") == 1
    assert metric(metrics, "otlp_sidecar_policy_mode", mode="enforce") == 0
    warning = next(line for line in sidecar.stderr.splitlines() if "passthrough" in line)
    assert "WARNING" in warning and "UNMASKED" in warning


@pytest.mark.parametrize("setting", [{"SIDECAR_POLICY_MODE": "dry_run"}, {"SIDECAR_POLICY_DRY_RUN": "true"}],
                         ids=["mode", "legacy dry_run key"])
async def test_dry_run_forwards_in_clear_and_says_so_everywhere(upstream, setting: dict[str, str]) -> None:
    env = sidecar_env(upstream, "grpc", **setting)
    if "SIDECAR_POLICY_DRY_RUN" in setting:
        del env["SIDECAR_POLICY_MODE"]  # sidecar_env asks for passthrough when no mode is named
    sidecar, policy, ready, metrics = await run_one_request(upstream, env)
    assert MASTERCARD.encode() in upstream_bytes(upstream)
    assert policy["mode"] == "dry_run" and policy["dry_run"] is True and "dry run" in policy["warning"]
    assert ready["policy_mode"] == "dry_run" and "card numbers are not masked" in ready["policy_warning"]
    assert metric(metrics, "otlp_sidecar_policy_mode", mode="dry_run") == 1
    assert metric(metrics, "otlp_sidecar_policy_dry_run") == 1
    warning = next(line for line in sidecar.stderr.splitlines() if "dry_run" in line)
    assert "WARNING" in warning and "NOT masked" in warning
    # the probe's line says what the set would mask, and that nothing is (a review read it as masking)
    live = next(line for line in sidecar.stderr.splitlines() if " is live: mode dry_run" in line)
    assert "masked by the set (in dry_run mode the data is forwarded as it came: NOT masked)" in live, live


async def test_passthrough_with_a_policy_dir_is_a_configuration_error() -> None:
    code, stderr = await run_until_exit(sidecar_env(None, SIDECAR_POLICY_MODE="passthrough",
                                                    SIDECAR_POLICY_DIR=str(POLICIES)))
    assert code == 2 and "policy.mode: is 'passthrough' (no policy applied) but a policy is configured" in stderr
