"""Bundles from an HTTP bundle server (aiohttp on loopback), polled by a PolicyService: a new
revision goes live, 304s cost nothing, the server going down or serving a tampered, unsigned or
wrongly signed bundle leaves the last good set; several bundles with disjoint roots."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sidecar.identity import Peer
from sidecar.rewrite import split_resources
from sidecar.signals import Signal
from tests.bundles.helpers import BundleServer, Keys, build, shipped_config, split_set, tampered, whole_set
from tests.policy.conftest import sample_value, trace_request

PEER = Peer(address="127.0.0.1:1")


async def wait_for(condition, timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


def with_vip(vip: str) -> dict:
    config = shipped_config()
    config["sampling"]["vip_users"] = [vip]
    return config


async def vip_keep(service, vip: str) -> bool:
    data = trace_request([({"service.name": "checkout"}, [{}])])
    plan = (await service.plans_for(Signal.TRACES, split_resources(Signal.TRACES, data), PEER, "grpc"))[0]
    return any(k.rule_id == "sampling.vip_user" and k.value == vip for k in plan.sampling.keep)


@pytest.fixture
async def server():
    bundle_server = BundleServer()
    yield bundle_server
    await bundle_server.stop()


async def test_revisions_from_a_signed_bundle_server(make_service, server, tmp_path: Path, hash_key_file) -> None:
    keys = Keys(tmp_path / "keys")
    one = build(whole_set(tmp_path / "v1", "v1", config=with_vip("u-1")), tmp_path / "v1.tar.gz",
                "--signing-key", str(keys.rsa_private))
    two = build(whole_set(tmp_path / "v2", "v2", config=with_vip("u-2")), tmp_path / "v2.tar.gz",
                "--signing-key", str(keys.rsa_private))
    other_key = build(whole_set(tmp_path / "v3", "v3", config=with_vip("u-3")), tmp_path / "v3.tar.gz",
                      "--signing-key", str(keys.other_rsa_private))
    unsigned = build(whole_set(tmp_path / "v4", "v4", config=with_vip("u-4")), tmp_path / "v4.tar.gz")
    base = await server.start()
    server.put("set", one.read_bytes())
    service = await make_service(
        bundles=[f"platform={base}/set"], hash_key_file=str(hash_key_file),
        bundle_polling_min_delay=0.05, bundle_polling_max_delay=0.1,
        bundle_verification_key_file=str(keys.rsa_public), bundle_verification_key_id="default",
    )
    registry = service.metrics.registry
    status = service.status()
    assert status["bundles"][0]["revision"] == "v1" and status["bundles"][0]["signed"] is True
    assert status["bundled"] is False and status["tests_passed"] >= 30
    assert sample_value(registry, "otlp_sidecar_policy_bundle_info", bundle="platform", revision="v1") == 1
    assert await vip_keep(service, "u-1")

    # nothing changed: the poller asks with If-None-Match and gets 304s, nothing is reloaded
    full, version = server.full, service.version
    await wait_for(lambda: server.not_modified >= 5)
    assert server.full == full and service.version == version
    assert sample_value(registry, "otlp_sidecar_policy_reloads_total", result="ok") == 1
    # the server counts a 304 as it answers, the poller once it has read it: wait for the poller
    await wait_for(lambda: sample_value(registry, "otlp_sidecar_policy_bundle_polls_total", bundle="platform",
                                        result="not_modified") >= 5)

    # a new revision goes live
    server.put("set", two.read_bytes())
    await wait_for(lambda: service.status()["bundles"][0]["revision"] == "v2")
    assert await vip_keep(service, "u-2") and not await vip_keep(service, "u-1")
    assert sample_value(registry, "otlp_sidecar_policy_bundle_info", bundle="platform", revision="v2") == 1
    assert registry.get_sample_value(
        "otlp_sidecar_policy_bundle_info", {"bundle": "platform", "revision": "v1"}) is None
    good = service.version

    # the server goes down: the last good set stays, the poller backs off and comes back
    server.down = True
    await wait_for(lambda: sample_value(registry, "otlp_sidecar_policy_bundle_polls_total", bundle="platform",
                                        result="failed") >= 2)
    assert "HTTP 503" in service.status()["bundles"][0]["last_error"]
    assert service.version == good and await vip_keep(service, "u-2")
    server.down = False

    # tampered (one byte of data.json changed after signing), signed by another key, unsigned: refused
    cases = [
        (tampered(two.read_bytes(), "data.json", b'"u-2"', b'"u-9"'), "data.json does not match its signed hash"),
        (tampered(two.read_bytes(), "pci/pci.rego", b"package otlp_sidecar.pci",
                  b"package otlp_sidecar.pci\nallow_all := true"), "pci/pci.rego does not match"),
        (other_key.read_bytes(), "does not verify with the configured key"),
        (unsigned.read_bytes(), "is not signed"),
    ]
    for raw, message in cases:
        refused = sample_value(registry, "otlp_sidecar_policy_bundle_polls_total", bundle="platform", result="refused")
        server.put("set", raw)
        await wait_for(lambda r=refused: sample_value(
            registry, "otlp_sidecar_policy_bundle_polls_total", bundle="platform", result="refused") > r)
        status = service.status()
        assert message in status["bundles"][0]["last_error"], status["bundles"][0]["last_error"]
        assert status["bundles"][0]["revision"] == "v2" and service.version == good
        assert await vip_keep(service, "u-2")
    # a refused bundle is downloaded once: its ETag is asked with If-None-Match afterwards
    full, not_modified = server.full, server.not_modified
    await wait_for(lambda: server.not_modified >= not_modified + 3)
    assert server.full == full


async def test_several_bundles_with_disjoint_roots(make_service, server, tmp_path: Path, hash_key_file) -> None:
    keys = Keys(tmp_path / "keys")
    parts = split_set(tmp_path / "src", with_vip("u-7"))
    base = await server.start()
    for name, folder in parts.items():
        raw = build(folder, tmp_path / f"{name}.tar.gz", "--signing-key", str(keys.ec_private),
                    "--signing-alg", "ES256").read_bytes()
        server.put(name, raw)
    service = await make_service(
        bundles=[f"{name}={base}/{name}" for name in parts], hash_key_file=str(hash_key_file),
        bundle_polling_min_delay=0.05, bundle_polling_max_delay=0.1,
        bundle_verification_key_file=str(keys.ec_public), bundle_verification_algorithm="ES256",
    )
    status = service.status()
    assert [(b["name"], b["revision"]) for b in status["bundles"]] == [
        ("platform", "platform-r1"), ("tenants", "tenants-r1"), ("sampling", "sampling-r1")]
    assert await vip_keep(service, "u-7")  # the team's YAML data reached the sampling rules
    assert status["pci_probe"]["cards_planted"] > 0

    # the tenants bundle claims the sampling config too: overlapping roots, refused with both names
    overlap = tmp_path / "overlap"
    overlap.mkdir()
    (overlap / ".manifest").write_text('{"revision": "tenants-r2", "roots": ["otlp_sidecar/config"]}')
    raw = build(overlap, tmp_path / "overlap.tar.gz", "--signing-key", str(keys.ec_private),
                "--signing-alg", "ES256").read_bytes()
    server.put("tenants", raw)
    await wait_for(lambda: service.status()["bundles"][1]["last_error"] != "")
    error = service.status()["bundles"][1]["last_error"]
    assert "bundles 'platform' and 'tenants' have overlapping roots" in error, error
    assert service.status()["bundles"][1]["revision"] == "tenants-r1"
    assert await vip_keep(service, "u-7")
