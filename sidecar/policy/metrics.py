"""The policy engine's metrics (all on the registry the service is given).

No label ever carries a value from telemetry: labels are the policy version,
the back-end, outcomes, the signal, and the policies' own rule ids and actions.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LABEL_SAFE = re.compile(r"[^A-Za-z0-9_.:/-]")


def safe_label(value: str) -> str:
    """A rule id or action as a label: limited characters and length."""
    return _LABEL_SAFE.sub("_", value)[:80]


class PolicyMetrics:
    """Every metric of the policy engine (prefix ``otlp_sidecar_policy_``)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.info = Gauge(
            "otlp_sidecar_policy_info", "The active policy set: 1 for its version and back-end.",
            ["version", "backend"], registry=registry,
        )
        self.loaded_timestamp = Gauge(
            "otlp_sidecar_policy_loaded_timestamp_seconds",
            "When the active policy set went live (Unix time).", registry=registry,
        )
        self.reloads = Counter(
            "otlp_sidecar_policy_reloads", "Policy set loads by result (ok, failed).",
            ["result"], registry=registry,
        )
        for result in ("ok", "failed"):  # at zero from the start: the reload alert sees the first failure
            self.reloads.labels(result)
        self.cache = Counter(
            "otlp_sidecar_policy_decision_cache", "Plan cache lookups by result (hit, miss).",
            ["result"], registry=registry,
        )
        self.decision_seconds = Histogram(
            "otlp_sidecar_policy_decision_seconds",
            "Time to evaluate the policies for one resource and compile the plan (cache misses).",
            ["backend"], registry=registry,
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
        )
        self.errors = Counter(
            "otlp_sidecar_policy_decision_errors",
            "Decisions the engine could not make, by what was done instead "
            "(refused, last_good, strict).",
            ["fallback"], registry=registry,
        )
        self.rule_actions = Counter(
            "otlp_sidecar_policy_rule_actions",
            "What the rules did, from the rewriter's counts: values masked, attributes dropped "
            "or hashed, resources refused, spans sampled out... by signal, rule id and action.",
            ["signal", "rule_id", "action"], registry=registry,
        )
        self.dry_run = Gauge(
            "otlp_sidecar_policy_dry_run", "1 when decisions are counted but data is left unchanged.",
            registry=registry,
        )
        self.mode = Gauge(
            "otlp_sidecar_policy_mode",
            "1 for the policy mode in force (enforce, dry_run, passthrough); only `enforce` masks "
            "card numbers.",
            ["mode"], registry=registry,
        )
        self.exemptions = Gauge(
            "otlp_sidecar_policy_exemptions",
            "Attribute keys the active policy set exempts from card-number masking, by rule id "
            "(each use is counted in otlp_sidecar_policy_rule_actions with action `keep`).",
            ["rule_id"], registry=registry,
        )
        self.cache_entries = Gauge(
            "otlp_sidecar_policy_cache_entries",
            "Entries held by the plan caches (cache: plans, last_good).", ["cache"], registry=registry,
        )
        self.cache_plans = Gauge(
            "otlp_sidecar_policy_cache_distinct_plans",
            "Distinct plans held by the plan caches (equal plans are held once).", ["cache"],
            registry=registry,
        )
        self.cache_bytes = Gauge(
            "otlp_sidecar_policy_cache_bytes",
            "Estimated memory held by the plan caches (bounded by the policy engine's cache bytes).",
            ["cache"], registry=registry,
        )
        self.cache_evictions = Counter(
            "otlp_sidecar_policy_cache_evictions",
            "Plans evicted from the plan caches, by why: entries (over policy.cache_size), bytes "
            "(over the cache's byte bound), ttl (remote back-end).",
            ["cache", "reason"], registry=registry,
        )
        self.evaluations_refused = Counter(
            "otlp_sidecar_policy_evaluations_refused",
            "New resources not evaluated because the policy engine was at its rate or burst; "
            "their requests got 503 / UNAVAILABLE with Retry-After.", registry=registry,
        )
        self.engine_pending = Gauge(
            "otlp_sidecar_policy_engine_pending",
            "Evaluations waiting for or running on the policy engine thread.", registry=registry,
        )
        self._version: tuple[str, str] | None = None

    def set_version(self, version: str, backend: str, loaded_at: float) -> None:
        if self._version is not None:
            with contextlib.suppress(KeyError):
                self.info.remove(*self._version)
        self._version = (version, backend)
        self.info.labels(version, backend).set(1)
        self.decision_seconds.labels(backend)  # the latency panel has a series before the first miss
        self.loaded_timestamp.set(loaded_at)

    def set_mode(self, mode: str) -> None:
        from sidecar.policy.config import MODES

        for name in MODES:
            self.mode.labels(name).set(1 if name == mode else 0)

    def set_exemptions(self, rule_ids: Iterable[str]) -> None:
        self.exemptions.clear()
        for rule_id in rule_ids:
            self.exemptions.labels(safe_label(rule_id)).inc()
