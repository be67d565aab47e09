"""Metrics of the bundle sources (prefix ``otlp_sidecar_policy_bundle_``).

Labels are the configured bundle names, outcomes, and the live revision (from the verified
manifest, made label-safe); never a telemetry value.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from sidecar.policy.metrics import safe_label

POLL_RESULTS = ("updated", "not_modified", "failed", "refused")


class BundleMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.info = Gauge(
            "otlp_sidecar_policy_bundle_info", "The live revision of each bundle: 1 for it.",
            ["bundle", "revision"], registry=registry,
        )
        self.polls = Counter(
            "otlp_sidecar_policy_bundle_polls",
            "Bundle polls by result: updated (a new bundle went live or was already live), not_modified "
            "(HTTP 304 or unchanged file), failed (download error), refused (bad, unsigned or tampered).",
            ["bundle", "result"], registry=registry,
        )
        self.downloaded = Counter(
            "otlp_sidecar_policy_bundle_downloaded_bytes", "Bundle bytes downloaded (bodies of HTTP 200).",
            ["bundle"], registry=registry,
        )
        self.last_success = Gauge(
            "otlp_sidecar_policy_bundle_last_success_timestamp_seconds",
            "When a poll of the bundle last succeeded (200 or 304; Unix time).", ["bundle"], registry=registry,
        )
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
