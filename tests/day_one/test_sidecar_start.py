"""Issue 15 at the sidecar's start, as a user meets it: `otlp-sidecar run` and `config check` as processes.

- the upstream's TLS as the OTLP spec says (INSECURE only for endpoints without a scheme);
- the loop guard: an upstream that is one of the sidecar's own listeners is refused at start;
- the start line names what the sidecar does; a start error is printed before "stopped";
- `config check` fails exactly where `run` fails, and `--print` survives every per-signal variable.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from sidecar.policy.source import BUNDLED_DIR
from sidecar.rewrite import IMPLEMENTATION
from tests.conftest import REPO
from tests.day_one import app
from tests.processes import SidecarProcess
from tests.tls.pki import PKI, make_pki
from tests.upstream import Upstream

LOOPBACK_LISTENERS = {
    "SIDECAR_GRPC_ENDPOINT": "127.0.0.1:0",
    "SIDECAR_HTTP_ENDPOINT": "127.0.0.1:0",
    "SIDECAR_ADMIN_ENDPOINT": "127.0.0.1:0",
    "SIDECAR_EXPORTER_BATCH_TIMEOUT": "50ms",
}


def sidecar(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``otlp-sidecar ARGS`` with only ``env`` (and PATH): what a container would run."""
    full = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "LANG": "C.UTF-8", **env}
    return subprocess.run([sys.executable, "-m", "sidecar", *args], env=full, capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, check=False)


def tls_server(pki: PKI) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    return context


# -- the upstream's TLS ------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("endpoint", "insecure", "tls", "notice"),
    [
        ("https://localhost:{port}", "true", True, True),   # the case: stays TLS, and says so
        ("localhost:{port}", "", True, False),              # no scheme: TLS by default
        ("localhost:{port}", "true", False, False),         # no scheme + INSECURE: plaintext
    ],
    ids=["https-with-insecure", "host-port", "host-port-insecure"],
)
async def test_insecure_applies_only_to_endpoints_without_a_scheme(
    tmp_path: Path, endpoint: str, insecure: str, tls: bool, notice: bool
) -> None:
    pki = make_pki(tmp_path)
    upstream = Upstream()
    # the upstream speaks only TLS, or only plaintext: the export arrives only over the right one
    await upstream.start(ssl=tls_server(pki) if tls else None)
    env = {
        **LOOPBACK_LISTENERS,
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint.format(port=upstream.grpc_port),
        "OTEL_EXPORTER_OTLP_CERTIFICATE": pki.ca_cert,
        "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip",
        "SIDECAR_TENANT": "acme",
    }
    if insecure:
        env["OTEL_EXPORTER_OTLP_INSECURE"] = insecure
    process = SidecarProcess(env)
    try:
        ports = await process.start()
        await _send(ports["http"])
        await upstream.wait_for(lambda: bool(upstream.spans()) and bool(upstream.log_records()), timeout=15)
    finally:
        code = await process.stop()
        await upstream.stop()
    assert code == 0, process.stderr
    start = next(line for line in process.stderr_lines if " up: " in line)
    scheme = "https" if tls else "http"
    mode = "TLS" if tls else "plaintext"
    assert f"upstream {scheme}://localhost:{upstream.grpc_port} (grpc, gzip, {mode})" in start, start
    assert ("is ignored for https://localhost" in process.stderr) is notice
    assert "tenant acme" in start and "policy bundled" in start and "mode enforce" in start
    if IMPLEMENTATION == "cython":
        assert "rewriter C (Cython)" in start
    assert app.surviving(json.dumps([str(r.message) for r in upstream.received]), list(app.CARDS)) == []


async def _send(port: int) -> None:
    await asyncio.to_thread(app.send, f"http://127.0.0.1:{port}", "http/protobuf", [])


# -- the loop guard ----------------------------------------------------------------------------

@pytest.mark.parametrize(
    "env",
    [
        # the case: the sidecar got the app's variables (its listeners are the defaults)
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "localhost:4317", "OTEL_EXPORTER_OTLP_INSECURE": "true"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://[::1]:4317"},
        {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://0.0.0.0:5318/v1/traces", "SIDECAR_HTTP_ENDPOINT": "0.0.0.0:5318",
         "SIDECAR_RECEIVERS_TLS_ALLOW_PLAINTEXT_REMOTE": "true", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
    ],
    ids=["app-endpoint", "host-port", "ipv6-loopback", "wildcard-listener"],
)
def test_an_upstream_that_is_the_sidecar_itself_is_refused_at_start(env: dict[str, str]) -> None:
    run = sidecar("run", env=env, timeout=30)
    assert run.returncode == 2, run.stderr
    assert "it would export to itself forever" in run.stderr
    assert "Traceback" not in run.stderr and " up: " not in run.stderr
    check = sidecar("config", "check", env=env)
    assert check.returncode == 1 and "it would export to itself forever" in check.stderr


# -- config check fails where run fails ------------------------------------------------------

def _docs_example() -> str:
    text = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    return re.search(r"Example:\n\n```toml\n(.*?)```", text, re.S).group(1)  # type: ignore[union-attr]


def _broken_policies(tmp_path: Path) -> Path:
    target = tmp_path / "policies"
    shutil.copytree(BUNDLED_DIR, target)
    (target / "extra.rego").write_text("package otlp_sidecar.extra\n\nallow if {\n", encoding="utf-8")
    return target


def _failing_policy_test(tmp_path: Path) -> Path:
    target = tmp_path / "policies-failing"
    shutil.copytree(BUNDLED_DIR, target)
    (target / "extra_test.rego").write_text(
        "package otlp_sidecar.extra_test\n\nimport rego.v1\n\ntest_fails if {\n\t1 == 2\n}\n", encoding="utf-8")
    return target


CASES = {
    "missing policy dir": (lambda tmp: {"SIDECAR_POLICY_DIR": str(tmp / "nope")}, "policy.dir"),
    "policy that does not compile": (lambda tmp: {"SIDECAR_POLICY_DIR": str(_broken_policies(tmp))}, "policy.dir"),
    "policy test that fails": (lambda tmp: {"SIDECAR_POLICY_DIR": str(_failing_policy_test(tmp))}, "policy.dir"),
    "missing hash key": (lambda tmp: {"SIDECAR_POLICY_HASH_KEY_FILE": str(tmp / "hmac.key")}, "policy.hash_key_file"),
    "docs example as is": (lambda tmp: {"config": _docs_example()}, "exporter.certificate"),
    "CA file that is not PEM": (
        lambda tmp: {"OTEL_EXPORTER_OTLP_ENDPOINT": "https://localhost:4999",
                     "OTEL_EXPORTER_OTLP_CERTIFICATE": str(_write(tmp / "ca.crt", "not a certificate"))},
        "exporter.certificate",
    ),
    "disk queue under a file": (
        lambda tmp: {"SIDECAR_EXPORTER_DISK_QUEUE_DIR": str(_write(tmp / "file", "x") / "queue")},
        "exporter.disk_queue_dir",
    ),
    "bare-number timeout": (lambda tmp: {"config": "[exporter]\ntimeout = 5000\n"}, "exporter.timeout"),
}


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("name", list(CASES))
def test_config_check_fails_where_run_fails(name: str, tmp_path: Path) -> None:
    make, key = CASES[name]
    env = {**LOOPBACK_LISTENERS, **make(tmp_path)}
    args: list[str] = []
    if "config" in env:
        path = _write(tmp_path / "sidecar.toml", env.pop("config"))
        args = [str(path)]
    check = sidecar("config", "check", *args, env=env)
    run = sidecar("run", *(["--config", *args] if args else []), env=env, timeout=60)
    assert check.returncode == 1, check.stdout + check.stderr
    assert run.returncode == 2, run.stderr
    assert f"invalid: {key}" in check.stderr, check.stderr
    assert f"configuration error: {key}" in run.stderr, run.stderr
    for output in (check.stderr, run.stderr):
        assert "Traceback" not in output
    # the reason comes before the sidecar says it stopped
    lines = run.stderr.splitlines()
    reason = next(i for i, line in enumerate(lines) if "configuration error" in line)
    stopped = [i for i, line in enumerate(lines) if "otlp-sidecar stopped" in line]
    assert all(reason < i for i in stopped), run.stderr


async def test_the_docs_example_with_its_files_checks_ok_and_runs(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    example = _docs_example()
    tls_dir = tmp_path / "tls"
    tls_dir.mkdir()
    for source, name in ((pki.ca_cert, "ca.crt"), (pki.client_cert, "tls.crt"), (pki.client_key, "tls.key")):
        shutil.copy(source, tls_dir / name)
    shutil.copytree(BUNDLED_DIR, tmp_path / "policies")
    config = _write(tmp_path / "sidecar.toml", example.replace("/etc/otlp-sidecar/", f"{tmp_path}/"))
    check = sidecar("config", "check", str(config), env=LOOPBACK_LISTENERS)
    assert check.returncode == 0, check.stderr
    assert "`otlp-sidecar run` would start" in check.stdout

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sidecar", "run", "--config", str(config),
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", **LOOPBACK_LISTENERS}, cwd=REPO,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    try:
        async with asyncio.timeout(30):
            while True:
                line = (await proc.stderr.readline()).decode()
                assert line, "run exited where config check said it would start"
                if " up: " in line:
                    break
        assert "otel-collector.observability:4317 (grpc, zstd, mTLS)" in line
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)


# -- config check --print, and `config` alone --------------------------------------------------

@pytest.mark.parametrize(
    "suffix", ["HEADERS", "COMPRESSION", "TIMEOUT", "PROTOCOL", "CERTIFICATE", "CLIENT_CERTIFICATE", "INSECURE"],
)
def test_config_check_print_takes_every_per_signal_variable(suffix: str, tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    value = {
        "HEADERS": "x-api-key=s3cret", "COMPRESSION": "gzip", "TIMEOUT": "2500", "PROTOCOL": "http/protobuf",
        "CERTIFICATE": pki.ca_cert, "CLIENT_CERTIFICATE": pki.client_cert, "INSECURE": "true",
    }[suffix]
    env = {**LOOPBACK_LISTENERS, "OTEL_EXPORTER_OTLP_ENDPOINT": "https://collector.example:4317"}
    for signal_name in ("TRACES", "METRICS", "LOGS"):
        env[f"OTEL_EXPORTER_OTLP_{signal_name}_{suffix}"] = value
        if suffix == "CLIENT_CERTIFICATE":
            env[f"OTEL_EXPORTER_OTLP_{signal_name}_CLIENT_KEY"] = pki.client_key
    check = sidecar("config", "check", "--print", env=env)
    assert check.returncode == 0, check.stderr
    assert "Traceback" not in check.stderr
    printed = json.loads(check.stdout.split("\n", 1)[1])
    assert sorted(printed["signal_exporters"]) == ["logs", "metrics", "traces"]
    assert "s3cret" not in check.stdout  # headers are secret
    if suffix == "TIMEOUT":
        assert printed["signal_exporters"]["traces"]["timeout"] == 2.5  # milliseconds, as the spec says


def test_config_alone_prints_its_help() -> None:
    done = sidecar("config", env={})
    assert done.returncode == 2
    assert "usage: otlp-sidecar config" in done.stderr and "check" in done.stderr and "docs" in done.stderr


@pytest.mark.parametrize(
    ("mode", "says"),
    [
        ("passthrough", "policy NONE (policy.mode passthrough: card numbers forwarded UNMASKED)"),
        ("dry_run", "mode dry_run (card numbers NOT masked)"),
    ],
)
async def test_a_mode_that_does_not_mask_is_loud_in_the_start_line(mode: str, says: str) -> None:
    process = SidecarProcess({**LOOPBACK_LISTENERS, "SIDECAR_POLICY_MODE": mode})
    try:
        await process.start()
    finally:
        code = await process.stop()
    assert code == 0, process.stderr
    start = next(line for line in process.stderr_lines if " up: " in line)
    assert " WARNING " in start and says in start, start


@pytest.mark.parametrize("setting", ["receivers.http_endpoint", "receivers.grpc_endpoint", "admin.endpoint"])
def test_a_port_in_use_names_the_setting_and_the_address(setting: str) -> None:
    """Another process holds the port: the error names the setting and the address, not only errno."""
    import socket

    variable = {"receivers.http_endpoint": "SIDECAR_HTTP_ENDPOINT", "receivers.grpc_endpoint": "SIDECAR_GRPC_ENDPOINT",
                "admin.endpoint": "SIDECAR_ADMIN_ENDPOINT"}[setting]
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        address = f"127.0.0.1:{held.getsockname()[1]}"
        run = sidecar("run", env={**LOOPBACK_LISTENERS, "SIDECAR_POLICY_MODE": "passthrough", variable: address})
    # not a "configuration error": the setting may be right and another process in the way
    assert run.returncode == 1, run.stderr
    assert f"otlp-sidecar: cannot start: {setting}: cannot listen on {address}: Address already in use" in (
        run.stderr), run.stderr
    assert "configuration error" not in run.stderr
    assert "Traceback" not in run.stderr
