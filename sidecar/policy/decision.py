"""Validate the policies' decision document and compile it into the rewriter's plan.

The decision document maps each policy package to its part of the decision for
one resource (see docs/policy.md, "Decision contract"). Every part is checked;
a wrong type or an unknown action is a :class:`DecisionError` that names the
policy file, its package and the path inside the part. The parts are merged into
one :class:`~sidecar.rewrite.plan.Plan`:

- attribute rules are ordered most protective first (``drop``, ``redact``,
  ``hash``, ``mask_pan``, then ``keep``): the rewriter applies the first match;
- one detector per kind, the most protective action winning;
- stamps of the same key must agree;
- the lowest sampling ratio wins, keep rules are united;
- any part that refuses refuses the resource.

Then the engine's PCI guarantee applies (:mod:`sidecar.policy.invariant`): a plan always
detects card numbers, and only the set's exemptions may keep an attribute from it.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeGuard, TypeVar, get_args

from sidecar.masked_text import holds_card_number, quoted, text_problem
from sidecar.policy.errors import DecisionError
from sidecar.policy.invariant import Exemption, enforce, exemptions_from
from sidecar.rewrite.plan import (
    DEFAULT_REDACTION,
    AttributeAction,
    AttributeRule,
    ConflictAction,
    DetectorAction,
    KeepKind,
    KeepRule,
    Plan,
    ResourceStamp,
    Sampling,
    ValueDetector,
)

#: the plan's vocabularies, typed as the literals the plan's fields take
ATTRIBUTE_ACTIONS: tuple[AttributeAction, ...] = get_args(AttributeAction)
DETECTOR_ACTIONS: tuple[DetectorAction, ...] = get_args(DetectorAction)
DETECTOR_KINDS: tuple[Literal["pan"], ...] = ("pan",)
KEEP_KINDS: tuple[KeepKind, ...] = get_args(KeepKind)
CONFLICT_ACTIONS: tuple[ConflictAction, ...] = get_args(ConflictAction)
_Word = TypeVar("_Word", bound=str)

#: the keys a part of the decision may have
PART_KEYS = ("allow", "reason", "rule_id", "attributes", "detectors", "stamps", "sampling", "redaction")
#: most protective first: the rewriter applies the first matching attribute rule
ACTION_ORDER = {"drop": 0, "redact": 1, "hash": 2, "mask_pan": 3, "keep": 4}
DETECTOR_ORDER = {"redact": 0, "hash": 1, "mask_pan": 2}
_SEPARATORS = (".", "_", "-")
_WORD_SPLIT = re.compile(r"[._-]+")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
#: a header value as the exporter sends it: printable ASCII and tabs, one line
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e]*")
_RULE_ID = re.compile(r"^[A-Za-z0-9_.:/-]{1,80}$")


@dataclass(frozen=True)
class RateLimit:
    """Items per second with a burst, for the pod's tenant."""

    per_second: float
    burst: float


@dataclass(frozen=True)
class PodSettings:
    """What the policies decide once per pod: the tenant, egress headers, the rate limit."""

    tenant: str = ""
    export_headers: dict[str, str] = field(default_factory=dict)
    rate_limit: RateLimit | None = None
    #: attribute keys that may carry card numbers, each with its reason
    exemptions: tuple[Exemption, ...] = ()


@functools.lru_cache(maxsize=1024)
def key_patterns(name: str) -> tuple[str, ...]:
    """Glob patterns matching ``name`` as a whole key or as the last word of a longer key.

    The words of ``name`` (split at ``.``, ``_``, ``-``) are joined with each
    separator: ``pin_block`` gives ``pin_block``, ``pin.block``, ``pin-block``, each
    also after ``*.``, ``*_`` and ``*-`` (``payment.card.pin_block``). A name of several words
    also matches them run together, alone or at the end of a key: ``pinblock``, ``*pinblock``
    (matching ignores case: ``pinBlock``, ``cardPinBlock``; one word alone is not matched inside
    another: ``pan`` in ``japan``).
    """
    words = [w for w in _WORD_SPLIT.split(name) if w]
    spellings = dict.fromkeys(sep.join(words) for sep in _SEPARATORS)
    patterns = [prefix + spelling for spelling in spellings for prefix in ("", "*.", "*_", "*-")]
    if len(words) > 1:  # camelCase and run-together spellings (Java, JavaScript, Go field names)
        joined = "".join(words)
        patterns += [joined, "*" + joined]
    return tuple(patterns)


class _Where:
    """Names the place of a problem: file, package, and the path inside the part."""

    def __init__(self, package: str, file_of: Callable[[str], str]) -> None:
        self.package = package
        self.file = file_of(package)

    def fail(self, path: str, problem: str, rule_id: str = "") -> DecisionError:
        origin = f"{self.file} (package {self.package})" if self.file else f"package {self.package}"
        suffix = f" [rule_id {rule_id!r}]" if rule_id else ""
        return DecisionError(f"{origin}: decision.{path}: {problem}{suffix}")


def _rule_id(where: _Where, path: str, entry: Mapping[str, Any]) -> str:
    value = entry.get("rule_id")
    if not isinstance(value, str) or not _RULE_ID.fullmatch(value):
        raise where.fail(
            f"{path}.rule_id",
            "must be a string of letters, digits and . _ : / - (at most 80), got " + _kind(value),
        )
    if holds_card_number(value):
        # it would go into metric labels and the decision log: never quoted here either
        raise where.fail(f"{path}.rule_id", "holds a card number: a rule id names a rule, it is never built "
                                            "from telemetry")
    return value


def _check_package(package: Any) -> None:
    """A key of the decision document names a policy package: it is quoted in errors and is the
    rule id of a refusal without one (a metric label, the decision log). One built from telemetry
    (a resource attribute) is refused unquoted."""
    if not isinstance(package, str) or not _RULE_ID.fullmatch(package) or holds_card_number(package):
        raise DecisionError(
            "decisions: a key must name a policy package (letters, digits and . _ : / -, at most 80, "
            "no card number); one is not, and is not shown: is it built from telemetry?"
        )


def _show(value: Any) -> str:
    """An enum-like value the policy wrote (an action, a kind), shortened: masked first, as a
    policy may have built it from the app's attributes."""
    text = quoted(repr(value), 200)
    return text if len(text) <= 40 else text[:37] + "..."


def _kind(value: Any) -> str:
    """The JSON type of a value, never the value: it may come from the telemetry."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _entries(where: _Where, part: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    value = part.get(key, [])
    if not isinstance(value, list) or not all(isinstance(e, dict) for e in value):
        raise where.fail(key, "must be an array (or set) of objects, got " + _kind(value))
    return value


def _choice(
    where: _Where, path: str, value: Any, allowed: tuple[_Word, ...], what: str, rule_id: str
) -> _Word:
    for word in allowed:
        if value == word:
            return word
    raise where.fail(path, f"unknown {what} {_show(value)} (allowed: {', '.join(allowed)})", rule_id)


def _strings(where: _Where, path: str, value: Any, rule_id: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise where.fail(path, "must be a non-empty string or an array of them", rule_id)
    return value


def _attribute_rules(where: _Where, part: Mapping[str, Any]) -> list[AttributeRule]:
    rules: list[AttributeRule] = []
    for index, entry in enumerate(_entries(where, part, "attributes")):
        path = f"attributes[{index}]"
        rule_id = _rule_id(where, path, entry)
        unknown = set(entry) - {"rule_id", "action", "keys", "match"}
        if unknown:
            raise where.fail(f"{path}", f"unknown field {sorted(unknown)[0]!r} "
                             "(fields: rule_id, action, keys, match)", rule_id)
        action = _choice(where, f"{path}.action", entry.get("action"), ATTRIBUTE_ACTIONS, "action", rule_id)
        if "keys" not in entry and "match" not in entry:
            raise where.fail(path, "needs `keys` (key names) or `match` (glob patterns)", rule_id)
        patterns: list[str] = []
        if "keys" in entry:
            for name in _strings(where, f"{path}.keys", entry["keys"], rule_id):
                patterns += key_patterns(name)
        if "match" in entry:
            patterns += _strings(where, f"{path}.match", entry["match"], rule_id)
        rules += [AttributeRule(rule_id, pattern, action) for pattern in patterns]
    return rules


def _detectors(where: _Where, part: Mapping[str, Any]) -> list[ValueDetector]:
    found: list[ValueDetector] = []
    for index, entry in enumerate(_entries(where, part, "detectors")):
        path = f"detectors[{index}]"
        rule_id = _rule_id(where, path, entry)
        kind = _choice(where, f"{path}.kind", entry.get("kind"), DETECTOR_KINDS, "detector kind", rule_id)
        action = _choice(where, f"{path}.action", entry.get("action"), DETECTOR_ACTIONS, "action", rule_id)
        found.append(ValueDetector(rule_id, kind, action))
    return found


def _stamps(where: _Where, part: Mapping[str, Any]) -> list[ResourceStamp]:
    found: list[ResourceStamp] = []
    for index, entry in enumerate(_entries(where, part, "stamps")):
        path = f"stamps[{index}]"
        rule_id = _rule_id(where, path, entry)
        key, value = entry.get("key"), entry.get("value")
        if not isinstance(key, str) or not key:
            raise where.fail(f"{path}.key", "must be a non-empty string, got " + _kind(key), rule_id)
        if not isinstance(value, str):
            raise where.fail(f"{path}.value", "must be a string, got " + _kind(value), rule_id)
        conflict = _choice(
            where, f"{path}.on_conflict", entry.get("on_conflict", "overwrite"), CONFLICT_ACTIONS,
            "on_conflict", rule_id,
        )
        for field_name, text in (("value", value), ("key", key)):
            # written on every resource, never scanned: refused as a rule id is (never quoted)
            problem = text_problem(text, ": a stamp is written on every resource as it is")
            if problem:
                raise where.fail(f"{path}.{field_name}", problem, rule_id)
        found.append(ResourceStamp(rule_id, key, value, conflict))
    return found


def _number(value: Any) -> TypeGuard[int | float]:
    """A finite JSON number (not a boolean)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _sampling(where: _Where, part: Mapping[str, Any]) -> Sampling | None:
    if "sampling" not in part:
        return None
    entry = part["sampling"]
    if not isinstance(entry, dict):
        raise where.fail("sampling", "must be an object, got " + _kind(entry))
    rule_id = _rule_id(where, "sampling", entry)
    ratio = entry.get("ratio")
    if not _number(ratio) or not 0.0 <= ratio <= 1.0:
        got = f"{ratio:g}" if _number(ratio) else _kind(ratio)
        raise where.fail("sampling.ratio", f"must be a number from 0 to 1, got {got}", rule_id)
    keep: list[KeepRule] = []
    for index, rule in enumerate(_entries(where, entry, "keep")):
        path = f"sampling.keep[{index}]"
        keep_id = _rule_id(where, path, rule)
        kind = _choice(where, f"{path}.kind", rule.get("kind"), KEEP_KINDS, "keep kind", keep_id)
        key, value = rule.get("key", ""), rule.get("value")
        if kind != "status_error":
            if not isinstance(key, str) or not key:
                raise where.fail(f"{path}.key", "must be a non-empty string", keep_id)
            if kind == "attr_at_least" and not _number(value):
                raise where.fail(f"{path}.value", "must be a number, got " + _kind(value), keep_id)
            if kind == "attr_equals" and not (isinstance(value, str | bool) or _number(value)):
                raise where.fail(
                    f"{path}.value", "must be a string, number or boolean, got " + _kind(value), keep_id
                )
        keep.append(KeepRule(keep_id, kind, key or "", value))
    return Sampling(rule_id, float(ratio), tuple(keep))


def compile_plan(
    decisions: Any,
    file_of: Callable[[str], str],
    *,
    hash_key: bytes = b"",
    dry_run: bool = False,
    exemptions: Sequence[Exemption] = (),
    ignored: list[str] | None = None,
) -> Plan:
    """Check the decision document (``{package: part}``) and compile it into one plan.

    The PCI guarantee is applied last: ``exemptions`` are the only ``keep`` rules honoured;
    the ids of the policies' other ``keep`` rules are appended to ``ignored`` when given.
    """
    if decisions is None:
        decisions = {}
    if not isinstance(decisions, dict):
        raise DecisionError("decisions: must be an object mapping policy packages to their part")
    refusal: tuple[str, str] | None = None
    rules: list[AttributeRule] = []
    detectors: dict[str, ValueDetector] = {}
    stamps: dict[str, tuple[ResourceStamp, str]] = {}
    sampling: Sampling | None = None
    redaction = DEFAULT_REDACTION
    for package in sorted(decisions):
        _check_package(package)
        part = decisions[package]
        where = _Where(package, file_of)
        if not isinstance(part, dict):
            raise where.fail("", "must be an object, got " + _kind(part))
        unknown = sorted(set(part) - set(PART_KEYS))
        if unknown:
            raise where.fail(unknown[0], f"unknown key (the keys of a decision: {', '.join(PART_KEYS)})")
        allow = part.get("allow", True)
        if not isinstance(allow, bool):
            raise where.fail("allow", "must be true or false, got " + _kind(allow))
        if not allow and refusal is None:
            reason = part.get("reason", "refused by policy")
            if not isinstance(reason, str):
                raise where.fail("reason", "must be a string, got " + _kind(reason))
            refusal = (reason, _rule_id(where, "", part) if "rule_id" in part else package)
        rules += _attribute_rules(where, part)
        for detector in _detectors(where, part):
            held = detectors.get(detector.kind)
            if held is None or DETECTOR_ORDER[detector.action] < DETECTOR_ORDER[held.action]:
                detectors[detector.kind] = detector
        for stamp in _stamps(where, part):
            if stamp.key in stamps and stamps[stamp.key][0].value != stamp.value:
                raise where.fail(
                    "stamps", f"stamps {stamp.key!r} with another value than package "
                    f"{stamps[stamp.key][1]} does", stamp.rule_id,
                )
            if stamp.key not in stamps or stamp.on_conflict == "reject":
                stamps[stamp.key] = (stamp, package)
        part_sampling = _sampling(where, part)
        if part_sampling is not None:
            sampling = _merge_sampling(sampling, part_sampling)
        if "redaction" in part:
            if not isinstance(part["redaction"], str):
                raise where.fail("redaction", "must be a string")
            problem = text_problem(part["redaction"], ": the redaction text is written as it is")
            if problem:
                raise where.fail("redaction", problem)
            redaction = part["redaction"]
    rules, guarded, dropped_keeps = enforce(rules, list(detectors.values()), exemptions)
    if ignored is not None:
        ignored += dropped_keeps
    plan = Plan(
        allow=refusal is None,
        reason=refusal[0] if refusal else "",
        refuse_rule_id=refusal[1] if refusal else "",
        attribute_rules=_order_rules(rules),
        detectors=tuple(sorted(guarded, key=lambda d: d.kind)),
        stamps=tuple(stamps[k][0] for k in sorted(stamps)),
        sampling=sampling,
        redaction=redaction,
        dry_run=dry_run,
    )
    if plan.needs_hash_key():
        if not hash_key:
            hashers: tuple[AttributeRule | ValueDetector, ...] = (*plan.attribute_rules, *plan.detectors)
            rule = next(r.rule_id for r in hashers if r.action == "hash")
            raise DecisionError(
                f"rule {rule!r} asks for `hash` but no hash key is loaded (set policy.hash_key_file)"
            )
        plan = plan.with_hash_key(hash_key)
    return plan


def _merge_sampling(held: Sampling | None, new: Sampling) -> Sampling:
    if held is None:
        return new
    low = held if held.ratio <= new.ratio else new
    keep = tuple(dict.fromkeys((*held.keep, *new.keep)))
    return Sampling(low.rule_id, low.ratio, keep)


def _order_rules(rules: list[AttributeRule]) -> tuple[AttributeRule, ...]:
    ordered = sorted(
        rules,
        key=lambda r: (ACTION_ORDER[r.action], "*" in r.pattern or "?" in r.pattern, r.pattern.lower()),
    )
    seen: set[str] = set()
    unique: list[AttributeRule] = []
    for rule in ordered:
        folded = rule.pattern.lower()
        if folded not in seen:
            seen.add(folded)
            unique.append(rule)
    return tuple(unique)


def _no_card_number(origin: str, what: str, text: str) -> None:
    """Policy text the sidecar logs, shows in /policy and sends upstream (a header) holds no card
    number: DecisionError, the text not quoted."""
    problem = text_problem(text, " (it is logged and sent as written; policy text is never built from telemetry)")
    if problem:
        raise DecisionError(f"{origin}: {what} {problem}")


def pod_settings_from(document: Any, origin: str) -> PodSettings:
    """Check the ``pod_settings`` document; ``origin`` names where it came from."""
    if document is None:
        return PodSettings()
    if not isinstance(document, dict):
        raise DecisionError(f"{origin}: pod_settings must be an object")
    tenant = document.get("tenant", "")
    if not isinstance(tenant, str):
        raise DecisionError(f"{origin}: pod_settings.tenant must be a string")
    _no_card_number(origin, "pod_settings.tenant", tenant)
    headers = document.get("export_headers", {}) or {}
    if not isinstance(headers, dict):
        raise DecisionError(f"{origin}: pod_settings.export_headers must be an object of strings")
    for name, value in headers.items():
        if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
            raise DecisionError(f"{origin}: pod_settings.export_headers: {quoted(name, 80)} is not a header name")
        _no_card_number(origin, "a name of pod_settings.export_headers", name)
        if not isinstance(value, str) or not _HEADER_VALUE.fullmatch(value):
            raise DecisionError(
                f"{origin}: pod_settings.export_headers[{name!r}] must be a one-line string of printable ASCII"
            )
        _no_card_number(origin, f"pod_settings.export_headers[{name!r}]", value)
    limit = document.get("rate_limit")
    rate_limit = None
    if limit is not None:
        if not isinstance(limit, dict):
            raise DecisionError(f"{origin}: pod_settings.rate_limit must be an object or null")
        per_second, burst = limit.get("spans_per_second"), limit.get("burst", limit.get("spans_per_second"))
        if not _number(per_second) or per_second <= 0 or not _number(burst) or burst < 0:
            raise DecisionError(
                f"{origin}: pod_settings.rate_limit needs spans_per_second > 0 and burst >= 0"
            )
        rate_limit = RateLimit(float(per_second), float(burst))
    return PodSettings(
        tenant=tenant, export_headers=dict(headers), rate_limit=rate_limit,
        exemptions=exemptions_from(document.get("exemptions"), origin),
    )
