"""The same signed bundles in a real OPA (``opa run --server --bundle``, remote back-end) and in
the embedded engine (``policy.bundles`` from files) give the same plans."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import aiohttp

from sidecar.identity import Peer
from sidecar.rewrite import split_resources
from sidecar.signals import Signal
from tests.bundles.helpers import Keys, build, shipped_config, split_set, whole_set
from tests.conftest import REPO
from tests.policy.generated import generated_resources, request_for
from tests.policy.opa_server import Opa

PEER = Peer(address="127.0.0.1:1")


async def test_embedded_and_remote_opa_decide_the_same_from_the_same_bundles(
    make_service, tmp_path: Path, hash_key_file: Path,
) -> None:
    keys = Keys(tmp_path / "keys")
    config = shipped_config()
    config["sampling"]["vip_users"] = ["u-42"]
    config["tenant"]["on_conflict"] = "overwrite"
    files = [
        build(folder, tmp_path / f"{name}.tar.gz", "--signing-key", str(keys.rsa_private))
        for name, folder in split_set(tmp_path / "src", config).items()
    ]
    opa = Opa(tmp_path, "--verification-key", str(keys.rsa_public), "--bundle", *files)
    await opa.start()
    try:
        via_opa = await make_service(backend="opa", opa_url=opa.url, hash_key_file=str(hash_key_file),
                                     opa_timeout=5.0)
        embedded = await make_service(
            bundles=[str(f) for f in files], hash_key_file=str(hash_key_file),
            bundle_verification_key_file=str(keys.rsa_public),
        )
        assert [b["revision"] for b in embedded.status()["bundles"]] == ["platform-r1", "tenants-r1", "sampling-r1"]
        assert via_opa.export_headers() == embedded.export_headers() == {"X-Scope-OrgID": "acme"}
        compared = 0
        for seed, (signal_, transport) in enumerate(
            [(Signal.TRACES, "grpc"), (Signal.TRACES, "http"), (Signal.LOGS, "grpc"), (Signal.METRICS, "http")]
        ):
            batch = generated_resources(100 + seed, 30)
            infos = split_resources(signal_, request_for(signal_, batch))
            got = await via_opa.plans_for(signal_, infos, PEER, transport)
            want = await embedded.plans_for(signal_, infos, PEER, transport)
            assert got == want
            compared += len(got)
        assert compared == 120
        plan = (await embedded.plans_for(
            Signal.TRACES, split_resources(Signal.TRACES, request_for(Signal.TRACES, [{"service.name": "a"}])),
            PEER, "grpc"))[0]
        assert any(k.rule_id == "sampling.vip_user" and k.value == "u-42" for k in plan.sampling.keep)
        assert any(s.on_conflict == "overwrite" for s in plan.stamps)  # the tenant bundle's data
        logged = [e for e in opa.decision_logs() if e.get("path") == "otlp_sidecar/main/decisions"]
        assert logged  # OPA did answer
    finally:
        await opa.stop()


async def test_a_bundle_signed_here_is_served_by_opa_run_with_verification(
    make_service, tmp_path: Path, hash_key_file: Path,
) -> None:
    """`otlp-sidecar policy bundle build --signing-key` -> `opa run --verification-key`: OPA activates
    it (signature accepted) and decides as the embedded engine does from the same file."""
    keys = Keys(tmp_path / "keys")
    out = tmp_path / "ours.tar.gz"
    done = subprocess.run(
        [sys.executable, "-m", "sidecar", "policy", "bundle", "build", str(whole_set(tmp_path / "set", "ours-7")),
         "-o", str(out), "--signing-key", str(keys.ec_private), "--signing-alg", "ES256", "--key-id", "fleet"],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    opa = Opa(tmp_path, "--verification-key", str(keys.ec_public), "--verification-key-id", "fleet",
              "--signing-alg", "ES256", "--bundle", out)
    await opa.start()
    try:
        async with aiohttp.ClientSession() as session, session.get(f"{opa.url}/v1/data/system/bundles") as response:
            bundles = (await response.json()).get("result", {})
        assert [b["manifest"]["revision"] for b in bundles.values()] == ["ours-7"]
        via_opa = await make_service(backend="opa", opa_url=opa.url, hash_key_file=str(hash_key_file),
                                     opa_timeout=5.0)
        embedded = await make_service(bundles=[str(out)], hash_key_file=str(hash_key_file),
                                      bundle_verification_key_file=str(keys.ec_public),
                                      bundle_verification_algorithm="ES256", bundle_verification_key_id="fleet")
        infos = split_resources(Signal.TRACES, request_for(Signal.TRACES, generated_resources(7, 30)))
        assert await via_opa.plans_for(Signal.TRACES, infos, PEER, "grpc") == await embedded.plans_for(
            Signal.TRACES, infos, PEER, "grpc")
    finally:
        await opa.stop()
    # and opa refuses to start on it with another key
    other = Opa(tmp_path, "--verification-key", str(Keys(tmp_path / "other").ec_public), "--signing-alg", "ES256",
                "--bundle", out)
    try:
        await other.start(timeout=10)
        raise AssertionError("opa activated a bundle signed with another key")
    except AssertionError as exc:
        assert "opa activated" not in str(exc) and "verify" in str(exc).lower(), str(exc)[-500:]
    finally:
        await other.stop()
