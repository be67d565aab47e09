"""Fixtures for the policy engine tests: a copy of the shipped policies, a hash key, requests."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import prometheus_client
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from sidecar.identity import PodIdentity
from sidecar.policy.config import PolicyConfig
from sidecar.policy.service import PolicyService

REPO = Path(__file__).resolve().parents[2]
POLICIES = REPO / "policies"
HASH_KEY = b"0123456789abcdef0123456789abcdef"
POD = PodIdentity(name="api-0", namespace="shop", service_account="api", tenant="acme")


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    """A writable copy of the shipped policy set."""
    target = tmp_path / "policies"
    shutil.copytree(POLICIES, target)
    return target


@pytest.fixture
def hash_key_file(tmp_path: Path) -> Path:
    path = tmp_path / "hash.key"
    path.write_bytes(HASH_KEY + b"\n")
    return path


def sample_value(registry: prometheus_client.CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


MakeService = Callable[..., Any]


@pytest.fixture
async def make_service() -> AsyncIterator[MakeService]:
    """Start PolicyServices with the given config fields; all are stopped at teardown."""
    started: list[PolicyService] = []

    async def make(pod: PodIdentity = POD, **fields: Any) -> PolicyService:
        fields.setdefault("reload_interval", 0.0)
        service = PolicyService(PolicyConfig(**fields), pod, prometheus_client.CollectorRegistry())
        await service.start()
        started.append(service)
        return service

    yield make
    for service in started:
        await service.stop()


def kv(key: str, value: Any) -> KeyValue:
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    if isinstance(value, float):
        return KeyValue(key=key, value=AnyValue(double_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=str(value)))


def trace_request(resources: list[tuple[dict[str, Any], list[dict[str, Any]]]]) -> bytes:
    """A trace export request: per resource, its attributes and its spans.

    A span is ``{"name", "attrs", "error", "trace_id"}`` (all optional).
    """
    request = ExportTraceServiceRequest()
    for index, (resource_attrs, spans) in enumerate(resources):
        rs = request.resource_spans.add()
        rs.resource.attributes.extend(kv(k, v) for k, v in resource_attrs.items())
        scope = rs.scope_spans.add()
        for number, spec in enumerate(spans):
            span = scope.spans.add()
            span.name = spec.get("name", f"op-{number}")
            span.trace_id = spec.get("trace_id", bytes([index + 1]) * 8 + number.to_bytes(8, "big"))
            span.span_id = (number + 1).to_bytes(8, "big")
            span.attributes.extend(kv(k, v) for k, v in spec.get("attrs", {}).items())
            if spec.get("error"):
                span.status.code = 2
    return request.SerializeToString()


def attrs_of(kvs: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in kvs:
        which = item.value.WhichOneof("value")
        out[item.key] = getattr(item.value, which) if which else None
    return out
