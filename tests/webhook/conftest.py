"""Shared helpers of the webhook tests: sample pods, AdmissionReviews, validation as a Pod."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonpatch
import kubernetes_validate
import pytest

from sidecar.webhook.config import WebhookConfig, load_webhook_config

#: the oldest Kubernetes with native sidecars on by default; the pods must be valid there
KUBE_VERSION = "1.29"

POLICY_ITEMS = {"data.json": "data.json", "pci__pci.rego": "pci/pci.rego", "main.rego": "main.rego"}

CONFIG_TOML = """
[injection]
image = "registry.example/otlp-sidecar:1.2.3"
tenant_label = "team"
upstream_endpoint = "https://collector.observability:4317"
mtls_secret = "otlp-sidecar-mtls"
hash_key_secret = "otlp-sidecar-hmac"

[policy_sets.default]
config_map = "otlp-sidecar-policies"
items = { "data.json" = "data.json", "pci__pci.rego" = "pci/pci.rego", "main.rego" = "main.rego" }

[policy_sets.strict]
config_map = "otlp-sidecar-policies-strict"
"""


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "webhook.toml"
    path.write_text(CONFIG_TOML, encoding="utf-8")
    return path


@pytest.fixture
def config(config_file: Path) -> WebhookConfig:
    return load_webhook_config(config_file, env={})


def deployment_pod(**annotations: str) -> dict[str, Any]:
    """A pod as a ReplicaSet creates it: generateName, no name, owner reference, one container."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "checkout-7d9f8b6c5-",
            "namespace": "shop",
            "labels": {"app": "checkout", "team": "payments", "pod-template-hash": "7d9f8b6c5"},
            "annotations": dict(annotations),
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": "checkout-7d9f8b6c5",
                    "uid": "0b8e5f4e-1111-4c2b-9a53-d1f3c1a1e001",
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "serviceAccountName": "checkout",
            "containers": [
                {
                    "name": "app",
                    "image": "registry.example/checkout:4.2",
                    "ports": [{"containerPort": 8080, "name": "http"}],
                }
            ],
        },
    }


def admission_review(
    pod: dict[str, Any],
    *,
    namespace: str = "shop",
    operation: str = "CREATE",
    uid: str = "705ab4f5-6393-11e8-b7cc-42010a800002",
) -> dict[str, Any]:
    """An AdmissionReview v1 request as the API server sends it for a pod."""
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": pod["metadata"].get("name", ""),
            "namespace": namespace,
            "operation": operation,
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod,
            "oldObject": None,
            "dryRun": False,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    }


def apply(pod: dict[str, Any], patch: list[dict[str, Any]]) -> dict[str, Any]:
    """Apply the webhook's patch with an independent RFC 6902 implementation."""
    return jsonpatch.apply_patch(copy.deepcopy(pod), patch)


def assert_valid_pod(pod: dict[str, Any]) -> None:
    """The pod validates against the Kubernetes OpenAPI schema (strict: no unknown fields)."""
    kubernetes_validate.validate(pod, KUBE_VERSION, strict=True)
    names = [c["name"] for c in pod["spec"]["containers"] + pod["spec"].get("initContainers", [])]
    assert len(names) == len(set(names)), f"duplicate container names: {names}"
    volumes = [v["name"] for v in pod["spec"].get("volumes", [])]
    assert len(volumes) == len(set(volumes)), f"duplicate volume names: {volumes}"
    for container in pod["spec"]["containers"] + pod["spec"].get("initContainers", []):
        for mount in container.get("volumeMounts", []):
            assert mount["name"] in volumes, f"{container['name']} mounts unknown {mount['name']}"


def sidecar_of(pod: dict[str, Any]) -> dict[str, Any]:
    found = [
        c for c in pod["spec"].get("initContainers", []) + pod["spec"]["containers"] if c["name"] == "otlp-sidecar"
    ]
    assert len(found) == 1
    return found[0]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    """name -> value (or the valueFrom source) of a container's env."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def status_of(pod: dict[str, Any]) -> dict[str, Any]:
    return json.loads(pod["metadata"]["annotations"]["otlp-sidecar.io/status"])


def largest_review(config: WebhookConfig | None = None) -> bytes:
    """An AdmissionReview whose answer is the largest the webhook makes with ``config`` (its
    defaults if None): the pod's owner's name fills the patch up to ``MAX_PATCH_BYTES`` (it goes
    into the sidecar's SIDECAR_WORKLOAD_NAME, bounded only through the patch). With the defaults:
    a review of 1.05 MB answered with 1.4 MB (the patch in base64)."""
    from sidecar.webhook.inject import MAX_PATCH_BYTES, Scope, decide

    config = config or WebhookConfig()

    def pod(owner: str) -> dict[str, Any]:
        made = deployment_pod(**{"otlp-sidecar.io/inject": "true"})
        made["metadata"]["ownerReferences"][0]["name"] = owner
        return made

    patch = decide(pod("x"), "shop", Scope.POD, config).patch
    owner = "x" * (MAX_PATCH_BYTES - len(json.dumps(patch)) + 1)
    assert len(json.dumps(decide(pod(owner), "shop", Scope.POD, config).patch)) == MAX_PATCH_BYTES
    return json.dumps(admission_review(pod(owner))).encode()
