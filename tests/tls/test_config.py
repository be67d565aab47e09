"""The [receivers_tls] and [exporter_tls] sections and their builders."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.configkit import ConfigError, load_section
from sidecar.export.config import ExporterConfig
from sidecar.tls.client import ClientTLS
from sidecar.tls.config import InboundTLSConfig, UpstreamTLSConfig, check_listen_address, client_tls
from sidecar.tls.server import ServerTLS
from tests.tls.pki import make_pki


def inbound(data: dict, env: dict | None = None) -> InboundTLSConfig:
    return load_section(InboundTLSConfig, "receivers_tls", data, env or {})


def test_plaintext_is_for_loopback_only() -> None:
    plain = inbound({})
    assert not plain.enabled and plain.server_tls() is None
    check_listen_address("receivers.grpc_endpoint", "127.0.0.1:4317", plain)
    check_listen_address("receivers.grpc_endpoint", "[::1]:4317", plain)
    check_listen_address("receivers.grpc_endpoint", "localhost:4317", plain)
    with pytest.raises(ConfigError) as info:
        check_listen_address("receivers.http_endpoint", "0.0.0.0:4318", plain)
    assert str(info.value) == (
        "receivers.http_endpoint: 0.0.0.0:4318 is not a loopback address; a listener there needs TLS "
        "(receivers_tls.cert_file and key_file), or receivers_tls.allow_plaintext_remote = true"
    )
    check_listen_address("receivers.http_endpoint", "0.0.0.0:4318", inbound({"allow_plaintext_remote": True}))


def test_mtls_section_builds_a_server_tls(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    section = inbound(
        {"cert_file": pki.server_cert, "key_file": pki.server_key, "client_ca_file": pki.ca_cert},
        {"SIDECAR_RECEIVERS_TLS_SPIFFE_ALLOW": "spiffe://cluster.local/ns/a/*,spiffe://cluster.local/ns/b/sa/c"},
    )
    check_listen_address("receivers.grpc_endpoint", "0.0.0.0:4317", section)
    tls = section.server_tls(alpn=["h2"])
    assert isinstance(tls, ServerTLS)
    assert tls.spiffe_allow == ("spiffe://cluster.local/ns/a/*", "spiffe://cluster.local/ns/b/sa/c")
    assert tls.require_client_cert  # an allowlist needs a certificate


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"cert_file": "/x.crt"}, "receivers_tls.key_file: cert_file and key_file go together"),
        ({"client_ca_file": "/ca.crt"}, "receivers_tls.cert_file: mTLS settings need TLS"),
        (
            {"cert_file": "/a", "key_file": "/b", "require_client_cert": True},
            "receivers_tls.client_ca_file: is required by require_client_cert and spiffe_allow",
        ),
        ({"spiffe_allow": ["spiffe://td/*/x"]}, "receivers_tls.spiffe_allow: 'spiffe://td/*/x': a wildcard"),
        ({"min_version": "1.0"}, "receivers_tls.min_version: '1.0' is not allowed; choose one of '1.2', '1.3'"),
    ],
)
def test_invalid_inbound_sections(data: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        inbound(data)
    assert str(info.value).startswith(message)


def test_missing_file_names_the_section_key(tmp_path: Path) -> None:
    section = inbound({"cert_file": str(tmp_path / "tls.crt"), "key_file": str(tmp_path / "tls.key")})
    with pytest.raises(ConfigError) as info:
        section.server_tls()
    assert str(info.value) == f"receivers_tls.cert_file: {tmp_path / 'tls.crt'}: file not found"


def test_client_tls_from_the_exporter_section(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    exporter = load_section(
        ExporterConfig,
        "exporter",
        {"endpoint": "https://collector:4317"},
        {
            "SIDECAR_EXPORTER_CERTIFICATE": pki.ca_cert,
            "SIDECAR_EXPORTER_CLIENT_CERTIFICATE": pki.client_cert,
            "SIDECAR_EXPORTER_CLIENT_KEY": pki.client_key,
        },
    )
    upstream = load_section(UpstreamTLSConfig, "exporter_tls", {"server_name": "collector.obs.svc"}, {})
    tls = client_tls(exporter, upstream, alpn=["h2"])
    assert isinstance(tls, ClientTLS)
    assert tls.server_hostname == "collector.obs.svc" and tls.has_client_certificate
    insecure = load_section(ExporterConfig, "exporter", {"endpoint": "http://c:4317", "insecure": True}, {})
    assert client_tls(insecure, upstream) is None
    broken = load_section(
        ExporterConfig, "exporter", {"certificate": str(tmp_path / "nope.crt"), "endpoint": "https://c:1"}, {}
    )
    with pytest.raises(ConfigError) as info:
        client_tls(broken, upstream)
    assert str(info.value) == f"exporter.certificate: {tmp_path / 'nope.crt'}: file not found"
