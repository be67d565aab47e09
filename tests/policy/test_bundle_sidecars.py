"""Real ``otlp-sidecar run`` processes pulling signed bundles from a bundle server on loopback:
a new revision changes masking live, a tampered one is refused and card numbers stay masked;
a fleet polling an unchanged bundle costs nothing (304s, no bytes, no reload, idle CPU)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from sidecar.signals import Signal
from tests.bundles.helpers import BundleServer, Keys, build, shipped_config, tampered, whole_set
from tests.bundles.sidecar_client import (
    bundle_env,
    card_values,
    metric,
    policy_status,
    send_cards,
    vm_hwm_kib,
)
from tests.processes import SidecarProcess


async def wait_until(check, timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.1)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.fixture
async def server():
    bundle_server = BundleServer()
    yield bundle_server
    await bundle_server.stop()


async def test_new_revision_changes_masking_live_and_a_tampered_one_is_refused(
    upstream, server, tmp_path: Path, hash_key_file: Path,
) -> None:
    keys = Keys(tmp_path / "keys")
    one = build(whole_set(tmp_path / "v1", "v1"), tmp_path / "v1.tar.gz", "--signing-key", str(keys.rsa_private))
    config = shipped_config()
    config["pci"]["card_number_action"] = "redact"
    two = build(whole_set(tmp_path / "v2", "v2", config=config), tmp_path / "v2.tar.gz",
                "--signing-key", str(keys.rsa_private))
    base = await server.start()
    server.put("set", one.read_bytes())
    sidecar = SidecarProcess(bundle_env(upstream, base, keys, hash_key_file))
    ports = await sidecar.start(timeout=60)
    try:
        assert "(bundles platform@v1) is live" in sidecar.stderr
        # the one-line summary names the bundle and its revision as the policy source
        up = next(line for line in sidecar.stderr_lines if " up: " in line)
        assert "policy bundles platform@v1" in up, up
        await send_cards(ports["grpc"])
        await upstream.wait_for(lambda: len(upstream.spans()) >= 5)
        assert set(card_values(upstream)) == {"**** **** **** 1111"}

        published = asyncio.get_running_loop().time()
        server.put("set", two.read_bytes())
        await wait_until(lambda: _revision_is(ports["admin"], "v2"))
        print(f"\nrevision v2 live {asyncio.get_running_loop().time() - published:.2f} s after it was published "
              "(polling every 0.1-0.2 s; download, verify, precheck and tests in a child, PCI probe, swap)")
        await send_cards(ports["grpc"])
        await upstream.wait_for(lambda: len(upstream.spans()) >= 10)
        assert set(card_values(upstream)[5:]) == {"[REDACTED]"}
        assert await metric(ports["admin"], 'otlp_sidecar_policy_bundle_info{bundle="platform",revision="v2"}') == 1

        # someone edits the bundle on the server to let card numbers through: the signature refuses it
        server.put("set", tampered(two.read_bytes(), "data.json", b'"redact"', b'"keep"'))
        await wait_until(lambda: _error_has(ports["admin"], "data.json does not match its signed hash"))
        status = await policy_status(ports["admin"])
        assert status["bundles"][0]["revision"] == "v2"
        await send_cards(ports["grpc"])
        await upstream.wait_for(lambda: len(upstream.spans()) >= 15)
        assert set(card_values(upstream)[10:]) == {"[REDACTED]"}
        raw = b"".join(m.SerializeToString() for m in upstream.messages(Signal.TRACES))
        assert b"4111 1111 1111 1111" not in raw and b"4111111111111111" not in raw
        assert "bundle platform refused, the last good set stays" in sidecar.stderr
        assert "4111" not in sidecar.stderr and "Traceback" not in sidecar.stderr
    finally:
        await sidecar.stop()


async def _revision_is(admin: int, revision: str) -> bool:
    return (await policy_status(admin))["bundles"][0]["revision"] == revision


async def _error_has(admin: int, text: str) -> bool:
    return text in (await policy_status(admin))["bundles"][0]["last_error"]


async def test_a_fleet_polling_an_unchanged_bundle_costs_nothing(
    upstream, server, tmp_path: Path, hash_key_file: Path,
) -> None:
    keys = Keys(tmp_path / "keys")
    one = build(whole_set(tmp_path / "v1", "v1"), tmp_path / "v1.tar.gz", "--signing-key", str(keys.rsa_private))
    base = await server.start()
    server.put("set", one.read_bytes())
    fleet = [SidecarProcess(bundle_env(upstream, base, keys, hash_key_file)) for _ in range(4)]
    ports = []
    try:
        for sidecar in fleet:
            ports.append(await sidecar.start(timeout=90))
        await asyncio.sleep(1.0)  # past the start
        full, sent, polls = server.full, server.bytes_served, server.not_modified
        cpu = [cpu_seconds(s.proc.pid) for s in fleet]
        window = 6.0
        await asyncio.sleep(window)
        used = [cpu_seconds(s.proc.pid) - before for s, before in zip(fleet, cpu, strict=True)]
        answered = server.not_modified - polls
        # every sidecar asked every 0.1-0.2 s and got 304s: no body, no download, no reload
        assert answered >= len(fleet) * window / 0.2 * 0.6, answered
        assert server.full == full and server.bytes_served == sent
        for admin in (p["admin"] for p in ports):
            assert await metric(admin, 'otlp_sidecar_policy_reloads_total{result="ok"}') == 1
            updated = 'otlp_sidecar_policy_bundle_polls_total{bundle="platform",result="updated"}'
            assert await metric(admin, updated) == 1
        print(f"\nfleet of {len(fleet)}: {answered} polls answered 304 in {window:g} s, "
              f"CPU per sidecar {[round(u / window * 100, 1) for u in used]} % of a core, "
              f"VmHWM {[vm_hwm_kib(s.proc.pid) // 1024 for s in fleet]} MiB")
        # ~idle: well under a tenth of a core each, on a shared machine
        assert max(used) / window < 0.10, used
    finally:
        for sidecar in fleet:
            await sidecar.stop()
