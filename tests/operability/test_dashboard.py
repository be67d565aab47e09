"""The Grafana dashboard as an operator opens it: a panel for each thing the sidecar does, and every
panel's query valid PromQL (promtool parses each one). That the metrics behind them exist in a live
scrape is checked in test_live_metrics."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from tests.operability.monitoring import metric_names, promtool, render_monitoring

#: what an operator looks for -> a metric a panel must query for it
TOPICS = {
    "masking actions per rule": "otlp_sidecar_policy_rule_actions_total",
    "sampling kept / dropped": "otlp_sidecar_processor_sampled_out_items_total",
    "refusals by reason": "otlp_sidecar_receiver_refused_items_total",
    "protective actions (overload)": "otlp_sidecar_overload_actions_total",
    "export latency": "otlp_sidecar_exporter_request_duration_seconds_bucket",
    "receive latency": "otlp_sidecar_receiver_request_duration_seconds_bucket",
    "export queue": "otlp_sidecar_queue_size_bytes",
    "export queue items": "otlp_sidecar_queue_size_items",
    "export failures": "otlp_sidecar_exporter_failed_items_total",
    "circuit": "otlp_sidecar_exporter_circuit_state",
    "CPU": "process_cpu_seconds_total",
    "memory": "process_resident_memory_bytes",
    "file descriptors": "process_open_fds",
    "policy mode": "otlp_sidecar_policy_mode",
    "event loop lag": "otlp_sidecar_event_loop_lag_seconds_bucket",
}


def test_a_panel_for_each_topic() -> None:
    _, dashboard = render_monitoring()
    queried = {
        metric: panel["title"]
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for metric in metric_names(target["expr"])
    }
    missing = {topic: metric for topic, metric in TOPICS.items() if metric not in queried}
    assert not missing, missing
    # the sampling panel shows both sides; the refusals panel names reasons
    sampling = next(p for p in dashboard["panels"] if p["title"].startswith("Sampling"))
    assert {t["legendFormat"].split()[0] for t in sampling["targets"]} == {"kept", "dropped"}
    rules = next(p for p in dashboard["panels"] if p["title"].startswith("Masking"))
    assert "rule_id" in rules["targets"][0]["expr"] and "{{rule_id}}" in rules["targets"][0]["legendFormat"]
    # the process panels take the sidecar's own process, not the app's beside it in the pod
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            if any(m.startswith("process_") for m in metric_names(target["expr"])):
                assert "and on (job, instance) otlp_sidecar_build_info" in target["expr"], panel["title"]


def test_every_panel_query_is_valid_promql(tmp_path: Path) -> None:
    _, dashboard = render_monitoring()
    rules = []
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = (target["expr"].replace("$__rate_interval", "5m")
                    .replace("$namespace", ".*").replace("$pod", ".*"))
            rules.append({"record": f"panel_{panel['id']}_{target['refId']}", "expr": expr})
    path = tmp_path / "panels.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}))
    result = subprocess.run([str(promtool()), "check", "rules", str(path)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(rules)} rules found" in result.stdout
