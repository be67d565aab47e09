"""AdmissionReview v1 in, AdmissionReview v1 out: parsing, answering, and never failing loudly.

:func:`review` turns the request body into ``(http_status, response_document,
outcome)``. Every problem becomes an answer with a message: a body that is not an
AdmissionReview gets HTTP 400; a review whose pod is malformed or must be refused
gets ``allowed: false`` with the reason. An unexpected error (a bug) is answered
as the scope's failure policy would: refused in PCI scope, admitted without the
sidecar elsewhere, with a warning.
"""

from __future__ import annotations

import base64
import json
import logging
from dataclasses import dataclass
from typing import Any

from sidecar.masked_text import client_message, quoted
from sidecar.webhook.config import WebhookConfig
from sidecar.webhook.inject import InvalidPod, Refused, Scope, decide
from sidecar.wire import json_charge

log = logging.getLogger("otlp_sidecar.webhook")

API_VERSION = "admission.k8s.io/v1"

#: what decoding one review may hold (json_charge's upper bound): a Pod of 1.3 MiB with 20,000
#: env entries is charged 33 MiB, one of 1.4 MiB with 10,000 annotations 19 MiB
MAX_DECODE_BYTES = 48 * 1024 * 1024
#: nesting counted (a Pod nests a dozen levels; json.loads would fail past about 1,000)
MAX_DEPTH = 200


@dataclass(frozen=True)
class Outcome:
    """What happened, for the log line and the metrics (never pod data beyond its name)."""

    result: str  # injected | skipped | refused | invalid | error
    reason: str
    namespace: str = ""
    pod: str = ""


def _answer(
    uid: str,
    allowed: bool,
    *,
    patch: list[dict[str, Any]] | None = None,
    code: int | None = None,
    message: str = "",
    warnings: list[str] | None = None,
) -> dict[str, Any]:
    response: dict[str, Any] = {"uid": uid, "allowed": allowed}
    if patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(json.dumps(patch).encode()).decode("ascii")
    # messages may quote the review (an annotation's value, the kind asked for): card numbers
    # masked, cut to 1 KiB, as every answer of the sidecar's
    if code is not None or message:
        response["status"] = {"code": code or (200 if allowed else 403), "message": client_message(message)}
    if warnings:
        response["warnings"] = [client_message(warning) for warning in warnings]
    return {"apiVersion": API_VERSION, "kind": "AdmissionReview", "response": response}


def rejection(message: str, code: int) -> dict[str, Any]:
    """An AdmissionReview answer for a request that could not be read at all."""
    return _answer("", False, code=code, message=message)


def review(body: bytes, scope: Scope, config: WebhookConfig) -> tuple[int, dict[str, Any], Outcome]:
    """Answer one AdmissionReview request body."""
    # what decoding it may hold, counted at C speed before json.loads (on the event loop, one at
    # a time): 8 MiB of `[{},{},...]` took 270 MiB of a webhook that runs in 128 Mi
    _, cost = json_charge.charge(body, MAX_DEPTH)
    if cost > MAX_DECODE_BYTES:
        message = (f"the AdmissionReview would take about {cost} bytes to decode, more than the "
                   f"{MAX_DECODE_BYTES} allowed (a Pod of 1.3 MiB with 20,000 env entries takes 33 MiB)")
        return 413, rejection(message, 413), Outcome("invalid", message)
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        message = f"the body is not JSON: {exc}"
        return 400, _answer("", False, code=400, message=message), Outcome("invalid", message)
    except RecursionError:
        message = "the body nests too deep to be a Pod"
        return 400, _answer("", False, code=400, message=message), Outcome("invalid", message)
    problem, uid, request = _request(document)
    if problem:
        return 400, _answer(uid, False, code=400, message=problem), Outcome("invalid", problem)
    assert request is not None
    try:
        return 200, *_decide(uid, request, scope, config)
    except Exception as exc:  # a bug must not crash the server or block every pod
        log.exception("internal error while reviewing uid=%s", quoted(uid, 64))
        message = f"otlp-sidecar webhook internal error ({type(exc).__name__})"
        outcome = Outcome("error", message, str(request.get("namespace", "")))
        if scope is Scope.PCI:
            return 200, _answer(uid, False, code=500, message=message), outcome
        return (
            200,
            _answer(uid, True, warnings=[message + "; the pod runs without the sidecar"]),
            outcome,
        )


def _request(document: Any) -> tuple[str, str, dict[str, Any] | None]:
    """(problem, uid, request) of an AdmissionReview document; problem is "" when it is usable."""
    if not isinstance(document, dict):
        return "the body is not an AdmissionReview object", "", None
    request = document.get("request")
    uid = request.get("uid") if isinstance(request, dict) else None
    uid = uid if isinstance(uid, str) else ""
    if document.get("kind") != "AdmissionReview" or document.get("apiVersion") != API_VERSION:
        got = f"{document.get('apiVersion')!r}/{document.get('kind')!r}"
        return f"expected apiVersion {API_VERSION} kind AdmissionReview, got {got}", uid, None
    if not isinstance(request, dict):
        return "the AdmissionReview has no request", uid, None
    if not uid:
        return "request.uid is missing", uid, None
    return "", uid, request


def _decide(
    uid: str,
    request: dict[str, Any],
    scope: Scope,
    config: WebhookConfig,
) -> tuple[dict[str, Any], Outcome]:
    given_kind, given_namespace = request.get("kind"), request.get("namespace")
    kind: dict[str, Any] = given_kind if isinstance(given_kind, dict) else {}
    operation = request.get("operation")
    namespace = given_namespace if isinstance(given_namespace, str) else ""
    pod = request.get("object")
    if kind.get("kind") != "Pod" or kind.get("group", "") != "" or request.get("subResource"):
        reason = f"not a pod ({kind.get('kind')!r}); nothing to do"
        return _answer(uid, True), Outcome("skipped", reason, namespace)
    if operation != "CREATE":
        return _answer(uid, True), Outcome("skipped", f"operation {operation!r}; only CREATE is injected", namespace)
    metadata = pod.get("metadata") if isinstance(pod, dict) else None
    if not namespace and isinstance(metadata, dict):
        namespace = str(metadata.get("namespace") or "")
    name = _pod_name(metadata)
    try:
        decision = decide(pod, namespace, scope, config)
    except InvalidPod as exc:
        message = f"invalid pod: {exc}"
        return _answer(uid, False, code=400, message=message), Outcome("invalid", message, namespace, name)
    except Refused as exc:
        return _answer(uid, False, code=403, message=str(exc)), Outcome("refused", str(exc), namespace, name)
    if not decision.inject:
        return _answer(uid, True), Outcome("skipped", decision.reason, namespace, name)
    answer = _answer(uid, True, patch=decision.patch, warnings=decision.warnings)
    return answer, Outcome("injected", decision.reason, namespace, name)


def _pod_name(metadata: Any) -> str:
    if not isinstance(metadata, dict):
        return ""
    name = metadata.get("name") or ""
    if not name and metadata.get("generateName"):
        name = f"{metadata['generateName']}*"
    return str(name)
