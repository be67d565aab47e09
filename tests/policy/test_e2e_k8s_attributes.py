"""Kubernetes resource attributes from the pod's identity, end to end.

The OpenTelemetry SDK (real OTLP/HTTP exporters) -> a real `otlp-sidecar run` process with the
bundled policies and the downward-API environment the injector sets -> a test upstream. Every
resource of every signal carries the pod's namespace, name, uid, node, workload and cluster, and
what the app claimed for those keys is overwritten.
"""

from __future__ import annotations

import asyncio

from opentelemetry.sdk._logs.export import LogRecordExportResult
from opentelemetry.sdk.metrics.export import MetricExportResult
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.export import SpanExportResult

from sidecar.signals import Signal
from tests import sdk
from tests.conftest import sidecar_env
from tests.policy.conftest import attrs_of
from tests.processes import SidecarProcess

POD_ENV = {
    "SIDECAR_POD_NAME": "api-7d9f8-x2x4q",
    "SIDECAR_POD_NAMESPACE": "shop",
    "SIDECAR_POD_UID": "0f1e2d3c-4b5a-6978-8695-a4b3c2d1e0f9",
    "SIDECAR_NODE_NAME": "node-eu-3",
    "SIDECAR_CLUSTER_NAME": "prod-eu",
    "SIDECAR_WORKLOAD_KIND": "Deployment",
    "SIDECAR_WORKLOAD_NAME": "api",
}
EXPECTED = {
    "k8s.pod.name": "api-7d9f8-x2x4q",
    "k8s.namespace.name": "shop",
    "k8s.pod.uid": "0f1e2d3c-4b5a-6978-8695-a4b3c2d1e0f9",
    "k8s.node.name": "node-eu-3",
    "k8s.cluster.name": "prod-eu",
    "k8s.deployment.name": "api",
}
#: what a misconfigured (or malicious) app claims about itself
CLAIMED = {"service.name": "checkout", "k8s.pod.name": "someone-else", "k8s.namespace.name": "kube-system",
           "k8s.deployment.name": "payments"}


def resources_of(upstream, signal: Signal) -> list[dict]:
    field = {Signal.TRACES: "resource_spans", Signal.METRICS: "resource_metrics", Signal.LOGS: "resource_logs"}
    return [attrs_of(r.resource.attributes) for m in upstream.messages(signal) for r in getattr(m, field[signal])]


async def test_every_resource_carries_the_pods_kubernetes_attributes(upstream) -> None:
    env = sidecar_env(upstream, "grpc", SIDECAR_POLICY_MODE="enforce", SIDECAR_POLICY_RELOAD_INTERVAL="0", **POD_ENV)
    sidecar = SidecarProcess(env)
    ports = await sidecar.start()
    spans_out, metrics_out, logs_out = sdk.exporters("http", ports["http"], "none")
    resource = Resource.create(CLAIMED)
    try:
        spans = [s for s in sdk.make_spans(10, resource) if not s.status.is_ok]  # errors: always kept
        assert await asyncio.to_thread(spans_out.export, spans) is SpanExportResult.SUCCESS
        assert await asyncio.to_thread(metrics_out.export, sdk.make_metrics(resource)) is MetricExportResult.SUCCESS
        assert await asyncio.to_thread(logs_out.export, sdk.make_logs(3, resource)) is LogRecordExportResult.SUCCESS
        await upstream.wait_for(lambda: all(upstream.messages(s) for s in Signal))
    finally:
        for exporter in (spans_out, metrics_out, logs_out):
            await asyncio.to_thread(exporter.shutdown)
        assert await sidecar.stop() == 0
    for signal in Signal:
        found = resources_of(upstream, signal)
        assert found, signal
        for attributes in found:
            assert {k: attributes.get(k) for k in EXPECTED} == EXPECTED, signal
            assert attributes["service.name"] == "checkout"  # the app's own attributes stay
