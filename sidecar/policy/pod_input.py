"""The ``pod`` part of the policy input: the pod identity, Kubernetes attributes included."""

from __future__ import annotations

from typing import Any

#: identity fields beyond the anchors (name, namespace, ...), from the downward API and the chart
K8S_FIELDS = ("uid", "node_name", "cluster_name", "workload_kind", "workload_name")


def pod_input(pod: Any) -> dict[str, Any]:
    """``pod.as_input()`` with every Kubernetes field present ("" when the pod does not know it)."""
    document = dict(pod.as_input())
    for name in K8S_FIELDS:
        value = document.get(name, getattr(pod, name, ""))
        document[name] = value if isinstance(value, str) else str(value or "")
    return document
