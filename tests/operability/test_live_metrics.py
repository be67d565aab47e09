"""What an operator scrapes from a real sidecar process (and a real webhook server): every metric the
alerts, the recording rules and the dashboard query is there, at zero from the start for every
signal and reason, and the process metrics tell the truth about the process."""

from __future__ import annotations

import dataclasses
import itertools
import os
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from prometheus_client.parser import text_string_to_metric_families

from sidecar.metrickit import Kind, Metric, catalogue
from sidecar.metrics import ITEM_REFUSALS, REQUEST_REFUSALS, TRANSPORTS
from sidecar.signals import Signal
from sidecar.webhook.config import load_webhook_config
from sidecar.webhook.server import running
from tests import sdk
from tests.conftest import sidecar_env
from tests.operability.monitoring import WEBHOOK_PREFIX, queried_metrics, render_monitoring
from tests.operator import Samples, scrape, value
from tests.processes import SidecarProcess
from tests.tls.pki import PKI, make_pki
from tests.upstream import Upstream
from tests.webhook.conftest import CONFIG_TOML

PB = {"Content-Type": "application/x-protobuf"}
def names(samples: Samples) -> set[str]:
    return {name for name, _ in samples}


def enforcing_env(tmp_path: Path, pki: PKI, upstream_port: int, **extra: str) -> dict[str, str]:
    """The bundled policies enforced, exporting over mTLS (as in a pod) to ``upstream_port``."""
    key = tmp_path / "hash.key"
    key.write_bytes(os.urandom(32))
    return sidecar_env(
        None,
        SIDECAR_POLICY_MODE="enforce",
        SIDECAR_POLICY_HASH_KEY_FILE=str(key),
        OTEL_EXPORTER_OTLP_ENDPOINT=f"https://localhost:{upstream_port}",
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_EXPORTER_OTLP_CERTIFICATE=pki.ca_cert,
        OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE=pki.client_cert,
        OTEL_EXPORTER_OTLP_CLIENT_KEY=pki.client_key,
        **extra,
    )


def server_tls(pki: PKI) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    context.load_verify_locations(pki.ca_cert)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


@pytest.fixture
async def live(tmp_path: Path) -> AsyncIterator[tuple[SidecarProcess, dict[str, int]]]:
    pki = make_pki(tmp_path)
    upstream = Upstream()
    await upstream.start(ssl=server_tls(pki))
    # with the on-disk queue, so that its metrics are there too
    env = enforcing_env(tmp_path, pki, upstream.http_port, SIDECAR_EXPORTER_DISK_QUEUE_DIR=str(tmp_path / "queue"))
    process = SidecarProcess(env)
    ports = await process.start()
    try:
        yield process, ports
    finally:
        assert await process.stop() == 0
        await upstream.stop()


async def test_every_series_exists_at_zero_from_the_start(live: tuple[SidecarProcess, dict[str, int]]) -> None:
    """Before any request: every signal x transport x reason the alerts sum over is there, at 0."""
    _, ports = live
    samples = await scrape(f"http://127.0.0.1:{ports['admin']}/metrics")
    for signal in (s.value for s in Signal):
        for transport in TRANSPORTS:
            assert value(samples, "otlp_sidecar_receiver_accepted_items_total", signal=signal, transport=transport) == 0
            for reason in ITEM_REFUSALS:
                assert value(samples, "otlp_sidecar_receiver_refused_items_total",
                             signal=signal, transport=transport, reason=reason) == 0, (signal, transport, reason)
            for reason in REQUEST_REFUSALS:
                assert value(samples, "otlp_sidecar_receiver_refused_requests_total",
                             signal=signal, transport=transport, reason=reason) == 0, (signal, transport, reason)
        assert value(samples, "otlp_sidecar_exporter_sent_items_total", signal=signal) == 0
        for reason in ("unavailable", "timeout", "shutdown", "http_404", "http_403", "http_400"):
            assert value(samples, "otlp_sidecar_exporter_failed_items_total", signal=signal, reason=reason) == 0
        assert value(samples, "otlp_sidecar_processor_sampled_out_items_total", signal=signal) == 0
        assert value(samples, "otlp_sidecar_exporter_request_duration_seconds_count", signal=signal) == 0
    for result in ("ok", "failed"):
        assert value(samples, "otlp_sidecar_policy_reloads_total", result=result) is not None
    assert value(samples, "otlp_sidecar_policy_reloads_total", result="failed") == 0
    for signal in ("traces", "metrics", "logs"):
        assert value(samples, "otlp_sidecar_exporter_circuit_state", signal=signal) == 0
    assert value(samples, "otlp_sidecar_overload_actions_total", listener="otlp_http", action="budget_full") == 0
    # every metric an alert or a panel queries is there before any request, but the per-rule counter
    # (its rule ids come with the first plans: docs/metrics.md)
    spec, dashboard = render_monitoring()
    late = {"otlp_sidecar_policy_rule_actions_total"}
    missing = {
        user: absent
        for user, used in queried_metrics(spec, dashboard).items()
        if (absent := {m for m in used - late if not m.startswith(WEBHOOK_PREFIX)} - names(samples))
    }
    assert not missing, missing


async def scrape_types(url: str, ssl_context: ssl.SSLContext | None = None) -> tuple[dict[str, str], Samples]:
    """({exposed family name: type} from the # TYPE lines, the samples) of one scrape."""
    async with aiohttp.ClientSession() as session, session.get(url, ssl=ssl_context or False) as response:
        assert response.status == 200
        text = await response.text()
    types = dict(line.split()[2:4] for line in text.splitlines() if line.startswith("# TYPE "))
    samples = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    return types, samples


#: counters already past zero at start: the policy set's first load
STARTED_AT = {("otlp_sidecar_policy_reloads_total", frozenset({("result", "ok")}))}


def check_declared(metrics: list[Metric], types: dict[str, str], samples: Samples) -> int:
    """Every metric of ``metrics`` is exposed with its declared type; those there from the start
    have a series for each value of their ``every`` labels (at zero for counters and histograms)
    and at least one series otherwise. Returns the series checked."""
    checked = 0
    for metric in metrics:
        exposed_type = "gauge" if metric.kind is Kind.info else metric.kind.value
        assert types.get(metric.exposed) == exposed_type, (metric.exposed, types.get(metric.exposed))
        if metric.appears:
            continue
        sample = f"{metric.name}_count" if metric.kind is Kind.histogram else metric.exposed
        family = {labels: v for (name, labels), v in samples.items() if name == sample}
        assert family, f"{sample}: no series at start"
        every = [label for label in metric.labels if label.every and label.values]
        for values in itertools.product(*(label.values for label in every)):
            wanted = frozenset(zip([label.name for label in every], values, strict=True))
            found = [v for labels, v in family.items() if wanted <= labels]
            assert found, (sample, dict(wanted))
            if metric.kind in (Kind.counter, Kind.histogram) and not metric.name.startswith("process_"):
                assert all(v == 0 for v in found) or (sample, wanted) in STARTED_AT, (sample, dict(wanted), found)
            checked += 1
    return checked


async def test_every_declared_metric_is_exposed_from_the_start(
    live: tuple[SidecarProcess, dict[str, int]], tmp_path: Path
) -> None:
    """The catalogue (sidecar/metrickit.py, each component's metrics.py) against a fresh sidecar
    (enforcing, mTLS to its upstream, on-disk queue) and a fresh webhook server, before any
    request: each declared metric is there, as declared, its closed labels at zero. Only the
    policy bundles' metrics need bundles configured (tests/policy/test_bundle_sidecars.py)."""
    _, ports = live
    types, samples = await scrape_types(f"http://127.0.0.1:{ports['admin']}/metrics")
    ours = [m for m in catalogue() if m.component not in ("sidecar.webhook", "sidecar.policy.bundles")]
    checked = check_declared(ours, types, samples)

    pki = make_pki(tmp_path / "webhook")
    config_file = tmp_path / "webhook.toml"
    config_file.write_text(CONFIG_TOML, encoding="utf-8")
    config = load_webhook_config(config_file, env={})
    config = dataclasses.replace(config, server=dataclasses.replace(
        config.server, listen="127.0.0.1:0", cert_file=pki.server_cert, key_file=pki.server_key))
    async with running(config) as (_, port):
        types, samples = await scrape_types(
            f"https://localhost:{port}/metrics", ssl.create_default_context(cafile=pki.ca_cert))
    checked += check_declared([m for m in catalogue() if m.component == "sidecar.webhook"], types, samples)
    assert checked >= 275, checked  # series checked when written: fewer means the check lost some


async def test_every_metric_the_rules_and_the_dashboard_query_is_scraped(
    live: tuple[SidecarProcess, dict[str, int]], tmp_path: Path
) -> None:
    process, ports = live
    # one request as an app sends it, with a card number: the rule-action counters get their series
    body = encode_spans(sdk.make_spans(5, attributes={"card_number": "4111111111111111"})).SerializeToString()
    async with aiohttp.ClientSession() as session:
        async with session.post(f"http://127.0.0.1:{ports['http']}/v1/traces", data=body, headers=PB) as response:
            assert response.status == 200, await response.text()
    sidecar = await scrape(f"http://127.0.0.1:{ports['admin']}/metrics")
    assert any(name == "otlp_sidecar_policy_rule_actions_total" and dict(labels).get("action") == "mask_pan"
               for name, labels in sidecar), "no masking counted"

    # the webhook is its own Deployment: its series come from a real webhook server (HTTPS)
    pki = make_pki(tmp_path / "webhook")
    config_file = tmp_path / "webhook.toml"
    config_file.write_text(CONFIG_TOML, encoding="utf-8")
    config = load_webhook_config(config_file, env={})
    config = dataclasses.replace(config, server=dataclasses.replace(
        config.server, listen="127.0.0.1:0", cert_file=pki.server_cert, key_file=pki.server_key))
    async with running(config) as (_, port):
        webhook = await scrape(f"https://localhost:{port}/metrics", ssl.create_default_context(cafile=pki.ca_cert))

    spec, dashboard = render_monitoring()
    missing = {}
    for user, used in queried_metrics(spec, dashboard).items():
        for metric in used:
            scraped = webhook if metric.startswith(WEBHOOK_PREFIX) else sidecar
            if metric not in names(scraped):
                missing.setdefault(user, set()).add(metric)
    assert not missing, f"queried but not exposed by a live process: {missing}\n{process.stderr[-2000:]}"


async def test_process_metrics_describe_the_process(live: tuple[SidecarProcess, dict[str, int]]) -> None:
    process, ports = live
    assert process.proc is not None
    samples = await scrape(f"http://127.0.0.1:{ports['admin']}/metrics")
    status = Path(f"/proc/{process.proc.pid}/status").read_text()
    rss = int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1]) * 1024
    scraped_rss = value(samples, "process_resident_memory_bytes")
    assert scraped_rss is not None and abs(scraped_rss - rss) < 0.25 * rss, (scraped_rss, rss)
    fds = len(os.listdir(f"/proc/{process.proc.pid}/fd"))
    open_fds = value(samples, "process_open_fds")
    assert open_fds is not None and abs(open_fds - fds) <= 5, (open_fds, fds)
    assert (value(samples, "process_max_fds") or 0) >= fds
    assert (value(samples, "process_cpu_seconds_total") or 0) > 0
