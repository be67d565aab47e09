"""What the chart tests check rendered objects with: the Kubernetes schema (kinds of CRDs by their
group), the webhook's settings the chart renders, label selectors evaluated as the API server does,
and the leaf paths of a values tree."""

from __future__ import annotations

from typing import Any

import kubernetes_validate

from tests.helm.conftest import CRD_KINDS, Rendered

KUBE_VERSION = "1.29"


def validate_all(objects: Rendered) -> None:
    for obj in objects:
        if obj["kind"] in CRD_KINDS:
            check_crd_object(obj)
        else:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


def check_crd_object(obj: dict[str, Any]) -> None:
    group = obj["apiVersion"].split("/")[0]
    expected = {
        "ServiceMonitor": "monitoring.coreos.com",
        "PodMonitor": "monitoring.coreos.com",
        "PrometheusRule": "monitoring.coreos.com",
        "Certificate": "cert-manager.io",
        "Issuer": "cert-manager.io",
    }[obj["kind"]]
    assert obj["apiVersion"] == f"{expected}/v1"
    assert obj["metadata"]["name"] and obj["metadata"]["namespace"]
    assert isinstance(obj["spec"], dict) and obj["spec"]
    assert group == expected


def webhook_toml(objects: Rendered) -> str:
    configmaps = [o for o in objects.of_kind("ConfigMap") if "webhook.toml" in o.get("data", {})]
    assert len(configmaps) == 1
    return configmaps[0]["data"]["webhook.toml"]


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A Kubernetes label selector, evaluated (matchLabels and matchExpressions)."""
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions", []):
        present, value = expr["key"] in labels, labels.get(expr["key"])
        operator = expr["operator"]
        if operator == "In" and value not in expr["values"]:
            return False
        if operator == "NotIn" and present and value in expr["values"]:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


#: values that are maps of user entries (their keys are the user's, not options)
FREE_FORM = {
    "resources",
    "extraEnv",
    "labels",
    "issuerRef",
    "podAnnotations",
    "nodeSelector",
    "affinity",
    "extraSets",
    "requests",
    "limits",
}


def leaf_paths(values: dict[str, Any], prefix: str = "") -> list[str]:
    paths = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and key not in FREE_FORM:
            paths += leaf_paths(value, path + ".")
        else:
            paths.append(path)
    return paths
