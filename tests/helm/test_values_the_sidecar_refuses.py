"""Chart values that every injected sidecar would refuse at its start (so, in native mode, no
injected pod would ever start) are refused once, where the operator sees it: by the webhook when
it loads the settings the chart rendered (the real Helm engine renders them here). A policy
mode that forwards card numbers unmasked is refused for PCI-scope pods at admission."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sidecar.config import ConfigError
from sidecar.webhook.config import load_webhook_config
from sidecar.webhook.inject import Refused, Scope, decide
from tests.helm.checks import webhook_toml
from tests.webhook.conftest import deployment_pod


def webhook_settings(render: Any, values: dict[str, Any], tmp_path: Path) -> Path:
    path = tmp_path / "webhook.toml"
    path.write_text(webhook_toml(render(values)), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"upstream": {"endpoint": "http://127.0.0.1:4318", "protocol": "http/protobuf"}},
         "is this sidecar's own listener receivers.http_endpoint = 127.0.0.1:4318"),
        ({"upstream": {"endpoint": "localhost:4317", "insecure": True}}, "would export to itself"),
        ({"sidecar": {"extraEnv": {"SIDECAR_POLICY_MODE": "passthrough"}}}, "policy"),
        ({"sidecar": {"extraEnv": {"OTEL_EXPORTER_OTLP_COMPRESSION": "brotli"}}},
         "exporter.compression (from OTEL_EXPORTER_OTLP_COMPRESSION)"),
    ],
    ids=["upstream-is-its-own-http-port", "upstream-is-its-own-grpc-port", "passthrough-with-policies",
         "bad-otel-variable"],
)
def test_values_every_sidecar_would_refuse_stop_the_webhook(
    render: Any, tmp_path: Path, values: dict[str, Any], message: str,
) -> None:
    with pytest.raises(ConfigError) as info:
        load_webhook_config(webhook_settings(render, values, tmp_path), env={})
    text = str(info.value)
    assert text.startswith("injection: every injected sidecar would refuse to start: "), text
    assert message in text, text


def test_the_chart_defaults_and_a_real_upstream_pass(render: Any, tmp_path: Path) -> None:
    load_webhook_config(webhook_settings(render, {}, tmp_path), env={})
    values = {"upstream": {"endpoint": "https://collector.observability:4317"}}
    load_webhook_config(webhook_settings(render, values, tmp_path), env={})


def test_dry_run_is_refused_in_pci_scope_only(render: Any, tmp_path: Path) -> None:
    values = {"sidecar": {"extraEnv": {"SIDECAR_POLICY_MODE": "dry_run"}}}
    config = load_webhook_config(webhook_settings(render, values, tmp_path), env={})
    pod = deployment_pod()
    with pytest.raises(Refused) as info:
        decide(pod, "payments", Scope.PCI, config)
    assert "SIDECAR_POLICY_MODE=dry_run, which forwards card numbers unmasked" in str(info.value)
    assert decide(pod, "shop", Scope.NAMESPACE, config).inject
