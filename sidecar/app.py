"""The running sidecar: wires receivers, pipeline, policy, queue, exporter and admin together.

Start order is the reverse of the data flow (exporter first, receivers last) so
nothing is accepted that cannot be handled; stop order follows the data flow:
stop accepting, flush what was accepted, then close the exporter.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys
from collections.abc import Awaitable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry

from sidecar import __version__
from sidecar.admin.server import AdminServer, admin_app
from sidecar.config import Config, ConfigError
from sidecar.configkit import parse_endpoint
from sidecar.export.by_signal import BySignalExporter
from sidecar.export.config import ExporterConfig
from sidecar.export.debug import DebugExporter
from sidecar.export.diskqueue import DiskQueue
from sidecar.export.grpc import GrpcExporter
from sidecar.export.lanes import lane_name, lanes_of
from sidecar.export.queue import ExportQueue
from sidecar.export.sender import Exporter, Sender
from sidecar.metrics import SidecarMetrics
from sidecar.overload.accept import AcceptBackoffLog
from sidecar.overload.budget import MemoryBudget, light_reserve
from sidecar.overload.config import LimitsConfig
from sidecar.overload.loop_lag import LoopLagProbe
from sidecar.overload.memory import tune_malloc
from sidecar.overload.reasons import Action
from sidecar.pipeline import Pipeline, Planner
from sidecar.receivers.grpc import GrpcReceiver
from sidecar.receivers.http import HttpReceiver
from sidecar.receivers.peers import peer_resolver
from sidecar.signals import Signal
from sidecar.tls.acceptor import tls_wrapper
from sidecar.tls.config import client_tls
from sidecar.tls.metrics import TLSMetrics
from sidecar.tls.server import ServerTLS
from sidecar.wire.http1 import Http1Server
from sidecar.wire.http2 import GrpcServer
from sidecar.wire.listener import ProtocolWrapper

if TYPE_CHECKING:  # the HTTP client's modules (aiohttp, and the CA store it loads) only when used
    from sidecar.export.auth import UpstreamAuth

log = logging.getLogger("sidecar")

#: seconds a shutdown may take in all (Kubernetes' default grace period is 30 s)
DEFAULT_GRACE = 20.0


class Sidecar:
    def __init__(self, config: Config, registry: CollectorRegistry | None = None) -> None:
        self.config = config
        self.metrics = SidecarMetrics(registry)
        self.metrics.build_info.info({"version": __version__})
        self.queue: ExportQueue | None = None
        self.exporter: Exporter | None = None
        self.sender: Sender | None = None
        self.policy: Any = None
        self.disk: DiskQueue | None = None
        self.auth: UpstreamAuth | None = None
        self.tls_metrics = TLSMetrics(self.metrics.registry)
        self._grpc_server: GrpcServer | None = None
        self._runners: list[AdminServer] = []
        self._http_server: Http1Server | None = None
        self.addresses: dict[str, tuple[str, int]] = {}
        self._receivers_up = False
        self._planner: Planner | None = None
        self._grpc_tls: ServerTLS | None = None
        self._http_tls: ServerTLS | None = None
        self._loop_lag = LoopLagProbe(self.metrics.overload.loop_lag.observe)

    # -- lifecycle -----------------------------------------------------------------------------

    async def prepare(self) -> None:
        """Everything ``run`` checks before it serves; ``config check`` runs exactly this.

        The listen and upstream addresses (at load), the disk queue directory, the upstream's
        TLS files and auth secrets, the receivers' TLS files, the pod identity files, and the
        policy set: loaded, its tests run, the PCI probe, the hash key. Raises ConfigError.
        """
        cfg = self.config
        for notice in cfg.notices:
            log.warning("%s", notice)
        if cfg.exporter.disk_queue_dir:
            _check_writable_dir("exporter.disk_queue_dir", cfg.exporter.disk_queue_dir)
        self.exporter = self._make_exporter()
        if cfg.receivers.grpc_enabled:
            self._grpc_tls = cfg.receivers_tls.server_tls(alpn=("h2",))
        if cfg.receivers.http_enabled:
            self._http_tls = cfg.receivers_tls.server_tls(alpn=())
        self._planner = await self._start_policy()

    async def start(self) -> None:
        cfg = self.config
        await self.prepare()
        assert self.exporter is not None and self._planner is not None
        lanes = lanes_of(cfg.exporter_for)
        if len(lanes) > 1:
            log.info("%d upstreams, each with its own circuit, workers and reserve of the export queue%s: %s",
                     len(lanes), " and of the disk queue" if cfg.exporter.disk_queue_dir else "",
                     "; ".join(lane_name(lane) for lane in lanes))
        if cfg.exporter.disk_queue_dir:
            self.disk = DiskQueue(
                cfg.exporter.disk_queue_dir,
                lanes=lanes,
                max_bytes=cfg.exporter.disk_queue_max_bytes,
                segment_bytes=cfg.exporter.disk_queue_segment_bytes,
                registry=self.metrics.registry,
                masks=cfg.policy.enforcing,
            )
        self.queue = ExportQueue(
            lanes=lanes,
            capacity_bytes=cfg.exporter.queue_max_bytes,
            batch_items=cfg.exporter.batch_size,
            batch_bytes=cfg.exporter.batch_max_bytes,
            batch_timeout=cfg.exporter.batch_timeout,
            metrics=self.metrics,
            disk=self.disk,
        )
        if self.disk is not None:
            try:
                # what the queue keeps track of at once: the rest of the replay waits on disk
                replay = self.disk.open(limit=self.queue.replay_records)
            except OSError as exc:
                raise ConfigError(
                    "exporter.disk_queue_dir", f"cannot use {cfg.exporter.disk_queue_dir}: {exc.strerror}"
                ) from None
            self.queue.restore(replay)
        await self.exporter.start()
        self.sender = Sender(self.queue, self.exporter, cfg.exporter, self.metrics, exporter_for=cfg.exporter_for)
        self.sender.start()
        # one budget for every byte clients make the sidecar hold, on every listener (sidecar.overload)
        tls = cfg.receivers_tls.enabled
        limit = cfg.limits.budget_limit(cfg.receivers.max_inflight_bytes, tls=tls)
        # its last bytes kept for connections holding little: greedy ones cannot starve normal clients
        budget = MemoryBudget(limit, cfg.limits.connection_share_bytes, light_reserve=light_reserve(limit))
        if tls:
            log.info("receivers speak TLS: the receive budget is %d bytes, %d kept from limits.budget_bytes for "
                     "the TLS connections' buffers (limits.tls_max_connections %d a listener)",
                     budget.limit, cfg.limits.budget_limit(cfg.receivers.max_inflight_bytes) - budget.limit,
                     cfg.limits.tls_max_connections)
        pipeline = Pipeline(
            self.queue, self.metrics, self._planner, max_resources=cfg.limits.max_resources_per_request,
            max_growth=cfg.limits.max_rewrite_growth_bytes, budget=budget,
        )
        tune_malloc()  # large buffers in their own mappings: grown without copies, freed at once
        if cfg.admin.enabled:
            status = self.policy.status if self.policy is not None else None
            app = admin_app(
                self.metrics.registry, self.readiness, status, limits=cfg.limits, overload=self.metrics.overload
            )
            self.addresses["admin"] = await _listening(
                "admin.endpoint", cfg.admin.endpoint, self._serve_admin(app, cfg.admin.endpoint))
        self.metrics.track_receive_budget(budget)
        self.metrics.overload.track(budget, cfg.limits.max_memory_bytes)
        if cfg.receivers.grpc_enabled:
            grpc_tls = self._grpc_tls
            resolver = peer_resolver(grpc_tls)
            receiver = GrpcReceiver(cfg.receivers, pipeline, self.metrics, peer_resolver=resolver)
            self._grpc_server = receiver.server(budget, cfg.limits, tls=grpc_tls is not None)
            host, port = parse_endpoint(cfg.receivers.grpc_endpoint)
            if grpc_tls is not None:
                self.tls_metrics.track(grpc_tls, "grpc")
            self.addresses["grpc"] = await _listening(
                "receivers.grpc_endpoint", cfg.receivers.grpc_endpoint,
                self._grpc_server.start(host, port, self._tls_wrapper(grpc_tls, "otlp_grpc", cfg.limits)),
            )
        if cfg.receivers.http_enabled:
            http_tls = self._http_tls
            if http_tls is not None:
                self.tls_metrics.track(http_tls, "http")
            receiver_http = HttpReceiver(
                cfg.receivers, pipeline, self.metrics, peer_resolver=peer_resolver(http_tls), limits=cfg.limits
            )
            self._http_server = receiver_http.server(budget=budget, tls=http_tls is not None)
            host, port = parse_endpoint(cfg.receivers.http_endpoint)
            self.addresses["http"] = await _listening(
                "receivers.http_endpoint", cfg.receivers.http_endpoint,
                self._http_server.start(host, port, self._tls_wrapper(http_tls, "otlp_http", cfg.limits)),
            )
        self._receivers_up = True
        # out of descriptors: one log line per pause of accepting, not a traceback per connection
        backoff = AcceptBackoffLog(self.metrics.overload.count)
        for name, address in self.addresses.items():
            backoff.register({"http": "otlp_http", "grpc": "otlp_grpc"}.get(name, name), address)
        backoff.install(asyncio.get_running_loop())
        # Everything made so far (modules, descriptors, the compiled policy) lives as long as the
        # process: move it out of the cyclic collector's sight. A full collection otherwise walks
        # it all, a ~40 ms pause of the event loop that shows in the p99.9 answer time.
        gc.collect()
        gc.freeze()
        self._loop_lag.start()  # from here the loop serves: how late it runs what is due
        enforcing = cfg.policy.mode == "enforce"
        log.log(logging.INFO if enforcing else logging.WARNING, "%s", self.start_line())

    def start_line(self) -> str:
        """One line that says what this sidecar does: listeners, upstream, policy, tenant, rewriter."""
        from sidecar.rewrite import IMPLEMENTATION

        cfg = self.config
        listening = ", ".join(f"{name} on {host}:{port}" for name, (host, port) in self.addresses.items())
        status: dict[str, Any] = {}
        if self.policy is not None and callable(getattr(self.policy, "status", None)):
            status = self.policy.status()
        mode = str(status.get("mode", cfg.policy.mode))
        if mode == "passthrough":
            policy = "NONE (policy.mode passthrough: card numbers forwarded UNMASKED)"
        else:
            if cfg.policy.backend == "opa":
                source = f"remote OPA {status.get('opa_url') or cfg.policy.opa_url}"
            elif status.get("bundles"):
                source = "bundles " + ", ".join(f"{b['name']}@{b['revision']}" for b in status["bundles"])
            elif cfg.policy.dir:
                source = cfg.policy.dir
            else:
                source = "bundled"
            version = status.get("version")
            policy = f"{source}{f' (version {version})' if version else ''}, mode {mode}"
            if mode != "enforce":
                policy += " (card numbers NOT masked)"
        tenant = status.get("tenant") or cfg.pod.tenant or "none"
        rewriter = "C (Cython)" if IMPLEMENTATION == "cython" else "pure Python (the C rewriter is not in use)"
        return (
            f"otlp-sidecar {__version__} up: {listening}; upstream {describe_upstream(cfg)}; "
            f"policy {policy}; tenant {tenant}; rewriter {rewriter}"
        )

    def _tls_wrapper(self, tls: ServerTLS | None, listener: str, limits: LimitsConfig) -> ProtocolWrapper | None:
        """How a listener with ``tls`` (None: plaintext) accepts: through our TLS acceptor, which
        counts and logs failed handshakes (asyncio's own ``ssl=`` would drop them silently), with
        as many handshakes in progress as the listener keeps connections (each holds TLS buffers)."""
        if tls is None:
            return None
        overload = self.metrics.overload
        return tls_wrapper(tls, handshake_timeout=limits.header_timeout,
                           max_handshakes=limits.connection_caps(tls=True)[listener],
                           refused=lambda: overload.count(listener, Action.connection_limit))

    async def stop(self, grace: float = DEFAULT_GRACE, quiet: bool = False) -> None:
        """Stop accepting, flush what was accepted (within ``grace`` seconds), close."""
        self._receivers_up = False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        receive_grace = min(5.0, grace / 4)
        # both listeners stop taking requests at once, then finish theirs within the grace
        servers = [server for server in (self._grpc_server, self._http_server) if server is not None]
        await asyncio.gather(*(server.close(receive_grace) for server in servers))
        self._grpc_server = self._http_server = None
        if self.sender is not None:
            await self.sender.drain(max(0.0, deadline - loop.time()))
        if self.exporter is not None:
            await self.exporter.stop()
        if self.auth is not None:
            await self.auth.close()
            self.auth = None
        if self.policy is not None:
            await self.policy.stop()
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
        if self.disk is not None:
            self.disk.close()
            self.disk = None
        self._loop_lag.stop()
        if not quiet:
            log.info("otlp-sidecar stopped")

    # -- parts ---------------------------------------------------------------------------------

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        exporter_ok = self.sender is not None and self.sender.healthy
        policy_ok = self.policy is None or bool(getattr(self.policy, "ready", True))
        details: dict[str, Any] = {
            "receivers": "up" if self._receivers_up else "down",
            # ok, or failing: the error with its URL and setting; the circuit; the last batch dropped
            **(self.sender.status() if self.sender is not None else {"exporter": "failing: not started"}),
            "policy": ("not loaded" if not policy_ok
                       else f"failing: {problem}" if (problem := getattr(self.policy, "problem", "")) else "ok"),
        }
        upstream_ok = exporter_ok or not self.config.admin.ready_requires_upstream
        return self._receivers_up and upstream_ok and policy_ok, details

    def _make_exporter(self) -> Exporter:
        default = self._exporter_from(self.config.exporter)
        if not self.config.signal_exporters:
            return default
        return BySignalExporter(
            {
                signal: self._exporter_from(self.config.signal_exporters[signal])
                if signal in self.config.signal_exporters else default
                for signal in Signal
            }
        )

    def _exporter_from(self, cfg: ExporterConfig) -> Exporter:
        if cfg.resolved_type == "debug":
            return DebugExporter(cfg.debug_output)
        grpc = cfg.protocol == "grpc"
        tls = client_tls(cfg, self.config.exporter_tls, alpn=("h2",) if grpc else ())
        if tls is not None:
            self.tls_metrics.track(tls, "exporter")
        if self.auth is None:
            self.auth = self.config.auth.build()
        invalidate = getattr(self.auth, "invalidate", None)
        options: dict[str, Any] = {
            "ssl_context": tls.context if tls is not None else None,
            "extra_headers": self._export_headers,
            "server_hostname": tls.server_hostname if tls is not None else None,
            "on_unauthorized": invalidate if callable(invalidate) else None,
            "classify": self.tls_metrics.client_failure,
        }
        if grpc:
            return GrpcExporter(cfg, **options)
        # imported here: aiohttp loads the system CA store at import, ~9 MiB a gRPC sidecar never uses
        from sidecar.export.http import HttpExporter

        return HttpExporter(cfg, **options)

    async def _export_headers(self) -> dict[str, str]:
        """Headers for each export: the policy's egress headers (X-Scope-OrgID), then auth."""
        headers: dict[str, str] = {}
        if self.policy is not None:
            headers.update(self.policy.export_headers())
        if self.auth is not None:
            headers.update(await self.auth.headers())
        return headers

    async def _start_policy(self) -> Planner:
        """The policy engine for policy.mode (the bundled set when no directory is given)."""
        from sidecar.policy.modes import start_policy

        self.policy, planner = await start_policy(
            self.config.policy, self.config.pod.identity(), self.metrics.registry)
        return planner

    async def _serve_admin(self, app: AdminServer, endpoint: str) -> tuple[str, int]:
        host, port = parse_endpoint(endpoint)
        address = await app.start(host, port)
        self._runners.append(app)
        return address


def describe_upstream(config: Config) -> str:
    """Where the data goes: URL, protocol, compression and TLS mode (per signal when they differ)."""
    parts: list[str] = []
    for signal_ in Signal:
        exporter = config.exporter_for(signal_)
        if exporter.resolved_type == "debug":
            target = "stdout" if exporter.debug_output == "-" else exporter.debug_output
            text = f"none: debug exporter, JSON lines to {target}"
        else:
            url = exporter.url_for(signal_)
            if urlsplit(url).scheme == "http":
                tls = "plaintext"
            elif exporter.client_certificate:
                tls = "mTLS"
            else:
                tls = "TLS"
            text = f"{url} ({exporter.protocol}, {exporter.compression}, {tls})"
        parts.append(text)
    if len(set(parts)) == 1:
        return parts[0]
    return ", ".join(f"{s.value} to {p}" for s, p in zip(Signal, parts, strict=True))


def _check_writable_dir(key: str, path: str) -> None:
    """``path`` is a directory this process can write, or can be made in one."""
    target = Path(path)
    existing = target
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(key, f"{path}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(key, f"{path}: {existing} is not writable by this process")


async def check(config: Config) -> None:
    """What ``otlp-sidecar config check`` runs: :meth:`Sidecar.prepare`, then undo it."""
    sidecar = Sidecar(config)
    try:
        await sidecar.prepare()
    finally:
        await sidecar.stop(grace=0.0, quiet=True)




class ListenError(ConfigError):
    """A listener could not bind: usually another process holds the port, not a wrong setting."""


async def _listening(setting: str, endpoint: str, start: Awaitable[tuple[str, int]]) -> tuple[str, int]:
    """Await a listener's start; a port in use (or any bind error) names the setting and value."""
    try:
        return await start
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)  # asyncio's text repeats the address
        raise ListenError(setting, f"cannot listen on {endpoint}: {reason}") from None


def start_error(exc: BaseException) -> tuple[str, int] | None:
    """(message, exit code) for an error that stops the start, or None for a bug."""
    if isinstance(exc, ListenError):
        return f"otlp-sidecar: cannot start: {exc}", 1
    if isinstance(exc, ConfigError):
        return f"otlp-sidecar: configuration error: {exc}", 2
    if isinstance(exc, OSError):
        return f"otlp-sidecar: cannot start: {exc}", 1
    return None


async def serve(config: Config, grace: float = DEFAULT_GRACE) -> int:
    """Run until SIGTERM or SIGINT; then shut down gracefully and return the exit code."""
    sidecar = Sidecar(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await sidecar.start()
    except Exception as exc:
        known = start_error(exc)
        if known is not None:  # the reason first, then what stopping printed
            print(known[0], file=sys.stderr, flush=True)
        await sidecar.stop(grace=1.0)
        if known is None:
            raise
        return known[1]
    await stop.wait()
    log.info("shutting down: no new requests; flushing what was accepted")
    await sidecar.stop(grace)
    return 0
