"""The admin listener: /health, /ready, /metrics and /policy on one port."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

ReadyCheck = Callable[[], tuple[bool, dict[str, Any]]]
StatusSource = Callable[[], dict[str, Any]]


def admin_app(
    registry: CollectorRegistry,
    ready: ReadyCheck,
    policy_status: StatusSource | None = None,
) -> web.Application:
    """``/health``: the process serves; ``/ready``: receivers up and the exporter can send."""

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readiness(_: web.Request) -> web.Response:
        ok, details = ready()
        body = {"status": "ready" if ok else "not ready", **details}
        if policy_status is not None:
            # how the data is treated belongs beside "ready": dry_run / passthrough mask nothing
            status = policy_status()
            body["policy_mode"] = status.get("mode", "")
            if status.get("warning"):
                body["policy_warning"] = status["warning"]
        return web.json_response(body, status=200 if ok else 503)

    async def metrics(_: web.Request) -> web.Response:
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def policy(_: web.Request) -> web.Response:
        status = policy_status() if policy_status else {"version": "", "policy": "none"}
        return web.Response(
            text=json.dumps(status, indent=2, default=str), content_type="application/json"
        )

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/ready", readiness)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/policy", policy)
    return app
