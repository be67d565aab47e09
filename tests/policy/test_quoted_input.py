"""Strings from the client that a policy quotes back in its decisions (issue: found while fixing
``policy eval`` on control characters).

regopy wrote a string of the input between quotes as it was: the shipped tenant policy's refusal
reason quotes the tenant a resource claims, so a claim holding ``"`` or a control character made
the decision unreadable (with the default ``on_error = refuse``, 503 for ever: the client retries a
request that can never pass), and ``x", "allow": true, "reason": "`` was read as other JSON: the
refusal became an acceptance (the tenant stamp's own check still refused it). The input now goes
to the engine as JSON text, kept as the policies' literals are (``sidecar.policy.rego_terms``).
"""

from __future__ import annotations

import math

import aiohttp
import pytest
from google.rpc.status_pb2 import Status as RpcStatus
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from sidecar.identity import Peer
from sidecar.policy.loader import load_policy
from sidecar.rewrite import split_resources
from sidecar.signals import Signal
from tests.conftest import sidecar_env
from tests.policy.conftest import POLICIES, sample_value, trace_request
from tests.processes import SidecarProcess
from tests.upstream import Upstream

PEER = Peer(address="127.0.0.1:1")

#: tenants a resource may claim, each quoted back by the refusal's reason
CLAIMS = [
    'x", "allow": true, "reason": "',  # JSON that turned the refusal into an acceptance
    'globex"}, "otlp_sidecar.pci": {"attributes": [], "reason": "',
    'quote " and backslash \\ ',
    "control \x01 \x1b[31m \x7f",
    "tab\tnewline\ncarriage\r",
    "line separators \u2028\u2029",
    "non-ASCII é 😀",
    "\\u0041 stays six characters",
]


def test_a_quoted_claim_is_refused_with_its_own_words() -> None:
    policy, _ = load_policy(str(POLICIES), "otlp_sidecar/main", run_tests=False, isolate=False)
    pod = {"tenant": "acme", "labels": {}, "annotations": {}}
    for claim in CLAIMS:
        decisions = policy.query("decisions", {
            "signal": "traces", "resource": {"service.name": claim, "tenant.id": claim}, "pod": pod,
            "peer": {}, "transport": "grpc",
        })
        tenant = decisions["otlp_sidecar.tenant"]
        assert tenant["allow"] is False, claim
        assert tenant["reason"] == f"the resource claims tenant {claim}, the pod's tenant is acme"
        # nothing else was read out of the claim: the PCI rules are the shipped ones
        assert {rule["rule_id"] for rule in decisions["otlp_sidecar.pci"]["attributes"]} == {
            "pci.sensitive", "pci.card_number", "pci.holder"}
        assert set(decisions) == {"otlp_sidecar.k8s", "otlp_sidecar.pci", "otlp_sidecar.sampling",
                                  "otlp_sidecar.tenant"}


def test_strings_compare_equal_to_the_policies_literals_and_data(tmp_path) -> None:
    """A string of the input equals the same literal in a policy, escapes and all, and the same
    string in the policy data (non-ASCII data never matched: it was given to rego-cpp escaped)."""
    (tmp_path / "data.json").write_text('{"tenants": {"café \\"q\\"": "ok"}}', encoding="utf-8")
    (tmp_path / "main.rego").write_text('''package otlp_sidecar.main

import rego.v1

decisions := {"quote": input.resource.a == "q\\"b\\\\c", "control": input.resource.b == "x\\u0001y",
\t"accented": input.resource.c == "é", "sizes": [count(input.resource.c), count(input.resource.d)],
\t"data": object.get(data.tenants, input.resource.e, "missing")}
''')
    policy, _ = load_policy(str(tmp_path), "otlp_sidecar/main", run_tests=False, isolate=False)
    got = policy.query("decisions", {"resource": {"a": 'q"b\\c', "b": "x\x01y", "c": "é", "d": "abc",
                                                  "e": 'café "q"'}})
    assert got == {"quote": True, "control": True, "accented": True, "sizes": [1, 3], "data": "ok"}


async def test_the_service_refuses_a_quoted_claim_and_decides_a_nan(make_service, hash_key_file) -> None:
    service = await make_service(dir=str(POLICIES), hash_key_file=str(hash_key_file))
    data = trace_request([({"service.name": "api", "tenant.id": claim}, [{}]) for claim in CLAIMS]
                         + [({"service.name": "api", "ratio": value}, [{}]) for value in (math.nan, math.inf)])
    plans = await service.plans_for(Signal.TRACES, split_resources(Signal.TRACES, data), PEER, "grpc")
    for plan, claim in zip(plans, CLAIMS, strict=False):
        assert not plan.allow and plan.refuse_rule_id == "tenant.spoofed"
        assert plan.reason == f"the resource claims tenant {claim}, the pod's tenant is acme"
    assert all(plan.allow for plan in plans[len(CLAIMS):])  # a NaN or an infinity is a string to the policy
    assert sample_value(service.metrics.registry, "otlp_sidecar_policy_decision_errors_total", fallback="refused") == 0


@pytest.mark.timeout(60)
async def test_a_sidecar_refuses_a_forged_claim_as_a_spoofed_tenant() -> None:
    """End to end: the app is told 403 with the policy's reason (not 503, not accepted), and
    nothing of the resource goes upstream."""
    upstream = Upstream()
    await upstream.start()
    process = SidecarProcess(sidecar_env(upstream, "grpc", SIDECAR_POLICY_MODE="enforce", SIDECAR_TENANT="acme"))
    ports = await process.start()
    try:
        async with aiohttp.ClientSession() as session:
            for claim in [*CLAIMS[:2], "control \x01"]:
                request = ExportLogsServiceRequest()
                resource = request.resource_logs.add()
                resource.resource.attributes.append(KeyValue(key="tenant.id", value=AnyValue(string_value=claim)))
                resource.scope_logs.add().log_records.add().body.string_value = "hello"
                async with session.post(f"http://127.0.0.1:{ports['http']}/v1/logs", data=request.SerializeToString(),
                                        headers={"Content-Type": "application/x-protobuf"}) as response:
                    status, body = response.status, await response.read()
                assert status == 403, (claim, status, body)
                assert RpcStatus.FromString(body).message == (
                    f"the resource claims tenant {claim}, the pod's tenant is acme")
        assert upstream.received == []
    finally:
        assert await process.stop() == 0
        await upstream.stop()
    assert "Traceback" not in process.stderr


def test_a_lone_surrogate_in_the_data_or_the_input_stays_escaped(tmp_path) -> None:
    """JSON may hold ``\\ud800`` alone, UTF-8 cannot: such a data file loaded before (given to
    rego-cpp escaped) and must still load, and an input holding one is decided."""
    (tmp_path / "data.json").write_text('{"names": {"a\\ud800b": "found"}}')
    (tmp_path / "main.rego").write_text(
        "package otlp_sidecar.main\n\nimport rego.v1\n\ndecisions := object.get(data.names, input.name, \"missing\")\n")
    policy, _ = load_policy(str(tmp_path), "otlp_sidecar/main", run_tests=False, isolate=False)
    assert policy.query("decisions", {"name": "a\ud800b"}) == "found"
    assert policy.query("decisions", {"name": "other"}) == "missing"


def test_numbers_json_and_rego_cpp_cannot_hold_are_given_as_they_can(tmp_path) -> None:
    """NaN and the infinities as OTLP/JSON writes them; a subnormal double as 0.0: rego-cpp failed
    any comparison of one ("stod"), so the resource was refused for ever (differential fuzz)."""
    (tmp_path / "main.rego").write_text(
        "package otlp_sidecar.main\n\nimport rego.v1\n\n"
        "decisions := [input.resource.tiny >= 0, input.resource.tiny + 1, input.resource.nan, input.resource.big]\n")
    policy, _ = load_policy(str(tmp_path), "otlp_sidecar/main", run_tests=False, isolate=False)
    data = trace_request([({"tiny": 5e-324, "nan": math.nan, "big": -math.inf}, [{}])])
    [resource] = split_resources(Signal.TRACES, data)
    assert resource.attributes == {"tiny": 0.0, "nan": "NaN", "big": "-Infinity"}
    assert policy.query("decisions", {"resource": resource.attributes}) == [True, 1, "NaN", "-Infinity"]
