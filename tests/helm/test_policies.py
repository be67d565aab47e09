"""The chart's copy of policies/: no drift, a valid ConfigMap, and a mount that restores the tree."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

from sidecar.webhook.config import load_webhook_config
from sidecar.webhook.inject import Scope, decide
from tests.helm.checks import webhook_toml
from tests.helm.conftest import CHART_DIR, REPO
from tests.webhook.conftest import apply, deployment_pod

CONFIGMAP_LIMIT = 1024 * 1024  # bytes of data a ConfigMap may hold


def _sync_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sync_policies", REPO / "helm" / "sync-policies.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sync = _sync_module()


def test_chart_copy_matches_the_repo_policies() -> None:
    drift = sync.differences()
    assert drift == [], "the chart's policies drifted; run: python helm/sync-policies.py\n" + "\n".join(drift)
    assert sync.policy_files(REPO / "policies"), "policies/ is empty"


def test_every_policy_file_can_be_a_configmap_key() -> None:
    assert sync.problems(sync.policy_files(REPO / "policies")) == []


def test_sync_detects_and_repairs_drift(tmp_path: Path) -> None:
    source, target = tmp_path / "policies", tmp_path / "copy"
    (source / "pci").mkdir(parents=True)
    (source / "pci" / "pci.rego").write_text("package a\n", encoding="utf-8")
    (source / "data.json").write_text("{}", encoding="utf-8")
    sync.sync(source, target)
    assert sync.differences(source, target) == []

    (source / "pci" / "pci.rego").write_text("package b\n", encoding="utf-8")
    (target / "stale.rego").write_text("package c\n", encoding="utf-8")
    (source / "new.rego").write_text("package d\n", encoding="utf-8")
    assert sync.differences(source, target) == [
        "missing in the chart: new.rego",
        "not in policies/: stale.rego",
        "differs: pci/pci.rego",
    ]
    sync.sync(source, target)
    assert sync.differences(source, target) == []


def test_flattening_refuses_ambiguous_names() -> None:
    assert sync.problems({"a__b.rego": b"", "ok/fine.rego": b"", "sp ace.rego": b""}) == [
        "a__b.rego: a name with '__' cannot be flattened unambiguously",
        "sp ace.rego: not a valid ConfigMap key once flattened",
    ]


def _policies_configmaps(objects: Any) -> list[dict[str, Any]]:
    return [o for o in objects.of_kind("ConfigMap") if o["metadata"]["name"].endswith("-policies")]


def test_configmap_holds_every_policy_file(render: Any) -> None:
    configmap = _policies_configmaps(render())[0]
    files = sync.policy_files(CHART_DIR / "policies")
    data = configmap["data"]

    assert set(data) == {sync.configmap_key(p) for p in files}
    for relative, content in files.items():
        if relative != "data.json":
            assert data[sync.configmap_key(relative)] == content.decode("utf-8"), relative
    assert sum(len(v.encode()) for v in data.values()) < CONFIGMAP_LIMIT


def test_values_are_written_into_data_json(render: Any) -> None:
    original = json.loads((CHART_DIR / "policies" / "data.json").read_text(encoding="utf-8"))
    configmap = _policies_configmaps(
        render(
            {
                "sampling": {"ratio": 0.25},
                "tenant": {"label": "team"},
            }
        )
    )[0]
    data = json.loads(configmap["data"]["data.json"])

    config = data["otlp_sidecar"]["config"]
    assert config["sampling"]["ratio"] == 0.25
    assert config["tenant"]["label"] == "team"
    # everything else is the policies' own data, unchanged
    config["sampling"]["ratio"] = original["otlp_sidecar"]["config"]["sampling"]["ratio"]
    config["tenant"]["label"] = original["otlp_sidecar"]["config"]["tenant"]["label"]
    config["tenant"]["annotation"] = original["otlp_sidecar"]["config"]["tenant"]["annotation"]
    assert data == original


def test_configmap_is_rendered_in_each_listed_namespace(render: Any) -> None:
    configmaps = _policies_configmaps(render({"policies": {"namespaces": ["shop", "payments", "shop"]}}))
    assert sorted(c["metadata"]["namespace"] for c in configmaps) == ["observability", "payments", "shop"]
    assert len({json.dumps(c["data"], sort_keys=True) for c in configmaps}) == 1


def test_the_sidecar_mount_restores_the_policy_tree(render: Any, tmp_path: Path) -> None:
    objects = render()
    path = tmp_path / "webhook.toml"
    path.write_text(webhook_toml(objects), encoding="utf-8")
    config = load_webhook_config(path, env={})
    pod = deployment_pod()
    injected = apply(pod, decide(pod, "shop", Scope.NAMESPACE, config).patch)
    volume = next(v for v in injected["spec"]["volumes"] if v["name"] == "otlp-sidecar-policies")
    data = _policies_configmaps(objects)[0]["data"]

    # project the ConfigMap the way the kubelet does: each item's key written at its path
    mounted = tmp_path / "mounted"
    for item in volume["configMap"]["items"]:
        target = mounted / item["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(data[item["key"]], encoding="utf-8")

    shipped = sync.policy_files(CHART_DIR / "policies")  # == policies/ (test above)
    projected = sync.policy_files(mounted)
    assert set(projected) == set(shipped)
    for relative in shipped:
        if relative != "data.json":
            assert projected[relative] == shipped[relative], relative
