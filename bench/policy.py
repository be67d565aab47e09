"""Policy engine speed: cold decisions, cached plans, and why Rego never runs per span.

Run: ``.venv/bin/python bench/policy.py [--spans 512] [--rounds 5]``

1. cold decision: the shipped policies evaluated with regopy for one resource
   (a compiled bundle, one query) and compiled into a plan;
2. cached plan: ``PolicyService.plans_for`` for a request whose resources were
   seen before (the per-request cost on the hot path);
3. per-span Rego vs the plan path: spans/s when Rego is queried for every span,
   side by side with split -> cached plan -> rewrite of the same request.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import prometheus_client  # noqa: E402
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest  # noqa: E402
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue  # noqa: E402

from sidecar.identity import Peer, PodIdentity  # noqa: E402
from sidecar.policy.config import PolicyConfig  # noqa: E402
from sidecar.policy.decision import compile_plan  # noqa: E402
from sidecar.policy.loader import load_policy  # noqa: E402
from sidecar.policy.service import PolicyService  # noqa: E402
from sidecar.rewrite import IMPLEMENTATION, rewrite, split_resources  # noqa: E402
from sidecar.signals import Signal  # noqa: E402

POLICIES = ROOT / "policies"
POD = PodIdentity(name="api-0", namespace="shop", service_account="api", tenant="acme")
PEER = Peer(address="127.0.0.1:40000")


def kv(key: str, value: str | int) -> KeyValue:
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def trace_request(resources: int, spans: int) -> bytes:
    request = ExportTraceServiceRequest()
    for r in range(resources):
        rs = request.resource_spans.add()
        rs.resource.attributes.extend([kv("service.name", f"svc-{r}"), kv("k8s.pod.name", "api-0")])
        scope = rs.scope_spans.add()
        for n in range(spans):
            span = scope.spans.add()
            span.name = "GET /checkout"
            span.trace_id = os.urandom(16)
            span.span_id = os.urandom(8)
            span.attributes.extend([
                kv("http.route", "/checkout"), kv("order.amount", n * 7),
                kv("card.number", "4111 1111 1111 1111"), kv("payment.card.cvv", "123"),
                kv("note", f"order {n} paid"),
            ])
            if n % 50 == 0:
                span.status.code = 2
    return request.SerializeToString()


def request_input(signal: str, attributes: dict) -> dict:
    return {
        "signal": signal, "resource": attributes, "pod": POD.as_input(),
        "peer": PEER.as_input(), "transport": "grpc",
    }


def timed(function, rounds: int) -> float:
    """Median seconds of ``function()`` over ``rounds`` runs."""
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        function()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def bench_cold_decision(rounds: int) -> dict[str, float]:
    start = time.perf_counter()
    compiled, results = load_policy(str(POLICIES), "otlp_sidecar/main", run_tests=True)
    load_seconds = time.perf_counter() - start
    key = b"k" * 32
    n = 0

    def decide() -> None:
        nonlocal n
        n += 1  # a new resource every time: nothing cached anywhere
        decisions = compiled.query("decisions", request_input("traces", {"service.name": f"svc-{n}"}))
        compile_plan(decisions, compiled.policy_set.file_of_package, hash_key=key)

    decide()
    per_decision = timed(lambda: [decide() for _ in range(20)], rounds) / 20
    eval_only = timed(
        lambda: [compiled.query("decisions", request_input("traces", {"service.name": "x"})) for _ in range(20)],
        rounds,
    ) / 20
    return {"load_and_test_s": load_seconds, "tests": len(results),
            "cold_decision_us": per_decision * 1e6, "rego_query_us": eval_only * 1e6}


async def bench_cached(rounds: int, spans: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        key_file = Path(tmp) / "key"
        key_file.write_bytes(b"k" * 32)
        config = PolicyConfig(dir=str(POLICIES), hash_key_file=str(key_file), reload_interval=0)
        service = PolicyService(config, POD, prometheus_client.CollectorRegistry())
        await service.start()
        try:
            out: dict[str, float] = {}
            for count in (1, 4):
                data = trace_request(count, spans // count)
                resources = split_resources(Signal.TRACES, data)
                await service.plans_for(Signal.TRACES, resources, PEER, "grpc")  # warm the cache
                loops = 2000

                async def lookups(resources=resources, loops=loops) -> float:
                    start = time.perf_counter()
                    for _ in range(loops):
                        await service.plans_for(Signal.TRACES, resources, PEER, "grpc")
                    return (time.perf_counter() - start) / loops

                samples = [await lookups() for _ in range(rounds)]
                out[f"cached_lookup_us_{count}_resources"] = statistics.median(samples) * 1e6
            data = trace_request(1, spans)
            resources = split_resources(Signal.TRACES, data)
            plans = await service.plans_for(Signal.TRACES, resources, PEER, "grpc")

            async def plan_path() -> None:
                found = split_resources(Signal.TRACES, data, validate=False, count=False)  # as the pipeline does
                rewrite(Signal.TRACES, data, await service.plans_for(Signal.TRACES, found, PEER, "grpc"))

            samples = []
            for _ in range(rounds):
                start = time.perf_counter()
                for _ in range(10):
                    await plan_path()
                samples.append((time.perf_counter() - start) / 10)
            out["plan_path_spans_per_s"] = spans / statistics.median(samples)
            out["plan_has_rules"] = len(plans[0].attribute_rules)
            return out
        finally:
            await service.stop()


def bench_per_span_rego(rounds: int, spans: int) -> float:
    """spans/s if Rego were asked about every span (its attributes as the input)."""
    compiled, _ = load_policy(str(POLICIES), "otlp_sidecar/main", run_tests=False)
    request = ExportTraceServiceRequest.FromString(trace_request(1, spans))
    span_inputs = []
    for span in request.resource_spans[0].scope_spans[0].spans:
        attrs = {kv.key: kv.value.string_value or kv.value.int_value for kv in span.attributes}
        span_inputs.append(request_input("traces", {"service.name": "svc-0", **attrs}))
    sample = span_inputs[: min(len(span_inputs), 100)]
    seconds = timed(lambda: [compiled.query("decisions", s) for s in sample], rounds)
    return len(sample) / seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spans", type=int, default=512, help="spans per request (512)")
    parser.add_argument("--rounds", type=int, default=5, help="repetitions; the median is reported (5)")
    args = parser.parse_args()
    cold = bench_cold_decision(args.rounds)
    cached = asyncio.run(bench_cached(args.rounds, args.spans))
    per_span = bench_per_span_rego(args.rounds, args.spans)
    print(f"rewriter: {IMPLEMENTATION}; {args.spans} spans per request; median of {args.rounds} rounds")
    load_ms = cold["load_and_test_s"] * 1000
    print(f"load + compile + {cold['tests']} Rego tests (child process check)   {load_ms:10.0f} ms")
    print(f"cold decision per resource (Rego query + plan compile)  {cold['cold_decision_us']:10.0f} us")
    print(f"  of which the Rego query                               {cold['rego_query_us']:10.0f} us")
    for key, value in cached.items():
        if key.startswith("cached_lookup"):
            count = key.split("_")[3]
            print(f"cached plans per request, {count} resource(s)              {value:10.2f} us")
    print()
    print("spans/s, one request of the shipped policies (PCI + tenant + sampling):")
    print(f"  Rego query per span                                   {per_span:12,.0f}")
    plan_path = cached["plan_path_spans_per_s"]
    print(f"  plan path: split + cached plan + rewrite ({IMPLEMENTATION:7s})  {plan_path:12,.0f}")
    print(f"  ratio                                                 {plan_path / per_span:12,.0f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
