"""Hot reload with a real directory laid out like a ConfigMap mount, while traffic flows."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from sidecar.identity import Peer
from sidecar.rewrite import split_resources
from sidecar.signals import Signal
from tests.policy.configmap_dir import ConfigMapDir
from tests.policy.conftest import POLICIES, sample_value, trace_request

PEER = Peer(address="127.0.0.1:1")


def add_vip(version: Path) -> None:
    data_file = version / "data.json"
    data = json.loads(data_file.read_text())
    data["otlp_sidecar"]["config"]["sampling"]["vip_users"] = ["u-9"]
    data_file.write_text(json.dumps(data))


def break_syntax(version: Path) -> None:
    pci = version / "pci" / "pci.rego"
    pci.write_text(pci.read_text() + "\noops := {\n")


async def wait_for(condition, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_configmap_update_swaps_policies_while_traffic_flows(
    make_service, tmp_path: Path, hash_key_file: Path,
) -> None:
    mount = ConfigMapDir(tmp_path / "policies")
    mount.publish(POLICIES)
    service = await make_service(dir=str(mount.root), hash_key_file=str(hash_key_file), reload_interval=0.05)
    registry = service.metrics.registry
    first = service.version
    seen_keep: set[tuple[str, ...]] = set()
    failures: list[BaseException] = []
    stop = asyncio.Event()

    async def traffic() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            data = trace_request([({"service.name": f"svc-{n % 7}"}, [{}, {}])])
            try:
                plans = await service.plans_for(Signal.TRACES, split_resources(Signal.TRACES, data), PEER, "grpc")
            except BaseException as exc:
                failures.append(exc)
                return
            plan = plans[0]
            assert plan.sampling is not None and plan.detectors and plan.stamps  # always a whole plan
            seen_keep.add(tuple(sorted(k.rule_id for k in plan.sampling.keep)))
            # a request every millisecond: traffic as a busy sidecar sees it. A loop that never
            # waits (sleep(0)) starves the reload's worker threads of the GIL: every file read,
            # compile and probe call then waits for the loop's switch interval (a 20-60 s reload)
            await asyncio.sleep(0.001)

    runner = asyncio.create_task(traffic())
    await asyncio.sleep(0.2)
    mount.publish(POLICIES, add_vip)
    await wait_for(lambda: service.version != first)
    await asyncio.sleep(0.2)
    second = service.version
    assert sample_value(registry, "otlp_sidecar_policy_reloads_total", result="ok") == 2
    assert sample_value(registry, "otlp_sidecar_policy_info", version=second, backend="embedded") == 1
    assert sample_value(registry, "otlp_sidecar_policy_info", version=first, backend="embedded") == 0

    # a broken set is refused; the last good one stays and keeps answering
    mount.publish(POLICIES, break_syntax)
    await wait_for(lambda: sample_value(registry, "otlp_sidecar_policy_reloads_total", result="failed") == 1)
    await asyncio.sleep(0.3)
    stop.set()
    await runner
    assert failures == []
    assert service.version == second
    status = service.status()
    assert status["last_reload_error"].startswith("pci/pci.rego:")
    # refused once, not retried every poll while the content stays the same
    assert sample_value(registry, "otlp_sidecar_policy_reloads_total", result="failed") == 1
    # plans before the swap had no VIP rule, plans after it do: the cache was emptied
    assert ("sampling.errors", "sampling.large_order") in seen_keep
    assert ("sampling.errors", "sampling.large_order", "sampling.vip_user") in seen_keep
    assert len(seen_keep) == 2


async def test_hash_key_rotation_is_picked_up(make_service, tmp_path: Path, hash_key_file: Path) -> None:
    service = await make_service(dir=str(POLICIES), hash_key_file=str(hash_key_file), reload_interval=0.05)
    data = trace_request([({"service.name": "a"}, [{}])])
    resources = split_resources(Signal.TRACES, data)
    before = (await service.plans_for(Signal.TRACES, resources, PEER, "grpc"))[0]
    hash_key_file.write_bytes(b"another key of at least 16 bytes")
    await wait_for(lambda: service.status()["cache_entries"] == 0)
    after = (await service.plans_for(Signal.TRACES, resources, PEER, "grpc"))[0]
    assert before.hash_key != after.hash_key == b"another key of at least 16 bytes"
