"""The remote back-end against a real OPA server (``opa run --server``, built by ``make peers``).

The bundled policies are loaded into OPA; the sidecar's decisions through it equal the embedded
engine's on generated inputs. OPA hung (SIGSTOP), down, restarting, answering an evaluation error,
or without the policy (undefined decision): the sidecar fails closed (refuses retryably, or with
``on_error = last_good`` applies the strict plan), says why in the log and counts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import signal
import socket
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sidecar.identity import Peer
from sidecar.policy.errors import PolicyUnavailable
from sidecar.rewrite import split_resources
from sidecar.signals import Signal
from tests.conftest import SHARED_CORPUS
from tests.peers import peer
from tests.policy.conftest import POLICIES, sample_value, trace_request

pytestmark = pytest.mark.timeout(90)

PEER = Peer(address="127.0.0.1:1")
ERRORS = "otlp_sidecar_policy_decision_errors_total"

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])

class Opa:
    """A real ``opa run --server`` on a loopback port, with console decision logs."""

    def __init__(self, workdir: Path, *paths: Path, port: int = 0) -> None:
        self.paths = paths
        self.port = port or _free_port()
        self.log_path = workdir / f"opa-{self.port}.log"
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, timeout: float = 30.0) -> None:
        log = self.log_path.open("ab")
        self.proc = await asyncio.create_subprocess_exec(
            str(peer("opa")), "run", "--server", "--addr", f"127.0.0.1:{self.port}",
            "--log-level", "info", "--set", "decision_logs.console=true", *map(str, self.paths),
            stdout=log, stderr=log,
        )
        log.close()
        try:
            deadline = time.monotonic() + timeout
            async with aiohttp.ClientSession() as session:
                while True:
                    assert self.proc.returncode is None, self.log_path.read_text()
                    with contextlib.suppress(aiohttp.ClientError):
                        async with session.get(f"{self.url}/health") as response:
                            if response.status == 200:
                                return
                    assert time.monotonic() < deadline, f"OPA not healthy in {timeout} s"
                    await asyncio.sleep(0.05)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()

    def decision_logs(self) -> list[dict[str, Any]]:
        entries = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if entry.get("msg") == "Decision Log":
                    entries.append(entry)
        return entries

@pytest.fixture
async def opa(tmp_path: Path) -> AsyncIterator[Opa]:
    server = Opa(tmp_path, POLICIES)
    await server.start()
    yield server
    await server.stop()

def remote(opa: Opa, hash_key_file: Path, **fields: Any) -> dict[str, Any]:
    return {"backend": "opa", "opa_url": opa.url, "hash_key_file": str(hash_key_file), "opa_timeout": 2.0,
            **fields}

def resources(*attributes: dict[str, Any]):
    return split_resources(Signal.TRACES, trace_request([(attrs, [{}]) for attrs in attributes]))

def generated_resources(seed: int, count: int) -> list[dict[str, Any]]:
    """Resources with the attributes the bundled policies look at, mixed at random."""
    rng = random.Random(seed)
    pools: dict[str, Sequence[Any]] = {
        "service.name": ["checkout", "payments", "cart", "", "intruder"],
        "tenant.id": ["acme", "globex", "", "ACME"],
        "deployment.environment": ["prod", "test", "staging"],
        "k8s.namespace.name": ["shop", "kube-system", "payments"],
        "k8s.pod.name": ["api-0", "api-1"],
        "telemetry.sdk.language": ["python", "go", "java"],
        "service.version": ["1.0", "2.3.4"],
        "host.name": ["node-1", "node-2"],
    }
    out = []
    for _ in range(count):
        attrs = {key: rng.choice(values) for key, values in pools.items() if rng.random() < 0.6}
        out.append(attrs)
    return out

async def test_decisions_equal_the_embedded_engine(make_service, opa: Opa, hash_key_file: Path) -> None:
    via_opa = await make_service(**remote(opa, hash_key_file))
    embedded = await make_service(dir=str(POLICIES), hash_key_file=str(hash_key_file))
    assert via_opa.export_headers() == embedded.export_headers() == {"X-Scope-OrgID": "acme"}
    compared = 0
    for seed, (signal_, transport) in enumerate(
        [(Signal.TRACES, "grpc"), (Signal.TRACES, "http"), (Signal.LOGS, "grpc"), (Signal.METRICS, "http")]
    ):
        batch = generated_resources(seed, 40)
        infos = split_resources(signal_, _request_for(signal_, batch))
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
        infos = split_resources(Signal.TRACES, _request_for(Signal.TRACES, batch))
        assert await via_opa.plans_for(Signal.TRACES, infos, PEER, "grpc") == await embedded.plans_for(
            Signal.TRACES, infos, PEER, "grpc")
    # and the decisions did come from OPA: its decision log has the sidecar's queries
    logged = [e for e in opa.decision_logs() if e.get("path") == "otlp_sidecar/main/decisions"]
    assert logged and all(e["input"]["pod"]["tenant"] == "acme" for e in logged)
    assert sample_value(via_opa.metrics.registry, ERRORS, fallback="refused") == 0

def _request_for(signal_: Signal, batch: list[dict[str, Any]]) -> bytes:
    if signal_ is Signal.TRACES:
        return trace_request([(attrs, [{}]) for attrs in batch])
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

    from tests.policy.conftest import kv

    request: Any = ExportLogsServiceRequest() if signal_ is Signal.LOGS else ExportMetricsServiceRequest()
    for attrs in batch:
        if signal_ is Signal.LOGS:
            rl = request.resource_logs.add()
            rl.resource.attributes.extend(kv(k, v) for k, v in attrs.items())
            rl.scope_logs.add().log_records.add().body.string_value = "hello"
        else:
            rm = request.resource_metrics.add()
            rm.resource.attributes.extend(kv(k, v) for k, v in attrs.items())
            metric = rm.scope_metrics.add().metrics.add()
            metric.name = "orders"
            metric.gauge.data_points.add().as_int = 1
    return request.SerializeToString()

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
    plans = await service.plans_for(Signal.TRACES, resources({"service.name": "a"}), PEER, "grpc")
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
