"""TLS through a real sidecar, configured the way a pod is: mTLS to the upstream from the
standard OTEL_EXPORTER_OTLP_* variables, and mTLS with a SPIFFE allowlist on the receivers."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import aiohttp
import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

from sidecar.export.grpc_client import CallError, Channel, call_unary
from sidecar.signals import Signal
from tests import sdk
from tests.conftest import sidecar_env
from tests.tls.pki import make_pki
from tests.upstream import Upstream

BODY = encode_spans(sdk.make_spans(5)).SerializeToString()


def upstream_context(pki) -> ssl.SSLContext:
    """An upstream that demands a client certificate from the sidecar."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=pki.ca_cert)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols(["h2", "http/1.1"])
    return context


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
async def test_sidecar_exports_over_mtls_from_otel_variables(tmp_path: Path, start_sidecar, protocol) -> None:
    pki = make_pki(tmp_path)
    upstream = Upstream()
    await upstream.start(ssl=upstream_context(pki))
    try:
        port = upstream.grpc_port if protocol == "grpc" else upstream.http_port
        env = sidecar_env(None, OTEL_EXPORTER_OTLP_ENDPOINT=f"https://localhost:{port}",
                          OTEL_EXPORTER_OTLP_PROTOCOL=protocol, OTEL_EXPORTER_OTLP_CERTIFICATE=pki.ca_cert,
                          OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE=pki.client_cert,
                          OTEL_EXPORTER_OTLP_CLIENT_KEY=pki.client_key)
        sidecar = await start_sidecar(env)
        async with aiohttp.ClientSession() as session:
            async with session.post(f"http://127.0.0.1:{sidecar.addresses['http'][1]}/v1/traces", data=BODY,
                                    headers={"Content-Type": "application/x-protobuf"}) as response:
                assert response.status == 200
        await upstream.wait_for(lambda: len(upstream.spans()) == 5)
        expiry = sidecar.metrics.registry.get_sample_value(
            "otlp_sidecar_tls_certificate_expiry_seconds", {"role": "client", "name": "exporter"})
        assert expiry is not None and expiry > 86400
    finally:
        await upstream.stop()


async def test_sidecar_refuses_start_with_a_missing_client_key(tmp_path: Path, start_sidecar) -> None:
    from sidecar.configkit import ConfigError

    pki = make_pki(tmp_path)
    env = sidecar_env(None, OTEL_EXPORTER_OTLP_ENDPOINT="https://localhost:4317",
                      OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE=pki.client_cert,
                      OTEL_EXPORTER_OTLP_CLIENT_KEY=str(tmp_path / "nope.key"))
    with pytest.raises(ConfigError) as info:
        await start_sidecar(env)
    assert "exporter.client_key" in str(info.value) and "nope.key" in str(info.value)


async def test_inbound_mtls_with_spiffe_allowlist(tmp_path: Path, upstream, start_sidecar) -> None:
    pki = make_pki(tmp_path)
    allowed = pki.client_spiffe_id
    other_cert, other_key = pki.issue_client("intruder", spiffe_id="spiffe://cluster.local/ns/other/sa/intruder")
    env = sidecar_env(upstream, "grpc", SIDECAR_RECEIVERS_TLS_CERT_FILE=pki.server_cert,
                      SIDECAR_RECEIVERS_TLS_KEY_FILE=pki.server_key, SIDECAR_RECEIVERS_TLS_CLIENT_CA_FILE=pki.ca_cert,
                      SIDECAR_RECEIVERS_TLS_REQUIRE_CLIENT_CERT="true", SIDECAR_RECEIVERS_TLS_SPIFFE_ALLOW=allowed)
    sidecar = await start_sidecar(env)
    http_port, grpc_port = sidecar.addresses["http"][1], sidecar.addresses["grpc"][1]

    def client_context(cert: str | None, key: str | None, alpn: list[str]) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=pki.ca_cert)
        if cert:
            context.load_cert_chain(cert, key)
        context.set_alpn_protocols(alpn)
        return context

    async def http_status(cert: str | None, key: str | None) -> int:
        connector = aiohttp.TCPConnector(ssl=client_context(cert, key, ["http/1.1"]))
        async with aiohttp.ClientSession(connector=connector) as session:
            async with session.post(f"https://localhost:{http_port}/v1/traces", data=BODY,
                                    headers={"Content-Type": "application/x-protobuf"}) as response:
                return response.status

    async def grpc_status(cert: str | None, key: str | None) -> str:
        channel = Channel("localhost", grpc_port, ssl=client_context(cert, key, ["h2"]))
        try:
            await call_unary(channel, Signal.TRACES.grpc_path, BODY, timeout=10)
            return "OK"
        except CallError as exc:
            return exc.status.name
        finally:
            channel.close()

    assert await http_status(pki.client_cert, pki.client_key) == 200
    assert await http_status(other_cert, other_key) == 403
    assert await http_status(None, None) == 401
    assert await grpc_status(pki.client_cert, pki.client_key) == "OK"
    assert await grpc_status(other_cert, other_key) == "PERMISSION_DENIED"
    assert await grpc_status(None, None) == "UNAUTHENTICATED"
    await upstream.wait_for(lambda: len(upstream.spans()) == 10)
    refused = sidecar.metrics.registry.get_sample_value(
        "otlp_sidecar_tls_refused_peers_total", {"reason": "spiffe_id_not_allowed"})
    assert refused == 2
    # a plaintext gRPC client on the TLS port fails its handshake, and the gRPC listener counts it
    failures = {"role": "server", "reason": "not_tls"}
    before = sidecar.metrics.registry.get_sample_value("otlp_sidecar_tls_handshake_failures_total", failures) or 0
    channel = Channel("localhost", grpc_port)
    try:
        with pytest.raises(CallError):
            await call_unary(channel, Signal.TRACES.grpc_path, BODY, timeout=10)
    finally:
        channel.close()
    for _ in range(100):
        after = sidecar.metrics.registry.get_sample_value("otlp_sidecar_tls_handshake_failures_total", failures)
        if after == before + 1:
            break
        await asyncio.sleep(0.05)
    assert after == before + 1


async def test_plaintext_on_a_public_address_is_refused() -> None:
    from sidecar.config import ConfigError, load

    with pytest.raises(ConfigError) as info:
        load(None, env={"SIDECAR_HTTP_ENDPOINT": "0.0.0.0:4318"})
    assert "receivers.http_endpoint" in str(info.value) and "needs TLS" in str(info.value)
