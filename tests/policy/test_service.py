"""PolicyService with the shipped policies (real regopy) and the real rewriter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from sidecar.configkit import ConfigError
from sidecar.identity import Peer, PodIdentity
from sidecar.policy.errors import PolicyUnavailable
from sidecar.policy.source import read_policy_dir
from sidecar.rewrite import rewrite, split_resources
from sidecar.rewrite.plan import HASH_PREFIX, PASS_THROUGH
from sidecar.signals import Signal
from tests.policy.conftest import HASH_KEY, POLICIES, attrs_of, sample_value, trace_request

PEER = Peer(address="127.0.0.1:50000")
CARD = "4111 1111 1111 1111"


async def test_no_policy_dir_applies_the_bundled_set(make_service) -> None:
    service = await make_service(dir="")
    data = trace_request([({"service.name": "a"}, [{"attrs": {"note": CARD}, "error": True}])])
    plans = await service.plans_for(Signal.TRACES, split_resources(Signal.TRACES, data), PEER, "grpc")
    assert plans != [PASS_THROUGH]
    result = rewrite(Signal.TRACES, data, plans)
    assert CARD.encode() not in result.data and b"**** **** **** 1111" in result.data
    status = service.status()
    assert (status["mode"], status["bundled"], status["hash_key"]) == ("enforce", True, "random, made for this pod")
    assert status["version"] == read_policy_dir(str(POLICIES)).version  # the package's copy is policies/
    assert service.ready


async def test_policies_applied_through_the_rewriter(make_service, hash_key_file: Path) -> None:
    service = await make_service(dir=str(POLICIES), hash_key_file=str(hash_key_file))
    data = trace_request(
        [
            (
                {"service.name": "checkout"},
                [
                    {
                        "attrs": {
                            "card.number": CARD,
                            "payment.card.cvv": "123",
                            "note": f"paid with {CARD}",
                            "cardholder_name": "Jane Roe",
                        },
                        "error": True,
                    },
                ],
            ),
        ]
    )
    resources = split_resources(Signal.TRACES, data)
    plans = await service.plans_for(Signal.TRACES, resources, PEER, "http")
    result = rewrite(Signal.TRACES, data, plans)
    out = ExportTraceServiceRequest.FromString(result.data)
    resource = attrs_of(out.resource_spans[0].resource.attributes)
    assert resource["tenant.id"] == "acme"
    span = out.resource_spans[0].scope_spans[0].spans[0]  # an error span: kept by sampling
    attrs = attrs_of(span.attributes)
    assert "payment.card.cvv" not in attrs
    assert attrs["card.number"] == "**** **** **** 1111"
    assert attrs["note"] == "paid with **** **** **** 1111"
    assert attrs["cardholder_name"].startswith("hmac-sha256:")
    assert "Jane" not in result.data.decode("latin-1")
    service.record_counts(Signal.TRACES, result.counts)
    registry = service.metrics.registry
    assert (
        sample_value(
            registry,
            "otlp_sidecar_policy_rule_actions_total",
            signal="traces",
            rule_id="pci.sensitive",
            action="drop",
        )
        == 1
    )


async def test_rego_runs_once_per_distinct_resource(make_service, hash_key_file: Path) -> None:
    service = await make_service(dir=str(POLICIES), hash_key_file=str(hash_key_file))
    registry = service.metrics.registry
    data = trace_request(
        [
            ({"service.name": "a"}, [{} for _ in range(50)]),
            ({"service.name": "b"}, [{} for _ in range(50)]),
        ]
    )
    resources = split_resources(Signal.TRACES, data)
    for _ in range(10):
        await service.plans_for(Signal.TRACES, resources, PEER, "grpc")
    assert sample_value(registry, "otlp_sidecar_policy_decision_cache_total", result="miss") == 2
    assert sample_value(registry, "otlp_sidecar_policy_decision_cache_total", result="hit") == 18
    assert sample_value(registry, "otlp_sidecar_policy_decision_seconds_count", backend="embedded") == 2
    # another peer, signal or transport is another decision
    await service.plans_for(Signal.TRACES, resources[:1], Peer(address="x", tls=True), "grpc")
    await service.plans_for(Signal.LOGS, resources[:1], PEER, "grpc")
    assert sample_value(registry, "otlp_sidecar_policy_decision_cache_total", result="miss") == 4


async def test_new_connections_of_a_host_share_its_decisions(make_service, hash_key_file: Path) -> None:
    """The policy sees the client's host, not its ephemeral port: each new connection of a host
    hits the cache; another host, or the same host over TLS, is another decision."""
    service = await make_service(dir=str(POLICIES), hash_key_file=str(hash_key_file))
    registry = service.metrics.registry
    resources = split_resources(Signal.TRACES, trace_request([({"service.name": "a"}, [{}])]))
    for port in range(40000, 40020):
        await service.plans_for(Signal.TRACES, resources, Peer(address=f"10.1.2.3:{port}"), "grpc")
        await service.plans_for(Signal.TRACES, resources, Peer(address=f"[fd00::7]:{port}"), "grpc")
    assert sample_value(registry, "otlp_sidecar_policy_decision_cache_total", result="miss") == 2
    assert sample_value(registry, "otlp_sidecar_policy_decision_cache_total", result="hit") == 38
    await service.plans_for(Signal.TRACES, resources, Peer(address="10.1.2.4:40000"), "grpc")
    await service.plans_for(Signal.TRACES, resources, Peer(address="10.1.2.3:40000", tls=True), "grpc")
    await service.plans_for(Signal.TRACES, resources, Peer(address="/run/app.sock"), "grpc")
    assert sample_value(registry, "otlp_sidecar_policy_decision_cache_total", result="miss") == 5


async def test_cache_is_bounded(make_service, hash_key_file: Path) -> None:
    service = await make_service(dir=str(POLICIES), hash_key_file=str(hash_key_file), cache_size=3)
    for n in range(10):
        data = trace_request([({"service.name": f"svc-{n}"}, [{}])])
        await service.plans_for(Signal.TRACES, split_resources(Signal.TRACES, data), PEER, "grpc")
    assert service.status()["cache_entries"] == 3


async def test_export_headers_and_status(make_service, hash_key_file: Path) -> None:
    service = await make_service(dir=str(POLICIES), hash_key_file=str(hash_key_file))
    assert service.export_headers() == {"X-Scope-OrgID": "acme"}
    assert service.rate_limit() is None  # unlimited unless data.json sets a limit
    status = service.status()
    assert status["version"] == service.version and len(service.version) == 16
    assert status["backend"] == "embedded"
    assert "pci/pci.rego" in status["files"] and "data.json" in status["files"]
    assert status["tests_passed"] >= 30
    assert status["hash_key_loaded"] is True
    assert HASH_KEY.decode() not in json.dumps(status)
    registry = service.metrics.registry
    assert sample_value(registry, "otlp_sidecar_policy_info", version=service.version, backend="embedded") == 1
    assert sample_value(registry, "otlp_sidecar_policy_reloads_total", result="ok") == 1


async def test_dry_run_counts_but_changes_nothing(make_service, hash_key_file: Path) -> None:
    service = await make_service(dir=str(POLICIES), hash_key_file=str(hash_key_file), dry_run=True)
    data = trace_request([({"service.name": "checkout"}, [{"attrs": {"cvv": "123", "n": CARD}}])])
    plans = await service.plans_for(Signal.TRACES, split_resources(Signal.TRACES, data), PEER, "grpc")
    assert all(p.dry_run for p in plans)
    result = rewrite(Signal.TRACES, data, plans)
    assert result.data == data
    assert any(n > 0 for n in result.counts.values())


async def test_no_hash_key_file_hashes_with_a_random_key_per_pod(make_service, caplog) -> None:
    first = await make_service(dir=str(POLICIES))
    second = await make_service(dir=str(POLICIES))
    assert "random key made for this pod" in caplog.text
    data = trace_request([({"service.name": "a"}, [{"attrs": {"cardholder_name": "Jane Roe"}, "error": True}])])
    outputs = []
    for service in (first, second):
        assert service.status()["hash_key"] == "random, made for this pod"
        plans = await service.plans_for(Signal.TRACES, split_resources(Signal.TRACES, data), PEER, "grpc")
        result = rewrite(Signal.TRACES, data, plans)
        assert b"Jane Roe" not in result.data and HASH_PREFIX.encode() in result.data
        outputs.append(result.data)
    assert outputs[0] != outputs[1]  # two pods, two keys


async def test_hash_key_file_that_does_not_exist(make_service, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        await make_service(dir=str(POLICIES), hash_key_file=str(tmp_path / "nope.key"))
    assert caught.value.key == "policy.hash_key_file"
    assert "does not exist" in caught.value.message


async def test_broken_policy_dir_is_a_start_up_error(make_service, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        await make_service(dir=str(tmp_path / "missing"))
    assert caught.value.key == "policy.dir"
    assert "does not exist" in caught.value.message


async def test_pod_without_tenant_gets_no_egress_header(make_service, hash_key_file: Path) -> None:
    service = await make_service(
        pod=PodIdentity(name="x", namespace="y"),
        dir=str(POLICIES),
        hash_key_file=str(hash_key_file),
    )
    assert service.export_headers() == {}


async def test_decision_log_holds_no_sensitive_value(make_service, hash_key_file: Path, tmp_path: Path) -> None:
    log_file = tmp_path / "decisions.jsonl"
    service = await make_service(dir=str(POLICIES), hash_key_file=str(hash_key_file), decision_log=str(log_file))
    data = trace_request([
        ({"service.name": "checkout", "tenant.id": "globex", "card": CARD}, [{"attrs": {"cvv": "cvv-Q7Z"}}]),
    ])
    plans = await service.plans_for(Signal.TRACES, split_resources(Signal.TRACES, data), PEER, "grpc")
    service.record_counts(Signal.TRACES, rewrite(Signal.TRACES, data, plans).counts)
    await service.stop()
    lines = [json.loads(line) for line in log_file.read_text().splitlines()]
    decision, counts = lines
    assert decision["kind"] == "decision" and decision["outcome"] == "decided"
    assert decision["policy_version"] == service.version
    assert decision["path"] == "otlp_sidecar/main/decisions"
    assert decision["allow"] is False and "tenant.spoofed" in decision["rule_ids"]
    assert decision["decision_id"] and decision["duration_ms"] > 0
    assert counts["kind"] == "counts" and counts["counts"]["tenant.spoofed:refuse"] == 1
    text = log_file.read_text()
    # values distinctive enough that a timestamp or an id cannot contain them by chance
    for secret in (CARD.replace(" ", "").replace("-", ""), CARD[-8:], "globex", "cvv-Q7Z", HASH_KEY.decode()):
        assert secret not in text


QUOTING = """\
package otlp_sidecar.quoting

import rego.v1

# a policy bug: a part's key built from the resource (the engine refuses the decision, quoting it)
decision_for(request) := {sprintf("note %v", [request.resource.order]): true} if request.resource.order
decision_for(request) := {} if not request.resource.order
"""
QUOTING_TEST = """\
package otlp_sidecar.quoting_test

import rego.v1

import data.otlp_sidecar.quoting

test_nothing_without_an_order if {
\tquoting.decision_for({"resource": {}}) == {}
}
"""


async def test_an_engine_error_quoting_the_input_is_logged_masked(make_service, hash_key_file: Path,
                                                                  tmp_path: Path, caplog) -> None:
    """The error names what the policy built from the app's attributes: the log line and the
    decision log show it masked and cut (before: whole)."""
    from tests.pci_invariant.helpers import policy_set_with

    root = policy_set_with(tmp_path, "otlp_sidecar.quoting", QUOTING, QUOTING_TEST)
    log_file = tmp_path / "decisions.jsonl"
    service = await make_service(dir=str(root), hash_key_file=str(hash_key_file), decision_log=str(log_file))
    data = trace_request([({"service.name": "checkout", "order": CARD + " " + "z" * 3000}, [{}])])
    with pytest.raises(PolicyUnavailable):
        await service.plans_for(Signal.TRACES, split_resources(Signal.TRACES, data), PEER, "grpc")
    await service.stop()
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("sidecar"))
    assert "policy decision failed (traces)" in logged and "note **** **** **** 1111" in logged
    text = log_file.read_text()
    assert '"outcome": "refused"' in text.replace('":"', '": "') and "**** **** **** 1111" in text
    for shown in (logged, text):
        assert CARD not in shown and "411111" not in shown.replace(" ", "")
        assert max(len(line) for line in shown.splitlines()) < 2000
