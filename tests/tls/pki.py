"""Reusable development PKI for tests: plain functions, importable from any test folder.

    from tests.tls.pki import make_pki
    pki = make_pki(tmp_path)          # files under tmp_path / "pki"
    pki.server_cert, pki.server_key, pki.ca_cert, pki.client_cert, pki.client_key

Everything is made with ``cryptography`` (EC P-256, fast) by ``sidecar.tls.certs``.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sidecar.tls.certs import (
    DEFAULT_CLIENT_SPIFFE_ID,
    Issued,
    make_ca,
    make_client_cert,
    make_server_cert,
    write_issued,
)
from sidecar.tls.server import ServerTLS

CLIENT_SPIFFE_ID = DEFAULT_CLIENT_SPIFFE_ID
OTHER_SPIFFE_ID = "spiffe://cluster.local/ns/intruder/sa/other"


@dataclass(frozen=True)
class PKI:
    """File paths (str) of a CA, a server certificate for localhost/127.0.0.1/::1 and a client."""

    dir: Path
    ca: Issued
    ca_cert: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str
    client_spiffe_id: str

    def mtls_server(self, **kwargs: Any) -> ServerTLS:
        """Server TLS with this PKI's server pair that requires a client certificate from its CA."""
        return ServerTLS(
            cert_file=self.server_cert,
            key_file=self.server_key,
            client_ca_file=self.ca_cert,
            require_client_cert=True,
            **kwargs,
        )

    def issue_client(self, name: str, spiffe_id: str = CLIENT_SPIFFE_ID, **kwargs: object) -> tuple[str, str]:
        """Another client certificate from this CA: (cert path, key path)."""
        issued = make_client_cert(self.ca, spiffe_id, **kwargs)  # type: ignore[arg-type]
        return write_pair(issued, self.dir, name)

    def issue_server(
        self,
        name: str,
        dns_names: tuple[str, ...] = ("localhost",),
        ips: tuple[str, ...] = ("127.0.0.1", "::1"),
        **kwargs: object,
    ) -> tuple[str, str]:
        """Another server certificate from this CA: (cert path, key path)."""
        issued = make_server_cert(self.ca, dns_names, ips, **kwargs)  # type: ignore[arg-type]
        return write_pair(issued, self.dir, name)


def write_pair(issued: Issued, directory: Path, name: str) -> tuple[str, str]:
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    write_issued(issued, cert, key)
    return str(cert), str(key)


def make_pki(tmp_path: Path, name: str = "pki", spiffe_id: str = CLIENT_SPIFFE_ID) -> PKI:
    """A fresh CA with a server and a client certificate under ``tmp_path / name``."""
    directory = Path(tmp_path) / name
    directory.mkdir(parents=True, exist_ok=True)
    ca = make_ca(f"{name} test CA")
    ca_cert = directory / "ca.crt"
    write_issued(ca, ca_cert, directory / "ca.key")
    server_cert, server_key = write_pair(make_server_cert(ca), directory, "server")
    client_cert, client_key = write_pair(make_client_cert(ca, spiffe_id), directory, "client")
    return PKI(directory, ca, str(ca_cert), server_cert, server_key, client_cert, client_key, spiffe_id)


def expired_window() -> dict[str, dt.datetime]:
    """``not_before``/``not_after`` keyword arguments for a certificate that expired yesterday."""
    now = dt.datetime.now(dt.UTC)
    return {"not_before": now - dt.timedelta(days=30), "not_after": now - dt.timedelta(days=1)}


def k8s_secret_dir(base: Path, files: dict[str, str], version: str) -> Path:
    """Lay out files the way a Kubernetes secret volume does: ``..<version>/`` holds the
    contents, ``..data`` links to it, and each name links to ``..data/<name>``. Calling it
    again with another ``version`` swaps ``..data`` atomically, as the kubelet does."""
    base.mkdir(parents=True, exist_ok=True)
    version_dir = base / f"..{version}"
    version_dir.mkdir()
    for name, source in files.items():
        (version_dir / name).write_bytes(Path(source).read_bytes())
        if name.endswith(".key"):
            os.chmod(version_dir / name, 0o600)
    tmp_link = base / "..data_tmp"
    tmp_link.unlink(missing_ok=True)
    tmp_link.symlink_to(version_dir.name)
    os.replace(tmp_link, base / "..data")
    for name in files:
        link = base / name
        if not link.is_symlink():
            link.symlink_to(f"..data/{name}")
    return base
