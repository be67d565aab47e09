"""Realistic OTLP trace requests for the benchmarks, with card numbers from the corpus hidden in
some of their strings, and the default plan the issue describes."""

from __future__ import annotations

import json
import random
from pathlib import Path

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from sidecar.rewrite.plan import (
    AttributeRule,
    KeepRule,
    Plan,
    ResourceStamp,
    Sampling,
    ValueDetector,
)

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "corpus" / "pan_cases.json"
FALLBACK_VALUES = [
    "https://shop.example/pay?card=4111111111111111&amount=12.50",
    "card 5555 5555 5555 4444 declined by issuer",
    "INSERT INTO payments(pan) VALUES ('3782-822463-10005')",
]

DEFAULT_PLAN = Plan(
    attribute_rules=(
        AttributeRule("pci.cvv", "*cvv*", "drop"),
        AttributeRule("pci.track", "*track?", "drop"),
        AttributeRule("pii.email", "user.email", "hash"),
        AttributeRule("pci.card", "card.number", "mask_pan"),
    ),
    detectors=(ValueDetector("pci.pan", "pan", "mask_pan"),),
    stamps=(ResourceStamp("tenant", "tenant.id", "acme"),),
    sampling=Sampling("sample.10", 0.1, keep=(
        KeepRule("keep.errors", "status_error"),
        KeepRule("keep.slow", "attr_at_least", "duration.ms", 5000),
        KeepRule("keep.vip", "attr_equals", "customer.tier", "vip"),
    )),
    hash_key=b"bench-key-0123456789",
)


def shipped_plan(body: bytes, tenant: str = "acme") -> Plan:
    """The plan the bundled policies (policies/) give the first resource of ``body``: what the
    sidecar applies in the benchmarks, asked of the real policy engine once."""
    import asyncio
    import tempfile

    import prometheus_client

    from sidecar.identity import Peer, PodIdentity
    from sidecar.policy.config import PolicyConfig
    from sidecar.policy.service import PolicyService
    from sidecar.rewrite import split_resources
    from sidecar.signals import Signal

    async def ask() -> Plan:
        with tempfile.TemporaryDirectory() as tmp:
            key = Path(tmp) / "hash.key"
            key.write_bytes(b"bench-key-0123456789abcdef0123456")
            config = PolicyConfig(dir=str(REPO / "policies"), hash_key_file=str(key), reload_interval=0)
            pod = PodIdentity(name="bench-0", namespace="shop", service_account="bench", tenant=tenant)
            service = PolicyService(config, pod, prometheus_client.CollectorRegistry())
            await service.start()
            try:
                resources = split_resources(Signal.TRACES, body)
                return (await service.plans_for(Signal.TRACES, resources[:1], Peer("127.0.0.1"), "http"))[0]
            finally:
                await service.stop()

    return asyncio.run(ask())


def corpus_values() -> list[str]:
    if CORPUS.exists():
        return [c["value"] for c in json.loads(CORPUS.read_text())["cases"]]
    return FALLBACK_VALUES


def _set(attrs, key: str, value) -> None:
    av = attrs.add(key=key).value
    if isinstance(value, str):
        av.string_value = value
    elif isinstance(value, bool):
        av.bool_value = value
    elif isinstance(value, int):
        av.int_value = value
    else:
        av.double_value = value


def trace_request(spans: int = 512, seed: int = 1, pan_share: float = 0.05) -> bytes:
    """One ExportTraceServiceRequest of ``spans`` spans (about 380 bytes each)."""
    rng = random.Random(seed)
    values = corpus_values()
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    for k, v in (("service.name", "checkout"), ("service.version", "1.4.2"),
                 ("k8s.namespace.name", "shop"), ("k8s.pod.name", "checkout-7d9f8-x2x9q"),
                 ("host.name", "node-12"), ("telemetry.sdk.language", "python")):
        _set(rs.resource.attributes, k, v)
    ss = rs.scope_spans.add()
    ss.scope.name = "opentelemetry.instrumentation.flask"
    ss.scope.version = "0.48b0"
    for i in range(spans):
        sp = ss.spans.add(trace_id=rng.randbytes(16), span_id=rng.randbytes(8),
                          parent_span_id=rng.randbytes(8), name=f"GET /api/orders/{i % 50}",
                          kind=2, start_time_unix_nano=1_700_000_000_000_000_000 + i,
                          end_time_unix_nano=1_700_000_000_050_000_000 + i)
        url = f"https://shop.example/api/orders/{rng.randint(1, 99999)}?page=2"
        if rng.random() < pan_share:
            url = rng.choice(values)
        _set(sp.attributes, "http.method", "GET")
        _set(sp.attributes, "http.url", url)
        _set(sp.attributes, "http.status_code", rng.choice([200, 200, 200, 404, 500]))
        _set(sp.attributes, "net.peer.name", "10.1.2.3")
        _set(sp.attributes, "user.id", f"u-{rng.randint(1, 10**6)}")
        _set(sp.attributes, "duration.ms", rng.randint(1, 6000))
        _set(sp.attributes, "db.statement",
             "SELECT id, total FROM orders WHERE customer_id = ? LIMIT 20")
        if i % 7 == 0:
            _set(sp.attributes, "customer.tier", rng.choice(["vip", "standard"]))
        if i % 10 == 0:
            ev = sp.events.add(time_unix_nano=1_700_000_000_010_000_000, name="exception")
            _set(ev.attributes, "exception.message", rng.choice(values))
        if rng.random() < 0.02:
            sp.status.code = 2
            sp.status.message = "upstream failed"
    return req.SerializeToString()


def any_string(v: AnyValue) -> str:
    return v.string_value
