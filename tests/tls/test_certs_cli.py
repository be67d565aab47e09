"""``otlp-sidecar certs``: a development PKI whose files work for real TLS and mTLS."""

from __future__ import annotations

import ipaddress
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

from sidecar.cli import main
from sidecar.tls.client import ClientTLS
from sidecar.tls.files import spiffe_ids_of
from sidecar.tls.server import ServerTLS

ROOT = Path(__file__).resolve().parents[2]


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def sans(cert: x509.Certificate) -> x509.SubjectAlternativeName:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


def test_certs_writes_a_ca_server_and_client(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "pki"
    code = main(
        [
            "certs",
            "--out",
            str(out),
            "--spiffe-id",
            "spiffe://demo.local/ns/shop/sa/web",
            "--dns",
            "localhost",
            "--dns",
            "otlp-sidecar.demo.svc",
            "--ip",
            "127.0.0.1",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "new CA:" in printed and "spiffe://demo.local/ns/shop/sa/web" in printed
    assert "never use them in production" in printed
    ca, server, client = load(out / "ca.crt"), load(out / "server.crt"), load(out / "client.crt")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    server.verify_directly_issued_by(ca)
    client.verify_directly_issued_by(ca)
    assert sans(server).get_values_for_type(x509.DNSName) == ["localhost", "otlp-sidecar.demo.svc"]
    assert sans(server).get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert spiffe_ids_of(client) == ["spiffe://demo.local/ns/shop/sa/web"]
    eku = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH in eku
    for key in ("ca.key", "server.key", "client.key"):
        assert stat.S_IMODE((out / key).stat().st_mode) == 0o600
    assert stat.S_IMODE((out / "server.crt").stat().st_mode) == 0o644
    # the files are what ServerTLS and ClientTLS accept (real handshakes: test_handshake_*)
    ServerTLS(
        cert_file=str(out / "server.crt"),
        key_file=str(out / "server.key"),
        client_ca_file=str(out / "ca.crt"),
        require_client_cert=True,
    )
    ClientTLS(ca_file=str(out / "ca.crt"), cert_file=str(out / "client.crt"), key_file=str(out / "client.key"))


def test_a_second_run_reuses_the_ca_and_adds_a_client(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "pki"
    assert main(["certs", "--out", str(out)]) == 0
    ca_before = (out / "ca.crt").read_bytes()
    assert (
        main(
            [
                "certs",
                "--out",
                str(out),
                "--client-name",
                "intruder",
                "--spiffe-id",
                "spiffe://cluster.local/ns/other/sa/x",
            ]
        )
        == 0
    )
    assert "reused CA:" in capsys.readouterr().out
    assert (out / "ca.crt").read_bytes() == ca_before
    load(out / "intruder.crt").verify_directly_issued_by(load(out / "ca.crt"))
    assert spiffe_ids_of(load(out / "client.crt")) == ["spiffe://cluster.local/ns/default/sa/app"]
    assert main(["certs", "--out", str(out), "--new-ca"]) == 0
    assert (out / "ca.crt").read_bytes() != ca_before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--spiffe-id", "app"], "--spiffe-id 'app' must look like spiffe://trust-domain/path"),
        (["--ip", "localhost"], "--ip 'localhost' is not an IP address"),
        (["--days", "0"], "--days must be positive"),
        (["--client-name", "ca"], "--client-name 'ca' must be a plain file name other than ca and server"),
    ],
)
def test_bad_arguments_are_clear_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert main(["certs", "--out", str(tmp_path / "pki"), *args]) == 2
    assert capsys.readouterr().err.strip() == f"otlp-sidecar certs: {message}"
    assert not (tmp_path / "pki").exists()


def test_out_that_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    assert main(["certs", "--out", str(target)]) == 2
    assert "exists and is not a directory" in capsys.readouterr().err


def test_the_command_runs_as_a_program(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sidecar", "certs", "--out", str(tmp_path / "p")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "p" / "client.key").exists()


def certs(out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``otlp-sidecar certs --out OUT ARGS`` as a user does."""
    return subprocess.run(
        [sys.executable, "-m", "sidecar", "certs", "--out", str(out), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def contents(out: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(out.iterdir())}


def test_client_name_with_an_existing_ca_writes_only_that_client(tmp_path: Path) -> None:
    out = tmp_path / "pki"
    assert certs(out).returncode == 0
    before = contents(out)
    result = certs(out, "--client-name", "intruder", "--spiffe-id", "spiffe://cluster.local/ns/other/sa/x")
    assert result.returncode == 0, result.stderr
    after = contents(out)
    assert set(after) == set(before) | {"intruder.crt", "intruder.key"}
    for name, data in before.items():  # ca.*, server.*, client.*: byte for byte
        assert after[name] == data, f"{name} was rewritten"
    ca, intruder = load(out / "ca.crt"), load(out / "intruder.crt")
    intruder.verify_directly_issued_by(ca)
    assert spiffe_ids_of(intruder) == ["spiffe://cluster.local/ns/other/sa/x"]
    assert stat.S_IMODE((out / "intruder.key").stat().st_mode) == 0o600
    ClientTLS(ca_file=str(out / "ca.crt"), cert_file=str(out / "intruder.crt"), key_file=str(out / "intruder.key"))
    assert result.stdout.splitlines()[:2] == [
        f"reused CA:  {out / 'ca.crt'}  (key {out / 'ca.key'})",
        f"client:   {out / 'intruder.crt'}  (key {out / 'intruder.key'})  spiffe://cluster.local/ns/other/sa/x",
    ]


def test_client_name_without_a_ca_writes_the_whole_set(tmp_path: Path) -> None:
    out = tmp_path / "pki"
    result = certs(out, "--client-name", "web")
    assert result.returncode == 0, result.stderr
    assert sorted(contents(out)) == ["ca.crt", "ca.key", "server.crt", "server.key", "web.crt", "web.key"]
    ca = load(out / "ca.crt")
    load(out / "server.crt").verify_directly_issued_by(ca)
    load(out / "web.crt").verify_directly_issued_by(ca)
    assert "new CA:" in result.stdout


def test_client_name_with_an_existing_ca_refuses_server_options(tmp_path: Path) -> None:
    out = tmp_path / "pki"
    assert certs(out).returncode == 0
    before = contents(out)
    result = certs(out, "--client-name", "web", "--dns", "web.local")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"otlp-sidecar certs: --client-name adds a client to the CA in {out} and leaves server.crt as it is; "
        "--dns, --ip and --server-spiffe-id need a run without --client-name"
    )
    assert contents(out) == before


def test_a_run_without_client_name_reissues_the_server_and_client(tmp_path: Path) -> None:
    out = tmp_path / "pki"
    assert certs(out).returncode == 0
    before = contents(out)
    assert certs(out, "--dns", "otlp-sidecar.demo.svc").returncode == 0
    after = contents(out)
    assert (after["ca.crt"], after["ca.key"]) == (before["ca.crt"], before["ca.key"])
    assert after["server.crt"] != before["server.crt"] and after["client.crt"] != before["client.crt"]
    server = load(out / "server.crt")
    server.verify_directly_issued_by(load(out / "ca.crt"))
    assert sans(server).get_values_for_type(x509.DNSName) == ["otlp-sidecar.demo.svc"]


def test_new_ca_with_client_name_writes_the_whole_set(tmp_path: Path) -> None:
    out = tmp_path / "pki"
    assert certs(out).returncode == 0
    before = contents(out)
    assert certs(out, "--new-ca", "--client-name", "web").returncode == 0
    after = contents(out)
    assert after["ca.crt"] != before["ca.crt"] and after["server.crt"] != before["server.crt"]
    ca = load(out / "ca.crt")
    load(out / "server.crt").verify_directly_issued_by(ca)
    load(out / "web.crt").verify_directly_issued_by(ca)
