"""Every alert of the chart's PrometheusRule, run by ``promtool test rules``: it fires in its case and
stays quiet otherwise.

The rules are the ones Helm renders (the real engine), written out as a Prometheus rule file. The
input series of each case start at zero with exactly the labels a sidecar exposes from its start
(checked against a fresh metrics registry below): an alert over a series that only appeared at its
first event would miss that event (``rate()`` needs two samples), which is what issue 17 found.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar.export.config import ExporterConfig
from sidecar.export.debug import DebugExporter
from sidecar.export.queue import ExportQueue
from sidecar.export.sender import Sender
from sidecar.metrics import SidecarMetrics
from sidecar.policy.metrics import PolicyMetrics
from sidecar.webhook.metrics import WebhookMetrics
from tests.operability.monitoring import POD, pod_alert, render_monitoring, run_promtool

TARGET = 'namespace="shop", pod="checkout-7d9"'


def start_series() -> set[tuple[str, frozenset[tuple[str, str]]]]:
    """Every (name, labels) a sidecar (HTTP exporter) and the webhook expose before any event."""
    metrics = SidecarMetrics()
    PolicyMetrics(metrics.registry)
    queue = ExportQueue(capacity_bytes=1024, batch_items=10, batch_bytes=1024, batch_timeout=1.0, metrics=metrics)
    config = ExporterConfig(type="otlp", protocol="http/protobuf", endpoint="http://collector:4318")
    Sender(queue, DebugExporter("-"), config, metrics)
    found = set()
    for registry in (metrics.registry, WebhookMetrics().registry):
        for family in registry.collect():
            for sample in family.samples:
                found.add((sample.name, frozenset(sample.labels.items())))
    return found


START = start_series()


def series(
    metric: str, values: str, *, at_start: bool = True, target: dict[str, str] | None = None, **labels: str
) -> dict[str, str]:
    """A promtool input series of ``target`` (the test pod's sidecar); ``at_start``: the sidecar (or
    the webhook) has it, at zero, from its start."""
    if at_start:
        assert (metric, frozenset(labels.items())) in START, f"{metric}{labels} is not exposed from the start"
    text = ",".join(f'{k}="{v}"' for k, v in sorted({**POD, **(target or {}), **labels}.items()))
    return {"series": f"{metric}{{{text}}}", "values": values}


def alert(name: str, at: str, series_: list[dict[str, str]], fires: dict[str, Any] | None) -> dict[str, Any]:
    """One promtool case: at ``at``, ``name`` has the one alert ``fires`` (labels, annotations) or none."""
    expected = [] if fires is None else [fires]
    return {
        "interval": "1m",
        "input_series": series_,
        "alert_rule_test": [{"eval_time": at, "alertname": name, "exp_alerts": expected}],
        "name": f"{name} {'fires' if fires else 'stays quiet'} at {at}",
    }


ACCEPTED = "otlp_sidecar_receiver_accepted_items_total"
REFUSED = "otlp_sidecar_receiver_refused_items_total"
SENT = "otlp_sidecar_exporter_sent_items_total"
FAILED = "otlp_sidecar_exporter_failed_items_total"
SIZE = "otlp_sidecar_queue_size_bytes"
TRAFFIC = {"signal": "traces", "transport": "grpc"}


def refusal_cases() -> list[dict[str, Any]]:
    fires = pod_alert(
        "warning", "otlp-sidecar in shop/checkout-7d9 refuses 16.67% of the telemetry it receives",
        "Items are refused by policy, over a limit or with a full queue; see "
        "otlp_sidecar_receiver_refused_items_total by reason.",
    )
    quiet_series = [series(ACCEPTED, "0+100x40", **TRAFFIC), series(REFUSED, "0+1x40", reason="queue_full", **TRAFFIC)]
    idle = [series(ACCEPTED, "0x40", **TRAFFIC), series(REFUSED, "0x40", reason="policy", **TRAFFIC)]
    return [
        # 20 of every 120 items refused (full queue) from minute 1: over 5 % for 10 minutes
        alert("OtlpSidecarHighRefusalRate", "25m",
              [series(ACCEPTED, "0+100x40", **TRAFFIC), series(REFUSED, "0+20x40", reason="queue_full", **TRAFFIC)],
              fires),
        # refusals that begin at once from zero are seen from the first one: the series existed at 0
        alert("OtlpSidecarHighRefusalRate", "20m",
              [series(ACCEPTED, "0x5 0+0x35", **TRAFFIC), series(REFUSED, "0x5 0+50x35", reason="policy", **TRAFFIC)],
              {**fires, "exp_annotations": {**fires["exp_annotations"], "summary": fires["exp_annotations"][
                  "summary"].replace("16.67%", "100%")}}),
        alert("OtlpSidecarHighRefusalRate", "25m", quiet_series, None),  # 1 % refused
        alert("OtlpSidecarHighRefusalRate", "25m", idle, None),  # no traffic at all: 0/0 is no alert
        # a 3-minute burst is shorter than the 10 minutes the alert waits
        alert("OtlpSidecarHighRefusalRate", "25m",
              [series(ACCEPTED, "0+100x40", **TRAFFIC),
               series(REFUSED, "0x10 0+50x3 150x27", reason="queue_full", **TRAFFIC)], None),
    ]


def export_failure_cases() -> list[dict[str, Any]]:
    fires = pod_alert(
        "critical", "otlp-sidecar in shop/checkout-7d9 loses 100% of its exports",
        "The upstream collector refuses or cannot be reached; telemetry is being dropped.",
    )
    return [
        # a wrong upstream path: every batch answered 404 from the start, nothing sent
        alert("OtlpSidecarExportFailures", "20m",
              [series(SENT, "0x40", signal="traces"), series(FAILED, "0+50x40", signal="traces", reason="http_404")],
              fires),
        alert("OtlpSidecarExportFailures", "20m",
              [series(SENT, "0+100x40", signal="traces"), series(FAILED, "0x40", signal="traces", reason="http_404")],
              None),
        # 1 failed of 1,000: under the 1 % threshold
        alert("OtlpSidecarExportFailures", "20m",
              [series(SENT, "0+999x40", signal="traces"), series(FAILED, "0+1x40", signal="traces", reason="timeout")],
              None),
    ]


def queue_cases() -> list[dict[str, Any]]:
    fires = pod_alert(
        "warning", "otlp-sidecar export queue in shop/checkout-7d9 is 90% full",
        "When the queue is full new telemetry is refused; the upstream is slow or down.",
    )
    capacity = series("otlp_sidecar_queue_capacity_bytes", "1000x20")
    return [
        alert("OtlpSidecarQueueNearlyFull", "10m", [capacity, series(SIZE, "900x20")], fires),
        alert("OtlpSidecarQueueNearlyFull", "10m", [capacity, series(SIZE, "100x20")], None),
        # full for 3 minutes only
        alert("OtlpSidecarQueueNearlyFull", "10m",
              [capacity, series(SIZE, "0x5 950x2 0x13")], None),
    ]


def circuit_cases() -> list[dict[str, Any]]:
    state = "otlp_sidecar_exporter_circuit_state"
    fires = pod_alert(
        "critical", "otlp-sidecar in shop/checkout-7d9 stopped sending upstream (circuit open)",
        "The circuit breaker of an upstream is open after repeated failures; "
        "otlp_sidecar_exporter_circuit_state{signal} and /ready (exporter_circuits) say which signals wait.",
    )

    def every(values: str, logs: str | None = None) -> list[dict[str, str]]:
        """The state of each signal's upstream: one upstream for all, or the logs' own."""
        return [series(state, logs if logs is not None and signal == "logs" else values, signal=signal)
                for signal in ("traces", "metrics", "logs")]

    return [
        alert("OtlpSidecarCircuitOpen", "10m", every("0x2 2x20"), fires),
        alert("OtlpSidecarCircuitOpen", "10m", every("0x20"), None),
        alert("OtlpSidecarCircuitOpen", "10m", every("1x20"), None),  # half-open: probing
        alert("OtlpSidecarCircuitOpen", "10m", every("0x2 2x2 0x16"), None),  # opened 3 minutes
        # the logs' own upstream down, the others' up: one alert for the pod
        alert("OtlpSidecarCircuitOpen", "10m", every("0x20", logs="0x2 2x20"), fires),
    ]


def loop_lag_cases() -> list[dict[str, Any]]:
    """The probe checks the loop ten times a second: 600 observations a minute."""
    count, bucket = "otlp_sidecar_event_loop_lag_seconds_count", "otlp_sidecar_event_loop_lag_seconds_bucket"
    fires = pod_alert(
        "warning",
        "the event loop of otlp-sidecar in shop/checkout-7d9 ran over 100 ms late in 10% of its checks",
        "Every request waited as long. The sidecar needs more CPU (its limit throttles it, or its node "
        "has steal) or work holds its loop; see otlp_sidecar_event_loop_lag_seconds and the sidecar's log.",
    )
    return [
        # a CPU limit throttling the pod: 60 of the 600 checks a minute over 100 ms late
        alert("OtlpSidecarEventLoopLagging", "20m",
              [series(count, "0+600x30"), series(bucket, "0+540x30", le="0.1")], fires),
        alert("OtlpSidecarEventLoopLagging", "20m",  # 3 of 600: a garbage collection now and then
              [series(count, "0+600x30"), series(bucket, "0+597x30", le="0.1")], None),
        # half the checks late for 3 minutes: still within the window at 12m, but shorter than the 10m
        alert("OtlpSidecarEventLoopLagging", "12m",
              [series(count, "0+600x30"), series(bucket, "0+600x5 3300+300x2 4500+600x21", le="0.1")], None),
    ]


def certificate_cases() -> list[dict[str, Any]]:
    expiry = "otlp_sidecar_tls_certificate_expiry_seconds"
    day = 86400
    fires = pod_alert(
        "warning", "the upstream client certificate of shop/checkout-7d9 expires in 3d 0h 0m 0s",
        "Renew the mTLS Secret; the sidecar reloads it without a restart.",
    )
    # the expiry gauge exists once a certificate is configured (not at zero: it is a time)
    return [
        alert("OtlpSidecarClientCertificateExpiring", "20m",
              [series(expiry, f"{3 * day}x30", at_start=False, role="client", name="exporter")], fires),
        alert("OtlpSidecarClientCertificateExpiring", "20m",
              [series(expiry, f"{30 * day}x30", at_start=False, role="client", name="exporter")], None),
        # the receivers' own server certificate is another alert's business
        alert("OtlpSidecarClientCertificateExpiring", "20m",
              [series(expiry, f"{day}x30", at_start=False, role="server", name="grpc")], None),
    ]


def policy_cases() -> list[dict[str, Any]]:
    reloads = "otlp_sidecar_policy_reloads_total"
    fires = pod_alert(
        "warning", "otlp-sidecar in shop/checkout-7d9 cannot load its new policies",
        "The sidecar keeps enforcing the last good policies; run `otlp-sidecar policy test` on the change.",
    )
    return [
        # one failed reload at minute 5 (the series was at 0 before it)
        alert("OtlpSidecarPolicyReloadFailing", "12m",
              [series(reloads, "1x20", result="ok"), series(reloads, "0x5 1x15", result="failed")], fires),
        alert("OtlpSidecarPolicyReloadFailing", "12m",
              [series(reloads, "1x5 2x15", result="ok"), series(reloads, "0x20", result="failed")], None),
        # why the series must exist at zero from the start: the same one failure on a series that
        # appears only then (`_`: no sample) is invisible to increase(), and nothing fires
        alert("OtlpSidecarPolicyReloadFailing", "12m",
              [series(reloads, "1x20", result="ok"), series(reloads, "_x5 1x15", result="failed")], None),
        # the failure 40 minutes ago is over
        alert("OtlpSidecarPolicyReloadFailing", "60m",
              [series(reloads, "1x60", result="ok"), series(reloads, "0x5 1x55", result="failed")], None),
    ]


def webhook_cases() -> list[dict[str, Any]]:
    reviews = "otlp_sidecar_webhook_reviews_total"
    webhook = {"job": "observability/otlp-sidecar-webhook", "instance": "10.0.1.2:8443"}
    errors = {
        "exp_labels": {"severity": "critical"},
        "exp_annotations": {
            "summary": "the otlp-sidecar injection webhook fails on admission reviews",
            "description": "Pods outside PCI scope are admitted without the sidecar; in PCI scope they are "
                           "refused. See the webhook's log.",
        },
    }
    refusals = {
        "exp_labels": {"severity": "info", "scope": "pci"},
        "exp_annotations": {
            "summary": "the otlp-sidecar webhook refuses pods (pci scope)",
            "description": "Pods opt out in a PCI-scope namespace, or ask for a policy set that does not "
                           "exist; the webhook's log names them.",
        },
    }
    return [
        alert("OtlpSidecarWebhookErrors", "10m",
              [series(reviews, "0+2x20", scope="pod", result="error", target=webhook)], errors),
        alert("OtlpSidecarWebhookErrors", "10m",
              [series(reviews, "0+5x20", scope="pod", result="injected", target=webhook),
               series(reviews, "0x20", scope="pod", result="error", target=webhook)], None),
        alert("OtlpSidecarWebhookRefusals", "30m",
              [series(reviews, "0+1x40", scope="pci", result="refused", target=webhook)], refusals),
        alert("OtlpSidecarWebhookRefusals", "30m",
              [series(reviews, "0x40", scope="pci", result="refused", target=webhook),
               series(reviews, "0+3x40", scope="pci", result="injected", target=webhook)], None),
    ]


def recording_cases() -> list[dict[str, Any]]:
    """The Collector's names (metrics.prometheusRule.collectorMetricNames) carry the same values."""
    app = {"job": "shop/checkout", "instance": "10.0.0.7:8080"}  # the app's own process metrics, same pod
    return [{
        "name": "the Collector's names",
        "interval": "1m",
        "input_series": [
            series(ACCEPTED, "0+100x10", **TRAFFIC),
            series(REFUSED, "0+5x10", reason="queue_full", **TRAFFIC),
            series(REFUSED, "0+2x10", reason="policy", **TRAFFIC),
            series(SENT, "0+90x10", signal="traces"),
            series(FAILED, "0+10x10", signal="traces", reason="http_404"),
            series("otlp_sidecar_queue_size_bytes", "512x10"),
            series("otlp_sidecar_build_info", "1x10", at_start=False, version="test"),
            series("process_resident_memory_bytes", "50000000x10", at_start=False),
            series("process_resident_memory_bytes", "900000000x10", at_start=False, target=app),
        ],
        "promql_expr_test": [
            {"expr": "rate(otelcol_receiver_accepted_spans[5m]) * 60", "eval_time": "10m",
             "exp_samples": [{"labels": _labels("", receiver="otlp", **TRAFFIC),
                              "value": 100}]},
            {"expr": "rate(otelcol_receiver_refused_spans[5m]) * 60", "eval_time": "10m",
             "exp_samples": [{"labels": _labels("", receiver="otlp", **TRAFFIC), "value": 7}]},
            {"expr": "otelcol_exporter_send_failed_spans", "eval_time": "10m",
             "exp_samples": [{"labels": _labels("otelcol_exporter_send_failed_spans", exporter="otlp",
                                                signal="traces"), "value": 100}]},
            {"expr": "otelcol_exporter_queue_size", "eval_time": "10m",
             "exp_samples": [{"labels": _labels("otelcol_exporter_queue_size", exporter="otlp"), "value": 512}]},
            # only the sidecar's own process, not the app's beside it in the pod
            {"expr": "otelcol_process_memory_rss", "eval_time": "10m",
             "exp_samples": [{"labels": _labels("otelcol_process_memory_rss"), "value": 50000000}]},
        ],
    }]


def _labels(name: str, **labels: str) -> str:
    text = ", ".join(f'{k}="{v}"' for k, v in sorted({**POD, **labels}.items()))
    return f"{name}{{{text}}}"


CASES = {
    "refusals": refusal_cases, "export": export_failure_cases, "queue": queue_cases, "circuit": circuit_cases,
    "loop_lag": loop_lag_cases,
    "certificate": certificate_cases, "policy": policy_cases, "webhook": webhook_cases,
    "collector_names": recording_cases,
}


@pytest.fixture(scope="module")
def rule_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec, _ = render_monitoring()
    path = tmp_path_factory.mktemp("rules") / "otlp-sidecar.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": spec["groups"]}, sort_keys=False))
    return path


def test_rules_are_valid(rule_file: Path) -> None:
    result = run_promtool("check", "rules", str(rule_file))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_case_where_it_fires_and_one_where_it_stays_quiet(rule_file: Path) -> None:
    spec, _ = render_monitoring()
    alerts = {rule["alert"] for group in spec["groups"] for rule in group["rules"] if "alert" in rule}
    cases = [case for make in CASES.values() for case in make() if "alert_rule_test" in case]
    fires = {c["alert_rule_test"][0]["alertname"] for c in cases if c["alert_rule_test"][0]["exp_alerts"]}
    quiet = {c["alert_rule_test"][0]["alertname"] for c in cases if not c["alert_rule_test"][0]["exp_alerts"]}
    assert alerts == fires == quiet, (alerts, fires, quiet)


@pytest.mark.parametrize("area", list(CASES))
def test_promtool(rule_file: Path, area: str) -> None:
    tests = CASES[area]()
    path = rule_file.parent / f"test_{area}.yaml"
    path.write_text(yaml.safe_dump(
        {"rule_files": [rule_file.name], "evaluation_interval": "1m", "tests": tests}, sort_keys=False))
    result = run_promtool("test", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_catches_a_broken_expectation(rule_file: Path) -> None:
    """The harness can fail: the export case expecting silence where the alert fires is an error."""
    fire = export_failure_cases()[0]
    fire["alert_rule_test"][0]["exp_alerts"] = []
    path = rule_file.parent / "test_broken.yaml"
    path.write_text(yaml.safe_dump({"rule_files": [rule_file.name], "tests": [fire]}, sort_keys=False))
    result = run_promtool("test", "rules", str(path))
    assert result.returncode != 0 and "OtlpSidecarExportFailures" in result.stdout + result.stderr


def test_input_series_are_the_ones_a_fresh_sidecar_has() -> None:
    """The cases above start from series a sidecar exposes before any event (a missing one fails)."""
    assert ("otlp_sidecar_exporter_failed_items_total",
            frozenset({"signal": "logs", "reason": "http_404"}.items())) in START
    assert ("otlp_sidecar_policy_reloads_total", frozenset({"result": "failed"}.items())) in START
    assert ("otlp_sidecar_webhook_reviews_total", frozenset({"scope": "pci", "result": "error"}.items())) in START
    with pytest.raises(AssertionError, match="not exposed from the start"):
        series(FAILED, "0x1", signal="traces", reason="http_999")
