"""HTTP/2 conformance of the gRPC listener: h2spec (generic and http2 sections), plaintext h2c.

Every h2spec case passes except the deviations docs/interop.md lists with their reasons (the
table under "h2spec deviations"); a new failure fails this test with h2spec's own report.
"""

from __future__ import annotations

import asyncio
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from xml.sax.saxutils import escape

import pytest

from tests.conftest import REPO
from tests.peers import peer
from tests.processes import SidecarProcess

DOC = REPO / "docs" / "interop.md"


def documented_deviations() -> dict[str, str]:
    """h2spec case id -> reason, from the deviations table of docs/interop.md."""
    text = DOC.read_text()
    section = text.split("## h2spec deviations", 1)[1].split("\n## ", 1)[0]
    return {m[1]: m[2].strip() for m in re.finditer(r"^\| `((?:generic|http2|hpack)/[\d.]+/\d+)` \|.*\| (.+) \|$",
                                                   section, re.MULTILINE)}


_MESSAGE = re.compile(r"<(error|failure|skipped)>(.*?)</\1>", re.DOTALL)
_NOT_XML = re.compile(r"[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def well_formed(report: str) -> str:
    """h2spec's JUnit report with its messages escaped.

    h2spec 2.2.1 writes each case's message as raw inner XML (``xml:",innerxml"``), so an error
    text holding ``<``, ``&`` or a control byte (a Go network error, a frame's debug data) makes
    the whole file unparseable. Escaping the message bodies is all it takes.
    """
    return _MESSAGE.sub(lambda m: f"<{m[1]}>{escape(_NOT_XML.sub('?', m[2]))}</{m[1]}>", report)


def results(report: Path) -> dict[str, str]:
    """h2spec case id (``http2/5.1/5``, as ``h2spec <id>`` runs it) -> passed / failed / skipped."""
    out = {}
    for suite in ET.fromstring(well_formed(report.read_bytes().decode("utf-8", "replace"))):
        for index, case in enumerate(suite.findall("testcase"), 1):
            failed = case.find("error") is not None or case.find("failure") is not None
            out[f"{suite.get('package')}/{index}"] = (
                "failed" if failed else "skipped" if case.find("skipped") is not None else "passed"
            )
    return out


def test_report_with_raw_messages_parses(tmp_path: Path) -> None:
    """A message h2spec writes unescaped (``<``, ``&``, a control byte) no longer breaks the report."""
    report = tmp_path / "h2spec.xml"
    report.write_bytes(
        b'<?xml version="1.0" encoding="UTF-8"?>\n<testsuites>\n'
        b'  <testsuite package="http2/6.8" id="6.8" tests="2">\n'
        b'    <testcase package="http2/6.8" classname="a">'
        b'<error>GOAWAY Frame\nError: debug <x & \x01\xff</error></testcase>\n'
        b'    <testcase package="http2/6.8" classname="b"></testcase>\n'
        b'  </testsuite>\n'
        b'  <testsuite package="generic/1" id="1" tests="1">\n'
        b'    <testcase package="generic/1" classname="c"><skipped></skipped></testcase>\n'
        b'  </testsuite>\n</testsuites>\n')
    with pytest.raises(ET.ParseError):
        ET.parse(report)  # what the test used to do, and what failed in CI
    assert results(report) == {"http2/6.8/1": "failed", "http2/6.8/2": "passed", "generic/1/1": "skipped"}


def test_documented_deviations_parse() -> None:
    deviations = documented_deviations()
    assert deviations and all(reason for reason in deviations.values())


@pytest.mark.timeout(240)
async def test_h2spec_generic_and_http2(tmp_path: Path) -> None:
    sidecar = SidecarProcess({
        "SIDECAR_GRPC_ENDPOINT": "127.0.0.1:0", "SIDECAR_HTTP_ENDPOINT": "127.0.0.1:0",
        "SIDECAR_ADMIN_ENDPOINT": "127.0.0.1:0", "SIDECAR_EXPORTER_TYPE": "debug",
        "SIDECAR_EXPORTER_DEBUG_OUTPUT": str(tmp_path / "forwarded.jsonl"),
    })
    await sidecar.start(timeout=60)
    report = tmp_path / "h2spec.xml"
    try:
        proc = await asyncio.create_subprocess_exec(
            str(peer("h2spec")), "generic", "http2", "-h", "127.0.0.1", "-p", str(sidecar.ports["grpc"]),
            "-o", "5", "-j", str(report),  # 5 s per case: slack on a busy machine
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        output = (await asyncio.wait_for(proc.communicate(), 200))[0].decode(errors="replace")
        exit_code = await sidecar.stop()
    finally:
        await sidecar.stop()
    outcome = results(report)
    assert len(outcome) >= 130, output[-2000:]  # every case of both sections ran
    failed = {case for case, result in outcome.items() if result == "failed"}
    unexplained = failed - documented_deviations().keys()
    assert not unexplained, f"h2spec failures not in docs/interop.md: {sorted(unexplained)}\n{output[-6000:]}"
    assert sum(result == "passed" for result in outcome.values()) >= len(outcome) - len(documented_deviations()) - 4
    # the sidecar is still well after all that: it stopped cleanly on SIGTERM, no traceback
    assert exit_code == 0 and "Traceback" not in sidecar.stderr, sidecar.stderr[-3000:]
