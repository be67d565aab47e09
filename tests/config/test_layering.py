"""Components own their config: each component's config module imports alone, without the
top-level composition (sidecar.config), so no import cycle can form between them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

COMPONENT_CONFIGS = [
    "sidecar.receivers.config",
    "sidecar.admin.config",
    "sidecar.export.config",
    "sidecar.tls.config",
    "sidecar.overload.config",
    "sidecar.policy.config",
    "sidecar.webhook.config",
]

PROBE = """
import importlib, sys
module = importlib.import_module(sys.argv[1])
print(sorted(name for name in sys.modules if name == "sidecar.config" or name.startswith("aiohttp")))
"""


@pytest.mark.parametrize("module", COMPONENT_CONFIGS)
def test_component_config_imports_without_the_composition(module: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, module], capture_output=True, text=True, timeout=60, check=False, cwd=REPO
    )
    assert done.returncode == 0, done.stderr
    # neither the top-level config nor the network code (the exporter's auth) comes with it
    assert done.stdout.strip() == "[]"


def test_the_composition_imports_the_components() -> None:
    import sidecar.config as composed

    for module in COMPONENT_CONFIGS[:-1]:  # the webhook is its own program
        assert module in sys.modules
    assert composed.ReceiversConfig.__module__ == "sidecar.receivers.config"
    assert composed.ExporterConfig.__module__ == "sidecar.export.config"
