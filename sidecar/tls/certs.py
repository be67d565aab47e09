"""A development PKI made with ``cryptography``: a CA, server and client certificates.

For local runs, the demo and the tests; never for production (keys are made on the
spot and written unencrypted, readable by the owner only). Client certificates are
X.509 SVIDs: exactly one URI SAN, the SPIFFE ID.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: the file names ``write_dev_pki`` uses in its output directory
CA_CERT, CA_KEY = "ca.crt", "ca.key"
SERVER_CERT, SERVER_KEY = "server.crt", "server.key"

DEFAULT_CLIENT_SPIFFE_ID = "spiffe://cluster.local/ns/default/sa/app"
DEFAULT_DNS_NAMES = ("localhost",)
DEFAULT_IPS = ("127.0.0.1", "::1")


@dataclass(frozen=True)
class Issued:
    """A certificate with its private key."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def __repr__(self) -> str:  # never show the key
        return f"Issued(subject={self.certificate.subject.rfc4514_string()!r})"


def _validity(
    not_before: dt.datetime | None, not_after: dt.datetime | None, days: float
) -> tuple[dt.datetime, dt.datetime]:
    start = not_before or (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5))
    end = not_after or (start + dt.timedelta(days=days))
    if end <= start:
        raise ValueError("the certificate must end after it starts")
    return start, end


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "otlp-sidecar development"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def make_ca(
    common_name: str = "otlp-sidecar development CA",
    *,
    days: float = 365,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> Issued:
    """A self-signed CA certificate (EC P-256) that may sign leaf certificates only."""
    key = ec.generate_private_key(ec.SECP256R1())
    start, end = _validity(not_before, not_after, days)
    name = _name(common_name)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(cert, key)


def _leaf(
    ca: Issued,
    common_name: str,
    sans: list[x509.GeneralName],
    usage: x509.ObjectIdentifier,
    days: float,
    not_before: dt.datetime | None,
    not_after: dt.datetime | None,
) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    start, end = _validity(not_before, not_after, days)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=False,
                key_cert_sign=False,
                crl_sign=False,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return Issued(builder.sign(ca.key, hashes.SHA256()), key)


def _check_spiffe_id(spiffe_id: str) -> None:
    if not spiffe_id.startswith("spiffe://") or len(spiffe_id) <= len("spiffe://"):
        raise ValueError(f"a SPIFFE ID starts with spiffe:// and names a trust domain, got {spiffe_id!r}")


def make_server_cert(
    ca: Issued,
    dns_names: Sequence[str] = DEFAULT_DNS_NAMES,
    ips: Sequence[str] = DEFAULT_IPS,
    *,
    spiffe_id: str = "",
    common_name: str = "",
    days: float = 90,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> Issued:
    """A TLS server certificate for ``dns_names`` and ``ips`` (and optionally a SPIFFE ID)."""
    sans: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    if spiffe_id:
        _check_spiffe_id(spiffe_id)
        sans.append(x509.UniformResourceIdentifier(spiffe_id))
    if not sans:
        raise ValueError("a server certificate needs at least one DNS name or IP address")
    cn = common_name or (list(dns_names) + list(ips) + [spiffe_id])[0]
    return _leaf(ca, cn, sans, ExtendedKeyUsageOID.SERVER_AUTH, days, not_before, not_after)


def make_client_cert(
    ca: Issued,
    spiffe_id: str = DEFAULT_CLIENT_SPIFFE_ID,
    *,
    common_name: str = "",
    dns_names: Sequence[str] = (),
    days: float = 90,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> Issued:
    """A TLS client certificate whose one URI SAN is ``spiffe_id`` (empty: no URI SAN)."""
    sans: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    if spiffe_id:
        _check_spiffe_id(spiffe_id)
        sans.append(x509.UniformResourceIdentifier(spiffe_id))
    cn = common_name or spiffe_id or "otlp-sidecar client"
    return _leaf(ca, cn, sans, ExtendedKeyUsageOID.CLIENT_AUTH, days, not_before, not_after)


def write_pem(path: str | os.PathLike[str], data: bytes, *, private: bool = False) -> Path:
    """Write ``data`` atomically (temp file + rename); private files get mode 0600."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        os.fchmod(fd, 0o600 if private else 0o644)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def write_issued(issued: Issued, cert_path: str | os.PathLike[str], key_path: str | os.PathLike[str]) -> None:
    """Write a certificate (0644) and its key (0600)."""
    write_pem(cert_path, issued.cert_pem())
    write_pem(key_path, issued.key_pem(), private=True)


def load_issued(cert_path: str | os.PathLike[str], key_path: str | os.PathLike[str]) -> Issued:
    """Read back a certificate and EC key written by :func:`write_issued` (to reuse a CA)."""
    cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    key = serialization.load_pem_private_key(Path(key_path).read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{key_path}: the development PKI uses EC keys only")
    return Issued(cert, key)


@dataclass(frozen=True)
class DevPKIFiles:
    """Paths of the files :func:`write_dev_pki` wrote."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    ca_reused: bool = False


def has_dev_ca(out_dir: str | os.PathLike[str]) -> bool:
    """Whether ``out_dir`` holds a CA that :func:`write_dev_pki` would reuse."""
    out = Path(out_dir)
    return (out / CA_CERT).exists() and (out / CA_KEY).exists()


def _write_client(ca: Issued, out: Path, client_name: str, spiffe_id: str, days: float) -> tuple[Path, Path]:
    client_cert, client_key = out / f"{client_name}.crt", out / f"{client_name}.key"
    write_issued(make_client_cert(ca, spiffe_id, days=days), client_cert, client_key)
    return client_cert, client_key


def write_dev_pki(
    out_dir: str | os.PathLike[str],
    *,
    spiffe_id: str = DEFAULT_CLIENT_SPIFFE_ID,
    dns_names: Sequence[str] = DEFAULT_DNS_NAMES,
    ips: Sequence[str] = DEFAULT_IPS,
    server_spiffe_id: str = "",
    client_name: str = "client",
    days: float = 90,
    reuse_ca: bool = True,
) -> DevPKIFiles:
    """Write a CA (reused if ``ca.crt``/``ca.key`` exist and ``reuse_ca``), a server, a client."""
    out = Path(out_dir)
    ca_cert, ca_key = out / CA_CERT, out / CA_KEY
    reused = reuse_ca and has_dev_ca(out)
    if reused:
        ca = load_issued(ca_cert, ca_key)
    else:
        ca = make_ca(days=max(days, 365))
        write_issued(ca, ca_cert, ca_key)
    server = make_server_cert(ca, dns_names, ips, spiffe_id=server_spiffe_id, days=days)
    write_issued(server, out / SERVER_CERT, out / SERVER_KEY)
    client_cert, client_key = _write_client(ca, out, client_name, spiffe_id, days)
    return DevPKIFiles(ca_cert, ca_key, out / SERVER_CERT, out / SERVER_KEY, client_cert, client_key, reused)


def add_dev_client(
    out_dir: str | os.PathLike[str],
    client_name: str,
    *,
    spiffe_id: str = DEFAULT_CLIENT_SPIFFE_ID,
    days: float = 90,
) -> tuple[Path, Path]:
    """Issue ``<client_name>.crt``/``.key`` from the CA in ``out_dir``; touch no other file."""
    out = Path(out_dir)
    ca = load_issued(out / CA_CERT, out / CA_KEY)
    return _write_client(ca, out, client_name, spiffe_id, days)
