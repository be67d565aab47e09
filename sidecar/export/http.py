"""OTLP/HTTP exporter (aiohttp): protobuf bodies, gzip / zstd negotiated down on refusal, connection reuse."""

from __future__ import annotations

import email.utils
import ssl
import time
from typing import Any

import aiohttp
from google.protobuf.message import DecodeError
from google.rpc import status_pb2

from sidecar.export.compress import Payload, compress_async
from sidecar.export.config import ExporterConfig
from sidecar.export.negotiate import names_encoding, parse_accepted
from sidecar.export.partial import parse_response
from sidecar.export.result import Exported, ExportError
from sidecar.export.upstream import UpstreamExporter
from sidecar.signals import Signal

#: OTLP/HTTP statuses a client retries
RETRYABLE_HTTP = frozenset({429, 502, 503, 504})

class HttpExporter(UpstreamExporter):
    name = "otlp_http"

    def __init__(self, config: ExporterConfig, **options: Any) -> None:
        super().__init__(config, **options)
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=max(4, self._config.concurrency * 2))
        self._session = aiohttp.ClientSession(connector=connector, auto_decompress=True)

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def export(self, signal: Signal, data: Payload) -> Exported:
        """POST the batch; an upstream refusing our compression gets it again with the next one."""
        encoding: str | None = self.negotiator.select()
        while True:
            assert encoding is not None
            try:
                return await self._post(signal, data, encoding)
            except _EncodingRefused as refusal:
                # each retry is a lower encoding than the last: this ends at none at the latest
                encoding = self.negotiator.refused(encoding, refusal.error.message, refusal.accepted)
                if encoding is None:
                    raise refusal.error from None

    async def _post(self, signal: Signal, data: Payload, encoding: str) -> Exported:
        assert self._session is not None, "start() first"
        headers = {"Content-Type": "application/x-protobuf", "User-Agent": "otlp-sidecar", **await self._headers()}
        body = await compress_async(encoding, data, self._config.compression_level, self._config.compress_in)
        if encoding != "identity":
            headers["Content-Encoding"] = encoding
        url = self._config.url_for(signal)
        ssl_arg: ssl.SSLContext | bool = True
        extra: dict[str, str] = {}
        if url.startswith("https://") and self._ssl_context is not None:
            ssl_arg = self._ssl_context() or True
            if self._server_hostname:
                extra["server_hostname"] = self._server_hostname
        try:
            async with self._session.post(
                url, data=body, headers=headers, ssl=ssl_arg,
                timeout=aiohttp.ClientTimeout(total=self._config.timeout), **extra,  # type: ignore[arg-type]
            ) as response:
                payload = await response.read()
                if response.status == 200:
                    return parse_response(signal, payload)
                error = _http_error(response.status, response.headers.get("Retry-After"), payload)
                if encoding != "identity" and _refuses_encoding(response.status, error.message):
                    raise _EncodingRefused(error, parse_accepted(response.headers.get("Accept-Encoding")))
                if response.status == 401:
                    self._unauthorized(error)
                raise error
        except TimeoutError:
            raise ExportError(
                "timeout", f"no answer from {url} within {self._config.timeout:g} s", retryable=True
            ) from None
        except aiohttp.ClientError as exc:
            reason = self._failure_reason(exc, "unavailable")
            raise ExportError(reason, f"cannot reach {url}: {_explained(exc)}", retryable=True) from None


def _explained(exc: aiohttp.ClientError) -> str:
    """The client's error, with what it means when the upstream spoke HTTP/2: an answer that
    starts with a SETTINGS frame (00 00 xx 04) is a gRPC port, not OTLP/HTTP."""
    text = str(exc)
    if "Bad status line" in text and ("\\x00\\x00" in text or "\\x04" in text):
        return ("the upstream answered in HTTP/2, not HTTP/1.1: it is a gRPC endpoint (an OTLP/gRPC port such "
                "as 4317?); give its OTLP/HTTP port (4318), or exporter.protocol = \"grpc\" "
                "(OTEL_EXPORTER_OTLP_PROTOCOL)")
    return text


class _EncodingRefused(Exception):
    """The upstream cannot decode the request's Content-Encoding (415, or 400 naming the encoding)."""

    def __init__(self, error: ExportError, accepted: frozenset[str] | None) -> None:
        super().__init__(error.message)
        self.error = error
        self.accepted = accepted


def _refuses_encoding(status: int, message: str) -> bool:
    """415 Unsupported Media Type (RFC 7694: an unsupported Content-Encoding), or a 400 whose
    message is about the encoding (aiohttp: "Can not decode content-encoding: zstandard")."""
    return status == 415 or (status == 400 and names_encoding(message))


def _http_error(status: int, retry_after: str | None, payload: bytes) -> ExportError:
    message = _status_message(payload) or f"HTTP {status}"
    return ExportError(
        f"http_{status}",
        f"upstream answered {status}: {message}",
        retryable=status in RETRYABLE_HTTP,
        retry_after=parse_retry_after(retry_after),
    )


def _status_message(payload: bytes) -> str:
    if not payload:
        return ""
    status = status_pb2.Status()
    try:
        status.ParseFromString(payload)
    except DecodeError:
        return payload[:200].decode("utf-8", "replace")
    return status.message or payload[:200].decode("utf-8", "replace")


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds: a number of seconds, or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


