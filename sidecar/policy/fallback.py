"""The strict built-in plan, applied when the engine cannot decide and no good plan is known.

It needs no policy and no key: every card number found is masked to its last
four digits, security codes, track data and PIN blocks are dropped, attributes
named like a full card number are masked, and the pod's tenant (from its
identity, never from the app) is stamped over whatever the resource claims.
"""

from __future__ import annotations

from sidecar.identity import PodIdentity
from sidecar.policy.decision import key_patterns
from sidecar.rewrite.plan import AttributeRule, Plan, ResourceStamp, ValueDetector

SENSITIVE_KEYS = (
    "cvv", "cvv2", "cvc", "cvc2", "cid", "csc", "security_code", "card_security_code", "card_cvv", "card_cvc",
    "track1", "track2", "track_data", "pin", "pin_block",
)
CARD_NUMBER_KEYS = ("card_number", "pan", "primary_account_number", "credit_card_number", "cc_number")
TENANT_ATTRIBUTE = "tenant.id"


def strict_plan(pod: PodIdentity) -> Plan:
    """The plan of last resort for ``pod`` (rule ids ``builtin.strict.*``)."""
    rules = [
        AttributeRule("builtin.strict.sensitive", pattern, "drop")
        for name in SENSITIVE_KEYS
        for pattern in key_patterns(name)
    ]
    rules += [
        AttributeRule("builtin.strict.card_number", pattern, "mask_pan")
        for name in CARD_NUMBER_KEYS
        for pattern in key_patterns(name)
    ]
    stamps = (
        (ResourceStamp("builtin.strict.tenant", TENANT_ATTRIBUTE, pod.tenant, "overwrite"),)
        if pod.tenant
        else ()
    )
    return Plan(
        attribute_rules=tuple(dict.fromkeys(rules)),
        detectors=(ValueDetector("builtin.strict.pan", "pan", "mask_pan"),),
        stamps=stamps,
    )
