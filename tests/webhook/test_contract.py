"""The sidecar reads what the webhook injects: its env, resolved as the kubelet would, loads."""

from __future__ import annotations

from pathlib import Path

from sidecar import config as sidecar_config
from sidecar.cli import build_parser
from sidecar.webhook.config import WebhookConfig
from sidecar.webhook.inject import Scope, decide
from tests.webhook.conftest import apply, deployment_pod, sidecar_of


def test_injected_environment_is_a_valid_sidecar_config(config: WebhookConfig, tmp_path: Path) -> None:
    pod = deployment_pod(**{"otlp-sidecar.io/inject": "true"})
    injected = apply(pod, decide(pod, "shop", Scope.POD, config).patch)
    sidecar = sidecar_of(injected)

    # what the kubelet does: resolve the downward API, project the volumes
    (tmp_path / "labels").write_text('app="checkout"\nteam="payments"\n', encoding="utf-8")
    (tmp_path / "annotations").write_text('otlp-sidecar.io/inject="true"\n', encoding="utf-8")
    field_values = {
        "metadata.name": "checkout-7d9f8b6c5-x2x9q",
        "metadata.namespace": "shop",
        "spec.serviceAccountName": "checkout",
        "metadata.labels['team']": "payments",
        "metadata.uid": "5f0c3f0e-2222-4c2b-9a53-d1f3c1a1e0aa",
        "spec.nodeName": "node-a",
    }
    env: dict[str, str] = {}
    for item in sidecar["env"]:
        if "valueFrom" in item:
            env[item["name"]] = field_values[item["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            env[item["name"]] = item["value"].replace("/etc/otlp-sidecar/podinfo", str(tmp_path))
    for name in (
        "OTEL_EXPORTER_OTLP_CERTIFICATE",
        "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
        "OTEL_EXPORTER_OTLP_CLIENT_KEY",
    ):
        assert name in env

    loaded = sidecar_config.load(None, env=env)

    assert loaded.receivers.grpc_endpoint == "127.0.0.1:4317"
    assert loaded.receivers.http_endpoint == "127.0.0.1:4318"
    assert loaded.admin.endpoint == "0.0.0.0:13133"
    assert loaded.exporter.endpoint == "https://collector.observability:4317"
    assert loaded.exporter.client_certificate == "/etc/otlp-sidecar/tls/tls.crt"
    assert loaded.policy.dir == "/etc/otlp-sidecar/policies"
    assert loaded.policy.hash_key_file == "/etc/otlp-sidecar/hash-key/hmac.key"
    identity = loaded.pod.identity()
    assert (identity.name, identity.namespace, identity.service_account, identity.tenant) == (
        "checkout-7d9f8b6c5-x2x9q",
        "shop",
        "checkout",
        "payments",
    )
    assert identity.labels["team"] == "payments"
    # the Kubernetes identity: from the downward API, and the workload derived at injection
    assert (identity.uid, identity.node_name) == ("5f0c3f0e-2222-4c2b-9a53-d1f3c1a1e0aa", "node-a")
    assert (identity.workload_kind, identity.workload_name) == ("Deployment", "checkout")

    # and the injected command is one the sidecar's CLI knows
    args = build_parser().parse_args(sidecar["command"][1:])
    assert args.command == "run"
