"""Read and check the PEM files of a TLS setup; every error names the file and the problem.

Nothing here logs or shows the contents of a file: keys stay in memory only.
"""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sidecar.configkit import ConfigError

if TYPE_CHECKING:
    # imported where used: cryptography adds ~8 MiB to a sidecar that runs without TLS
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes

#: (realpath, device, inode, mtime_ns, size) of a file, or None when it cannot be stat'ed
Stamp = tuple[str, int, int, int, int] | None


def stamp(path: str) -> Stamp:
    """What changes when a file is replaced, rewritten or a Kubernetes ``..data`` link swapped."""
    try:
        st = os.stat(path)
        return (os.path.realpath(path), st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
    except OSError:
        return None


def read_file(key: str, path: str) -> bytes:
    """The bytes of ``path``; :class:`ConfigError` on ``key`` if missing, unreadable or empty."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise ConfigError(key, f"{path}: file not found") from None
    except IsADirectoryError:
        raise ConfigError(key, f"{path}: is a directory, not a file") from None
    except PermissionError:
        raise ConfigError(key, f"{path}: cannot read the file (permission denied)") from None
    except OSError as exc:
        reason = exc.strerror or errno.errorcode.get(exc.errno or 0, "error")
        raise ConfigError(key, f"{path}: cannot read the file ({reason})") from None
    if not data.strip():
        raise ConfigError(key, f"{path}: the file is empty")
    return data


def load_certificates(key: str, path: str, data: bytes) -> list[x509.Certificate]:
    """The certificates of a PEM file (leaf first for a chain)."""
    from cryptography import x509

    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise ConfigError(key, f"{path}: not a PEM certificate (no BEGIN CERTIFICATE block)")
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ConfigError(key, f"{path}: not a valid PEM certificate (the block cannot be parsed)") from None
    return certs


def load_private_key(key: str, path: str, data: bytes) -> PrivateKeyTypes:
    """The private key of a PEM file; encrypted keys are refused (no passphrase setting)."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    if b"PRIVATE KEY-----" not in data:
        raise ConfigError(key, f"{path}: not a PEM private key (no BEGIN PRIVATE KEY block)")
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ConfigError(key, f"{path}: the private key is encrypted; give an unencrypted key") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(key, f"{path}: not a valid PEM private key (it cannot be parsed)") from None


def _public_der(public_key: PublicKeyTypes) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def check_validity(key: str, path: str, cert: x509.Certificate, now: dt.datetime | None = None) -> None:
    """Refuse a certificate that has expired or is not valid yet."""
    now = now or dt.datetime.now(dt.UTC)
    if cert.not_valid_after_utc <= now:
        raise ConfigError(key, f"{path}: the certificate expired on {_when(cert.not_valid_after_utc)}")
    if cert.not_valid_before_utc > now:
        raise ConfigError(
            key,
            f"{path}: the certificate is not valid before {_when(cert.not_valid_before_utc)}",
        )


@dataclass(frozen=True)
class KeyPair:
    """A checked certificate chain and private key, as bytes read once."""

    cert_path: str
    key_path: str
    cert_pem: bytes
    key_pem: bytes
    leaf: x509.Certificate

    def __repr__(self) -> str:  # never show the key
        return f"KeyPair(cert_path={self.cert_path!r}, key_path={self.key_path!r})"


def load_key_pair(cert_key: str, cert_path: str, key_key: str, key_path: str) -> KeyPair:
    """Read a certificate chain and its key; check PEM, validity dates and that they match."""
    cert_pem = read_file(cert_key, cert_path)
    key_pem = read_file(key_key, key_path)
    leaf = load_certificates(cert_key, cert_path, cert_pem)[0]
    private_key = load_private_key(key_key, key_path, key_pem)
    if _public_der(private_key.public_key()) != _public_der(leaf.public_key()):
        raise ConfigError(key_key, f"{key_path}: the private key does not match the certificate {cert_path}")
    check_validity(cert_key, cert_path, leaf)
    return KeyPair(cert_path, key_path, cert_pem, key_pem, leaf)


def load_pair_into(ctx: ssl.SSLContext, pair: KeyPair, cert_key: str, key_key: str) -> None:
    """Load a checked pair into ``ctx``; the files OpenSSL reads must still be the checked ones
    (a rotation may race the load: then the caller keeps its old context and tries later)."""
    try:
        ctx.load_cert_chain(pair.cert_path, pair.key_path)
    except ssl.SSLError as exc:
        raise ConfigError(
            cert_key,
            f"{pair.cert_path}: OpenSSL refused it with the key {pair.key_path} ({exc.reason})",
        ) from None
    except OSError as exc:
        raise ConfigError(cert_key, f"{pair.cert_path}: cannot load the file ({exc.strerror})") from None
    for key, path, checked in (
        (cert_key, pair.cert_path, pair.cert_pem),
        (key_key, pair.key_path, pair.key_pem),
    ):
        if read_file(key, path) != checked:
            raise ConfigError(key, f"{path}: the file changed while it was loaded; trying again later")


def load_ca_bundle(key: str, path: str) -> bytes:
    """A CA bundle's PEM bytes, checked to hold at least one certificate still valid."""
    data = read_file(key, path)
    certs = load_certificates(key, path, data)
    now = dt.datetime.now(dt.UTC)
    if all(c.not_valid_after_utc <= now for c in certs):
        last = max(c.not_valid_after_utc for c in certs)
        raise ConfigError(key, f"{path}: every CA certificate has expired (the last on {last:%Y-%m-%d})")
    return data



def load_ca_into(ctx: ssl.SSLContext, key: str, path: str) -> bytes:
    """Load the CA bundle at ``path`` into ``ctx`` as its trust anchors; return its PEM bytes.

    ConfigError names ``key`` and the file when it is missing, expired or refused by OpenSSL."""
    pem = load_ca_bundle(key, path)
    try:
        ctx.load_verify_locations(cadata=pem.decode("ascii", "replace"))
    except ssl.SSLError as exc:
        raise ConfigError(key, f"{path}: OpenSSL refused the CA bundle ({exc.reason})") from None
    return pem

def digest(parts: Mapping[str, bytes]) -> str:
    """One SHA-256 over named contents, to tell whether a reload changed anything."""
    h = hashlib.sha256()
    for name in sorted(parts):
        h.update(name.encode() + b"\0" + hashlib.sha256(parts[name]).digest())
    return h.hexdigest()


def spiffe_ids_of(cert: x509.Certificate) -> list[str]:
    """The ``spiffe://`` URI SANs of a certificate."""
    from cryptography import x509

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [u for u in san.get_values_for_type(x509.UniformResourceIdentifier) if u.startswith("spiffe://")]


def describe(cert: x509.Certificate) -> str:
    """A short, non-secret description of a certificate for logs."""
    ids = spiffe_ids_of(cert)
    who = ids[0] if ids else cert.subject.rfc4514_string()
    return f"{who} (serial {cert.serial_number:x}, valid until {_when(cert.not_valid_after_utc)})"


def _when(moment: dt.datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M:%SZ}"
