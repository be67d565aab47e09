"""Who is talking: the pod the sidecar serves and the peer of one connection."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


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
