"""Upstream auth: API key header, bearer token file, OAuth2 client credentials against a
real token endpoint (aiohttp on loopback). Secrets never reach logs or reprs."""

from __future__ import annotations

import asyncio
import base64
import logging
from pathlib import Path
from urllib.parse import unquote_plus

import pytest
from aiohttp import web

from sidecar.configkit import ConfigError, load_section
from sidecar.export.auth import (
    AuthError,
    BearerTokenFile,
    HeaderAuth,
    OAuth2ClientCredentials,
)
from sidecar.export.config import AuthConfig
from sidecar.tls.client import ClientTLS
from sidecar.tls.server import ServerTLS
from tests.tls.pki import make_pki
from tests.tls.servers import serve_http

CLIENT_ID = "sidecar@tenant-a"
CLIENT_SECRET = "s3cr3t/with+odd=chars"


class TokenEndpoint:
    """An OAuth2 token endpoint (RFC 6749 4.4) that checks the client and counts requests."""

    def __init__(self, expires_in: int | None = 3600) -> None:
        self.requests: list[dict[str, str]] = []
        self.expires_in = expires_in
        self.fail_with: int | None = None
        self.delay = 0.0

    async def handle(self, request: web.Request) -> web.Response:
        form = dict(await request.post())
        self.requests.append({k: str(v) for k, v in form.items()})
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail_with:
            return web.json_response({"error": "temporarily_unavailable"}, status=self.fail_with)
        client_id, secret = form.get("client_id"), form.get("client_secret")
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            client_id, secret = unquote_plus(user), unquote_plus(password)
        if form.get("grant_type") != "client_credentials":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        if (client_id, secret) != (CLIENT_ID, CLIENT_SECRET):
            return web.json_response({"error": "invalid_client"}, status=401)
        body: dict[str, object] = {"access_token": f"token-{len(self.requests)}", "token_type": "Bearer"}
        if self.expires_in is not None:
            body["expires_in"] = self.expires_in
        return web.json_response(body)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/oauth/token", self.handle)
        return app


async def test_api_key_header_from_a_file_is_re_read_when_it_changes(tmp_path: Path) -> None:
    key_file = tmp_path / "api-key"
    key_file.write_text("first-key\n")
    clock = [0.0]
    auth = HeaderAuth("X-API-Key", value_file=str(key_file), check_interval=5, clock=lambda: clock[0])
    assert await auth.headers() == {"X-API-Key": "first-key"}
    key_file.write_text("second-key-longer\n")
    assert await auth.headers() == {"X-API-Key": "first-key"}  # not checked yet
    clock[0] = 5.0
    assert await auth.headers() == {"X-API-Key": "second-key-longer"}
    # a broken update (empty file) keeps the last good value
    key_file.write_text("")
    clock[0] = 10.0
    assert await auth.headers() == {"X-API-Key": "second-key-longer"}
    assert "second-key" not in repr(auth) and "first-key" not in repr(auth)


async def test_inline_api_key_and_bearer_token_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    auth = HeaderAuth("x-scope-orgid", value="tenant-a")
    assert await auth.headers() == {"x-scope-orgid": "tenant-a"}
    token = tmp_path / "token"
    token.write_text("eyJhbGciOi.payload.sig")
    bearer = BearerTokenFile(str(token))
    assert await bearer.headers() == {"Authorization": "Bearer eyJhbGciOi.payload.sig"}
    assert "eyJ" not in repr(bearer) and "<redacted>" in repr(bearer)
    assert "eyJ" not in caplog.text


def test_auth_files_errors_name_the_setting_and_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        BearerTokenFile(str(tmp_path / "missing"), key="auth.bearer_token_file")
    assert str(info.value) == f"auth.bearer_token_file: {tmp_path / 'missing'}: file not found"
    two_lines = tmp_path / "two"
    two_lines.write_text("abc\ndef\n")
    with pytest.raises(ConfigError, match="the value has a line break; it must be one line"):
        BearerTokenFile(str(two_lines))
    with pytest.raises(ConfigError, match="is not a valid HTTP header name"):
        HeaderAuth("X Bad", value="v")
    with pytest.raises(ConfigError, match="exactly one of them"):
        HeaderAuth("X-API-Key")


async def test_oauth2_token_is_fetched_cached_and_refreshed_before_expiry() -> None:
    endpoint = TokenEndpoint(expires_in=600)
    clock = [1000.0]
    async with serve_http(endpoint.app(), None) as port:
        auth = OAuth2ClientCredentials(
            token_url=f"http://127.0.0.1:{port}/oauth/token",
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            scopes=["telemetry.write", "telemetry.read"],
            audience="collector",
            clock=lambda: clock[0],
        )
        try:
            assert await auth.headers() == {"Authorization": "Bearer token-1"}
            assert endpoint.requests[0] == {
                "grant_type": "client_credentials",
                "scope": "telemetry.write telemetry.read",
                "audience": "collector",
            }  # the secret went in the Basic header, not the form
            clock[0] += 500  # still more than the margin (60 s) before expiry
            assert await auth.headers() == {"Authorization": "Bearer token-1"}
            clock[0] += 45  # 55 s left: refresh
            assert await auth.headers() == {"Authorization": "Bearer token-2"}
            assert len(endpoint.requests) == 2
            auth.invalidate()  # the upstream answered 401
            assert await auth.headers() == {"Authorization": "Bearer token-3"}
        finally:
            await auth.close()


async def test_oauth2_concurrent_callers_share_one_token_request() -> None:
    endpoint = TokenEndpoint()
    endpoint.delay = 0.05
    async with serve_http(endpoint.app(), None) as port:
        auth = OAuth2ClientCredentials(
            token_url=f"http://127.0.0.1:{port}/oauth/token",
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            auth_method="post",
        )
        try:
            results = await asyncio.gather(*(auth.headers() for _ in range(10)))
        finally:
            await auth.close()
    assert {r["Authorization"] for r in results} == {"Bearer token-1"}
    assert len(endpoint.requests) == 1
    assert endpoint.requests[0]["client_secret"] == CLIENT_SECRET  # auth_method "post"


async def test_oauth2_errors_are_clear_and_never_show_the_secret(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    endpoint = TokenEndpoint(expires_in=120)
    clock = [0.0]
    secret_file = tmp_path / "client-secret"
    secret_file.write_text("wrong-secret\n")
    async with serve_http(endpoint.app(), None) as port:
        url = f"http://127.0.0.1:{port}/oauth/token"
        auth = OAuth2ClientCredentials(
            token_url=url, client_id=CLIENT_ID, client_secret_file=str(secret_file), clock=lambda: clock[0]
        )
        try:
            with caplog.at_level(logging.DEBUG):
                with pytest.raises(AuthError) as info:
                    await auth.headers()
                assert str(info.value) == f"token endpoint {url} answered HTTP 401 (invalid_client)"
                # the secret file is fixed: re-read after the check interval, and the token comes
                secret_file.write_text(CLIENT_SECRET + "\n")
                clock[0] = 10.0
                assert await auth.headers() == {"Authorization": "Bearer token-2"}
                # the endpoint fails at refresh time: the current token, still valid, is used
                endpoint.fail_with = 503
                clock[0] = 10.0 + 61.0
                assert await auth.headers() == {"Authorization": "Bearer token-2"}
                # once it has expired, the export gets an AuthError (retryable)
                clock[0] = 10.0 + 121.0
                with pytest.raises(AuthError, match=r"answered HTTP 503 \(temporarily_unavailable\)"):
                    await auth.headers()
                # exports right after a failure do not each hit the token endpoint
                asked = len(endpoint.requests)
                clock[0] += 1.0
                results = await asyncio.gather(*(auth.headers() for _ in range(5)), return_exceptions=True)
                assert all(isinstance(r, AuthError) for r in results) and len(endpoint.requests) == asked
        finally:
            await auth.close()
    for text in (caplog.text, repr(auth), str(info.value)):
        assert CLIENT_SECRET not in text and "wrong-secret" not in text and "token-2" not in text
    assert "OAuth2 token refresh failed, using the current token" in caplog.text


async def test_oauth2_unreachable_endpoint_is_an_auth_error() -> None:
    async with serve_http(TokenEndpoint().app(), None) as port:
        pass  # the port is closed now
    auth = OAuth2ClientCredentials(
        token_url=f"http://127.0.0.1:{port}/oauth/token", client_id="a", client_secret="b", timeout=2
    )
    try:
        with pytest.raises(AuthError, match="unreachable: ClientConnectorError"):
            await auth.headers()
    finally:
        await auth.close()


async def test_oauth2_over_tls_with_the_sidecar_ca(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    server = ServerTLS(cert_file=pki.server_cert, key_file=pki.server_key)
    endpoint = TokenEndpoint()
    async with serve_http(endpoint.app(), server.context()) as port:
        auth = AuthConfig(
            oauth2_token_url=f"https://localhost:{port}/oauth/token",
            oauth2_client_id=CLIENT_ID,
            oauth2_client_secret=CLIENT_SECRET,
        ).build(ssl_context=ClientTLS(ca_file=pki.ca_cert).context())
        assert isinstance(auth, OAuth2ClientCredentials)
        try:
            assert await auth.headers() == {"Authorization": "Bearer token-1"}
        finally:
            await auth.close()


def test_auth_config_section(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("k")
    env = {"SIDECAR_AUTH_API_KEY_FILE": str(key_file), "SIDECAR_AUTH_API_KEY_HEADER": "api-key"}
    section = load_section(AuthConfig, "auth", {}, env)
    auth = section.build()
    assert isinstance(auth, HeaderAuth) and auth.header == "api-key"
    assert load_section(AuthConfig, "auth", {}, {}).build() is None
    with pytest.raises(ConfigError, match=r"^auth: choose one kind of upstream auth, not api_key and oauth2$"):
        load_section(AuthConfig, "auth", {"api_key": "x", "oauth2_token_url": "https://t"}, {})
    with pytest.raises(ConfigError, match=r"^auth\.oauth2_client_id: is required"):
        load_section(AuthConfig, "auth", {"oauth2_token_url": "https://t/token"}, {}).build()
    with pytest.raises(ConfigError, match=r"^auth\.oauth2_token_url: must be an http"):
        load_section(AuthConfig, "auth", {"oauth2_token_url": "t", "oauth2_client_id": "c"}, {}).build()
