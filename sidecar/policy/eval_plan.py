"""``GET /debug/plan?...`` on the admin port: the live plan for one resource, without values.

The resource comes as query parameters: ``signal`` (traces), ``transport`` (grpc),
``peer`` (the client host), ``tls`` (``true``/``false``), ``spiffe_id``, and every attribute
as ``resource.<key>=<value>`` (string values, as an SDK sends them); a JSON object of
attributes may come as ``resource=<json>`` instead (its strings, numbers and booleans kept).
The plan is asked from the running engine exactly as a request would ask it
(:meth:`PolicyService.plans_for`: the plan cache, the rate of new evaluations, the fallback),
so what is shown is what the pipeline applies to that resource.

No value leaves: the answer names rule ids, actions, key patterns, stamp keys, the sampling
ratio and keep kinds, but not stamp or keep values, the refusal reason (it may quote the
resource), the redaction text or the key.
"""

from __future__ import annotations

import json
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlsplit

from sidecar.identity import Peer
from sidecar.masked_text import quoted
from sidecar.rewrite.plan import Plan
from sidecar.signals import Signal

MAX_PARAMETERS = 64
MAX_VALUE = 1024


class PlanSource(Protocol):
    async def plans_for(self, signal: Signal, resources: Any, peer: Peer, transport: str) -> list[Plan]: ...


class BadQuery(ValueError):
    """The query string does not describe a resource (answered 400)."""


def resource_from_query(target: str) -> tuple[Signal, dict[str, Any], Peer, str]:
    """(signal, attributes, peer, transport) from a request-target; BadQuery naming the parameter."""
    pairs = parse_qsl(urlsplit(target).query, keep_blank_values=True, max_num_fields=MAX_PARAMETERS)
    signal, transport, peer = Signal.TRACES, "grpc", Peer()
    attributes: dict[str, Any] = {}
    address, tls, spiffe = "", False, ""
    for name, value in pairs:
        if len(value) > MAX_VALUE:
            raise BadQuery(f"{quoted(name, 40)}: longer than {MAX_VALUE} characters")
        if name == "signal":
            try:
                signal = Signal(value)
            except ValueError:
                raise BadQuery("signal must be traces, metrics or logs") from None
        elif name == "transport":
            if value not in ("grpc", "http"):
                raise BadQuery("transport must be grpc or http")
            transport = value
        elif name == "peer":
            address = value
        elif name == "tls":
            tls = value.lower() in ("1", "true", "yes")
        elif name == "spiffe_id":
            spiffe = value
        elif name == "resource":
            attributes.update(_json_attributes(value))
        elif name.startswith("resource."):
            attributes[name.removeprefix("resource.")] = value
        else:
            raise BadQuery(f"unknown parameter {quoted(name, 40)!r} (signal, transport, peer, tls, spiffe_id, "
                           "resource.<key>, resource=<json>)")
    peer = Peer(address=address, tls=tls, spiffe_id=spiffe)
    return signal, attributes, peer, transport


def _json_attributes(text: str) -> dict[str, Any]:
    try:
        document = json.loads(text)
    except json.JSONDecodeError:
        raise BadQuery("resource must be a JSON object of attributes") from None
    if not isinstance(document, dict) or not all(
        isinstance(v, (str, int, float, bool)) for v in document.values()
    ):
        raise BadQuery("resource must be a JSON object of string, number or boolean attributes")
    return document


def resource_info(attributes: dict[str, Any]) -> Any:
    """A ResourceInfo as the receiver splits it from a request carrying these attributes."""
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue
    from opentelemetry.proto.resource.v1.resource_pb2 import Resource

    from sidecar.rewrite import ResourceInfo

    resource = Resource()
    for key, value in attributes.items():
        any_value = AnyValue()
        if isinstance(value, bool):
            any_value.bool_value = value
        elif isinstance(value, int):
            any_value.int_value = value
        elif isinstance(value, float):
            any_value.double_value = value
        else:
            any_value.string_value = value
        resource.attributes.add(key=key, value=any_value)
    return ResourceInfo(0, resource.SerializeToString(), 1)


def plan_without_values(plan: Plan) -> dict[str, Any]:
    """What the plan does, by rule id, with no value in it."""
    sampling = None
    if plan.sampling is not None:
        sampling = {
            "rule_id": plan.sampling.rule_id, "ratio": plan.sampling.ratio,
            "keep": [{"rule_id": k.rule_id, "kind": k.kind, "key": k.key} for k in plan.sampling.keep],
        }
    return {
        "allow": plan.allow,
        "refuse_rule_id": plan.refuse_rule_id,
        "attribute_rules": [{"rule_id": r.rule_id, "pattern": r.pattern, "action": r.action}
                            for r in plan.attribute_rules],
        "detectors": [{"rule_id": d.rule_id, "kind": d.kind, "action": d.action} for d in plan.detectors],
        "stamps": [{"rule_id": s.rule_id, "key": s.key, "on_conflict": s.on_conflict} for s in plan.stamps],
        "sampling": sampling,
        "dry_run": plan.dry_run,
    }


async def live_plan(source: PlanSource, target: str) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) for ``/debug/plan``: 200 with the plan, 400 bad query, 503 engine busy."""
    from sidecar.policy.errors import PolicyUnavailable

    try:
        signal, attributes, peer, transport = resource_from_query(target)
        # a value protobuf cannot hold (an integer past 64 bits, a lone surrogate) is the query's fault
        resource = resource_info(attributes)
    except (BadQuery, ValueError) as exc:  # UnicodeError is a ValueError
        return 400, {"error": quoted(str(exc), 300)}
    try:
        (plan,) = await source.plans_for(signal, [resource], peer, transport)
    except PolicyUnavailable as exc:
        retry = getattr(exc, "retry_after", None)
        return 503, {"error": "the policy engine cannot decide now", **({"retry_after": retry} if retry else {})}
    return 200, {
        "signal": signal.value, "transport": transport, "peer_tls": peer.tls,
        # the keys as given, card numbers masked (the plan names rules, never values)
        "resource_keys": sorted(quoted(key, 200) for key in attributes), "plan": plan_without_values(plan),
    }
