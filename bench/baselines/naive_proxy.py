"""The naive Python proxy the sidecar is measured against, run as its own process.

What a straightforward Python sidecar does per request: decode with upb, apply the same
policy in Python (the plan the bundled policies give, asked of the policy engine once at
start; sample first, then mask the kept spans: not a straw man), encode, and forward to the
upstream. It answers the app once the request is rewritten (forwarding runs in
the background), as the sidecar answers once the request is queued.

With ``--rego-per-span`` it also asks the policy engine (embedded Rego, the bundled policies)
for a decision about every span, with the span's attributes in the input: what a sidecar
without plans would do, and why this one compiles a plan once per resource instead.

``python -m bench.baselines.naive_proxy --upstream-http PORT [--rego-per-span]`` prints
``grpc=<port> http=<port>`` once listening.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import aiohttp
from aiohttp import web
from grpclib.const import Cardinality, Handler

from bench import grpclib_server as grpcwire
from bench.baselines.naive_rewrite import naive_rewrite, naive_rewrite_logs, naive_rewrite_metrics
from bench.corpus_requests import log_request, metric_request, shipped_plan_for, trace_request
from bench.serving import serve_until_terminated
from sidecar.rewrite.plan import Plan
from sidecar.signals import Signal

#: the naive rewrite of each signal: decode with the protobuf library, apply the plan, encode
REWRITES = {Signal.TRACES: naive_rewrite, Signal.LOGS: naive_rewrite_logs, Signal.METRICS: naive_rewrite_metrics}
#: one item of each signal's benchmark request, to ask the bundled policies for its plan
SAMPLES = {Signal.TRACES: lambda: trace_request(1, seed=7), Signal.LOGS: lambda: log_request(1, seed=7),
           Signal.METRICS: lambda: metric_request(1, seed=7)}


class NaiveProxy:
    def __init__(self, upstream: str, plan: Plan, per_span: Any = None, signal: Signal = Signal.TRACES) -> None:
        self.upstream = upstream
        self.plan = plan
        self.signal = signal
        self.rewrite = REWRITES[signal]
        self.per_span = per_span
        self.session: aiohttp.ClientSession | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def handle(self, body: bytes) -> None:
        if self.per_span is not None:
            self.per_span(body)
        rewritten = self.rewrite(body, self.plan)
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

        return {self.signal.grpc_path: Handler(export, Cardinality.UNARY_UNARY, bytes, bytes)}

    async def http_export(self, request: web.Request) -> web.Response:
        await self.handle(await request.read())
        return web.Response(body=b"", content_type="application/x-protobuf")


def rego_per_span() -> Any:
    """A function that queries the bundled policies once per span of a trace request."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    from bench.corpus_requests import REPO
    from sidecar.identity import Peer, PodIdentity
    from sidecar.policy.loader import load_policy

    compiled, _ = load_policy(str(REPO / "policies"), "otlp_sidecar/main", run_tests=False)
    pod = PodIdentity(name="bench-0", namespace="shop", service_account="bench", tenant="acme").as_input()
    peer = Peer("127.0.0.1").as_input()

    def decide(body: bytes) -> None:
        request = ExportTraceServiceRequest.FromString(body)
        for resource_spans in request.resource_spans:
            resource = {kv.key: kv.value.string_value for kv in resource_spans.resource.attributes}
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    attributes = {kv.key: kv.value.string_value or kv.value.int_value for kv in span.attributes}
                    compiled.query("decisions", {
                        "signal": "traces", "resource": {**resource, **attributes}, "pod": pod,
                        "peer": peer, "transport": "http",
                    })

    return decide


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--upstream-http", type=int, required=True)
    parser.add_argument("--rego-per-span", action="store_true", help="ask Rego about every span")
    parser.add_argument("--signal", default="traces", choices=[s.value for s in Signal])
    args = parser.parse_args()
    signal = Signal(args.signal)
    # the benchmark's requests all carry one resource: its plan is the only one needed
    plan = await asyncio.to_thread(shipped_plan_for, signal, SAMPLES[signal]())
    per_span = await asyncio.to_thread(rego_per_span) if args.rego_per_span else None
    proxy = NaiveProxy(f"http://127.0.0.1:{args.upstream_http}{signal.http_path}", plan, per_span, signal)
    proxy.session = aiohttp.ClientSession()
    app = web.Application(client_max_size=1 << 30)
    app.router.add_post(signal.http_path, proxy.http_export)
    try:
        # plain grpclib frame size: what a straightforward proxy would use
        await serve_until_terminated(proxy, app, max_frame_size=16384)
    finally:
        # let the forwards in flight finish (a slow baseline may still have some) before closing
        if proxy.tasks:
            await asyncio.wait(proxy.tasks, timeout=30)
        await proxy.session.close()


if __name__ == "__main__":
    asyncio.run(main())
