"""Containers whose OTLP endpoint variables send telemetry around the sidecar (found in a
misconfiguration review): a pod in PCI scope whose app kept its collector address, or set a
signal's own endpoint (which the OpenTelemetry SDKs use before OTEL_EXPORTER_OTLP_ENDPOINT), was
injected and admitted without a word, and that telemetry left the pod unmasked."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from sidecar.cli import main
from sidecar.webhook.bypass import is_the_sidecar
from sidecar.webhook.config import WebhookConfig
from sidecar.webhook.inject import Scope
from sidecar.webhook.review import review
from tests.webhook.conftest import admission_review, apply, deployment_pod

COLLECTOR = "http://otel-collector.observability:4318"


def with_env(*env: dict[str, Any], init: list[dict[str, Any]] | None = None,
             env_from: bool = False) -> dict[str, Any]:
    pod = deployment_pod()
    container = pod["spec"]["containers"][0]
    container["env"] = list(env)
    if env_from:
        container["envFrom"] = [{"configMapRef": {"name": "app-settings"}}]
    if init is not None:
        pod["spec"]["initContainers"] = [{"name": "migrate", "image": "registry.example/migrate:1", "env": init}]
    return pod


def response_for(pod: dict[str, Any], scope: Scope, config: WebhookConfig) -> dict[str, Any]:
    status, answer, _ = review(json.dumps(admission_review(pod, namespace="payments")).encode(), scope, config)
    assert status == 200
    json.dumps(answer, allow_nan=False)
    response: dict[str, Any] = answer["response"]
    return response


def injected_env(response: dict[str, Any]) -> list[Any]:
    return [op["value"] for op in json.loads(base64.b64decode(response["patch"])) if "/env" in op["path"]]


@pytest.mark.parametrize(("env", "named"), [
    ({"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": COLLECTOR}, f"OTEL_EXPORTER_OTLP_ENDPOINT={COLLECTOR}"),
    ({"name": "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "value": f"{COLLECTOR}/v1/traces"},
     "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT="),
    ({"name": "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "value": "otel-collector:4317"}, "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT="),
    ({"name": "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "value": "http://127.0.0.1:9090"},  # loopback, not the sidecar
     "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT="),
    ({"name": "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
      "valueFrom": {"secretKeyRef": {"name": "otel", "key": "endpoint"}}},
     "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT from a Secret or ConfigMap"),
], ids=["generic", "traces", "logs host:port", "metrics other loopback port", "from a secret"])
def test_pci_scope_refuses_a_container_that_sends_otlp_around_the_sidecar(
    config: WebhookConfig, env: dict[str, Any], named: str,
) -> None:
    response = response_for(with_env(env), Scope.PCI, config)
    assert response["allowed"] is False and response["status"]["code"] == 403
    message = response["status"]["message"]
    assert message.startswith("namespace payments is in PCI scope: container 'app': " + named), message
    assert "card numbers unmasked; remove these variables" in message


def test_pci_scope_refuses_an_init_container_that_sends_otlp_around_the_sidecar(config: WebhookConfig) -> None:
    pod = with_env(init=[{"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": COLLECTOR}])
    response = response_for(pod, Scope.PCI, config)
    assert response["allowed"] is False and "container 'migrate': OTEL_EXPORTER_OTLP_ENDPOINT" in (
        response["status"]["message"])


@pytest.mark.parametrize("value", [
    "http://127.0.0.1:4318", "http://localhost:4318/v1/traces", "localhost:4317", "http://[::1]:4317",
    "https://127.0.0.1:4318", "",
])
def test_pci_scope_admits_endpoints_that_are_the_sidecar(config: WebhookConfig, value: str) -> None:
    pod = with_env({"name": "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "value": value})
    response = response_for(pod, Scope.PCI, config)
    assert response["allowed"] is True and "warnings" not in response, response
    assert {"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": "http://127.0.0.1:4318"} in injected_env(response)


def test_other_scopes_admit_the_pod_with_a_warning_naming_the_variables(config: WebhookConfig) -> None:
    pod = with_env({"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": COLLECTOR},
                   {"name": "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "value": f"{COLLECTOR}/v1/logs?card=4111111111111111"})
    for scope in (Scope.NAMESPACE, Scope.POD):
        if scope is Scope.POD:
            pod["metadata"]["annotations"]["otlp-sidecar.io/inject"] = "true"
        response = response_for(pod, scope, config)
        assert response["allowed"] is True and response["patch"]
        (warning,) = response["warnings"]
        assert warning.startswith(f"container 'app': OTEL_EXPORTER_OTLP_ENDPOINT={COLLECTOR}; container 'app': "
                                  "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT="), warning
        assert "bypasses the otlp-sidecar's policies (card numbers are not masked)" in warning
        assert "4111111111111111" not in warning and "1111" in warning  # quoted values are masked


def test_env_from_is_a_warning_in_every_scope(config: WebhookConfig) -> None:
    for scope in (Scope.PCI, Scope.NAMESPACE):
        response = response_for(with_env(env_from=True), scope, config)
        assert response["allowed"] is True
        (warning,) = response["warnings"]
        assert warning.startswith("containers 'app' take variables from envFrom, which the webhook cannot read")


def test_the_inject_command_prints_the_warning_and_refuses_in_pci_scope(
    config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    pod_file = tmp_path / "pod.json"
    pod_file.write_text(json.dumps(with_env({"name": "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "value": COLLECTOR})))
    args = ["webhook", "inject", "--config", str(config_file), "--namespace", "shop", str(pod_file)]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert f"Warning: container 'app': OTEL_EXPORTER_OTLP_TRACES_ENDPOINT={COLLECTOR}: telemetry" in err
    assert main([*args, "--scope", "pci"]) == 1
    assert "is in PCI scope: container 'app': OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" in capsys.readouterr().err


def test_what_counts_as_the_sidecar() -> None:
    ports = (4317, 4318)
    assert is_the_sidecar("http://127.0.0.2:4318", ports) and is_the_sidecar("LOCALHOST:4317", ports)
    assert not is_the_sidecar("http://localhost", ports)  # port 80
    assert not is_the_sidecar("http://127.0.0.1.example.com:4318", ports)
    assert not is_the_sidecar("http://[", ports) and not is_the_sidecar("localhost", ports)
    assert not is_the_sidecar("http://10.0.0.1:4318", ports)


@pytest.mark.parametrize(("name", "value"), [
    ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://$(HOP)@127.0.0.1:4318"),  # Kubernetes expands $(HOP) first
    ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://collector.corp:4318\\@localhost:4318"),  # Node reads collector.corp
    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://user@127.0.0.1:4318"),
    ("otel_exporter_otlp_logs_endpoint", COLLECTOR),  # Java's SDK reads names in any case
    ("otel.exporter.otlp.endpoint", COLLECTOR),  # and as properties
], ids=["expanded variable", "backslash", "userinfo", "lower case", "dotted"])
def test_values_parsers_read_differently_and_other_spellings_count_as_elsewhere(
    config: WebhookConfig, name: str, value: str,
) -> None:
    """Found in a review of the check itself: each of these was taken for the sidecar, or not seen."""
    pod = with_env({"name": "HOP", "value": "collector.corp:4318/v1/traces?"}, {"name": name, "value": value})
    response = response_for(pod, Scope.PCI, config)
    assert response["allowed"] is False and f"container 'app': {name}=" in response["status"]["message"]


@pytest.mark.parametrize("host", ["0.0.0.0", "[::ffff:127.0.0.1]", "localhost.", "[::1]", "127.0.0.2"])
def test_other_spellings_of_this_host_are_the_sidecar(config: WebhookConfig, host: str) -> None:
    pod = with_env({"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": f"http://{host}:4318"})
    assert response_for(pod, Scope.PCI, config)["allowed"] is True


def test_a_pod_that_already_carries_the_sidecar_is_checked_too(config: WebhookConfig) -> None:
    """A manifest copied from an injected pod (or the API server's reinvocation) skipped the check."""
    injected = response_for(with_env(), Scope.PCI, config)
    pod = apply(with_env(), json.loads(base64.b64decode(injected["patch"])))
    assert response_for(pod, Scope.PCI, config) == {"uid": injected["uid"], "allowed": True}  # as it is
    pod["spec"]["containers"][0]["env"].append({"name": "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "value": COLLECTOR})
    response = response_for(pod, Scope.PCI, config)
    assert response["allowed"] is False
    assert "container 'app': OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=" in response["status"]["message"]
