"""OTLP/gRPC exporter (our HTTP/2 client): raw bytes, gzip / zstd negotiated down on refusal, one reused channel."""

from __future__ import annotations

import asyncio
import base64
import logging
import ssl
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from grpclib.const import Status

from sidecar.export.compress import Payload
from sidecar.export.config import ExporterConfig, upstream_port
from sidecar.export.grpc_client import CallError, Channel, call_unary
from sidecar.export.negotiate import names_encoding, parse_accepted
from sidecar.export.partial import parse_response
from sidecar.export.result import Exported, ExportError
from sidecar.export.upstream import UpstreamExporter
from sidecar.signals import Signal
from sidecar.wire.http2.client import PING_TIMEOUT

log = logging.getLogger(__name__)

#: gRPC codes OTLP clients retry (RESOURCE_EXHAUSTED only with RetryInfo)
RETRYABLE_GRPC = frozenset(
    {
        Status.CANCELLED,
        Status.DEADLINE_EXCEEDED,
        Status.ABORTED,
        Status.OUT_OF_RANGE,
        Status.UNAVAILABLE,
        Status.DATA_LOSS,
    }
)


class GrpcExporter(UpstreamExporter):
    name = "otlp_grpc"

    def __init__(self, config: ExporterConfig, **options: Any) -> None:
        super().__init__(config, **options)
        self._targets: dict[Signal, tuple[str, int, bool]] = {}
        self._channels: dict[tuple[str, int, bool], tuple[Channel, object, int]] = {}
        self._retired: list[Channel] = []
        self._dead_listeners: list[Callable[[], None]] = []

    def watch_dead_connections(self, listener: Callable[[], None]) -> None:
        """``listener()`` each time an upstream connection is closed as dead (it answered nothing,
        not even a PING, after an export on it timed out)."""
        self._dead_listeners.append(listener)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        for channel, _, _ in self._channels.values():
            channel.close()
        for channel in self._retired:
            channel.close()
        self._channels.clear()
        self._retired.clear()

    def _target(self, signal: Signal) -> tuple[str, int, bool]:
        """(host, port, TLS?) of the signal's upstream, parsed once."""
        target = self._targets.get(signal)
        if target is None:
            url = urlsplit(self._config.url_for(signal))
            secure = url.scheme == "https" and not self._config.insecure
            port = upstream_port(url.port, url.scheme, "grpc")
            target = self._targets[signal] = (url.hostname or "localhost", port, secure)
        return target

    def _channel(self, signal: Signal) -> Channel:
        key = host, port, secure = self._target(signal)
        context: ssl.SSLContext | None = None
        if secure:
            context = (self._ssl_context() if self._ssl_context else None) or _default_context()
        generation = self.negotiator.generation
        current = self._channels.get(key)
        if current is not None and current[1] is context and current[2] == generation:
            return current[0]
        if current is not None:
            # the TLS material or the compression changed: new calls use a new connection (a
            # C-core server whose HPACK table a refused encoding upset takes the next one there;
            # our client never indexes, but a fresh start costs one handshake); calls in flight
            # finish on the old one, closed once they have had their timeout
            self._retire(current[0])
        timeout = self._config.timeout

        def unresponsive() -> None:
            log.warning(
                "the upstream connection to %s:%d sent nothing, not even a PING answer, within %g s after "
                "an export timed out: closed as dead; the export is retried on a new connection",
                host, port, min(PING_TIMEOUT, timeout),
            )
            for listener in self._dead_listeners:
                listener()

        channel = Channel(
            host, port, ssl=context, server_hostname=self._server_hostname or None,
            connect_timeout=timeout, ping_timeout=min(PING_TIMEOUT, timeout), on_unresponsive=unresponsive,
        )
        self._channels[key] = (channel, context, generation)
        return channel

    def _retire(self, channel: Channel) -> None:
        self._retired.append(channel)

        def close() -> None:
            if channel in self._retired:
                self._retired.remove(channel)
                channel.close()

        asyncio.get_running_loop().call_later(self._config.timeout + 1.0, close)

    async def export(self, signal: Signal, data: Payload) -> Exported:
        metadata = await self._headers()
        encoding = self.negotiator.select()
        while True:
            try:
                reply = await call_unary(
                    self._channel(signal), signal.grpc_path, data,
                    encoding=encoding, level=self._config.compression_level,
                    compress_in=self._config.compress_in, timeout=self._config.timeout,
                    metadata=metadata,
                )
            except CallError as exc:
                lower = self.negotiator.refused(
                    encoding, exc.message, parse_accepted(exc.trailers.get("grpc-accept-encoding"))
                ) if _refuses_encoding(encoding, exc) else None
                if lower is not None:
                    # the same batch again, compressed the next way (always lower: this loop ends),
                    # on a fresh connection
                    encoding = lower
                    continue
                error = grpc_error(exc)
                if exc.status is Status.UNAUTHENTICATED:
                    self._unauthorized(error)
                elif exc.status is Status.UNAVAILABLE:
                    error.reason = self._failure_reason(exc.__cause__, error.reason)
                raise error from None
            return parse_response(signal, reply)


def _refuses_encoding(encoding: str, exc: CallError) -> bool:
    """The call failed because the server does not take ``encoding``: its grpc-accept-encoding
    leaves it out, or UNIMPLEMENTED / INTERNAL naming the encoding (C-core: "Error parsing
    'grpc-encoding' metadata", "Compression algorithm ... is disabled")."""
    if encoding == "identity":
        return False
    accepted = parse_accepted(exc.trailers.get("grpc-accept-encoding"))
    if accepted is not None and encoding not in accepted:
        return True
    return exc.status in (Status.UNIMPLEMENTED, Status.INTERNAL) and names_encoding(exc.message)


def grpc_error(exc: CallError) -> ExportError:
    retry_after = retry_info_delay(exc.trailers)
    retryable = exc.status in RETRYABLE_GRPC or (
        exc.status is Status.RESOURCE_EXHAUSTED and retry_after is not None
    )
    reason = "timeout" if exc.status is Status.DEADLINE_EXCEEDED else f"grpc_{exc.status.name.lower()}"
    return ExportError(reason, f"upstream: {exc}", retryable=retryable, retry_after=retry_after)


def retry_info_delay(trailers: Mapping[str, str]) -> float | None:
    """The delay of a google.rpc.RetryInfo in ``grpc-status-details-bin``, if any."""
    raw = trailers.get("grpc-status-details-bin")
    if not raw:
        return None
    try:
        status = status_pb2.Status.FromString(base64.b64decode(raw + "=" * (-len(raw) % 4)))
    except (DecodeError, ValueError):
        return None
    for detail in status.details:
        info = error_details_pb2.RetryInfo()
        if detail.Is(info.DESCRIPTOR) and detail.Unpack(info):
            return info.retry_delay.seconds + info.retry_delay.nanos / 1e9
    return None


def _default_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.set_alpn_protocols(["h2"])
    return context
