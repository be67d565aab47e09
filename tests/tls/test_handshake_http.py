"""Real TLS handshakes on loopback: an aiohttp server with ServerTLS, an aiohttp client
with ClientTLS, certificates made by cryptography. What should pass passes; each kind of
bad peer is refused with a clear error and counted."""

from __future__ import annotations

import ssl
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from sidecar.tls.certs import make_ca, make_client_cert, make_server_cert
from sidecar.tls.client import ClientTLS
from sidecar.tls.metrics import TLSMetrics
from sidecar.tls.server import ServerTLS
from tests.tls.pki import OTHER_SPIFFE_ID, PKI, expired_window, make_pki, write_pair
from tests.tls.servers import make_http_app, serve_http, serve_https

BODY = b"\x0a\x00"  # an empty ResourceSpans, as bytes: the content does not matter here


def metric(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


async def post(port: int, ctx: ssl.SSLContext, host: str = "localhost", **kwargs: object) -> tuple[int, dict]:
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.post(f"https://{host}:{port}/v1/traces", data=BODY, ssl=ctx, **kwargs) as resp:
            return resp.status, await resp.json()


@pytest.fixture(params=["ssl_context", "acceptor"])
def style(request: pytest.FixtureRequest) -> str:
    """Both ways a receiver can listen: TCPSite(ssl_context=...) and the counting acceptor."""
    return str(request.param)


def mtls_server(pki: PKI, **kwargs: object) -> ServerTLS:
    return pki.mtls_server(**kwargs)


async def test_mtls_passes_and_the_peer_carries_the_spiffe_id(pki, style: str) -> None:
    server_tls = mtls_server(pki, spiffe_allow=["spiffe://cluster.local/ns/default/*"])
    client_tls = ClientTLS(ca_file=pki.ca_cert, cert_file=pki.client_cert, key_file=pki.client_key)
    received: list[dict] = []
    async with serve_https(make_http_app(server_tls, received), server_tls, style) as port:
        status, answer = await post(port, client_tls.context())
        # by IP address too: the server certificate names 127.0.0.1
        status_ip, _ = await post(port, client_tls.context(), host="127.0.0.1")
    assert (status, status_ip) == (200, 200)
    assert answer["spiffe_id"] == pki.client_spiffe_id
    assert received[0]["tls"] is True and received[0]["body"] == BODY
    assert received[0]["client_serial"] == client_tls.certificate.serial_number


async def test_plain_tls_without_client_certificates(pki, style: str) -> None:
    server_tls = ServerTLS(cert_file=pki.server_cert, key_file=pki.server_key)
    async with serve_https(make_http_app(server_tls), server_tls, style) as port:
        status, answer = await post(port, ClientTLS(ca_file=pki.ca_cert).context())
    assert status == 200 and answer["spiffe_id"] == ""


async def test_client_trusting_another_ca_refuses_the_server(pki, tmp_path: Path, style: str) -> None:
    other = make_pki(tmp_path, "other")
    server_tls = ServerTLS(cert_file=pki.server_cert, key_file=pki.server_key)
    metrics = TLSMetrics()
    async with serve_https(make_http_app(server_tls), server_tls, style) as port:
        with pytest.raises(aiohttp.ClientConnectorCertificateError) as info:
            await post(port, ClientTLS(ca_file=other.ca_cert).context())
    assert "unable to get local issuer certificate" in str(info.value)
    assert metrics.client_failure(info.value) == "unknown_ca"
    assert (
        metric(metrics.registry, "otlp_sidecar_tls_handshake_failures_total", role="client", reason="unknown_ca") == 1
    )


async def test_client_refuses_an_expired_server_certificate(pki) -> None:
    cert, key = write_pair(make_server_cert(pki.ca, **expired_window()), pki.dir, "expired-server")
    # ServerTLS itself refuses expired files (see test_files), so this upstream uses plain ssl
    upstream = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    upstream.load_cert_chain(cert, key)
    metrics = TLSMetrics()
    async with serve_http(make_http_app(None), upstream) as port:
        with pytest.raises(aiohttp.ClientConnectorCertificateError) as info:
            await post(port, ClientTLS(ca_file=pki.ca_cert).context())
    assert "certificate has expired" in str(info.value)
    assert metrics.client_failure(info.value) == "certificate_expired"


async def test_wrong_hostname_is_refused_and_server_name_overrides_it(pki, style: str) -> None:
    cert, key = pki.issue_server("collector", dns_names=("collector.observability.svc",), ips=())
    server_tls = ServerTLS(cert_file=cert, key_file=key)
    metrics = TLSMetrics()
    async with serve_https(make_http_app(server_tls), server_tls, style) as port:
        with pytest.raises(aiohttp.ClientConnectorCertificateError) as info:
            await post(port, ClientTLS(ca_file=pki.ca_cert).context(), host="127.0.0.1")
        assert "IP address mismatch" in str(info.value)
        assert metrics.client_failure(info.value) == "hostname_mismatch"
        with pytest.raises(aiohttp.ClientConnectorCertificateError) as info:
            await post(port, ClientTLS(ca_file=pki.ca_cert).context(), host="localhost")
        assert "Hostname mismatch" in str(info.value)
        # the override: connect to 127.0.0.1, verify (and send SNI) collector.observability.svc
        override = ClientTLS(ca_file=pki.ca_cert, server_name="collector.observability.svc")
        status, _ = await post(port, override.context(), host="127.0.0.1", server_hostname=override.server_hostname)
        assert status == 200
        # hostname verification off: the chain is still verified, the name is not
        lax = ClientTLS(ca_file=pki.ca_cert, verify_hostname=False)
        status, _ = await post(port, lax.context(), host="127.0.0.1")
        assert status == 200


async def test_missing_client_certificate_is_refused_with_401_and_counted(pki, style: str) -> None:
    server_tls = mtls_server(pki)
    metrics = TLSMetrics()
    metrics.track(server_tls, "receivers")
    async with serve_https(make_http_app(server_tls), server_tls, style) as port:
        status, answer = await post(port, ClientTLS(ca_file=pki.ca_cert).context())
    assert status == 401
    assert answer["error"] == "a client certificate is required on this listener (mTLS); none was presented"
    assert metric(metrics.registry, "otlp_sidecar_tls_refused_peers_total", reason="no_client_certificate") == 1


async def test_client_outside_the_spiffe_allowlist_is_refused_with_403_and_counted(pki, style: str) -> None:
    server_tls = mtls_server(pki, spiffe_allow=[pki.client_spiffe_id, "spiffe://cluster.local/ns/prod/*"])
    metrics = TLSMetrics()
    metrics.track(server_tls, "receivers")
    intruder_cert, intruder_key = pki.issue_client("intruder", OTHER_SPIFFE_ID)
    no_id_cert, no_id_key = pki.issue_client("no-id", "")
    prod_cert, prod_key = pki.issue_client("prod", "spiffe://cluster.local/ns/prod/sa/api")
    async with serve_https(make_http_app(server_tls), server_tls, style) as port:
        intruder = ClientTLS(ca_file=pki.ca_cert, cert_file=intruder_cert, key_file=intruder_key)
        status, answer = await post(port, intruder.context())
        assert status == 403
        assert answer["error"] == f"SPIFFE ID {OTHER_SPIFFE_ID} is not allowed"
        no_id = ClientTLS(ca_file=pki.ca_cert, cert_file=no_id_cert, key_file=no_id_key)
        status, answer = await post(port, no_id.context())
        assert status == 403 and "no SPIFFE ID" in answer["error"]
        prod = ClientTLS(ca_file=pki.ca_cert, cert_file=prod_cert, key_file=prod_key)
        status, answer = await post(port, prod.context())
        assert status == 200 and answer["spiffe_id"] == "spiffe://cluster.local/ns/prod/sa/api"
    assert metric(metrics.registry, "otlp_sidecar_tls_refused_peers_total", reason="spiffe_id_not_allowed") == 2


async def test_client_certificate_from_another_ca_is_refused_and_counted(pki, tmp_path: Path, caplog) -> None:
    other = make_pki(tmp_path, "other")
    server_tls = mtls_server(pki)
    metrics = TLSMetrics()
    metrics.track(server_tls, "receivers")
    received: list[dict] = []
    # the client trusts the server, but its own certificate comes from a CA the server does not know
    client = ClientTLS(ca_file=pki.ca_cert, cert_file=other.client_cert, key_file=other.client_key)
    async with serve_https(make_http_app(server_tls, received), server_tls, "acceptor") as port:
        with pytest.raises((aiohttp.ClientError, ssl.SSLError)):  # TLS 1.3: an alert or a reset
            await post(port, client.context())
        await settle(lambda: handshake_failures(metrics, "unknown_ca") == 1)
    assert received == []
    assert "TLS handshake from 127.0.0.1:" in caplog.text
    assert "refused: unknown_ca (unable to get local issuer certificate)" in caplog.text


async def test_expired_client_certificate_is_refused_and_counted(pki, caplog) -> None:
    cert, key = write_pair(make_client_cert(pki.ca, pki.client_spiffe_id, **expired_window()), pki.dir, "old")
    # ClientTLS refuses expired files (test_files), so this client uses a plain ssl context
    client = ssl.create_default_context(cafile=pki.ca_cert)
    client.load_cert_chain(cert, key)
    server_tls = mtls_server(pki)
    metrics = TLSMetrics()
    metrics.track(server_tls, "receivers")
    received: list[dict] = []
    async with serve_https(make_http_app(server_tls, received), server_tls, "acceptor") as port:
        with pytest.raises((aiohttp.ClientError, ssl.SSLError)):
            await post(port, client)
        await settle(lambda: handshake_failures(metrics, "certificate_expired") == 1)
    assert received == []
    assert "refused: certificate_expired (certificate has expired)" in caplog.text


async def test_minimum_tls_version_is_enforced(pki) -> None:
    server_tls = ServerTLS(cert_file=pki.server_cert, key_file=pki.server_key, min_version="1.3")
    metrics = TLSMetrics()
    metrics.track(server_tls, "receivers")
    old_client = ClientTLS(ca_file=pki.ca_cert).context()
    old_client.maximum_version = ssl.TLSVersion.TLSv1_2
    async with serve_https(make_http_app(server_tls), server_tls, "acceptor") as port:
        with pytest.raises(aiohttp.ClientConnectorError):  # the server resets the connection
            await post(port, old_client)
        status, _ = await post(port, ClientTLS(ca_file=pki.ca_cert, min_version="1.3").context())
        await settle(lambda: handshake_failures(metrics, "protocol_version") == 1)
    assert status == 200


async def test_plaintext_request_to_a_tls_listener_is_refused_and_counted(pki, style: str) -> None:
    server_tls = mtls_server(pki)
    metrics = TLSMetrics()
    metrics.track(server_tls, "receivers")
    received: list[dict] = []
    async with serve_https(make_http_app(server_tls, received), server_tls, style) as port:
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.ClientError):
                async with session.post(f"http://127.0.0.1:{port}/v1/traces", data=BODY) as resp:
                    await resp.read()
        if style == "acceptor":
            await settle(lambda: handshake_failures(metrics, "not_tls") == 1)
    assert received == []


async def settle(condition, timeout: float = 5.0) -> None:
    """Wait until the server side has processed the failed handshake."""
    import asyncio

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def handshake_failures(metrics: TLSMetrics, reason: str) -> float:
    return metric(metrics.registry, "otlp_sidecar_tls_handshake_failures_total", role="server", reason=reason)


def test_a_ca_from_elsewhere_is_not_trusted_by_default(tmp_path: Path) -> None:
    """Without ca_file the system store is used; a development CA is not in it."""
    ca = make_ca()
    ctx = ClientTLS().context()
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname is True
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert all(c.get("serialNumber") != f"{ca.certificate.serial_number:X}" for c in ctx.get_ca_certs())


async def test_acceptor_tcp_probe_is_not_a_failure_and_a_silent_client_times_out(pki) -> None:
    import asyncio

    from sidecar.tls.acceptor import tls_protocol_factory

    server_tls = mtls_server(pki)
    metrics = TLSMetrics()
    metrics.track(server_tls, "receivers")
    runner = web.AppRunner(make_http_app(server_tls))
    await runner.setup()
    loop = asyncio.get_running_loop()
    factory = tls_protocol_factory(runner.server, server_tls, handshake_timeout=1.0)
    server = await loop.create_server(factory, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        # a TCP probe (a kubelet tcpSocket check): connects and leaves
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.close()
        await writer.wait_closed()
        # a client that connects and says nothing: the handshake times out
        reader, silent = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(reader.read(), 5) == b""  # the server hung up
        silent.close()
        await settle(lambda: handshake_failures(metrics, "timeout") == 1)
        # and the listener still serves real clients
        client = ClientTLS(ca_file=pki.ca_cert, cert_file=pki.client_cert, key_file=pki.client_key)
        status, _ = await post(port, client.context())
        assert status == 200
    finally:
        server.close()
        await runner.cleanup()
        await server.wait_closed()
    samples = [
        s for m in metrics.registry.collect() if m.name == "otlp_sidecar_tls_handshake_failures" for s in m.samples
    ]
    assert [(s.labels["reason"], s.value) for s in samples if s.name.endswith("_total")] == [("timeout", 1.0)]
