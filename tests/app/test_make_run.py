"""`make run`, the README's first command, as a user runs it, and its "Try it" section.

The sidecar started by make with the repository's policies and the development hash key, printing
what it would forward; the README's requests sent as written (`payment.json`, its spoofed tenant,
then the same with the pod's); its printed output holds the masks it shows and no card number.
With ``CONFIG=file`` the file decides: the Makefile's development defaults, given as environment
variables, overrode the file's own policy directory before.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sidecar.rewrite._cards import find_pans
from tests.conftest import REPO
from tests.processes import SidecarProcess

MAKE = shutil.which("make")
#: the virtualenv these tests run in, as `make test` made it (make would install one otherwise)
VENV = Path(sys.prefix)
pytestmark = [
    pytest.mark.skipif(MAKE is None, reason="make is not installed"),
    pytest.mark.skipif(not (VENV / ".installed").exists(), reason="the virtualenv was not made by `make`"),
    pytest.mark.timeout(240),
]
PAYMENT = REPO / "tests" / "testdata" / "otlp_json" / "payment.json"
#: what the README shows of the forwarded span
MASKED_NAME = "POST /pay?card=************1111"
MASKED_STATEMENT = "INSERT INTO payments(pan) VALUES ('**** **** **** 4444')"
HASHED = re.compile(r"hmac-sha256:[0-9a-f]{64}")


class MakeRun(SidecarProcess):
    """``make run`` in the repository, in a process group of its own: stopped as a terminal's ^C
    or ``kill %1`` stops it, the whole group (make does not pass a signal on to the sidecar)."""

    async def run(self, *args: str, stdout: Path) -> dict[str, int]:
        assert MAKE is not None
        with stdout.open("wb") as out:
            return await self.launch([MAKE, "-s", "run", f"VENV={VENV}", *args], cwd=REPO, stdout=out,
                                     preexec_fn=os.setsid, timeout=180)

    async def stop(self, signum: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Signal the group; make's own exit code is the signal's, so the sidecar's clean stop is
        read in its log."""
        assert self.proc is not None
        if self.proc.returncode is None:
            os.killpg(self.proc.pid, signum)
        code = await super().stop(signum, timeout)
        assert "shutting down: no new requests" in self.stderr and "Traceback" not in self.stderr, self.stderr
        return code


def started(tenant: str = "acme") -> MakeRun:
    return MakeRun({
        "SIDECAR_GRPC_ENDPOINT": "127.0.0.1:0", "SIDECAR_HTTP_ENDPOINT": "127.0.0.1:0",
        "SIDECAR_ADMIN_ENDPOINT": "127.0.0.1:0", "SIDECAR_TENANT": tenant,
    })


async def post_json(port: int, body: bytes) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.post(
        f"http://127.0.0.1:{port}/v1/traces", data=body, headers={"Content-Type": "application/json"},
    ) as response:
        return response.status, await response.json(content_type=None)


async def get_json(port: int, path: str) -> Any:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}{path}") as response:
        assert response.status == 200, path
        return await response.json(content_type=None)


def forwarded_spans(stdout: Path) -> list[dict[str, Any]]:
    spans = []
    for line in stdout.read_text().splitlines():
        record = json.loads(line)
        assert record["signal"] == "traces"
        for resource in record["request"]["resourceSpans"]:
            for scope in resource["scopeSpans"]:
                spans += scope["spans"]
    return spans


def assert_no_card_number(text: str) -> None:
    assert not find_pans(HASHED.sub("", text).encode()), "a card number in the sidecar's output"


async def test_make_run_and_the_readme_s_try_it(tmp_path: Path) -> None:
    stdout = tmp_path / "stdout.jsonl"
    sidecar = started()
    try:
        ports = await sidecar.run(stdout=stdout)
        assert (await get_json(ports["admin"], "/policy"))["dir"] == "policies"  # the repository's
        # the spoofed tenant: refused, with the README's message
        status, answer = await post_json(ports["http"], PAYMENT.read_bytes())
        assert status == 403 and answer == {
            "code": 7, "message": "the resource claims tenant someone-else, the pod's tenant is acme"}
        # the pod's tenant: accepted and printed, masked
        status, answer = await post_json(ports["http"], PAYMENT.read_bytes().replace(b"someone-else", b"acme"))
        assert (status, answer) == (200, {})
        for _ in range(100):  # printed once its batch is sent (exporter.batch_timeout, 0.2 s)
            if stdout.stat().st_size:
                break
            await asyncio.sleep(0.1)
        [span] = forwarded_spans(stdout)
        attributes = {a["key"]: a["value"] for a in span["attributes"]}
        assert span["name"] == MASKED_NAME
        assert "payment.card.cvv" not in attributes
        assert HASHED.fullmatch(attributes["card.holder"]["stringValue"])
        assert attributes["db.statement"]["stringValue"] == MASKED_STATEMENT
    finally:
        await sidecar.stop()
    assert_no_card_number(stdout.read_text() + sidecar.stderr)


async def test_make_run_with_a_config_file_takes_the_file_s_policy_dir(tmp_path: Path) -> None:
    policies = shutil.copytree(REPO / "policies", tmp_path / "my-policies")
    config = tmp_path / "sidecar.toml"
    config.write_text(f'[policy]\ndir = "{policies}"\n', encoding="utf-8")
    stdout = tmp_path / "stdout.jsonl"
    sidecar = started()
    try:
        ports = await sidecar.run(f"CONFIG={config}", stdout=stdout)
        assert (await get_json(ports["admin"], "/policy"))["dir"] == str(policies)
        status, _ = await post_json(ports["http"], PAYMENT.read_bytes().replace(b"someone-else", b"acme"))
        assert status == 200
    finally:
        await sidecar.stop()
    assert_no_card_number(stdout.read_text() + sidecar.stderr)
