"""How the sidecar's policy engine is built for ``policy.mode``, and the loud pass-through.

``enforce`` and ``dry_run`` run the :class:`~sidecar.policy.service.PolicyService` (the
bundled policy set when no directory is configured). ``passthrough`` is the only way to
the pipeline's :class:`~sidecar.pipeline.PassThrough` planner: nothing is evaluated and
nothing masked, and it says so in a WARNING at start, in ``/policy``, in ``/ready`` and in
the ``otlp_sidecar_policy_mode`` metric.
"""

from __future__ import annotations

import logging
from typing import Any

import prometheus_client

from sidecar.identity import PodIdentity
from sidecar.pipeline import PassThrough, Planner
from sidecar.policy.config import PolicyConfig
from sidecar.policy.decision import RateLimit
from sidecar.policy.metrics import PolicyMetrics
from sidecar.policy.service import MODE_WARNINGS, PolicyService

log = logging.getLogger(__name__)


class PassThroughMode:
    """The policy side of ``policy.mode = "passthrough"``: status and metrics, no policy."""

    def __init__(self, config: PolicyConfig, registry: prometheus_client.CollectorRegistry) -> None:
        self.config = config
        self.metrics = PolicyMetrics(registry)
        self.metrics.set_mode("passthrough")
        self.metrics.dry_run.set(0)

    @property
    def ready(self) -> bool:
        return True

    @property
    def version(self) -> str:
        return "none"

    async def start(self) -> None:
        log.warning(
            "policy.mode is passthrough: NO policy is applied - card numbers are forwarded "
            "UNMASKED, tenants are not stamped, nothing is sampled"
        )

    async def stop(self) -> None:
        return None

    def export_headers(self) -> dict[str, str]:
        return {}

    def rate_limit(self) -> RateLimit | None:
        return None

    def status(self) -> dict[str, Any]:
        return {
            "mode": "passthrough",
            "warning": MODE_WARNINGS["passthrough"],
            "backend": "none",
            "version": "none",
            "exemptions": [],
            "ready": True,
        }


async def start_policy(
    config: PolicyConfig, pod: PodIdentity, registry: prometheus_client.CollectorRegistry,
) -> tuple[PolicyService | PassThroughMode, Planner]:
    """Build and start the policy side for ``config.mode``; return it and the pipeline's planner."""
    if config.mode == "passthrough":
        mode = PassThroughMode(config, registry)
        await mode.start()
        return mode, PassThrough()
    service = PolicyService(config, pod, registry)
    await service.start()
    return service, service
