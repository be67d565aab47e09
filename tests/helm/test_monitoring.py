"""ServiceMonitor, PodMonitor, PrometheusRule, the Grafana dashboard and the NetworkPolicy.

The prometheus-operator CRDs are not in the Kubernetes schemas, so their structure is
checked here; every metric an alert or a panel uses must be one the sidecar or the
webhook exports.
"""

from __future__ import annotations

import json
import re
from typing import Any

from sidecar.metrickit import Kind, catalogue
from sidecar.webhook.inject import ADMIN_PORT_NAME, LABEL_INJECTED
from tests.helm.checks import selects

MONITORING = {
    "metrics": {
        "serviceMonitor": {"enabled": True},
        "podMonitor": {"enabled": True},
        "prometheusRule": {"enabled": True, "queueFullRatio": 0.9, "certExpiryDays": 14},
        "grafanaDashboard": {"enabled": True},
    }
}

_METRIC = re.compile(r"\b((?:otlp_sidecar|process)_[a-z0-9_]+)\b")


def exported_metrics() -> set[str]:
    """Every series name the sidecar and the webhook expose (counters as <name>_total), from the
    metric catalogue (tests/metrics/test_catalogue.py: the code registers exactly these)."""
    names: set[str] = set()
    for metric in catalogue():
        suffixes = ["_bucket", "_sum", "_count"] if metric.kind is Kind.histogram else [""]
        names.update(metric.exposed + suffix for suffix in suffixes)
    return names


def test_alerts_cover_the_failure_modes(render: Any) -> None:
    rule = render(MONITORING).one("PrometheusRule")
    rules = [r for group in rule["spec"]["groups"] for r in group["rules"] if "alert" in r]
    by_name = {r["alert"]: r for r in rules}

    assert set(by_name) >= {
        "OtlpSidecarHighRefusalRate",
        "OtlpSidecarExportFailures",
        "OtlpSidecarQueueNearlyFull",
        "OtlpSidecarCircuitOpen",
        "OtlpSidecarClientCertificateExpiring",
        "OtlpSidecarPolicyReloadFailing",
        "OtlpSidecarWebhookErrors",
    }
    known = exported_metrics()
    for alert in rules:
        assert alert["labels"]["severity"] in {"info", "warning", "critical"}
        assert alert["annotations"]["summary"] and alert["annotations"]["description"]
        assert re.fullmatch(r"\d+[smh]", alert["for"])
        expr = alert["expr"]
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}")
        used = set(_METRIC.findall(expr))
        assert used and used <= known, f"{alert['alert']} uses unknown metrics {used - known}"
    # thresholds come from the values
    assert "> 0.9" in by_name["OtlpSidecarQueueNearlyFull"]["expr"]
    assert "< 1209600" in by_name["OtlpSidecarClientCertificateExpiring"]["expr"]
    assert "== 2" in by_name["OtlpSidecarCircuitOpen"]["expr"]  # 2 = open


def test_service_monitor_scrapes_the_webhook_service(render: Any) -> None:
    objects = render(MONITORING)
    monitor = objects.one("ServiceMonitor")
    service = objects.one("Service")
    endpoint = monitor["spec"]["endpoints"][0]

    assert selects(monitor["spec"]["selector"], service["metadata"]["labels"])
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["scheme"] == "https" and endpoint["path"] == "/metrics"
    ca = endpoint["tlsConfig"]["ca"]["secret"]
    secret = objects.one("Secret", ca["name"])  # the webhook's TLS Secret
    assert ca["key"] in secret["data"] and secret["type"] == "kubernetes.io/tls"


def test_pod_monitor_finds_injected_sidecars(render: Any) -> None:
    monitor = render(MONITORING).one("PodMonitor")
    assert monitor["spec"]["selector"] == {"matchLabels": {LABEL_INJECTED: "true"}}
    assert monitor["spec"]["namespaceSelector"] == {"any": True}
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == ADMIN_PORT_NAME
    assert monitor["spec"]["podMetricsEndpoints"][0]["path"] == "/metrics"


def test_grafana_dashboard(render: Any) -> None:
    objects = render(MONITORING)
    configmap = next(c for c in objects.of_kind("ConfigMap") if c["metadata"]["name"].endswith("-dashboard"))
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(configmap["data"]["otlp-sidecar.json"])
    panels = dashboard["panels"]

    assert dashboard["uid"] == "otlp-sidecar" and len(panels) >= 6
    assert len({p["id"] for p in panels}) == len(panels)
    known = exported_metrics()
    for panel in panels:
        for target in panel["targets"]:
            used = set(_METRIC.findall(target["expr"]))
            assert used and used <= known, f"{panel['title']} uses unknown metrics {used - known}"
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "namespace", "pod"} <= variables

    moved = render({"metrics": {"grafanaDashboard": {"enabled": True, "namespace": "grafana"}}})
    assert (
        next(c for c in moved.of_kind("ConfigMap") if c["metadata"]["name"].endswith("-dashboard"))["metadata"][
            "namespace"
        ]
        == "grafana"
    )


def test_monitoring_is_off_by_default(render: Any) -> None:
    objects = render()
    for kind in ("ServiceMonitor", "PodMonitor", "PrometheusRule", "NetworkPolicy"):
        assert objects.of_kind(kind) == []


def test_network_policy_admits_only_https_to_the_webhook(render: Any) -> None:
    peers = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    objects = render({"networkPolicy": {"enabled": True, "from": peers}})
    policy = objects.one("NetworkPolicy")
    pod_labels = objects.one("Deployment")["spec"]["template"]["metadata"]["labels"]

    assert selects(policy["spec"]["podSelector"], pod_labels)
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert policy["spec"]["ingress"] == [{"ports": [{"port": "https", "protocol": "TCP"}], "from": peers}]
    assert policy["spec"]["egress"] == []
