"""The kubelet's part for one injected container, played on this machine (no cluster runs here).

The chart is rendered by the real Helm engine and the pod injected by the real webhook code;
what a kubelet then does is done here, as Kubernetes documents it:

- volumes: ConfigMap and Secret volumes are written with the kubelet's atomic-writer layout
  (files in a ``..<timestamp>`` directory, a ``..data`` symlink to it, and one symlink per
  top-level entry), honouring ``items``; a missing ConfigMap or Secret keeps the pod in
  ContainerCreating (:class:`Pending`); downwardAPI files hold ``key="value"`` lines;
  emptyDir is an empty directory;
- env: ``value`` as is, ``fieldRef`` resolved from the pod object (name, namespace, uid, node,
  service account, a label or an annotation);
- then the container's ``command`` runs with exactly that environment.

Two rewrites make it runnable beside other tests, and the test says so where it matters: mount
paths become directories under a temp dir, and the sidecar's listeners bind port 0 on loopback
(the start line tells the ports; the app's endpoint is mapped to them).
"""

from __future__ import annotations

import base64
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.processes import SidecarProcess

#: the sidecar's listener variables and what replaces them (loopback, a free port)
LISTENER_ENV = {
    "SIDECAR_GRPC_ENDPOINT": "grpc",
    "SIDECAR_HTTP_ENDPOINT": "http",
    "SIDECAR_ADMIN_ENDPOINT": "admin",
}
VENV_BIN = Path(sys.executable).parent


class Pending(Exception):
    """The pod would stay in ContainerCreating: a volume's ConfigMap or Secret does not exist."""


@dataclass
class Cluster:
    """The objects the API server would hold: the chart's, and what the user created beside it."""

    objects: list[dict[str, Any]] = field(default_factory=list)

    def find(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        for obj in self.objects:
            meta = obj["metadata"]
            if obj["kind"] == kind and meta["name"] == name and meta.get("namespace") == namespace:
                return obj
        return None


def admitted(pod: dict[str, Any], namespace: str, *, suffix: str = "x2x9q", node: str = "node-a") -> dict[str, Any]:
    """The pod as it runs: the API server's name (from generateName) and uid, the scheduler's node."""
    pod = json.loads(json.dumps(pod))
    meta = pod["metadata"]
    meta.setdefault("name", meta.get("generateName", "pod-") + suffix)
    meta["namespace"] = namespace
    meta["uid"] = "7c1a3b9e-5d2f-4e8a-9b6c-0d1e2f3a4b5c"
    pod["spec"]["nodeName"] = node
    pod["spec"].setdefault("serviceAccountName", "default")
    return pod


def _field(pod: dict[str, Any], path: str) -> str:
    simple = {
        "metadata.name": pod["metadata"]["name"],
        "metadata.namespace": pod["metadata"]["namespace"],
        "metadata.uid": pod["metadata"]["uid"],
        "spec.nodeName": pod["spec"]["nodeName"],
        "spec.serviceAccountName": pod["spec"]["serviceAccountName"],
    }
    if path in simple:
        return str(simple[path])
    match = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if match:
        return str((pod["metadata"].get(match.group(1)) or {}).get(match.group(2), ""))
    raise NotImplementedError(f"fieldRef {path} is not one this kubelet knows")


def _downward_file(values: dict[str, str]) -> bytes:
    return "".join(f"{key}={json.dumps(value)}\n" for key, value in sorted(values.items())).encode()


def _atomic_write(target: Path, files: dict[str, bytes]) -> None:
    """The kubelet's AtomicWriter layout: ..<ts>/files, ..data -> ..<ts>, top-level symlinks."""
    stamp = target / "..2026_12_04_10_00_00.000000001"
    for relative, content in files.items():
        path = stamp / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    target.mkdir(parents=True, exist_ok=True)
    (target / "..data").symlink_to(stamp.name)
    for top in sorted({relative.split("/", 1)[0] for relative in files}):
        (target / top).symlink_to(f"..data/{top}")


def _volume_files(volume: dict[str, Any], pod: dict[str, Any], cluster: Cluster) -> dict[str, bytes] | None:
    namespace = pod["metadata"]["namespace"]
    if "configMap" in volume or "secret" in volume:
        secret = "secret" in volume
        source = volume["secret"] if secret else volume["configMap"]
        name = source["secretName"] if secret else source["name"]
        obj = cluster.find("Secret" if secret else "ConfigMap", namespace, name)
        if obj is None:
            if source.get("optional"):
                return {}
            kind = "secret" if secret else "configmap"
            raise Pending(f'MountVolume.SetUp failed for volume "{volume["name"]}": {kind} "{name}" not found')
        data = obj.get("data") or {}
        values = {k: base64.b64decode(v) if secret else v.encode() for k, v in data.items()}
        items = source.get("items")
        if not items:
            return values
        return {item["path"]: values[item["key"]] for item in items}
    if "downwardAPI" in volume:
        out = {}
        for item in volume["downwardAPI"]["items"]:
            path = item["fieldRef"]["fieldPath"]
            kind = {"metadata.labels": "labels", "metadata.annotations": "annotations"}.get(path)
            if kind is None:
                out[item["path"]] = _field(pod, path).encode()
            else:
                out[item["path"]] = _downward_file(pod["metadata"].get(kind) or {})
        return out
    if "emptyDir" in volume:
        return None
    raise NotImplementedError(f"volume {volume['name']}: a kind this kubelet does not project")


@dataclass
class Runtime:
    """What the kubelet gives one container: its command and env, its mounts under ``root``."""

    command: list[str]
    env: dict[str, str]
    root: Path
    #: the ports the injector chose for the listeners (the app's endpoint names them)
    injected_ports: dict[str, int]


def prepare(pod: dict[str, Any], container_name: str, cluster: Cluster, root: Path) -> Runtime:
    """Project the container's volumes under ``root`` and resolve its environment."""
    containers = pod["spec"].get("initContainers", []) + pod["spec"]["containers"]
    container = next(c for c in containers if c["name"] == container_name)
    volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
    mounts: dict[str, Path] = {}
    for mount in container.get("volumeMounts", []):
        local = root / mount["mountPath"].lstrip("/")
        files = _volume_files(volumes[mount["name"]], pod, cluster)
        if files is None:
            local.mkdir(parents=True, exist_ok=True)
        else:
            _atomic_write(local, files)
        mounts[mount["mountPath"]] = local

    def local_path(value: str) -> str:
        for mount_path, local in sorted(mounts.items(), key=lambda m: -len(m[0])):
            if value == mount_path or value.startswith(mount_path.rstrip("/") + "/"):
                return str(local) + value[len(mount_path.rstrip("/")):]
        return value

    env: dict[str, str] = {}
    injected_ports: dict[str, int] = {}
    for item in container.get("env", []):
        name = item["name"]
        if "value" in item:
            value = local_path(item["value"])
        else:
            ref = item["valueFrom"]
            if "fieldRef" not in ref:
                raise NotImplementedError(f"env {name}: only fieldRef is resolved here")
            value = _field(pod, ref["fieldRef"]["fieldPath"])
        if name in LISTENER_ENV:
            injected_ports[LISTENER_ENV[name]] = int(value.rsplit(":", 1)[1])
            value = "127.0.0.1:0"  # rewritten: loopback, a free port
        env[name] = value
    command = [local_path(part) for part in container["command"]]
    return Runtime(command, env, root, injected_ports)


class Process(SidecarProcess):
    """The container's command as a process: its ports from the start line, stdout to a file."""

    def __init__(self, runtime: Runtime) -> None:
        super().__init__({})
        # the image's PATH has the virtualenv's bin first: the command resolves as it does there
        self.env = {"PATH": f"{VENV_BIN}{os.pathsep}/usr/bin:/bin", "LANG": "C.UTF-8", **runtime.env}
        self.runtime = runtime
        self.stdout_path = runtime.root / "stdout.jsonl"

    async def start(self, timeout: float = 30.0) -> dict[str, int]:
        with open(self.stdout_path, "wb") as stdout:  # the child has its own copy once started
            return await self.launch(self.runtime.command, cwd=self.runtime.root, stdout=stdout, timeout=timeout)

    def stdout_lines(self) -> list[dict[str, Any]]:
        """The JSON lines the container has written whole: the last one may be read while it is
        still being written (no newline yet), and is left for the next look."""
        text = self.stdout_path.read_text(encoding="utf-8") if self.stdout_path.exists() else ""
        complete = text[: text.rfind("\n") + 1]
        return [json.loads(line) for line in complete.splitlines() if line.strip()]

    def peak_rss(self) -> int:
        """VmHWM of the running process, in bytes (what a memory limit is held against)."""
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text(encoding="utf-8").splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmHWM in /proc status")
