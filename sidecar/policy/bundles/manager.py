"""The bundle sources of one sidecar: the first download at start, then a poller per source.

A new bundle is verified and parsed off the event loop, combined with the live bundles of the
other sources, staged as one directory and handed to the policy service's reload (the same
path as a directory reload: precheck in a child, tests, PCI probe, atomic swap). Anything
refused leaves the last good set live; the source remembers the refused ETag, so an unchanged
bad bundle is neither downloaded nor checked again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import prometheus_client

from sidecar.policy.bundles.archive import BundleError, BundleLimits
from sidecar.policy.bundles.bundle import (
    Bundle,
    check_disjoint,
    parse_bundle,
    remove_stage,
    stage,
    sweep_stale_stages,
)
from sidecar.policy.bundles.fetch import HttpFetcher, PathFetcher, shown_url
from sidecar.policy.bundles.metrics import BundleMetrics
from sidecar.policy.bundles.signing import VerificationConfig
from sidecar.policy.config import PolicyConfig, bundle_source

log = logging.getLogger(__name__)

#: apply(staged directory) -> (swapped, error): the policy service's reload of that directory
Apply = Callable[[str], Awaitable[tuple[bool, str]]]


@dataclass
class BundleSource:
    """One configured source and what the sidecar knows of it."""

    name: str
    location: str
    fetcher: HttpFetcher | PathFetcher
    #: False for ``local`` (policy.dir beside bundles: the pod's own mounted ConfigMap, trusted as
    #: policy.dir alone is); every other source must be signed when a verification key is set
    signed_only: bool = True
    tag: str = ""
    live: Bundle | None = None
    last_error: str = ""
    last_error_at: float = 0.0
    last_success_at: float = 0.0
    failures: int = 0

    @property
    def remote(self) -> bool:
        return isinstance(self.fetcher, HttpFetcher)

    def status(self) -> dict[str, Any]:
        live = self.live
        return {
            "name": self.name,
            "source": shown_url(self.location),
            "revision": live.revision if live else "",
            "digest": live.digest[:16] if live else "",
            "roots": list(live.roots) if live else [],
            "signed": live.signed if live else False,
            "etag": self.tag if self.remote else "",
            "last_success_at": self.last_success_at or None,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at or None,
        }


class BundleManager:
    """Every bundle source of the sidecar (``policy.bundles``, and ``policy.dir`` beside them)."""

    def __init__(self, config: PolicyConfig, registry: prometheus_client.CollectorRegistry) -> None:
        self.config = config
        self.limits = BundleLimits(config.bundle_max_download_size, config.bundle_max_size)
        self.metrics = BundleMetrics(registry)
        self.verification: VerificationConfig | None = None
        if config.bundle_verification_key_file:
            self.verification = VerificationConfig.from_file(
                config.bundle_verification_key_file, config.bundle_verification_algorithm,
                config.bundle_verification_key_id, config.bundle_verification_scope,
            )
        entries = [bundle_source(entry) for entry in config.bundles]
        self.sources = [BundleSource(name, location, self._fetcher(location)) for name, location in entries]
        if config.dir:
            entries.append(("local", config.dir))
            self.sources.append(BundleSource("local", config.dir, self._fetcher(config.dir), signed_only=False))
        if self.verification is None:
            log.warning(
                "policy bundles are not signature-checked (no policy.bundle_verification_key_file): whoever "
                "can change them%s changes the policies (the PCI probe still keeps card numbers masked)",
                " or the plain-HTTP path to the bundle server" if any(
                    location.startswith("http://") for _, location in entries) else "",
            )
        self.stage_dir = ""
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []

    def _fetcher(self, location: str) -> HttpFetcher | PathFetcher:
        if "://" in location:
            return HttpFetcher(location, self.limits, self.config.bundle_timeout,
                               self.config.bundle_ca_file, self.config.bundle_token_file)
        return PathFetcher(location, self.limits)

    # ----------------------------------------------------------------- start

    async def first_stage(self) -> str:
        """Get every bundle (retrying within bundle_start_timeout) and stage them together."""
        deadline = time.monotonic() + self.config.bundle_start_timeout
        swept = await asyncio.to_thread(sweep_stale_stages)
        if swept:
            log.info("removed %d staged bundle directories left by an earlier run", swept)
        pending = list(self.sources)
        attempt = 0
        while pending:
            for source in list(pending):
                bundle = await self._fetch_and_parse(source, at_start=True)
                if bundle is not None:
                    source.live = bundle
                    pending.remove(source)
            if not pending:
                break
            attempt += 1
            wait = min(0.25 * 2 ** attempt, 5.0) * random.uniform(0.5, 1.0)
            if time.monotonic() + wait > deadline:
                problems = "; ".join(f"{s.name} ({shown_url(s.location)}): {s.last_error}" for s in pending)
                raise BundleError(
                    f"not every bundle could be loaded within policy.bundle_start_timeout "
                    f"({self.config.bundle_start_timeout:g} s): {problems}"
                )
            await asyncio.sleep(wait)
        live = [s.live for s in self.sources if s.live is not None]
        return await asyncio.to_thread(stage, live)

    def abandon(self, root: str) -> None:
        """The first staged directory did not go live (start failed): remove it."""
        remove_stage(root)

    def committed(self, root: str) -> None:
        """The staged directory ``root`` went live (at start)."""
        self.stage_dir = root
        for source in self.sources:
            if source.live is not None:
                self.metrics.set_revision(source.name, source.live.revision)
                self.metrics.polls.labels(source.name, "updated").inc()

    def describe(self) -> str:
        return ", ".join(s.live.describe() for s in self.sources if s.live is not None)

    # ----------------------------------------------------------------- polling

    def start_polling(self, apply: Apply) -> None:
        for source in self.sources:
            if source.remote or self.config.reload_interval > 0:
                self._tasks.append(asyncio.create_task(self._poll_loop(source, apply), name=f"bundle-{source.name}"))

    def _delay(self, source: BundleSource) -> float:
        low, high = self.config.bundle_polling_min_delay, self.config.bundle_polling_max_delay
        if not source.remote:
            return self.config.reload_interval * random.uniform(0.9, 1.1)
        if source.failures:
            return min(high, low * (1 << min(source.failures - 1, 16))) * random.uniform(0.5, 1.0)
        return random.uniform(low, high)

    async def _poll_loop(self, source: BundleSource, apply: Apply) -> None:
        while True:
            await asyncio.sleep(self._delay(source))
            try:
                await self.poll_once(source, apply)
            except Exception:  # a poller must survive anything and try again
                log.exception("bundle %s: poll failed", source.name)

    async def poll_once(self, source: BundleSource, apply: Apply) -> None:
        """Fetch ``source``; when it brings a new bundle, put it live through ``apply``."""
        bundle = await self._fetch_and_parse(source)
        if bundle is None:
            return
        if source.live is not None and bundle.digest == source.live.digest:
            self.metrics.polls.labels(source.name, "not_modified").inc()
            return
        async with self._lock:
            candidates = [bundle if s is source else s.live for s in self.sources]
            try:
                check_disjoint([b for b in candidates if b is not None])
                root = await asyncio.to_thread(stage, [b for b in candidates if b is not None])
            except BundleError as exc:
                self._refused(source, str(exc))
                return
            try:
                swapped, error = await apply(root)
            except Exception as exc:  # the staged directory must not outlive a failed reload
                log.exception("bundle %s: the reload failed", source.name)
                swapped, error = False, f"the reload failed: {type(exc).__name__}: {exc}"
            if error:
                remove_stage(root)
                self._refused(source, error)
                return
            if swapped:
                old, self.stage_dir = self.stage_dir, root
                remove_stage(old)
            else:  # the same policy content (e.g. only the revision changed): the live directory stays
                remove_stage(root)
            source.live = bundle
            source.last_error = ""
            self.metrics.set_revision(source.name, bundle.revision)
            self.metrics.polls.labels(source.name, "updated").inc()
            log.info("bundle %s revision %r is live (%s)", source.name, bundle.revision,
                     "policy set swapped" if swapped else "same policy content")

    async def _fetch_and_parse(self, source: BundleSource, at_start: bool = False) -> Bundle | None:
        where = shown_url(source.location)
        try:
            fetched = await source.fetcher.fetch(source.tag)
        except BundleError as exc:
            source.failures += 1
            self.metrics.polls.labels(source.name, "failed").inc()
            if str(exc) != source.last_error or source.failures % 10 == 1:
                log.log(logging.INFO if at_start else logging.WARNING,
                        "bundle %s: %s (the last good set stays; retrying)", source.name, exc)
            source.last_error, source.last_error_at = str(exc), time.time()
            return None
        source.failures = 0
        source.last_success_at = time.time()
        self.metrics.last_success.labels(source.name).set(source.last_success_at)
        if fetched.read is None:
            self.metrics.polls.labels(source.name, "not_modified").inc()
            return None
        source.tag = fetched.tag
        if fetched.transferred:
            self.metrics.downloaded.labels(source.name).inc(fetched.transferred)
        read = fetched.read
        try:
            return await asyncio.to_thread(
                lambda: parse_bundle(source.name, where, read(), self.verification if source.signed_only else None,
                                     etag=fetched.tag))
        except BundleError as exc:
            self._refused(source, str(exc))
            return None

    def _refused(self, source: BundleSource, message: str) -> None:
        self.metrics.polls.labels(source.name, "refused").inc()
        source.last_error, source.last_error_at = message, time.time()
        log.error("bundle %s refused, the last good set stays: %s", source.name, message)

    def status(self) -> list[dict[str, Any]]:
        return [source.status() for source in self.sources]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        for source in self.sources:
            await source.fetcher.close()
        remove_stage(self.stage_dir)
        self.stage_dir = ""
