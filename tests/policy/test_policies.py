"""The shipped policies, evaluated with real regopy: their own Rego tests, and their decisions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sidecar.policy.decision import compile_plan
from sidecar.policy.loader import load_policy
from tests.policy.conftest import HASH_KEY, POD, POLICIES


@pytest.fixture(scope="module")
def compiled():
    policy, results = load_policy(str(POLICIES), "otlp_sidecar/main", run_tests=True, isolate=False)
    return policy, results


def request(signal: str, resource: dict[str, Any], *, tls: bool = False, spiffe_id: str = "") -> dict[str, Any]:
    return {
        "signal": signal,
        "resource": resource,
        "pod": POD.as_input(),
        "peer": {"address": "127.0.0.1:40000", "tls": tls, "spiffe_id": spiffe_id},
        "transport": "grpc",
    }


def plan_for(compiled, signal: str, resource: dict[str, Any], **peer: Any):
    policy, _ = compiled
    decisions = policy.query("decisions", request(signal, resource, **peer))
    return compile_plan(decisions, policy.policy_set.file_of_package, hash_key=HASH_KEY)


def tenant_stamps(plan):
    return [s for s in plan.stamps if s.rule_id == "tenant.stamp"]


def test_every_shipped_rego_test_passes(compiled) -> None:
    _, results = compiled
    failed = [r.name for r in results if not r.passed]
    assert failed == []
    files = {r.file for r in results}
    # every policy file has its _test.rego beside it, and each ran
    for rego in POLICIES.rglob("*.rego"):
        if not rego.name.endswith("_test.rego"):
            test_file = rego.with_name(rego.stem + "_test.rego")
            assert test_file.exists(), f"{rego} has no _test.rego beside it"
            assert test_file.relative_to(POLICIES).as_posix() in files
    assert len(results) >= 30


def test_pci_plan_masks_cards_and_drops_security_codes(compiled) -> None:
    plan = plan_for(compiled, "logs", {"service.name": "checkout"})
    assert [(d.kind, d.action, d.rule_id) for d in plan.detectors] == [("pan", "mask_pan", "pci.pan")]
    by_pattern = {r.pattern: (r.action, r.rule_id) for r in plan.attribute_rules}
    for key in ("cvv", "*.cvv", "*_cvc", "track1", "pin", "pin_block", "*.pin.block", "security-code"):
        assert by_pattern[key] == ("drop", "pci.sensitive"), key
    assert by_pattern["card.number"] == ("mask_pan", "pci.card_number")
    assert by_pattern["*.card_number"] == ("mask_pan", "pci.card_number")
    assert by_pattern["cardholder_name"] == ("hash", "pci.holder")
    assert plan.hash_key == HASH_KEY
    # most protective first: every drop rule comes before the first hash rule
    actions = [r.action for r in plan.attribute_rules]
    assert actions.index("hash") > max(i for i, a in enumerate(actions) if a == "drop")


def test_camel_case_keys_of_card_data_are_masked_and_dropped(compiled) -> None:
    """Found in a new user's walk through the docs: `cardNumber` holding the number as an int and
    `securityCode` / `cardSecurityCode` went out as they were (the keys matched only with `.`,
    `_` or `-` between their words); camelCase is how Java, JavaScript and Go name fields."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

    from sidecar.rewrite import rewrite, split_resources
    from sidecar.signals import Signal

    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.add(key="service.name", value=AnyValue(string_value="checkout"))
    span = rs.scope_spans.add().spans.add(trace_id=b"\xff" * 16, span_id=b"\x01" * 8, name="pay")
    span.attributes.extend([
        KeyValue(key="cardNumber", value=AnyValue(int_value=4111111111111111)),
        KeyValue(key="payment.creditCardNumber", value=AnyValue(int_value=4111111111111111)),
        KeyValue(key="securityCode", value=AnyValue(string_value="123")),
        KeyValue(key="cardSecurityCode", value=AnyValue(string_value="123")),
        KeyValue(key="cardCvv", value=AnyValue(string_value="123")),
        KeyValue(key="cardholderName", value=AnyValue(string_value="Jane Doe")),
        KeyValue(key="japan", value=AnyValue(string_value="kept: one word is not matched inside another")),
    ])
    data = request.SerializeToString()
    plan = plan_for(compiled, "traces", {"service.name": "checkout"})
    resources = split_resources(Signal.TRACES, data)
    out = ExportTraceServiceRequest.FromString(rewrite(Signal.TRACES, data, [plan] * len(resources)).data)
    spans = [s for r in out.resource_spans for ss in r.scope_spans for s in ss.spans]
    attributes = {a.key: a.value for s in spans for a in s.attributes}
    assert not {"securityCode", "cardSecurityCode", "cardCvv"} & set(attributes)  # dropped
    for key in ("cardNumber", "payment.creditCardNumber"):
        value = attributes[key]
        assert "4111111111111111" not in str(value) and "1111" in str(value), (key, value)
    assert attributes["cardholderName"].string_value.startswith("hmac-sha256:")
    assert attributes["japan"].string_value.startswith("kept")


def test_tenant_is_stamped_from_the_pod(compiled) -> None:
    plan = plan_for(compiled, "traces", {"service.name": "api"})
    assert plan.allow
    assert [(s.key, s.value, s.on_conflict) for s in tenant_stamps(plan)] == [("tenant.id", "acme", "reject")]
    # and the pod's Kubernetes attributes, overwriting whatever the app claims
    assert {(s.key, s.value, s.on_conflict) for s in plan.stamps if s.rule_id == "k8s.stamp"} == {
        ("k8s.namespace.name", "shop", "overwrite"), ("k8s.pod.name", "api-0", "overwrite"),
    }


def test_spoofed_tenant_is_refused(compiled) -> None:
    plan = plan_for(compiled, "traces", {"service.name": "api", "tenant.id": "globex"})
    assert not plan.allow
    assert plan.refuse_rule_id == "tenant.spoofed"
    assert "globex" in plan.reason


def with_data(policy_dir: Path, section: str, **values: Any):
    """Load the policy copy with tunables in data.json changed."""
    data_file = policy_dir / "data.json"
    data = json.loads(data_file.read_text())
    data["otlp_sidecar"]["config"][section].update(values)
    data_file.write_text(json.dumps(data))
    return load_policy(str(policy_dir), "otlp_sidecar/main", run_tests=False, isolate=False)


def test_mtls_identity_decides_the_tenant(policy_dir: Path) -> None:
    gateway = "spiffe://cluster.local/ns/pay/sa/gw"
    compiled = with_data(policy_dir, "tenant", spiffe_tenants={gateway: "payments"})
    verified = plan_for(compiled, "traces", {"tenant.id": "payments"}, tls=True, spiffe_id=gateway)
    assert verified.allow
    assert [s.value for s in tenant_stamps(verified)] == ["payments"]
    # the same SPIFFE ID without a verified TLS session is only a claim: the pod's tenant rules
    claimed = plan_for(compiled, "traces", {"tenant.id": "payments"}, tls=False, spiffe_id=gateway)
    assert not claimed.allow
    assert [s.value for s in tenant_stamps(claimed)] == ["acme"]


def test_tenant_conflict_mode_overwrite_from_policy_data(policy_dir: Path) -> None:
    compiled = with_data(policy_dir, "tenant", on_conflict="overwrite")
    plan = plan_for(compiled, "traces", {"tenant.id": "globex"})
    assert plan.allow
    assert [(s.value, s.on_conflict) for s in tenant_stamps(plan)] == [("acme", "overwrite")]


def test_vip_users_and_ratio_come_from_policy_data(policy_dir: Path) -> None:
    compiled = with_data(policy_dir, "sampling", vip_users=["u-7"], ratio=0.25, order_threshold=500)
    plan = plan_for(compiled, "traces", {"service.name": "checkout"})
    assert plan.sampling is not None and plan.sampling.ratio == pytest.approx(0.25)
    keep = {(k.rule_id, k.kind, k.key, k.value) for k in plan.sampling.keep}
    assert ("sampling.vip_user", "attr_equals", "enduser.id", "u-7") in keep
    assert ("sampling.large_order", "attr_at_least", "order.amount", 500) in keep


def test_sampling_keeps_errors_vips_and_large_orders_of_traces_only(compiled) -> None:
    plan = plan_for(compiled, "traces", {"service.name": "checkout"})
    assert plan.sampling is not None
    assert plan.sampling.ratio == pytest.approx(0.1)
    kinds = {(k.kind, k.key, k.value) for k in plan.sampling.keep}
    assert ("status_error", "", None) in kinds
    assert ("attr_at_least", "order.amount", 1000) in kinds
    assert plan_for(compiled, "logs", {"service.name": "checkout"}).sampling is None
    assert plan_for(compiled, "metrics", {"service.name": "checkout"}).sampling is None


def test_pod_settings_give_the_egress_header_and_rate_limit(compiled) -> None:
    policy, _ = compiled
    settings = policy.query("pod_settings", request("", {}))
    assert settings["export_headers"] == {"X-Scope-OrgID": "acme"}
    assert settings["rate_limit"] is None  # unlimited unless data.json sets a limit


#: values the chart (or an operator) may put into data.json: the shipped tests must pass with each
DATA_VARIANTS: list[tuple[str, dict[str, Any]]] = [
    ("sampling ratio 0.2", {"sampling": {"ratio": 0.2}}),
    ("sampling ratio 1", {"sampling": {"ratio": 1}}),
    ("sampling ratio 0", {"sampling": {"ratio": 0}}),
    ("sampling ratio as helm --set text", {"sampling": {"ratio": "0.35"}}),
    ("order threshold 5000, no error keep", {"sampling": {"order_threshold": 5000, "keep_errors": False}}),
    ("order threshold as text", {"sampling": {"order_threshold": "250"}}),
    ("tenant label and annotation", {"tenant": {"label": "example.com/team", "annotation": "example.com/owner"}}),
    ("tenant attribute and overwrite", {"tenant": {"attribute": "org.id", "on_conflict": "overwrite"}}),
    ("tenant required, no egress header", {"tenant": {"require_tenant": True, "egress_header": ""}}),
    ("pci: hash numbers, redact codes, drop holders",
     {"pci": {"pan_action": "hash", "sensitive_action": "redact", "card_number_action": "drop",
              "holder_action": "drop"}}),
    ("pci: fewer keys", {"pci": {"sensitive_keys": ["cvv"], "card_number_keys": ["pan"], "holder_keys": []}}),
    ("k8s stamps off", {"k8s": {"stamp": False}}),
    ("an exemption", {"exemptions": [
        {"rule_id": "qa.cards", "key": "qa.sample_value", "reason": "the processor's published test numbers"}]}),
]


@pytest.mark.parametrize(("name", "change"), DATA_VARIANTS, ids=[n for n, _ in DATA_VARIANTS])
def test_shipped_tests_pass_with_any_valid_data(tmp_path: Path, name: str, change: dict[str, Any]) -> None:
    """Issue 15: documented chart values (a ratio, a label, a threshold) used to fail the shipped tests."""
    import shutil

    target = tmp_path / "policies"
    shutil.copytree(POLICIES, target)
    data_file = target / "data.json"
    data = json.loads(data_file.read_text())
    config = data["otlp_sidecar"]["config"]
    for section, values in change.items():
        if isinstance(values, dict):
            config[section].update(values)
        else:
            config[section] = values
    data_file.write_text(json.dumps(data))
    policy, results = load_policy(str(target), "otlp_sidecar/main", run_tests=True, isolate=False)
    assert [r.name for r in results if not r.passed] == [], name
    assert len(results) >= 50
    decisions = policy.query("decisions", request("traces", {"service.name": "checkout"}))
    plan = compile_plan(decisions, policy.policy_set.file_of_package, hash_key=HASH_KEY)
    assert any(d.kind == "pan" for d in plan.detectors)
    if "ratio" in change.get("sampling", {}):
        assert plan.sampling is not None and plan.sampling.ratio == float(change["sampling"]["ratio"])


@pytest.mark.parametrize("key", ["note", "item", "deeper"])
def test_an_exemption_naming_a_common_key_does_not_trip_the_pci_probe(tmp_path: Path, key: str) -> None:
    """Found in a new user's walk through the docs: the probe planted its numbers in a map under
    the keys note, item and deeper, so an exemption of an app's `note` made `policy test` (and
    every load) report card numbers left unmasked, naming places the user never wrote. The probe's
    keys are its own now."""
    import shutil
    import subprocess
    import sys

    target = tmp_path / "policies"
    shutil.copytree(POLICIES, target)
    data_file = target / "data.json"
    data = json.loads(data_file.read_text())
    data["otlp_sidecar"]["config"]["exemptions"] = [
        {"rule_id": "qa.test_cards", "key": key, "reason": "QA test cards"}]
    data_file.write_text(json.dumps(data))
    done = subprocess.run([sys.executable, "-m", "sidecar", "policy", "test", str(target)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
