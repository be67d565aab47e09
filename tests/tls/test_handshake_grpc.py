"""Real gRPC over TLS on loopback: a grpclib server with ServerTLS (ALPN h2), a grpclib
Channel with ClientTLS, an OTLP trace Export call."""

from __future__ import annotations

import pytest
from grpclib.client import Channel, UnaryUnaryMethod
from grpclib.config import Configuration
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans

from sidecar.tls.client import ClientTLS
from sidecar.tls.metrics import TLSMetrics
from sidecar.tls.server import ServerTLS
from tests.tls.pki import OTHER_SPIFFE_ID, PKI
from tests.tls.servers import TRACE_EXPORT, TraceService, serve_grpc

H2 = ("h2",)


def request() -> ExportTraceServiceRequest:
    return ExportTraceServiceRequest(resource_spans=[ResourceSpans(schema_url="https://example.test")])


async def export(port: int, client: ClientTLS, host: str = "localhost") -> ExportTraceServiceResponse:
    config = Configuration(ssl_target_name_override=client.server_hostname)
    channel = Channel(host, port, ssl=client.context(), config=config)
    try:
        method = UnaryUnaryMethod(channel, TRACE_EXPORT, ExportTraceServiceRequest, ExportTraceServiceResponse)
        return await method(request(), timeout=10)
    finally:
        channel.close()


def server_tls(pki: PKI, **kwargs: object) -> ServerTLS:
    return pki.mtls_server(alpn=H2, **kwargs)


async def test_grpc_mtls_passes_and_the_handler_sees_the_spiffe_id(pki) -> None:
    tls = server_tls(pki, spiffe_allow=["spiffe://cluster.local/ns/default/*"])
    service = TraceService()
    client = ClientTLS(ca_file=pki.ca_cert, cert_file=pki.client_cert, key_file=pki.client_key, alpn=H2)
    async with serve_grpc(service, tls) as port:
        response = await export(port, client)
    assert isinstance(response, ExportTraceServiceResponse)
    [(received, spiffe_id, serial)] = service.received
    assert received == request()
    assert spiffe_id == pki.client_spiffe_id
    assert serial == client.certificate.serial_number


async def test_grpc_missing_client_certificate_is_unauthenticated(pki) -> None:
    tls = server_tls(pki)
    metrics = TLSMetrics()
    metrics.track(tls)
    service = TraceService()
    async with serve_grpc(service, tls) as port:
        with pytest.raises(GRPCError) as info:
            await export(port, ClientTLS(ca_file=pki.ca_cert, alpn=H2))
    assert info.value.status is Status.UNAUTHENTICATED
    assert info.value.message == "a client certificate is required on this listener (mTLS); none was presented"
    assert service.received == []
    assert (
        metrics.registry.get_sample_value("otlp_sidecar_tls_refused_peers_total", {"reason": "no_client_certificate"})
        == 1
    )


async def test_grpc_client_outside_the_allowlist_is_permission_denied(pki) -> None:
    tls = server_tls(pki, spiffe_allow=[pki.client_spiffe_id])
    metrics = TLSMetrics()
    metrics.track(tls)
    service = TraceService()
    cert, key = pki.issue_client("intruder", OTHER_SPIFFE_ID)
    async with serve_grpc(service, tls) as port:
        with pytest.raises(GRPCError) as info:
            await export(port, ClientTLS(ca_file=pki.ca_cert, cert_file=cert, key_file=key, alpn=H2))
        # the allowed client on the same server still passes
        await export(port, ClientTLS(ca_file=pki.ca_cert, cert_file=pki.client_cert, key_file=pki.client_key, alpn=H2))
    assert info.value.status is Status.PERMISSION_DENIED
    assert info.value.message == f"SPIFFE ID {OTHER_SPIFFE_ID} is not allowed"
    assert [spiffe for _, spiffe, _ in service.received] == [pki.client_spiffe_id]
    assert (
        metrics.registry.get_sample_value("otlp_sidecar_tls_refused_peers_total", {"reason": "spiffe_id_not_allowed"})
        == 1
    )


async def test_grpc_server_name_override(pki) -> None:
    cert, key = pki.issue_server("collector", dns_names=("collector.observability.svc",), ips=())
    tls = ServerTLS(cert_file=cert, key_file=key, alpn=H2)
    service = TraceService()
    async with serve_grpc(service, tls) as port:
        with pytest.raises(OSError, match="mismatch") as info:
            await export(port, ClientTLS(ca_file=pki.ca_cert, alpn=H2), host="127.0.0.1")
        assert TLSMetrics().client_failure(info.value) == "hostname_mismatch"
        client = ClientTLS(ca_file=pki.ca_cert, server_name="collector.observability.svc", alpn=H2)
        await export(port, client, host="127.0.0.1")
    assert len(service.received) == 1
