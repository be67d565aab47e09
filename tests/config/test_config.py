"""Configuration: file, OTEL_* and SIDECAR_* precedence; every invalid value names its key."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sidecar import config as config_mod
from sidecar.config import ConfigError, load
from sidecar.signals import Signal

TESTDATA = Path(__file__).resolve().parent / "testdata"
VALID_FULL = TESTDATA / "top" / "valid_full.toml"
INVALID = TESTDATA / "exporter" / "invalid"
REPO = Path(__file__).resolve().parents[2]

# every invalid file of every component, with its exact message: test_testdata.py


def test_defaults_are_the_contract() -> None:
    cfg = load(None, env={})
    assert cfg.receivers.grpc_endpoint == "127.0.0.1:4317"
    assert cfg.receivers.http_endpoint == "127.0.0.1:4318"
    assert cfg.admin.endpoint == "127.0.0.1:13133"
    assert cfg.exporter.resolved_type == "debug"  # no upstream: the embedded default


def test_full_file() -> None:
    cfg = load(VALID_FULL, env={})
    assert cfg.receivers.max_request_bytes == 8 * 1024 * 1024
    assert cfg.exporter.timeout == 5.0
    assert cfg.exporter.batch_timeout == pytest.approx(0.1)
    assert cfg.exporter.headers == {"x-scope-orgid": "acme"}
    assert cfg.exporter.resolved_type == "otlp"
    assert cfg.exporter.url_for(Signal.TRACES) == "https://collector.observability:4317"
    assert cfg.log.format == "json"


def test_precedence_file_then_otel_then_sidecar() -> None:
    path = VALID_FULL
    env = {"OTEL_EXPORTER_OTLP_COMPRESSION": "zstd", "OTEL_EXPORTER_OTLP_TIMEOUT": "2500"}
    cfg = load(path, env=env)
    assert cfg.exporter.compression == "zstd"  # OTEL_* over the file
    assert cfg.exporter.timeout == 2.5  # OTEL timeout is in milliseconds
    cfg = load(path, env={**env, "SIDECAR_EXPORTER_COMPRESSION": "none"})
    assert cfg.exporter.compression == "none"  # SIDECAR_* over OTEL_*
    cfg = load(path, env={"SIDECAR_GRPC_ENDPOINT": "127.0.0.1:5317"})
    assert cfg.receivers.grpc_endpoint == "127.0.0.1:5317"


def test_otel_http_endpoints() -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": "https://logs.example:443/custom/logs",
    }
    cfg = load(None, env=env)
    assert cfg.exporter.url_for(Signal.TRACES) == "http://collector:4318/v1/traces"
    assert cfg.exporter.url_for(Signal.LOGS) == "https://logs.example:443/custom/logs"
    # the https:// logs endpoint needs TLS, so the exporter is not insecure; http:// is plaintext by its scheme
    assert not cfg.exporter.insecure
    del env["OTEL_EXPORTER_OTLP_LOGS_ENDPOINT"]
    assert load(None, env=env).exporter.insecure  # every endpoint http://: plaintext


def test_otel_headers_are_url_decoded_and_secret() -> None:
    from sidecar.configkit import redacted

    cfg = load(None, env={"OTEL_EXPORTER_OTLP_HEADERS": "api-key=s3cr%3Dt,x-tenant=a"})
    assert cfg.exporter.headers == {"api-key": "s3cr=t", "x-tenant": "a"}
    assert "s3cr" not in str(redacted(cfg))


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "exporter.protocol (from OTEL_EXPORTER_OTLP_PROTOCOL)"),
        ({"OTEL_EXPORTER_OTLP_TIMEOUT": "10s"}, "exporter.timeout (from OTEL_EXPORTER_OTLP_TIMEOUT)"),
        ({"OTEL_EXPORTER_OTLP_HEADERS": "novalue"}, "exporter.headers"),
        ({"SIDECAR_RECEIVERS_GRPC_ENABLED": "maybe"}, "receivers.grpc_enabled (from SIDECAR_RECEIVERS_GRPC_ENABLED)"),
        ({"SIDECAR_HTTP_ENDPOINT": "127.0.0.1:99999"}, "port must be between 0 and 65535"),
        ({"SIDECAR_EXPORTER_TYPE": "otlp"}, "exporter.endpoint: is required when exporter.type is 'otlp'"),
        ({"SIDECAR_EXPORTER_CONCURRENCY": "0"}, "exporter.concurrency"),
        ({"SIDECAR_EXPORTER_COMPRESSION_LEVEL": "20"}, "exporter.compression_level"),
    ],
)
def test_invalid_environment_names_the_key(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(None, env=env)
    assert message in str(info.value)


def test_docs_are_generated_from_the_code() -> None:
    """docs/configuration.md lists every key with its default; regenerate with `make docs`."""
    assert (REPO / "docs" / "configuration.md").read_text(encoding="utf-8") == config_mod.render_docs()


def test_docs_are_what_the_command_prints() -> None:
    """`make docs` writes `otlp-sidecar config docs` (the installed command) to docs/configuration.md."""
    cli = Path(sys.executable).parent / "otlp-sidecar"
    done = subprocess.run([str(cli), "config", "docs"], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout == (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    for section, _, _ in config_mod.SECTIONS:
        assert f"## `[{section}]`" in done.stdout


def test_config_check_command(tmp_path: Path) -> None:
    run = [sys.executable, "-m", "sidecar", "config", "check"]
    ok = subprocess.run([*run, str(VALID_FULL)], capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run(
        [*run, str(INVALID / "compression_not_a_choice.toml")], capture_output=True, text=True, check=False
    )
    assert bad.returncode == 1
    assert "exporter.compression" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_a_misspelled_variable_is_named_with_the_one_it_resembles(tmp_path: Path) -> None:
    """SIDECAR_EXPORTER_TIMOUT=3s was ignored without a word (a new user's walk): the default
    applied. Every SIDECAR_* variable no setting reads is now a warning at start and in
    `config check`, with the setting's variable when one is close; the value is not shown."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("SIDECAR_")}
    env |= {"SIDECAR_EXPORTER_TIMOUT": "3s", "SIDECAR_EXPORTER_TIMEOUT": "4s", "SIDECAR_SOMETHING_ELSE": "x1y2"}
    done = subprocess.run([sys.executable, "-m", "sidecar", "config", "check", str(VALID_FULL)],
                          capture_output=True, text=True, check=False, env=env)
    assert done.returncode == 0, done.stderr
    assert ("SIDECAR_EXPORTER_TIMOUT is set but no setting reads it: ignored (did you mean "
            "SIDECAR_EXPORTER_TIMEOUT?)") in done.stderr
    [other] = [line for line in done.stderr.splitlines() if "SIDECAR_SOMETHING_ELSE" in line]
    assert "is set but no setting reads it: ignored" in other and "did you mean" not in other
    assert "SIDECAR_EXPORTER_TIMEOUT is set" not in done.stderr and "x1y2" not in done.stderr
    # every variable the chart and the injector set is a setting's
    chart_env = {"SIDECAR_" + name for name in ("POD_NAME", "POD_NAMESPACE", "POD_UID", "NODE_NAME", "LOG_LEVEL",
                                                 "CLUSTER_NAME", "WORKLOAD_KIND", "WORKLOAD_NAME", "TENANT")}
    notices = config_mod.load(None, env=dict.fromkeys(chart_env, "x") | {"SIDECAR_LOG_LEVEL": "info"}).notices
    assert not [notice for notice in notices if "no setting reads it" in notice], notices


def test_a_command_whose_reader_goes_away_ends_quietly() -> None:
    """`otlp-sidecar config check --print | head` ended in a BrokenPipeError traceback (found in a
    new user's walk through the docs): now every command exits 141 (128 + SIGPIPE) as a C tool."""
    proc = subprocess.Popen([sys.executable, "-m", "sidecar", "config", "check", "--print", str(VALID_FULL)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before a line is written
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141, stderr
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr


def test_run_refuses_to_start_on_bad_config() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "sidecar", "run", "--config", str(INVALID / "timeout_not_a_duration.toml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "configuration error: exporter.timeout" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_per_signal_otel_variables() -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317",
        "OTEL_EXPORTER_OTLP_HEADERS": "x-team=core",
        "OTEL_EXPORTER_OTLP_LOGS_HEADERS": "x-team=logs",
        "OTEL_EXPORTER_OTLP_LOGS_COMPRESSION": "gzip",
        "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "1500",
    }
    cfg = load(None, env=env)
    assert cfg.exporter_for(Signal.METRICS).headers == {"x-team": "core"}
    assert cfg.exporter_for(Signal.LOGS).headers == {"x-team": "logs"}
    assert cfg.exporter_for(Signal.LOGS).compression == "gzip"
    assert cfg.exporter_for(Signal.METRICS).compression == "zstd"
    assert cfg.exporter_for(Signal.TRACES).timeout == 1.5
    assert cfg.exporter_for(Signal.TRACES).headers == {"x-team": "core"}
    with pytest.raises(ConfigError) as info:
        load(None, env={"OTEL_EXPORTER_OTLP_METRICS_COMPRESSION": "lz4"})
    assert "exporter.compression (from OTEL_EXPORTER_OTLP_METRICS_COMPRESSION)" in str(info.value)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("500ms", 0.5), ("5s", 5.0), ("2m", 120.0), (5, 5.0), (0.25, 0.25), ("1.5s", 1.5)],
)
def test_durations_take_units_and_a_bare_number_is_seconds(tmp_path: Path, value: object, seconds: float) -> None:
    path = tmp_path / "sidecar.toml"
    path.write_text(f"[exporter]\ntimeout = {value!r}\n".replace("'", '"'), encoding="utf-8")
    assert load(path, env={}).exporter.timeout == pytest.approx(seconds)


def test_a_bare_number_above_a_durations_largest_value_is_refused_with_a_hint() -> None:
    with pytest.raises(ConfigError) as info:
        load(None, env={"SIDECAR_EXPORTER_BATCH_TIMEOUT": "200"})
    assert "exporter.batch_timeout (from SIDECAR_EXPORTER_BATCH_TIMEOUT): must be at most 60 s, got 200 s" in str(
        info.value)
    assert "write '200ms' if you meant milliseconds" in str(info.value)
    # the docs say the unit and the bound
    assert "`timeout` (default = `10.0`; duration: `'500ms'`, `'5s'`, `'2m'`, or a bare number of seconds; " \
        "at most 300 s)" in config_mod.render_docs()


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "htp://collector:4317"},
         "exporter.endpoint (from OTEL_EXPORTER_OTLP_ENDPOINT)"),
        ({"OTEL_EXPORTER_OTLP_COMPRESSION": "brotli"}, "exporter.compression (from OTEL_EXPORTER_OTLP_COMPRESSION)"),
        ({"OTEL_EXPORTER_OTLP_INSECURE": "maybe"}, "exporter.insecure (from OTEL_EXPORTER_OTLP_INSECURE)"),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "htp://x"},
         "exporter.traces_endpoint (from OTEL_EXPORTER_OTLP_TRACES_ENDPOINT)"),
        ({"OTEL_EXPORTER_OTLP_LOGS_COMPRESSION": "brotli"},
         "exporter.compression (from OTEL_EXPORTER_OTLP_LOGS_COMPRESSION)"),
        # a SIDECAR_* variable the user set is named as set
        ({"OTEL_EXPORTER_OTLP_COMPRESSION": "gzip", "SIDECAR_EXPORTER_COMPRESSION": "brotli"},
         "exporter.compression (from SIDECAR_EXPORTER_COMPRESSION)"),
    ],
    ids=["endpoint", "compression", "insecure", "traces-endpoint", "logs-compression", "sidecar-variable"],
)
def test_an_error_names_the_variable_the_user_set(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(None, env=env)
    assert str(info.value).startswith(named + ":")


def test_no_upstream_is_said_at_start() -> None:
    """No endpoint: the debug exporter, and a notice (logged as a WARNING at start) that nothing
    is forwarded; none once an endpoint is set."""
    assert any("no upstream endpoint" in n and "nothing is forwarded" in n for n in load(None, env={}).notices)
    cfg = load(None, env={"OTEL_EXPORTER_OTLP_ENDPOINT": "https://collector:4317"})
    assert not any("no upstream endpoint" in n for n in cfg.notices)


def test_tls_files_for_a_plaintext_upstream_are_named_as_unused() -> None:
    """mTLS files with an http:// endpoint: not silently dropped (the start logs the notice)."""
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317",
           "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE": "/certs/client.crt",
           "OTEL_EXPORTER_OTLP_CLIENT_KEY": "/certs/client.key"}
    cfg = load(None, env=env)
    (notice,) = [n for n in cfg.notices if "not used" in n]
    assert "exporter.client_certificate (OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE)" in notice
    assert "exporter.client_key (OTEL_EXPORTER_OTLP_CLIENT_KEY)" in notice
    assert "http://" in notice
    env["OTEL_EXPORTER_OTLP_ENDPOINT"] = "https://collector:4317"
    assert not [n for n in load(None, env=env).notices if "not used" in n]


@pytest.mark.parametrize(
    ("env", "url", "insecure", "notice"),
    [
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4317"}, "https://collector:4317", False, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4317", "OTEL_EXPORTER_OTLP_INSECURE": "true"},
         "http://collector:4317", True, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "https://collector:4317", "OTEL_EXPORTER_OTLP_INSECURE": "true"},
         "https://collector:4317", False, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, "http://collector:4317", True, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "[fd00::1]:4317"}, "https://[fd00::1]:4317", False, False),
    ],
    ids=["host-port", "host-port-insecure", "https-insecure-ignored", "http", "ipv6-host-port"],
)
def test_insecure_as_the_otlp_spec_says(env: dict[str, str], url: str, insecure: bool, notice: bool) -> None:
    cfg = load(None, env=env)
    assert cfg.exporter.url_for(Signal.TRACES) == url
    assert cfg.exporter.insecure is insecure
    assert any("is ignored for https://collector:4317" in n for n in cfg.notices) is notice


@pytest.mark.parametrize(
    "env",
    [
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://localhost:4317"},
        {"OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": "http://127.0.0.2:4318/v1/logs",
         "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "https://10.0.0.5:4317", "SIDECAR_GRPC_ENDPOINT": "10.0.0.5:4317",
         "SIDECAR_RECEIVERS_TLS_ALLOW_PLAINTEXT_REMOTE": "true"},
    ],
    ids=["app-http", "localhost-grpc", "logs-only", "same-address"],
)
def test_an_upstream_on_the_sidecars_own_listener_is_refused(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as info:
        load(None, env=env)
    assert "it would export to itself forever" in str(info.value)


@pytest.mark.parametrize(
    "env",
    [
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4319"},  # another port on loopback: a local collector
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "SIDECAR_HTTP_ENDPOINT": "127.0.0.1:5318",
         "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "SIDECAR_RECEIVERS_HTTP_ENABLED": "false",
         "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
    ],
    ids=["other-port", "listener-moved", "listener-off"],
)
def test_a_loopback_upstream_that_is_not_a_listener_is_fine(env: dict[str, str]) -> None:
    assert load(None, env=env).exporter.resolved_type == "otlp"


def test_print_names_the_signals_of_their_own_settings() -> None:
    from sidecar.configkit import redacted

    cfg = load(None, env={"OTEL_EXPORTER_OTLP_TRACES_HEADERS": "x-key=s3cret", "OTEL_EXPORTER_OTLP_ENDPOINT": "c:4317"})
    printed = json.loads(json.dumps(redacted(cfg)))  # what `config check --print` prints
    assert printed["signal_exporters"]["traces"]["headers"] == "<redacted>"


def test_one_ceiling_holds_budget_and_queue() -> None:
    """The defaults fit under the ceiling; a larger queue fits once the ceiling is raised with it."""
    from sidecar.overload.config import FOOTPRINT_BYTES

    cfg = load(None, env={})
    held = FOOTPRINT_BYTES + cfg.limits.budget_bytes + cfg.exporter.queue_max_bytes
    assert held <= cfg.limits.max_memory_bytes == 128 * 1024 * 1024
    bigger = load(None, env={"SIDECAR_EXPORTER_QUEUE_MAX_BYTES": "64MiB", "SIDECAR_LIMITS_MAX_MEMORY_BYTES": "180MiB"})
    assert bigger.exporter.queue_max_bytes == 64 * 1024 * 1024


def test_with_tls_the_listeners_keep_fewer_connections_and_their_buffers_come_out_of_the_budget() -> None:
    """A TLS connection holds buffers outside the receive budget: each OTLP listener keeps
    limits.tls_max_connections, and 512 KiB for each of them is kept from the budget."""
    from sidecar.overload.config import LimitsConfig

    limits = LimitsConfig()
    plain = limits.connection_caps(4096)
    tls = limits.connection_caps(4096, tls=True)
    assert (tls["otlp_http"], tls["otlp_grpc"]) == (16, 16) and plain["otlp_http"] > 16
    assert tls["admin"] == plain["admin"]
    assert limits.budget_limit() == 40 * 1024 * 1024
    assert limits.budget_limit(tls=True) == 40 * 1024 * 1024 - 2 * 16 * 512 * 1024
    small = LimitsConfig(budget_bytes=8 * 1024 * 1024)
    assert small.budget_limit(tls=True) == 4 * 1024 * 1024  # at most half is kept


def test_a_key_at_the_top_level_is_named_with_its_section(tmp_path: Path) -> None:
    """`endpoint = ...` at the top of the file was "endpoint: unknown section" (a new user's walk):
    the message now says which tables have that key. A file that cannot be read is named as the
    config file, however it was given (`config check FILE` has no --config)."""
    path = tmp_path / "sidecar.toml"
    path.write_text('endpoint = "https://collector:4317"\n', encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        config_mod.load(path, env={})
    assert str(caught.value) == "endpoint: a key belongs in its section's table: write it under [exporter] or [admin]"
    path.write_text("[nosuch]\nx = 1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"^nosuch: unknown section; the sections are: admin, "):
        config_mod.load(path, env={})
    path.write_text("[exporter\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"^config file: {re.escape(str(path))} is not valid TOML"):
        config_mod.load(path, env={})
