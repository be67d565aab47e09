"""Certificate rotation while traffic flows: the files are replaced (as a Kubernetes secret
update does, by swapping the ``..data`` symlink); new connections use the new certificate,
connections and requests in flight finish, nothing is lost, and no listener restarts."""

from __future__ import annotations

import asyncio
import shutil
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from grpclib.client import Channel, UnaryUnaryMethod
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from sidecar.tls.client import ClientTLS
from sidecar.tls.metrics import TLSMetrics
from sidecar.tls.server import ServerTLS
from tests.tls.pki import k8s_secret_dir, make_pki
from tests.tls.servers import TRACE_EXPORT, TraceService, make_http_app, peer_cert_serial, serve_grpc, serve_https


def serial_of(path: str) -> int:
    from cryptography import x509

    return x509.load_pem_x509_certificate(Path(path).read_bytes()).serial_number


def value(metrics: TLSMetrics, name: str, /, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


class Traffic:
    """Sends requests one after the other until stopped; records each outcome."""

    def __init__(self, send: Callable[[int], Awaitable[int]]) -> None:
        self._send = send
        self.results: list[int] = []  # the serial of the certificate the other side showed
        self.errors: list[BaseException] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Traffic:
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            try:
                self.results.append(await self._send(n))
            except Exception as exc:  # recorded: the test asserts there are none
                self.errors.append(exc)
            n += 1
            await asyncio.sleep(0)

    async def wait_for(self, count: int) -> None:
        while len(self.results) + len(self.errors) < count:
            await asyncio.sleep(0.005)

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._task is not None
        await self._task


@pytest.mark.parametrize("style", ["ssl_context", "acceptor"])
async def test_server_certificate_rotates_while_requests_flow(tmp_path: Path, style: str) -> None:
    pki = make_pki(tmp_path)
    new_cert, new_key = pki.issue_server("server-next")
    secret = k8s_secret_dir(tmp_path / "secret", {"tls.crt": pki.server_cert, "tls.key": pki.server_key}, "v1")
    tls = ServerTLS(
        cert_file=str(secret / "tls.crt"),
        key_file=str(secret / "tls.key"),
        client_ca_file=pki.ca_cert,
        require_client_cert=True,
        check_interval=0,
    )
    metrics = TLSMetrics()
    metrics.track(tls, "receivers")
    client = ClientTLS(ca_file=pki.ca_cert, cert_file=pki.client_cert, key_file=pki.client_key)
    received: list[dict] = []
    async with (
        serve_https(make_http_app(tls, received), tls, style) as port,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as fresh,
        aiohttp.ClientSession() as pooled,
    ):

        async def send(n: int) -> int:
            session = fresh if n % 2 else pooled  # new connections, and one kept alive throughout
            body = f"request {n}".encode()
            url = f"https://localhost:{port}/v1/traces"
            async with session.post(url, data=body, ssl=client.context()) as resp:
                assert resp.status == 200, await resp.text()
                return n

        async def served_serial() -> int:
            """The serial of the certificate a new connection is shown."""
            _, writer = await asyncio.open_connection("localhost", port, ssl=client.context())
            serial = peer_cert_serial(writer.get_extra_info("ssl_object"))
            writer.close()
            await writer.wait_closed()
            return serial

        async with Traffic(send) as traffic:
            await traffic.wait_for(20)
            before = await served_serial()
            k8s_secret_dir(tmp_path / "secret", {"tls.crt": new_cert, "tls.key": new_key}, "v2")
            rotated_at = len(traffic.results)
            after = await served_serial()
            await traffic.wait_for(rotated_at + 30)
            assert await served_serial() == after
    assert traffic.errors == []
    sent = len(traffic.results)
    assert sorted(r["body"] for r in received) == sorted(f"request {n}".encode() for n in range(sent))
    assert (before, after) == (serial_of(pki.server_cert), serial_of(new_cert))
    assert tls.generation == 1
    assert value(metrics, "otlp_sidecar_tls_reloads_total", role="server", result="ok") == 1


async def test_client_certificate_rotates_and_requests_in_flight_finish(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    next_cert, next_key = pki.issue_client("client-next")
    secret = k8s_secret_dir(tmp_path / "secret", {"tls.crt": pki.client_cert, "tls.key": pki.client_key}, "v1")
    client = ClientTLS(
        ca_file=pki.ca_cert, cert_file=str(secret / "tls.crt"), key_file=str(secret / "tls.key"), check_interval=0
    )
    server = ServerTLS(
        cert_file=pki.server_cert, key_file=pki.server_key, client_ca_file=pki.ca_cert, require_client_cert=True
    )
    release = asyncio.Event()
    seen: list[int] = []

    async def handler(request: web.Request) -> web.Response:
        server.authorize_transport(request.transport)
        serial = peer_cert_serial(request.transport.get_extra_info("ssl_object"))
        if request.query.get("slow"):
            await release.wait()
        seen.append(serial)
        return web.Response(text=str(serial))

    app = web.Application()
    app.router.add_post("/v1/traces", handler)
    async with serve_https(app, server, "ssl_context") as port, aiohttp.ClientSession() as session:
        url = f"https://localhost:{port}/v1/traces"

        async def post(query: str = "") -> int:
            async with session.post(url + query, data=b"x", ssl=client.context()) as resp:
                assert resp.status == 200
                return int(await resp.text())

        assert await post() == serial_of(pki.client_cert)
        in_flight = asyncio.create_task(post("?slow=1"))
        await asyncio.sleep(0.05)
        generation = client.generation
        k8s_secret_dir(tmp_path / "secret", {"tls.crt": next_cert, "tls.key": next_key}, "v2")
        # the pool keys connections by context: the new context opens a new connection
        assert [await post() for _ in range(5)] == [serial_of(next_cert)] * 5
        assert client.generation == generation + 1
        release.set()
        assert await in_flight == serial_of(pki.client_cert)  # finished on its old connection
    assert seen[-1] == serial_of(pki.client_cert) and len(seen) == 7


async def test_a_broken_new_set_keeps_the_old_certificate_and_is_counted(tmp_path: Path, caplog) -> None:
    pki = make_pki(tmp_path)
    cert_path, key_path = tmp_path / "tls.crt", tmp_path / "tls.key"
    shutil.copy(pki.client_cert, cert_path)
    shutil.copy(pki.client_key, key_path)
    client = ClientTLS(ca_file=pki.ca_cert, cert_file=str(cert_path), key_file=str(key_path), check_interval=0)
    metrics = TLSMetrics()
    metrics.track(client, "exporter")
    before = client.context()
    next_cert, next_key = pki.issue_client("client-next", days=30)
    # a half-done update: the new certificate with the old key
    shutil.copy(next_cert, cert_path)
    assert client.reload_now() is False
    assert client.context() is before
    assert client.last_error == f"key_file: {key_path}: the private key does not match the certificate {cert_path}"
    assert value(metrics, "otlp_sidecar_tls_reloads_total", role="client", result="failed") == 1
    assert "client TLS reload failed, keeping the previous certificates" in caplog.text
    assert "PRIVATE KEY" not in caplog.text
    # the same broken files are not retried (nor logged) again
    client.context()
    assert value(metrics, "otlp_sidecar_tls_reloads_total", role="client", result="failed") == 1
    # the update completes: the new pair is used
    shutil.copy(next_key, key_path)
    assert client.context() is not before
    assert client.generation == 1 and client.last_error == ""
    assert client.certificate is not None and client.certificate.serial_number == serial_of(next_cert)
    assert value(metrics, "otlp_sidecar_tls_reloads_total", role="client", result="ok") == 1
    left = value(metrics, "otlp_sidecar_tls_certificate_expiry_seconds", role="client", name="exporter")
    assert 29 * 86400 < left <= 30 * 86400


async def test_same_contents_rewritten_is_not_a_new_generation(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    secret = k8s_secret_dir(tmp_path / "s", {"tls.crt": pki.server_cert, "tls.key": pki.server_key}, "v1")
    tls = ServerTLS(cert_file=str(secret / "tls.crt"), key_file=str(secret / "tls.key"), check_interval=0)
    k8s_secret_dir(tmp_path / "s", {"tls.crt": pki.server_cert, "tls.key": pki.server_key}, "v2")
    assert tls.reload_now() is False and tls.generation == 0 and tls.last_error == ""


async def test_server_trusts_a_new_client_ca_after_rotation(tmp_path: Path) -> None:
    old, new = make_pki(tmp_path, "old"), make_pki(tmp_path, "new")
    ca_path = tmp_path / "client-ca.crt"
    shutil.copy(old.ca_cert, ca_path)
    tls = ServerTLS(
        cert_file=old.server_cert,
        key_file=old.server_key,
        client_ca_file=str(ca_path),
        require_client_cert=True,
        check_interval=0,
    )
    from_new_ca = ClientTLS(ca_file=old.ca_cert, cert_file=new.client_cert, key_file=new.client_key)
    from_old_ca = ClientTLS(ca_file=old.ca_cert, cert_file=old.client_cert, key_file=old.client_key)
    connector = aiohttp.TCPConnector(force_close=True)
    async with (
        serve_https(make_http_app(tls), tls, "ssl_context") as port,
        aiohttp.ClientSession(connector=connector) as session,
    ):
        url = f"https://localhost:{port}/v1/traces"

        async def status(client: ClientTLS) -> int | str:
            try:
                async with session.post(url, data=b"x", ssl=client.context()) as resp:
                    return resp.status
            except (aiohttp.ClientError, ssl.SSLError):
                return "refused"

        assert await status(from_new_ca) == "refused"
        # the trust bundle now holds both CAs (a CA rotation), then only the new one
        ca_path.write_bytes(Path(old.ca_cert).read_bytes() + Path(new.ca_cert).read_bytes())
        assert (await status(from_new_ca), await status(from_old_ca)) == (200, 200)
        shutil.copy(new.ca_cert, ca_path)
        assert (await status(from_new_ca), await status(from_old_ca)) == (200, "refused")
    assert tls.generation == 2


async def test_grpc_channels_follow_the_client_generation_without_losing_calls(tmp_path: Path) -> None:
    """What the exporter does with grpclib: a new Channel when ``generation`` changed,
    the old one closed after its calls finish."""
    pki = make_pki(tmp_path)
    secret = k8s_secret_dir(tmp_path / "s", {"tls.crt": pki.client_cert, "tls.key": pki.client_key}, "v1")
    client = ClientTLS(
        ca_file=pki.ca_cert,
        cert_file=str(secret / "tls.crt"),
        key_file=str(secret / "tls.key"),
        alpn=("h2",),
        check_interval=0,
    )
    server_cert_secret = k8s_secret_dir(tmp_path / "srv", {"tls.crt": pki.server_cert, "tls.key": pki.server_key}, "v1")
    server = ServerTLS(
        cert_file=str(server_cert_secret / "tls.crt"),
        key_file=str(server_cert_secret / "tls.key"),
        client_ca_file=pki.ca_cert,
        require_client_cert=True,
        alpn=("h2",),
        check_interval=0,
    )
    service = TraceService()
    channels: dict[int, Channel] = {}
    async with serve_grpc(service, server) as port:

        def channel() -> Channel:
            ctx = client.context()
            if client.generation not in channels:
                for old in channels.values():
                    old.close()  # grpclib lets open streams finish before the transport goes
                channels[client.generation] = Channel("localhost", port, ssl=ctx)
            return channels[client.generation]

        async def send(n: int) -> int:
            method = UnaryUnaryMethod(channel(), TRACE_EXPORT, ExportTraceServiceRequest, ExportTraceServiceResponse)
            await method(ExportTraceServiceRequest(), timeout=10)
            return n

        next_client = pki.issue_client("client-next")
        next_server = pki.issue_server("server-next")
        async with Traffic(send) as traffic:
            await traffic.wait_for(15)
            k8s_secret_dir(tmp_path / "s", {"tls.crt": next_client[0], "tls.key": next_client[1]}, "v2")
            k8s_secret_dir(tmp_path / "srv", {"tls.crt": next_server[0], "tls.key": next_server[1]}, "v2")
            await traffic.wait_for(len(traffic.results) + 15)
        for ch in channels.values():
            ch.close()
    assert traffic.errors == []
    assert len(service.received) == len(traffic.results)
    serials = [serial for _, _, serial in service.received]
    assert serials[0] == serial_of(pki.client_cert) and serials[-1] == serial_of(next_client[0])
    assert client.generation == 1 and server.generation == 1
