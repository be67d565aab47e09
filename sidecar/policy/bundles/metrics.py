"""Metrics of the bundle sources (prefix ``otlp_sidecar_policy_bundle_``).

Labels are the configured bundle names, outcomes, and the live revision (from the verified
manifest, made label-safe); never a telemetry value.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from sidecar.metrickit import PREFIX, Kind, Label, declare
from sidecar.policy.metrics import safe_label

COMPONENT = "sidecar.policy.bundles"
POLL_RESULTS = ("updated", "not_modified", "failed", "refused")
_WITH_BUNDLES = "with policy bundles (policy.bundles), for each configured bundle"
BUNDLE = Label("bundle", closed=False, description="the configured bundle names")

INFO = declare(
    f"{PREFIX}_policy_bundle_info", Kind.gauge, "1", "The live revision of each bundle: 1 for it.",
    component=COMPONENT,
    labels=(BUNDLE, Label("revision", closed=False, description="from the verified manifest, made label-safe")),
    appears=_WITH_BUNDLES,
)
POLLS = declare(
    f"{PREFIX}_policy_bundle_polls", Kind.counter, "{polls}",
    "Bundle polls by result: updated (a new bundle went live or was already live), not_modified "
    "(HTTP 304 or unchanged file), failed (download error), refused (bad, unsigned or tampered).",
    component=COMPONENT, labels=(BUNDLE, Label("result", POLL_RESULTS, every=False)), appears=_WITH_BUNDLES,
)
DOWNLOADED = declare(
    f"{PREFIX}_policy_bundle_downloaded_bytes", Kind.counter, "By", "Bundle bytes downloaded (bodies of HTTP 200).",
    component=COMPONENT, labels=(BUNDLE,), appears=_WITH_BUNDLES + ", at its first download",
)
LAST_SUCCESS = declare(
    f"{PREFIX}_policy_bundle_last_success_timestamp_seconds", Kind.gauge, "s",
    "When a poll of the bundle last succeeded (200 or 304; Unix time).", component=COMPONENT, labels=(BUNDLE,),
    appears=_WITH_BUNDLES,
)


class BundleMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.info = INFO.gauge(registry)
        self.polls = POLLS.counter(registry)
        self.downloaded = DOWNLOADED.counter(registry)
        self.last_success = LAST_SUCCESS.gauge(registry)
        self._live: dict[str, str] = {}

    def set_revision(self, bundle: str, revision: str) -> None:
        label = safe_label(revision) or "-"
        old = self._live.get(bundle)
        if old == label:
            return
        if old is not None:
            self.info.remove(bundle, old)
        self.info.labels(bundle, label).set(1)
        self._live[bundle] = label
