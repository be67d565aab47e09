"""Day one in a cluster, for every value documented in values.yaml and docs/kubernetes.md (issue 15).

Each case renders the chart with the real Helm engine (helm-python-sdk) and validates every
object; the webhook server serves the settings the chart rendered over HTTPS with the chart's own
certificate, and answers an AdmissionReview for a real Pod manifest (as a ReplicaSet creates it)
sent to the entry whose namespaceSelector picks the pod's namespace, verified with that entry's
caBundle as the API server does; `tests.day_one.kubelet` lays out the ConfigMap and Secret files as
the kubelet would and resolves the environment; the injected container's command then runs as
a process with exactly that environment. It must become ready through the injected probes, and
the app (the OpenTelemetry SDK, configured from the env the injector gave the app container)
sends card numbers that must arrive masked: in the debug exporter's output, or at an upstream
collector this test runs (with TLS and mTLS as the values ask).

No cluster runs here: where a cluster would differ, it is said so. The collector's Service name
is rewritten to this loopback upstream (its certificate is for localhost), and the sidecar's
listeners bind free loopback ports (port 0; the app's endpoint is mapped to them).

Values that do not reach the sidecar (the webhook's Deployment, monitoring, ...) still render,
validate and inject; a case whose sidecar (command, environment, files) is the same as one
already run reuses that run's result: one process per distinct sidecar.

Bundle cases: the platform team's bundle server is an aiohttp server on 127.0.0.1 (port 0; the
URL's in-cluster host is rewritten to it) that serves bundles built with ``opa build`` from the
chart's policies (signed with the key, algorithm, key id and scope the values name) and answers
401 without the bearer token; the verification key and the token are Secrets the user created.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import json
import re
import signal
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import helm_python
import pytest
import yaml
from aiohttp import web
from google.protobuf.json_format import MessageToDict
from grpclib.const import Status

from sidecar.rewrite import IMPLEMENTATION
from sidecar.webhook.config import load_webhook_config
from sidecar.webhook.inject import Scope, decide
from sidecar.webhook.server import running
from tests.bundles.helpers import PLATFORM_ROOTS, SAMPLING_ROOTS, BundleServer, Keys, build, split_set, whole_set
from tests.day_one import app
from tests.day_one.kubelet import Cluster, Pending, Process, admitted, prepare
from tests.helm.checks import leaf_paths, selects, validate_all, webhook_toml
from tests.helm.conftest import CHART_DIR, REPO, render_chart
from tests.tls.pki import PKI, make_pki
from tests.upstream import Answer, Upstream
from tests.webhook.conftest import admission_review, apply, assert_valid_pod, deployment_pod

#: the install line of docs/kubernetes.md: the namespaces where pods are injected get the policies
DOCS_NAMESPACES = {"policies": {"namespaces": ["shop", "payments"]}}
MTLS_SECRET = "otlp-client"
#: the bundle server's in-cluster address in the values (HTTPS where its CA is a Secret); the
#: test's server stands in for it
BUNDLE_HOST = "http://bundle-server.platform:8080"
BUNDLE_HOST_TLS = "https://bundle-server.platform:8443"
BUNDLE_TOKEN = "a-bearer-token-for-the-bundle-server"
#: a logs backend's in-cluster address (a second test upstream stands for it)
LOGS_BACKEND = "http://logs-backend.observability:4318"


@dataclass(frozen=True)
class Case:
    values: dict[str, Any]
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    scope: Scope = Scope.NAMESPACE
    namespace: str = "shop"
    #: the tenant the resources must be stamped with
    tenant: str = ""


CASES: dict[str, Case] = {
    "docs install": Case({
        "upstream": {"endpoint": "https://collector.observability:4317", "tls": {"secretName": MTLS_SECRET}},
        "clusterName": "prod-eu-1",
        **DOCS_NAMESPACES,
    }),
    "defaults": Case(DOCS_NAMESPACES),
    "pci scope": Case(DOCS_NAMESPACES, scope=Scope.PCI, namespace="payments"),
    "image and names": Case({
        **DOCS_NAMESPACES,
        "image": {"repository": "registry.example/otlp-sidecar", "tag": "0.1.0-rc1", "pullPolicy": "Always"},
        "imagePullSecrets": [{"name": "registry"}],
        "nameOverride": "telemetry",
    }),
    "full name": Case({**DOCS_NAMESPACES, "fullnameOverride": "otel-injector"}),
    "webhook deployment": Case({
        **DOCS_NAMESPACES,
        "webhook": {
            "replicas": 3, "port": 9443, "logLevel": "debug", "timeoutSeconds": 10, "failurePolicy": "Fail",
            "reinvocationPolicy": "Never", "podDisruptionBudget": {"enabled": True, "minAvailable": 2},
            "resources": {"requests": {"cpu": "100m", "memory": "96Mi"}, "limits": {"memory": "192Mi"}},
            "nodeSelector": {"kubernetes.io/os": "linux"},
            "tolerations": [{"key": "infra", "operator": "Exists", "effect": "NoSchedule"}],
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["system"]}]}]}}},
            "priorityClassName": "system-cluster-critical",
            "podAnnotations": {"example.com/team": "platform"},
            "tls": {"validityDays": 365},
        },
    }),
    "cert-manager": Case({
        **DOCS_NAMESPACES,
        "webhook": {"tls": {"certManager": {
            "enabled": True, "issuerRef": {"name": "corp-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"},
            "duration": "2160h", "renewBefore": "360h",
        }}},
    }),
    "container mode": Case({**DOCS_NAMESPACES, "injection": {"mode": "container"}}),
    "injection labels": Case({
        **DOCS_NAMESPACES,
        "injection": {
            "namespaceLabel": "telemetry.example/sidecar", "namespaceLabelValue": "on",
            "pciScopeLabel": "compliance.example/pci", "pciScopeLabelValue": "yes",
            "excludedNamespaces": ["kube-system", "kube-public", "kube-node-lease", "batch"],
        },
    }),
    "app over gRPC": Case({**DOCS_NAMESPACES, "injection": {"appEndpoint": "http://localhost:4318",
                                                              "appProtocol": "grpc"}}),
    "app protocol annotation": Case(DOCS_NAMESPACES, annotations={"otlp-sidecar.io/protocol": "grpc"}),
    "sidecar settings": Case({
        **DOCS_NAMESPACES,
        "sidecar": {
            "image": "registry.example/otlp-sidecar:debug",
            "resources": {"requests": {"cpu": "20m", "memory": "48Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}},
            "startupTimeoutSeconds": 30,
            "shutdownGraceSeconds": 15,
            "probes": {"startupPath": "/health", "readinessPath": "/health", "livenessPath": "/health"},
            "logLevel": "debug",
            "extraEnv": {"SIDECAR_LOG_FORMAT": "json"},
        },
    }),
    "upstream gRPC mTLS, own key names": Case({
        **DOCS_NAMESPACES,
        "upstream": {"endpoint": "https://collector.observability:4317", "protocol": "grpc",
                     "tls": {"secretName": MTLS_SECRET, "caKey": "root.pem", "certKey": "client.pem",
                             "keyKey": "client-key.pem"}},
    }),
    "upstream http plaintext": Case({
        **DOCS_NAMESPACES,
        "upstream": {"endpoint": "http://collector.observability:4318", "protocol": "http/protobuf"},
    }),
    # the logs to a backend of their own, by the standard variable the chart passes on: a second
    # upstream here; the sidecar gives it its own circuit and share of the queue
    "logs to their own backend": Case({
        **DOCS_NAMESPACES,
        "upstream": {"endpoint": "http://collector.observability:4318", "protocol": "http/protobuf"},
        "sidecar": {"extraEnv": {"OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": f"{LOGS_BACKEND}/v1/logs"}},
    }),
    # the export queue on disk, in an emptyDir: the sidecar container is killed (a crash, an OOM
    # kill) while the upstream is down, and the restarted container sends what the first accepted
    "disk queue across a container restart": Case({
        **DOCS_NAMESPACES,
        "upstream": {"endpoint": "http://collector.observability:4318", "protocol": "http/protobuf"},
        "sidecar": {"diskQueue": {"enabled": True, "sizeLimit": "256Mi"}},
    }),
    "upstream host:port insecure": Case({
        **DOCS_NAMESPACES, "upstream": {"endpoint": "collector.observability:4317", "insecure": True},
    }),
    "upstream host:port TLS": Case({
        **DOCS_NAMESPACES,
        "upstream": {"endpoint": "collector.observability:4317", "tls": {"secretName": MTLS_SECRET}},
    }),
    "upstream https stays TLS with insecure": Case({
        **DOCS_NAMESPACES,
        "upstream": {"endpoint": "https://collector.observability:4318", "protocol": "http/protobuf",
                     "insecure": True, "tls": {"secretName": MTLS_SECRET}},
    }),
    "own hash key": Case({**DOCS_NAMESPACES, "hashKey": {"secretName": "corp-hmac", "key": "key"}}),
    "tenant label": Case({**DOCS_NAMESPACES, "tenant": {"label": "team"}}, labels={"team": "payments"},
                         tenant="payments"),
    "tenant annotation": Case({**DOCS_NAMESPACES, "tenant": {"label": "", "annotation": "acme.io/tenant"}},
                              annotations={"acme.io/tenant": "acme"}, tenant="acme"),
    "default tenant label": Case(DOCS_NAMESPACES, labels={"otlp-sidecar.io/tenant": "shop-team"}, tenant="shop-team"),
    "sampling as --set gives it": Case({**DOCS_NAMESPACES, "sampling": {"ratio": "0.2"}}),
    "policies disabled": Case({**DOCS_NAMESPACES, "policies": {"enabled": False, "namespaces": ["shop"]}}),
    "own default set": Case({
        **DOCS_NAMESPACES,
        "policies": {"enabled": False, "namespaces": ["shop", "payments"], "defaultSet": "corp",
                     "extraSets": {"corp": {"configMap": "corp-policies"}}},
    }, scope=Scope.PCI, namespace="payments"),
    "extra set by annotation": Case({
        "policies": {"namespaces": ["shop"], "extraSets": {"strict": {"configMap": "corp-policies"}}},
    }, annotations={"otlp-sidecar.io/policy": "strict"}),
    "monitoring": Case({
        **DOCS_NAMESPACES,
        "metrics": {
            "serviceMonitor": {"enabled": True, "interval": "15s", "labels": {"release": "prom"}},
            "podMonitor": {"enabled": True, "interval": "15s", "labels": {"release": "prom"}},
            "prometheusRule": {"enabled": True, "labels": {"release": "prom"}, "refusalRatio": 0.1,
                               "exportFailureRatio": 0.02, "queueFullRatio": 0.9, "loopLagRatio": 0.1,
                               "certExpiryDays": 14,
                               "collectorMetricNames": True},
            "grafanaDashboard": {"enabled": True, "labels": {"grafana_dashboard": "1"}, "namespace": "grafana"},
        },
    }),
    # every rule and tunable from a signed bundle, no ConfigMap: PCI-scope pods are admitted (the
    # bundle carries the policies; the PCI probe checks them at start). The bundle server is HTTPS
    # with a certificate from the platform team's own CA, given as a Secret
    "signed policy bundle with a token, over HTTPS with a private CA": Case({
        "policies": {"enabled": False, "namespaces": ["shop", "payments"]},
        "bundles": {
            "sources": [{"name": "platform", "url": f"{BUNDLE_HOST_TLS}/bundles/platform.tar.gz"}],
            "pollingMinDelay": "100ms", "pollingMaxDelay": "300ms",
            "verification": {"secretName": "otlp-bundle-key", "key": "public.pem", "algorithm": "PS256",
                             "keyId": "platform-2026", "scope": "otlp-sidecar"},
            "token": {"secretName": "bundle-server-token", "key": "bearer"},
            "ca": {"secretName": "platform-ca", "key": "root.pem"},
        },
    }, scope=Scope.PCI, namespace="payments"),
    # the rules stay in the chart's ConfigMap (its .manifest owns localRoots); the tenant data
    # comes from a signed bundle. The ConfigMap itself is not signed: it is the pod's own mount,
    # trusted as policies.enabled alone is, while every bundle pulled must carry a signature
    "tenant bundle beside the ConfigMap": Case({
        **DOCS_NAMESPACES,
        "bundles": {
            "sources": [{"name": "tenants", "url": f"{BUNDLE_HOST}/bundles/tenants.tar.gz"}],
            "pollingMinDelay": "0.2s", "pollingMaxDelay": "0.5s",
            "localRoots": [*PLATFORM_ROOTS, *SAMPLING_ROOTS],
            "verification": {"secretName": "otlp-bundle-key"},
        },
    }),
    "network policy": Case({**DOCS_NAMESPACES, "networkPolicy": {"enabled": True,
                                                                 "from": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]}}),
}

#: fingerprint of a sidecar (command, env, files) -> the case that ran it and passed
_PASSED: dict[str, str] = {}
#: case -> peak RSS (VmHWM) of its sidecar process
_PEAKS: dict[str, int] = {}


def _dotted(values: dict[str, Any], prefix: str = "") -> set[str]:
    out = set()
    for key, value in values.items():
        path = f"{prefix}{key}"
        out.add(path)
        if isinstance(value, dict):
            out |= _dotted(value, path + ".")
    return out


def test_the_table_covers_every_documented_value() -> None:
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text(encoding="utf-8"))
    covered = set().union(*(_dotted(case.values) for case in CASES.values()))
    missing = [path for path in leaf_paths(values) if path not in covered]
    assert missing == [], f"documented values no day-one case sets: {missing}"
    # and the pod annotations docs/kubernetes.md documents
    doc = (REPO / "docs" / "kubernetes.md").read_text(encoding="utf-8")
    used = set().union(*(case.annotations for case in CASES.values()))
    for annotation in set(re.findall(r"otlp-sidecar\.io/(?:protocol|policy)", doc)):
        assert annotation in used, annotation


def _policy_files() -> dict[str, str]:
    root = CHART_DIR / "policies"
    return {p.relative_to(root).as_posix(): p.read_text(encoding="utf-8") for p in sorted(root.rglob("*"))
            if p.is_file()}


class TokenBundleServer(BundleServer):
    """The bundle server; with ``token``, it answers 401 to a request without that bearer token."""

    def __init__(self, token: str = "") -> None:
        super().__init__()
        self.token = token
        self.unauthorized = 0

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        if self.token and request.headers.get("Authorization") != f"Bearer {self.token}":
            self.unauthorized += 1
            return web.Response(status=401, text="a bearer token is required")
        return await super()._serve(request)


@dataclass
class Published:
    """The platform team's bundles: the server, the signing keys, each source's revision."""

    server: TokenBundleServer
    base: str
    keys: Keys
    revisions: dict[str, str]
    #: the CA of the server's certificate (HTTPS), for the Secret the user creates
    ca_cert: str = ""


async def publish_bundles(case: Case, root: Path) -> Published | None:
    """Build (``opa build``, signed as the values ask) and serve a bundle for every bundles.sources entry:
    ``tenants`` is the chart's tenant data (the split of tests/bundles), any other the whole policy set."""
    bundles = case.values.get("bundles", {})
    if not bundles.get("sources"):
        return None
    keys = Keys(root / "keys")
    verification = bundles.get("verification", {})
    algorithm = verification.get("algorithm", "RS256")
    extra: list[str] = []
    if verification.get("secretName"):
        private = keys.ec_private if algorithm.startswith("ES") else keys.rsa_private
        extra = ["--signing-key", str(private), "--signing-alg", algorithm]
        claims = {k: verification[v] for k, v in (("keyid", "keyId"), ("scope", "scope")) if verification.get(v)}
        if claims:
            (root / "claims.json").write_text(json.dumps(claims), encoding="utf-8")
            extra += ["--claims-file", str(root / "claims.json")]
    server = TokenBundleServer(BUNDLE_TOKEN if bundles.get("token", {}).get("secretName") else "")
    revisions = {}
    for source in bundles["sources"]:
        name = source["name"]
        if name == "tenants":
            folder, revision = split_set(root / "split", revision="day-one")["tenants"], "tenants-day-one"
        else:
            folder, revision = whole_set(root / name, f"{name}-day-one"), f"{name}-day-one"
        raw = await asyncio.to_thread(build, folder, root / f"{name}.tar.gz", *extra)
        server.put(source["url"].rsplit("/", 1)[1], raw.read_bytes())
        revisions[name] = revision
    context, ca_cert = None, ""
    if bundles.get("ca", {}).get("secretName"):  # HTTPS, its certificate from the team's own CA
        pki = make_pki(root, "bundle-server")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(pki.server_cert, pki.server_key)
        ca_cert = pki.ca_cert
    base = (await server.start(context)).removesuffix("/bundles")
    return Published(server, base, keys, revisions, ca_cert)


def user_objects(case: Case, pki: PKI | None, published: Published | None = None) -> list[dict[str, Any]]:
    """What the user created beside the chart, as docs/kubernetes.md and docs/bundles.md tell them to."""
    objects: list[dict[str, Any]] = []
    values = case.values
    bundles = values.get("bundles", {})
    verification = bundles.get("verification", {})
    if verification.get("secretName") and published is not None:
        algorithm = verification.get("algorithm", "RS256")
        public = published.keys.ec_public if algorithm.startswith("ES") else published.keys.rsa_public
        objects.append(_object("Secret", verification["secretName"], case.namespace,
                               {verification.get("key", "key.pem"): base64.b64encode(public.read_bytes()).decode()}))
    ca = bundles.get("ca", {})
    if ca.get("secretName") and published is not None:
        pem = base64.b64encode(Path(published.ca_cert).read_bytes()).decode()
        objects.append(_object("Secret", ca["secretName"], case.namespace, {ca.get("key", "ca.crt"): pem}))
    token = bundles.get("token", {})
    if token.get("secretName"):
        objects.append(_object("Secret", token["secretName"], case.namespace,
                               {token.get("key", "token"): base64.b64encode(BUNDLE_TOKEN.encode()).decode()}))
    tls = values.get("upstream", {}).get("tls", {})
    if tls.get("secretName") and pki is not None:
        files = {tls.get("caKey", "ca.crt"): pki.ca_cert, tls.get("certKey", "tls.crt"): pki.client_cert,
                 tls.get("keyKey", "tls.key"): pki.client_key}
        data = {k: base64.b64encode(Path(v).read_bytes()).decode() for k, v in files.items()}
        objects.append(_object("Secret", tls["secretName"], case.namespace, data))
    if values.get("hashKey", {}).get("secretName"):
        key = base64.b64encode(b"a corporate hmac key of 32 bytes!").decode()
        objects.append(_object("Secret", values["hashKey"]["secretName"], case.namespace,
                               {values["hashKey"]["key"]: key}))
    for spec in values.get("policies", {}).get("extraSets", {}).values():
        # the user's own ConfigMap: here the chart's policies, flattened as the chart does
        data = {path.replace("/", "__"): text for path, text in _policy_files().items()}
        objects.append(_object("ConfigMap", spec["configMap"], case.namespace, data))
    return objects


async def _admission(objects: Any, case: Case, pod: dict[str, Any], root: Path) -> list[dict[str, Any]]:
    """The JSONPatch the webhook answers for ``pod``, asked the way the API server asks.

    The webhook serves the chart's webhook.toml with the chart's TLS Secret (laid out as its
    Deployment mounts them); the entry is the one whose namespaceSelector selects the pod's
    namespace (labelled as the case's scope says); the call goes to that entry's path and
    verifies the server with the entry's caBundle, for the Service's DNS name.
    """
    root.mkdir(parents=True)
    settings = root / "webhook.toml"
    settings.write_text(webhook_toml(objects), encoding="utf-8")
    config = load_webhook_config(settings, env={})
    values = case.values.get("injection", {})
    if case.scope is Scope.PCI:
        label = values.get("pciScopeLabel", "otlp-sidecar.io/pci-scope"), values.get("pciScopeLabelValue", "true")
    else:
        label = values.get("namespaceLabel", "otlp-sidecar.io/inject"), values.get("namespaceLabelValue", "enabled")
    labels = {label[0]: str(label[1])}
    labels["kubernetes.io/metadata.name"] = case.namespace
    entries = [h for h in objects.one("MutatingWebhookConfiguration")["webhooks"]
               if selects(h["namespaceSelector"], labels) and selects(h["objectSelector"], pod["metadata"]["labels"])]
    assert len(entries) == 1, f"namespace labels {labels} reach {len(entries)} webhook entries"
    entry = entries[0]
    service = entry["clientConfig"]["service"]
    secrets = [s for s in objects.of_kind("Secret") if s["type"] == "kubernetes.io/tls"]
    if secrets:  # the chart's own CA and serving certificate
        for key in ("tls.crt", "tls.key"):
            (root / key).write_bytes(base64.b64decode(secrets[0]["data"][key]))
        ca = base64.b64decode(entry["clientConfig"]["caBundle"]).decode()
        cert, key = str(root / "tls.crt"), str(root / "tls.key")
    else:  # cert-manager issues them in a cluster: a CA of this test stands in
        pki = make_pki(root)
        cert, key = pki.issue_server("webhook", dns_names=(f"{service['name']}.{service['namespace']}.svc",))
        ca = Path(pki.ca_cert).read_text(encoding="utf-8")
    server = dataclasses.replace(config.server, listen="127.0.0.1:0", cert_file=cert, key_file=key)
    client = ssl.create_default_context(cadata=ca)
    review = admission_review(pod, namespace=case.namespace)
    async with running(dataclasses.replace(config, server=server)) as (_, port):
        async with aiohttp.ClientSession() as session, session.post(
            f"https://127.0.0.1:{port}{service['path']}", json=review, ssl=client,
            server_hostname=f"{service['name']}.{service['namespace']}.svc",
        ) as response:
            assert response.status == 200
            answer = (await response.json())["response"]
    assert answer["uid"] == review["request"]["uid"]
    assert answer["allowed"] is True and answer.get("patchType") == "JSONPatch", answer
    return json.loads(base64.b64decode(answer["patch"]))


def _object(kind: str, name: str, namespace: str, data: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": kind, "metadata": {"name": name, "namespace": namespace}, "data": data}


def _fingerprint(runtime: Any, app_env: dict[str, str], tenant: str) -> str:
    digest = hashlib.sha256()
    root = str(runtime.root)
    env = {k: v.replace(root, "<root>") for k, v in runtime.env.items()}
    digest.update(json.dumps([runtime.command[1:], env, app_env, tenant], sort_keys=True).encode())
    for path in sorted(runtime.root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            content = path.read_bytes()
            if "hash-key" in path.parts:
                content = b"<random key>"
            digest.update(path.relative_to(runtime.root).as_posix().encode() + b"\0" + content)
    return digest.hexdigest()


async def _ready(port: int, container: dict[str, Any], timeout: float) -> None:
    """The kubelet's probes: startup until it passes, then readiness and liveness."""
    probes = [container[p]["httpGet"]["path"] for p in ("startupProbe", "readinessProbe", "livenessProbe")]
    async with aiohttp.ClientSession() as session:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        for path in probes:
            while True:
                async with session.get(f"http://127.0.0.1:{port}{path}") as response:
                    if response.status == 200:
                        break
                    body = await response.text()
                assert loop.time() < deadline, f"probe {path}: {response.status} {body}"
                await asyncio.sleep(0.2)


def _upstream_tls(pki: PKI, mutual: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    if mutual:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(pki.ca_cert)
    return context


def _resources(request: dict[str, Any]) -> list[dict[str, str]]:
    out = []
    for key in ("resourceSpans", "resourceLogs", "resourceMetrics"):
        for entry in request.get(key, []):
            attributes = entry.get("resource", {}).get("attributes", [])
            out.append({a["key"]: a["value"].get("stringValue", "") for a in attributes})
    return out


@pytest.mark.parametrize("name", list(CASES))
async def test_day_one(name: str, tmp_path: Path) -> None:
    case = CASES[name]
    with helm_python.Chart.load(CHART_DIR) as chart:
        objects = render_chart(chart, case.values)
    validate_all(objects)

    # the webhook, serving the settings the chart rendered, asked as the API server asks it
    pod = deployment_pod(**case.annotations)
    pod["metadata"]["labels"].update(case.labels)
    patch = await _admission(objects, case, pod, tmp_path / "webhook")
    injected = admitted(apply(pod, patch), case.namespace)
    assert_valid_pod(injected)

    pki = make_pki(tmp_path) if case.values.get("upstream", {}).get("endpoint") else None
    published = await publish_bundles(case, tmp_path / "bundles")
    try:
        await _run(name, case, injected, objects, pki, published, tmp_path)
    finally:
        if published is not None:
            await published.server.stop()


async def _run(name: str, case: Case, injected: dict[str, Any], objects: Any, pki: PKI | None,
               published: Published | None, tmp_path: Path) -> None:
    upstream_values = case.values.get("upstream", {})
    cluster = Cluster([*objects, *user_objects(case, pki, published)])
    try:
        runtime = prepare(injected, "otlp-sidecar", cluster, tmp_path / "node")
    except Pending as exc:  # a pod a cluster would leave in ContainerCreating
        raise AssertionError(f"the pod would not start: {exc}") from None
    if published is not None:  # the bundle server's Service is the test's server
        sources = case.values["bundles"]["sources"]
        assert runtime.env["SIDECAR_POLICY_BUNDLES"] == ",".join(f"{s['name']}={s['url']}" for s in sources)
        runtime.env["SIDECAR_POLICY_BUNDLES"] = re.sub(
            r"https?://bundle-server\.platform:\d+", published.base, runtime.env["SIDECAR_POLICY_BUNDLES"])
        # a bundle server on HTTPS is only trusted through the CA Secret the user created
        assert published.base.startswith("https://") == ("SIDECAR_POLICY_BUNDLE_CA_FILE" in runtime.env)
    app_container = next(c for c in injected["spec"]["containers"] if c["name"] == "app")
    app_env = {e["name"]: e["value"] for e in app_container["env"] if "value" in e}
    fingerprint = _fingerprint(runtime, app_env, case.tenant)
    if fingerprint in _PASSED:
        # the same sidecar, files and app env as a case already run: its run stands for this value
        return

    # the collector's Service is this loopback upstream; TLS as the OTLP spec reads the endpoint
    upstream: Upstream | None = None
    endpoint = runtime.env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")
    if endpoint:
        assert pki is not None
        scheme = endpoint.split("://", 1)[0] if "://" in endpoint else ""
        insecure = runtime.env.get("OTEL_EXPORTER_OTLP_INSECURE") == "true"
        tls = scheme == "https" or (not scheme and not insecure)
        mutual = bool(upstream_values.get("tls", {}).get("secretName"))
        upstream = Upstream()
        await upstream.start(ssl=_upstream_tls(pki, mutual) if tls else None)
        protocol = runtime.env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        port = upstream.grpc_port if protocol == "grpc" else upstream.http_port
        runtime.env["OTEL_EXPORTER_OTLP_ENDPOINT"] = (f"{scheme}://" if scheme else "") + f"localhost:{port}"
    logs_backend: Upstream | None = None
    if runtime.env.get("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "").startswith(LOGS_BACKEND):
        logs_backend = Upstream()
        await logs_backend.start()
        runtime.env["OTEL_EXPORTER_OTLP_LOGS_ENDPOINT"] = runtime.env["OTEL_EXPORTER_OTLP_LOGS_ENDPOINT"].replace(
            LOGS_BACKEND, f"http://localhost:{logs_backend.http_port}")

    process = Process(runtime)
    try:
        ports = await process.start()
        sidecar = next(c for c in injected["spec"].get("initContainers", []) + injected["spec"]["containers"]
                       if c["name"] == "otlp-sidecar")
        await _ready(ports["admin"], sidecar, timeout=min(30.0, float(sidecar["startupProbe"]["failureThreshold"])))

        # the app, as the injector configured it
        protocol = app_env["OTEL_EXPORTER_OTLP_PROTOCOL"]
        app_endpoint = app_env["OTEL_EXPORTER_OTLP_ENDPOINT"]
        by_port = {runtime.injected_ports["grpc"]: ports["grpc"], runtime.injected_ports["http"]: ports["http"]}
        injected_port = int(app_endpoint.rsplit(":", 1)[1].split("/", 1)[0])
        assert injected_port == runtime.injected_ports["grpc" if protocol == "grpc" else "http"], (
            f"the app's endpoint {app_endpoint} is not the sidecar's {protocol} listener")
        local_endpoint = re.sub(r"//[^/]+", f"//127.0.0.1:{by_port[injected_port]}", app_endpoint, count=1)
        corpus = app.corpus_cases() if name == "defaults" else []
        disk_queue = runtime.env.get("SIDECAR_EXPORTER_DISK_QUEUE_DIR")
        assert (disk_queue is not None) == case.values.get("sidecar", {}).get("diskQueue", {}).get("enabled", False)
        if disk_queue is not None:  # the upstream is down while the app sends
            assert upstream is not None
            upstream.default = Answer(http_status=503, grpc_status=Status.UNAVAILABLE)
        await asyncio.to_thread(app.send, local_endpoint, protocol, corpus)

        if disk_queue is not None:
            process = await _container_restart(process, runtime, upstream, disk_queue, sidecar)
        requests = await _output(process, upstream, logs_backend)
        if published is not None:
            await _bundles_live(case, published, ports["admin"])
        peak = process.peak_rss()
        exit_code = await process.stop()
    finally:
        if process.proc is not None and process.proc.returncode is None:
            await process.stop()
        if upstream is not None:
            await upstream.stop()
        if logs_backend is not None:
            await logs_backend.stop()

    text = json.dumps(requests)
    pans = list(app.CARDS) + [pan for c in corpus for pan in c["pans"]]
    assert app.surviving(text, pans) == [], "card numbers reached the upstream unmasked"
    assert app.surviving(process.stderr, pans) == [], "card numbers in the sidecar's log"
    assert text.count(app.MARKER) >= 3  # masked, not dropped: the payment span, log and metric arrived
    assert "POST /pay?card=" in text and "1111" in text  # the last four digits may remain
    resources = [r for request in requests for r in _resources(request)]
    assert resources
    for attributes in resources:
        # the pod's identity from the downward API and the workload the injector derived
        assert attributes.get("k8s.pod.uid") == injected["metadata"]["uid"]
        assert attributes.get("k8s.node.name") == "node-a"
        assert attributes.get("k8s.namespace.name") == case.namespace
        assert attributes.get("k8s.pod.name") == injected["metadata"]["name"]
        assert attributes.get("k8s.deployment.name") == "checkout"
        if case.values.get("clusterName"):
            assert attributes.get("k8s.cluster.name") == case.values["clusterName"]
        if case.tenant:
            assert attributes.get("tenant.id") == case.tenant
    for case_ in corpus:  # every corpus item arrived (masked), each where it was put
        if case_["where"] not in ("span.name", "log.body") and not case_["where"].startswith("metric."):
            assert f"corpus {case_['id']}" in text, case_
    metric_items = sum(1 for c in corpus if c["where"].startswith("metric."))
    assert text.count('"detail"') >= metric_items

    start_line = next(line for line in process.stderr_lines if " up: " in line)
    assert "mode enforce" in start_line
    if IMPLEMENTATION == "cython":
        assert "rewriter C (Cython)" in start_line
    if upstream is not None:
        assert "localhost:" in start_line and ("plaintext" in start_line) == (not tls)
    if case.values.get("upstream", {}).get("insecure") and endpoint.startswith("https://"):
        assert "ignored for https://localhost" in process.stderr  # and it stayed TLS: the upstream took it
    if logs_backend is not None:  # each signal where the user sent it, and nowhere else
        assert upstream is not None and logs_backend.log_records() and upstream.log_records() == []
        assert upstream.spans() and upstream.metrics() and not logs_backend.spans() and not logs_backend.metrics()
        assert "2 upstreams, each with its own circuit" in process.stderr and "traces+metrics; logs" in process.stderr
    assert exit_code == 0, process.stderr
    assert "Traceback" not in process.stderr
    assert "no setting reads it" not in process.stderr  # every variable the injector gives is read
    # it fits in the memory limit the chart gives it (the kubelet would OOM-kill it otherwise)
    limit = _bytes(sidecar["resources"]["limits"]["memory"])
    assert peak < limit, f"peak RSS {peak / 2**20:.0f} MiB over the limit {limit / 2**20:.0f} MiB"
    _PASSED[fingerprint] = name
    _PEAKS[name] = peak


async def _container_restart(process: Process, runtime: Any, upstream: Upstream | None, queue: str,
                             container: dict[str, Any]) -> Process:
    """The container is killed (SIGKILL: a crash, an OOM kill) while the upstream answers 503; the
    kubelet starts it again with the same emptyDir, and the upstream comes back."""
    assert upstream is not None and upstream.received == []
    assert queue.startswith(str(runtime.root)), queue  # the emptyDir, not the read-only root
    max_bytes = int(runtime.env["SIDECAR_EXPORTER_DISK_QUEUE_MAX_BYTES"])
    assert max_bytes == int(0.9 * _bytes(CASES["disk queue across a container restart"].values["sidecar"]
                                         ["diskQueue"]["sizeLimit"]))
    async with asyncio.timeout(10):
        while upstream.attempts == 0:  # what the app sent was accepted and tried
            await asyncio.sleep(0.05)
    await process.stop(signal.SIGKILL)
    assert sum(f.stat().st_size for f in Path(queue).rglob("segment-*.log")) > 0
    upstream.default = Answer()
    restarted = Process(runtime)
    ports = await restarted.start()
    await _ready(ports["admin"], container, timeout=30.0)
    assert "disk queue: replaying" in restarted.stderr
    return restarted


async def _bundles_live(case: Case, published: Published, admin: int, timeout: float = 10.0) -> None:
    """What a user checks: /policy names each bundle's revision, signed; the sidecar keeps polling
    (answered 304) with the token."""
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{admin}/policy") as response:
        status = await response.json()
    live = {b["name"]: b for b in status["bundles"]}
    signed = bool(case.values["bundles"].get("verification", {}).get("secretName"))
    for bundle, revision in published.revisions.items():
        assert live[bundle]["revision"] == revision and live[bundle]["signed"] is signed, live[bundle]
        assert live[bundle]["last_error"] == "", live[bundle]
    if case.values["bundles"].get("localRoots"):  # the ConfigMap beside them, its .manifest from the chart
        assert live["local"]["revision"].startswith("chart-"), live
        assert live["local"]["last_error"] == "" and live["local"]["signed"] is False, live["local"]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while published.server.not_modified < 2:
        assert loop.time() < deadline, f"no poll answered 304 in {timeout} s ({published.server.requests} requests)"
        await asyncio.sleep(0.1)
    assert published.server.unauthorized == 0, "a poll came without the token"


def _bytes(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    return int(quantity[:-2]) * units[quantity[-2:]] if quantity[-2:] in units else int(quantity)


@pytest.fixture(scope="module", autouse=True)
def _summary() -> Any:
    yield
    if _PEAKS:
        print(f"\nday one: {len(CASES)} cases, {len(_PEAKS)} sidecar processes, peak RSS "
              f"{min(_PEAKS.values()) / 2**20:.0f}-{max(_PEAKS.values()) / 2**20:.0f} MiB")


def test_a_namespace_not_listed_keeps_its_pods_pending_not_unprotected(tmp_path: Path) -> None:
    """docs/kubernetes.md: list every injected namespace in policies.namespaces; one that is not
    gets no ConfigMap or hash key there, and the kubelet leaves the pod in ContainerCreating."""
    with helm_python.Chart.load(CHART_DIR) as chart:
        objects = render_chart(chart, {})
    settings = tmp_path / "webhook.toml"
    settings.write_text(webhook_toml(objects), encoding="utf-8")
    pod = deployment_pod()
    decision = decide(pod, "shop", Scope.NAMESPACE, load_webhook_config(settings, env={}))
    injected = admitted(apply(pod, decision.patch), "shop")
    with pytest.raises(Pending, match=r'(configmap "obs-otlp-sidecar-policies"|secret "obs-otlp-sidecar-hash-key") '
                                      r"not found"):
        prepare(injected, "otlp-sidecar", Cluster(list(objects)), tmp_path / "node")


async def _output(process: Process, upstream: Upstream | None, logs_backend: Upstream | None = None,
                  timeout: float = 15.0) -> list[dict[str, Any]]:
    """The OTLP requests that left the sidecar (as OTLP/JSON; to the upstream, and the logs
    backend of their own if there is one), once the app's span, log and metric are there."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        if upstream is None:
            requests = [line["request"] for line in process.stdout_lines()]
        else:
            requests = [MessageToDict(r.message) for u in (upstream, logs_backend) if u for r in u.received]
        text = json.dumps(requests)
        if text.count(app.MARKER) >= 3:  # the span, the log record and the data point
            return requests
        assert loop.time() < deadline, f"the app's data did not arrive; sidecar log:\n{process.stderr}"
        await asyncio.sleep(0.1)
