"""The admin listener: /health, /ready, /metrics and /policy on one port.

It runs on the sidecar's own HTTP/1.1 server (sidecar.wire.http1), with the same strict parser
and the ``limits`` section's header and idle timeouts, and a small connection cap of its own
(``limits.admin_max_connections``): the injector binds it to 0.0.0.0 for the kubelet's probes,
so it is reachable from the cluster, and must never hold the OTLP listeners' descriptors.
Malformed requests get 400 (431, 414 ...) without a traceback; requests with a body are refused
(413): the admin port reads none.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from sidecar.overload.config import LimitsConfig
from sidecar.overload.metrics import Counted, OverloadMetrics
from sidecar.wire.http1 import Http1Server, Limits, Request, Response, plain

if TYPE_CHECKING:
    from sidecar.policy.eval_plan import PlanSource

ReadyCheck = Callable[[], tuple[bool, dict[str, Any]]]
StatusSource = Callable[[], dict[str, Any]]

LISTENER = "admin"
#: the live plan for a resource given as query parameters (sidecar.policy.eval_plan), without values
DEBUG_PLAN = "/debug/plan"
_JSON = "application/json"


class AdminServer:
    """``/health``: the process serves; ``/ready``: receivers up and the exporter can send;
    ``/metrics``: Prometheus text; ``/policy``: the policy engine's status."""

    def __init__(
        self,
        registry: CollectorRegistry,
        ready: ReadyCheck,
        policy_status: StatusSource | None = None,
        *,
        limits: LimitsConfig | None = None,
        overload: OverloadMetrics | None = None,
        plans: PlanSource | None = None,
    ) -> None:
        self._registry = registry
        # /debug/plan asks the policy service (given, or the one whose status /policy shows)
        found = plans or getattr(policy_status, "__self__", None)
        self._plans: PlanSource | None = found if hasattr(found, "plans_for") else None
        self._ready = ready
        self._policy_status = policy_status
        config = limits or LimitsConfig()
        self.limits = Limits(
            max_request_bytes=0,  # GET only: no body is ever read
            max_header_bytes=16 * 1024,
            max_headers=64,
            max_request_line=4 * 1024,
            read_ahead=16 * 1024,
            buffer_size=16 * 1024,
            header_timeout=config.header_timeout,
            idle_timeout=config.idle_timeout,
            body_timeout=config.header_timeout,
            body_deadline=config.header_timeout,
            max_connections=config.connection_caps()[LISTENER],
            pool_bytes=0,
        )
        self.server = Http1Server(self._handle, check=self._check, limits=self.limits,
                                  count=Counted(overload, LISTENER))
        if overload is not None:
            overload.track_connections(LISTENER, lambda: self.server.connections, self.limits.max_connections)
        self._routes: dict[str, Callable[[], Response]] = {
            "/health": self._health, "/ready": self._readiness, "/metrics": self._metrics, "/policy": self._policy,
        }
        if self._plans is not None:
            self._routes[DEBUG_PLAN] = self._policy  # answered in _handle (async)

    async def start(self, host: str, port: int) -> tuple[str, int]:
        return await self.server.start(host, port)

    async def cleanup(self) -> None:
        """Stop listening and close the connections (the name aiohttp's runners had)."""
        await self.server.close(1.0)

    def _check(self, request: Request) -> Response | None:
        if request.path not in self._routes:
            return plain(404, f"nothing at {request.path}; try /health, /ready, /metrics or /policy")
        if request.method not in ("GET", "HEAD"):
            return plain(405, f"{request.method} is not allowed; use GET", {"Allow": "GET, HEAD"})
        return None

    async def _handle(self, request: Request) -> Response:
        if request.path == DEBUG_PLAN and self._plans is not None:
            from sidecar.policy.eval_plan import live_plan

            status, body = await live_plan(self._plans, request.target)
            return Response(status, json.dumps(body, indent=2).encode(), _JSON)
        return self._routes[request.path]()

    def _health(self) -> Response:
        return _json({"status": "ok"})

    def _readiness(self) -> Response:
        ok, details = self._ready()
        body = {"status": "ready" if ok else "not ready", **details}
        if self._policy_status is not None:
            # how the data is treated belongs beside "ready": dry_run / passthrough mask nothing
            status = self._policy_status()
            body["policy_mode"] = status.get("mode", "")
            if status.get("warning"):
                body["policy_warning"] = status["warning"]
        return _json(body, 200 if ok else 503)

    def _metrics(self) -> Response:
        return Response(200, generate_latest(self._registry), CONTENT_TYPE_LATEST)

    def _policy(self) -> Response:
        status = self._policy_status() if self._policy_status else {"version": "", "policy": "none"}
        return Response(200, json.dumps(status, indent=2, default=str).encode(), _JSON)


def _json(body: dict[str, Any], status: int = 200) -> Response:
    return Response(status, json.dumps(body).encode(), _JSON)


def admin_app(
    registry: CollectorRegistry,
    ready: ReadyCheck,
    policy_status: StatusSource | None = None,
    *,
    limits: LimitsConfig | None = None,
    overload: OverloadMetrics | None = None,
) -> AdminServer:
    """The admin listener (not started): ``await admin.start(host, port)``."""
    return AdminServer(registry, ready, policy_status, limits=limits, overload=overload)
