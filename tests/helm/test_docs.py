"""docs/kubernetes.md documents every chart value and embeds the webhook's settings reference."""

from __future__ import annotations

import yaml

from sidecar.webhook.config import render_docs
from tests.helm.checks import leaf_paths
from tests.helm.conftest import CHART_DIR, REPO

DOC = REPO / "docs" / "kubernetes.md"


def test_every_value_is_documented() -> None:
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text(encoding="utf-8"))
    lines = DOC.read_text(encoding="utf-8").splitlines()
    missing = []
    for path in leaf_paths(values):
        parent, _, leaf = path.rpartition(".")
        if not any(
            f"`{path}`" in line or (parent and f"`{parent}." in line and f"`.{leaf}`" in line) for line in lines
        ):
            missing.append(path)
    assert missing == [], f"values not documented in docs/kubernetes.md: {missing}"


def test_webhook_settings_reference_is_current() -> None:
    text = DOC.read_text(encoding="utf-8")
    start = text.index("<!-- generated: otlp-sidecar webhook config-docs -->\n") + len(
        "<!-- generated: otlp-sidecar webhook config-docs -->\n"
    )
    end = text.index("<!-- end generated -->")
    assert text[start:end] == render_docs(), "regenerate the section with: otlp-sidecar webhook config-docs"
