"""The remote back-end: decisions from an OPA server over its REST API.

``POST <opa_url>/v1/data/<opa_path>/decisions`` with ``{"input": ...}``. OPA
answers an undefined decision with 200 and no ``result`` key, and errors with
4xx/5xx and a ``{"code", "message"}`` body. Any failure (refused connection,
timeout, error status, unreadable body) is a :class:`DecisionError`; the service
then refuses or falls back as configured (``on_error``).

An undefined decision fails closed too: it means a wrong ``opa_path`` or a policy
that OPA has not loaded (yet), never "no changes", so data does not pass unmasked
and untenanted because OPA was set up wrong.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from opa_client import AsyncOpaClient

from sidecar.masked_text import loggable
from sidecar.policy.errors import DecisionError


def without_userinfo(url: str) -> str:
    """A URL safe to show: credentials in it are removed."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


# opa-python-client has no types (no py.typed, no stub package), so its client is Any to mypy
class _DecisionClient(AsyncOpaClient):  # type: ignore[misc]
    """opa-python-client's async client, reading OPA's error bodies on failure."""

    async def decide(self, path: str, input_document: Any) -> Any | None:
        if self._session is None:
            await self._init_session()
        url = f"{self.root_url}/data/{path}"
        async with self._request("POST", url, json={"input": input_document}) as response:
            try:
                body = await response.json(content_type=None)
            except (ValueError, aiohttp.ContentTypeError):
                body = None
            if response.status != 200:
                code = message = ""
                if isinstance(body, dict):
                    code, message = str(body.get("code", "")), str(body.get("message", ""))
                    causes = body.get("errors")
                    if isinstance(causes, list) and causes and isinstance(causes[0], dict):
                        # OPA's evaluation errors: the first one says what went wrong
                        message += f" ({causes[0].get('code', '')}: {causes[0].get('message', '')})"
                detail = f"{code}: {message}" if code or message else "no error body"
                raise DecisionError(f"OPA answered {response.status} for {path} ({loggable(detail)})")
            if not isinstance(body, dict):
                raise DecisionError(f"OPA answered {path} with a body that is not a JSON object")
            return body.get("result")


class RemoteBackend:
    """Queries ``<path>/decisions`` and ``<path>/pod_settings`` on a remote OPA."""

    name = "opa"

    def __init__(self, url: str, path: str, timeout: float) -> None:
        parts = urlsplit(url)
        secure = parts.scheme == "https"
        self.url = without_userinfo(url)
        self.path = path.strip("/")
        self.timeout = timeout
        self._client = _DecisionClient(
            host=parts.hostname or "localhost",
            port=parts.port or (443 if secure else 80),
            ssl=secure,
            retries=0,
            timeout=timeout,
        )

    async def query(self, rule: str, input_document: Any) -> Any:
        """The rule's value for ``input_document``; DecisionError if OPA fails or has none."""
        path = f"{self.path}/{rule}"
        try:
            result = await asyncio.wait_for(self._client.decide(path, input_document), self.timeout)
        except DecisionError:
            raise
        except TimeoutError:
            raise DecisionError(f"OPA at {self.url} did not answer within {self.timeout:g} s") from None
        except aiohttp.ClientError as exc:
            raise DecisionError(f"OPA at {self.url} is unreachable: {type(exc).__name__}") from None
        if result is None:
            raise DecisionError(
                f"OPA at {self.url} has no decision for {path} (undefined: is opa_path right, "
                "and is the policy loaded into OPA?)"
            )
        return result

    async def close(self) -> None:
        await self._client.close_connection()
