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
from sidecar.signals import Signal

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
    """The plan the bundled policies (policies/) give the first resource of trace request ``body``:
    what the sidecar applies in the benchmarks, asked of the real policy engine once."""
    from sidecar.signals import Signal

    return shipped_plan_for(Signal.TRACES, body, tenant)


def shipped_plan_for(signal: Signal, body: bytes, tenant: str = "acme", policies: Path | None = None) -> Plan:
    """The plan a policy directory (the bundled ``policies/`` by default) gives the first
    resource of ``body`` for ``signal``, asked of the real policy engine."""
    import asyncio
    import tempfile

    import prometheus_client

    from sidecar.identity import Peer, PodIdentity
    from sidecar.policy.config import PolicyConfig
    from sidecar.policy.service import PolicyService
    from sidecar.rewrite import split_resources

    async def ask() -> Plan:
        with tempfile.TemporaryDirectory() as tmp:
            key = Path(tmp) / "hash.key"
            key.write_bytes(b"bench-key-0123456789abcdef0123456")
            config = PolicyConfig(dir=str(policies or REPO / "policies"), hash_key_file=str(key),
                                  reload_interval=0)
            pod = PodIdentity(name="bench-0", namespace="shop", service_account="bench", tenant=tenant)
            service = PolicyService(config, pod, prometheus_client.CollectorRegistry())
            await service.start()
            try:
                resources = split_resources(signal, body)
                return (await service.plans_for(signal, resources[:1], Peer("127.0.0.1"), "http"))[0]
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


#: the resource every benchmark request comes from (one pod's SDK)
POD_RESOURCE = (("service.name", "checkout"), ("service.version", "1.4.2"),
                ("k8s.namespace.name", "shop"), ("k8s.pod.name", "checkout-7d9f8-x2x9q"),
                ("host.name", "node-12"), ("telemetry.sdk.language", "python"))


def _pod_resource(resource) -> None:
    for key, value in POD_RESOURCE:
        _set(resource.attributes, key, value)


def trace_request(spans: int = 512, seed: int = 1, pan_share: float = 0.05) -> bytes:
    """One ExportTraceServiceRequest of ``spans`` spans (about 380 bytes each)."""
    rng = random.Random(seed)
    values = corpus_values()
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    _pod_resource(rs.resource)
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


def distinct_keys_trace_request(spans: int = 512, seed: int = 1, keys: int = 300) -> bytes:
    """``spans`` spans of 8 attributes each, their keys drawn from ``keys`` distinct ones of an
    app's own (``app.<area>.field_<n>``, none a rule of the bundled policies): how the key rules'
    cost grows with the keys an app uses (the benchmark's other requests use about ten)."""
    rng = random.Random(seed)
    names = [f"app.{rng.choice(['order', 'cart', 'user', 'svc', 'http', 'db'])}.field_{k}" for k in range(keys)]
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    _pod_resource(rs.resource)
    ss = rs.scope_spans.add()
    for i in range(spans):
        sp = ss.spans.add(trace_id=rng.randbytes(16), span_id=rng.randbytes(8), name=f"op {i % 20}",
                          start_time_unix_nano=1_700_000_000_000_000_000 + i,
                          end_time_unix_nano=1_700_000_000_050_000_000 + i)
        for _ in range(8):
            _set(sp.attributes, rng.choice(names), "v")
    return req.SerializeToString()


def any_string(v: AnyValue) -> str:
    return v.string_value


LOG_MESSAGES = [
    "order {order} paid: {amount} EUR, customer {user}",
    "GET /api/orders/{order} 200 in {ms} ms",
    "cache miss for key orders:{order}, loading from db",
    "payment gateway answered {status} after {ms} ms (attempt {attempt})",
    "user {user} logged in from 10.1.{a}.{b}",
    "retrying request to inventory-svc: connection reset by peer",
]


def log_request(records: int = 512, seed: int = 1, pan_share: float = 0.05) -> bytes:
    """One ExportLogsServiceRequest of ``records`` log records (the SDKs' default batch): a
    formatted message body each, some structured (a map body), 5 % with a card number from the
    corpus, and the attributes a logging bridge sets."""
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    rng = random.Random(seed)
    values = corpus_values()
    req = ExportLogsServiceRequest()
    rl = req.resource_logs.add()
    _pod_resource(rl.resource)
    sl = rl.scope_logs.add()
    sl.scope.name = "checkout.payments"
    for i in range(records):
        lr = sl.log_records.add(time_unix_nano=1_700_000_000_000_000_000 + i * 1000,
                                observed_time_unix_nano=1_700_000_000_000_500_000 + i * 1000,
                                severity_number=rng.choice([9, 9, 9, 13, 17]),
                                trace_id=rng.randbytes(16), span_id=rng.randbytes(8), flags=1)
        lr.severity_text = {9: "INFO", 13: "WARN", 17: "ERROR"}[lr.severity_number]
        message = rng.choice(LOG_MESSAGES).format(
            order=rng.randint(1, 99999), amount=f"{rng.randint(1, 500)}.{rng.randint(0, 99):02d}",
            user=f"u-{rng.randint(1, 10**6)}", ms=rng.randint(1, 900), status=rng.choice([200, 402]),
            attempt=rng.randint(1, 3), a=rng.randint(0, 255), b=rng.randint(0, 255))
        if rng.random() < pan_share:
            message = f"{message}; request: {rng.choice(values)}"
        if i % 8 == 0:  # a structured log: the body is a map
            kv = lr.body.kvlist_value.values
            _set(kv, "message", message)
            _set(kv, "order.id", rng.randint(1, 99999))
            _set(kv, "customer.tier", rng.choice(["vip", "standard"]))
        else:
            lr.body.string_value = message
        _set(lr.attributes, "code.function", "pay")
        _set(lr.attributes, "code.lineno", rng.randint(10, 900))
        _set(lr.attributes, "thread.name", "MainThread")
        _set(lr.attributes, "user.id", f"u-{rng.randint(1, 10**6)}")
        if i % 10 == 0:
            _set(lr.attributes, "exception.message", rng.choice(values))
    return req.SerializeToString()


def metric_request(points: int = 512, seed: int = 1) -> bytes:
    """One ExportMetricsServiceRequest as an SDK's periodic reader sends it: gauges, sums and
    histograms (with exemplars), ``points`` data points in all, each with its attributes
    (http.route, method, status, and a few with a card number put where it does not belong)."""
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
        ExportMetricsServiceRequest,
    )

    rng = random.Random(seed)
    values = corpus_values()
    req = ExportMetricsServiceRequest()
    rm = req.resource_metrics.add()
    _pod_resource(rm.resource)
    sm = rm.scope_metrics.add()
    sm.scope.name = "opentelemetry.instrumentation.flask"
    bounds = [0.0, 5.0, 10.0, 25.0, 50.0, 75.0, 100.0, 250.0, 500.0, 750.0, 1000.0, 2500.0,
              5000.0, 7500.0, 10000.0]
    made, m = 0, 0
    while made < points:
        kind = m % 3
        metric = sm.metrics.add(name=("http.server.duration", "http.server.active_requests",
                                      "http.server.request.size")[kind] + f".{m}",
                                unit=("ms", "{request}", "By")[kind])
        n = min(16, points - made)
        for j in range(n):
            if kind == 0:
                dp = metric.histogram.data_points.add(
                    start_time_unix_nano=1_700_000_000_000_000_000,
                    time_unix_nano=1_700_000_060_000_000_000, count=rng.randint(1, 5000),
                    sum=rng.random() * 1e5, min=0.5, max=rng.random() * 1e4)
                metric.histogram.aggregation_temporality = 2
                dp.explicit_bounds.extend(bounds)
                dp.bucket_counts.extend(rng.randint(0, 400) for _ in range(len(bounds) + 1))
                ex = dp.exemplars.add(time_unix_nano=1_700_000_059_000_000_000,
                                      as_double=rng.random() * 1e3, span_id=rng.randbytes(8),
                                      trace_id=rng.randbytes(16))
                _set(ex.filtered_attributes, "user.id", f"u-{rng.randint(1, 10**6)}")
            elif kind == 1:
                dp = metric.gauge.data_points.add(time_unix_nano=1_700_000_060_000_000_000,
                                                  as_int=rng.randint(0, 200))
            else:
                metric.sum.aggregation_temporality = 2
                metric.sum.is_monotonic = True
                dp = metric.sum.data_points.add(start_time_unix_nano=1_700_000_000_000_000_000,
                                                time_unix_nano=1_700_000_060_000_000_000,
                                                as_double=rng.random() * 1e7)
            _set(dp.attributes, "http.route", f"/api/orders/{j % 8}")
            _set(dp.attributes, "http.request.method", rng.choice(["GET", "POST"]))
            _set(dp.attributes, "http.response.status_code", rng.choice([200, 200, 404, 500]))
            _set(dp.attributes, "server.address", "checkout.shop.svc")
            if rng.random() < 0.02:
                _set(dp.attributes, "payment.reference", rng.choice(values))
        made += n
        m += 1
    return req.SerializeToString()
