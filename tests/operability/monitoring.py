"""The chart's monitoring objects, rendered with the real Helm engine, and the metric names they query."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import helm_python
import pytest

from tests.helm.conftest import CHART_DIR, render_chart
from tests.peers import required

#: values that turn every monitoring object on (the Collector names too)
MONITORING = {
    "metrics": {
        "prometheusRule": {"enabled": True, "collectorMetricNames": True},
        "grafanaDashboard": {"enabled": True},
    }
}

#: a metric name in a PromQL expression (ours, and the standard process_* ones)
_NAME = re.compile(r"\b((?:otlp_sidecar|process)_[a-z0-9_]+)\b")
#: series the webhook process exposes (its own Deployment), not the sidecar
WEBHOOK_PREFIX = "otlp_sidecar_webhook_"


def render_monitoring(values: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the PrometheusRule's spec, the Grafana dashboard) as Helm renders them."""
    with helm_python.Chart.load(CHART_DIR) as chart:
        objects = render_chart(chart, values or MONITORING)
    rule = objects.one("PrometheusRule")
    configmap = next(c for c in objects.of_kind("ConfigMap") if c["metadata"]["name"].endswith("-dashboard"))
    dashboard = json.loads(next(iter(configmap["data"].values())))
    return rule["spec"], dashboard


def metric_names(expr: str) -> set[str]:
    return set(_NAME.findall(expr))


def queried_metrics(spec: dict[str, Any], dashboard: dict[str, Any]) -> dict[str, set[str]]:
    """Every metric each alert, recording rule and panel queries: {"alert X": {...}, "panel Y": {...}}."""
    used: dict[str, set[str]] = {}
    for group in spec["groups"]:
        for rule in group["rules"]:
            name = f"alert {rule['alert']}" if "alert" in rule else f"record {rule['record']}"
            used[name] = metric_names(rule["expr"])
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            used.setdefault(f"panel {panel['title']}", set()).update(metric_names(target["expr"]))
    return used


def promtool() -> Path:
    """promtool (Debian's ``prometheus`` package: ``make tools``); fails under OTLP_SIDECAR_REQUIRE_PEERS=1."""
    found = shutil.which("promtool")
    if found:
        return Path(found)
    message = "promtool is not installed: run `make tools` (apt-get install prometheus)"
    if required():
        pytest.fail(message + " [OTLP_SIDECAR_REQUIRE_PEERS=1]", pytrace=False)
    pytest.skip(message)


POD = {"namespace": "shop", "pod": "checkout-7d9", "job": "shop/otlp-sidecar", "instance": "10.0.0.7:13133"}


def pod_alert(severity: str, summary: str, description: str, **labels: str) -> dict[str, Any]:
    return {
        "exp_labels": {"severity": severity, "namespace": POD["namespace"], "pod": POD["pod"], **labels},
        "exp_annotations": {"summary": summary, "description": description},
    }


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(promtool()), *args], capture_output=True, text=True, timeout=60, check=False)
