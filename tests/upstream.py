"""An upstream OTLP collector that tests run and control (gRPC and HTTP on loopback).

It records every request it takes as a parsed message, and can be told to
answer with an error, slowly, or with partial_success, to exercise the
exporter. The gRPC side is a grpclib server (bench.grpclib_server: an HTTP/2 stack independent
of the sidecar's, extended to speak gzip and zstd); the HTTP side decodes bodies with
zlib / zstandard directly, independent of the code under test.
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zstandard
from aiohttp import web
from google.protobuf.message import Message
from grpclib.const import Cardinality, Handler, Status
from grpclib.exceptions import GRPCError

from bench import grpclib_server as grpcwire
from sidecar.signals import Signal


@dataclass
class Answer:
    """How the upstream answers the next requests."""

    http_status: int = 200
    grpc_status: Status = Status.OK
    message: str = ""
    retry_after: str | None = None
    delay: float = 0.0
    rejected: int = 0
    #: drop the connection instead of answering
    reset: bool = False
    #: answer only once this is set (after ``delay``)
    hold: asyncio.Event | None = None


@dataclass
class Received:
    signal: Signal
    message: Message
    transport: str
    headers: dict[str, str] = field(default_factory=dict)
    encoding: str = "identity"


class Upstream:
    def __init__(self) -> None:
        self.received: list[Received] = []
        self.attempts = 0
        #: answers to give, in order; when empty, ``default`` answers
        self.script: list[Answer] = []
        self.default = Answer()
        self._grpc: grpcwire.Server | None = None
        self._runner: web.AppRunner | None = None
        self.grpc_port = 0
        self.http_port = 0
        self.changed = asyncio.Event()

    # -- what arrived --------------------------------------------------------------------------

    def messages(self, signal: Signal) -> list[Message]:
        return [r.message for r in self.received if r.signal is signal]

    def spans(self) -> list[Any]:
        return [
            span
            for msg in self.messages(Signal.TRACES)
            for rs in msg.resource_spans
            for ss in rs.scope_spans
            for span in ss.spans
        ]

    def log_records(self) -> list[Any]:
        return [
            rec
            for msg in self.messages(Signal.LOGS)
            for rl in msg.resource_logs
            for sl in rl.scope_logs
            for rec in sl.log_records
        ]

    def metrics(self) -> list[Any]:
        return [
            metric
            for msg in self.messages(Signal.METRICS)
            for rm in msg.resource_metrics
            for sm in rm.scope_metrics
            for metric in sm.metrics
        ]

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()

    # -- serving -------------------------------------------------------------------------------

    def _next_answer(self) -> Answer:
        self.attempts += 1
        return self.script.pop(0) if self.script else self.default

    def _record(self, signal: Signal, body: bytes, transport: str, headers: dict[str, str], encoding: str) -> None:
        message = signal.request_class.FromString(body)
        self.received.append(Received(signal, message, transport, headers, encoding))
        self.changed.set()

    async def start(self, grpc_port: int = 0, http_port: int = 0, ssl: Any = None) -> None:
        """Listen on loopback; ``ssl``: an ``ssl.SSLContext`` to serve TLS (ALPN h2 is added for gRPC)."""
        self._grpc = grpcwire.Server([self])
        await self._grpc.start("127.0.0.1", grpc_port, ssl=ssl)
        self.grpc_port = self._grpc._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        app = web.Application(client_max_size=256 * 1024 * 1024)
        for signal in Signal:
            app.router.add_post(signal.http_path, self._http_handler(signal))
        self._runner = web.AppRunner(app, access_log=None, auto_decompress=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", http_port, ssl_context=ssl)
        await site.start()
        self.http_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._grpc is not None:
            self._grpc.close()
            await self._grpc.wait_closed()
            self._grpc = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def __mapping__(self) -> dict[str, Handler]:
        return {
            signal.grpc_path: Handler(self._grpc_handler(signal), Cardinality.UNARY_UNARY, bytes, bytes)
            for signal in Signal
        }

    def _grpc_handler(self, signal: Signal) -> Callable[[Any], Any]:
        async def handle(stream: Any) -> None:
            body = await grpcwire.recv_unary(stream, 256 << 20, 256 << 20)
            answer = self._next_answer()
            if answer.delay:
                await asyncio.sleep(answer.delay)
            if answer.hold is not None:
                await answer.hold.wait()
            if answer.reset:
                stream._stream._transport.close()
                return
            if answer.grpc_status is not Status.OK:
                raise GRPCError(answer.grpc_status, answer.message or "scripted failure")
            encoding = grpcwire.request_header(stream, "grpc-encoding") or "identity"
            headers = dict(stream.metadata or {})
            self._record(signal, body, "grpc", headers, encoding)
            await grpcwire.send_unary(stream, _response(signal, answer))

        return handle

    def _http_handler(self, signal: Signal) -> Callable[[web.Request], Any]:
        async def handle(request: web.Request) -> web.Response:
            raw = await request.read()
            answer = self._next_answer()
            if answer.delay:
                await asyncio.sleep(answer.delay)
            if answer.hold is not None:
                await answer.hold.wait()
            if answer.reset:
                assert request.transport is not None
                request.transport.close()
                return web.Response(status=500)  # never reaches the client: the connection is gone
            if answer.http_status != 200:
                headers = {"Retry-After": answer.retry_after} if answer.retry_after else None
                return web.Response(status=answer.http_status, text=answer.message, headers=headers)
            encoding = request.headers.get("Content-Encoding", "identity")
            if encoding == "gzip":
                raw = gzip.decompress(raw)
            elif encoding == "zstd":
                raw = zstandard.ZstdDecompressor().decompressobj().decompress(raw)
            self._record(signal, raw, "http", dict(request.headers), encoding)
            return web.Response(body=_response(signal, answer), content_type="application/x-protobuf")

        return handle


def _response(signal: Signal, answer: Answer) -> bytes:
    response = signal.response_class()
    if answer.rejected:
        field_name = {
            Signal.TRACES: "rejected_spans",
            Signal.METRICS: "rejected_data_points",
            Signal.LOGS: "rejected_log_records",
        }[signal]
        setattr(response.partial_success, field_name, answer.rejected)
        response.partial_success.error_message = answer.message
    return bytes(response.SerializeToString())
