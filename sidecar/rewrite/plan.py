"""The plan: what the policy engine decided for one resource, in the rewriter's vocabulary.

This is the contract between the policy engine (``sidecar.policy``), which
evaluates Rego once per distinct resource and compiles the decision into a
:class:`Plan`, and the rewriter (``sidecar.rewrite``), which applies the plan to
every span, log record and data point of that resource without calling back
into Python per item.

Everything here is plain, frozen data. Every rule carries a ``rule_id`` (the
policy's name for it, e.g. ``pci.cvv``) so the rewriter's counts can be audited
per rule. The HMAC key is bytes supplied by the caller (read from a secret file)
and is never part of ``repr``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

AttributeAction = Literal["drop", "redact", "hash", "mask_pan", "keep"]
DetectorAction = Literal["mask_pan", "redact", "hash"]
KeepKind = Literal["status_error", "attr_equals", "attr_at_least"]
ConflictAction = Literal["overwrite", "reject"]

ATTRIBUTE_ACTIONS: tuple[str, ...] = ("drop", "redact", "hash", "mask_pan", "keep")
DETECTOR_ACTIONS: tuple[str, ...] = ("mask_pan", "redact", "hash")
DETECTOR_KINDS: tuple[str, ...] = ("pan",)
KEEP_KINDS: tuple[str, ...] = ("status_error", "attr_equals", "attr_at_least")
CONFLICT_ACTIONS: tuple[str, ...] = ("overwrite", "reject")

#: what ``redact`` writes in place of a value
DEFAULT_REDACTION = "[REDACTED]"
#: prefix of a keyed hash's output, so a reader recognises it: ``hmac-sha256:<hex>``
HASH_PREFIX = "hmac-sha256:"


@dataclass(frozen=True)
class AttributeRule:
    """Act on attributes whose key matches ``pattern``.

    ``pattern`` is an exact key, or a glob when it contains ``*`` or ``?``
    (``*`` matches any run of characters, dots included). Matching ignores ASCII
    case. The first matching rule wins; ``keep`` exempts the attribute from
    later rules and from value detectors. Rules apply at every attribute level:
    resource, scope, span, event, link, log record, data point, exemplar, and to
    keys inside nested maps (``kvlist``) matched by their own key.
    """

    rule_id: str
    pattern: str
    action: AttributeAction


@dataclass(frozen=True)
class ValueDetector:
    """Find sensitive values inside every string value and act on each finding.

    ``kind="pan"``: card numbers by the rule in ``docs/rewriter.md`` (13-19 digits,
    single spaces or dashes between digits, Luhn-valid, a known brand prefix and
    length). ``mask_pan`` keeps the last four digits and replaces the other digits
    with ``*`` (separators stay, so the length is unchanged); ``redact`` replaces the
    whole string value with the redaction marker; ``hash`` replaces the card number
    with its keyed hash.
    """

    rule_id: str
    kind: Literal["pan"]
    action: DetectorAction


@dataclass(frozen=True)
class ResourceStamp:
    """Set resource attribute ``key`` to ``value`` (the tenant, stamped from pod identity).

    When the resource already carries ``key`` with another value: ``overwrite``
    replaces it; ``reject`` refuses the whole resource (its items are counted as
    rejected in ``partial_success``).
    """

    rule_id: str
    key: str
    value: str
    on_conflict: ConflictAction = "overwrite"


@dataclass(frozen=True)
class KeepRule:
    """A span that meets this rule is kept whatever the sampling ratio.

    - ``status_error``: the span's status code is ERROR.
    - ``attr_equals``: span attribute ``key`` equals ``value`` (string, bool, int or
      float compared by type and value).
    - ``attr_at_least``: span attribute ``key`` is an int or double ``>= value``.
    """

    rule_id: str
    kind: KeepKind
    key: str = ""
    value: str | int | float | bool | None = None


@dataclass(frozen=True)
class Sampling:
    """Consistent probability sampling of spans (OpenTelemetry's threshold sampling).

    ``ratio`` in [0, 1]. A span is kept when the randomness of its trace (the ``rv``
    sub-key of the ``ot`` tracestate entry, else the low 56 bits of the trace id)
    is at or above the threshold ``(1 - ratio) * 2**56``; a kept span's tracestate
    gets ``ot=th:<threshold>`` (never lowering a threshold already there). Spans kept
    only by a keep rule are not given a threshold they did not pass.
    """

    rule_id: str
    ratio: float
    keep: tuple[KeepRule, ...] = ()


@dataclass(frozen=True)
class Plan:
    """Everything to do to one resource of one request."""

    #: refuse the resource: its items are rejected (partial_success / PERMISSION_DENIED)
    allow: bool = True
    reason: str = ""
    refuse_rule_id: str = ""
    attribute_rules: tuple[AttributeRule, ...] = ()
    detectors: tuple[ValueDetector, ...] = ()
    stamps: tuple[ResourceStamp, ...] = ()
    sampling: Sampling | None = None
    redaction: str = DEFAULT_REDACTION
    #: key for ``hash`` actions; required when any rule or detector hashes
    hash_key: bytes = field(default=b"", repr=False)
    #: evaluate and count, but leave the bytes unchanged
    dry_run: bool = False

    def __hash__(self) -> int:
        # Plans key the rewriter's compiled-plan cache on every request, and a policy's plan
        # holds hundreds of rules: hash them once, not per request (frozen, so it cannot change).
        cached = self.__dict__.get("_hash")
        if cached is None:
            cached = hash(tuple(getattr(self, f.name) for f in dataclasses.fields(self)))
            object.__setattr__(self, "_hash", cached)
        return int(cached)

    @property
    def is_noop(self) -> bool:
        """True when applying the plan can change nothing (pass-through)."""
        return (
            self.allow
            and not self.attribute_rules
            and not self.detectors
            and not self.stamps
            and (self.sampling is None or self.sampling.ratio >= 1.0)
        )

    def needs_hash_key(self) -> bool:
        return any(r.action == "hash" for r in self.attribute_rules) or any(
            d.action == "hash" for d in self.detectors
        )

    def with_hash_key(self, key: bytes) -> Plan:
        return dataclasses.replace(self, hash_key=key)


#: the plan used when no policy is loaded: change nothing
PASS_THROUGH = Plan()
