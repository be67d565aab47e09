"""``policy diff OLD NEW`` and ``policy explain | head``, run as a policy author would (child processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from sidecar.rewrite._py import find_pans
from tests.policy.conftest import HASH_KEY, POLICIES, REPO

ENV = {**os.environ, "PYTHONPATH": str(REPO), "SIDECAR_TENANT": "acme"}
ENV.pop("SIDECAR_POLICY_DIR", None)


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sidecar", "policy", *args], capture_output=True, text=True,
                          env=ENV, cwd=REPO, timeout=180, check=False)


def luhn(body: str) -> str:
    total = 0
    for index, char in enumerate(reversed(body)):
        value = int(char) * (2 if index % 2 == 0 else 1)
        total += value - 9 if value > 9 else value
    return body + str((10 - total % 10) % 10)


def edited(policy_dir: Path, **changes: dict[str, object]) -> Path:
    data_file = policy_dir / "data.json"
    data = json.loads(data_file.read_text())
    for section, values in changes.items():
        data["otlp_sidecar"]["config"][section].update(values)
    data_file.write_text(json.dumps(data))
    return policy_dir


def test_the_same_set_changes_nothing() -> None:
    done = run("diff", str(POLICIES), str(POLICIES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "built-in: PCI probe traces" in done.stdout and "built-in: shop trace (sampling), traces: no change" \
        in done.stdout
    assert "(changed)" not in done.stdout


def test_diff_shows_masked_dropped_and_sampled_on_the_builtin_sample(policy_dir: Path) -> None:
    new = edited(policy_dir, pci={"card_number_action": "drop"}, sampling={"ratio": 1})
    done = run("diff", str(POLICIES), str(new))
    assert done.returncode == 1, done.stdout + done.stderr
    out = done.stdout
    lines = out.splitlines()
    assert any(x.startswith("  + scopeSpans[0].spans[0] ") and x.endswith(".attributes['card_number']: dropped")
               for x in lines)
    assert any(x.startswith("  - scopeSpans[0].spans[0] ") and ".attributes['card_number']: changed to" in x
               for x in lines)
    assert "  - scopeSpans[0].spans[5]: sampled out" in lines
    assert "  items sampled out: 21 -> 0  (changed)" in out
    assert "  rule pci.card_number drop: 0 -> " in out and "  rule pci.card_number mask_pan: " in out
    assert not find_pans(out.encode())  # the probe's card numbers are masked in every line


def test_diff_shows_refusals_on_a_recorded_protobuf_sample(policy_dir: Path, tmp_path: Path) -> None:
    new = edited(policy_dir, tenant={"require_tenant": True})
    card = luhn("411111111111111")
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.add(key="service.name", value=AnyValue(string_value="checkout"))
    span = resource_spans.scope_spans.add().spans.add(trace_id=bytes(range(16)), span_id=bytes(range(8)),
                                                      name=f"pay {card}")
    span.status.code = 2
    span.attributes.add(key="note", value=AnyValue(string_value=f"card {card}"))
    sample = tmp_path / "capture.pb"
    sample.write_bytes(request.SerializeToString())
    env_without_tenant = {k: v for k, v in ENV.items() if k != "SIDECAR_TENANT"}
    done = subprocess.run(
        [sys.executable, "-m", "sidecar", "policy", "diff", str(POLICIES), str(new), str(sample), "--show-values"],
        capture_output=True, text=True, env=env_without_tenant, cwd=REPO, timeout=180, check=False,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "+ refused by tenant.missing" in done.stdout or "+ refused by tenant" in done.stdout
    assert "resources refused: 0 -> 1  (changed)" in done.stdout
    assert card not in done.stdout  # even with --show-values


def test_diff_with_a_hash_key_and_bad_input(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_bytes(HASH_KEY)
    junk = tmp_path / "junk.pb"
    junk.write_bytes(b"\xff\xff\xff")
    done = run("diff", str(POLICIES), str(POLICIES), str(junk), "--hash-key-file", str(key))
    assert done.returncode == 2
    assert "neither OTLP/JSON nor a protobuf traces export request" in done.stderr
    assert "Traceback" not in done.stderr
    missing = run("diff", str(POLICIES), str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "Traceback" not in missing.stderr


def test_explain_into_head_ends_without_a_traceback(tmp_path: Path) -> None:
    """Issue 17: `policy explain | head` ended in BrokenPipeError."""
    spans = [{"traceId": f"{n + 1:032x}", "spanId": f"{n + 1:016x}", "name": f"span {n}",
              "attributes": [{"key": "payment.card.cvv", "value": {"stringValue": "123"}}]} for n in range(3000)]
    capture = tmp_path / "capture.json"
    capture.write_text(json.dumps({"resourceSpans": [{"resource": {}, "scopeSpans": [{"spans": spans}]}]}))
    command = f"{sys.executable} -m sidecar policy explain {capture} --dir {POLICIES} | head -2"
    done = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True, env=ENV,
                          cwd=REPO, timeout=180, check=False)
    assert len(done.stdout.splitlines()) == 2 and done.stdout.startswith("policy version ")
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr, done.stderr
    assert done.returncode == 141  # 128 + SIGPIPE, as a C tool killed by it (with pipefail)
    whole = run("explain", str(capture), "--dir", str(POLICIES))
    assert whole.returncode == 0 and len(whole.stdout) > 65536  # more than a pipe buffer: head cut it


def test_eval_and_diff_into_head_end_without_a_traceback() -> None:
    for args in (f'eval "numbers.range(1, 30000)" -d {POLICIES}', f"diff {POLICIES} {POLICIES}"):
        command = f"{sys.executable} -m sidecar policy {args} | head -1"
        done = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True, env=ENV,
                              cwd=REPO, timeout=180, check=False)
        assert len(done.stdout.splitlines()) == 1, args
        assert "Traceback" not in done.stderr, done.stderr
        assert done.returncode in (0, 141), args  # 141 when the output outran the pipe buffer
