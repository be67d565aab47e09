"""docs/metrics.md, generated from the metric declarations (``python -m sidecar.metrics_docs``).

The hand-written part (alerts, dashboard, how to read the series) is metrics_docs_head.md; the
tables after it come from :func:`sidecar.metrickit.catalogue`, so they cannot drift from what
the code creates.
"""

from __future__ import annotations

import sys
from pathlib import Path

from sidecar.metrickit import Label, Metric, catalogue

#: the section title of each component's metrics
TITLES = {
    "sidecar.receivers": "Receivers",
    "sidecar": "Process and processing",
    "sidecar.overload": "Overload (docs/limits.md)",
    "sidecar.policy": "Policy engine",
    "sidecar.policy.bundles": "Policy bundles (docs/bundles.md)",
    "sidecar.export": "Queue and exporter (docs/reliability.md)",
    "sidecar.tls": "TLS (docs/tls.md)",
    "sidecar.webhook": "Injection webhook (its own Deployment)",
}


def _label(label: Label) -> str:
    if not label.values:
        text = f"`{label.name}`"
    else:
        values = ", ".join(label.values)
        text = f"`{label.name}`: {values}" + ("" if label.closed else " ...")
    return text + (f" ({label.description})" if label.description else "")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _metric_table(metrics: list[Metric]) -> list[str]:
    lines = ["| metric | type | unit | labels | what |", "| --- | --- | --- | --- | --- |"]
    for metric in metrics:
        labels = "<br>".join(_cell(_label(label)) for label in metric.labels)
        what = metric.description + (f" {metric.note}" if metric.note else "")
        lines.append(f"| `{metric.exposed}` | {metric.kind.value} | `{metric.unit}` | {labels} | {_cell(what)} |")
    return lines


def _every_metric(metrics: list[Metric]) -> list[str]:
    lines = [
        "## Every metric",
        "",
        "Each metric as a scrape shows it (a counter's `_total`; a histogram's `_bucket`, `_sum`, `_count`),",
        "with its unit ([UCUM](https://ucum.org), as the Collector's `metadata.yaml`), its labels and their",
        "values (`...`: other values appear, e.g. an upstream's `http_502`).",
    ]
    for component, title in TITLES.items():
        group = [m for m in metrics if m.component == component]
        if group:
            lines += ["", f"### {title}", "", *_metric_table(group)]
    return lines


def _zero_series(metrics: list[Metric]) -> list[str]:
    lines = [
        "## Series at zero from the start",
        "",
        "| series | created at start for |",
        "| --- | --- |",
    ]
    later: list[str] = []
    for metric in metrics:
        if metric.appears:
            later.append(f"| `{metric.exposed}` | {_cell(metric.appears)} |")
            continue
        each = [f"every `{label.name}` ({', '.join(label.values)})" for label in metric.labels
                if label.every and label.values]
        some = [f"`{label.name}` as it applies" for label in metric.labels if not (label.every and label.values)]
        lines.append(f"| `{metric.exposed}` | {' x '.join(each + some) or 'one series'} |")
    later_head = ["", "Series that appear when they first apply:", "", "| series | appears |", "| --- | --- |"]
    return [*lines, *later_head, *later]


def _names(text: str) -> str:
    """The Collector's metric names in ``text`` as code (``otelcol_x, ..._y`` -> `` `otelcol_x`, `..._y` ``)."""
    return " ".join(
        f"`{word.rstrip(',')}`" + ("," if word.endswith(",") else "") if word.startswith(("otelcol_", "..._")) else word
        for word in text.split(" ")
    )


def _collector_names(metrics: list[Metric]) -> list[str]:
    lines = [
        "## The Collector's names",
        "",
        "| otlp-sidecar | Collector | differences |",
        "| --- | --- | --- |",
    ]
    for metric in metrics:
        if metric.collector:
            lines.append(
                f"| `{metric.exposed}` | {_cell(_names(metric.collector))} | {_cell(metric.collector_differences)} |"
            )
    return lines


def render_docs() -> str:
    """The text of docs/metrics.md."""
    head = (Path(__file__).parent / "metrics_docs_head.md").read_text(encoding="utf-8")
    metrics = catalogue()
    sections = [_every_metric(metrics), _zero_series(metrics), _collector_names(metrics)]
    return head.rstrip() + "\n\n" + "\n\n".join("\n".join(section) for section in sections) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render_docs())
