"""The sidecar's exporters (HTTP and gRPC) against an upstream that demands mTLS with a
SPIFFE allowlist; client certificate rotation between exports; auth headers beside mTLS.

The exporters take ``ssl_context=ClientTLS.context`` and ``extra_headers=auth.headers``."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from sidecar.configkit import load_section
from sidecar.export.auth import BearerTokenFile
from sidecar.export.config import ExporterConfig
from sidecar.export.grpc import GrpcExporter
from sidecar.export.http import HttpExporter
from sidecar.export.result import ExportError
from sidecar.signals import Signal
from sidecar.tls.client import ClientTLS
from sidecar.tls.server import PeerRefused, ServerTLS
from tests.tls.pki import PKI
from tests.tls.servers import TraceService, peer_cert_serial, serve_grpc, serve_https


def payload(name: str) -> bytes:
    span = Span(trace_id=b"\x01" * 16, span_id=b"\x02" * 8, name=name)
    return ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=[span])])]
    ).SerializeToString()


def span_names(data: bytes) -> list[str]:
    request = ExportTraceServiceRequest.FromString(data)
    return [s.name for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]


def serial_of(path: str) -> int:
    from cryptography import x509

    return x509.load_pem_x509_certificate(Path(path).read_bytes()).serial_number


def exporter_config(endpoint: str, protocol: str) -> ExporterConfig:
    return load_section(
        ExporterConfig,
        "exporter",
        {"endpoint": endpoint, "protocol": protocol, "compression": "none", "timeout": 10},
        {},
    )


class Upstream:
    """An OTLP/HTTP collector that demands mTLS and a SPIFFE ID from the allowlist."""

    def __init__(self, tls: ServerTLS) -> None:
        self.tls = tls
        self.received: list[tuple[list[str], str, int, str]] = []

    async def traces(self, request: web.Request) -> web.Response:
        try:
            peer = self.tls.authorize_transport(request.transport)
        except PeerRefused as exc:
            return web.Response(status=exc.http_status, text=exc.message)
        serial = peer_cert_serial(request.transport.get_extra_info("ssl_object"))
        body = await request.read()
        self.received.append((span_names(body), peer.spiffe_id, serial, request.headers.get("Authorization", "")))
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(), content_type="application/x-protobuf"
        )

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/traces", self.traces)
        return app


def upstream_tls(pki: PKI, **kwargs: object) -> ServerTLS:
    return pki.mtls_server(spiffe_allow=[pki.client_spiffe_id], **kwargs)


async def test_http_exporter_over_mtls_with_rotation_and_a_bearer_token(pki, tmp_path: Path) -> None:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    shutil.copy(pki.client_cert, cert)
    shutil.copy(pki.client_key, key)
    client = ClientTLS(ca_file=pki.ca_cert, cert_file=str(cert), key_file=str(key), check_interval=0)
    token = tmp_path / "token"
    token.write_text("upstream-token")
    upstream = Upstream(upstream_tls(pki))
    async with serve_https(upstream.app(), upstream.tls, "acceptor") as port:
        exporter = HttpExporter(
            exporter_config(f"https://localhost:{port}", "http/protobuf"),
            ssl_context=client.context,
            extra_headers=BearerTokenFile(str(token)).headers,
        )
        await exporter.start()
        try:
            await exporter.export(Signal.TRACES, payload("first"))
            next_cert, next_key = pki.issue_client("next")
            shutil.copy(next_cert, cert)
            shutil.copy(next_key, key)
            await exporter.export(Signal.TRACES, payload("second"))
        finally:
            await exporter.stop()
    assert [r[0] for r in upstream.received] == [["first"], ["second"]]
    assert {r[1] for r in upstream.received} == {pki.client_spiffe_id}
    assert [r[2] for r in upstream.received] == [serial_of(pki.client_cert), serial_of(next_cert)]
    assert {r[3] for r in upstream.received} == {"Bearer upstream-token"}


async def test_http_exporter_refused_by_the_upstream_is_a_clear_error(pki) -> None:
    upstream = Upstream(upstream_tls(pki))
    async with serve_https(upstream.app(), upstream.tls, "acceptor") as port:
        for client, expected in [
            (ClientTLS(ca_file=pki.ca_cert), "upstream answered 401"),
            (
                ClientTLS(
                    ca_file=pki.ca_cert,
                    cert_file=pki.issue_client("x", "spiffe://td/other")[0],
                    key_file=str(pki.dir / "x.key"),
                ),
                "upstream answered 403",
            ),
        ]:
            exporter = HttpExporter(
                exporter_config(f"https://localhost:{port}", "http/protobuf"), ssl_context=client.context
            )
            await exporter.start()
            try:
                with pytest.raises(ExportError) as info:
                    await exporter.export(Signal.TRACES, payload("refused"))
            finally:
                await exporter.stop()
            assert info.value.message.startswith(expected)
    assert upstream.received == []


async def test_grpc_exporter_over_mtls_opens_a_new_channel_after_rotation(pki, tmp_path: Path) -> None:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    shutil.copy(pki.client_cert, cert)
    shutil.copy(pki.client_key, key)
    client = ClientTLS(ca_file=pki.ca_cert, cert_file=str(cert), key_file=str(key), alpn=("h2",), check_interval=0)
    service = TraceService()
    async with serve_grpc(service, upstream_tls(pki, alpn=("h2",))) as port:
        exporter = GrpcExporter(exporter_config(f"https://localhost:{port}", "grpc"), ssl_context=client.context)
        await exporter.start()
        try:
            await exporter.export(Signal.TRACES, payload("first"))
            next_cert, next_key = pki.issue_client("next")
            shutil.copy(next_cert, cert)
            shutil.copy(next_key, key)
            await exporter.export(Signal.TRACES, payload("second"))
        finally:
            await exporter.stop()
    names = [
        [s.name for rs in r.resource_spans for ss in rs.scope_spans for s in ss.spans] for r, _, _ in service.received
    ]
    assert names == [["first"], ["second"]]
    assert [serial for _, _, serial in service.received] == [serial_of(pki.client_cert), serial_of(next_cert)]
    assert {spiffe for _, spiffe, _ in service.received} == {pki.client_spiffe_id}


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
async def test_a_failed_handshake_is_counted_under_a_tls_reason(pki, tmp_path: Path, protocol: str) -> None:
    """The failed-items reason of a TLS failure is tls_<kind> (docs/metrics.md), so alerts on
    reason=~"tls_.*" see it: an outage walk found plain unknown_ca and not_tls instead."""
    from sidecar.tls.metrics import TLSMetrics
    from tests.tls.pki import make_pki

    other = make_pki(tmp_path, "other")  # the sidecar trusts another CA than the upstream's
    grpc = protocol == "grpc"
    client = ClientTLS(ca_file=other.ca_cert, cert_file=pki.client_cert, key_file=pki.client_key,
                       alpn=("h2",) if grpc else ())
    tls = upstream_tls(pki, alpn=("h2",)) if grpc else upstream_tls(pki)
    server = serve_grpc(TraceService(), tls) if grpc else serve_https(Upstream(tls).app(), tls, "acceptor")
    async with server as port:
        config = exporter_config(f"https://localhost:{port}", protocol)
        kind = GrpcExporter if grpc else HttpExporter
        exporter = kind(config, ssl_context=client.context, classify=TLSMetrics().client_failure)
        await exporter.start()
        try:
            with pytest.raises(ExportError) as info:
                await exporter.export(Signal.TRACES, payload("refused"))
        finally:
            await exporter.stop()
    assert info.value.reason == "tls_unknown_ca", info.value
