"""The webhook served over real TLS on loopback, answering real AdmissionReview documents."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import os
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509

from sidecar.webhook.config import WebhookConfig
from sidecar.webhook.server import running
from tests.tls.pki import PKI, make_pki
from tests.webhook.conftest import (
    admission_review,
    apply,
    assert_valid_pod,
    deployment_pod,
    sidecar_of,
)


@dataclasses.dataclass
class Webhook:
    url: str
    session: aiohttp.ClientSession
    pki: PKI
    host: str
    port: int

    async def post(self, path: str, body: Any) -> tuple[int, dict[str, Any]]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        async with self.session.post(
            self.url + path,
            data=data,
            headers={"Content-Type": "application/json"},
        ) as response:
            return response.status, await response.json()

    async def get(self, path: str) -> tuple[int, str]:
        async with self.session.get(self.url + path) as response:
            return response.status, await response.text()


def _server_config(config: WebhookConfig, pki: PKI, **server: Any) -> WebhookConfig:
    return dataclasses.replace(
        config,
        server=dataclasses.replace(
            config.server,
            listen="127.0.0.1:0",
            cert_file=pki.server_cert,
            key_file=pki.server_key,
            **server,
        ),
    )


@pytest.fixture
async def webhook(config: WebhookConfig, tmp_path: Path) -> AsyncIterator[Webhook]:
    pki = make_pki(tmp_path)
    served = _server_config(config, pki, cert_reload_interval=0.05, max_request_bytes=256 * 1024)
    client_tls = ssl.create_default_context(cafile=pki.ca_cert)
    async with running(served) as (host, port):
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_tls)) as session:
            yield Webhook(f"https://localhost:{port}", session, pki, host, port)


def patch_of(answer: dict[str, Any]) -> list[dict[str, Any]]:
    response = answer["response"]
    assert response["patchType"] == "JSONPatch"
    return json.loads(base64.b64decode(response["patch"]))


async def test_injects_a_deployment_pod_over_tls(webhook: Webhook) -> None:
    pod = deployment_pod(**{"otlp-sidecar.io/inject": "true"})
    review = admission_review(pod)
    status, answer = await webhook.post("/mutate", review)

    assert status == 200
    assert answer["apiVersion"] == "admission.k8s.io/v1" and answer["kind"] == "AdmissionReview"
    assert answer["response"]["uid"] == review["request"]["uid"]
    assert answer["response"]["allowed"] is True
    result = apply(pod, patch_of(answer))
    assert_valid_pod(result)
    assert sidecar_of(result)["restartPolicy"] == "Always"


async def test_reinvocation_of_an_injected_pod_gets_no_patch(webhook: Webhook) -> None:
    pod = deployment_pod(**{"otlp-sidecar.io/inject": "true"})
    _, first = await webhook.post("/mutate", admission_review(pod))
    injected = apply(pod, patch_of(first))

    status, again = await webhook.post("/mutate/namespace", admission_review(injected))
    assert status == 200
    assert again["response"]["allowed"] is True
    assert "patch" not in again["response"]


async def test_each_path_is_its_scope(webhook: Webhook) -> None:
    pod = deployment_pod()  # no annotation
    _, by_pod = await webhook.post("/mutate", admission_review(pod))
    _, by_namespace = await webhook.post("/mutate/namespace", admission_review(pod))
    opted_out = deployment_pod(**{"otlp-sidecar.io/inject": "false"})
    _, pci = await webhook.post("/mutate/pci", admission_review(opted_out, namespace="payments"))

    assert "patch" not in by_pod["response"]
    assert by_namespace["response"]["patch"]
    assert pci["response"]["allowed"] is False
    assert pci["response"]["status"]["code"] == 403
    assert "PCI scope" in pci["response"]["status"]["message"]


async def test_updates_and_other_kinds_pass_untouched(webhook: Webhook) -> None:
    pod = deployment_pod(**{"otlp-sidecar.io/inject": "true"})
    _, update = await webhook.post("/mutate", admission_review(pod, operation="UPDATE"))
    review = admission_review(pod)
    review["request"]["kind"] = {"group": "apps", "version": "v1", "kind": "Deployment"}
    _, other = await webhook.post("/mutate", review)
    for answer in (update, other):
        assert answer["response"]["allowed"] is True and "patch" not in answer["response"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "the body is not JSON"),
        (b"[1, 2]", "not an AdmissionReview object"),
        (
            json.dumps({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview"}).encode(),
            "expected apiVersion admission.k8s.io/v1",
        ),
        (json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}).encode(), "has no request"),
        (
            json.dumps(
                {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"operation": "CREATE"}}
            ).encode(),
            "request.uid is missing",
        ),
    ],
)
async def test_malformed_reviews_get_an_error_with_a_message(
    webhook: Webhook,
    body: bytes,
    message: str,
) -> None:
    status, answer = await webhook.post("/mutate/namespace", body)
    assert status == 400
    assert answer["response"]["allowed"] is False
    assert message in answer["response"]["status"]["message"]
    # and the server goes on serving
    ok, _ = await webhook.post("/mutate/namespace", admission_review(deployment_pod()))
    assert ok == 200


async def test_a_malformed_pod_is_refused_with_its_uid(webhook: Webhook) -> None:
    review = admission_review(deployment_pod())
    review["request"]["object"]["spec"]["containers"] = "app"
    status, answer = await webhook.post("/mutate/namespace", review)
    assert status == 200
    assert answer["response"]["uid"] == review["request"]["uid"]
    assert answer["response"]["allowed"] is False
    assert answer["response"]["status"] == {
        "code": 400,
        "message": "invalid pod: spec.containers must be a non-empty list",
    }


async def test_an_oversized_review_is_answered_not_dropped(webhook: Webhook) -> None:
    pod = deployment_pod(**{"otlp-sidecar.io/inject": "true", "big": "x" * 300_000})
    status, answer = await webhook.post("/mutate", admission_review(pod))
    assert status == 413
    assert "larger than 262144 bytes" in answer["response"]["status"]["message"]


async def test_health_and_metrics(webhook: Webhook) -> None:
    await webhook.post("/mutate", admission_review(deployment_pod(**{"otlp-sidecar.io/inject": "true"})))
    await webhook.post("/mutate", admission_review(deployment_pod()))
    await webhook.post("/mutate", b"nope")

    assert await webhook.get("/healthz") == (200, "ok\n")
    status, text = await webhook.get("/metrics")
    assert status == 200
    assert 'otlp_sidecar_webhook_reviews_total{result="injected",scope="pod"} 1.0' in text
    assert 'otlp_sidecar_webhook_reviews_total{result="skipped",scope="pod"} 1.0' in text
    assert 'otlp_sidecar_webhook_reviews_total{result="invalid",scope="pod"} 1.0' in text


async def _served_certificate(webhook: Webhook) -> x509.Certificate:
    context = ssl.create_default_context(cafile=webhook.pki.ca_cert)
    _reader, writer = await asyncio.open_connection(
        "127.0.0.1",
        webhook.port,
        ssl=context,
        server_hostname="localhost",
    )
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        writer.close()
        await writer.wait_closed()
    return x509.load_der_x509_certificate(der)


async def test_a_renewed_certificate_is_served_without_restart(webhook: Webhook) -> None:
    before = await _served_certificate(webhook)
    cert, key = webhook.pki.issue_server("renewed")
    # the way a Secret volume updates: new files appear, then replace the old ones at once
    os.replace(key, webhook.pki.server_key)
    os.replace(cert, webhook.pki.server_cert)

    for _ in range(100):
        await asyncio.sleep(0.05)
        after = await _served_certificate(webhook)
        if after.serial_number != before.serial_number:
            break
    assert after.serial_number != before.serial_number
    assert (
        after.serial_number == x509.load_pem_x509_certificate(Path(webhook.pki.server_cert).read_bytes()).serial_number
    )
    _, metrics = await webhook.get("/metrics")
    assert 'otlp_sidecar_webhook_cert_reloads_total{result="ok"}' in metrics


async def test_a_broken_certificate_file_keeps_the_old_one(webhook: Webhook) -> None:
    before = await _served_certificate(webhook)
    Path(webhook.pki.server_cert).write_text("not a certificate", encoding="utf-8")
    for _ in range(100):
        await asyncio.sleep(0.05)
        _, metrics = await webhook.get("/metrics")
        if 'cert_reloads_total{result="failed"} 1.0' in metrics:
            break
    assert 'cert_reloads_total{result="failed"} 1.0' in metrics
    assert (await _served_certificate(webhook)).serial_number == before.serial_number


async def test_plain_http_is_not_served(webhook: Webhook) -> None:
    async with aiohttp.ClientSession() as plain:
        with pytest.raises(aiohttp.ClientError):
            async with plain.post(f"http://127.0.0.1:{webhook.port}/mutate", data=b"{}") as response:
                await response.read()


def _scenario_pods() -> dict[str, tuple[str, dict[str, Any], bool]]:
    """name -> (path, pod, injected?) for the pods a cluster sends."""
    with_env = deployment_pod(**{"otlp-sidecar.io/inject": "true"})
    with_env["spec"]["containers"][0]["env"] = [
        {"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": "http://mine:4318"},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
    ]
    with_init = deployment_pod()
    with_init["spec"]["initContainers"] = [{"name": "migrate", "image": "migrate:1"}]
    several = deployment_pod()
    several["spec"]["containers"] += [{"name": "worker", "image": "w:1"}, {"name": "cache", "image": "redis:7"}]
    named = deployment_pod(**{"otlp-sidecar.io/inject": "true"})
    named["metadata"].update(name="standalone", generateName=None)
    del named["metadata"]["generateName"]
    return {
        "deployment pod": ("/mutate", deployment_pod(**{"otlp-sidecar.io/inject": "true"}), True),
        "existing env": ("/mutate", with_env, True),
        "init containers": ("/mutate/namespace", with_init, True),
        "several containers": ("/mutate/pci", several, True),
        "named pod": ("/mutate", named, True),
        "opted out": ("/mutate/namespace", deployment_pod(**{"otlp-sidecar.io/inject": "false"}), False),
    }


@pytest.mark.parametrize("scenario", list(_scenario_pods()))
async def test_scenarios_over_tls_give_valid_pods(webhook: Webhook, scenario: str) -> None:
    path, pod, injected = _scenario_pods()[scenario]
    status, answer = await webhook.post(path, admission_review(pod))
    assert status == 200 and answer["response"]["allowed"] is True
    if not injected:
        assert "patch" not in answer["response"]
        return
    result = apply(pod, patch_of(answer))
    assert_valid_pod(result)
    sidecar_of(result)
    apps = [c for c in result["spec"]["containers"] if c["name"] != "otlp-sidecar"]
    assert len(apps) == len(pod["spec"]["containers"])
    for container in apps:
        assert any(e["name"] == "OTEL_EXPORTER_OTLP_ENDPOINT" for e in container["env"])
    assert result["spec"]["containers"][0].get("env", [])[: len(pod["spec"]["containers"][0].get("env", []))] == (
        pod["spec"]["containers"][0].get("env", [])
    )


async def test_answers_and_logs_never_show_a_card_number_from_the_review(
    webhook: Webhook, caplog: pytest.LogCaptureFixture,
) -> None:
    """The review is the requester's text: an annotation's value, a kind, a pod name quoted back
    or logged comes out masked and cut (was echoed whole, a 3,200-character WARNING line)."""
    caplog.set_level("INFO", logger="otlp_sidecar.webhook")
    number = "4111 1111 1111 1111"
    pod = deployment_pod(**{"otlp-sidecar.io/inject": f"{number} " + "y" * 3000})
    pod["metadata"]["name"] = f"pay-{number}"
    status, answer = await webhook.post("/mutate", admission_review(pod))
    assert status == 200 and answer["response"]["allowed"] is False
    message = answer["response"]["status"]["message"]
    assert "**** **** **** 1111" in message and len(message.encode()) <= 1024
    bad_version = {"apiVersion": f"v1 {number} " + "x" * 3000, "kind": "AdmissionReview",
                   "request": {"uid": "u-1"}}
    status, answer = await webhook.post("/mutate", bad_version)
    assert status == 400 and "**** **** **** 1111" in answer["response"]["status"]["message"]
    logged = [record.getMessage() for record in caplog.records if record.name.startswith("otlp_sidecar.webhook")]
    assert logged and all(number not in line and len(line) < 1000 for line in logged), logged
    assert any("pod=pay-**** **** **** 1111" in line for line in logged), logged


async def test_reviews_that_would_cost_too_much_are_refused_before_decoding(
    config: WebhookConfig, tmp_path: Path,
) -> None:
    """The webhook runs in 128 Mi: 8 MiB of `[{},{},...]` took 270 MiB to decode, 550,000 tiny
    containers made a 157 MB patch in 8.5 s, 8 MiB of `[` a 500 and a traceback. With the default
    limits each is refused with a message, and a normal review is answered after them."""
    pki = make_pki(tmp_path)
    client_tls = ssl.create_default_context(cafile=pki.ca_cert)
    async with running(_server_config(config, pki)) as (_, port):
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_tls)) as session:
            webhook = Webhook(f"https://localhost:{port}", session, pki, "127.0.0.1", port)
            many_objects = b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": [' + (
                b"{}," * 1_000_000) + b"{}]}"  # 3 MB: under the default 3 MiB
            status, answer = await webhook.post("/mutate", many_objects)
            assert status == 413 and "would take about" in answer["response"]["status"]["message"]
            status, answer = await webhook.post("/mutate", b"[" * 100_000)
            assert status == 400 and "nests too deep" in answer["response"]["status"]["message"]
            pod = deployment_pod(**{"otlp-sidecar.io/inject": "true"})
            pod["spec"]["containers"] = [{"name": f"c{i}"} for i in range(257)]
            status, answer = await webhook.post("/mutate", admission_review(pod))
            assert status == 200 and answer["response"]["allowed"] is False
            assert "holds 257 containers, more than the 256" in answer["response"]["status"]["message"]
            normal = admission_review(deployment_pod(**{"otlp-sidecar.io/inject": "true"}))
            ok, answer = await webhook.post("/mutate", normal)
            assert ok == 200 and answer["response"]["allowed"] is True


async def test_invalid_reviews_are_all_counted_and_logged_at_most_once_a_second(
    webhook: Webhook, caplog: pytest.LogCaptureFixture,
) -> None:
    """Anyone who reaches the port can send invalid reviews at any rate: the log keeps a line a
    second (the next one says how many were left out), the metric counts each."""
    caplog.set_level("INFO", logger="otlp_sidecar.webhook")
    for _ in range(20):
        status, _ = await webhook.post("/mutate", b"nope")
        assert status == 400
    lines = [r.getMessage() for r in caplog.records if "result=invalid" in r.getMessage()]
    assert len(lines) == 1, lines
    await asyncio.sleep(1.05)
    await webhook.post("/mutate", b"nope")
    lines = [r.getMessage() for r in caplog.records if "result=invalid" in r.getMessage()]
    assert len(lines) == 2 and lines[1].endswith("(19 more invalid reviews since the last line)"), lines
    _, metrics = await webhook.get("/metrics")
    assert 'otlp_sidecar_webhook_reviews_total{result="invalid",scope="pod"} 21.0' in metrics
    # a normal review is logged whatever the pace of invalid ones
    await webhook.post("/mutate", admission_review(deployment_pod(**{"otlp-sidecar.io/inject": "true"})))
    assert any("result=injected" in r.getMessage() for r in caplog.records)
