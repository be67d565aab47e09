"""Every component's testdata: each invalid file fails with its exact message, each valid file
loads to the component's factory defaults.

Layout (as the Collector keeps ``testdata/`` per component): ``testdata/<component>/valid.toml``
spells out every key of the component at its default; ``testdata/<component>/invalid/*.toml`` are
one mistake each, headed by ``# expected_error: <the whole message>`` (``{path}`` stands for the
file) and optional ``# env: NAME=value`` lines (the environment the loader sees, nothing else).
They go through the loader ``otlp-sidecar run --config`` uses (``otlp-sidecar webhook serve
--config`` for ``webhook/``); a few also through the installed command line.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sidecar import config as config_mod
from sidecar.configkit import ConfigError
from sidecar.webhook.config import InjectionConfig, ServerConfig, load_webhook_config

TESTDATA = Path(__file__).resolve().parent / "testdata"
CLI = Path(sys.executable).parent / "otlp-sidecar"

#: testdata dir -> the TOML sections it covers (every component of the sidecar and the webhook)
COMPONENTS: dict[str, tuple[str, ...]] = {
    "receivers": ("receivers",),
    "receivers_tls": ("receivers_tls",),
    "exporter": ("exporter",),
    "exporter_tls": ("exporter_tls",),
    "auth": ("auth",),
    "policy": ("policy",),
    "limits": ("limits",),
    "admin": ("admin",),
    "top": ("pod", "log"),
    "webhook": ("webhook", "injection"),
}
WEBHOOK_SECTIONS = {"webhook": ServerConfig, "injection": InjectionConfig}


@dataclass(frozen=True)
class Case:
    path: Path
    expected: str
    env: dict[str, str]

    @property
    def component(self) -> str:
        return self.path.parent.parent.name

    @property
    def message(self) -> str:
        return self.expected.replace("{path}", str(self.path))


def read_case(path: Path) -> Case:
    expected, env = "", {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# expected_error: "):
            expected = line.removeprefix("# expected_error: ")
        elif line.startswith("# env: "):
            name, _, value = line.removeprefix("# env: ").partition("=")
            env[name] = value
    assert expected, f"{path} has no '# expected_error:' line"
    return Case(path, expected, env)


CASES = [read_case(p) for p in sorted(TESTDATA.glob("*/invalid/*.toml"))]


def load_any(case: Case) -> object:
    if case.component == "webhook":
        return load_webhook_config(case.path, env=case.env)
    return config_mod.load(case.path, env=case.env)


def test_every_component_has_valid_and_invalid_testdata() -> None:
    assert {p.name for p in TESTDATA.iterdir() if p.is_dir()} == set(COMPONENTS)
    for component in COMPONENTS:
        assert (TESTDATA / component / "valid.toml").is_file(), component
        assert len(list((TESTDATA / component / "invalid").glob("*.toml"))) >= 3, component


@pytest.mark.parametrize("case", CASES, ids=[f"{c.component}/{c.path.stem}" for c in CASES])
def test_invalid_config_fails_with_its_exact_message(case: Case) -> None:
    with pytest.raises(ConfigError) as info:
        load_any(case)
    assert str(info.value) == case.message


def _sidecar_sections(data: dict[str, Any]) -> dict[str, type[Any]]:
    classes = {name: cls for name, cls, _ in config_mod.SECTIONS}
    return {name: classes[name] for name in data}


@pytest.mark.parametrize("component", sorted(COMPONENTS))
def test_valid_file_spells_every_key_and_loads_to_the_factory_defaults(component: str) -> None:
    path = TESTDATA / component / "valid.toml"
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    assert set(data) == set(COMPONENTS[component])
    classes = WEBHOOK_SECTIONS if component == "webhook" else _sidecar_sections(data)
    for section, cls in classes.items():
        # every key is there: a new key needs its line (and its default spelled in TOML)
        assert set(data[section]) == {f.name for f in dataclasses.fields(cls)}, section
    if component == "webhook":
        hook = load_webhook_config(path, env={})
        assert (hook.server, hook.injection, hook.policy_sets) == (ServerConfig(), InjectionConfig(), {})
        return
    loaded = config_mod.load(path, env={})
    defaults = config_mod.load(None, env={})
    assert loaded == dataclasses.replace(defaults, source=str(path))
    for section, cls in classes.items():
        assert getattr(loaded, section) == cls(), section


def _clean_env(tmp_path: Path) -> dict[str, str]:
    """The test's environment without any OTEL_* / SIDECAR_* variable (they would change the outcome)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "SIDECAR_"))}
    env["HOME"] = str(tmp_path)
    return env


#: (testdata file, command line before the file, exit code, stderr prefix of the message)
CLI_CASES = [
    ("exporter/invalid/compression_not_a_choice.toml", ["run", "--config"], 2, "otlp-sidecar: configuration error: "),
    ("receivers/invalid/inflight_below_request.toml", ["run", "--config"], 2, "otlp-sidecar: configuration error: "),
    ("policy/invalid/bundles_same_name.toml", ["run", "--config"], 2, "otlp-sidecar: configuration error: "),
    ("limits/invalid/memory_ceiling_too_low.toml", ["config", "check"], 1, "invalid: "),
    ("receivers_tls/invalid/cert_without_key.toml", ["config", "check"], 1, "invalid: "),
    ("top/invalid/not_toml.toml", ["run", "--config"], 2, "otlp-sidecar: configuration error: "),
    ("webhook/invalid/ports_not_distinct.toml", ["webhook", "serve", "--config"], 2,
     "otlp-sidecar webhook: configuration error: "),
]


@pytest.mark.parametrize(("name", "command", "code", "prefix"), CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_the_command_line_refuses_with_the_message_and_no_traceback(
    tmp_path: Path, name: str, command: list[str], code: int, prefix: str
) -> None:
    case = read_case(TESTDATA / name)
    assert not case.env, "CLI cases take their whole input from the file"
    done = subprocess.run(
        [str(CLI), *command, str(case.path)], capture_output=True, text=True, timeout=60, check=False,
        env=_clean_env(tmp_path), cwd=tmp_path,
    )
    assert done.returncode == code, done.stderr
    assert prefix + case.message in done.stderr.splitlines()
    assert "Traceback" not in done.stderr
    assert done.stdout == ""
