"""The policy engine's metrics (all on the registry the service is given).

No label ever carries a value from telemetry: labels are the policy version,
the back-end, outcomes, the signal, and the policies' own rule ids and actions.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable

from prometheus_client import CollectorRegistry

from sidecar.masked_text import mask_card_numbers
from sidecar.metrickit import PREFIX, Kind, Label, declare
from sidecar.receivers.metrics import SIGNAL

_LABEL_SAFE = re.compile(r"[^A-Za-z0-9_.:/-]")

COMPONENT = "sidecar.policy"
#: the policy engine's back-ends
BACKENDS = ("embedded", "opa")
#: the policy modes (sidecar.policy.config.MODES)
MODES = ("enforce", "dry_run", "passthrough")
#: the plan caches
CACHES = ("plans", "last_good")
#: outcomes of a load, reload or poll: one vocabulary on every metric
RESULTS = ("ok", "failed")
RULE_ID = Label("rule_id", closed=False, description="the loaded policies' rule ids")
CACHE = Label("cache", CACHES)

INFO = declare(
    f"{PREFIX}_policy_info", Kind.gauge, "1", "The active policy set: 1 for its version and back-end.",
    component=COMPONENT,
    labels=(Label("version", closed=False, description="the policy set's version"),
            Label("backend", BACKENDS, every=False, description="the back-end in use")),
)
LOADED_TIMESTAMP = declare(
    f"{PREFIX}_policy_loaded_timestamp_seconds", Kind.gauge, "s",
    "When the active policy set went live (Unix time).", component=COMPONENT,
)
RELOADS = declare(
    f"{PREFIX}_policy_reloads", Kind.counter, "{loads}", "Policy set loads by result (ok, failed).",
    component=COMPONENT, labels=(Label("result", RESULTS),),
)
DECISION_CACHE = declare(
    f"{PREFIX}_policy_decision_cache", Kind.counter, "{lookups}", "Plan cache lookups by result (hit, miss).",
    component=COMPONENT, labels=(Label("result", ("hit", "miss")),),
)
DECISION_SECONDS = declare(
    f"{PREFIX}_policy_decision_seconds", Kind.histogram, "s",
    "Time to evaluate the policies for one resource and compile the plan (cache misses).",
    component=COMPONENT, labels=(Label("backend", BACKENDS, every=False, description="the back-end in use"),),
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
DECISION_ERRORS = declare(
    f"{PREFIX}_policy_decision_errors", Kind.counter, "{decisions}",
    "Decisions the engine could not make, by what was done instead (refused, last_good, strict).",
    component=COMPONENT, labels=(Label("fallback", ("refused", "last_good", "strict")),),
    appears="at the first decision the engine could not make",
)
#: the most (signal, rule id, action) series of the rule counter; past it, new rule ids are
#: counted under OVERFLOW_RULE_ID (policies name few rules: the shipped ones a few dozen)
MAX_RULE_SERIES = 2000
OVERFLOW_RULE_ID = "_other_rules"
RULE_ACTIONS = declare(
    f"{PREFIX}_policy_rule_actions", Kind.counter, "{actions}",
    "What the rules did, from the rewriter's counts: values masked, attributes dropped "
    "or hashed, resources refused, spans sampled out... by signal, rule id and action. Past "
    f"{MAX_RULE_SERIES:,} series, new rule ids are counted under rule_id `{OVERFLOW_RULE_ID}` (logged once).",
    component=COMPONENT,
    labels=(SIGNAL, RULE_ID, Label("action", closed=False,
                                   description="`mask_pan`, `hash`, `drop`, `sample_out`, `keep` ...")),
    appears="for each rule id and action at the rule's first use",
)
DRY_RUN = declare(
    f"{PREFIX}_policy_dry_run", Kind.gauge, "1", "1 when decisions are counted but data is left unchanged.",
    component=COMPONENT,
)
MODE = declare(
    f"{PREFIX}_policy_mode", Kind.gauge, "1",
    "1 for the policy mode in force (enforce, dry_run, passthrough); only `enforce` masks card numbers.",
    component=COMPONENT, labels=(Label("mode", MODES),),
)
EXEMPTIONS = declare(
    f"{PREFIX}_policy_exemptions", Kind.gauge, "{keys}",
    "Attribute keys the active policy set exempts from card-number masking, by rule id "
    "(each use is counted in otlp_sidecar_policy_rule_actions with action `keep`).",
    component=COMPONENT, labels=(RULE_ID,), appears="when the active policy set exempts attribute keys",
)
CACHE_ENTRIES = declare(
    f"{PREFIX}_policy_cache_entries", Kind.gauge, "{entries}",
    "Entries held by the plan caches (cache: plans, last_good).", component=COMPONENT, labels=(CACHE,),
)
CACHE_DISTINCT_PLANS = declare(
    f"{PREFIX}_policy_cache_distinct_plans", Kind.gauge, "{plans}",
    "Distinct plans held by the plan caches (equal plans are held once).", component=COMPONENT, labels=(CACHE,),
)
CACHE_BYTES = declare(
    f"{PREFIX}_policy_cache_bytes", Kind.gauge, "By",
    "Estimated memory held by the plan caches (bounded by the policy engine's cache bytes).",
    component=COMPONENT, labels=(CACHE,),
)
CACHE_EVICTIONS = declare(
    f"{PREFIX}_policy_cache_evictions", Kind.counter, "{plans}",
    "Plans evicted from the plan caches, by why: entries (over policy.cache_size), bytes "
    "(over the cache's byte bound), ttl (remote back-end).",
    component=COMPONENT, labels=(CACHE, Label("reason", ("entries", "bytes", "ttl"))),
    appears="at the first eviction",
)
EVALUATIONS_REFUSED = declare(
    f"{PREFIX}_policy_evaluations_refused", Kind.counter, "{resources}",
    "New resources not evaluated because the policy engine was at its rate or burst; "
    "their requests got 503 / UNAVAILABLE with Retry-After.", component=COMPONENT,
)
ENGINE_PENDING = declare(
    f"{PREFIX}_policy_engine_pending", Kind.gauge, "{evaluations}",
    "Evaluations waiting for or running on the policy engine thread.", component=COMPONENT,
)


def safe_label(value: str) -> str:
    """A rule id, action or revision as a label: card numbers masked (rule ids are checked for
    them; this is the last guard), limited characters and length."""
    return _LABEL_SAFE.sub("_", mask_card_numbers(value))[:80]


class PolicyMetrics:
    """Every metric of the policy engine (prefix ``otlp_sidecar_policy_``)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.info = INFO.gauge(registry)
        self.loaded_timestamp = LOADED_TIMESTAMP.gauge(registry)
        self.reloads = RELOADS.counter(registry)
        for result in RESULTS:  # at zero from the start: the reload alert sees the first failure
            self.reloads.labels(result)
        self.cache = DECISION_CACHE.loop_counter(registry)  # on every request: sidecar.loop_metrics
        self.decision_seconds = DECISION_SECONDS.histogram(registry)
        self.errors = DECISION_ERRORS.counter(registry)
        self.rule_actions = RULE_ACTIONS.loop_counter(registry)  # likewise
        self.dry_run = DRY_RUN.gauge(registry)
        self.mode = MODE.gauge(registry)
        self.exemptions = EXEMPTIONS.gauge(registry)
        self.cache_entries = CACHE_ENTRIES.gauge(registry)
        self.cache_plans = CACHE_DISTINCT_PLANS.gauge(registry)
        self.cache_bytes = CACHE_BYTES.gauge(registry)
        self.cache_evictions = CACHE_EVICTIONS.counter(registry)
        self.evaluations_refused = EVALUATIONS_REFUSED.counter(registry)
        self.engine_pending = ENGINE_PENDING.gauge(registry)
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
        for name in MODES:
            self.mode.labels(name).set(1 if name == mode else 0)

    def set_exemptions(self, rule_ids: Iterable[str]) -> None:
        self.exemptions.clear()
        for rule_id in rule_ids:
            self.exemptions.labels(safe_label(rule_id)).inc()
