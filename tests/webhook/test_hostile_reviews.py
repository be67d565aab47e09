"""Reviews built to hurt the webhook (the security review's reproductions, /tmp/whattack): each is
answered quickly, in little memory, with a clear message and without a traceback in the log.

The webhook runs in a 128 MiB pod and reviews on its event loop, one at a time: a review that
takes a second or a hundred MiB stalls or kills every other pod's admission.
"""

from __future__ import annotations

import base64
import json
import logging
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest

from sidecar.webhook.config import WebhookConfig
from sidecar.webhook.inject import MAX_CONTAINERS, MAX_PATCH_BYTES, Scope
from sidecar.webhook.review import review
from tests.webhook.conftest import admission_review, apply, deployment_pod, sidecar_of

#: the most the server reads of a request body
MAX_BODY = 3 * 1024 * 1024


def body_of(pod: dict[str, Any], namespace: str = "payments") -> bytes:
    return json.dumps(admission_review(pod, namespace=namespace), ensure_ascii=False).encode()


def answered(body: bytes, scope: Scope, config: WebhookConfig) -> dict[str, Any]:
    """The AdmissionReview response, checked to be what the API server can read (strict JSON)."""
    status, answer, _ = review(body, scope, config)
    assert status == 200
    json.dumps(answer, allow_nan=False)
    response: dict[str, Any] = answer["response"]
    return response


def fastest(run: Callable[[], object], times: int = 3) -> float:
    """The best of ``times`` runs, in seconds (the machine is shared: the best is the cost)."""
    best = float("inf")
    for _ in range(times):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def peak_bytes(run: Callable[[], object]) -> int:
    """What ``run`` allocated at its peak (Python's allocations, as tracemalloc counts them)."""
    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def carried_sidecar(config: WebhookConfig, env: list[dict[str, Any]]) -> dict[str, Any]:
    """A container the webhook takes for its sidecar: the injected name, image and command."""
    return {"name": "otlp-sidecar", "image": config.injection.image, "command": ["otlp-sidecar", "run"], "env": env}


def pod_with_sidecar(config: WebhookConfig, env: list[dict[str, Any]]) -> dict[str, Any]:
    pod = deployment_pod()
    pod["spec"]["containers"].append(carried_sidecar(config, env))
    return pod


def no_errors_logged(caplog: pytest.LogCaptureFixture) -> None:
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


# -- 1. the sidecar's config loader on a PCI-scope pod's own sidecar: what it is given is bounded ----


def header_attack(config: WebhookConfig) -> bytes:
    """a08: a 3 MiB OTEL_EXPORTER_OTLP_HEADERS of "%41" (the loader unquotes it once for the exporter
    and once for each signal that has its own setting): 1.7-3.4 s of event loop and 300 MiB."""
    env = [{"name": f"OTEL_EXPORTER_OTLP_{s}_TIMEOUT", "value": "1000"} for s in ("TRACES", "METRICS", "LOGS")]
    header = {"name": "OTEL_EXPORTER_OTLP_HEADERS", "value": "a="}
    base = len(body_of(pod_with_sidecar(config, [header, *env])))
    header["value"] = "a=" + "%41" * ((MAX_BODY - 512 - base) // 3)
    body = body_of(pod_with_sidecar(config, [header, *env]))
    assert MAX_BODY - 1024 < len(body) <= MAX_BODY
    return body


def test_a_huge_header_value_on_a_carried_sidecar_is_refused_at_once(config: WebhookConfig) -> None:
    body = header_attack(config)
    response = answered(body, Scope.PCI, config)
    assert response["allowed"] is False and response["status"]["code"] == 403
    message = response["status"]["message"]
    assert message.startswith("namespace payments is in PCI scope: the pod's otlp-sidecar container sets "
                              "'OTEL_EXPORTER_OTLP_HEADERS' to a value of more than 8192 bytes; PCI-scope "
                              "pods are only admitted with a sidecar whose configuration the webhook reads"), message
    # the whole review (decoding 3 MiB included) holds the loop less than 100 ms, and takes little memory
    assert fastest(lambda: review(body, Scope.PCI, config)) < 0.1
    assert peak_bytes(lambda: review(body, Scope.PCI, config)) < 24 * 1024 * 1024


def test_the_carried_sidecars_env_is_bounded_in_all_too(config: WebhookConfig) -> None:
    # nine values of 7.5 KiB: each under the 8 KiB of a value, together over the 64 KiB
    env = [{"name": f"OTEL_EXPORTER_OTLP_{s}_HEADERS", "value": "a=" + "%41" * 2560}
           for s in ("TRACES", "METRICS", "LOGS")]
    env += [{"name": f"X_{i}", "value": "v" * 7680} for i in range(6)]
    response = answered(body_of(pod_with_sidecar(config, env)), Scope.PCI, config)
    assert response["allowed"] is False and response["status"]["code"] == 403
    assert "sets env names and values of more than 65536 bytes" in response["status"]["message"]

    many = [{"name": f"X_{i}", "value": ""} for i in range(513)]
    response = answered(body_of(pod_with_sidecar(config, many)), Scope.PCI, config)
    assert response["allowed"] is False and "has 513 env entries" in response["status"]["message"]


def test_a_carried_sidecar_with_real_headers_is_still_admitted(config: WebhookConfig) -> None:
    pod = deployment_pod()
    injected = apply(pod, answered_patch(pod, config))
    sidecar_of(injected)["env"].append(
        {"name": "OTEL_EXPORTER_OTLP_HEADERS", "value": "authorization=Bearer%20" + "x" * 2000 + ",tenant=payments"})
    response = answered(body_of(injected), Scope.PCI, config)
    assert response["allowed"] is True and "patch" not in response


def answered_patch(pod: dict[str, Any], config: WebhookConfig) -> list[dict[str, Any]]:
    response = answered(body_of(pod), Scope.PCI, config)
    assert response["allowed"] is True, response
    patch: list[dict[str, Any]] = json.loads(base64.b64decode(response["patch"]))
    return patch


# -- 2. many containers claiming to be the sidecar -----------------------------------------------------


def test_a_pod_with_several_sidecars_is_invalid_and_the_loader_runs_once_at_most(
    config: WebhookConfig, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a07: 256 containers and 256 init containers, all the injected sidecar: the loader ran 512 times
    # (~100 ms a 64 KiB review). Container names are unique in a pod (the API server refuses others),
    # and the webhook recognises its sidecar by name: a pod has one sidecar at most.
    import sidecar.config

    pod = deployment_pod()
    pod["spec"]["containers"] = [carried_sidecar(config, []) for _ in range(MAX_CONTAINERS)]
    pod["spec"]["initContainers"] = [carried_sidecar(config, []) for _ in range(MAX_CONTAINERS)]
    body = body_of(pod)
    assert len(body) < 96 * 1024

    calls = []
    real_load = sidecar.config.load
    monkeypatch.setattr(sidecar.config, "load", lambda *a, **k: calls.append(1) or real_load(*a, **k))
    response = answered(body, Scope.PCI, config)
    assert response["allowed"] is False and response["status"]["code"] == 400
    assert response["status"]["message"] == (
        "invalid pod: more than one container is named 'otlp-sidecar': container names must be unique "
        "across spec.containers and spec.initContainers")
    assert len(calls) <= 1
    assert fastest(lambda: review(body, Scope.PCI, config)) < 0.03


@pytest.mark.parametrize("scope", list(Scope))
def test_duplicate_container_names_are_invalid_in_every_scope(config: WebhookConfig, scope: Scope) -> None:
    pod = deployment_pod(**{"otlp-sidecar.io/inject": "true"})
    pod["spec"]["initContainers"] = [{"name": "app", "image": "migrate:1"}]
    response = answered(body_of(pod), scope, config)
    assert response["allowed"] is False and response["status"]["code"] == 400
    assert "more than one container is named 'app'" in response["status"]["message"]


# -- 3. the answer's size: container names are DNS labels, and the patch is bounded ---------------------


def test_long_container_names_are_refused_not_answered_with_14_mib(config: WebhookConfig) -> None:
    # a02: 256 + 256 containers named 'é' * 3000: every name goes into the status annotation (JSON in
    # JSON, then base64): a 14 MiB answer, 130 MiB at its peak
    pod = deployment_pod(**{"otlp-sidecar.io/inject": "true"})
    name = "é" * ((MAX_BODY - 64 * 1024) // (2 * MAX_CONTAINERS) // 2)
    pod["spec"]["containers"] = [{"name": f"{name}{i}", "image": "x"} for i in range(MAX_CONTAINERS)]
    pod["spec"]["initContainers"] = [{"name": f"{name}{i}", "image": "x"} for i in range(MAX_CONTAINERS)]
    body = body_of(pod, "shop")
    assert len(body) <= MAX_BODY
    status, answer, _ = review(body, Scope.POD, config)
    response = answer["response"]
    assert status == 200 and response["allowed"] is False and response["status"]["code"] == 400
    assert response["status"]["message"].startswith(f"invalid pod: spec.containers[0].name '{'é' * 64}' is not "
                                                     "a container name: a DNS label (RFC 1123)")
    assert len(json.dumps(answer)) < 2048


@pytest.mark.parametrize("name", ["App", "-app", "app-", "a_b", "a.b", "", "a" * 64, "app\n"])
def test_container_names_must_be_dns_labels(config: WebhookConfig, name: str) -> None:
    pod = deployment_pod(**{"otlp-sidecar.io/inject": "true"})
    pod["spec"]["containers"].append({"name": name, "image": "x"})
    response = answered(body_of(pod, "shop"), Scope.POD, config)
    assert response["allowed"] is False and response["status"]["code"] == 400
    assert f"spec.containers[1].name {name!r} is not a container name" in response["status"]["message"]


def test_the_largest_pod_the_webhook_injects_stays_well_under_the_patch_bound(config: WebhookConfig) -> None:
    pod = deployment_pod(**{"otlp-sidecar.io/inject": "true"})
    pod["spec"]["containers"] = [{"name": f"c{i:03}-" + "a" * 58, "image": "x"} for i in range(MAX_CONTAINERS)]
    pod["spec"]["initContainers"] = [{"name": f"i{i:03}-" + "a" * 58, "image": "x"}
                                     for i in range(MAX_CONTAINERS - 1)]  # and the sidecar
    status, answer, outcome = review(body_of(pod, "shop"), Scope.POD, config)
    assert status == 200 and outcome.result == "injected", outcome
    assert len(json.dumps(answer)) < MAX_PATCH_BYTES // 2


def test_a_patch_over_the_bound_is_not_answered(config: WebhookConfig) -> None:
    # what else of the pod goes into the patch (its owner's name, for SIDECAR_WORKLOAD_NAME) is bounded
    # by the API server; the patch is bounded here too
    pod = deployment_pod(**{"otlp-sidecar.io/inject": "true"})
    pod["metadata"]["ownerReferences"][0]["name"] = "checkout-" + "x" * (2 * 1024 * 1024)
    pod["metadata"]["labels"].pop("pod-template-hash")
    status, answer, outcome = review(body_of(pod, "shop"), Scope.POD, config)
    response = answer["response"]
    assert status == 200 and response["allowed"] is False and "patch" not in response
    assert response["status"]["code"] == 400
    assert response["status"]["message"].startswith("invalid pod: the patch that injects the sidecar would take ")
    assert f"more than the {MAX_PATCH_BYTES} the webhook answers" in response["status"]["message"]
    assert outcome.result == "invalid"


# -- 4. wrong types and values the loader fails on: a clear answer, no traceback ------------------------


def set_env_name(pod: dict[str, Any]) -> None:
    pod["spec"]["containers"][0]["env"] = [{"name": ["x"]}]


def set_env_value(pod: dict[str, Any]) -> None:
    pod["spec"]["containers"][0]["env"] = [{"name": "PORT", "value": 8080}]


def set_init_env_name(pod: dict[str, Any]) -> None:
    pod["spec"]["initContainers"] = [{"name": "migrate", "image": "m", "env": [{"name": {"a": 1}}]}]


def set_grace(value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda pod: pod["spec"].update(terminationGracePeriodSeconds=value)


@pytest.mark.parametrize(("mutate", "message"), [
    (set_env_name, "spec.containers[0].env[0].name must be a string, got a list"),
    (set_env_value, "spec.containers[0].env[0].value must be a string, got 8080"),
    (set_init_env_name, "spec.initContainers[0].env[0].name must be a string, got an object"),
    (set_grace("30"), "spec.terminationGracePeriodSeconds must be a whole number of seconds from 0 to "
                      "9223372036854775787, got '30'"),
    (set_grace(float("nan")), "spec.terminationGracePeriodSeconds must be a whole number of seconds from 0 to "
                              "9223372036854775787, got nan"),
    (set_grace(float("inf")), "spec.terminationGracePeriodSeconds must be a whole number of seconds"),
    (set_grace(1.5), "spec.terminationGracePeriodSeconds must be a whole number of seconds"),
    (set_grace(-1), "spec.terminationGracePeriodSeconds must be a whole number of seconds"),
    (set_grace(True), "spec.terminationGracePeriodSeconds must be a whole number of seconds from 0 to "
                      "9223372036854775787, got true"),
    (set_grace(2**63), "spec.terminationGracePeriodSeconds must be a whole number of seconds"),
], ids=["env-name-list", "env-value-number", "init-env-name-object", "grace-string", "grace-nan",
        "grace-infinity", "grace-fraction", "grace-negative", "grace-bool", "grace-over-int64"])
def test_wrong_types_are_an_invalid_pod_not_a_traceback(
    config: WebhookConfig, caplog: pytest.LogCaptureFixture, mutate: Callable[[dict[str, Any]], None], message: str,
) -> None:
    pod = deployment_pod(**{"otlp-sidecar.io/inject": "true"})
    mutate(pod)
    response = answered(body_of(pod, "shop"), Scope.POD, config)  # strict JSON: no NaN in the patch
    assert response["allowed"] is False and response["status"]["code"] == 400, response
    assert response["status"]["message"].startswith("invalid pod: " + message), response["status"]["message"]
    no_errors_logged(caplog)


BAD_URL_VARIABLES = [
    "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "SIDECAR_EXPORTER_ENDPOINT", "SIDECAR_EXPORTER_TRACES_ENDPOINT",
    "SIDECAR_EXPORTER_METRICS_ENDPOINT", "SIDECAR_EXPORTER_LOGS_ENDPOINT", "SIDECAR_POLICY_BUNDLES",
    "SIDECAR_POLICY_OPA_URL",
]


@pytest.mark.parametrize("value", ["http://[", "http://[::1"])
@pytest.mark.parametrize("variable", BAD_URL_VARIABLES)
def test_a_value_the_loader_fails_on_is_the_carried_sidecars_bad_configuration(
    config: WebhookConfig, caplog: pytest.LogCaptureFixture, variable: str, value: str,
) -> None:
    pod = pod_with_sidecar(config, [{"name": variable, "value": value}])
    response = answered(body_of(pod), Scope.PCI, config)
    assert response["allowed"] is False and response["status"]["code"] == 403, response
    message = response["status"]["message"]
    assert message.startswith(
        "namespace payments is in PCI scope: the pod's otlp-sidecar container gives the sidecar a configuration "
        "it refuses to start with ("), message
    # the loader names the setting and the variable (it raised urlsplit's "Invalid IPv6 URL" before)
    assert f"(from {variable}): " in message and "is not a valid URL" in message, message
    assert message.endswith("PCI-scope pods are only admitted with the sidecar in enforce mode"), message
    no_errors_logged(caplog)
