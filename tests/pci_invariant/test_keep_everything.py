"""A policy package that keeps every attribute cannot switch card-number masking off.

Issue 15, item 3: a new package returning a `keep` rule matching ``*`` passed the shipped
tests, went live, and '5555 5555 5555 4444' reached the upstream in clear. Through a real
sidecar process, a real OTLP/HTTP client and a test upstream.
"""

from __future__ import annotations

from pathlib import Path

from sidecar.signals import Signal
from tests.conftest import sidecar_env
from tests.pci_invariant.helpers import (
    KEEP_ALL,
    KEEP_ALL_TEST,
    MASTERCARD,
    get_json,
    policy_set_with,
    post_traces,
    span_request,
)
from tests.processes import SidecarProcess


async def test_keep_all_package_does_not_unmask_card_numbers(upstream, tmp_path: Path) -> None:
    policies = policy_set_with(tmp_path, "otlp_sidecar.debugging", KEEP_ALL, KEEP_ALL_TEST)
    key = tmp_path / "hash.key"
    key.write_bytes(b"k" * 32)
    sidecar = SidecarProcess(sidecar_env(
        upstream, "grpc", SIDECAR_POLICY_DIR=str(policies), SIDECAR_POLICY_HASH_KEY_FILE=str(key),
        SIDECAR_POLICY_RELOAD_INTERVAL="0",
    ))
    ports = await sidecar.start()
    try:
        status, _ = await post_traces(ports["http"], span_request({"note": f"paid with {MASTERCARD}"}))
        assert status == 200
        await upstream.wait_for(lambda: len(upstream.spans()) >= 1)
        policy = await get_json(ports["admin"], "/policy")
    finally:
        assert await sidecar.stop() == 0
    raw = b"".join(m.SerializeToString() for m in upstream.messages(Signal.TRACES))
    assert MASTERCARD.encode() not in raw
    assert b"**** **** **** 4444" in raw
    # the keep rule is not an exemption: the start line and /policy name it as ignored
    assert "policy rule 'debugging.keep_all' keeps attributes that are not exempted" in sidecar.stderr
    assert policy["pci_probe"]["ignored_keep_rules"] == ["debugging.keep_all"]
    assert policy["exemptions"] == []
