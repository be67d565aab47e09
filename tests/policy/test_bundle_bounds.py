"""A hostile bundle server against a real sidecar process: a declared 2 GiB body, an endless
body, a gzip bomb, a tar of 10,000 members and a bundle that never finishes. Each is refused
within its bound and counted, the sidecar keeps its last good set and serves its clients
meanwhile, and its peak RSS (VmHWM) stays under a ceiling."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import io
import tarfile
from pathlib import Path

from aiohttp import web

from tests.bundles.helpers import BundleServer, Keys, build, whole_set
from tests.bundles.sidecar_client import (
    bundle_env,
    card_values,
    metric,
    policy_status,
    send_cards,
    vm_hwm_kib,
)
from tests.processes import SidecarProcess


class _Zeros(io.RawIOBase):
    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n


def gzip_bomb(size: int) -> bytes:
    """A tar.gz whose one member holds ``size`` zero bytes (a few hundred KiB compressed)."""
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=9) as zipped, \
            tarfile.open(fileobj=zipped, mode="w") as tar:
        info = tarfile.TarInfo("data.json")
        info.size = size
        tar.addfile(info, io.BufferedReader(_Zeros(size)))
    return out.getvalue()


def many_members(count: int) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for index in range(count):
            tar.addfile(tarfile.TarInfo(f"d/{index}.rego"), io.BytesIO(b""))
    return out.getvalue()


class HostileServer(BundleServer):
    """The bundle server, plus modes that attack the client."""

    def __init__(self) -> None:
        super().__init__()
        self.mode = ""

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        if self.mode == "declared":
            response = web.StreamResponse(headers={"ETag": '"declared"'})
            response.content_length = 2 * 1024**3
            await response.prepare(request)
            with contextlib.suppress(ConnectionError):
                await response.write(b"\x1f\x8b" + bytes(1000))
            return response
        if self.mode in ("endless", "stall"):
            response = web.StreamResponse(headers={"ETag": f'"{self.mode}"'})
            response.enable_chunked_encoding()
            await response.prepare(request)
            try:
                while True:  # until the client cuts it
                    if self.mode == "stall":
                        await asyncio.sleep(1)
                        await response.write(b"\0")
                    else:
                        await response.write(bytes(256 * 1024))
                        self.bytes_served += 256 * 1024
            except ConnectionError:  # the client cut it: what the test wants
                return response
        return await super()._serve(request)


async def test_hostile_bundle_server_is_bounded(upstream, tmp_path: Path, hash_key_file: Path) -> None:
    keys = Keys(tmp_path / "keys")
    good = build(whole_set(tmp_path / "v1", "v1"), tmp_path / "v1.tar.gz", "--signing-key", str(keys.rsa_private))
    server = HostileServer()
    base = await server.start()
    server.put("set", good.read_bytes())
    sidecar = SidecarProcess(bundle_env(
        upstream, base, keys, hash_key_file,
        SIDECAR_POLICY_BUNDLE_MAX_DOWNLOAD_SIZE="2MiB", SIDECAR_POLICY_BUNDLE_MAX_SIZE="4MiB",
        SIDECAR_POLICY_BUNDLE_TIMEOUT="2s",
    ))
    ports = await sidecar.start(timeout=60)
    admin = ports["admin"]
    try:
        await send_cards(ports["grpc"])
        await upstream.wait_for(lambda: len(upstream.spans()) >= 5)
        start_hwm = vm_hwm_kib(sidecar.proc.pid)
        bomb = gzip_bomb(512 * 1024 * 1024)
        assert len(bomb) < 2 * 1024 * 1024  # 512 MiB within the 2 MiB download bound
        attacks = [
            ("declared", None, "failed", "bundle_max_download_size"),
            ("endless", None, "failed", "bundle_max_download_size"),
            ("stall", None, "failed", "cannot download"),
            ("", bomb, "refused", "bundle_max_size"),
            ("", many_members(10_000), "refused", "more than 2000 members"),
        ]
        sent = 5
        for mode, raw, result, message in attacks:
            name = f'otlp_sidecar_policy_bundle_polls_total{{bundle="platform",result="{result}"}}'
            before = await metric(admin, name)
            server.mode = mode
            if raw is not None:
                server.put("set", raw)
            deadline = asyncio.get_running_loop().time() + 30
            while await metric(admin, name) <= before:
                assert asyncio.get_running_loop().time() < deadline, f"{mode or message}: not counted"
                # the sidecar serves its clients meanwhile
                await send_cards(ports["grpc"])
                sent += 5
                await asyncio.sleep(0.2)
            status = await policy_status(admin)
            assert message in status["bundles"][0]["last_error"], status["bundles"][0]["last_error"]
            assert status["bundles"][0]["revision"] == "v1"
            server.mode = ""
        await upstream.wait_for(lambda: len(upstream.spans()) >= sent)
        assert set(card_values(upstream)) == {"**** **** **** 1111"}
        peak = vm_hwm_kib(sidecar.proc.pid)
        print(f"\nVmHWM after start {start_hwm // 1024} MiB, after the attacks {peak // 1024} MiB")
        assert peak - start_hwm < 48 * 1024, (start_hwm, peak)
        assert "Traceback" not in sidecar.stderr
    finally:
        await sidecar.stop()
        await server.stop()


async def test_start_fails_clearly_when_the_bundle_server_is_down(upstream, tmp_path: Path, hash_key_file) -> None:
    keys = Keys(tmp_path / "keys")
    server = BundleServer()
    base = await server.start()
    server.down = True
    sidecar = SidecarProcess(bundle_env(upstream, base, keys, hash_key_file,
                                        SIDECAR_POLICY_BUNDLE_START_TIMEOUT="2s"))
    try:
        started = asyncio.get_running_loop().time()
        try:
            await sidecar.start(timeout=30)
            raise AssertionError("the sidecar started without its bundle")
        except AssertionError as exc:
            assert "exited (2) before it was up" in str(exc)
        code = await sidecar.stop()
        assert code != 0 and asyncio.get_running_loop().time() - started < 20
        assert "policy.bundles" in sidecar.stderr and "HTTP 503" in sidecar.stderr
        assert "bundle_start_timeout" in sidecar.stderr and "Traceback" not in sidecar.stderr
        assert "Unclosed client session" not in sidecar.stderr  # the fetcher's session closed too
        assert server.requests >= 2  # retried meanwhile
    finally:
        await server.stop()


async def test_served_tls_with_a_private_ca_and_a_bearer_token(upstream, tmp_path: Path, hash_key_file) -> None:
    """HTTPS on loopback (a CA made here), the token sent as Authorization and never logged."""
    import datetime
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bundles test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(2).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(__import__("ipaddress").ip_address(
                "127.0.0.1"))]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")

    keys = Keys(tmp_path / "keys")
    good = build(whole_set(tmp_path / "v1", "tls-1"), tmp_path / "v1.tar.gz", "--signing-key", str(keys.rsa_private))
    token = "s3cr3t-token-0123456789"
    (tmp_path / "token").write_text(token + "\n")
    seen: list[str] = []

    async def serve(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        if request.headers.get("Authorization") != f"Bearer {token}":
            return web.Response(status=401)
        return web.Response(body=good.read_bytes(), headers={"ETag": '"tls-1"'})

    app = web.Application()
    app.router.add_get("/set", serve)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    env = bundle_env(upstream, "", keys, hash_key_file,
                     SIDECAR_POLICY_BUNDLE_CA_FILE=str(tmp_path / "ca.pem"),
                     SIDECAR_POLICY_BUNDLE_TOKEN_FILE=str(tmp_path / "token"))
    env["SIDECAR_POLICY_BUNDLES"] = f"platform=https://127.0.0.1:{port}/set?X-Amz-Signature=presigned-secret"
    sidecar = SidecarProcess(env)
    try:
        ports = await sidecar.start(timeout=60)
        status = await policy_status(ports["admin"])
        assert status["bundles"][0]["revision"] == "tls-1"
        assert status["bundles"][0]["source"] == f"https://127.0.0.1:{port}/set"  # no presigned query
        assert seen and set(seen) == {f"Bearer {token}"}
        assert token not in sidecar.stderr and "presigned-secret" not in sidecar.stderr
        await send_cards(ports["grpc"])  # asserts SUCCESS
    finally:
        await sidecar.stop()
        await runner.cleanup()
