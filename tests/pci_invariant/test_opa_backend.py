"""The PCI guarantee with the remote back-end: a real OPA server (``make peers``) serving a set with a
keep-all package and an exemption, a real sidecar process asking it, a real OTLP/HTTP client.

The engine applies the guarantee to what OPA answers as to the embedded engine's decisions: the
keep-all rule does not unmask, the exemption from OPA's ``pod_settings`` passes its one key and is
listed and counted; a glob exemption from OPA is refused (no exemption applies).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import sidecar_env
from tests.pci_invariant.helpers import (
    KEEP_ALL,
    KEEP_ALL_TEST,
    MASTERCARD,
    get,
    get_json,
    metric,
    policy_set_with,
    post_traces,
    span_request,
    with_data,
)
from tests.policy.conftest import attrs_of
from tests.policy.opa_server import Opa
from tests.processes import SidecarProcess

pytestmark = pytest.mark.timeout(90)

VISA = "4111 1111 1111 1111"
EXEMPTION = {"rule_id": "qa.test_cards", "key": "qa.sample_value", "reason": "published test numbers"}


async def run_against_opa(upstream, tmp_path: Path, exemption: dict) -> tuple[SidecarProcess, dict, str]:
    policies = with_data(policy_set_with(tmp_path, "otlp_sidecar.debugging", KEEP_ALL, KEEP_ALL_TEST),
                         exemptions=[exemption])
    opa = Opa(tmp_path, policies)
    await opa.start()
    sidecar = SidecarProcess(sidecar_env(
        upstream, "grpc", SIDECAR_POLICY_BACKEND="opa", SIDECAR_POLICY_OPA_URL=opa.url,
        SIDECAR_POLICY_RELOAD_INTERVAL="0",
    ))
    try:
        ports = await sidecar.start()
        try:
            status, _ = await post_traces(ports["http"], span_request({"qa.sample_value": VISA, "note": MASTERCARD}))
            assert status == 200
            await upstream.wait_for(lambda: len(upstream.spans()) >= 1)
            policy = await get_json(ports["admin"], "/policy")
            _, metrics = await get(ports["admin"], "/metrics")
        finally:
            assert await sidecar.stop() == 0
    finally:
        await opa.stop()
    return sidecar, policy, metrics


async def test_an_exemption_from_opa_passes_its_key_only(upstream, tmp_path: Path) -> None:
    sidecar, policy, metrics = await run_against_opa(upstream, tmp_path, EXEMPTION)
    (span,) = upstream.spans()
    attrs = attrs_of(span.attributes)
    assert attrs["qa.sample_value"] == VISA
    assert attrs["note"] == "**** **** **** 4444"  # the keep-all rule from OPA did not unmask it
    assert policy["backend"] == "opa" and policy["exemptions"] == [EXEMPTION]
    assert "PCI exemption qa.test_cards" in sidecar.stderr
    assert metric(metrics, "otlp_sidecar_policy_rule_actions_total",
                  signal="traces", rule_id="qa.test_cards", action="keep") == 1


async def test_a_glob_exemption_from_opa_is_refused_and_nothing_is_exempted(upstream, tmp_path: Path) -> None:
    _, policy, _ = await run_against_opa(upstream, tmp_path, {**EXEMPTION, "key": "qa.*"})
    (span,) = upstream.spans()
    attrs = attrs_of(span.attributes)
    assert attrs["qa.sample_value"] == "**** **** **** 1111"
    assert attrs["note"] == "**** **** **** 4444"
    assert policy["exemptions"] == []
    assert "is a glob" in policy["last_reload_error"]
