"""Exemptions and the load-time probe, through a real sidecar process and a real OTLP/HTTP client.

- an exemption names one exact key with a reason: only that key passes unmasked; it is listed
  at start and in /policy, and each use is counted per rule;
- a glob as an exemption refuses the set at start with a clear error;
- a set that writes a card number itself (a stamp) is refused at start, and on hot reload the
  last good set stays.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

from sidecar.signals import Signal
from tests.conftest import sidecar_env
from tests.pci_invariant.helpers import (
    MASTERCARD,
    STAMP_CARD,
    STAMP_CARD_TEST,
    copy_of_policies,
    get,
    get_json,
    metric,
    policy_set_with,
    post_traces,
    run_until_exit,
    span_request,
    with_data,
)
from tests.policy.conftest import attrs_of
from tests.processes import SidecarProcess

VISA = "4111 1111 1111 1111"
EXEMPTION = {"rule_id": "qa.test_cards", "key": "qa.sample_value",
             "reason": "the processor's published test numbers, for the payment QA dashboard"}


def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "hash.key"
    path.write_bytes(b"an hmac key of thirty-two bytes!")
    return path


async def test_an_exemption_passes_only_its_key_and_is_listed_and_counted(upstream, tmp_path: Path) -> None:
    policies = with_data(copy_of_policies(tmp_path), exemptions=[EXEMPTION])
    sidecar = SidecarProcess(sidecar_env(
        upstream, "grpc", SIDECAR_POLICY_DIR=str(policies),
        SIDECAR_POLICY_HASH_KEY_FILE=str(key_file(tmp_path)), SIDECAR_POLICY_RELOAD_INTERVAL="0",
    ))
    ports = await sidecar.start()
    try:
        body = span_request({"qa.sample_value": VISA, "qa.sample_value.copy": VISA, "note": MASTERCARD})
        for _ in range(3):
            status, _ = await post_traces(ports["http"], body)
            assert status == 200
        await upstream.wait_for(lambda: len(upstream.spans()) >= 3)
        policy = await get_json(ports["admin"], "/policy")
        _, metrics = await get(ports["admin"], "/metrics")
    finally:
        assert await sidecar.stop() == 0
    for span in upstream.spans():
        attrs = attrs_of(span.attributes)
        assert attrs["qa.sample_value"] == VISA  # exempted, exactly this key
        assert attrs["qa.sample_value.copy"] == "**** **** **** 1111"
        assert attrs["note"] == "**** **** **** 4444"
    assert policy["exemptions"] == [EXEMPTION]
    assert "PCI exemption qa.test_cards: attribute 'qa.sample_value' may carry card numbers unmasked" in sidecar.stderr
    assert metric(metrics, "otlp_sidecar_policy_exemptions", rule_id="qa.test_cards") == 1
    assert metric(metrics, "otlp_sidecar_policy_rule_actions_total",
                  signal="traces", rule_id="qa.test_cards", action="keep") == 3


async def test_a_glob_exemption_refuses_the_set_at_start(tmp_path: Path) -> None:
    glob = {**EXEMPTION, "key": "*"}
    policies = with_data(copy_of_policies(tmp_path), exemptions=[glob])
    code, stderr = await run_until_exit(sidecar_env(
        None, SIDECAR_POLICY_DIR=str(policies), SIDECAR_POLICY_HASH_KEY_FILE=str(key_file(tmp_path)),
    ))
    assert code == 2
    assert "exemptions[0].key '*' is a glob: an exemption names one exact attribute key" in stderr
    assert "Traceback" not in stderr


async def test_an_exemption_without_a_reason_refuses_the_set(tmp_path: Path) -> None:
    policies = with_data(copy_of_policies(tmp_path), exemptions=[{**EXEMPTION, "reason": " "}])
    code, stderr = await run_until_exit(sidecar_env(None, SIDECAR_POLICY_DIR=str(policies)))
    assert code == 2 and "reason must say why 'qa.sample_value' may carry card numbers" in stderr


async def test_a_set_that_writes_a_card_number_is_refused_at_start(tmp_path: Path) -> None:
    policies = policy_set_with(tmp_path, "otlp_sidecar.leaky", STAMP_CARD, STAMP_CARD_TEST)
    code, stderr = await run_until_exit(sidecar_env(
        None, SIDECAR_POLICY_DIR=str(policies), SIDECAR_POLICY_HASH_KEY_FILE=str(key_file(tmp_path)),
    ))
    assert code == 2
    # refused where the decision is checked, naming the file, the field and the rule
    assert ("leaky/leaky.rego (package otlp_sidecar.leaky): decision.stamps[0].value: holds a card number"
            in stderr)
    assert "4111" not in stderr and "Traceback" not in stderr


async def test_a_leaking_set_is_refused_on_hot_reload_and_the_last_good_stays(upstream, tmp_path: Path) -> None:
    live = copy_of_policies(tmp_path / "live")
    leaky = policy_set_with(tmp_path / "leaky", "otlp_sidecar.leaky", STAMP_CARD, STAMP_CARD_TEST)
    sidecar = SidecarProcess(sidecar_env(
        upstream, "grpc", SIDECAR_POLICY_DIR=str(live),
        SIDECAR_POLICY_HASH_KEY_FILE=str(key_file(tmp_path)), SIDECAR_POLICY_RELOAD_INTERVAL="0.1",
    ))
    ports = await sidecar.start()
    try:
        before = await get_json(ports["admin"], "/policy")
        shutil.copytree(leaky / "leaky", live / "leaky")
        shutil.copy(leaky / "main.rego", live / "main.rego")
        async with asyncio.timeout(60):
            while not (await get_json(ports["admin"], "/policy"))["last_reload_error"]:
                await asyncio.sleep(0.1)
        after = await get_json(ports["admin"], "/policy")
        status, _ = await post_traces(ports["http"], span_request({"note": MASTERCARD}))
        assert status == 200
        await upstream.wait_for(lambda: len(upstream.spans()) >= 1)
        _, metrics = await get(ports["admin"], "/metrics")
    finally:
        assert await sidecar.stop() == 0
    assert after["version"] == before["version"]
    assert "decision.stamps[0].value: holds a card number" in after["last_reload_error"]
    assert metric(metrics, "otlp_sidecar_policy_reloads_total", result="failed") == 1
    assert "policy reload refused, the last good set" in sidecar.stderr
    raw = b"".join(m.SerializeToString() for m in upstream.messages(Signal.TRACES))
    assert MASTERCARD.encode() not in raw and b"4111-1111-1111-1111" not in raw
    assert b"**** **** **** 4444" in raw


async def test_an_exemption_a_key_rule_wins_over_is_reported_as_without_effect(upstream, tmp_path: Path) -> None:
    """`test.card_number` ends in `card_number`: the bundled `pci.card_number` rule masks it, and
    an exemption only keeps a key from the detectors. The sidecar says so at start and in
    /policy, for that exemption only, and the value goes out masked as the rule says."""
    moot = {"rule_id": "qa.moot", "key": "test.card_number", "reason": "published test numbers"}
    policies = with_data(copy_of_policies(tmp_path), exemptions=[EXEMPTION, moot])
    sidecar = SidecarProcess(sidecar_env(
        upstream, "grpc", SIDECAR_POLICY_DIR=str(policies),
        SIDECAR_POLICY_HASH_KEY_FILE=str(key_file(tmp_path)), SIDECAR_POLICY_RELOAD_INTERVAL="0",
    ))
    ports = await sidecar.start()
    try:
        status, _ = await post_traces(ports["http"], span_request({"test.card_number": VISA, "qa.sample_value": VISA}))
        assert status == 200
        await upstream.wait_for(lambda: len(upstream.spans()) >= 1)
        policy = await get_json(ports["admin"], "/policy")
    finally:
        assert await sidecar.stop() == 0
    attrs = attrs_of(upstream.spans()[0].attributes)
    assert attrs["test.card_number"] == "**** **** **** 1111" and attrs["qa.sample_value"] == VISA
    assert policy["pci_probe"]["overridden_exemptions"] == [
        "qa.moot (key 'test.card_number'): pci.card_number (mask_pan) also matches it and wins"]
    assert "PCI exemption qa.moot (key 'test.card_number'): pci.card_number (mask_pan) also matches it " \
        "and wins: it has no effect" in sidecar.stderr
    assert "qa.test_cards (key" not in sidecar.stderr
