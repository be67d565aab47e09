"""Shared pieces of the PCI-invariant tests: a policy set with an extra package, a real sidecar
process, and an OTLP/HTTP client that sends protobuf the way the SDKs do."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from tests.conftest import REPO

POLICIES = REPO / "policies"
MASTERCARD = "5555 5555 5555 4444"

#: a package whose author wanted "every attribute as it is": a `keep` rule matching every key
KEEP_ALL = """\
package otlp_sidecar.debugging

import rego.v1

decision_for(_) := {"attributes": [{"rule_id": "debugging.keep_all", "action": "keep", "match": "*"}]}
"""

KEEP_ALL_TEST = """\
package otlp_sidecar.debugging_test

import rego.v1

import data.otlp_sidecar.debugging

test_keeps_every_attribute if {
\tdebugging.decision_for({})["attributes"][0].match == "*"
}
"""


def policy_set_with(tmp_path: Path, package: str, source: str, test_source: str) -> Path:
    """A copy of the shipped set plus ``package`` (a part of the decision main.rego includes)."""
    target = tmp_path / "policies"
    shutil.copytree(POLICIES, target)
    name = package.rsplit(".", 1)[-1]
    (target / name).mkdir()
    (target / name / f"{name}.rego").write_text(source)
    (target / name / f"{name}_test.rego").write_text(test_source)
    main = (target / "main.rego").read_text()
    main = main.replace(
        "import data.otlp_sidecar.pci\n", f"import data.otlp_sidecar.pci\nimport data.{package}\n", 1,
    )
    main += (
        f'\n{name}_part(request) := {{"{package}": {name}.decision_for(request)}}\n'
        f"\ndecisions := object.union(decisions_for(input), {name}_part(input))\n"
    )
    main = main.replace("\ndecisions := decisions_for(input)\n", "\n", 1)
    (target / "main.rego").write_text(main)
    return target


def span_request(attributes: dict[str, str], name: str = "charge") -> bytes:
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.add(key="service.name", value=AnyValue(string_value="checkout"))
    span = rs.scope_spans.add().spans.add()
    span.name = name
    span.trace_id = bytes(range(1, 17))
    span.span_id = bytes(range(1, 9))
    span.status.code = 2  # an error: kept by the bundled sampling whatever the ratio
    span.attributes.extend(KeyValue(key=k, value=AnyValue(string_value=v)) for k, v in attributes.items())
    return request.SerializeToString()


async def post_traces(port: int, body: bytes) -> tuple[int, bytes]:
    """POST an OTLP/HTTP protobuf export, as the SDKs' default exporter does."""
    async with aiohttp.ClientSession() as session, session.post(
        f"http://127.0.0.1:{port}/v1/traces", data=body,
        headers={"Content-Type": "application/x-protobuf"}, timeout=aiohttp.ClientTimeout(total=10),
    ) as response:
        return response.status, await response.read()


#: a package that stamps a card number on every resource (no detector can see a stamp)
STAMP_CARD = """\
package otlp_sidecar.leaky

import rego.v1

decision_for(_) := {"stamps": [{"rule_id": "leaky.stamp", "key": "payment.example", "value": "4111-1111-1111-1111"}]}
"""

STAMP_CARD_TEST = """\
package otlp_sidecar.leaky_test

import rego.v1

import data.otlp_sidecar.leaky

test_stamps_an_example if {
\tcount(leaky.decision_for({}).stamps) == 1
}
"""


def with_data(policies: Path, **sections: Any) -> Path:
    """Set ``data.otlp_sidecar.config.<section>`` of a policy copy."""
    data_file = policies / "data.json"
    data = json.loads(data_file.read_text())
    data["otlp_sidecar"]["config"].update(sections)
    data_file.write_text(json.dumps(data))
    return policies


def copy_of_policies(tmp_path: Path) -> Path:
    target = tmp_path / "policies"
    shutil.copytree(POLICIES, target)
    return target


async def get(port: int, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(
        f"http://127.0.0.1:{port}{path}", timeout=aiohttp.ClientTimeout(total=10),
    ) as response:
        return response.status, await response.text()


async def get_json(port: int, path: str) -> Any:
    _, body = await get(port, path)
    return json.loads(body)


async def run_until_exit(env: Mapping[str, str], timeout: float = 60.0) -> tuple[int, str]:
    """Run ``python -m sidecar run`` expecting it to stop by itself: (exit code, stderr)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sidecar", "run", cwd=REPO, env={**os.environ, **env},
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, stderr = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError("the sidecar kept running; it should have refused to start") from None
    return int(process.returncode or 0), stderr.decode()


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in a Prometheus text exposition (None when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        metric_name, _, label_text = series.partition("{")
        got = ",".join(sorted(label_text.rstrip("}").split(","))) if label_text else ""
        if metric_name == name and got == wanted:
            return float(value)
    return None
