"""Upstream authentication beside mTLS: a static header, a bearer token file, OAuth2.

Each kind has ``async headers() -> dict[str, str]`` to merge into every export
request. Secrets (keys, tokens, client secrets) never appear in logs, ``repr`` or
error messages; errors name the setting, the file or the endpoint instead.

- :class:`HeaderAuth`: ``api_key_header: api_key`` (the key given inline or in a file).
- :class:`BearerTokenFile`: ``Authorization: Bearer <file contents>``, re-read when the
  file changes (a projected service-account token the kubelet rotates).
- :class:`OAuth2ClientCredentials`: a token from an OAuth2 token endpoint (RFC 6749
  section 4.4) with aiohttp, cached until shortly before it expires, refreshed by one
  request at a time; ``invalidate()`` after the upstream answers 401.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote_plus

from sidecar.configkit import ConfigError
from sidecar.export.config import AuthConfig
from sidecar.tls.files import Stamp, read_file, stamp

if TYPE_CHECKING:  # imported where OAuth2 uses it: aiohttp loads the CA store, ~9 MiB, at import
    import aiohttp

log = logging.getLogger("sidecar.export.auth")

DEFAULT_CHECK_INTERVAL = 5.0
#: refresh an OAuth2 token this many seconds before it expires
DEFAULT_REFRESH_MARGIN = 60.0
#: after a failed token request, no new one for this many seconds
FAILURE_BACKOFF = 2.0
#: lifetime assumed when the token endpoint gives no ``expires_in``
DEFAULT_TOKEN_LIFETIME = 300.0


class AuthError(Exception):
    """Authentication headers could not be produced (retryable: the export waits and retries)."""


class UpstreamAuth(Protocol):
    async def headers(self) -> dict[str, str]: ...

    async def close(self) -> None: ...


def _check_header_name(key: str, name: str) -> str:
    name = name.strip()
    if not name or any(c in name for c in " :\r\n\t") or not name.isascii():
        raise ConfigError(key, f"{name!r} is not a valid HTTP header name")
    return name


def _check_secret_value(key: str, where: str, value: str) -> str:
    value = value.strip()
    if not value:
        raise ConfigError(key, f"{where}: the value is empty")
    if any(c in value for c in "\r\n\0"):
        raise ConfigError(key, f"{where}: the value has a line break; it must be one line")
    return value


_NEVER = object()


class _SecretFile:
    """A one-line secret in a file, re-read (at most every ``check_interval``) when it changes."""

    def __init__(
        self, key: str, path: str, check_interval: float, clock: Callable[[], float]
    ) -> None:
        self.key, self.path = key, path
        self._interval, self._clock = check_interval, clock
        self._stamp: Stamp = stamp(path)
        self._value = self._read()  # ConfigError at start: missing, unreadable, empty
        self._next = clock() + check_interval
        self._failed: object = _NEVER  # the stamp of a broken version, not retried

    def _read(self) -> str:
        text = read_file(self.key, self.path).decode("utf-8", "replace")
        return _check_secret_value(self.key, self.path, text)

    def value(self) -> str:
        now = self._clock()
        if now >= self._next:
            self._next = now + self._interval
            current = stamp(self.path)
            if current != self._stamp and current != self._failed:
                try:
                    self._value = self._read()
                    self._stamp, self._failed = current, _NEVER
                    log.info("re-read %s after it changed", self.path)
                except ConfigError as exc:
                    self._failed = current
                    log.warning("keeping the previous value: %s", exc)
        return self._value


class HeaderAuth:
    """One static header, e.g. ``X-API-Key``; the value inline or read from a file."""

    def __init__(
        self,
        header: str = "Authorization",
        *,
        value: str = "",
        value_file: str = "",
        prefix: str = "",
        check_interval: float = DEFAULT_CHECK_INTERVAL,
        keys: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        keys = {"header": "header", "value": "value", "value_file": "value_file", **(keys or {})}
        self.header = _check_header_name(keys["header"], header)
        self._prefix = prefix
        if bool(value) == bool(value_file):
            raise ConfigError(
                keys["value"], "give the value inline or in a file, exactly one of them"
            )
        self._inline = (
            _check_secret_value(keys["value"], "the inline value", value) if value else ""
        )
        self._file = (
            _SecretFile(keys["value_file"], value_file, check_interval, clock)
            if value_file
            else None
        )

    async def headers(self) -> dict[str, str]:
        value = self._file.value() if self._file is not None else self._inline
        return {self.header: self._prefix + value}

    async def close(self) -> None:
        return None

    def __repr__(self) -> str:
        source = f"file={self._file.path!r}" if self._file is not None else "inline"
        return f"{type(self).__name__}(header={self.header!r}, {source}, value=<redacted>)"


class BearerTokenFile(HeaderAuth):
    """``Authorization: Bearer <token>`` with the token read from a file (re-read on change)."""

    def __init__(
        self,
        path: str,
        *,
        check_interval: float = DEFAULT_CHECK_INTERVAL,
        key: str = "bearer_token_file",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(
            "Authorization",
            value_file=path,
            prefix="Bearer ",
            check_interval=check_interval,
            keys={"value": key, "value_file": key},
            clock=clock,
        )


@dataclass
class _Token:
    value: str
    refresh_at: float
    expires_at: float


class OAuth2ClientCredentials:
    """OAuth2 client credentials grant; the token is sent as ``Authorization: Bearer``."""

    def __init__(
        self,
        *,
        token_url: str,
        client_id: str,
        client_secret: str = "",
        client_secret_file: str = "",
        scopes: Sequence[str] = (),
        audience: str = "",
        auth_method: str = "basic",
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = 10.0,
        refresh_margin: float = DEFAULT_REFRESH_MARGIN,
        check_interval: float = DEFAULT_CHECK_INTERVAL,
        keys: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        k = {
            "token_url": "token_url",
            "client_id": "client_id",
            "client_secret": "client_secret",
            "client_secret_file": "client_secret_file",
            "auth_method": "auth_method",
            **(keys or {}),
        }
        if not token_url.startswith(("https://", "http://")):
            raise ConfigError(k["token_url"], "must be an http(s) URL of the OAuth2 token endpoint")
        if not client_id:
            raise ConfigError(k["client_id"], "is required for OAuth2 client credentials")
        if bool(client_secret) == bool(client_secret_file):
            raise ConfigError(
                k["client_secret"], "give the client secret inline or in a file, exactly one"
            )
        if auth_method not in ("basic", "post"):
            raise ConfigError(
                k["auth_method"], f"{auth_method!r} is not allowed; choose 'basic' or 'post'"
            )
        self.token_url = token_url
        self.client_id = client_id
        self._secret_inline = client_secret
        self._secret_file = (
            _SecretFile(k["client_secret_file"], client_secret_file, check_interval, clock)
            if client_secret_file
            else None
        )
        self._scopes = tuple(scopes)
        self._audience = audience
        self._auth_method = auth_method
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        self._timeout = timeout
        self._margin = refresh_margin
        self._clock = clock
        self._token: _Token | None = None
        self._last_failure: tuple[float, str] | None = None  # (no new request before, error)
        self._lock = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None
        #: token requests made, successful and failed (for tests and metrics)
        self.fetches = 0
        self.failures = 0

    def __repr__(self) -> str:
        return (
            f"OAuth2ClientCredentials(token_url={self.token_url!r}, client_id={self.client_id!r}, "
            "client_secret=<redacted>)"
        )

    def _secret(self) -> str:
        return self._secret_file.value() if self._secret_file is not None else self._secret_inline

    def invalidate(self) -> None:
        """Forget the cached token (call it when the upstream answered 401)."""
        self._token = None

    async def headers(self) -> dict[str, str]:
        token = self._token
        if token is None or self._clock() >= token.refresh_at:
            token = await self._refresh(token)
        return {"Authorization": f"Bearer {token.value}"}

    async def _refresh(self, stale: _Token | None) -> _Token:
        async with self._lock:
            current = self._token
            now = self._clock()
            if current is not None and current is not stale and now < current.refresh_at:
                return current  # another caller refreshed while we waited
            usable = current if current is not None and now < current.expires_at else None
            if self._last_failure is not None and now < self._last_failure[0]:
                # failed a moment ago: do not hammer the token endpoint once per export
                if usable is not None:
                    return usable
                raise AuthError(self._last_failure[1])
            try:
                self._token = await self._fetch()
                self._last_failure = None
                return self._token
            except AuthError as exc:
                self.failures += 1
                self._last_failure = (self._clock() + FAILURE_BACKOFF, str(exc))
                if usable is not None:
                    log.warning("OAuth2 token refresh failed, using the current token: %s", exc)
                    return usable
                log.warning("OAuth2 token request failed: %s", exc)
                raise

    async def _fetch(self) -> _Token:
        self.fetches += 1
        form: dict[str, str] = {"grant_type": "client_credentials"}
        if self._scopes:
            form["scope"] = " ".join(self._scopes)
        if self._audience:
            form["audience"] = self._audience
        headers = {"Accept": "application/json"}
        if self._auth_method == "basic":
            # RFC 6749 2.3.1: id and secret are form-urlencoded, then Basic-encoded
            pair = f"{quote_plus(self.client_id)}:{quote_plus(self._secret())}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
        else:
            form["client_id"], form["client_secret"] = self.client_id, self._secret()
        import aiohttp

        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._timeout))
        started = self._clock()
        try:
            async with self._session.post(
                self.token_url,
                data=form,
                ssl=self._ssl,
                headers=headers,
            ) as response:
                status = response.status
                body: Any = None
                try:
                    body = await response.json(content_type=None)
                except (ValueError, aiohttp.ContentTypeError):
                    body = None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise AuthError(
                f"token endpoint {self.token_url} unreachable: {type(exc).__name__}"
            ) from None
        if status != 200:
            code = body.get("error") if isinstance(body, dict) else None
            detail = (
                f" ({code})" if isinstance(code, str) and code.isascii() and len(code) < 64 else ""
            )
            raise AuthError(f"token endpoint {self.token_url} answered HTTP {status}{detail}")
        if not isinstance(body, dict) or not isinstance(body.get("access_token"), str):
            raise AuthError(
                f"token endpoint {self.token_url} gave no access_token in a JSON object"
            )
        token_type = str(body.get("token_type", "Bearer"))
        if token_type.lower() != "bearer":
            raise AuthError(
                f"token endpoint {self.token_url} gave a {token_type!r} token, not Bearer"
            )
        value = body["access_token"].strip()
        if not value or any(c in value for c in "\r\n\0"):
            raise AuthError(
                f"token endpoint {self.token_url} gave an empty or malformed access_token"
            )
        lifetime = body.get("expires_in", DEFAULT_TOKEN_LIFETIME)
        try:
            lifetime = float(lifetime)
        except (TypeError, ValueError):
            lifetime = DEFAULT_TOKEN_LIFETIME
        lifetime = max(lifetime, 1.0)
        margin = min(self._margin, lifetime / 2)
        return _Token(value, started + lifetime - margin, started + lifetime)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def build_auth(
    config: AuthConfig, section: str = "auth", ssl_context: ssl.SSLContext | None = None
) -> UpstreamAuth | None:
    """The auth object that ``[auth]`` describes (None without auth); ConfigError naming the key."""
    mode = config.mode()
    if mode == "api_key":
        return HeaderAuth(
            config.api_key_header,
            value=config.api_key,
            value_file=config.api_key_file,
            check_interval=config.reload_interval,
            keys={
                "header": f"{section}.api_key_header",
                "value": f"{section}.api_key",
                "value_file": f"{section}.api_key_file",
            },
        )
    if mode == "bearer":
        return BearerTokenFile(
            config.bearer_token_file,
            check_interval=config.reload_interval,
            key=f"{section}.bearer_token_file",
        )
    if mode == "oauth2":
        return OAuth2ClientCredentials(
            token_url=config.oauth2_token_url,
            client_id=config.oauth2_client_id,
            client_secret=config.oauth2_client_secret,
            client_secret_file=config.oauth2_client_secret_file,
            scopes=config.oauth2_scopes,
            audience=config.oauth2_audience,
            auth_method=config.oauth2_auth_method,
            ssl_context=ssl_context,
            check_interval=config.reload_interval,
            keys={
                f: f"{section}.oauth2_{f}"
                for f in (
                    "token_url",
                    "client_id",
                    "client_secret",
                    "client_secret_file",
                    "auth_method",
                )
            },
        )
    return None
