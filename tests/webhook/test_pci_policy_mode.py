"""PCI-scope pods are only admitted with a sidecar that masks: the webhook asks the sidecar's own
config loader which policy mode the sidecar would start in, for every spelling it takes
(``SIDECAR_POLICY_MODE``, the older ``SIDECAR_POLICY_DRY_RUN`` with any true value, the --config
file), and refuses what it cannot read (``valueFrom``, ``envFrom``, another command)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from sidecar.cli import main
from sidecar.webhook.config import WebhookConfig, load_webhook_config
from sidecar.webhook.inject import Refused, Scope, decide, mode_variables
from tests.webhook.conftest import CONFIG_TOML, apply, assert_valid_pod, deployment_pod, sidecar_of

#: every true value of the loader's bool settings given by environment (configkit)
TRUE_VALUES = ["true", "1", "yes", "on", "TRUE", " Yes ", "On"]
FALSE_VALUES = ["false", "0", "no", "off", "FALSE"]


def webhook_config(tmp_path: Path, extra_env: dict[str, str], **injection: str) -> WebhookConfig:
    """The tests' webhook settings with these sidecar variables (and [injection] keys)."""
    lines = [f"extra_env = {json.dumps(extra_env)}".replace('": "', '" = "')]
    lines += [f"{key} = {json.dumps(value)}" for key, value in injection.items()]
    path = tmp_path / "webhook.toml"
    path.write_text(CONFIG_TOML.replace("[injection]\n", "[injection]\n" + "\n".join(lines) + "\n"), encoding="utf-8")
    return load_webhook_config(path, env={})


def refusal(pod: dict[str, Any], config: WebhookConfig) -> str:
    with pytest.raises(Refused) as info:
        decide(pod, "payments", Scope.PCI, config)
    return str(info.value)


def injected_in_pci(config: WebhookConfig) -> dict[str, Any]:
    pod = deployment_pod()
    decision = decide(pod, "payments", Scope.PCI, config)
    assert decision.inject, decision.reason
    result = apply(pod, decision.patch)
    assert_valid_pod(result)
    return result


def test_the_mode_variables_are_the_sidecars_own() -> None:
    assert mode_variables() == ("SIDECAR_POLICY_MODE", "SIDECAR_POLICY_DRY_RUN")


@pytest.mark.parametrize("value", TRUE_VALUES)
def test_the_older_dry_run_spelling_is_refused_in_pci_scope(tmp_path: Path, value: str) -> None:
    config = webhook_config(tmp_path, {"SIDECAR_POLICY_DRY_RUN": value})
    message = refusal(deployment_pod(), config)
    assert message.startswith("namespace payments is in PCI scope: injection.extra_env (the chart's "
                              f"sidecar.extraEnv) sets SIDECAR_POLICY_DRY_RUN={value}, which forwards card "
                              "numbers unmasked (the sidecar's policy.mode would be dry_run)"), message
    assert message.endswith("only admitted with the sidecar in enforce mode: remove SIDECAR_POLICY_DRY_RUN")
    # other namespaces still get that sidecar
    assert decide(deployment_pod(), "shop", Scope.NAMESPACE, config).inject


def test_enforce_does_not_cancel_the_older_dry_run_spelling(tmp_path: Path) -> None:
    # the loader keeps mode "dry_run" when dry_run is true and mode is left at (or set to) enforce
    config = webhook_config(tmp_path, {"SIDECAR_POLICY_MODE": "enforce", "SIDECAR_POLICY_DRY_RUN": "1"})
    message = refusal(deployment_pod(), config)
    assert "sets SIDECAR_POLICY_MODE=enforce and SIDECAR_POLICY_DRY_RUN=1, which forwards" in message


@pytest.mark.parametrize("extra_env", [{"SIDECAR_POLICY_MODE": "dry_run"},
                                       {"SIDECAR_POLICY_MODE": "dry_run", "SIDECAR_POLICY_DRY_RUN": "true"}])
def test_dry_run_mode_is_refused_in_pci_scope(tmp_path: Path, extra_env: dict[str, str]) -> None:
    message = refusal(deployment_pod(), webhook_config(tmp_path, extra_env))
    assert "SIDECAR_POLICY_MODE=dry_run" in message and "forwards card numbers unmasked" in message


@pytest.mark.parametrize("extra_env", [{}, {"SIDECAR_POLICY_MODE": "enforce"}]
                         + [{"SIDECAR_POLICY_DRY_RUN": value} for value in FALSE_VALUES])
def test_a_sidecar_that_enforces_is_injected_in_pci_scope(tmp_path: Path, extra_env: dict[str, str]) -> None:
    pod = injected_in_pci(webhook_config(tmp_path, extra_env))
    assert sidecar_of(pod)["name"] == "otlp-sidecar"
    # and the injected pod is recognised on reinvocation
    again = decide(pod, "payments", Scope.PCI, webhook_config(tmp_path, extra_env))
    assert not again.inject and again.patch == []


def test_passthrough_is_refused_in_pci_scope(config: WebhookConfig) -> None:
    # the webhook does not start with passthrough and policies; a config built around that check
    # still gets no PCI-scope pod: the sidecar would refuse it, so the pod is refused, saying why
    injection = dataclasses.replace(config.injection, extra_env={"SIDECAR_POLICY_MODE": "passthrough"})
    message = refusal(deployment_pod(), dataclasses.replace(config, injection=injection))
    assert "configuration it refuses to start with (policy.mode: is 'passthrough'" in message
    # with bundles instead of a policy set, the same
    bundled = dataclasses.replace(injection, bundles=["pci=https://bundles.example/pci.tar.gz"])
    message = refusal(deployment_pod(), dataclasses.replace(config, injection=bundled, policy_sets={}))
    assert "policy.mode: is 'passthrough'" in message


def test_the_sidecar_config_file_is_read_as_the_sidecar_reads_it(tmp_path: Path) -> None:
    sidecar_toml = tmp_path / "sidecar.toml"
    sidecar_toml.write_text("[policy]\ndry_run = true\n", encoding="utf-8")
    config = webhook_config(tmp_path, {}, sidecar_config_file=str(sidecar_toml))
    message = refusal(deployment_pod(), config)
    assert f"injection.sidecar_config_file {sidecar_toml} sets [policy] mode or dry_run" in message
    assert message.endswith('mode would be dry_run); PCI-scope pods are only admitted with the sidecar in '
                            'enforce mode: set mode = "enforce" there'), message

    sidecar_toml.write_text('[policy]\nmode = "enforce"\n', encoding="utf-8")
    injected_in_pci(config)

    missing = webhook_config(tmp_path, {}, sidecar_config_file=str(tmp_path / "not-here.toml"))
    message = refusal(deployment_pod(), missing)
    assert "injection.sidecar_config_file: the webhook cannot read it (file not found:" in message


# -- the sidecar a pod already carries (reinvocation, a pod re-created from an injected one) ---------


def with_sidecar_env(pod: dict[str, Any], *items: dict[str, Any], **fields: Any) -> dict[str, Any]:
    sidecar = sidecar_of(pod)
    sidecar["env"] = [*sidecar["env"], *items]
    sidecar.update(fields)
    return pod


@pytest.mark.parametrize("variable", ["SIDECAR_POLICY_MODE", "SIDECAR_POLICY_DRY_RUN"])
@pytest.mark.parametrize("source", [{"configMapKeyRef": {"name": "sidecar-settings", "key": "mode"}},
                                    {"secretKeyRef": {"name": "sidecar-settings", "key": "mode"}}],
                         ids=["configmap", "secret"])
def test_a_mode_variable_from_value_from_is_refused(
    config: WebhookConfig, variable: str, source: dict[str, Any],
) -> None:
    pod = with_sidecar_env(injected_in_pci(config), {"name": variable, "valueFrom": source})
    message = refusal(pod, config)
    assert (f"the pod's otlp-sidecar container takes {variable} from valueFrom (a ConfigMap, Secret or field "
            "the webhook cannot read)") in message
    assert message.endswith(f"set {variable} to a value or remove it")
    # outside PCI scope the pod is left alone as before
    assert not decide(pod, "shop", Scope.NAMESPACE, config).inject


def test_other_variables_from_value_from_are_fine(config: WebhookConfig) -> None:
    item = {"name": "SIDECAR_LOG_LEVEL", "valueFrom": {"configMapKeyRef": {"name": "s", "key": "level"}}}
    pod = with_sidecar_env(injected_in_pci(config), item)
    assert not decide(pod, "payments", Scope.PCI, config).inject


def test_env_from_on_the_sidecar_is_refused(config: WebhookConfig) -> None:
    pod = with_sidecar_env(injected_in_pci(config), envFrom=[{"configMapRef": {"name": "sidecar-settings"}}])
    message = refusal(pod, config)
    assert "takes variables from envFrom" in message and "SIDECAR_POLICY_MODE or SIDECAR_POLICY_DRY_RUN" in message


@pytest.mark.parametrize("item", [{"name": "SIDECAR_POLICY_DRY_RUN", "value": "yes"},
                                  {"name": "SIDECAR_POLICY_MODE", "value": "dry_run"}])
def test_a_carried_sidecar_set_to_dry_run_is_refused(config: WebhookConfig, item: dict[str, str]) -> None:
    pod = with_sidecar_env(injected_in_pci(config), item)
    message = refusal(pod, config)
    assert f"the pod's otlp-sidecar container sets {item['name']}={item['value']}, which forwards" in message


def test_a_carried_sidecar_in_passthrough_is_refused(config: WebhookConfig) -> None:
    pod = injected_in_pci(config)
    sidecar = sidecar_of(pod)
    sidecar["env"] = [e for e in sidecar["env"] if e["name"] != "SIDECAR_POLICY_DIR"]
    sidecar["env"].append({"name": "SIDECAR_POLICY_MODE", "value": "passthrough"})
    message = refusal(pod, config)
    assert "sets SIDECAR_POLICY_MODE=passthrough, which forwards card numbers unmasked (the sidecar's " \
           "policy.mode would be passthrough)" in message


@pytest.mark.parametrize(("fields", "message"), [
    ({"args": ["--config", "/etc/settings/sidecar.toml"]}, "runs with --config /etc/settings/sidecar.toml"),
    ({"command": ["sh", "-c", "SIDECAR_POLICY_MODE=dry_run otlp-sidecar run"]}, "not the command the webhook"),
    ({"command": None}, "runs its image's entrypoint, not the command"),
], ids=["own-config-file", "shell", "entrypoint"])
def test_a_carried_sidecar_with_another_command_is_refused(
    config: WebhookConfig, fields: dict[str, Any], message: str,
) -> None:
    pod = with_sidecar_env(injected_in_pci(config), **fields)
    assert message in refusal(pod, config)


def test_inject_command_refuses_the_older_dry_run_spelling(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    # the review's reproduction: `webhook inject --scope pci` printed "injected (pci scope)", exit 0
    webhook_config(tmp_path, {"SIDECAR_POLICY_DRY_RUN": "true"})
    pod_file = tmp_path / "pod.json"
    pod_file.write_text(json.dumps(deployment_pod()), encoding="utf-8")
    code = main(["webhook", "inject", "--config", str(tmp_path / "webhook.toml"), "--scope", "pci",
                 "--namespace", "payments", str(pod_file)])
    out, err = capsys.readouterr()
    assert code == 1 and out == ""
    assert "SIDECAR_POLICY_DRY_RUN=true, which forwards card numbers unmasked" in err


def test_the_chart_with_the_older_dry_run_spelling(tmp_path: Path) -> None:
    helm_python = pytest.importorskip("helm_python")
    from tests.helm.checks import webhook_toml
    from tests.helm.conftest import CHART_DIR, render_chart

    # `--set sidecar.extraEnv.SIDECAR_POLICY_DRY_RUN=true` gives the boolean true
    with helm_python.Chart.load(CHART_DIR) as chart:
        objects = render_chart(chart, {"sidecar": {"extraEnv": {"SIDECAR_POLICY_DRY_RUN": True}}})
    path = tmp_path / "webhook.toml"
    path.write_text(webhook_toml(objects), encoding="utf-8")
    config = load_webhook_config(path, env={})
    assert "SIDECAR_POLICY_DRY_RUN=true, which forwards card numbers unmasked" in refusal(deployment_pod(), config)
    assert decide(deployment_pod(), "shop", Scope.NAMESPACE, config).inject
