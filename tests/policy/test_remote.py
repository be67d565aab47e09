"""The remote OPA back-end against an OPA-compatible REST API served by the test.

A stand-in, kept for what a real OPA cannot be made to do on cue (answer exactly
when told, in milliseconds): it serves OPA's Data API (aiohttp on 127.0.0.1):
``POST /v1/data/<path>`` with ``{"input": ...}``, answered by evaluating the
shipped policies with regopy behind it; an undefined result is 200 without a
``result`` key, errors are 4xx/5xx with a ``code``/``message`` body, as OPA does.
The same behaviours against the real OPA (``make peers``) are in test_remote_opa.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from sidecar.identity import Peer
from sidecar.policy.errors import PolicyUnavailable
from sidecar.policy.loader import load_policy
from sidecar.rewrite import split_resources
from sidecar.signals import Signal
from tests.policy.conftest import POLICIES, sample_value, trace_request

PEER = Peer(address="127.0.0.1:1")
MESSAGE = "eval_conflict_error: functions must not produce multiple outputs"


class FakeOpa:
    """An OPA-compatible Data API over the shipped policies (regopy behind it)."""

    def __init__(self) -> None:
        self.policy, _ = load_policy(str(POLICIES), "otlp_sidecar/main", run_tests=False, isolate=False)
        self.mode = "ok"  # ok | undefined | error | slow | echo
        self.requests: list[tuple[str, Any]] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def data(self, request: web.Request) -> web.Response:
        path = request.match_info["path"]
        body = await request.json()
        self.requests.append((path, body.get("input")))
        if self.mode == "echo":  # a proxy before OPA that quotes what it was sent
            return web.json_response({"code": "bad_gateway", "message": f"upstream failed for {body}"}, status=502)
        if self.mode == "error":
            return web.json_response(
                {"code": "internal_error", "message": "eval_conflict_error: functions must not produce "
                 "multiple outputs"},
                status=500,
            )
        if self.mode == "slow":
            await asyncio.sleep(1.0)
        if self.mode == "undefined":
            return web.json_response({})
        package, _, rule = path.rpartition("/")
        if package != "otlp_sidecar/main":
            return web.json_response({})
        result = self.policy.query(rule, body.get("input"))
        return web.json_response({} if result is None else {"result": result})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/data/{path:.*}", self.data)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


@pytest.fixture
async def opa() -> AsyncIterator[FakeOpa]:
    server = FakeOpa()
    await server.start()
    yield server
    await server.stop()


def remote(opa: FakeOpa, hash_key_file, **fields: Any) -> dict[str, Any]:
    return {
        "backend": "opa", "opa_url": f"http://127.0.0.1:{opa.port}", "hash_key_file": str(hash_key_file),
        # generous: a loaded CI machine may take a while to answer; the slow test sets its own
        "opa_timeout": 5.0, **fields,
    }


def resources(*names: str):
    data = trace_request([({"service.name": n}, [{}]) for n in names])
    return split_resources(Signal.TRACES, data)


async def test_remote_decisions_match_the_embedded_engine(make_service, opa: FakeOpa, hash_key_file) -> None:
    service = await make_service(**remote(opa, hash_key_file))
    embedded = await make_service(dir=str(POLICIES), hash_key_file=str(hash_key_file))
    assert service.export_headers() == {"X-Scope-OrgID": "acme"}
    got = await service.plans_for(Signal.TRACES, resources("a", "b"), PEER, "http")
    want = await embedded.plans_for(Signal.TRACES, resources("a", "b"), PEER, "http")
    assert got == want
    paths = [p for p, _ in opa.requests]
    assert paths.count("otlp_sidecar/main/decisions") == 2
    assert paths.count("otlp_sidecar/main/pod_settings") == 1
    decision_input = opa.requests[-1][1]
    assert decision_input["pod"]["tenant"] == "acme" and decision_input["signal"] == "traces"
    assert decision_input["resource"] == {"service.name": "b"}
    # cached: no new request to OPA for the same resources
    await service.plans_for(Signal.TRACES, resources("a", "b"), PEER, "http")
    assert len(opa.requests) == 3
    assert service.status()["backend"] == "opa"


async def test_undefined_decision_fails_closed(make_service, opa: FakeOpa, hash_key_file) -> None:
    service = await make_service(**remote(opa, hash_key_file))
    opa.mode = "undefined"
    with pytest.raises(PolicyUnavailable, match="no decision for otlp_sidecar/main/decisions"):
        await service.plans_for(Signal.TRACES, resources("a"), PEER, "grpc")
    assert sample_value(service.metrics.registry, "otlp_sidecar_policy_decision_errors_total", fallback="refused") == 1


async def test_undefined_decision_with_last_good_is_the_strict_plan(make_service, opa: FakeOpa, hash_key_file) -> None:
    service = await make_service(**remote(opa, hash_key_file, on_error="last_good"))
    opa.mode = "undefined"
    plans = await service.plans_for(Signal.TRACES, resources("a"), PEER, "grpc")
    assert not plans[0].is_noop and plans[0].detectors[0].rule_id == "builtin.strict.pan"


async def test_opa_error_refuses_retryably(make_service, opa: FakeOpa, hash_key_file) -> None:
    service = await make_service(**remote(opa, hash_key_file, on_error="refuse"))
    opa.mode = "error"
    with pytest.raises(PolicyUnavailable) as caught:
        await service.plans_for(Signal.TRACES, resources("a"), PEER, "grpc")
    assert "OPA answered 500" in str(caught.value)
    assert "internal_error: eval_conflict_error" in str(caught.value)
    assert sample_value(service.metrics.registry, "otlp_sidecar_policy_decision_errors_total", fallback="refused") == 1


async def test_an_error_quoting_the_input_is_logged_masked_and_short(
    make_service, opa: FakeOpa, hash_key_file, caplog,
) -> None:
    """OPA's error text is logged at ERROR and kept in the decision log; something before OPA (a
    proxy) may quote the input, whose resource attributes are the app's: card numbers masked."""
    service = await make_service(**remote(opa, hash_key_file, on_error="refuse"))
    opa.mode = "echo"
    data = trace_request([({"service.name": "a", "payment.ref": "4111111111111111" + "x" * 400}, [{}])])
    with pytest.raises(PolicyUnavailable) as caught:
        await service.plans_for(Signal.TRACES, split_resources(Signal.TRACES, data), PEER, "grpc")
    assert "OPA answered 502" in str(caught.value) and "************1111" in str(caught.value)
    assert "4111111111111111" not in str(caught.value) and "4111111111111111" not in caught.value.__repr__()
    assert len(str(caught.value)) < 500
    assert "4111111111111111" not in caplog.text


async def test_opa_too_slow_refuses(make_service, opa: FakeOpa, hash_key_file) -> None:
    service = await make_service(**remote(opa, hash_key_file, on_error="refuse", opa_timeout=0.3))
    opa.mode = "slow"
    with pytest.raises(PolicyUnavailable, match=r"did not answer within 0\.3 s"):
        await service.plans_for(Signal.TRACES, resources("a"), PEER, "grpc")


async def test_opa_down_last_good_then_strict(make_service, opa: FakeOpa, hash_key_file) -> None:
    service = await make_service(**remote(opa, hash_key_file, on_error="last_good", remote_cache_ttl=0.05))
    good = await service.plans_for(Signal.TRACES, resources("a"), PEER, "grpc")
    assert good[0].detectors[0].rule_id != "builtin.strict.pan", "OPA's own decision, not the fallback"
    await opa.stop()
    await asyncio.sleep(0.1)  # the cached plan expires; OPA must be asked again
    again = await service.plans_for(Signal.TRACES, resources("a"), PEER, "grpc")
    assert again == good
    unknown = await service.plans_for(Signal.TRACES, resources("never-seen"), PEER, "grpc")
    assert unknown[0].detectors[0].rule_id == "builtin.strict.pan"
    assert unknown[0].detectors[0].action == "mask_pan"
    registry = service.metrics.registry
    assert sample_value(registry, "otlp_sidecar_policy_decision_errors_total", fallback="last_good") == 1
    assert sample_value(registry, "otlp_sidecar_policy_decision_errors_total", fallback="strict") == 1


async def test_opa_unreachable_at_start_is_not_fatal(make_service, hash_key_file, tmp_path) -> None:
    service = await make_service(
        backend="opa", opa_url="http://127.0.0.1:9", hash_key_file=str(hash_key_file), opa_timeout=0.2,
    )
    assert service.ready  # an OPA outage must not take the app's pod out of its Services
    assert service.export_headers() == {}
    assert "unreachable" in service.status()["last_reload_error"]
    assert service.problem.startswith("pod settings from OPA: OPA at http://127.0.0.1:9 is unreachable")
    with pytest.raises(PolicyUnavailable):
        await service.plans_for(Signal.TRACES, resources("a"), PEER, "grpc")


async def test_a_policy_dir_beside_a_remote_opa_is_named_as_not_loaded(make_service, opa: FakeOpa, hash_key_file,
                                                                          caplog) -> None:
    """Found in a new user's walk through the chart: the chart always mounts its policy set, and
    with backend opa (through extraEnv) it was silently not used (nor its tests, its PCI probe,
    its data.json). It is still not used (OPA decides), but the sidecar says so at start."""
    caplog.set_level("WARNING", logger="sidecar.policy.service")
    await make_service(**remote(opa, hash_key_file), dir=str(POLICIES))
    warned = [r.getMessage() for r in caplog.records if "is not loaded" in r.getMessage()]
    assert len(warned) == 1 and str(POLICIES) in warned[0] and "PCI probe" in warned[0]
    caplog.clear()
    await make_service(**remote(opa, hash_key_file))  # no directory given: nothing to say
    assert not [r for r in caplog.records if "is not loaded" in r.getMessage()]
