"""What issue 15 asks of the injector: the app's protocol, the pod's identity, no PCI pod without policies."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sidecar.configkit import ConfigError
from sidecar.webhook.config import WebhookConfig, load_webhook_config
from sidecar.webhook.inject import Refused, Scope, decide
from sidecar.webhook.review import review
from tests.webhook.conftest import admission_review, apply, assert_valid_pod, deployment_pod, env_of, sidecar_of


def injected(pod: dict[str, Any], config: WebhookConfig, scope: Scope = Scope.NAMESPACE) -> dict[str, Any]:
    decision = decide(pod, "shop", scope, config)
    assert decision.inject, decision.reason
    result = apply(pod, decision.patch)
    assert_valid_pod(result)
    return result


def owned_by(kind: str, name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    pod = deployment_pod()
    pod["metadata"]["labels"] = {"app": "x", **(labels or {})}
    pod["metadata"]["ownerReferences"] = [
        {"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": "u-1", "controller": True}
    ]
    return pod


@pytest.mark.parametrize(
    ("pod", "workload"),
    [
        (deployment_pod(), ("Deployment", "checkout")),
        (owned_by("ReplicaSet", "web-abc12", {"pod-template-hash": "abc12"}), ("Deployment", "web")),
        (owned_by("ReplicaSet", "legacy-rs"), ("ReplicaSet", "legacy-rs")),
        (owned_by("StatefulSet", "db"), ("StatefulSet", "db")),
        (owned_by("DaemonSet", "node-agent"), ("DaemonSet", "node-agent")),
        (owned_by("Job", "migrate-v3"), ("Job", "migrate-v3")),
        (owned_by("Job", "nightly-report-29417760"), ("CronJob", "nightly-report")),
    ],
    ids=["deployment", "deployment-other", "bare-replicaset", "statefulset", "daemonset", "job", "cronjob"],
)
def test_the_sidecar_knows_its_workload_from_the_owner_references(
    config: WebhookConfig, pod: dict[str, Any], workload: tuple[str, str]
) -> None:
    env = env_of(sidecar_of(injected(pod, config)))
    assert (env["SIDECAR_WORKLOAD_KIND"], env["SIDECAR_WORKLOAD_NAME"]) == workload
    assert env["SIDECAR_POD_UID"] == {"fieldRef": {"fieldPath": "metadata.uid"}}
    assert env["SIDECAR_NODE_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}


def test_a_bare_pod_has_no_workload_and_the_cluster_name_comes_from_the_settings(config: WebhookConfig) -> None:
    pod = deployment_pod()
    del pod["metadata"]["ownerReferences"]
    env = env_of(sidecar_of(injected(pod, config)))
    assert "SIDECAR_WORKLOAD_KIND" not in env and "SIDECAR_WORKLOAD_NAME" not in env
    assert "SIDECAR_CLUSTER_NAME" not in env

    named = dataclasses.replace(config, injection=dataclasses.replace(config.injection, cluster_name="prod-eu-1"))
    assert env_of(sidecar_of(injected(pod, named)))["SIDECAR_CLUSTER_NAME"] == "prod-eu-1"


@pytest.mark.parametrize(
    ("annotation", "endpoint", "protocol"),
    [
        (None, "http://127.0.0.1:4318", "http/protobuf"),
        ("grpc", "http://127.0.0.1:4317", "grpc"),
        ("http/json", "http://127.0.0.1:4318", "http/json"),
    ],
)
def test_the_app_gets_the_protocol_with_the_endpoint(
    config: WebhookConfig, annotation: str | None, endpoint: str, protocol: str
) -> None:
    pod = deployment_pod(**({"otlp-sidecar.io/protocol": annotation} if annotation else {}))
    app = injected(pod, config)["spec"]["containers"][0]
    assert env_of(app) == {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": protocol}


def test_an_app_that_chose_its_protocol_keeps_it_and_gets_the_matching_port(config: WebhookConfig) -> None:
    pod = deployment_pod()
    pod["spec"]["containers"][0]["env"] = [{"name": "OTEL_EXPORTER_OTLP_PROTOCOL", "value": "grpc"}]
    app = injected(pod, config)["spec"]["containers"][0]
    assert app["env"] == [
        {"name": "OTEL_EXPORTER_OTLP_PROTOCOL", "value": "grpc"},
        {"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": "http://127.0.0.1:4317"},
    ]


def test_a_wrong_protocol_annotation_is_refused(config: WebhookConfig) -> None:
    with pytest.raises(Refused, match=r'protocol must be one of "http/protobuf", "http/json", "grpc"'):
        decide(deployment_pod(**{"otlp-sidecar.io/protocol": "thrift"}), "shop", Scope.NAMESPACE, config)


def test_the_default_protocol_is_a_setting_and_the_port_follows_it(tmp_path: Path) -> None:
    path = tmp_path / "webhook.toml"
    path.write_text('[injection]\napp_protocol = "grpc"\napp_endpoint = "http://localhost:4318"\n', encoding="utf-8")
    config = load_webhook_config(path, env={})
    app = injected(deployment_pod(), config)["spec"]["containers"][0]
    # an SDK told grpc gets the gRPC listener, never the HTTP port it would fail on
    assert env_of(app) == {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://localhost:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
    }
    path.write_text('[injection]\napp_endpoint = "http://127.0.0.1:4317"\n', encoding="utf-8")
    app = injected(deployment_pod(), load_webhook_config(path, env={}))["spec"]["containers"][0]
    assert env_of(app)["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://127.0.0.1:4318"
    path.write_text('[injection]\napp_protocol = "thrift"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"injection\.app_protocol: 'thrift' is not allowed"):
        load_webhook_config(path, env={})


def test_a_pci_scope_pod_is_refused_when_the_webhook_has_no_policies(config: WebhookConfig) -> None:
    no_policies = dataclasses.replace(config, policy_sets={})
    with pytest.raises(Refused, match="is in PCI scope but the webhook has no policy set"):
        decide(deployment_pod(), "payments", Scope.PCI, no_policies)
    # the same settings still inject outside PCI scope (the sidecar applies its bundled policies)
    assert decide(deployment_pod(), "shop", Scope.NAMESPACE, no_policies).inject

    # as the API server meets it: allowed false, 403, the message
    status, answer, outcome = review(
        json.dumps(admission_review(deployment_pod(), namespace="payments")).encode(), Scope.PCI, no_policies
    )
    assert status == 200 and answer["response"]["allowed"] is False
    assert answer["response"]["status"]["code"] == 403
    assert "PCI scope" in answer["response"]["status"]["message"] and outcome.result == "refused"


def test_webhook_inject_without_config_refuses_a_pci_pod(tmp_path: Path) -> None:
    pod = tmp_path / "pod.json"
    pod.write_text(json.dumps(deployment_pod()), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "sidecar", "webhook", "inject", "--scope", "pci", "--namespace", "payments", str(pod)],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 1, done.stderr
    assert "PCI scope but the webhook has no policy set" in done.stderr and "--config" in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    # outside PCI scope it injects, and says which policies the sidecar will apply
    done = subprocess.run(
        [sys.executable, "-m", "sidecar", "webhook", "inject", "--scope", "namespace", str(pod)],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "the sidecar applies the policies bundled in its image" in done.stderr
    injected = json.loads(done.stdout)
    sidecar = sidecar_of(injected)
    assert "SIDECAR_POLICY_DIR" not in env_of(sidecar)
