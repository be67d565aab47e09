"""The decision log: one JSON line per decision, in the spirit of OPA's.

A line holds the decision id, time, policy version, the decision path, the
signal, transport and whether the peer used TLS, the rule ids of the plan, how
many rules of each action it has, whether it refused, and the time taken. It
never holds a value from the telemetry (no attribute values, no reason text
built from them). The rewriter's per-rule counts are logged as ``counts`` lines.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import uuid
from collections import Counter
from typing import IO, Any

from sidecar.rewrite.plan import Plan

log = logging.getLogger(__name__)


def plan_summary(plan: Plan) -> dict[str, Any]:
    """What a plan does, without any value: rule ids and counts per action."""
    rule_ids = {r.rule_id for r in plan.attribute_rules} | {d.rule_id for d in plan.detectors}
    rule_ids |= {s.rule_id for s in plan.stamps}
    if plan.sampling is not None:
        rule_ids.add(plan.sampling.rule_id)
        rule_ids |= {k.rule_id for k in plan.sampling.keep}
    if not plan.allow:
        rule_ids.add(plan.refuse_rule_id)
    actions = Counter(r.action for r in plan.attribute_rules)
    return {
        "allow": plan.allow,
        "rule_ids": sorted(rule_ids),
        "attribute_rules": dict(sorted(actions.items())),
        "detectors": [f"{d.kind}:{d.action}" for d in plan.detectors],
        "stamps": [s.key for s in plan.stamps],
        "sampling_ratio": plan.sampling.ratio if plan.sampling else None,
        "dry_run": plan.dry_run,
    }


class DecisionLog:
    """Append JSON lines to a file (``-``: stderr). Writing problems are logged once, not raised."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._stream: IO[str] | None = None
        self._broken = False

    def _open(self) -> IO[str] | None:
        if self._stream is None and not self._broken:
            try:
                self._stream = sys.stderr if self.target == "-" else open(  # noqa: SIM115
                    self.target, "a", encoding="utf-8", buffering=1
                )
            except OSError as exc:
                self._broken = True
                log.error("decision log %s cannot be opened: %s", self.target, exc.strerror)
        return self._stream

    def write(self, entry: dict[str, Any]) -> None:
        stream = self._open()
        if stream is None:
            return
        try:
            stream.write(json.dumps(entry, separators=(",", ":"), sort_keys=True) + "\n")
        except OSError as exc:
            self._broken = True
            log.error("decision log %s cannot be written: %s", self.target, exc.strerror)

    def decision(
        self, *, version: str, path: str, signal: str, transport: str, peer_tls: bool,
        plan: Plan, seconds: float, outcome: str, error: str = "",
    ) -> None:
        entry: dict[str, Any] = {
            "kind": "decision",
            "decision_id": str(uuid.uuid4()),
            "timestamp": time.time(),
            "policy_version": version,
            "path": path,
            "signal": signal,
            "transport": transport,
            "peer_tls": peer_tls,
            "outcome": outcome,
            "duration_ms": round(seconds * 1000.0, 3),
            **plan_summary(plan),
        }
        if error:
            entry["error"] = error
        self.write(entry)

    def counts(self, *, version: str, signal: str, counts: dict[tuple[str, str], int]) -> None:
        if not counts:
            return
        self.write({
            "kind": "counts",
            "timestamp": time.time(),
            "policy_version": version,
            "signal": signal,
            "counts": {f"{rule}:{action}": n for (rule, action), n in sorted(counts.items())},
        })

    def close(self) -> None:
        if self._stream is not None and self._stream is not sys.stderr:
            self._stream.close()
        self._stream = None
