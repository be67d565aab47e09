"""A sidecar that pulls signed bundles, as its tests drive it: its environment, what it says on
/policy and /metrics, an app's spans with a card number sent to it and read back upstream, and its
peak RSS."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.export import SpanExportResult

from tests import sdk
from tests.bundles.helpers import Keys
from tests.conftest import sidecar_env
from tests.policy.conftest import attrs_of

VISA = "4111 1111 1111 1111"


def bundle_env(upstream, base: str, keys: Keys, hash_key_file: Path, **extra: str) -> dict[str, str]:
    return sidecar_env(
        upstream, "grpc",
        SIDECAR_POLICY_MODE="enforce", SIDECAR_POLICY_BUNDLES=f"platform={base}/set",
        SIDECAR_POLICY_BUNDLE_VERIFICATION_KEY_FILE=str(keys.rsa_public),
        SIDECAR_POLICY_BUNDLE_POLLING_MIN_DELAY="0.1", SIDECAR_POLICY_BUNDLE_POLLING_MAX_DELAY="0.2",
        SIDECAR_POLICY_HASH_KEY_FILE=str(hash_key_file), SIDECAR_TENANT="acme", **extra,
    )


async def policy_status(admin: int) -> dict:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{admin}/policy") as response:
        return await response.json()


async def metric(admin: int, name: str) -> float:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{admin}/metrics") as response:
        text = await response.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


async def send_cards(port: int) -> None:
    exporter, _, _ = sdk.exporters("grpc", port, "none")
    spans = sdk.make_spans(5, Resource.create({"service.name": "checkout"}),
                           {"card_number": VISA, "order.amount": 2500})
    try:
        assert await asyncio.to_thread(exporter.export, spans) is SpanExportResult.SUCCESS
    finally:
        await asyncio.to_thread(exporter.shutdown)


def card_values(upstream) -> list[str]:
    return [attrs_of(span.attributes).get("card_number") for span in upstream.spans()]


def vm_hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0
