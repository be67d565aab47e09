"""The OpenTelemetry SDK's own OTLP exporters (requests, grpcio) as mTLS clients of a
receiver-like server with ServerTLS: the standard clients interoperate, and their SPIFFE
ID reaches the handler. The SDK exporters are synchronous: they run in a thread."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from sidecar.tls.server import ServerTLS
from tests.tls.pki import OTHER_SPIFFE_ID, make_pki
from tests.tls.servers import TraceService, make_http_app, serve_grpc, serve_https


def spans(count: int = 3) -> list:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("tests.tls")
    for index in range(count):
        with tracer.start_as_current_span(f"op-{index}"):
            pass
    provider.shutdown()
    return list(memory.get_finished_spans())


async def test_sdk_http_exporter_over_mtls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE win over the session's CA file
    # (the SDK's certificate_file); some machines set them, so the test clears them
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    pki = make_pki(tmp_path)
    intruder_cert, intruder_key = pki.issue_client("intruder", OTHER_SPIFFE_ID)
    tls = ServerTLS(
        cert_file=pki.server_cert,
        key_file=pki.server_key,
        client_ca_file=pki.ca_cert,
        spiffe_allow=[pki.client_spiffe_id],
    )
    received: list[dict] = []
    async with serve_https(make_http_app(tls, received), tls, "acceptor") as port:

        def export(cert: str, key: str) -> SpanExportResult:
            exporter = HttpSpanExporter(
                endpoint=f"https://localhost:{port}/v1/traces",
                certificate_file=pki.ca_cert,
                client_certificate_file=cert,
                client_key_file=key,
                timeout=10,
            )
            try:
                return exporter.export(spans())
            finally:
                exporter.shutdown()

        allowed = await asyncio.to_thread(export, pki.client_cert, pki.client_key)
        refused = await asyncio.to_thread(export, intruder_cert, intruder_key)
    assert allowed is SpanExportResult.SUCCESS
    assert refused is SpanExportResult.FAILURE  # HTTP 403: not retried by the SDK
    assert [r["spiffe_id"] for r in received] == [pki.client_spiffe_id]


async def test_sdk_grpc_exporter_over_mtls(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    tls = ServerTLS(
        cert_file=pki.server_cert,
        key_file=pki.server_key,
        client_ca_file=pki.ca_cert,
        require_client_cert=True,
        alpn=("h2",),
    )
    service = TraceService()
    async with serve_grpc(service, tls) as port:

        def export() -> SpanExportResult:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=Path(pki.ca_cert).read_bytes(),
                private_key=Path(pki.client_key).read_bytes(),
                certificate_chain=Path(pki.client_cert).read_bytes(),
            )
            exporter = GrpcSpanExporter(endpoint=f"localhost:{port}", credentials=credentials, timeout=10)
            try:
                return exporter.export(spans(4))
            finally:
                exporter.shutdown()

        result = await asyncio.to_thread(export)
    assert result is SpanExportResult.SUCCESS
    [(request, spiffe_id, _)] = service.received
    assert spiffe_id == pki.client_spiffe_id
    assert len(request.resource_spans[0].scope_spans[0].spans) == 4
