"""The remote back-end against a real OPA server (``opa run --server``, built by ``make peers``).

The bundled policies are loaded into OPA; the sidecar's decisions through it equal the embedded
engine's on generated inputs. OPA hung (SIGSTOP), down, restarting, answering an evaluation error,
or without the policy (undefined decision): the sidecar fails closed (refuses retryably, or with
``on_error = last_good`` applies the strict plan), says why in the log and counts it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sidecar.identity import Peer
from sidecar.policy.errors import PolicyUnavailable
from sidecar.rewrite import split_resources
from sidecar.signals import Signal
from tests.conftest import SHARED_CORPUS
from tests.policy.conftest import POLICIES, sample_value, trace_request
from tests.policy.generated import generated_resources, request_for
from tests.policy.opa_server import Opa

pytestmark = pytest.mark.timeout(90)

PEER = Peer(address="127.0.0.1:1")
ERRORS = "otlp_sidecar_policy_decision_errors_total"

@pytest.fixture
async def opa(tmp_path: Path) -> AsyncIterator[Opa]:
    server = Opa(tmp_path, POLICIES)
    await server.start()
    yield server
    await server.stop()

def remote(opa: Opa, hash_key_file: Path, **fields: Any) -> dict[str, Any]:
    # generous: decisions that must succeed get 5 s on a loaded CI machine (the hung test sets its own)
    return {"backend": "opa", "opa_url": opa.url, "hash_key_file": str(hash_key_file), "opa_timeout": 5.0,
            **fields}

def resources(*attributes: dict[str, Any]):
    return split_resources(Signal.TRACES, trace_request([(attrs, [{}]) for attrs in attributes]))

async def test_decisions_equal_the_embedded_engine(make_service, opa: Opa, hash_key_file: Path) -> None:
    via_opa = await make_service(**remote(opa, hash_key_file))
    embedded = await make_service(dir=str(POLICIES), hash_key_file=str(hash_key_file))
    assert via_opa.export_headers() == embedded.export_headers() == {"X-Scope-OrgID": "acme"}
    compared = 0
    for seed, (signal_, transport) in enumerate(
        [(Signal.TRACES, "grpc"), (Signal.TRACES, "http"), (Signal.LOGS, "grpc"), (Signal.METRICS, "http")]
    ):
        batch = generated_resources(seed, 40)
        infos = split_resources(signal_, request_for(signal_, batch))
        got = await via_opa.plans_for(signal_, infos, PEER, transport)
        want = await embedded.plans_for(signal_, infos, PEER, transport)
        assert got == want
        compared += len(got)
    assert compared == 160
    # the shared card-number corpus, where it exists, as resource attribute values (extra check)
    corpus = SHARED_CORPUS / "pan_cases.json"
    if corpus.exists():
        values = [c["value"] for c in json.loads(corpus.read_text())["cases"] if c["where"] == "resource.attr"]
        batch = [{"service.name": "checkout", "note": value} for value in values[:60]]
        infos = split_resources(Signal.TRACES, request_for(Signal.TRACES, batch))
        assert await via_opa.plans_for(Signal.TRACES, infos, PEER, "grpc") == await embedded.plans_for(
            Signal.TRACES, infos, PEER, "grpc")
    # and the decisions did come from OPA: its decision log has the sidecar's queries
    logged = [e for e in opa.decision_logs() if e.get("path") == "otlp_sidecar/main/decisions"]
    assert logged and all(e["input"]["pod"]["tenant"] == "acme" for e in logged)
    assert sample_value(via_opa.metrics.registry, ERRORS, fallback="refused") == 0

async def test_strings_the_policy_quotes_back_decide_as_in_opa(make_service, opa: Opa, hash_key_file: Path) -> None:
    """Quotes, backslashes, control and non-ASCII characters in a claimed tenant (quoted back by
    the refusal's reason), and a NaN: the embedded engine decides exactly as OPA (the embedded
    one read such a decision as other JSON, or not at all)."""
    from tests.policy.test_quoted_input import CLAIMS

    via_opa = await make_service(**remote(opa, hash_key_file))
    embedded = await make_service(dir=str(POLICIES), hash_key_file=str(hash_key_file))
    infos = resources(*[{"service.name": claim, "tenant.id": claim} for claim in CLAIMS],
                      {"service.name": "api", "ratio": float("nan")}, {"service.name": "api", "ratio": float("-inf")})
    got = await via_opa.plans_for(Signal.TRACES, infos, PEER, "grpc")
    assert got == await embedded.plans_for(Signal.TRACES, infos, PEER, "grpc")
    assert [plan.allow for plan in got] == [False] * len(CLAIMS) + [True, True]
    assert got[0].reason == f"the resource claims tenant {CLAIMS[0]}, the pod's tenant is acme"


async def test_policy_not_loaded_fails_closed(make_service, tmp_path: Path, hash_key_file: Path, caplog) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    bare = Opa(tmp_path, empty)  # OPA up, the policy never loaded into it
    await bare.start()
    try:
        caplog.set_level(logging.WARNING)
        service = await make_service(**remote(bare, hash_key_file))
        assert service.export_headers() == {}
        assert "no decision for otlp_sidecar/main/pod_settings" in service.status()["last_reload_error"]
        with pytest.raises(PolicyUnavailable, match="undefined"):
            await service.plans_for(Signal.TRACES, resources({"service.name": "checkout"}), PEER, "grpc")
        assert sample_value(service.metrics.registry, ERRORS, fallback="refused") == 1
        assert "no decision for otlp_sidecar/main/decisions" in caplog.text

        # with on_error = last_good there is no good plan yet: the strict built-in plan masks
        lenient = await make_service(**remote(bare, hash_key_file, on_error="last_good"))
        plans = await lenient.plans_for(Signal.TRACES, resources({"service.name": "checkout"}), PEER, "grpc")
        assert plans[0].detectors[0].rule_id == "builtin.strict.pan"
        assert sample_value(lenient.metrics.registry, ERRORS, fallback="strict") == 1
    finally:
        await bare.stop()

async def test_wrong_opa_path_fails_closed(make_service, opa: Opa, hash_key_file: Path) -> None:
    service = await make_service(**remote(opa, hash_key_file, opa_path="otlp_sidecar/mian"))
    with pytest.raises(PolicyUnavailable, match="no decision for otlp_sidecar/mian/decisions"):
        await service.plans_for(Signal.TRACES, resources({"service.name": "checkout"}), PEER, "grpc")
    assert sample_value(service.metrics.registry, ERRORS, fallback="refused") == 1

async def test_opa_evaluation_error_refuses(make_service, tmp_path: Path, hash_key_file: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    # two values for one complete rule: OPA answers 500 eval_conflict_error at query time
    (broken / "broken.rego").write_text(
        "package broken\n\ndecisions := 1 if input.signal != \"\"\n\ndecisions := 2 if input.transport != \"\"\n"
        "\npod_settings := {}\n"
    )
    server = Opa(tmp_path, POLICIES, broken)
    await server.start()
    try:
        service = await make_service(**remote(server, hash_key_file, opa_path="broken"))
        with pytest.raises(PolicyUnavailable) as caught:
            await service.plans_for(Signal.TRACES, resources({"service.name": "checkout"}), PEER, "grpc")
        assert "OPA answered 500" in str(caught.value) and "eval_conflict_error" in str(caught.value)
    finally:
        await server.stop()

async def test_opa_hung_then_back(make_service, opa: Opa, hash_key_file: Path) -> None:
    service = await make_service(**remote(opa, hash_key_file, opa_timeout=0.3, remote_cache_ttl=0.0))
    assert opa.proc is not None
    opa.proc.send_signal(signal.SIGSTOP)  # accepts connections, answers nothing
    try:
        started = time.monotonic()
        with pytest.raises(PolicyUnavailable, match=r"did not answer within 0\.3 s"):
            await service.plans_for(Signal.TRACES, resources({"service.name": "a"}), PEER, "grpc")
        assert time.monotonic() - started < 2.0
    finally:
        opa.proc.send_signal(signal.SIGCONT)
    # back: decisions from OPA again (a resumed process may take more than 0.3 s to answer at first)
    deadline = time.monotonic() + 15
    while True:
        try:
            plans = await service.plans_for(Signal.TRACES, resources({"service.name": "a"}), PEER, "grpc")
            break
        except PolicyUnavailable:
            assert time.monotonic() < deadline, "OPA's decisions did not come back after it resumed"
    assert not plans[0].is_noop

async def test_opa_down_and_restarted(make_service, opa: Opa, tmp_path: Path, hash_key_file: Path) -> None:
    service = await make_service(**remote(opa, hash_key_file, remote_cache_ttl=0.05, on_error="last_good"))
    good = await service.plans_for(Signal.TRACES, resources({"service.name": "a"}), PEER, "grpc")
    await opa.stop()
    await asyncio.sleep(0.1)  # the cached plan expires: OPA must be asked again
    # down: the last good plan for a resource seen before, the strict plan for a new one
    assert await service.plans_for(Signal.TRACES, resources({"service.name": "a"}), PEER, "grpc") == good
    new = await service.plans_for(Signal.TRACES, resources({"service.name": "b"}), PEER, "grpc")
    assert new[0].detectors[0].rule_id == "builtin.strict.pan"
    registry = service.metrics.registry
    assert sample_value(registry, ERRORS, fallback="last_good") == 1
    assert sample_value(registry, ERRORS, fallback="strict") == 1
    # restarted on the same port: decisions from OPA again
    again = Opa(tmp_path, POLICIES, port=opa.port)
    await again.start()
    try:
        await asyncio.sleep(0.1)
        back = await service.plans_for(Signal.TRACES, resources({"service.name": "b"}), PEER, "grpc")
        assert back[0].detectors[0].rule_id != "builtin.strict.pan"
        assert sample_value(registry, ERRORS, fallback="strict") == 1
    finally:
        await again.stop()

async def test_sidecar_process_refuses_while_opa_has_no_policy(tmp_path: Path, hash_key_file: Path) -> None:
    """End to end: a real sidecar pointed at a real OPA without the policy answers 503, forwards nothing."""
    from tests.processes import SidecarProcess

    empty = tmp_path / "empty"
    empty.mkdir()
    bare = Opa(tmp_path, empty)
    await bare.start()
    out = tmp_path / "forwarded.jsonl"
    sidecar = SidecarProcess({
        "SIDECAR_GRPC_ENDPOINT": "127.0.0.1:0", "SIDECAR_HTTP_ENDPOINT": "127.0.0.1:0",
        "SIDECAR_ADMIN_ENDPOINT": "127.0.0.1:0", "SIDECAR_POLICY_BACKEND": "opa",
        "SIDECAR_POLICY_OPA_URL": bare.url, "SIDECAR_POLICY_HASH_KEY_FILE": str(hash_key_file),
        "SIDECAR_TENANT": "acme", "SIDECAR_EXPORTER_TYPE": "debug", "SIDECAR_EXPORTER_DEBUG_OUTPUT": str(out),
    })
    try:
        await sidecar.start(timeout=60)
        body = trace_request([({"service.name": "checkout"}, [{"card.number": "4111 1111 1111 1111"}])])
        url = f"http://127.0.0.1:{sidecar.ports['http']}/v1/traces"
        async with aiohttp.ClientSession() as session, session.post(
            url, data=body, headers={"Content-Type": "application/x-protobuf"},
        ) as response:
            assert response.status == 503  # retryable: the client keeps the data
        await asyncio.sleep(0.3)
        assert not out.exists() or b"4111" not in out.read_bytes()
    finally:
        await sidecar.stop()
        await bare.stop()
    assert "no decision for otlp_sidecar/main/decisions" in sidecar.stderr

async def test_a_wrong_opa_path_is_logged_and_shown_by_ready(opa: Opa, tmp_path: Path, hash_key_file: Path) -> None:
    """Found in a misconfiguration review: with a wrong opa_path the sidecar started, /ready said
    "policy": "ok" and nothing was logged, while every new resource was refused. It stays ready (an
    OPA outage must not take the app's pod out of its Services), but says why, and logs it."""
    from tests.processes import SidecarProcess

    sidecar = SidecarProcess({
        "SIDECAR_GRPC_ENDPOINT": "127.0.0.1:0", "SIDECAR_HTTP_ENDPOINT": "127.0.0.1:0",
        "SIDECAR_ADMIN_ENDPOINT": "127.0.0.1:0", "SIDECAR_POLICY_BACKEND": "opa",
        "SIDECAR_POLICY_OPA_URL": opa.url, "SIDECAR_POLICY_OPA_PATH": "otlp_sidecar/mian",
        "SIDECAR_POLICY_HASH_KEY_FILE": str(hash_key_file), "SIDECAR_EXPORTER_TYPE": "debug",
        "SIDECAR_EXPORTER_DEBUG_OUTPUT": str(tmp_path / "forwarded.jsonl"),
    })
    try:
        await sidecar.start(timeout=60)
        async with aiohttp.ClientSession() as session, session.get(
            f"http://127.0.0.1:{sidecar.ports['admin']}/ready") as response:
            status, ready = response.status, await response.json()
    finally:
        await sidecar.stop()
    assert status == 200 and ready["status"] == "ready"
    assert ready["policy"].startswith("failing: pod settings from OPA: OPA at ")
    assert "has no decision for otlp_sidecar/mian/pod_settings (undefined: is opa_path right" in ready["policy"]
    assert "ERROR" in sidecar.stderr and "decisions for new resources fail until it answers" in sidecar.stderr
