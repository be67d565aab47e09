"""The chart rendered by the real Helm engine, for the defaults and each documented option.

Every object of a core kind is validated against the Kubernetes 1.29 OpenAPI schema
(strict: unknown fields fail) with kubernetes-validate. The CRD objects
(ServiceMonitor, PodMonitor, PrometheusRule, cert-manager Issuer and Certificate) are
not in those schemas: their structure is checked here field by field instead.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import helm_python
import pytest

from sidecar.cli import build_parser
from sidecar.webhook.config import load_webhook_config
from sidecar.webhook.inject import Scope, decide
from tests.helm.checks import selects, validate_all, webhook_toml
from tests.helm.conftest import CHART_DIR, NAMESPACE
from tests.webhook.conftest import apply, assert_valid_pod, deployment_pod, env_of, sidecar_of

#: one entry per documented option (docs/kubernetes.md); each must render valid objects
OPTIONS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "cert-manager, self-signed CA": {"webhook": {"tls": {"certManager": {"enabled": True}}}},
    "cert-manager, existing issuer": {
        "webhook": {
            "tls": {
                "certManager": {
                    "enabled": True,
                    "issuerRef": {"name": "corp-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"},
                }
            }
        }
    },
    "container mode": {"injection": {"mode": "container"}},
    "monitoring": {
        "metrics": {
            "serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
            "podMonitor": {"enabled": True, "labels": {"release": "prom"}},
            "prometheusRule": {"enabled": True, "labels": {"release": "prom"}},
            "grafanaDashboard": {"enabled": True, "namespace": "grafana"},
        }
    },
    "network policy": {
        "networkPolicy": {
            "enabled": True,
            "from": [
                {"ipBlock": {"cidr": "10.0.0.0/8"}},
            ],
        }
    },
    "upstream mTLS and HMAC key": {
        "upstream": {
            "endpoint": "https://collector.observability:4317",
            "protocol": "http/protobuf",
            "tls": {"secretName": "collector-client"},
        },
        "hashKey": {"secretName": "telemetry-hmac", "key": "key"},
    },
    "tenant from an annotation": {"tenant": {"label": "", "annotation": "acme.io/tenant"}},
    "policies in namespaces, extra set": {
        "policies": {
            "namespaces": ["shop", "payments"],
            "extraSets": {"strict": {"configMap": "strict-policies", "items": {"main.rego": "main.rego"}}},
        }
    },
    "policies disabled": {"policies": {"enabled": False}},
    "sampling and sidecar resources": {
        "sampling": {"ratio": 0.25},
        "sidecar": {
            "resources": {"requests": {"cpu": "20m", "memory": "32Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}},
            "extraEnv": {"SIDECAR_LOG_FORMAT": "json"},
        },
    },
    "scheduling": {
        "imagePullSecrets": [{"name": "registry"}],
        "webhook": {
            "nodeSelector": {"kubernetes.io/os": "linux"},
            "tolerations": [{"key": "infra", "operator": "Exists", "effect": "NoSchedule"}],
            "priorityClassName": "system-cluster-critical",
            "podAnnotations": {"example.com/team": "platform"},
            "podDisruptionBudget": {"enabled": False},
        },
    },
}


@pytest.mark.parametrize("option", list(OPTIONS))
def test_every_option_renders_valid_objects(render: Any, option: str, tmp_path: Path) -> None:
    objects = render(OPTIONS[option])
    validate_all(objects)

    # the webhook settings the chart renders are ones the webhook accepts, and inject a valid pod
    path = tmp_path / "webhook.toml"
    path.write_text(webhook_toml(objects), encoding="utf-8")
    config = load_webhook_config(path, env={})
    pod = deployment_pod()
    decision = decide(pod, "shop", Scope.NAMESPACE, config)
    assert_valid_pod(apply(pod, decision.patch))


def test_lint_is_clean() -> None:
    report = helm_python.lint(CHART_DIR, strict=True, kube_version="v1.29.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == []


def test_defaults_objects(render: Any) -> None:
    objects = render()
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == sorted(
        [
            "ConfigMap",
            "ConfigMap",
            "Deployment",
            "MutatingWebhookConfiguration",
            "PodDisruptionBudget",
            "Secret",
            "Secret",
            "Service",
            "ServiceAccount",
        ]
    )
    for obj in objects:
        if obj["kind"] != "MutatingWebhookConfiguration":  # cluster-scoped
            assert obj["metadata"]["namespace"] == NAMESPACE


def test_webhook_deployment_is_highly_available_and_locked_down(render: Any) -> None:
    objects = render()
    deployment = objects.one("Deployment")
    spec = deployment["spec"]
    pod = spec["template"]
    pod_labels = pod["metadata"]["labels"]

    assert spec["replicas"] == 2
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pdb = objects.one("PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert objects.one("Service")["spec"]["selector"].items() <= pod_labels.items()
    assert spec["selector"]["matchLabels"].items() <= pod_labels.items()

    container = pod["spec"]["containers"][0]
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    # the command is one the CLI knows, with the config file the ConfigMap provides
    args = build_parser().parse_args(container["command"][1:])
    assert (args.command, args.webhook_command) == ("webhook", "serve")
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert args.config == mounts["config"] + "/webhook.toml"
    config = tomllib.loads(webhook_toml(objects))
    assert config["webhook"]["cert_file"] == mounts["tls"] + "/tls.crt"
    assert config["webhook"]["listen"].endswith(f":{container['ports'][0]['containerPort']}")


def test_config_change_rolls_the_webhook_pods(render: Any) -> None:
    def checksum(values: dict[str, Any]) -> str:
        deployment = render(values).one("Deployment")
        return deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    assert checksum({}) == checksum({})
    assert checksum({}) != checksum({"injection": {"mode": "container"}})


def test_webhook_entries_selectors_and_failure_policies(render: Any) -> None:
    config = render().one("MutatingWebhookConfiguration")
    hooks = {h["name"]: h for h in config["webhooks"]}
    assert set(hooks) == {
        "pod.inject.otlp-sidecar.io",
        "namespace.inject.otlp-sidecar.io",
        "pci.inject.otlp-sidecar.io",
    }
    pod, ns, pci = (hooks[f"{n}.inject.otlp-sidecar.io"] for n in ("pod", "namespace", "pci"))

    assert (pod["failurePolicy"], ns["failurePolicy"], pci["failurePolicy"]) == ("Ignore", "Ignore", "Fail")
    assert (
        pod["clientConfig"]["service"]["path"],
        ns["clientConfig"]["service"]["path"],
        pci["clientConfig"]["service"]["path"],
    ) == ("/mutate", "/mutate/namespace", "/mutate/pci")
    for hook in hooks.values():
        assert hook["reinvocationPolicy"] == "IfNeeded"
        assert hook["sideEffects"] == "None"
        assert hook["rules"] == [
            {
                "operations": ["CREATE"],
                "apiGroups": [""],
                "apiVersions": ["v1"],
                "resources": ["pods"],
                "scope": "Namespaced",
            }
        ]
        excluded = hook["namespaceSelector"]["matchExpressions"][0]
        assert excluded["key"] == "kubernetes.io/metadata.name" and excluded["operator"] == "NotIn"
        # the webhook's own namespace and the system namespaces are never sent
        assert {NAMESPACE, "kube-system", "kube-public", "kube-node-lease"} <= set(excluded["values"])
    # a namespace reaches exactly one entry: labelled, PCI, or neither
    for labels, expected in [
        ({}, "pod"),
        ({"otlp-sidecar.io/inject": "enabled"}, "namespace"),
        ({"otlp-sidecar.io/pci-scope": "true"}, "pci"),
        ({"otlp-sidecar.io/pci-scope": "true", "otlp-sidecar.io/inject": "enabled"}, "pci"),
    ]:
        labels = {"kubernetes.io/metadata.name": "shop", **labels}
        matched = [n.split(".")[0] for n, h in hooks.items() if selects(h["namespaceSelector"], labels)]
        assert matched == [expected], labels
    # a pod labelled inject=false is filtered out before the call, except in PCI scope
    assert not selects(pod["objectSelector"], {"otlp-sidecar.io/inject": "false"})
    assert selects(pci["objectSelector"], {"otlp-sidecar.io/inject": "false"})
    expression = pod["matchConditions"][0]["expression"]
    assert expression.count("otlp-sidecar.io/inject") == 2
    # every value but "false" is sent: the webhook refuses "yes" with a message (tests/webhook),
    # where a CEL comparison with "true" left such a pod without the sidecar in silence
    assert expression.endswith(".lowerAscii() != 'false'"), expression
    assert "matchConditions" not in ns and "matchConditions" not in pci


def test_pci_failure_policy_stays_fail_when_the_default_is_changed(render: Any) -> None:
    config = render({"webhook": {"failurePolicy": "Fail"}}).one("MutatingWebhookConfiguration")
    assert {h["failurePolicy"] for h in config["webhooks"]} == {"Fail"}


def test_injected_pod_from_the_rendered_settings(render: Any, tmp_path: Path) -> None:
    values = OPTIONS["upstream mTLS and HMAC key"] | {"tenant": {"label": "team"}}
    path = tmp_path / "webhook.toml"
    path.write_text(webhook_toml(render(values)), encoding="utf-8")
    config = load_webhook_config(path, env={})
    pod = deployment_pod()
    injected = apply(pod, decide(pod, "shop", Scope.NAMESPACE, config).patch)
    sidecar = sidecar_of(injected)
    env = env_of(sidecar)

    assert sidecar["image"] == "ghcr.io/otlp-sidecar/otlp-sidecar:0.1.0"
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "https://collector.observability:4317"
    assert env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "http/protobuf"
    assert env["SIDECAR_POLICY_HASH_KEY_FILE"] == "/etc/otlp-sidecar/hash-key/key"
    assert env["SIDECAR_TENANT"] == {"fieldRef": {"fieldPath": "metadata.labels['team']"}}
    assert env["SIDECAR_LOG_LEVEL"] == "info"
    volumes = {v["name"]: v for v in injected["spec"]["volumes"]}
    assert volumes["otlp-sidecar-mtls"]["secret"]["secretName"] == "collector-client"
    assert volumes["otlp-sidecar-policies"]["configMap"]["name"] == "obs-otlp-sidecar-policies"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"injection": {"mode": "sidecar"}}, "at '/injection/mode': value must be one of 'native', 'container'"),
        ({"sampling": {"ratio": 2}}, "at '/sampling/ratio': maximum: got 2, want 1"),
        ({"webhook": {"failurePolicy": "Maybe"}}, "at '/webhook/failurePolicy'"),
        ({"upstream": {"protocol": "http/json"}}, "at '/upstream/protocol'"),
        ({"policies": {"extraSets": {"strict": {"items": {}}}}}, "missing property 'configMap'"),
    ],
)
def test_wrong_values_are_refused_with_the_key(chart: helm_python.Chart, values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm_python.HelmValuesError) as caught:
        chart.render(values, name="obs", namespace=NAMESPACE)
    assert message in str(caught.value)


def test_notes_tell_how_to_inject(chart: helm_python.Chart) -> None:
    notes = chart.render({"policies": {"namespaces": ["shop"]}}, name="obs", namespace=NAMESPACE)[
        "otlp-sidecar/templates/NOTES.txt"
    ]
    assert 'otlp-sidecar.io/inject: "true"' in notes
    assert "otlp-sidecar.io/pci-scope=true" in notes
    assert "rendered in observability, shop" in notes


def test_notes_warn_when_no_upstream_is_set(chart: helm_python.Chart) -> None:
    """The default values start, with the debug exporter: the notes say the telemetry then goes
    to the pods' logs, and stop saying so once an upstream is set."""
    notes = chart.render({}, name="obs", namespace=NAMESPACE)["otlp-sidecar/templates/NOTES.txt"]
    assert "WARNING: no upstream.endpoint: injected sidecars forward nothing" in notes
    values = {"upstream": {"endpoint": "https://collector.observability:4317"}}
    notes = chart.render(values, name="obs", namespace=NAMESPACE)["otlp-sidecar/templates/NOTES.txt"]
    assert "no upstream.endpoint" not in notes


def test_probe_paths_reach_the_webhook_settings(render: Any) -> None:
    toml = tomllib.loads(webhook_toml(render({"sidecar": {"probes": {"readinessPath": "/health"}}})))
    assert toml["injection"]["readiness_path"] == "/health"
    assert toml["injection"]["startup_path"] == "/ready"


def test_extra_policy_set_is_selectable_per_pod(render: Any, tmp_path: Path) -> None:
    values = {
        "policies": {"extraSets": {"strict": {"configMap": "strict-policies", "items": {"main.rego": "main.rego"}}}}
    }
    path = tmp_path / "webhook.toml"
    path.write_text(webhook_toml(render(values)), encoding="utf-8")
    config = load_webhook_config(path, env={})
    pod = deployment_pod(**{"otlp-sidecar.io/policy": "strict"})
    injected = apply(pod, decide(pod, "shop", Scope.NAMESPACE, config).patch)
    volume = next(v for v in injected["spec"]["volumes"] if v["name"] == "otlp-sidecar-policies")
    assert volume["configMap"] == {"name": "strict-policies", "items": [{"key": "main.rego", "path": "main.rego"}]}
    assert sorted(config.policy_sets) == ["default", "strict"]
