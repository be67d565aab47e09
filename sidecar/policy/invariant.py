"""The PCI guarantee as a property of the engine, whatever a policy set says.

A Luhn-valid card number never leaves the sidecar unmasked unless an *exemption*
names that exact attribute key with a reason. Every plan the engine compiles goes
through :func:`enforce`:

- a plan without a ``pan`` detector gets the engine's own (``engine.pci.pan``,
  ``mask_pan``), so no policy can switch card-number detection off by leaving it out;
- a ``keep`` rule exempts an attribute from the detectors, so only exemptions may
  produce one: every ``keep`` rule of the policies whose pattern is not an exempted
  key is removed (``keep`` sorts after every other action, so removing it changes
  nothing but the detectors: the attribute is scanned again);
- each exemption becomes a ``keep`` rule for its exact key (counted per rule).

Exemptions come from the policy set's ``pod_settings.exemptions`` (read once per load):
``[{"rule_id", "key", "reason"}]``. A glob, an empty key or a missing reason refuses
the set. The probe (:mod:`sidecar.policy.probe`) then checks the result on real bytes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sidecar.masked_text import text_problem
from sidecar.policy.errors import DecisionError
from sidecar.rewrite.plan import AttributeRule, ValueDetector

#: the rule id of the detector the engine adds to a plan that has none
ENGINE_PAN_RULE = "engine.pci.pan"
_RULE_ID = re.compile(r"^[A-Za-z0-9_.:/-]{1,80}$")
_MAX_KEY = 256
_MAX_REASON = 500


@dataclass(frozen=True)
class Exemption:
    """One attribute key whose values may carry card numbers, and why."""

    rule_id: str
    key: str
    reason: str

    def as_status(self) -> dict[str, str]:
        return {"rule_id": self.rule_id, "key": self.key, "reason": self.reason}


def exemptions_from(document: Any, origin: str) -> tuple[Exemption, ...]:
    """Check ``pod_settings.exemptions``; DecisionError naming ``origin`` when it is wrong."""
    if document is None:
        return ()
    if not isinstance(document, list):
        raise DecisionError(f"{origin}: pod_settings.exemptions must be an array of objects")
    found: list[Exemption] = []
    for index, entry in enumerate(document):
        where = f"{origin}: pod_settings.exemptions[{index}]"
        if not isinstance(entry, dict):
            raise DecisionError(f"{where} must be an object with rule_id, key and reason")
        unknown = sorted(set(entry) - {"rule_id", "key", "reason"})
        if unknown:
            raise DecisionError(f"{where}: unknown field {unknown[0]!r} (fields: rule_id, key, reason)")
        rule_id, key, reason = entry.get("rule_id"), entry.get("key"), entry.get("reason")
        for name, text in (("rule_id", rule_id), ("key", key), ("reason", reason)):
            # logged at every load, a metric label, /policy: refused, never quoted
            problem = text_problem(text, " (an exemption names a key and says why; it is logged as written)") \
                if isinstance(text, str) else None
            if problem:
                raise DecisionError(f"{where}.{name} {problem}")
        if not isinstance(rule_id, str) or not _RULE_ID.fullmatch(rule_id):
            raise DecisionError(f"{where}.rule_id must be a string of letters, digits and . _ : / - (at most 80)")
        if not isinstance(key, str) or not key.strip() or len(key) > _MAX_KEY:
            raise DecisionError(f"{where}.key must be one exact attribute key [rule_id {rule_id!r}]")
        if "*" in key or "?" in key:
            raise DecisionError(
                f"{where}.key {key[:80]!r} is a glob: an exemption names one exact attribute key, "
                f"never a pattern (card numbers stay masked everywhere else) [rule_id {rule_id!r}]"
            )
        if not isinstance(reason, str) or not reason.strip() or len(reason) > _MAX_REASON:
            raise DecisionError(
                f"{where}.reason must say why {key!r} may carry card numbers (a non-empty string of "
                f"at most {_MAX_REASON} characters) [rule_id {rule_id!r}]"
            )
        found.append(Exemption(rule_id, key, reason.strip()))
    return tuple(dict.fromkeys(found))


def exempted_keys(exemptions: Iterable[Exemption]) -> frozenset[str]:
    """The exempted keys, ASCII-lowercased (attribute rules match without case)."""
    return frozenset(e.key.lower() for e in exemptions)


def enforce(
    rules: Sequence[AttributeRule], detectors: Sequence[ValueDetector], exemptions: Sequence[Exemption],
) -> tuple[list[AttributeRule], list[ValueDetector], list[str]]:
    """Apply the guarantee to a plan's rules and detectors; also return the ``keep`` rule ids ignored."""
    allowed = exempted_keys(exemptions)
    kept: list[AttributeRule] = []
    ignored: list[str] = []
    for rule in rules:
        if rule.action == "keep" and rule.pattern.lower() not in allowed:
            ignored.append(rule.rule_id)
            continue
        kept.append(rule)
    kept += [AttributeRule(e.rule_id, e.key, "keep") for e in exemptions]
    found = list(detectors)
    if not any(d.kind == "pan" for d in found):
        found.append(ValueDetector(ENGINE_PAN_RULE, "pan", "mask_pan"))
    return kept, found, list(dict.fromkeys(ignored))

