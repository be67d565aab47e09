"""Resources with the attributes the bundled policies look at, generated from a seed, and requests
of each signal that carry them."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from sidecar.signals import Signal
from tests.policy.conftest import kv, trace_request


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


def request_for(signal_: Signal, batch: list[dict[str, Any]]) -> bytes:
    """A request of ``signal_`` with one resource per attribute set of ``batch``."""
    if signal_ is Signal.TRACES:
        return trace_request([(attrs, [{}]) for attrs in batch])
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
