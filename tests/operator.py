"""What an operator reads from a running sidecar's admin listener: the samples of ``/metrics``
and the answer of ``/ready``."""

from __future__ import annotations

import asyncio
import json
import ssl

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(url: str, ssl_context: ssl.SSLContext | None = None) -> Samples:
    async with aiohttp.ClientSession() as session, session.get(url, ssl=ssl_context or False) as response:
        assert response.status == 200
        text = await response.text()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


async def ready(port: int) -> tuple[int, dict[str, object]]:
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as session, session.get(
        f"http://127.0.0.1:{port}/ready"
    ) as response:
        return response.status, json.loads(await response.text())


async def wait_ready(port: int, predicate, timeout: float = 20.0) -> tuple[int, dict[str, object]]:
    """/ready's answer once ``predicate(body)`` holds (polled every 50 ms)."""
    seen: list[dict[str, object]] = []
    try:
        async with asyncio.timeout(timeout):
            while True:
                status, body = await ready(port)
                if predicate(body):
                    return status, body
                seen[:] = [body]
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"/ready never matched in {timeout} s; last body: {seen}") from None
