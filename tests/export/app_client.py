"""An app that sends distinct spans over OTLP/HTTP to a sidecar, and the check that every span it
was told was accepted arrived upstream (by span id; at-least-once delivery allows duplicates)."""

from __future__ import annotations

from collections import Counter

import aiohttp
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

from tests import sdk
from tests.upstream import Upstream

PB = {"Content-Type": "application/x-protobuf"}


class App:
    """An app sending distinct spans over OTLP/HTTP and remembering which were accepted."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.accepted: set[bytes] = set()
        self.refused = 0

    async def send(self, requests: int, spans: int = 20) -> None:
        async with aiohttp.ClientSession() as session:
            for _ in range(requests):
                batch = sdk.make_spans(spans)
                body = encode_spans(batch).SerializeToString()
                async with session.post(f"http://127.0.0.1:{self.port}/v1/traces", data=body, headers=PB) as resp:
                    await resp.read()
                    if resp.status == 200:
                        self.accepted |= {s.context.span_id.to_bytes(8, "big") for s in batch}
                    else:
                        assert resp.status == 503, resp.status  # only ever a retryable refusal
                        self.refused += 1


def arrived(upstream: Upstream) -> Counter[bytes]:
    return Counter(span.span_id for span in upstream.spans())


async def wait_all_arrived(upstream: Upstream, app: App, timeout: float = 20.0) -> Counter[bytes]:
    await upstream.wait_for(lambda: app.accepted <= set(arrived(upstream)), timeout=timeout)
    return arrived(upstream)
