"""Issue 15 in the chart: the defaults start, `--set` values pass the schema, no PCI pod without policies."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import helm_python
import pytest

from sidecar.configkit import ConfigError
from sidecar.webhook.config import load_webhook_config
from sidecar.webhook.inject import Refused, Scope, decide
from tests.helm.checks import validate_all, webhook_toml
from tests.helm.conftest import CHART_DIR, NAMESPACE, RELEASE, chart_answering_lookup, render_chart
from tests.webhook.conftest import apply, assert_valid_pod, deployment_pod, env_of, sidecar_of

HASH_SECRET = f"{RELEASE}-otlp-sidecar-hash-key"


def hash_secrets(objects: Any) -> list[dict[str, Any]]:
    return [s for s in objects.of_kind("Secret") if s["metadata"]["name"] == HASH_SECRET]


def injected_with(objects: Any, tmp_path: Path, pod: dict[str, Any] | None = None,
                  scope: Scope = Scope.NAMESPACE, namespace: str = "shop") -> dict[str, Any]:
    path = tmp_path / "webhook.toml"
    path.write_text(webhook_toml(objects), encoding="utf-8")
    config = load_webhook_config(path, env={})
    pod = pod or deployment_pod()
    decision = decide(pod, namespace, scope, config)
    assert decision.inject, decision.reason
    return apply(pod, decision.patch)


def test_the_defaults_give_every_injected_namespace_a_random_hash_key(render: Any, tmp_path: Path) -> None:
    objects = render({"policies": {"namespaces": ["shop", "payments"]}})
    validate_all(objects)
    secrets = hash_secrets(objects)
    assert sorted(s["metadata"]["namespace"] for s in secrets) == sorted([NAMESPACE, "shop", "payments"])
    keys = {s["data"]["hmac.key"] for s in secrets}
    assert len(keys) == 1, "one key for every namespace: hashes join across them"
    key = base64.b64decode(keys.pop())
    assert len(key) >= 32 and key.isalnum()

    # the injected pod mounts that Secret and points the sidecar at the file
    pod = injected_with(objects, tmp_path)
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["otlp-sidecar-hash-key"]["secret"]["secretName"] == HASH_SECRET
    assert env_of(sidecar_of(pod))["SIDECAR_POLICY_HASH_KEY_FILE"] == "/etc/otlp-sidecar/hash-key/hmac.key"

    # a new install makes a new key; the user's own Secret means none is made
    assert hash_secrets(render())[0]["data"] != hash_secrets(render())[0]["data"]
    own = render({"hashKey": {"secretName": "corp-hmac", "key": "key"}})
    assert hash_secrets(own) == []
    assert env_of(sidecar_of(injected_with(own, tmp_path)))["SIDECAR_POLICY_HASH_KEY_FILE"].endswith("/key")


def test_an_upgrade_keeps_the_hash_key(tmp_path: Path) -> None:
    # offline rendering answers `lookup` with nothing; as in test_tls, a copy of the chart has
    # its lookup replaced by what the cluster would answer (from .Values here)
    chart_copy = chart_answering_lookup(
        tmp_path, "hash-key-secret.yaml", 'lookup "v1" "Secret" . $name', "index $.Values.testExisting .",
        "testExisting",
    )

    earlier = base64.b64encode(b"k" * 64).decode()
    existing = {"shop": {"data": {"hmac.key": earlier}}}  # found in one namespace only
    values = {"policies": {"namespaces": ["shop", "payments"]}, "testExisting": existing}
    with helm_python.Chart.load(chart_copy) as chart:
        upgraded = render_chart(chart, values, is_upgrade=True)
        fresh = render_chart(chart, {**values, "testExisting": {}})
    assert {s["data"]["hmac.key"] for s in hash_secrets(upgraded)} == {earlier}
    assert len(hash_secrets(upgraded)) == 3  # and the namespace added since gets the same key
    assert {s["data"]["hmac.key"] for s in hash_secrets(fresh)} != {earlier}


def helm_set(*assignments: str) -> dict[str, Any]:
    """Values as `helm --set a.b=v` builds them: Helm's strvals types a bare value as an integer
    (no leading zero), true/false, null, or else a string ("0.2" stays a string); `{a,b}` is a list."""
    values: dict[str, Any] = {}
    for assignment in assignments:
        path, _, raw = assignment.partition("=")
        value: Any
        if raw.startswith("{") and raw.endswith("}"):
            value = [item for item in raw[1:-1].split(",") if item]
        elif raw in ("true", "false"):
            value = raw == "true"
        elif raw == "null":
            value = None
        elif raw == "0" or (raw.lstrip("-").isdigit() and not raw.lstrip("-").startswith("0")):
            value = int(raw)
        else:
            value = raw
        *parents, leaf = path.split(".")
        target = values
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = value
    return values


def test_the_docs_install_line_and_other_set_values_render(render: Any, tmp_path: Path) -> None:
    values = helm_set(
        "upstream.endpoint=https://collector.observability:4317", "upstream.tls.secretName=otlp-client",
        "policies.namespaces={shop,payments}", "clusterName=prod-eu-1", "sampling.ratio=0.2",
        "sidecar.extraEnv.SIDECAR_EXPORTER_TIMEOUT=5", "sidecar.extraEnv.SIDECAR_EXPORTER_BATCH_SIZE=512",
        "injection.pciScopeLabelValue=true", "webhook.replicas=3", "upstream.insecure=false",
        "metrics.prometheusRule.enabled=true", "metrics.prometheusRule.refusalRatio=0.1",
        "webhook.podDisruptionBudget.minAvailable=50%",
    )
    assert values["sampling"]["ratio"] == "0.2" and values["sidecar"]["extraEnv"]["SIDECAR_EXPORTER_TIMEOUT"] == 5
    objects = render(values)
    validate_all(objects)
    env = env_of(sidecar_of(injected_with(objects, tmp_path)))
    assert (env["SIDECAR_EXPORTER_TIMEOUT"], env["SIDECAR_EXPORTER_BATCH_SIZE"]) == ("5", "512")
    assert env["SIDECAR_CLUSTER_NAME"] == "prod-eu-1"
    rule = objects.one("PrometheusRule")
    assert "> 0.1" in json.dumps(rule["spec"])


@pytest.mark.parametrize(
    ("values", "check"),
    [
        # what `helm --set sampling.ratio=0.2` passes: a string
        ({"sampling": {"ratio": "0.2"}}, lambda data, toml: data["sampling"]["ratio"] == 0.2),
        ({"sampling": {"ratio": "1"}}, lambda data, toml: data["sampling"]["ratio"] == 1),
        ({"sampling": {"ratio": 0}}, lambda data, toml: data["sampling"]["ratio"] == 0),
        # `--set injection.pciScopeLabelValue=true` passes a boolean
        ({"injection": {"pciScopeLabelValue": True}}, lambda data, toml: True),
        ({"upstream": {"endpoint": "collector.observability:4317", "insecure": True}},
         lambda data, toml: 'upstream_endpoint = "collector.observability:4317"' in toml),
        # `--set sidecar.diskQueue.enabled=true`, with the default size or a size in bytes (an integer)
        ({"sidecar": {"diskQueue": {"enabled": True}}}, lambda data, toml: 'disk_queue_size_limit = "1Gi"' in toml),
        ({"sidecar": {"diskQueue": {"enabled": True, "sizeLimit": 500000000}}},
         lambda data, toml: 'disk_queue_size_limit = "500000000"' in toml),
        ({"sidecar": {"diskQueue": {"sizeLimit": "2Gi"}}}, lambda data, toml: 'disk_queue_size_limit = ""' in toml),
    ],
    ids=["ratio-string", "ratio-one-string", "ratio-zero", "label-value-bool", "endpoint-host-port",
         "disk-queue-default-size", "disk-queue-bytes", "disk-queue-off"],
)
def test_values_as_helm_set_gives_them_pass_the_schema(render: Any, values: dict[str, Any], check: Any) -> None:
    objects = render(values)
    validate_all(objects)
    policies = next(o for o in objects.of_kind("ConfigMap") if "data.json" in o.get("data", {}))
    data = json.loads(policies["data"]["data.json"])["otlp_sidecar"]["config"]
    assert check(data, webhook_toml(objects))


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"sampling": {"ratio": "0.2x"}}, "at '/sampling/ratio'"),
        ({"sampling": {"ratio": "1.5"}}, "at '/sampling/ratio'"),
        ({"upstream": {"endpoint": "ftp://collector:21"}}, "at '/upstream/endpoint'"),
        ({"injection": {"appProtocol": "thrift"}}, "at '/injection/appProtocol'"),
        ({"sidecar": {"diskQueue": {"enabled": True, "sizeLimit": "lots"}}}, "at '/sidecar/diskQueue/sizeLimit'"),
        ({"sidecar": {"diskQueue": {"enabled": "yes"}}}, "at '/sidecar/diskQueue/enabled'"),
    ],
)
def test_wrong_set_values_are_still_refused(chart: helm_python.Chart, values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm_python.HelmValuesError) as caught:
        chart.render(values, name=RELEASE, namespace=NAMESPACE)
    assert message in str(caught.value)


def declared_sections(schema: dict[str, Any], path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """The paths of the values' objects whose keys the chart declares (labels, resources and the
    other maps users fill are open)."""
    found = [path] if "properties" in schema else []
    for key, sub in schema.get("properties", {}).items():
        found += declared_sections(sub, (*path, key))
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):  # a map of declared objects (policies.extraSets)
        found += declared_sections(extra, (*path, "someSet"))
    return found


SCHEMA = json.loads((CHART_DIR / "values.schema.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("section", declared_sections(SCHEMA), ids=lambda path: ".".join(path) or "top")
def test_a_misspelled_key_is_refused_naming_it(chart: helm_python.Chart, section: tuple[str, ...]) -> None:
    """`--set upstream.endpont=...` rendered without a word before: the sidecars then printed their
    telemetry to the pod's log instead of forwarding it. Every object of the values refuses a key
    it does not declare, at install, naming it."""
    values: dict[str, Any] = {}
    target = values
    for key in section:
        target = target.setdefault(key, {})
    if section[-1:] == ("someSet",):
        target["configMap"] = "pci-policies"
    target["endpont"] = "https://collector.observability:4317"
    with pytest.raises(helm_python.HelmValuesError) as caught:
        chart.render(values, name=RELEASE, namespace=NAMESPACE)
    assert "'endpont' not allowed" in str(caught.value)
    assert f"at '{''.join('/' + key for key in section)}'" in str(caught.value)


def test_maps_users_fill_stay_open(render: Any) -> None:
    """Labels, annotations, node selectors, resources and extra environment take any key."""
    objects = render({
        "webhook": {"podAnnotations": {"team": "observability"}, "nodeSelector": {"pool": "system"},
                    "resources": {"limits": {"memory": "160Mi", "ephemeral-storage": "1Gi"}}},
        "sidecar": {"extraEnv": {"SIDECAR_EXPORTER_TIMEOUT": "5s"}},
        "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}},
    })
    validate_all(objects)
    deployment = objects.one("Deployment")
    assert deployment["spec"]["template"]["metadata"]["annotations"]["team"] == "observability"
    assert objects.one("ServiceMonitor")["metadata"]["labels"]["release"] == "prometheus"


def test_policies_disabled_the_pci_scope_pods_are_refused(chart: helm_python.Chart, render: Any,
                                                          tmp_path: Path) -> None:
    objects = render({"policies": {"enabled": False}})
    validate_all(objects)
    path = tmp_path / "webhook.toml"
    path.write_text(webhook_toml(objects), encoding="utf-8")
    config = load_webhook_config(path, env={})
    with pytest.raises(Refused, match="is in PCI scope but the webhook has no policy set"):
        decide(deployment_pod(), "payments", Scope.PCI, config)
    # elsewhere the pod is injected, and its sidecar applies the policies bundled in the image
    pod = injected_with(objects, tmp_path)
    assert "SIDECAR_POLICY_DIR" not in env_of(sidecar_of(pod))
    notes = chart.render({"policies": {"enabled": False}}, name=RELEASE, namespace=NAMESPACE)[
        "otlp-sidecar/templates/NOTES.txt"
    ]
    assert "REFUSES every pod in a PCI-scope namespace" in notes


def test_policies_disabled_with_an_own_default_set(render: Any, tmp_path: Path) -> None:
    values = {"policies": {"enabled": False, "defaultSet": "corp",
                           "extraSets": {"corp": {"configMap": "corp-policies"}}}}
    objects = render(values)
    validate_all(objects)
    pod = injected_with(objects, tmp_path, scope=Scope.PCI, namespace="payments")
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["otlp-sidecar-policies"]["configMap"] == {"name": "corp-policies"}


def test_an_unknown_default_set_fails_the_render(chart: helm_python.Chart) -> None:
    with pytest.raises(helm_python.HelmRenderError) as caught:
        chart.render({"policies": {"defaultSet": "strict"}}, name=RELEASE, namespace=NAMESPACE)
    assert 'policies.defaultSet: "strict" is not a policy set' in str(caught.value)


def test_cluster_name_and_app_protocol_reach_the_pod(render: Any, tmp_path: Path) -> None:
    objects = render({"clusterName": "prod-eu-1", "injection": {"appProtocol": "grpc"}})
    pod = injected_with(objects, tmp_path)
    assert env_of(sidecar_of(pod))["SIDECAR_CLUSTER_NAME"] == "prod-eu-1"
    app = next(c for c in pod["spec"]["containers"] if c["name"] == "app")
    assert env_of(app) == {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317",
                           "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}


def test_the_disk_queue_is_requested_as_ephemeral_storage(render: Any, tmp_path: Path) -> None:
    """A disk queue the scheduler does not reserve can fill a node's disk during an outage, and a pod
    using more ephemeral storage than it requested is the kubelet's first to evict under disk
    pressure: with the disk queue on, the sidecar requests its volume."""
    pod = injected_with(render({"sidecar": {"diskQueue": {"enabled": True, "sizeLimit": "2Gi"}}}), tmp_path)
    assert_valid_pod(pod)
    resources = sidecar_of(pod)["resources"]
    assert resources["requests"]["ephemeral-storage"] == "2Gi"
    assert "ephemeral-storage" not in resources.get("limits", {})
    # memory only: nothing to reserve
    plain = sidecar_of(injected_with(render({}), tmp_path))["resources"]
    assert "ephemeral-storage" not in plain["requests"]
    # the operator's own request and limit win (the limit counts the whole pod's use)
    values = {"sidecar": {"diskQueue": {"enabled": True},
                          "resources": {"requests": {"cpu": "50m", "memory": "64Mi", "ephemeral-storage": "256Mi"},
                                        "limits": {"memory": "256Mi", "ephemeral-storage": "3Gi"}}}}
    pod = injected_with(render(values), tmp_path)
    assert_valid_pod(pod)
    assert sidecar_of(pod)["resources"] == {
        "requests": {"cpu": "50m", "memory": "64Mi", "ephemeral-storage": "256Mi"},
        "limits": {"memory": "256Mi", "ephemeral-storage": "3Gi"},
    }


@pytest.mark.parametrize(
    ("resources", "disk_queue", "message"),
    [
        ({"requests": {"memory": "512Mi"}, "limits": {"memory": "256Mi"}}, False,
         "injection.memory_request: 512Mi is more than memory_limit 256Mi"),
        ({"requests": {"cpu": "1"}, "limits": {"cpu": "500m", "memory": "256Mi"}}, False,
         "injection.cpu_request: 1 is more than cpu_limit 500m"),
        ({"requests": {"memory": "64Mi"}, "limits": {"memory": "256Mi", "ephemeral-storage": "512Mi"}}, True,
         "injection.disk_queue_size_limit: 1Gi is more than ephemeral_storage_limit 512Mi"),
    ],
    ids=["memory", "cpu", "disk-queue-over-storage-limit"],
)
def test_a_request_over_its_limit_stops_the_webhook(
    render: Any, tmp_path: Path, resources: dict[str, Any], disk_queue: bool, message: str,
) -> None:
    """Kubernetes refuses a container whose request is over its limit: every injected pod would
    fail to be created, so the webhook refuses the settings at its start and names the value."""
    objects = render({"sidecar": {"resources": resources, "diskQueue": {"enabled": disk_queue}}})
    path = tmp_path / "webhook.toml"
    path.write_text(webhook_toml(objects), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_webhook_config(path, env={})
    assert message in str(caught.value)
    assert "Kubernetes would refuse every injected pod" in str(caught.value)
