"""Shared pieces of the PCI-invariant tests: a policy set with an extra package, a real sidecar
process, and an OTLP/HTTP client that sends protobuf the way the SDKs do."""

from __future__ import annotations

import shutil
from pathlib import Path

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


def copy_tree(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target
