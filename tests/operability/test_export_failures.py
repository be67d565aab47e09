"""An upstream that answers every export with a final error, as an operator meets it: a wrong upstream
path (a real HTTP server answering 404) opens the circuit, shows on /ready and in the metrics, and
every message names the URL and the setting; a bad batch (400) does not open it; a batch dropped at
shutdown is logged as such."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import aiohttp
import pytest
import yaml
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

from tests import sdk
from tests.conftest import sidecar_env
from tests.operability.monitoring import POD, pod_alert, render_monitoring, run_promtool
from tests.operator import ready, scrape, value, wait_ready
from tests.processes import SidecarProcess
from tests.upstream import Answer, Upstream

PB = {"Content-Type": "application/x-protobuf"}
BODY = encode_spans(sdk.make_spans(10)).SerializeToString()


async def post_spans(port: int, requests: int) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(requests):
            async with session.post(f"http://127.0.0.1:{port}/v1/traces", data=BODY, headers=PB) as response:
                assert response.status == 200, await response.text()


@pytest.mark.parametrize("gate", [False, True], ids=["default", "ready_requires_upstream"])
async def test_a_wrong_upstream_path_opens_the_circuit_and_says_where(upstream: Upstream, gate: bool) -> None:
    url = f"http://127.0.0.1:{upstream.http_port}/wrong/v1/traces"  # the real server has no such route: 404
    env = sidecar_env(upstream, "http/protobuf", OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{upstream.http_port}/wrong",
                      SIDECAR_EXPORTER_BATCH_SIZE="10")
    if gate:
        env["SIDECAR_ADMIN_READY_REQUIRES_UPSTREAM"] = "true"
    sidecar = SidecarProcess(env)
    ports = await sidecar.start()
    try:
        status, body = await ready(ports["admin"])
        assert (status, body["exporter"], body["exporter_circuit"]) == (200, "ok", "closed")
        await post_spans(ports["http"], 8)
        status, body = await wait_ready(ports["admin"], lambda b: b["exporter_circuit"] == "open")
        # the pod stays ready by default (data waits in the queue); gated, it is taken out
        assert status == (503 if gate else 200), body
        exporter = str(body["exporter"])
        assert exporter.startswith("failing: upstream answered 404") and url in exporter, body
        assert "exporter.endpoint" in exporter, body
        assert "on a final answer" in str(body["exporter_last_drop"]) and url in str(body["exporter_last_drop"])

        samples = await scrape(f"http://127.0.0.1:{ports['admin']}/metrics")
        assert value(samples, "otlp_sidecar_exporter_circuit_state", signal="traces") == 2
        failed = value(samples, "otlp_sidecar_exporter_failed_items_total", signal="traces", reason="http_404")
        assert failed is not None and failed >= 50, failed  # 5 batches before the circuit opened
        assert value(samples, "otlp_sidecar_exporter_sent_items_total", signal="traces") == 0
        opened = value(samples, "otlp_sidecar_exporter_circuit_transitions_total", signal="traces", state="open")
        assert (opened or 0) >= 1
        assert upstream.spans() == []
    finally:
        await sidecar.stop()
    log = sidecar.stderr
    assert "dropped 10 spans on a final answer (not retried, per OTLP): upstream answered 404" in log, log
    assert f"{url} (exporter.endpoint)" in log
    assert "circuit open" in log and "retrying too long" not in log


async def test_a_bad_batch_does_not_open_the_circuit(upstream: Upstream, start_sidecar) -> None:
    """400 is about one batch's data: the upstream works, the circuit stays closed (the drop shows)."""
    upstream.default = Answer(http_status=400, message="bad data")
    sidecar = await start_sidecar(sidecar_env(upstream, "http/protobuf", SIDECAR_EXPORTER_BATCH_SIZE="10"))
    await post_spans(sidecar.addresses["http"][1], 8)
    admin = sidecar.addresses["admin"][1]
    status, body = await wait_ready(admin, lambda b: "80 " in str(b.get("exporter_last_drop", "")) or (
        sidecar.metrics.registry.get_sample_value(
            "otlp_sidecar_exporter_failed_items_total", {"signal": "traces", "reason": "http_400"}) == 80))
    assert status == 200 and body["exporter_circuit"] == "closed", body
    assert "upstream answered 400: bad data" in str(body["exporter"]) and "exporter.endpoint" in str(body["exporter"])
    assert sidecar.metrics.registry.get_sample_value("otlp_sidecar_exporter_circuit_state", {"signal": "traces"}) == 0
    upstream.default = Answer()
    await post_spans(sidecar.addresses["http"][1], 1)
    _, body = await wait_ready(admin, lambda b: b["exporter"] == "ok")  # the next success clears it


async def test_a_drop_at_shutdown_is_logged_as_one(
    upstream: Upstream, start_sidecar, caplog: pytest.LogCaptureFixture
) -> None:
    upstream.default = Answer(http_status=503)  # retryable: the batch is still being retried at shutdown
    sidecar = await start_sidecar(sidecar_env(upstream, "http/protobuf"))
    await post_spans(sidecar.addresses["http"][1], 1)
    async with asyncio.timeout(10):
        while upstream.attempts < 2:
            await asyncio.sleep(0.02)
    with caplog.at_level(logging.INFO, logger="sidecar"):
        await sidecar.stop(grace=0.5)
    dropped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("dropped")]
    assert len(dropped) == 1, dropped
    assert dropped[0].startswith("dropped 10 spans at shutdown: the grace period ended"), dropped
    assert "upstream answered 503" in dropped[0] and "exporter.endpoint" in dropped[0]
    assert "retrying too long" not in caplog.text
    assert sidecar.metrics.registry.get_sample_value(
        "otlp_sidecar_exporter_failed_items_total", {"signal": "traces", "reason": "shutdown"}) == 10


async def test_the_alerts_fire_on_what_a_sidecar_with_a_wrong_path_exposes(upstream: Upstream, tmp_path: Path) -> None:
    """The PrometheusRule run by promtool on a real sidecar's own series: two scrapes (at start, and once
    the wrong path opened the circuit), continued at the rate seen between them for 30 minutes."""
    env = sidecar_env(upstream, "http/protobuf",
                      OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{upstream.http_port}/wrong",
                      SIDECAR_EXPORTER_BATCH_SIZE="10")
    sidecar = SidecarProcess(env)
    ports = await sidecar.start()
    try:
        before = await scrape(f"http://127.0.0.1:{ports['admin']}/metrics")
        await post_spans(ports["http"], 8)
        await wait_ready(ports["admin"], lambda b: b["exporter_circuit"] == "open")
        after = await scrape(f"http://127.0.0.1:{ports['admin']}/metrics")
    finally:
        await sidecar.stop()

    series = []
    for (name, labels), now in sorted(after.items(), key=lambda item: (item[0][0], sorted(item[0][1]))):
        if not name.startswith("otlp_sidecar_") or name.endswith("_created"):
            continue
        counter = name.endswith(("_total", "_bucket", "_count", "_sum"))
        if counter:
            start = before.get((name, labels))
            assert start is not None, f"{name}{dict(labels)} was not there at start"
            values = f"{start:g}+{now - start:g}x30"
        else:
            values = f"{now:g}x30"
        text = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted({**POD, **dict(labels)}.items()))
        series.append({"series": f"{name}{{{text}}}", "values": values})

    spec, _ = render_monitoring()
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": spec["groups"]}, sort_keys=False))
    expected = {
        "OtlpSidecarExportFailures": [pod_alert(
            "critical", "otlp-sidecar in shop/checkout-7d9 loses 100% of its exports",
            "The upstream collector refuses or cannot be reached; telemetry is being dropped.")],
        "OtlpSidecarCircuitOpen": [pod_alert(
            "critical", "otlp-sidecar in shop/checkout-7d9 stopped sending upstream (circuit open)",
            "The circuit breaker of an upstream is open after repeated failures; "
            "otlp_sidecar_exporter_circuit_state{signal} and /ready (exporter_circuits) say which signals wait.")],
        "OtlpSidecarHighRefusalRate": [],  # the app's requests were all accepted
        "OtlpSidecarQueueNearlyFull": [],  # 3 batches wait in a 64 MiB queue
        "OtlpSidecarPolicyReloadFailing": [],
    }
    case = {
        "interval": "1m",
        "input_series": series,
        "alert_rule_test": [{"eval_time": "15m", "alertname": name, "exp_alerts": alerts}
                            for name, alerts in expected.items()],
    }
    test_file = tmp_path / "live_test.yaml"
    test_file.write_text(yaml.safe_dump({"rule_files": [rules.name], "evaluation_interval": "1m",
                                         "tests": [case]}, sort_keys=False))
    result = run_promtool("test", "rules", str(test_file))
    assert result.returncode == 0, result.stdout + result.stderr


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')
