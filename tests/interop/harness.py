"""Real peers for the interop tests: a Collector process, a grpcio server, an aiohttp server, the sidecar.

The Collector is the one ``make peers`` builds (tests/peers/otelcol). As an upstream it receives
from the sidecar (gRPC or HTTP, plaintext or mTLS) and hands every span on, uncompressed, to the
test's own recording upstream (tests.upstream.Upstream); its resource processor copies the
request's ``X-Scope-OrgID`` header (the sidecar's egress header) into a resource attribute, so the
test sees what the Collector saw. As a client it receives from an SDK and forwards to the sidecar.
"""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import grpc
from aiohttp import web
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.export import SpanExportResult

from tests import sdk
from tests.conftest import sidecar_env
from tests.peers import peer
from tests.peers.process import free_port, wait_healthy
from tests.policy.conftest import POLICIES, attrs_of
from tests.processes import SidecarProcess

TENANT = "acme"
EGRESS_HEADER = "x-scope-orgid"
#: resource attribute the upstream Collector fills from the request's egress header
HEADER_ATTRIBUTE = "seen.x_scope_orgid"
VISA, MASTERCARD = "4111 1111 1111 1111", "5555-5555-5555-4444"
#: span attributes every interop test sends: card numbers, and an amount the policies always keep
SPAN_ATTRIBUTES = {"note": f"paid with {VISA}", "card.number": MASTERCARD, "order.amount": 2500}
MASKED = {"note": "paid with **** **** **** 1111", "card.number": "****-****-****-4444"}
CARD_BYTES = (b"4111 1111 1111 1111", b"4111111111111111", b"5555-5555-5555-4444", b"5555555555554444")


# -- the sidecar --------------------------------------------------------------------------------

async def start_sidecar(hash_key_file: Path, upstream_env: Mapping[str, str]) -> SidecarProcess:
    """A real ``otlp-sidecar run`` with the bundled policies and tenant ``acme``."""
    env = sidecar_env(
        None,
        SIDECAR_POLICY_DIR=str(POLICIES),
        SIDECAR_POLICY_HASH_KEY_FILE=str(hash_key_file),
        SIDECAR_POLICY_RELOAD_INTERVAL="0",
        SIDECAR_TENANT=TENANT,
        **upstream_env,
    )
    sidecar = SidecarProcess(env)
    await sidecar.start(timeout=60.0)
    return sidecar


async def sidecar_metric(sidecar: SidecarProcess, name: str, **labels: str) -> float:
    """Sum of a metric's samples (matching ``labels``) from the sidecar's /metrics."""
    url = f"http://127.0.0.1:{sidecar.ports['admin']}/metrics"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        text = await response.text()
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{key}="{val}"' in head for key, val in labels.items()):
            total += float(value)
    return total


# -- the Collector ------------------------------------------------------------------------------

@dataclass
class Collector:
    """An ``otelcol`` process from a config dict; ``start`` waits for its health check."""

    config: dict[str, Any]
    workdir: Path
    health_port: int = field(default_factory=free_port)
    proc: asyncio.subprocess.Process | None = None
    log_path: Path | None = None

    async def start(self, timeout: float = 30.0) -> None:
        self.config.setdefault("extensions", {})["health_check"] = {"endpoint": f"127.0.0.1:{self.health_port}"}
        service = self.config.setdefault("service", {})
        service["extensions"] = ["health_check"]
        # no Prometheus port of its own (tests run side by side), warnings only
        service["telemetry"] = {"metrics": {"level": "none"}, "logs": {"level": "warn"}}
        path = self.workdir / f"otelcol-{self.health_port}.json"
        path.write_text(json.dumps(self.config))  # JSON is YAML
        self.log_path = self.workdir / f"otelcol-{self.health_port}.log"
        log = self.log_path.open("wb")
        self.proc = await asyncio.create_subprocess_exec(
            str(peer("otelcol")), "--config", f"file:{path}", stdout=log, stderr=log,
        )
        log.close()
        try:
            await wait_healthy(self.proc, f"http://127.0.0.1:{self.health_port}/", what="otelcol", log=self.log,
                               timeout=timeout)
        except BaseException:
            await self.stop()
            raise

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path else ""

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), 15)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


def tls_server_settings(pki: Any) -> dict[str, str]:
    """A Collector receiver's mTLS settings: its certificate, and client certificates required."""
    return {"cert_file": pki.server_cert, "key_file": pki.server_key, "client_ca_file": pki.ca_cert}


def upstream_collector_config(record_http_port: int, *, grpc_port: int, http_port: int,
                              pki: Any = None) -> dict[str, Any]:
    """The Collector as the sidecar's upstream, forwarding to the recording upstream."""
    grpc_cfg: dict[str, Any] = {"endpoint": f"127.0.0.1:{grpc_port}", "include_metadata": True}
    http_cfg: dict[str, Any] = {"endpoint": f"127.0.0.1:{http_port}", "include_metadata": True}
    if pki is not None:
        grpc_cfg["tls"] = tls_server_settings(pki)
        http_cfg["tls"] = tls_server_settings(pki)
    pipeline = {"receivers": ["otlp"], "processors": ["resource"], "exporters": ["otlp_http"]}
    return {
        "receivers": {"otlp": {"protocols": {"grpc": grpc_cfg, "http": http_cfg}}},
        "processors": {"resource": {"attributes": [
            {"key": HEADER_ATTRIBUTE, "from_context": f"metadata.{EGRESS_HEADER}", "action": "upsert"},
        ]}},
        "exporters": {"otlp_http": {
            "endpoint": f"http://127.0.0.1:{record_http_port}", "compression": "none",
            # no queue: the Collector acknowledges a request only once it has handed it on
            "retry_on_failure": {"enabled": False}, "sending_queue": {"enabled": False},
        }},
        "service": {"pipelines": {"traces": pipeline, "logs": pipeline, "metrics": pipeline}},
    }


def forwarding_collector_config(*, receive_port: int, sidecar_port: int, protocol: str,
                                compression: str) -> dict[str, Any]:
    """The Collector as a client of the sidecar: OTLP/gRPC in, ``protocol`` out with ``compression``."""
    if protocol == "grpc":
        exporter: dict[str, Any] = {"otlp_grpc": {
            "endpoint": f"127.0.0.1:{sidecar_port}", "tls": {"insecure": True}, "compression": compression,
        }}
    else:
        exporter = {"otlp_http": {"endpoint": f"http://127.0.0.1:{sidecar_port}", "compression": compression}}
    pipeline = {"receivers": ["otlp"], "exporters": list(exporter)}
    return {
        "receivers": {"otlp": {"protocols": {"grpc": {"endpoint": f"127.0.0.1:{receive_port}"}}}},
        "exporters": exporter,
        "service": {"pipelines": {"traces": pipeline}},
    }


# -- upstreams we did not write the HTTP/2 or HTTP/1.1 stack of ----------------------------------

@dataclass
class Recorded:
    """A request an upstream took: its decoded body and its headers (lower-case names)."""

    body: bytes
    headers: dict[str, str]
    encoding: str


class GrpcioUpstream:
    """A grpcio (C-core) server for the trace service: records each request, answers OK.

    C-core takes gzip and deflate, not zstd, and (seen with grpcio 1.85) refuses gzip on a
    connection after it has seen a zstd call."""

    def __init__(self, credentials: grpc.ServerCredentials | None = None) -> None:
        self.received: list[Recorded] = []
        self.port = 0
        self._credentials = credentials
        self._server: grpc.Server | None = None
        self._lock = threading.Lock()

    def _export(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        headers = {key.lower(): value for key, value in context.invocation_metadata()}
        with self._lock:
            self.received.append(Recorded(request, headers, headers.get("grpc-encoding", "identity")))
        return trace_service_pb2.ExportTraceServiceResponse().SerializeToString()

    def start(self) -> None:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        handler = grpc.method_handlers_generic_handler(
            "opentelemetry.proto.collector.trace.v1.TraceService",
            {"Export": grpc.unary_unary_rpc_method_handler(self._export)},
        )
        server.add_generic_rpc_handlers((handler,))
        address = "127.0.0.1:0"
        self.port = (server.add_secure_port(address, self._credentials) if self._credentials
                     else server.add_insecure_port(address))
        server.start()
        self._server = server

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=1).wait(5)


class AiohttpUpstream:
    """An aiohttp OTLP/HTTP server that cannot decode zstd (as aiohttp without backports.zstd):
    a zstd body is refused by aiohttp itself with ``400 Can not decode content-encoding``."""

    def __init__(self) -> None:
        self.received: list[Recorded] = []
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._had_zstd = False

    async def _traces(self, request: web.Request) -> web.Response:
        encoding = request.headers.get("Content-Encoding", "identity")
        body = await request.read()  # decoded by aiohttp (a zstd body never gets here: its parser answers 400)
        self.received.append(Recorded(body, {k.lower(): v for k, v in request.headers.items()}, encoding))
        return web.Response(
            body=trace_service_pb2.ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )

    async def start(self) -> None:
        from aiohttp import http_parser

        # the point of this upstream: whatever is installed, it does not decode zstd
        self._had_zstd = http_parser.HAS_ZSTD  # type: ignore[attr-defined]
        http_parser.HAS_ZSTD = False  # type: ignore[attr-defined]
        app = web.Application()
        app.router.add_post("/v1/traces", self._traces)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        from aiohttp import http_parser

        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            http_parser.HAS_ZSTD = self._had_zstd  # type: ignore[attr-defined]


# -- what arrived -------------------------------------------------------------------------------

@dataclass
class Delivery:
    """Spans an upstream received, with what the checks need."""

    span_ids: list[str]
    requests: list[trace_service_pb2.ExportTraceServiceRequest]
    raw: bytes

    @classmethod
    def of_bodies(cls, bodies: list[bytes]) -> Delivery:
        requests = [trace_service_pb2.ExportTraceServiceRequest.FromString(body) for body in bodies]
        return cls.of_requests(requests)

    @classmethod
    def of_requests(cls, requests: list[Any]) -> Delivery:
        ids = [span.span_id.hex() for r in requests for rs in r.resource_spans
               for ss in rs.scope_spans for span in ss.spans]
        return cls(ids, requests, b"".join(r.SerializeToString() for r in requests))

    def duplicates(self) -> int:
        return len(self.span_ids) - len(set(self.span_ids))

    def resources(self) -> Iterator[dict[str, Any]]:
        for request in self.requests:
            for rs in request.resource_spans:
                yield attrs_of(rs.resource.attributes)

    def spans(self) -> Iterator[dict[str, Any]]:
        for request in self.requests:
            for rs in request.resource_spans:
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        yield attrs_of(span.attributes)


def check_delivery(delivery: Delivery, expected: set[str] | int, *, header_attribute: bool = False) -> None:
    """Every acknowledged span arrived once, card numbers masked, the tenant stamped.

    ``expected``: the span ids sent (or, for a client whose ids we do not know, their count)."""
    assert delivery.duplicates() == 0, f"{delivery.duplicates()} duplicate spans"
    if isinstance(expected, int):
        assert len(delivery.span_ids) == expected
    else:
        assert set(delivery.span_ids) == expected
    for digits in CARD_BYTES:
        assert digits not in delivery.raw, f"unmasked card number {digits!r} upstream"
    for resource in delivery.resources():
        assert resource.get("tenant.id") == TENANT, resource
        if header_attribute:
            assert resource.get(HEADER_ATTRIBUTE) == TENANT, resource
    for attrs in delivery.spans():
        assert attrs["note"] == MASKED["note"] and attrs["card.number"] == MASKED["card.number"], attrs


async def wait_until(predicate: Any, timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what or predicate}"
        await asyncio.sleep(0.05)


#: what send_spans sends: batches of spans, each with card numbers in its attributes
BATCHES, PER_BATCH = 3, 40


async def send_spans(port: int, transport: str = "grpc", compression: str = "none") -> set[str]:
    """Three batches from the SDK's own exporter; returns the ids of the acknowledged spans."""
    exporter, _, _ = sdk.exporters(transport, port, compression)
    acknowledged: set[str] = set()
    try:
        for _ in range(BATCHES):
            spans = sdk.make_spans(PER_BATCH, Resource.create({"service.name": "checkout"}), SPAN_ATTRIBUTES)
            assert await asyncio.to_thread(exporter.export, spans) is SpanExportResult.SUCCESS
            acknowledged |= {format(s.context.span_id, "016x") for s in spans}
    finally:
        await asyncio.to_thread(exporter.shutdown)
    return acknowledged
