"""The naive Python proxy the sidecar is measured against, run as its own process.

What a straightforward Python sidecar does per request: decode with upb, apply the same
policy in Python (the plan the bundled policies give, asked of the policy engine once at
start; sample first, then mask the kept spans: not a straw man), encode, and forward to the
upstream. It answers the app once the request is rewritten (forwarding runs in
the background), as the sidecar answers once the request is queued.

``python -m bench.baselines.naive_proxy --upstream-http PORT`` prints
``grpc=<port> http=<port>`` once listening.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import aiohttp
from aiohttp import web
from grpclib.const import Cardinality, Handler

from bench.baselines.naive_rewrite import naive_rewrite
from bench.corpus_requests import shipped_plan, trace_request
from bench.serving import serve_until_terminated
from sidecar.rewrite.plan import Plan
from sidecar.signals import Signal
from sidecar.wire import grpc as grpcwire


class NaiveProxy:
    def __init__(self, upstream: str, plan: Plan) -> None:
        self.upstream = upstream
        self.plan = plan
        self.session: aiohttp.ClientSession | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def handle(self, body: bytes) -> None:
        rewritten = naive_rewrite(body, self.plan)
        task = asyncio.create_task(self.forward(rewritten))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def forward(self, body: bytes) -> None:
        assert self.session is not None
        async with self.session.post(self.upstream, data=body,
                                     headers={"Content-Type": "application/x-protobuf"}) as response:
            await response.read()

    def __mapping__(self) -> dict[str, Handler]:
        async def export(stream: Any) -> None:
            body = await grpcwire.recv_unary(stream, 1 << 30, 1 << 30)
            await self.handle(body)
            await grpcwire.send_unary(stream, b"")

        return {Signal.TRACES.grpc_path: Handler(export, Cardinality.UNARY_UNARY, bytes, bytes)}

    async def http_export(self, request: web.Request) -> web.Response:
        await self.handle(await request.read())
        return web.Response(body=b"", content_type="application/x-protobuf")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--upstream-http", type=int, required=True)
    args = parser.parse_args()
    # the benchmark's requests all carry one resource: its plan is the only one needed
    plan = await asyncio.to_thread(shipped_plan, trace_request(1, seed=7))
    proxy = NaiveProxy(f"http://127.0.0.1:{args.upstream_http}/v1/traces", plan)
    proxy.session = aiohttp.ClientSession()
    app = web.Application(client_max_size=1 << 30)
    app.router.add_post("/v1/traces", proxy.http_export)
    try:
        # plain grpclib frame size: what a straightforward proxy would use
        await serve_until_terminated(proxy, app, max_frame_size=16384)
    finally:
        await proxy.session.close()


if __name__ == "__main__":
    asyncio.run(main())
