"""The webhook's settings file, its errors, and the `otlp-sidecar webhook` commands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sidecar.cli import main
from sidecar.configkit import ConfigError
from sidecar.webhook import review as review_module
from sidecar.webhook.config import WebhookConfig, load_webhook_config
from sidecar.webhook.inject import Scope
from tests.webhook.conftest import admission_review, assert_valid_pod, deployment_pod


def test_the_settings_file_is_read(config: WebhookConfig) -> None:
    assert config.injection.image == "registry.example/otlp-sidecar:1.2.3"
    assert config.injection.mode == "native"
    assert config.policy_sets["default"].items["pci__pci.rego"] == "pci/pci.rego"
    assert config.policy_sets["strict"].items == {}


def test_environment_overrides_a_key(config_file: Path) -> None:
    config = load_webhook_config(config_file, env={"SIDECAR_INJECTION_MODE": "container"})
    assert config.injection.mode == "container"


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (
            '[injection]\nmode = "sidecar"\n',
            "injection.mode: 'sidecar' is not allowed; choose one of 'native', 'container'",
        ),
        ("[injection]\ncolour = 1\n", "injection.colour: unknown key"),
        ("[sidecar]\n", "sidecar: unknown section"),
        ('[injection]\ncpu_request = "lots"\n', "injection.cpu_request: 'lots' is not a Kubernetes quantity"),
        (
            '[injection]\ndisk_queue_size_limit = "500m"\n',
            "injection.disk_queue_size_limit: '500m' is not a Kubernetes storage quantity",
        ),
        (
            '[injection]\ndisk_queue_size_limit = "1Mi"\n',
            "injection.disk_queue_size_limit: '1Mi' is too small for a disk queue (at least 2Mi)",
        ),
        (
            '[injection]\nephemeral_storage_limit = "lots"\n',
            "injection.ephemeral_storage_limit: 'lots' is not a Kubernetes quantity",
        ),
        (
            '[injection]\nmemory_request = "1Gi"\n',
            "injection.memory_request: 1Gi is more than memory_limit 256Mi: Kubernetes would refuse every",
        ),
        (
            '[injection]\nephemeral_storage_request = "2G"\nephemeral_storage_limit = "1Gi"\n',
            "injection.ephemeral_storage_request: 2G is more than ephemeral_storage_limit 1Gi",
        ),
        (
            '[injection]\ntenant_label = "a"\ntenant_annotation = "b"\n',
            "injection.tenant_annotation: set tenant_label or tenant_annotation, not both",
        ),
        ('[policy_sets.default]\nitems = { a = "a" }\n', "policy_sets.default.config_map: is required"),
        (
            '[policy_sets.default]\nconfig_map = "p"\nitems = { a = "../etc/passwd" }\n',
            "policy_sets.default.items.a: '../etc/passwd' must be a relative path",
        ),
        ('[policy_sets.Big]\nconfig_map = "p"\n', "policy_sets.Big: a set name is lowercase"),
        (
            '[policy_sets.strict]\nconfig_map = "p"\n',
            "injection.default_policy_set: 'default' is not a policy set; the sets are: strict",
        ),
        ('[webhook]\nlisten = "8443"\n', "webhook.listen: must be host:port"),
        ("[webhook\n", "is not valid TOML"),
    ],
)
def test_wrong_settings_name_the_key(tmp_path: Path, toml: str, message: str) -> None:
    path = tmp_path / "webhook.toml"
    path.write_text(toml, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_webhook_config(path, env={})
    assert message in str(caught.value)


def test_inject_command_prints_the_injected_pod(
    config_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    pod_file = tmp_path / "pod.json"
    pod_file.write_text(json.dumps(deployment_pod()), encoding="utf-8")
    code = main(["webhook", "inject", "--config", str(config_file), "--namespace", "shop", str(pod_file)])
    out, err = capsys.readouterr()

    assert code == 0
    assert "injected (namespace scope)" in err
    pod = json.loads(out)
    assert_valid_pod(pod)
    assert pod["spec"]["initContainers"][0]["name"] == "otlp-sidecar"


def test_inject_command_explains_a_refusal(
    config_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    pod_file = tmp_path / "pod.json"
    pod_file.write_text(json.dumps(deployment_pod(**{"otlp-sidecar.io/inject": "false"})), encoding="utf-8")
    code = main(["webhook", "inject", "--config", str(config_file), "--scope", "pci", str(pod_file)])
    assert code == 1
    assert "is in PCI scope" in capsys.readouterr().err


def test_inject_command_takes_the_namespace_the_manifest_names(
    config_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A new user's walk: the pod's own metadata.namespace was ignored ("namespace default is in
    PCI scope" for a pod of namespace shop); --namespace still wins."""
    pod = deployment_pod(**{"otlp-sidecar.io/inject": "false"})
    pod["metadata"]["namespace"] = "shop"
    pod_file = tmp_path / "pod.json"
    pod_file.write_text(json.dumps(pod), encoding="utf-8")
    assert main(["webhook", "inject", "--config", str(config_file), "--scope", "pci", str(pod_file)]) == 1
    assert "namespace shop is in PCI scope" in capsys.readouterr().err
    args = ["webhook", "inject", "--config", str(config_file), "--scope", "pci", "--namespace", "pay", str(pod_file)]
    assert main(args) == 1
    assert "namespace pay is in PCI scope" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["webhook", "inject", "/nonexistent/pod.json"], "cannot read /nonexistent/pod.json"),
        (["webhook", "inject", "--config", "/nonexistent.toml", "-"], "file not found: /nonexistent.toml"),
        (["webhook", "serve", "--config", "/nonexistent.toml"], "configuration error"),
    ],
)
def test_commands_report_bad_input_without_a_traceback(
    args: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_serve_reports_a_missing_certificate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "webhook.toml"
    path.write_text(
        f'[webhook]\nlisten = "127.0.0.1:0"\ncert_file = "{tmp_path}/none.crt"\nkey_file = "{tmp_path}/none.key"\n',
        encoding="utf-8",
    )
    assert main(["webhook", "serve", "--config", str(path)]) == 1
    assert "cannot serve" in capsys.readouterr().err


def test_config_docs_lists_every_setting(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["webhook", "config-docs"]) == 0
    out = capsys.readouterr().out
    for key in ("`listen`", "`mode`", "`tenant_label`", "`mtls_secret`", "`config_map`", "`items`"):
        assert key in out


@pytest.mark.parametrize(("scope", "allowed"), [(Scope.POD, True), (Scope.PCI, False)])
def test_an_internal_error_follows_the_scope_failure_policy(
    config: WebhookConfig,
    monkeypatch: pytest.MonkeyPatch,
    scope: Scope,
    allowed: bool,
) -> None:
    # A defect cannot be produced on purpose from outside: this replaces the decision with
    # one that raises, to check that the server answers instead of failing.
    def broken(*_: Any) -> None:
        raise KeyError("defect")

    monkeypatch.setattr(review_module, "decide", broken)
    body = json.dumps(admission_review(deployment_pod())).encode()
    status, answer, outcome = review_module.review(body, scope, config)

    assert status == 200 and outcome.result == "error"
    assert answer["response"]["allowed"] is allowed
    if allowed:
        assert "runs without the sidecar" in answer["response"]["warnings"][0]
    else:
        assert answer["response"]["status"]["code"] == 500
