"""Peer identity from certificates, the SPIFFE allowlist, expiry metric and warning."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from sidecar.identity import Peer
from sidecar.tls.certs import make_client_cert
from sidecar.tls.client import ClientTLS
from sidecar.tls.metrics import TLSMetrics
from sidecar.tls.server import ServerTLS, format_address, peer_from_cert, peer_from_ssl, spiffe_allowed
from tests.tls.pki import make_pki, write_pair

ALLOW = ["spiffe://cluster.local/ns/payments/sa/api", "spiffe://cluster.local/ns/shop/*"]


@pytest.mark.parametrize(
    ("spiffe_id", "allowed"),
    [
        ("spiffe://cluster.local/ns/payments/sa/api", True),
        ("spiffe://cluster.local/ns/payments/sa/api2", False),  # exact means exact
        ("spiffe://cluster.local/ns/shop/sa/web", True),
        ("spiffe://cluster.local/ns/shop/", False),  # the prefix alone names nothing
        ("spiffe://cluster.local/ns/shopping/sa/web", False),  # a prefix ends at a slash
        ("spiffe://other.domain/ns/shop/sa/web", False),
        ("", False),
    ],
)
def test_spiffe_allowlist(spiffe_id: str, allowed: bool) -> None:
    assert spiffe_allowed(Peer("1.2.3.4:5", True, spiffe_id), ALLOW) is allowed


def test_an_empty_allowlist_allows_everyone() -> None:
    assert spiffe_allowed(Peer("a", True, ""), [])


def test_peer_from_certificate_dicts() -> None:
    cert = {"subjectAltName": (("DNS", "app"), ("URI", "spiffe://td/ns/a/sa/b"))}
    assert peer_from_cert(cert, "127.0.0.1:4000") == Peer("127.0.0.1:4000", True, "spiffe://td/ns/a/sa/b")
    # two SPIFFE IDs make no valid SVID: no identity
    two = {"subjectAltName": (("URI", "spiffe://td/a"), ("URI", "spiffe://td/b"))}
    assert peer_from_cert(two, "x").spiffe_id == ""
    assert peer_from_cert({"subjectAltName": (("URI", "https://not-spiffe"),)}, "x").spiffe_id == ""
    assert peer_from_cert(None, "x") == Peer("x", True, "")
    assert peer_from_ssl(None, "127.0.0.1:1") == Peer("127.0.0.1:1", False, "")
    assert Peer("x", True, "spiffe://td/a").as_input() == {"address": "x", "tls": True, "spiffe_id": "spiffe://td/a"}


def test_format_address() -> None:
    assert format_address(("127.0.0.1", 4317)) == "127.0.0.1:4317"
    assert format_address(("::1", 4317, 0, 0)) == "[::1]:4317"
    assert format_address(None) == ""


def test_expiry_gauge_and_a_warning_when_close(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pki = make_pki(tmp_path)
    now = dt.datetime.now(dt.UTC)
    soon = make_client_cert(
        pki.ca, pki.client_spiffe_id, not_before=now - dt.timedelta(days=80), not_after=now + dt.timedelta(days=3)
    )
    cert, key = write_pair(soon, pki.dir, "soon")
    clock = [0.0]
    with caplog.at_level(logging.WARNING, logger="sidecar.tls"):
        client = ClientTLS(ca_file=pki.ca_cert, cert_file=cert, key_file=key, clock=lambda: clock[0])
    assert len(caplog.records) == 1
    message = caplog.records[0].getMessage()
    assert message.startswith(f"client TLS certificate {pki.client_spiffe_id} (serial ")
    assert "expires in 72.0 hours; rotate it" in message or "expires in 71.9 hours; rotate it" in message
    metrics = TLSMetrics()
    metrics.track(client, "exporter")
    server = ServerTLS(cert_file=pki.server_cert, key_file=pki.server_key)
    metrics.track(server, "receivers")
    exposition = generate_latest(metrics.registry).decode()
    assert 'otlp_sidecar_tls_certificate_expiry_seconds{name="exporter",role="client"}' in exposition
    left = metrics.registry.get_sample_value(
        "otlp_sidecar_tls_certificate_expiry_seconds", {"role": "client", "name": "exporter"}
    )
    assert 2.9 * 86400 < left < 3 * 86400
    server_left = metrics.registry.get_sample_value(
        "otlp_sidecar_tls_certificate_expiry_seconds", {"role": "server", "name": "receivers"}
    )
    assert 89 * 86400 < server_left <= 90 * 86400
    # the warning repeats hourly, not on every check
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sidecar.tls"):
        clock[0] = 60.0
        client.context()
        assert caplog.records == []
        clock[0] = 3700.0
        client.context()
        assert len(caplog.records) == 1


def test_no_warning_for_a_certificate_far_from_expiry(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pki = make_pki(tmp_path)
    with caplog.at_level(logging.WARNING, logger="sidecar.tls"):
        ClientTLS(ca_file=pki.ca_cert, cert_file=pki.client_cert, key_file=pki.client_key)
    assert caplog.records == []
    assert ClientTLS(ca_file=pki.ca_cert).seconds_until_expiry() is None  # no client certificate


def test_files_are_checked_at_most_every_interval(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    clock = [0.0]
    server = ServerTLS(cert_file=pki.server_cert, key_file=pki.server_key, check_interval=5, clock=lambda: clock[0])
    first = server.current_context()
    cert, key = pki.issue_server("next")
    Path(pki.server_cert).write_bytes(Path(cert).read_bytes())
    Path(pki.server_key).write_bytes(Path(key).read_bytes())
    clock[0] = 4.9
    assert server.current_context() is first and server.generation == 0
    clock[0] = 5.0
    assert server.current_context() is not first and server.generation == 1
    assert server.context() is server.context()  # the listener's context stays the same object


def test_client_failure_ignores_errors_that_are_not_tls() -> None:
    metrics = TLSMetrics()
    try:
        raise ConnectionRefusedError(111, "refused")
    except ConnectionRefusedError as exc:
        assert metrics.client_failure(exc) is None
    assert generate_latest(metrics.registry).decode().count("handshake_failures_total{") == 0
