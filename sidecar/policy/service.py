"""The policy service: decisions per resource, as plans, from a cache or the engine.

The pipeline calls :meth:`PolicyService.plans_for` once per request with the
request's resources; a plan is looked up in a bounded cache keyed by (resource
bytes, signal, peer, transport, policy version), and a miss evaluates the Rego
decision ONCE for that resource. The admin server shows :meth:`status` at
``/policy``. Hot reload swaps the whole compiled set at once and empties the
cache; a set that does not compile or fails its tests never goes live.

With no policy directory the set bundled with the package applies. On every load the
engine's PCI probe (:mod:`sidecar.policy.probe`) rewrites card numbers in every place
they can hide with the new set's plans; a set that lets one through never goes live.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import logging
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import prometheus_client

from sidecar.configkit import ConfigError
from sidecar.identity import Peer, PodIdentity
from sidecar.masked_text import quoted
from sidecar.policy.cache import PlanCache, plan_bytes
from sidecar.policy.config import PolicyConfig
from sidecar.policy.decision import PodSettings, RateLimit, compile_plan, pod_settings_from
from sidecar.policy.decision_log import DecisionLog
from sidecar.policy.embedded import CompiledPolicy
from sidecar.policy.errors import DecisionError, PolicyLoadError, PolicyUnavailable
from sidecar.policy.fallback import strict_plan
from sidecar.policy.loader import load_policy
from sidecar.policy.metrics import MAX_RULE_SERIES, OVERFLOW_RULE_ID, PolicyMetrics, safe_label
from sidecar.policy.pod_input import pod_input
from sidecar.policy.probe import PROBES, overridden_exemptions, survivors
from sidecar.policy.source import BUNDLED_DIR, read_policy_dir, snapshot
from sidecar.policy.worker import EngineLimits, EngineThread, EvaluationRate, PolicyBusy
from sidecar.rewrite import ResourceInfo
from sidecar.rewrite.plan import PASS_THROUGH, Plan
from sidecar.signals import Signal

if TYPE_CHECKING:
    from sidecar.policy.bundles.manager import BundleManager
    from sidecar.policy.remote import RemoteBackend

log = logging.getLogger(__name__)

SIGNALS_PROBED = (Signal.TRACES, Signal.METRICS, Signal.LOGS)
TRANSPORTS_PROBED = ("grpc", "http")
_ERROR_LOG_INTERVAL = 10.0
#: the most of an engine error kept for the log and the decision log
MAX_ERROR_TEXT = 1024
_PLACES_SHOWN = 6


@dataclass(frozen=True)
class _Active:
    """The policy set that is live."""

    version: str
    backend: str
    loaded_at: float
    files: tuple[str, ...]
    compiled: CompiledPolicy | None  # None for the remote back-end
    snapshot: tuple[Any, ...] = ()
    tests_passed: int = 0
    #: the probe: card numbers planted, and the policies' `keep` rules the engine ignored
    probed_cards: int = 0
    ignored_keeps: tuple[str, ...] = ()
    #: exemptions a rule of the set wins over (they keep nothing): one line each
    overridden: tuple[str, ...] = ()

    def file_of(self, package: str) -> str:
        if self.compiled is None:
            return ""
        return self.compiled.policy_set.file_of_package(package)


class PolicyService:
    """Policy decisions for one pod, from embedded Rego or a remote OPA."""

    def __init__(
        self,
        config: PolicyConfig,
        pod: PodIdentity,
        registry: prometheus_client.CollectorRegistry,
        limits: EngineLimits | None = None,
    ) -> None:
        self.config = config
        self.pod = pod
        self.metrics = PolicyMetrics(registry)
        self.limits = limits or EngineLimits.from_config(config)
        self._pod_input = pod_input(pod)
        #: the directory loaded: policy.dir, else the set bundled with the package
        self._dir = config.dir or str(BUNDLED_DIR)
        self._hash_key_source = ""
        remote = config.backend == "opa"
        self._cache: PlanCache[Plan] = self._plan_cache("plans", config.remote_cache_ttl if remote else 0.0)
        self._last_good: PlanCache[Plan] = self._plan_cache("last_good")
        #: evaluations run on this thread, new resources admitted at this rate (sidecar.policy.worker)
        self._engine = EngineThread()
        self._rate = EvaluationRate(self.limits.evaluations_per_second, self.limits.evaluation_burst)
        self.metrics.engine_pending.set_function(lambda: self._engine.pending)
        #: plan-cache keys hold a keyed digest of the resource, not its bytes (bounded per entry);
        #: each digest starts from a copy of this keyed state (half the cost of a keyed set-up)
        self._digest_base = hashlib.blake2b(digest_size=16, key=secrets.token_bytes(16))
        self._strict = strict_plan(pod)
        self._remote: RemoteBackend | None = None
        if remote:  # imported here: its HTTP client (aiohttp) loads the CA store, ~9 MiB, at import
            from sidecar.policy.remote import RemoteBackend

            self._remote = RemoteBackend(config.opa_url, config.opa_path, config.opa_timeout)
        #: OPA bundles (policy.bundles): staged into one directory that replaces self._dir on each swap
        self._bundles: BundleManager | None = None
        if config.bundles and not remote:
            # imported here: signature checks need cryptography (~8 MiB), which a sidecar
            # without bundles or TLS never loads
            from sidecar.policy.bundles.manager import BundleManager

            try:
                self._bundles = BundleManager(config, registry)
            except PolicyLoadError as exc:
                raise ConfigError("policy.bundle_verification_key_file", str(exc)) from None
        self._active: _Active | None = None
        self._pod_settings = PodSettings()
        self._hash_key = b""
        self._key_stat: tuple[int, int, int] | None = None
        self._decision_log = DecisionLog(config.decision_log) if config.decision_log else None
        self._watcher: asyncio.Task[None] | None = None
        self._inflight: dict[Any, asyncio.Task[Plan]] = {}
        self._started = False
        self._last_error = ""
        #: why the remote OPA's pod settings could not be read (a wrong opa_path, OPA down), "" when read
        self._remote_problem = ""
        self._last_error_at = 0.0
        self._last_logged: dict[str, float] = {}
        self._reload_lock = asyncio.Lock()
        self._failed_snapshot: tuple[Any, ...] | None = None
        self.metrics.dry_run.set(1 if config.dry_run else 0)
        self.metrics.set_mode(config.mode)
        self._hits = self.metrics.cache.labels("hit")
        # bound audit counters per (signal, (rule id, action)): labels() per request is measurable
        self._rule_counters: dict[tuple[Signal, tuple[str, str]], Any] = {}
        self._rule_overflow_logged = False
        self._misses = self.metrics.cache.labels("miss")

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Load, compile, test and probe the policies, read the hash key, start the watcher."""
        if self.config.mode == "passthrough":
            raise ConfigError("policy.mode", "'passthrough' loads no policy (see sidecar.policy.modes)")
        if self.config.hash_key_file:
            self._hash_key, self._key_stat = _read_hash_key(self.config.hash_key_file)
            self._hash_key_source = "file"
        else:
            self._hash_key, self._hash_key_source = secrets.token_bytes(32), "random"
            log.warning(
                "no policy.hash_key_file: `hash` rules use a random key made for this pod; hashed "
                "values differ between pods and restarts (mount a hash key secret to join on them)"
            )
        if self.config.mode == "dry_run":
            log.warning(
                "policy.mode is dry_run: decisions are evaluated and counted, but the data is "
                "forwarded UNCHANGED - card numbers are NOT masked, tenants NOT stamped"
            )
        if self._remote is not None:
            if self.config.dir:
                # the chart always mounts its set: with a remote OPA it is not what decides
                log.warning(
                    "policy.backend is opa: policy.dir %s is not loaded (the OPA server's policies decide); "
                    "neither its tests nor the PCI probe run on the server's policies, and its data.json "
                    "(sampling, tenant, exemptions) is not used; card numbers in strings are still masked "
                    "(the engine's PCI guarantee applies to every plan)", self.config.dir,
                )
            await self._start_remote()
        else:
            origin = self.config.dir or f"{self._dir} (the bundled policy set)"
            try:
                if self._bundles is not None:
                    origin = "bundles " + ", ".join(s.name for s in self._bundles.sources)
                    self._dir = await self._bundles.first_stage()
                active = await self._load(self._dir)
                active, self._pod_settings = await asyncio.to_thread(self._probe, active)
            except PolicyLoadError as exc:
                self.metrics.reloads.labels("failed").inc()
                if self._bundles is not None:
                    self._bundles.abandon(self._dir)
                    await self._bundles.close()  # its HTTP sessions too: the start ends here
                raise ConfigError("policy.bundles" if self._bundles else "policy.dir", f"{origin}: {exc}") from None
            except DecisionError as exc:
                self.metrics.reloads.labels("failed").inc()
                if self._bundles is not None:
                    self._bundles.abandon(self._dir)
                    await self._bundles.close()
                key = "policy.hash_key_file" if "hash key" in str(exc) else "policy.dir"
                raise ConfigError(key, str(exc) if self.config.dir else f"{origin}: {exc}") from None
            if self._bundles is not None:
                self._bundles.committed(self._dir)
            self._activate(active)
        self._started = True
        if self._bundles is not None:
            self._bundles.start_polling(self._apply_bundles)
            if self.config.hash_key_file and self.config.reload_interval > 0:
                self._watcher = asyncio.create_task(self._watch(), name="policy-watcher")
        elif self.config.reload_interval > 0 and (
            self.config.dir or self.config.hash_key_file or self._remote is not None
        ):  # the bundled set never changes: it is not watched
            self._watcher = asyncio.create_task(self._watch(), name="policy-watcher")

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        if self._bundles is not None:
            await self._bundles.close()
        for task in list(self._inflight.values()):
            task.cancel()
        self._engine.close()
        if self._remote is not None:
            await self._remote.close()
        if self._decision_log is not None:
            self._decision_log.close()
        self._started = False

    async def _start_remote(self) -> None:
        assert self._remote is not None
        now = time.time()
        self._activate(_Active(
            version=f"opa:{self.config.opa_path}", backend="opa", loaded_at=now, files=(),
            compiled=None,
        ))
        await self._refresh_remote_settings()

    async def _refresh_remote_settings(self) -> None:
        assert self._remote is not None
        try:
            document = await self._remote.query("pod_settings", self._request_input(None, None, ""))
            settings = pod_settings_from(document, f"OPA {self._remote.url}")
        except DecisionError as exc:
            # logged (once an interval): the sidecar stays ready, so that an OPA outage does not take
            # the app's pod out of its Services; every new resource is refused or strictly masked
            self._remote_problem = f"pod settings from OPA: {exc}"
            self._note_error(self._remote_problem)
            self._log_error(f"{self._remote_problem}; decisions for new resources fail until it answers "
                            f"(policy.on_error = {self.config.on_error})")
            return
        if self._remote_problem:
            log.info("OPA at %s answers the pod settings again", self._remote.url)
            self._remote_problem = ""
        changed = settings.exemptions != self._pod_settings.exemptions
        self._pod_settings = settings
        if changed:  # plans were compiled with the other exemptions
            self._cache.clear()
            self._announce_exemptions()

    # ----------------------------------------------------------------- properties

    @property
    def version(self) -> str:
        return self._active.version if self._active else ("none" if self._started else "")

    @property
    def ready(self) -> bool:
        return self._started

    @property
    def problem(self) -> str:
        """What /ready says of a policy engine that is ready but failing ("" when well)."""
        return self._remote_problem

    def export_headers(self) -> dict[str, str]:
        """Headers the exporter adds upstream, e.g. ``{"X-Scope-OrgID": tenant}``."""
        return dict(self._pod_settings.export_headers)

    def rate_limit(self) -> RateLimit | None:
        """The pod's tenant's limit on items per second (None: unlimited)."""
        return self._pod_settings.rate_limit

    def status(self) -> dict[str, Any]:
        active = self._active
        return {
            "mode": self.config.mode,
            "warning": MODE_WARNINGS.get(self.config.mode, ""),
            "backend": self.config.backend,
            "dir": self._dir if self._remote is None else "",
            "bundled": self._remote is None and not self.config.dir and self._bundles is None,
            "bundles": self._bundles.status() if self._bundles is not None else [],
            "opa_url": self._remote.url if self._remote else "",
            "version": self.version,
            "loaded_at": active.loaded_at if active else None,
            "files": list(active.files) if active else [],
            "tests_passed": active.tests_passed if active else 0,
            "tenant": self._pod_settings.tenant,
            "export_headers": sorted(self._pod_settings.export_headers),
            "on_error": self.config.on_error,
            "dry_run": self.config.dry_run,
            "hash_key_loaded": bool(self._hash_key),
            "hash_key": {"file": "from policy.hash_key_file", "random": "random, made for this pod"}.get(
                self._hash_key_source, "none"),
            "exemptions": [e.as_status() for e in self._pod_settings.exemptions],
            "pci_probe": {
                "cards_planted": active.probed_cards if active else 0,
                "ignored_keep_rules": list(active.ignored_keeps) if active else [],
                "overridden_exemptions": list(active.overridden) if active else [],
            },
            "cache_entries": len(self._cache),
            "last_reload_error": self._last_error,
            "last_reload_error_at": self._last_error_at or None,
            "ready": self.ready,
        }

    # ----------------------------------------------------------------- decisions

    async def plans_for(
        self, signal: Signal, resources: Sequence[ResourceInfo], peer: Peer, transport: str,
    ) -> list[Plan]:
        """One plan per resource, in order.

        A cached plan is used as is; a miss is evaluated ONCE on the engine thread (concurrent
        misses on the same resource share it). More new resources than the engine may take now
        raise :class:`PolicyBusy` (retryable) once the admitted ones are started.
        """
        # the policy sees the client's host, not its ephemeral port: otherwise every new
        # connection would miss the cache and run Rego again
        peer = _without_port(peer)
        active = self._active
        if active is None:
            return [PASS_THROUGH] * len(resources)
        plans: list[Plan | None] = []
        keys: list[Any] = []
        missing: dict[Any, ResourceInfo] = {}
        for resource in resources:
            key = (self._digest(resource.key), signal, peer, transport)
            plan = self._cache.get((active.version, key))
            if plan is not None:
                self._hits.inc()
            else:
                self._misses.inc()
                missing.setdefault(key, resource)
            plans.append(plan)
            keys.append(key)
        if not missing:  # every one found in the cache: none of them is None (the hot path: no copy)
            return cast(list[Plan], plans)
        decided = await self._decide_missing(active, missing, signal, peer, transport)
        return [plan if plan is not None else decided[key] for plan, key in zip(plans, keys, strict=True)]

    def _digest(self, resource: bytes) -> bytes:
        """The plan-cache key of a resource: 16 bytes whatever its size (keyed: not forgeable)."""
        digest = self._digest_base.copy()
        digest.update(resource)
        return digest.digest()

    async def _decide_missing(
        self, active: _Active, missing: dict[Any, ResourceInfo], signal: Signal, peer: Peer,
        transport: str,
    ) -> dict[Any, Plan]:
        """Plans for the resources the cache lacks: join evaluations in flight, start new ones
        as the rate admits, and refuse the request (PolicyBusy) when some could not start."""
        version = active.version
        new = sum(1 for key in missing if (version, key) not in self._inflight)
        admitted = self._rate.admit(new, queued=len(self._inflight)) if new else 0
        refused = new - admitted
        tasks: dict[Any, asyncio.Task[Plan]] = {}
        for key, resource in missing.items():
            task = self._inflight.get((version, key))
            if task is None:
                if admitted == 0:
                    continue
                admitted -= 1
                task = self._decide_once(active, key, signal, resource, peer, transport)
            tasks[key] = task
        if refused:
            # the started ones go on and fill the cache: the retry finds them
            self.metrics.evaluations_refused.inc(refused)
            retry_after = self._rate.retry_after(refused)
            raise PolicyBusy(
                f"{refused} of the request's {len(missing)} new resources wait for the policy engine "
                f"(at most {self.limits.evaluations_per_second:g} new resources per second); "
                f"retry in {retry_after:.0f} s", retry_after,
            )
        plans = await asyncio.gather(*(asyncio.shield(task) for task in tasks.values()))
        return dict(zip(tasks, plans, strict=True))

    def _decide_once(
        self, active: _Active, key: Any, signal: Signal, resource: ResourceInfo, peer: Peer,
        transport: str,
    ) -> asyncio.Task[Plan]:
        """The evaluation for one resource, as a task of its own: concurrent misses on the same
        key share it, and a requester that goes away does not stop it (its plan is cached)."""
        inflight = (active.version, key)
        task = self._inflight.get(inflight)
        if task is None:
            task = asyncio.create_task(
                self._decide(active, key, signal, resource, peer, transport), name="policy-decision")
            self._inflight[inflight] = task
            task.add_done_callback(functools.partial(self._decided, inflight))
        return task

    def _decided(self, inflight: Any, task: asyncio.Task[Plan]) -> None:
        if self._inflight.get(inflight) is task:
            del self._inflight[inflight]
        if not task.cancelled():
            task.exception()  # retrieved: waiters re-raise it, nobody else must

    async def _decide(
        self, active: _Active, key: Any, signal: Signal, resource: ResourceInfo, peer: Peer,
        transport: str,
    ) -> Plan:
        started = time.perf_counter()
        hash_key, exemptions = self._hash_key, self._pod_settings.exemptions
        try:
            if active.compiled is not None:
                plan = await self._engine.call(
                    self._evaluate, active, signal, resource, transport, peer, hash_key, exemptions)
            else:
                assert self._remote is not None
                decisions = await self._remote.query(
                    "decisions", self._request_input(signal, resource, transport, peer))
                plan = await self._engine.call(self._plan_from, active, decisions, hash_key, exemptions)
        except DecisionError as exc:
            return self._fallback(active, key, signal, peer, transport, exc, started)
        seconds = time.perf_counter() - started
        self.metrics.decision_seconds.labels(active.backend).observe(seconds)
        if (self._active is active and self._hash_key is hash_key
                and self._pod_settings.exemptions == exemptions):
            # (else the set, key or exemptions changed meanwhile: the plan answers this request only)
            plan = self._cache.put((active.version, key), plan)
            self._last_good.put(key, plan)
        self._log_decision(active, signal, transport, peer, plan, seconds, "decided")
        return plan

    def _evaluate(
        self, active: _Active, signal: Signal, resource: ResourceInfo, transport: str, peer: Peer,
        hash_key: bytes, exemptions: Any,
    ) -> Plan:
        """On the engine thread: the embedded engine's decisions for one resource, as its plan."""
        assert active.compiled is not None
        decisions = active.compiled.query("decisions", self._request_input(signal, resource, transport, peer))
        return self._plan_from(active, decisions, hash_key, exemptions)

    def _plan_from(self, active: _Active, decisions: Any, hash_key: bytes, exemptions: Any) -> Plan:
        return compile_plan(
            decisions, active.file_of, hash_key=hash_key, dry_run=self.config.dry_run, exemptions=exemptions,
        )

    def _plan_cache(self, name: str, ttl: float = 0.0) -> PlanCache[Plan]:
        """A plan cache bounded in entries and bytes (half of the engine's cache bytes each)."""
        evictions = self.metrics.cache_evictions
        cache: PlanCache[Plan] = PlanCache(
            self.config.cache_size, ttl, max_bytes=self.limits.cache_max_bytes // 2, size_of=plan_bytes,
            on_evict=lambda why: evictions.labels(name, why).inc(),
        )
        self.metrics.cache_entries.labels(name).set_function(lambda: len(cache))
        self.metrics.cache_plans.labels(name).set_function(lambda: cache.distinct)
        self.metrics.cache_bytes.labels(name).set_function(lambda: cache.bytes)
        return cache

    def _fallback(
        self, active: _Active, key: Any, signal: Signal, peer: Peer, transport: str,
        error: DecisionError, started: float,
    ) -> Plan:
        seconds = time.perf_counter() - started
        # a policy's error may quote its input (the app's resource attributes): masked and cut
        # before the log and the decision log, as a remote OPA's errors are
        text = quoted(str(error), MAX_ERROR_TEXT)
        self._log_error(f"policy decision failed ({signal.value}): {text}")
        if self.config.on_error == "refuse":
            self.metrics.errors.labels("refused").inc()
            self._log_decision(active, signal, transport, peer, self._strict, seconds, "refused", text)
            raise PolicyUnavailable(f"the policy engine cannot decide: {error}") from None
        plan = self._last_good.get(key)
        outcome = "last_good"
        if plan is None:
            plan, outcome = self._strict, "strict"
        self.metrics.errors.labels(outcome).inc()
        self._log_decision(active, signal, transport, peer, plan, seconds, outcome, text)
        return plan

    def _request_input(
        self, signal: Signal | None, resource: ResourceInfo | None, transport: str,
        peer: Peer | None = None,
    ) -> dict[str, Any]:
        return {
            "signal": signal.value if signal else "",
            "resource": dict(resource.attributes) if resource is not None else {},
            "pod": self._pod_input,
            "peer": (peer or Peer()).as_input(),
            "transport": transport,
        }

    def record_counts(self, signal: Signal, counts: dict[tuple[str, str], int]) -> None:
        """Feed the per-rule audit counters from the rewriter's counts ((rule_id, action) -> n)."""
        children = self._rule_counters
        for key, number in counts.items():
            if number > 0:
                child = children.get((signal, key))
                if child is None:
                    action = key[1]
                    if len(children) >= MAX_RULE_SERIES:
                        # rule ids come from policies, but one built from telemetry would grow the
                        # registry without end: the rest are counted under one label
                        key = (OVERFLOW_RULE_ID, action)
                        child = children.get((signal, key))
                        if child is None and not self._rule_overflow_logged:
                            self._rule_overflow_logged = True
                            log.warning("more than %d rule ids and actions counted: the others are counted under "
                                        "rule_id %r (is a policy building rule ids from telemetry?)",
                                        MAX_RULE_SERIES, OVERFLOW_RULE_ID)
                    if child is None:
                        child = children[(signal, key)] = self.metrics.rule_actions.labels(
                            signal.value, safe_label(key[0]), safe_label(action))
                child.inc(number)
        if self._decision_log is not None:
            self._decision_log.counts(version=self.version, signal=signal.value, counts=counts)

    def _log_decision(
        self, active: _Active, signal: Signal, transport: str, peer: Peer, plan: Plan,
        seconds: float, outcome: str, error: str = "",
    ) -> None:
        if self._decision_log is None:
            return
        self._decision_log.decision(
            version=active.version, path=f"{self.config.opa_path.strip('/')}/decisions",
            signal=signal.value, transport=transport, peer_tls=peer.tls, plan=plan,
            seconds=seconds, outcome=outcome, error=error,
        )

    def _log_error(self, message: str) -> None:
        """Log an engine failure, at most once per interval for the same text."""
        now = time.monotonic()
        if now - self._last_logged.get(message, -1e9) >= _ERROR_LOG_INTERVAL:
            self._last_logged[message] = now
            if len(self._last_logged) > 256:
                self._last_logged.clear()
            log.error("%s", message)

    # ----------------------------------------------------------------- loading

    async def _load(self, root: str) -> _Active:
        """Read, compile and test ``root`` off the event loop; raise PolicyLoadError."""
        before = await asyncio.to_thread(snapshot, root)
        compiled, results = await asyncio.to_thread(
            load_policy, root, self.config.opa_path, run_tests=self.config.run_tests_on_load,
        )
        return _Active(
            version=compiled.version, backend="embedded", loaded_at=time.time(),
            files=tuple(compiled.policy_set.files), compiled=compiled, snapshot=before,
            tests_passed=len(results),
        )

    def _probe(self, active: _Active) -> tuple[_Active, PodSettings]:
        """Evaluate the new set for the pod and probe it per signal before it is live.

        For each signal and transport the plan of the probe request's resource is compiled
        as a request would get it, and the probe request (card numbers in every place they
        can hide) goes through the real rewriter with it: one card number out whole refuses
        the set (PolicyLoadError naming the places). Runs in a worker thread: the new set is
        not live yet, so nothing else uses its interpreter, and the event loop keeps serving.
        """
        assert active.compiled is not None
        settings = pod_settings_from(
            active.compiled.query("pod_settings", self._request_input(None, None, "")),
            f"{active.file_of(self.config.opa_path.replace('/', '.')) or 'pod_settings'}",
        )
        places: list[str] = []
        ignored: list[str] = []
        overridden: list[str] = []
        planted = 0
        for signal in SIGNALS_PROBED:
            probe = PROBES[signal]
            planted += len(probe.cards)
            for transport in TRANSPORTS_PROBED:
                decisions = active.compiled.query(
                    "decisions", self._request_input(signal, probe.resource, transport))
                plan = compile_plan(
                    decisions, active.file_of, hash_key=self._hash_key,
                    exemptions=settings.exemptions, ignored=ignored,
                )
                places += [p for p in survivors(probe, plan) if p not in places]
                if signal is Signal.TRACES and not overridden:
                    overridden = overridden_exemptions(plan, settings.exemptions)
        if places:
            shown = ", ".join(places[:_PLACES_SHOWN])
            more = f" and {len(places) - _PLACES_SHOWN} more" if len(places) > _PLACES_SHOWN else ""
            raise PolicyLoadError(
                f"the PCI probe found card numbers left unmasked by this policy set in: {shown}{more} "
                "(a card number may only pass under an exemption naming its exact key; see "
                "docs/policy.md, 'The PCI guarantee'); the set is refused"
            )
        probed = dataclasses.replace(
            active, probed_cards=planted, ignored_keeps=tuple(dict.fromkeys(ignored)),
            overridden=tuple(overridden))
        return probed, settings

    def _activate(self, active: _Active) -> None:
        self._active = active
        self._cache.clear()
        self.metrics.set_version(active.version, active.backend, active.loaded_at)
        if active.compiled is not None:
            self.metrics.reloads.labels("ok").inc()
            log.log(
                logging.INFO if self.config.mode == "enforce" else logging.WARNING,
                "policy set %s%s is live: mode %s, %d files, %d tests passed, PCI probe: %d card "
                "numbers in every signal masked by the set%s",
                active.version, self._origin_note(), self.config.mode,
                len(active.files), active.tests_passed, active.probed_cards,
                "" if self.config.mode == "enforce" else
                f" (in {self.config.mode} mode the data is forwarded as it came: NOT masked)",
            )
            for rule_id in active.ignored_keeps:
                log.warning(
                    "policy rule %r keeps attributes that are not exempted: card numbers in them "
                    "are masked anyway (only an exemption naming an exact key keeps them)", rule_id,
                )
            for line in active.overridden:
                log.warning(
                    "PCI exemption %s: it has no effect (an exemption only keeps its key from the "
                    "card-number detectors; a rule that drops or masks the key wins)", line,
                )
            self._announce_exemptions()

    def _origin_note(self) -> str:
        """How the start and reload line names where the set came from."""
        if self._bundles is not None:
            return f" (bundles {self._bundles.describe()})"
        return "" if self.config.dir else " (bundled)"

    def _announce_exemptions(self) -> None:
        """Log and count the exemptions in force (at every load: they are the one way around masking)."""
        self.metrics.set_exemptions(e.rule_id for e in self._pod_settings.exemptions)
        for exemption in self._pod_settings.exemptions:
            log.warning(
                "PCI exemption %s: attribute %r may carry card numbers unmasked (reason: %s)",
                exemption.rule_id, exemption.key, exemption.reason,
            )

    async def reload(self, root: str | None = None) -> bool:
        """Load the directory again (or ``root``: staged bundles); swap it in when it changed and is
        good. True when swapped."""
        async with self._reload_lock:
            root = root or self._dir
            current = self._active
            try:
                policy_set = await asyncio.to_thread(read_policy_dir, root)
                if current is not None and policy_set.version == current.version:
                    self._active = _replace_snapshot(current, await asyncio.to_thread(snapshot, root))
                    self._last_error = ""  # back to the live content: nothing is wrong any more
                    return False
                active = await self._load(root)
                active, settings = await asyncio.to_thread(self._probe, active)
            except (PolicyLoadError, DecisionError) as exc:
                self.metrics.reloads.labels("failed").inc()
                self._note_error(str(exc))
                log.error("policy reload refused, the last good set %s stays: %s", self.version, exc)
                return False
            self._pod_settings = settings
            self._dir = root
            self._activate(active)
            self._last_error = ""
            return True

    async def _apply_bundles(self, root: str) -> tuple[bool, str]:
        """Reload from a staged bundle directory: (swapped, the refusal's message or "")."""
        before = self._last_error_at
        swapped = await self.reload(root)
        refused = not swapped and self._last_error_at != before and self._last_error
        return swapped, (self._last_error if refused else "")

    def _note_error(self, message: str) -> None:
        self._last_error = message
        self._last_error_at = time.time()

    async def _watch(self) -> None:
        """Poll the directory (and the hash key file) every reload_interval."""
        interval = self.config.reload_interval
        while True:
            await asyncio.sleep(interval)
            try:
                await self._check_once()
            except Exception:  # a watcher must survive anything and try again
                log.exception("policy watcher failed; retrying in %.1f s", interval)

    async def _check_once(self) -> None:
        if self.config.hash_key_file:
            self._check_hash_key()
        if self._remote is not None:
            await self._refresh_remote_settings()
            return
        if not self.config.dir or self._bundles is not None:  # bundle sources are polled by their manager
            return
        current = self._active
        now = await asyncio.to_thread(snapshot, self.config.dir)
        if current is not None and now == current.snapshot:
            return
        if now == self._failed_snapshot:
            return  # the same broken content: refused already
        if not await self.reload() and self._last_error:
            self._failed_snapshot = now

    def _check_hash_key(self) -> None:
        try:
            stat = Path(self.config.hash_key_file).stat()
        except OSError:
            return  # keep the key in memory; a secret update swaps it, never deletes it
        if (stat.st_ino, stat.st_mtime_ns, stat.st_size) == self._key_stat:
            return
        try:
            self._hash_key, self._key_stat = _read_hash_key(self.config.hash_key_file)
        except ConfigError as exc:
            self._note_error(str(exc))
            return
        self._cache.clear()
        self._last_good.clear()
        log.info("hash key reloaded from policy.hash_key_file")


#: what /policy and /ready say when the data is not masked
MODE_WARNINGS = {
    "dry_run": "dry run: policies are evaluated and counted, data is forwarded unchanged "
               "(card numbers are not masked)",
    "passthrough": "pass-through: no policy is applied, data is forwarded unchanged "
                   "(card numbers are not masked)",
}


@functools.lru_cache(maxsize=4096)
def _without_port(peer: Peer) -> Peer:
    """``peer`` without its port: the one object for a host (a key of the plan cache then
    compares by identity), one computation per connection."""
    host, sep, port = peer.address.rpartition(":")
    if not sep or not port.isdigit():
        return _one_peer(peer.address, peer.tls, peer.spiffe_id)
    return _one_peer(host.strip("[]"), peer.tls, peer.spiffe_id)


@functools.lru_cache(maxsize=4096)
def _one_peer(address: str, tls: bool, spiffe_id: str) -> Peer:
    return Peer(address=address, tls=tls, spiffe_id=spiffe_id)


def _replace_snapshot(active: _Active, now: tuple[Any, ...]) -> _Active:
    return dataclasses.replace(active, snapshot=now)


def _read_hash_key(path: str) -> tuple[bytes, tuple[int, int, int]]:
    """Read the HMAC key (surrounding whitespace stripped); ConfigError when unusable."""
    try:
        file = Path(path)
        stat = file.stat()
        key = file.read_bytes().strip()
    except FileNotFoundError:
        raise ConfigError("policy.hash_key_file", f"{path} does not exist (mount the hash key secret)") from None
    except OSError as exc:
        raise ConfigError("policy.hash_key_file", f"cannot read {path}: {exc.strerror}") from None
    if len(key) < 16:
        raise ConfigError("policy.hash_key_file", f"{path} holds fewer than 16 bytes; use a random key of 32 bytes")
    return key, (stat.st_ino, stat.st_mtime_ns, stat.st_size)
