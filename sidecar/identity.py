"""Who is talking: the pod the sidecar serves and the peer of one connection."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sidecar.configkit import ConfigError, setting


@dataclass(frozen=True)
class Peer:
    """The client of one request, as the receiver saw it."""

    address: str = ""
    tls: bool = False
    #: the SPIFFE ID (URI SAN ``spiffe://...``) of a verified client certificate
    spiffe_id: str = ""

    def as_input(self) -> dict[str, object]:
        return {"address": self.address, "tls": self.tls, "spiffe_id": self.spiffe_id}


@dataclass(frozen=True)
class PodIdentity:
    """The pod the sidecar runs in, set by the injector through the downward API."""

    name: str = ""
    namespace: str = ""
    service_account: str = ""
    tenant: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    #: metadata.uid of the pod
    uid: str = ""
    #: spec.nodeName, the node the pod runs on
    node_name: str = ""
    #: the cluster's name, from the chart value ``clusterName``
    cluster_name: str = ""
    #: the pod's controller, derived by the injector from ownerReferences (``Deployment``...)
    workload_kind: str = ""
    workload_name: str = ""

    def as_input(self) -> dict[str, object]:
        return {
            "name": self.name,
            "namespace": self.namespace,
            "service_account": self.service_account,
            "tenant": self.tenant,
            "labels": dict(self.labels),
            "annotations": dict(self.annotations),
            "uid": self.uid,
            "node_name": self.node_name,
            "cluster_name": self.cluster_name,
            "workload_kind": self.workload_kind,
            "workload_name": self.workload_name,
        }


def read_downward_api_file(path: str) -> dict[str, str]:
    """Read a downward API ``labels`` / ``annotations`` file (``key="value"`` per line).

    A missing path (empty string) gives an empty mapping; a file that is named
    but unreadable raises OSError for the caller to report.
    """
    if not path:
        return {}
    result: dict[str, str] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = bytes(value[1:-1], "utf-8").decode("unicode_escape")
        result[key.strip()] = value
    return result


@dataclass(frozen=True)
class PodConfig:
    """The pod's identity, from the downward API (the injector sets these variables)."""

    name: str = setting("", "Pod name.", env=["SIDECAR_POD_NAME"])
    namespace: str = setting("", "Pod namespace.", env=["SIDECAR_POD_NAMESPACE"])
    service_account: str = setting("", "Pod service account.", env=["SIDECAR_POD_SERVICE_ACCOUNT"])
    tenant: str = setting("", "The pod's tenant (from a label or annotation).", env=["SIDECAR_TENANT"])
    labels_file: str = setting("", "Downward API file with the pod's labels.", kind="path")
    annotations_file: str = setting("", "Downward API file with the pod's annotations.", kind="path")
    uid: str = setting("", "Pod UID (metadata.uid).", env=["SIDECAR_POD_UID"])
    node_name: str = setting("", "Node the pod runs on (spec.nodeName).", env=["SIDECAR_NODE_NAME"])
    cluster_name: str = setting(
        "", "The cluster's name (the chart's `clusterName`).", env=["SIDECAR_CLUSTER_NAME"],
    )
    workload_kind: str = setting(
        "", "Kind of the pod's controller: Deployment, StatefulSet, DaemonSet, Job, CronJob, ReplicaSet "
        "(the injector derives it from ownerReferences).", env=["SIDECAR_WORKLOAD_KIND"],
    )
    workload_name: str = setting(
        "", "Name of the pod's controller (a Deployment's name, not its ReplicaSet's).",
        env=["SIDECAR_WORKLOAD_NAME"],
    )

    def identity(self) -> PodIdentity:
        try:
            labels = read_downward_api_file(self.labels_file)
        except OSError as exc:
            raise ConfigError("pod.labels_file", f"cannot read {self.labels_file}: {exc.strerror}") from None
        try:
            annotations = read_downward_api_file(self.annotations_file)
        except OSError as exc:
            raise ConfigError(
                "pod.annotations_file", f"cannot read {self.annotations_file}: {exc.strerror}"
            ) from None
        return PodIdentity(
            name=self.name, namespace=self.namespace, service_account=self.service_account,
            tenant=self.tenant, labels=labels, annotations=annotations,
            uid=self.uid, node_name=self.node_name, cluster_name=self.cluster_name,
            workload_kind=self.workload_kind, workload_name=self.workload_name,
        )
