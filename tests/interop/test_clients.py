"""Clients we did not write, into a real sidecar process: the OpenTelemetry Python SDK (gRPC and
HTTP/protobuf, none and gzip), the OpenTelemetry JS SDK (grpc-js, HTTP/protobuf, HTTP/JSON; none
and gzip), the Go client telemetrygen (gRPC and HTTP), and the Collector forwarding to the sidecar
(otlp_grpc and otlp_http exporters; none, gzip and zstd).

Every span the client had acknowledged must reach the upstream once, card numbers masked, the
tenant stamped and the egress header set.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.export import SpanExportResult

from sidecar.signals import Signal
from tests import sdk
from tests.interop.harness import (
    EGRESS_HEADER,
    SPAN_ATTRIBUTES,
    TENANT,
    Collector,
    Delivery,
    check_delivery,
    forwarding_collector_config,
    free_port,
    send_spans,
    sidecar_metric,
    start_sidecar,
)
from tests.peers import peer
from tests.upstream import Upstream

pytestmark = pytest.mark.timeout(90)


async def communicate(proc: asyncio.subprocess.Process, timeout: float = 60.0) -> tuple[bytes, bytes]:
    """The client's output; a client still running after ``timeout`` is killed and the test fails."""
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return out, err or b""


def upstream_env(upstream: Upstream) -> dict[str, str]:
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{upstream.grpc_port}",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}


async def check_upstream(upstream: Upstream, expected: set[str] | int) -> None:
    count = expected if isinstance(expected, int) else len(expected)
    await upstream.wait_for(lambda: len(upstream.spans()) >= count, timeout=20)
    await asyncio.sleep(0.3)  # nothing more may arrive
    check_delivery(Delivery.of_requests(upstream.messages(Signal.TRACES)), expected)
    received = [r for r in upstream.received if r.signal is Signal.TRACES]
    assert received and all(r.headers.get(EGRESS_HEADER) == TENANT for r in received)


@pytest.mark.parametrize(("transport", "compression"),
                         [("grpc", "none"), ("grpc", "gzip"), ("http", "none"), ("http", "gzip")])
async def test_python_sdk(upstream: Upstream, hash_key_file: Path, transport: str, compression: str) -> None:
    sidecar = await start_sidecar(hash_key_file, upstream_env(upstream))
    try:
        sent = await send_spans(sidecar.ports[transport], transport, compression)
        await check_upstream(upstream, sent)
    finally:
        await sidecar.stop()


@pytest.mark.parametrize("compression", ["none", "gzip"])
@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf", "http/json"])
async def test_js_sdk(upstream: Upstream, hash_key_file: Path, protocol: str, compression: str) -> None:
    script = peer("js")
    sidecar = await start_sidecar(hash_key_file, upstream_env(upstream))
    try:
        port = sidecar.ports["grpc" if protocol == "grpc" else "http"]
        proc = await asyncio.create_subprocess_exec(
            "node", str(script), protocol, str(port), compression, "120", json.dumps(SPAN_ATTRIBUTES),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await communicate(proc)
        assert proc.returncode == 0, err.decode(errors="replace")
        result = json.loads(out)
        assert result["error"] is None and len(result["acknowledged"]) == 120, result
        await check_upstream(upstream, set(result["acknowledged"]))
    finally:
        await sidecar.stop()


@pytest.mark.parametrize("transport", ["grpc", "http"])
async def test_go_client_telemetrygen(upstream: Upstream, hash_key_file: Path, transport: str) -> None:
    traces, child_spans = 25, 3
    sidecar = await start_sidecar(hash_key_file, upstream_env(upstream))
    args = [
        "traces", "--otlp-insecure", "--otlp-endpoint", f"127.0.0.1:{sidecar.ports[transport]}",
        "--traces", str(traces), "--child-spans", str(child_spans), "--rate", "0", "--workers", "1",
        "--service", "checkout",
        "--telemetry-attributes", f'note="{SPAN_ATTRIBUTES["note"]}"',
        "--telemetry-attributes", f'card.number="{SPAN_ATTRIBUTES["card.number"]}"',
        "--telemetry-attributes", f'order.amount={SPAN_ATTRIBUTES["order.amount"]}',
    ]
    if transport == "http":
        args.append("--otlp-http")
    try:
        proc = await asyncio.create_subprocess_exec(
            str(peer("telemetrygen")), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        output = (await communicate(proc))[0].decode(errors="replace")
        assert proc.returncode == 0, output
        # the Go SDK logs a failed export at WARN or ERROR level
        assert not [line for line in output.splitlines() if "\tERROR\t" in line or "\tWARN\t" in line], output
        await check_upstream(upstream, traces * (1 + child_spans))
    finally:
        await sidecar.stop()


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
@pytest.mark.parametrize("protocol", ["grpc", "http"])
async def test_collector_forwarding_to_the_sidecar(
    upstream: Upstream, hash_key_file: Path, tmp_path: Path, protocol: str, compression: str,
) -> None:
    sidecar = await start_sidecar(hash_key_file, upstream_env(upstream))
    receive_port = free_port()
    collector = Collector(forwarding_collector_config(
        receive_port=receive_port, sidecar_port=sidecar.ports["grpc" if protocol == "grpc" else "http"],
        protocol=protocol, compression=compression,
    ), tmp_path)
    await collector.start()
    try:
        exporter, _, _ = sdk.exporters("grpc", receive_port, "none")
        spans = sdk.make_spans(60, Resource.create({"service.name": "checkout"}), SPAN_ATTRIBUTES)
        try:
            assert await asyncio.to_thread(exporter.export, spans) is SpanExportResult.SUCCESS
        finally:
            await asyncio.to_thread(exporter.shutdown)
        await check_upstream(upstream, {format(s.context.span_id, "016x") for s in spans})
        transport = "grpc" if protocol == "grpc" else "http"
        assert await sidecar_metric(sidecar, "otlp_sidecar_receiver_accepted_items_total",
                                    signal="traces", transport=transport) == len(spans)
    finally:
        await collector.stop()
        await sidecar.stop()
    assert "error" not in collector.log().lower(), collector.log()
