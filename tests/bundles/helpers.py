"""Bundles for the tests, made by the real ``opa build`` / ``opa sign``; keys made with
``cryptography``; a bundle server on aiohttp (port 0) that counts what it serves."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import ssl
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.peers import peer

POLICIES = Path(__file__).resolve().parents[2] / "policies"

#: the shipped set split the way a platform would: PCI and the core rules, the tenant data, the
#: sampling rules of a team; each with roots that do not overlap
PLATFORM_ROOTS = [
    "otlp_sidecar/main", "otlp_sidecar/main_test", "otlp_sidecar/pci", "otlp_sidecar/pci_test",
    "otlp_sidecar/lib", "otlp_sidecar/tenant", "otlp_sidecar/tenant_test", "otlp_sidecar/k8s",
    "otlp_sidecar/k8s_test", "otlp_sidecar/sampling", "otlp_sidecar/sampling_test", "otlp_sidecar/config/pci",
    "otlp_sidecar/config/k8s", "otlp_sidecar/config/exemptions",
]
TENANT_ROOTS = ["otlp_sidecar/config/tenant"]
SAMPLING_ROOTS = ["otlp_sidecar/config/sampling"]


def opa() -> str:
    return str(peer("opa"))


def run_opa(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([opa(), *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, f"opa {' '.join(args)} failed: {done.stderr}"
    return done


def shipped_config() -> dict:
    return json.loads((POLICIES / "data.json").read_text())["otlp_sidecar"]["config"]


def write_json(path: Path, document: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=1))


def whole_set(target: Path, revision: str = "", roots: list[str] | None = None, config: dict | None = None) -> Path:
    """The shipped policies as one bundle directory."""
    shutil.copytree(POLICIES, target)
    if config is not None:
        write_json(target / "data.json", {"otlp_sidecar": {"config": config}})
    write_json(target / ".manifest", {"revision": revision, "roots": roots if roots is not None else ["otlp_sidecar"]})
    return target


def split_set(base: Path, config: dict | None = None, revision: str = "r1") -> dict[str, Path]:
    """The shipped set as three bundle directories with disjoint roots: platform (every rule, the PCI
    tunables), tenants (the tenant data), sampling (a team's sampling tunables, as YAML)."""
    config = config if config is not None else shipped_config()
    platform = base / "platform"
    shutil.copytree(POLICIES, platform)
    write_json(platform / "data.json", {"otlp_sidecar": {"config": {
        k: v for k, v in config.items() if k in ("pci", "k8s", "exemptions")}}})
    write_json(platform / ".manifest", {"revision": f"platform-{revision}", "roots": PLATFORM_ROOTS})
    tenants = base / "tenants"
    write_json(tenants / "otlp_sidecar" / "config" / "tenant" / "data.json", config["tenant"])
    write_json(tenants / ".manifest", {"revision": f"tenants-{revision}", "roots": TENANT_ROOTS})
    sampling = base / "sampling"
    (sampling / "otlp_sidecar" / "config" / "sampling").mkdir(parents=True)
    (sampling / "otlp_sidecar" / "config" / "sampling" / "data.yaml").write_text(
        "# the team's sampling tunables, as YAML\n" + json.dumps(config["sampling"]) + "\n")
    write_json(sampling / ".manifest", {"revision": f"sampling-{revision}", "roots": SAMPLING_ROOTS})
    return {"platform": platform, "tenants": tenants, "sampling": sampling}


def build(directory: Path, out: Path, *extra: str) -> Path:
    """``opa build -b .`` in ``directory`` (its .manifest kept), to ``out``."""
    run_opa("build", "-b", ".", "-o", str(out), *extra, cwd=directory)
    return out


@dataclass
class Keys:
    folder: Path
    rsa_private: Path = field(init=False)
    rsa_public: Path = field(init=False)
    ec_private: Path = field(init=False)
    ec_public: Path = field(init=False)
    hmac_secret: Path = field(init=False)
    other_rsa_private: Path = field(init=False)

    def __post_init__(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.rsa_private, self.rsa_public = self._pair("rsa", rsa.generate_private_key(65537, 2048))
        self.ec_private, self.ec_public = self._pair("ec", ec.generate_private_key(ec.SECP256R1()))
        self.other_rsa_private, _ = self._pair("other", rsa.generate_private_key(65537, 2048))
        self.hmac_secret = self.folder / "hmac.secret"
        self.hmac_secret.write_text("a-shared-secret-for-bundles-0123456789\n")

    def _pair(self, name: str, key) -> tuple[Path, Path]:
        private = self.folder / f"{name}.key.pem"
        public = self.folder / f"{name}.pub.pem"
        private.write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        public.write_bytes(key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        return private, public


class BundleServer:
    """A bundle server on loopback: serves ``/<name>`` with an ETag, answers 304 to a matching
    If-None-Match, can go down (503) and counts requests, 200s, 304s and body bytes."""

    def __init__(self) -> None:
        self.bundles: dict[str, bytes] = {}
        self.down = False
        self.requests = 0
        self.full = 0
        self.not_modified = 0
        self.bytes_served = 0
        self._runner: web.AppRunner | None = None
        self.port = 0

    def put(self, name: str, raw: bytes) -> None:
        self.bundles[name] = raw

    def etag(self, name: str) -> str:
        return '"' + hashlib.sha256(self.bundles[name]).hexdigest()[:20] + '"'

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        name = request.match_info["name"]
        if self.down:
            return web.Response(status=503, text="down for maintenance")
        if name not in self.bundles:
            return web.Response(status=404)
        etag = self.etag(name)
        if request.headers.get("If-None-Match") == etag:
            self.not_modified += 1
            return web.Response(status=304, headers={"ETag": etag})
        self.full += 1
        body = self.bundles[name]
        self.bytes_served += len(body)
        return web.Response(body=body, headers={"ETag": etag, "Content-Type": "application/gzip"})

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> str:
        """Serve on a free loopback port (HTTPS with ``ssl_context``); the base URL of the bundles."""
        app = web.Application()
        app.router.add_get("/bundles/{name}", self._serve)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=ssl_context)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"{'https' if ssl_context else 'http'}://127.0.0.1:{self.port}/bundles"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def tampered(raw: bytes, member: str, old: bytes, new: bytes) -> bytes:
    """The same archive with ``old`` replaced by ``new`` in one member (the signature left as it was)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as source, \
            tarfile.open(fileobj=out, mode="w:gz") as target:
        for info in source.getmembers():
            content = source.extractfile(info).read()  # type: ignore[union-attr]
            if info.name.lstrip("/") == member:
                assert old in content
                content = content.replace(old, new)
            info.size = len(content)
            target.addfile(info, io.BytesIO(content))
    return out.getvalue()
