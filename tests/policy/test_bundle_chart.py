"""The chart's bundle source, through the real Helm engine and the webhook: the values become
the injected sidecar's settings (bundles, polling, the verification key Secret mounted), and
that sidecar configuration loads signed bundles from a server; the policies ConfigMap can stay
beside a bundle (its .manifest from bundles.localRoots)."""

from __future__ import annotations

from pathlib import Path

import helm_python
import prometheus_client
import pytest

from sidecar import config as config_mod
from sidecar.identity import Peer, PodIdentity
from sidecar.policy.service import PolicyService
from sidecar.rewrite import split_resources
from sidecar.signals import Signal
from sidecar.webhook.config import load_webhook_config
from sidecar.webhook.inject import BUNDLE_KEY_DIR, Scope, decide
from tests.bundles.helpers import PLATFORM_ROOTS, BundleServer, Keys, build, shipped_config, split_set, whole_set
from tests.helm.checks import webhook_toml
from tests.helm.conftest import CHART_DIR, render_chart
from tests.policy.conftest import trace_request
from tests.webhook.conftest import apply, assert_valid_pod, deployment_pod, env_of, sidecar_of

POD = PodIdentity(name="api-0", namespace="shop", service_account="api", tenant="acme")


def injected(render, values: dict, tmp_path: Path, scope: Scope = Scope.NAMESPACE):
    objects = render(values)
    path = tmp_path / "webhook.toml"
    path.write_text(webhook_toml(objects), encoding="utf-8")
    pod = deployment_pod()
    decision = decide(pod, "shop", scope, load_webhook_config(path, env={}))
    result = apply(pod, decision.patch)
    assert_valid_pod(result)
    return objects, result, decision


async def start_from_env(env: dict[str, str]) -> PolicyService:
    policy = config_mod.load(None, env=env).policy
    service = PolicyService(policy, POD, prometheus_client.CollectorRegistry())
    await service.start()
    return service


@pytest.fixture(scope="module")
def helm_chart():
    with helm_python.Chart.load(CHART_DIR) as loaded:
        yield loaded


@pytest.fixture
def render(helm_chart):
    return lambda values=None: render_chart(helm_chart, values)


@pytest.fixture
async def server():
    bundle_server = BundleServer()
    yield bundle_server
    await bundle_server.stop()


async def test_bundles_instead_of_the_configmap(render, server, tmp_path: Path, hash_key_file: Path) -> None:
    keys = Keys(tmp_path / "keys")
    folder = tmp_path / "set"
    whole_set(folder, "fleet-7")
    raw = build(folder, tmp_path / "b.tar.gz", "--signing-key", str(keys.ec_private), "--signing-alg", "ES256")
    base = await server.start()
    server.put("platform", raw.read_bytes())
    values = {
        "policies": {"enabled": False},
        "bundles": {
            "sources": [{"name": "platform", "url": f"{base}/platform"}],
            "pollingMinDelay": "100ms", "pollingMaxDelay": "200ms",
            "verification": {"secretName": "otlp-bundle-key", "algorithm": "ES256", "keyId": ""},
        },
    }
    # PCI-scope pods are admitted: the bundle carries the policies (the PCI probe checks it)
    _, pod, decision = injected(render, values, tmp_path, Scope.PCI)
    assert "policy bundles: platform" in decision.reason
    sidecar = sidecar_of(pod)
    env = env_of(sidecar)
    assert env["SIDECAR_POLICY_BUNDLES"] == f"platform={base}/platform"
    assert env["SIDECAR_POLICY_BUNDLE_VERIFICATION_KEY_FILE"] == f"{BUNDLE_KEY_DIR}/key.pem"
    assert env["SIDECAR_POLICY_BUNDLE_VERIFICATION_ALGORITHM"] == "ES256"
    assert "SIDECAR_POLICY_DIR" not in env
    volume = next(v for v in pod["spec"]["volumes"] if v.get("secret", {}).get("secretName") == "otlp-bundle-key")
    assert {"name": volume["name"], "mountPath": BUNDLE_KEY_DIR, "readOnly": True} in sidecar["volumeMounts"]

    # that sidecar configuration, with the Secret "mounted", loads the signed bundle
    key_dir = tmp_path / "bundle-key"
    key_dir.mkdir()
    (key_dir / "key.pem").write_bytes(keys.ec_public.read_bytes())
    settings = {k: v for k, v in env.items() if isinstance(v, str) and k.startswith("SIDECAR_POLICY_")}
    settings["SIDECAR_POLICY_BUNDLE_VERIFICATION_KEY_FILE"] = str(key_dir / "key.pem")
    settings["SIDECAR_POLICY_HASH_KEY_FILE"] = str(hash_key_file)
    service = await start_from_env(settings)
    try:
        status = service.status()
        assert status["bundles"][0]["revision"] == "fleet-7" and status["bundles"][0]["signed"]
    finally:
        await service.stop()


async def test_configmap_beside_a_tenant_bundle(render, tmp_path: Path, hash_key_file: Path) -> None:
    config = shipped_config()
    config["tenant"]["on_conflict"] = "overwrite"
    tenants = build(split_set(tmp_path / "src", config)["tenants"], tmp_path / "tenants.tar.gz")
    local_roots = [*PLATFORM_ROOTS, "otlp_sidecar/config/sampling"]
    values = {"bundles": {"sources": [{"name": "tenants", "url": "https://bundles.example/tenants.tar.gz"}],
                          "localRoots": local_roots}}
    objects, pod, _ = injected(render, values, tmp_path)
    env = env_of(sidecar_of(pod))
    assert env["SIDECAR_POLICY_DIR"] and env["SIDECAR_POLICY_BUNDLES"].startswith("tenants=")
    assert "SIDECAR_POLICY_BUNDLE_VERIFICATION_KEY_FILE" not in env  # no Secret given: unsigned accepted

    # project the ConfigMap as the kubelet does, then load it beside the tenants bundle (a file here)
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "otlp-sidecar-policies")
    data = next(o for o in objects.of_kind("ConfigMap") if ".manifest" in o.get("data", {}))["data"]
    mounted = tmp_path / "mounted"
    for item in volume["configMap"]["items"]:
        target = mounted / item["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(data[item["key"]], encoding="utf-8")
    assert "tenant" not in data["data.json"].split('"config"')[1][:40]  # the tenants bundle owns it
    service = await start_from_env({
        "SIDECAR_POLICY_DIR": str(mounted), "SIDECAR_POLICY_BUNDLES": f"tenants={tenants}",
        "SIDECAR_POLICY_HASH_KEY_FILE": str(hash_key_file), "SIDECAR_POLICY_RELOAD_INTERVAL": "0",
    })
    try:
        status = service.status()
        assert [(b["name"], b["revision"]) for b in status["bundles"]] == [
            ("tenants", "tenants-r1"), ("local", "chart-0.1.0")]
        resources = split_resources(Signal.TRACES, trace_request([({"service.name": "a"}, [{}])]))
        plan = (await service.plans_for(Signal.TRACES, resources, Peer(address="127.0.0.1"), "grpc"))[0]
        assert any(s.key == "tenant.id" and s.on_conflict == "overwrite" for s in plan.stamps)
    finally:
        await service.stop()


def test_the_schema_refuses_a_bundle_without_url(render) -> None:
    with pytest.raises(Exception, match="url"):
        render({"bundles": {"sources": [{"name": "tenants"}]}})
