"""Missing, unreadable, non-PEM, mismatched or expired files stop the start with a
ConfigError naming the setting, the file and the problem (never a traceback)."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from sidecar.configkit import ConfigError
from sidecar.tls.certs import make_ca, make_server_cert, write_pem
from sidecar.tls.client import ClientTLS
from sidecar.tls.server import ServerTLS
from tests.tls.pki import expired_window, write_pair

EXPORTER_KEYS = {
    "ca_file": "exporter.certificate",
    "cert_file": "exporter.client_certificate",
    "key_file": "exporter.client_key",
}


def client_error(**kwargs: object) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        ClientTLS(keys=EXPORTER_KEYS, **kwargs)  # type: ignore[arg-type]
    return info.value


def test_missing_ca_file(pki, tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "ca.crt"
    err = client_error(ca_file=str(missing))
    assert str(err) == f"exporter.certificate: {missing}: file not found"


def test_missing_key_file(pki, tmp_path: Path) -> None:
    err = client_error(ca_file=pki.ca_cert, cert_file=pki.client_cert, key_file=str(tmp_path / "client.pem"))
    assert str(err) == f"exporter.client_key: {tmp_path / 'client.pem'}: file not found"


def test_a_directory_is_not_a_file(pki, tmp_path: Path) -> None:
    err = client_error(ca_file=str(tmp_path))
    assert str(err) == f"exporter.certificate: {tmp_path}: is a directory, not a file"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file(pki) -> None:
    os.chmod(pki.client_key, 0)
    err = client_error(ca_file=pki.ca_cert, cert_file=pki.client_cert, key_file=pki.client_key)
    assert str(err) == f"exporter.client_key: {pki.client_key}: cannot read the file (permission denied)"


def test_empty_and_non_pem_files(pki, tmp_path: Path) -> None:
    empty = tmp_path / "empty.crt"
    empty.write_bytes(b"\n")
    assert str(client_error(ca_file=str(empty))) == f"exporter.certificate: {empty}: the file is empty"
    der = tmp_path / "ca.der"
    der.write_bytes(pki.ca.certificate.public_bytes(serialization.Encoding.DER))
    assert str(client_error(ca_file=str(der))) == (
        f"exporter.certificate: {der}: not a PEM certificate (no BEGIN CERTIFICATE block)"
    )
    broken = tmp_path / "broken.crt"
    broken.write_text("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n")
    assert "not a valid PEM certificate" in str(client_error(ca_file=str(broken)))
    # a certificate given where the key belongs
    err = client_error(ca_file=pki.ca_cert, cert_file=pki.client_cert, key_file=pki.client_cert)
    assert str(err) == f"exporter.client_key: {pki.client_cert}: not a PEM private key (no BEGIN PRIVATE KEY block)"


def test_key_that_does_not_match_the_certificate(pki) -> None:
    err = client_error(ca_file=pki.ca_cert, cert_file=pki.client_cert, key_file=pki.server_key)
    assert err.key == "exporter.client_key"
    assert err.message == f"{pki.server_key}: the private key does not match the certificate {pki.client_cert}"


def test_encrypted_key_is_refused(pki, tmp_path: Path) -> None:
    key = serialization.load_pem_private_key(Path(pki.client_key).read_bytes(), None)
    encrypted = tmp_path / "enc.key"
    write_pem(
        encrypted,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        ),
        private=True,
    )
    err = client_error(ca_file=pki.ca_cert, cert_file=pki.client_cert, key_file=str(encrypted))
    assert err.message == f"{encrypted}: the private key is encrypted; give an unencrypted key"


def test_expired_and_not_yet_valid_certificates(pki) -> None:
    cert, key = write_pair(make_server_cert(pki.ca, **expired_window()), pki.dir, "expired")
    with pytest.raises(ConfigError) as info:
        ServerTLS(cert_file=cert, key_file=key, keys={"cert_file": "receivers_tls.cert_file"})
    assert info.value.key == "receivers_tls.cert_file"
    assert info.value.message.startswith(f"{cert}: the certificate expired on ")
    future = dt.datetime.now(dt.UTC) + dt.timedelta(days=2)
    cert, key = write_pair(make_server_cert(pki.ca, not_before=future), pki.dir, "future")
    with pytest.raises(ConfigError, match="the certificate is not valid before"):
        ServerTLS(cert_file=cert, key_file=key)


def test_expired_ca_bundle(tmp_path: Path) -> None:
    ca = make_ca(**expired_window())
    path = tmp_path / "ca.crt"
    write_pem(path, ca.cert_pem())
    assert "every CA certificate has expired" in str(client_error(ca_file=str(path)))


def test_settings_that_go_together(pki) -> None:
    assert str(client_error(cert_file=pki.client_cert)) == (
        "exporter.client_key: the client certificate and key go together: set both, or neither"
    )
    with pytest.raises(ConfigError, match=r"min_version: '1\.1' is not a TLS version; choose '1\.2' or '1\.3'"):
        ClientTLS(min_version="1.1")
    with pytest.raises(ConfigError, match=r"^require_client_cert: needs client_ca_file"):
        ServerTLS(cert_file=pki.server_cert, key_file=pki.server_key, require_client_cert=True)
    with pytest.raises(ConfigError, match=r"^spiffe_allow: needs client_ca_file"):
        ServerTLS(cert_file=pki.server_cert, key_file=pki.server_key, spiffe_allow=["spiffe://a/b"])
    with pytest.raises(ConfigError, match="a wildcard is allowed only as a trailing '/\\*'"):
        ServerTLS(
            cert_file=pki.server_cert,
            key_file=pki.server_key,
            client_ca_file=pki.ca_cert,
            spiffe_allow=["spiffe://td/ns/*/sa/x"],
        )
    with pytest.raises(ConfigError, match="'app' is not a SPIFFE ID"):
        ServerTLS(cert_file=pki.server_cert, key_file=pki.server_key, client_ca_file=pki.ca_cert, spiffe_allow=["app"])


def test_errors_and_reprs_never_show_key_material(pki, tmp_path: Path) -> None:
    secret_line = Path(pki.client_key).read_text().splitlines()[1]
    err = client_error(ca_file=pki.ca_cert, cert_file=pki.client_cert, key_file=pki.server_key)
    tls = ClientTLS(ca_file=pki.ca_cert, cert_file=pki.client_cert, key_file=pki.client_key)
    for text in (str(err), repr(err), repr(tls), repr(tls.__dict__)):
        assert secret_line not in text
