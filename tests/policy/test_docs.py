"""docs/policy.md stays in step with the code: config keys, metrics, decision keys."""

from __future__ import annotations

import prometheus_client

from sidecar.policy import config_docs
from sidecar.policy.decision import PART_KEYS
from sidecar.policy.metrics import PolicyMetrics
from tests.policy.conftest import REPO

DOC = (REPO / "docs" / "policy.md").read_text(encoding="utf-8")


def test_config_section_is_generated_from_the_code() -> None:
    assert config_docs.rewrite(DOC) == DOC, "regenerate the config section of docs/policy.md: make docs"


def test_every_metric_is_documented() -> None:
    registry = prometheus_client.CollectorRegistry()
    PolicyMetrics(registry)
    for metric in registry.collect():
        name = metric.name + ("_total" if metric.type == "counter" else "")
        assert f"`{name}`" in DOC, name


def test_every_decision_key_is_documented() -> None:
    for key in PART_KEYS:
        assert f"`{key}`" in DOC, key
