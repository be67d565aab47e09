"""Render the chart with the real Helm engine (helm-python-sdk bundles Helm's Go library)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "helm" / "otlp-sidecar"
RELEASE = "obs"
NAMESPACE = "observability"

#: kinds that are CRDs (prometheus-operator, cert-manager): not in the Kubernetes schemas
CRD_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule", "Certificate", "Issuer"}


class Rendered(list):  # type: ignore[type-arg]
    """The rendered objects, with finders."""

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self if o["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [o for o in self.of_kind(kind) if name is None or o["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
        return found[0]


def render_chart(
    chart: helm_python.Chart, values: dict[str, Any] | None = None, *, namespace: str = NAMESPACE, **options: Any
) -> Rendered:
    manifests = chart.render(values or {}, name=RELEASE, namespace=namespace, **options)
    objects = Rendered()
    for path, text in sorted(manifests.items()):
        if not path.endswith((".yaml", ".yml")):
            continue
        for document in yaml.safe_load_all(text):
            if document:
                objects.append(document)
    return objects


def chart_answering_lookup(tmp_path: Path, template: str, lookup: str, replacement: str, key: str) -> Path:
    """A copy of the chart whose one ``lookup`` call in ``template`` is replaced by ``replacement``
    (what the cluster would answer, read from ``.Values.<key>``): offline rendering answers
    ``lookup`` with nothing. ``key`` is declared in the copy's schema, which refuses unknown keys."""
    copy = tmp_path / CHART_DIR.name
    shutil.copytree(CHART_DIR, copy)
    path = copy / "templates" / template
    text = path.read_text(encoding="utf-8")
    assert text.count(lookup) == 1
    path.write_text(text.replace(lookup, replacement), encoding="utf-8")
    schema_path = copy / "values.schema.json"
    schema = json.loads(schema_path.read_text(encoding="utf-8"))
    schema["properties"][key] = {"type": "object"}
    schema_path.write_text(json.dumps(schema), encoding="utf-8")
    return copy


@pytest.fixture(scope="session")
def chart() -> Iterator[helm_python.Chart]:
    with helm_python.Chart.load(CHART_DIR) as loaded:
        yield loaded


@pytest.fixture
def render(chart: helm_python.Chart):
    def _render(values: dict[str, Any] | None = None, **options: Any) -> Rendered:
        return render_chart(chart, values, **options)

    return _render
