"""The injection decision and its patch, on the pods a cluster really creates.

Every patch is applied with the `jsonpatch` library (not our own code) and the result is
validated as a Pod against the Kubernetes 1.29 schema.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from sidecar.webhook.config import WebhookConfig
from sidecar.webhook.inject import InvalidPod, Refused, Scope, decide
from tests.webhook.conftest import (
    apply,
    assert_valid_pod,
    deployment_pod,
    env_of,
    sidecar_of,
    status_of,
)

#: what an app container gets: the sidecar's OTLP/HTTP endpoint and the protocol that goes with it
APP_ENV = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}


def inject(
    pod: dict[str, Any], config: WebhookConfig, scope: Scope = Scope.POD, namespace: str = "shop"
) -> dict[str, Any]:
    decision = decide(pod, namespace, scope, config)
    assert decision.inject, decision.reason
    result = apply(pod, decision.patch)
    assert_valid_pod(result)
    return result


def test_deployment_pod_gets_a_native_sidecar_first(config: WebhookConfig) -> None:
    pod = deployment_pod(**{"otlp-sidecar.io/inject": "true"})
    result = inject(pod, config)

    sidecar = result["spec"]["initContainers"][0]
    assert sidecar["name"] == "otlp-sidecar"
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["command"] == ["otlp-sidecar", "run", "--grace", "20"]
    # stopped after the app, within the pod's grace: the sidecar's flush is added to Kubernetes' 30 s
    assert result["spec"]["terminationGracePeriodSeconds"] == 50
    assert sidecar["image"] == "registry.example/otlp-sidecar:1.2.3"
    assert sidecar["startupProbe"]["httpGet"] == {"path": "/ready", "port": 13133, "scheme": "HTTP"}
    assert sidecar["livenessProbe"]["httpGet"]["path"] == "/health"
    assert sidecar["readinessProbe"]["httpGet"]["path"] == "/ready"
    security = sidecar["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] == 65532
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert sidecar["resources"] == {
        "requests": {"cpu": "50m", "memory": "64Mi"},
        "limits": {"memory": "256Mi"},
    }
    # the app is untouched apart from the endpoint
    app = result["spec"]["containers"][0]
    assert env_of(app) == APP_ENV
    assert app["image"] == pod["spec"]["containers"][0]["image"]
    assert result["metadata"]["labels"]["otlp-sidecar.io/injected"] == "true"
    assert status_of(result)["mode"] == "native"
    assert "name" not in result["metadata"]  # generateName pods keep having no name


def test_the_pod_grace_leaves_the_sidecar_its_flush_in_native_mode_only(config: WebhookConfig) -> None:
    pod = deployment_pod(**{"otlp-sidecar.io/inject": "true"})
    pod["spec"]["terminationGracePeriodSeconds"] = 90
    longer = dataclasses.replace(config.injection, shutdown_grace=45)
    result = inject(pod, dataclasses.replace(config, injection=longer))
    assert result["spec"]["terminationGracePeriodSeconds"] == 135
    assert sidecar_of(result)["command"][2:4] == ["--grace", "45"]
    # a plain container gets SIGTERM with the app, within the pod's own grace: left as it is
    container_mode = dataclasses.replace(config.injection, mode="container")
    plain = inject(deployment_pod(**{"otlp-sidecar.io/inject": "true"}),
                   dataclasses.replace(config, injection=container_mode))
    assert "terminationGracePeriodSeconds" not in plain["spec"]


def test_sidecar_env_follows_the_runtime_contract(config: WebhookConfig) -> None:
    result = inject(deployment_pod(**{"otlp-sidecar.io/inject": "true"}), config)
    env = env_of(sidecar_of(result))

    assert env["SIDECAR_GRPC_ENDPOINT"] == "127.0.0.1:4317"
    assert env["SIDECAR_HTTP_ENDPOINT"] == "127.0.0.1:4318"
    assert env["SIDECAR_ADMIN_ENDPOINT"] == "0.0.0.0:13133"
    assert env["SIDECAR_POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["SIDECAR_POD_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["SIDECAR_POD_SERVICE_ACCOUNT"] == {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}
    assert env["SIDECAR_TENANT"] == {"fieldRef": {"fieldPath": "metadata.labels['team']"}}
    assert env["SIDECAR_POD_LABELS_FILE"] == "/etc/otlp-sidecar/podinfo/labels"
    assert env["SIDECAR_POD_ANNOTATIONS_FILE"] == "/etc/otlp-sidecar/podinfo/annotations"
    assert env["SIDECAR_POLICY_DIR"] == "/etc/otlp-sidecar/policies"
    assert env["SIDECAR_POLICY_HASH_KEY_FILE"] == "/etc/otlp-sidecar/hash-key/hmac.key"
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "https://collector.observability:4317"
    assert env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "grpc"
    assert env["OTEL_EXPORTER_OTLP_CERTIFICATE"] == "/etc/otlp-sidecar/tls/ca.crt"
    assert env["OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE"] == "/etc/otlp-sidecar/tls/tls.crt"
    assert env["OTEL_EXPORTER_OTLP_CLIENT_KEY"] == "/etc/otlp-sidecar/tls/tls.key"


def test_volumes_restore_the_policy_tree_and_mount_the_secrets(config: WebhookConfig) -> None:
    result = inject(deployment_pod(**{"otlp-sidecar.io/inject": "true"}), config)
    volumes = {v["name"]: v for v in result["spec"]["volumes"]}
    mounts = {m["mountPath"]: m for m in sidecar_of(result)["volumeMounts"]}

    policies = volumes["otlp-sidecar-policies"]["configMap"]
    assert policies["name"] == "otlp-sidecar-policies"
    assert {i["key"]: i["path"] for i in policies["items"]} == {
        "data.json": "data.json",
        "pci__pci.rego": "pci/pci.rego",
        "main.rego": "main.rego",
    }
    assert volumes["otlp-sidecar-mtls"]["secret"] == {"secretName": "otlp-sidecar-mtls"}
    assert volumes["otlp-sidecar-hash-key"]["secret"] == {"secretName": "otlp-sidecar-hmac"}
    assert {i["path"] for i in volumes["otlp-sidecar-podinfo"]["downwardAPI"]["items"]} == {
        "labels",
        "annotations",
    }
    # whole directories (no subPath): the ConfigMap's ..data swap reaches the sidecar
    assert mounts["/etc/otlp-sidecar/policies"]["readOnly"] is True
    assert "subPath" not in mounts["/etc/otlp-sidecar/policies"]
    assert mounts["/etc/otlp-sidecar/tls"]["name"] == "otlp-sidecar-mtls"
    assert mounts["/tmp"]["name"] == "otlp-sidecar-tmp"


@pytest.mark.parametrize(("limit", "max_bytes"), [("1Gi", 966367641), ("1.5G", 1350000000), ("2Mi", 1887436)])
def test_the_disk_queue_is_an_empty_dir_the_sidecar_fills_to_90_percent(
    config: WebhookConfig, limit: str, max_bytes: int
) -> None:
    injection = dataclasses.replace(config.injection, disk_queue_size_limit=limit)
    pod = deployment_pod(**{"otlp-sidecar.io/inject": "true"})
    result = inject(pod, dataclasses.replace(config, injection=injection))
    volumes = {v["name"]: v for v in result["spec"]["volumes"]}
    assert volumes["otlp-sidecar-queue"] == {"name": "otlp-sidecar-queue", "emptyDir": {"sizeLimit": limit}}
    mounts = {m["mountPath"]: m for m in sidecar_of(result)["volumeMounts"]}
    assert mounts["/var/lib/otlp-sidecar/queue"] == {"name": "otlp-sidecar-queue",
                                                      "mountPath": "/var/lib/otlp-sidecar/queue"}
    env = env_of(sidecar_of(result))
    assert env["SIDECAR_EXPORTER_DISK_QUEUE_DIR"] == "/var/lib/otlp-sidecar/queue"
    assert env["SIDECAR_EXPORTER_DISK_QUEUE_MAX_BYTES"] == str(max_bytes)
    # the scheduler reserves it, and the kubelet does not evict the pod first for using it
    assert sidecar_of(result)["resources"]["requests"]["ephemeral-storage"] == limit
    # without it: memory only, no volume, nothing reserved
    plain = inject(deployment_pod(**{"otlp-sidecar.io/inject": "true"}), config)
    assert "otlp-sidecar-queue" not in {v["name"] for v in plain["spec"]["volumes"]}
    assert "SIDECAR_EXPORTER_DISK_QUEUE_DIR" not in env_of(sidecar_of(plain))
    assert "ephemeral-storage" not in sidecar_of(plain)["resources"]["requests"]
    # an operator's own request wins, 0 included (no reservation)
    for own in ("0", "100Mi"):
        chosen = dataclasses.replace(injection, ephemeral_storage_request=own)
        result = inject(pod, dataclasses.replace(config, injection=chosen))
        assert sidecar_of(result)["resources"]["requests"]["ephemeral-storage"] == own


def test_existing_env_is_kept_and_a_set_endpoint_is_not_overridden(config: WebhookConfig) -> None:
    pod = deployment_pod(**{"otlp-sidecar.io/inject": "true"})
    pod["spec"]["containers"] = [
        {"name": "api", "image": "api:1", "env": [{"name": "LOG_LEVEL", "value": "debug"}]},
        {
            "name": "worker",
            "image": "worker:1",
            "env": [
                {"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": "http://other:4318"},
            ],
        },
        {"name": "proxy", "image": "envoy:1"},
    ]
    result = inject(pod, config)
    containers = {c["name"]: env_of(c) for c in result["spec"]["containers"]}

    assert containers["api"] == {"LOG_LEVEL": "debug", **APP_ENV}
    assert containers["worker"] == {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://other:4318"}
    assert containers["proxy"] == APP_ENV
    assert status_of(result)["appEnv"] == ["api", "proxy"]


def test_init_containers_run_after_the_native_sidecar(config: WebhookConfig) -> None:
    pod = deployment_pod(**{"otlp-sidecar.io/inject": "true"})
    pod["spec"]["initContainers"] = [
        {"name": "migrate", "image": "migrate:1", "env": [{"name": "DB", "value": "x"}]},
        {"name": "warmup", "image": "warmup:1"},
    ]
    result = inject(pod, config)
    init = result["spec"]["initContainers"]

    assert [c["name"] for c in init] == ["otlp-sidecar", "migrate", "warmup"]
    assert env_of(init[1]) == {"DB": "x", **APP_ENV}
    assert env_of(init[2]) == APP_ENV


def test_container_mode_appends_a_regular_container(config: WebhookConfig) -> None:
    config = dataclasses.replace(
        config,
        injection=dataclasses.replace(config.injection, mode="container"),
    )
    pod = deployment_pod(**{"otlp-sidecar.io/inject": "true"})
    pod["spec"]["initContainers"] = [{"name": "migrate", "image": "migrate:1"}]
    result = inject(pod, config)

    assert [c["name"] for c in result["spec"]["containers"]] == ["app", "otlp-sidecar"]
    assert "restartPolicy" not in result["spec"]["containers"][1]
    # init containers run before a regular sidecar exists: no endpoint for them
    assert result["spec"]["initContainers"] == [{"name": "migrate", "image": "migrate:1"}]


def test_existing_volumes_annotations_and_labels_are_kept(config: WebhookConfig) -> None:
    pod = deployment_pod(**{"otlp-sidecar.io/inject": "true", "prometheus.io/scrape": "true"})
    pod["spec"]["volumes"] = [{"name": "data", "emptyDir": {}}]
    result = inject(pod, config)

    assert result["spec"]["volumes"][0] == {"name": "data", "emptyDir": {}}
    assert len(result["spec"]["volumes"]) == 1 + 5
    assert result["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert result["metadata"]["labels"]["app"] == "checkout"


def test_a_pod_without_annotations_or_labels_in_a_labelled_namespace(config: WebhookConfig) -> None:
    pod = deployment_pod()
    del pod["metadata"]["annotations"]
    del pod["metadata"]["labels"]
    result = inject(pod, config, Scope.NAMESPACE)

    assert result["metadata"]["labels"] == {"otlp-sidecar.io/injected": "true"}
    assert status_of(result)["scope"] == "namespace"


def test_already_injected_pod_gets_no_patch(config: WebhookConfig) -> None:
    pod = deployment_pod(**{"otlp-sidecar.io/inject": "true"})
    once = inject(pod, config)

    for scope in Scope:  # reinvocation (IfNeeded) or a second webhook entry
        again = decide(once, "shop", scope, config)
        assert not again.inject and again.patch == []
        assert "already injected" in again.reason


@pytest.mark.parametrize(
    ("scope", "annotations", "expected"),
    [
        (Scope.POD, {}, "not requested"),
        (Scope.POD, {"otlp-sidecar.io/inject": "false"}, "not requested"),
        (Scope.NAMESPACE, {"otlp-sidecar.io/inject": "false"}, "opted out"),
    ],
)
def test_pods_not_asking_or_opting_out_are_left_alone(
    config: WebhookConfig,
    scope: Scope,
    annotations: dict[str, str],
    expected: str,
) -> None:
    decision = decide(deployment_pod(**annotations), "shop", scope, config)
    assert not decision.inject and decision.patch == []
    assert expected in decision.reason


def test_namespace_scope_injects_without_annotation(config: WebhookConfig) -> None:
    assert decide(deployment_pod(), "shop", Scope.NAMESPACE, config).inject


def test_host_network_pods_are_skipped(config: WebhookConfig) -> None:
    pod = deployment_pod(**{"otlp-sidecar.io/inject": "true"})
    pod["spec"]["hostNetwork"] = True
    decision = decide(pod, "shop", Scope.POD, config)
    assert not decision.inject and "hostNetwork" in decision.reason


@pytest.mark.parametrize("namespace", ["kube-system", "kube-public", "kube-node-lease"])
def test_system_namespaces_are_skipped_even_in_pci_scope(config: WebhookConfig, namespace: str) -> None:
    pod = deployment_pod(**{"otlp-sidecar.io/inject": "true"})
    for scope in Scope:
        decision = decide(pod, namespace, scope, config)
        assert not decision.inject and "excluded" in decision.reason


def test_pci_scope_refuses_opt_out_and_host_network(config: WebhookConfig) -> None:
    with pytest.raises(Refused, match=r"PCI scope.*otlp-sidecar\.io/inject"):
        decide(deployment_pod(**{"otlp-sidecar.io/inject": "false"}), "payments", Scope.PCI, config)
    pod = deployment_pod()
    pod["spec"]["hostNetwork"] = True
    with pytest.raises(Refused, match="hostNetwork"):
        decide(pod, "payments", Scope.PCI, config)
    assert decide(deployment_pod(), "payments", Scope.PCI, config).inject


def test_policy_set_is_chosen_per_pod(config: WebhookConfig) -> None:
    pod = deployment_pod(**{"otlp-sidecar.io/inject": "true", "otlp-sidecar.io/policy": "strict"})
    result = inject(pod, config)
    volume = next(v for v in result["spec"]["volumes"] if v["name"] == "otlp-sidecar-policies")
    assert volume["configMap"] == {"name": "otlp-sidecar-policies-strict"}
    assert status_of(result)["policySet"] == "strict"


def test_unknown_policy_set_is_refused_with_the_known_ones(config: WebhookConfig) -> None:
    pod = deployment_pod(**{"otlp-sidecar.io/inject": "true", "otlp-sidecar.io/policy": "lax"})
    with pytest.raises(Refused, match=r"'lax' does not exist; the sets are: default, strict"):
        decide(pod, "shop", Scope.POD, config)


def test_bad_inject_annotation_value_is_refused(config: WebhookConfig) -> None:
    with pytest.raises(Refused, match=r"must be \"true\" or \"false\", got 'yes please'"):
        decide(deployment_pod(**{"otlp-sidecar.io/inject": "yes please"}), "shop", Scope.POD, config)


def test_tenant_from_an_annotation(config: WebhookConfig) -> None:
    injection = dataclasses.replace(config.injection, tenant_label="", tenant_annotation="acme.io/tenant")
    config = dataclasses.replace(config, injection=injection)
    result = inject(deployment_pod(**{"otlp-sidecar.io/inject": "true"}), config)
    assert env_of(sidecar_of(result))["SIDECAR_TENANT"] == {
        "fieldRef": {"fieldPath": "metadata.annotations['acme.io/tenant']"},
    }


def test_minimal_config_injects_a_sidecar_with_its_bundled_policies() -> None:
    config = WebhookConfig()
    result = inject(deployment_pod(**{"otlp-sidecar.io/inject": "true"}), config)
    env = env_of(sidecar_of(result))
    assert "SIDECAR_POLICY_DIR" not in env and "OTEL_EXPORTER_OTLP_ENDPOINT" not in env
    assert {v["name"] for v in result["spec"]["volumes"]} == {"otlp-sidecar-podinfo", "otlp-sidecar-tmp"}


def test_a_container_already_named_otlp_sidecar_is_not_duplicated(config: WebhookConfig) -> None:
    pod = deployment_pod()
    pod["spec"]["containers"].append({"name": "otlp-sidecar", "image": "mine:1"})
    decision = decide(pod, "shop", Scope.NAMESPACE, config)
    assert not decision.inject and "already has a container" in decision.reason


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda p: p.pop("spec"), "spec must be an object"),
        (lambda p: p["spec"].update(containers=[]), "spec.containers must be a non-empty list"),
        (
            lambda p: p["spec"].update(containers=[{"image": "x"}]),
            r"spec.containers\[0\] must be an object with a name",
        ),
        (lambda p: p["spec"]["containers"][0].update(env="A=1"), r"env must be a list"),
        (lambda p: p["metadata"].update(annotations={"a": 1}), "annotations must be an object of strings"),
        (lambda p: p["spec"].update(initContainers={"name": "x"}), "spec.initContainers must be a list"),
    ],
)
def test_malformed_pods_raise_a_clear_error(config: WebhookConfig, mutate: Any, message: str) -> None:
    pod = deployment_pod()
    mutate(pod)
    with pytest.raises(InvalidPod, match=message):
        decide(pod, "shop", Scope.NAMESPACE, config)


def test_probe_paths_are_configurable(config: WebhookConfig) -> None:
    injection = dataclasses.replace(config.injection, readiness_path="/health", startup_path="/health")
    result = inject(
        deployment_pod(**{"otlp-sidecar.io/inject": "true"}), dataclasses.replace(config, injection=injection)
    )
    sidecar = sidecar_of(result)
    assert sidecar["readinessProbe"]["httpGet"]["path"] == "/health"
    assert sidecar["startupProbe"]["httpGet"]["path"] == "/health"
    assert sidecar["startupProbe"]["failureThreshold"] == 60  # one probe a second for startup_timeout


def test_pci_scope_is_not_bypassed_by_a_copied_status_or_a_look_alike(config: WebhookConfig) -> None:
    forged = deployment_pod(**{"otlp-sidecar.io/status": '{"mode": "native"}'})
    with pytest.raises(Refused, match="claims an otlp-sidecar"):
        decide(forged, "payments", Scope.PCI, config)
    look_alike = deployment_pod()
    look_alike["spec"]["containers"].append({"name": "otlp-sidecar", "image": "busybox"})
    with pytest.raises(Refused, match="not the injected one"):
        decide(look_alike, "payments", Scope.PCI, config)
    # outside PCI scope the same pods are simply left alone
    assert not decide(forged, "shop", Scope.NAMESPACE, config).inject
    # and a pod the webhook injected is recognised on reinvocation
    pod = deployment_pod()
    injected = apply(pod, decide(pod, "payments", Scope.PCI, config).patch)
    again = decide(injected, "payments", Scope.PCI, config)
    assert not again.inject and again.patch == []
