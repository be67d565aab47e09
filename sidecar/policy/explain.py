"""``policy explain``: what the policies would change in a captured OTLP/JSON payload.

Each resource is run on its own through split -> decision -> plan -> rewrite,
and the request before and after is compared: attributes dropped, masked,
hashed or stamped, spans sampled out, resources refused. Values before the
change are shown only on request (they may be card numbers): without ``--show-values``
an item is named by its index and by what the upstream would receive, and every line
is passed through the card-number masker as well (a dry run changes nothing).
"""

from __future__ import annotations

import json
from typing import Any

from sidecar.masked_text import mask_card_numbers
from sidecar.rewrite import rewrite, split_resources
from sidecar.signals import Signal
from sidecar.wire.otlp_json import json_to_protobuf, protobuf_to_json

_TOP_KEYS = {"resourceSpans": Signal.TRACES, "resourceMetrics": Signal.METRICS, "resourceLogs": Signal.LOGS}
_ITEM_LISTS = {"spans": "spanId"}


def _signal_of(document: dict[str, Any], wanted: str | None) -> tuple[Signal, str]:
    if wanted:
        signal = Signal(wanted)
        key = next(k for k, s in _TOP_KEYS.items() if s is signal)
        return signal, key
    for key, signal in _TOP_KEYS.items():
        if key in document:
            return signal, key
    raise ValueError("the payload has no resourceSpans, resourceMetrics or resourceLogs (use --signal)")


def _value(any_value: Any) -> Any:
    if isinstance(any_value, dict) and len(any_value) == 1:
        return next(iter(any_value.values()))
    return any_value


def _show(value: Any) -> str:
    return json.dumps(_value(value), ensure_ascii=False)


class _Differ:
    def __init__(self, show_values: bool) -> None:
        self.show_values = show_values
        self.lines: list[str] = []

    def attributes(self, path: str, before: list[Any], after: list[Any]) -> None:
        old = {kv.get("key"): kv.get("value") for kv in before}
        new = {kv.get("key"): kv.get("value") for kv in after}
        renamed: set[Any] = set()
        for key in old:
            # a key as it was may hold a card number: masked before repr(), whose escapes (\x01,
            # \u2028) would join it to other digits where the masker of the lines cannot see it
            where = f"{path}[{key if self.show_values else _masked_key(key)!r}]"
            if key not in new:
                masked = _masked_key(key)
                if masked != key and masked in new:  # the rewriter masked the key itself
                    renamed.add(masked)
                    change = f", value {_show(new[masked])}" if new[masked] != old[key] else ""
                    self.lines.append(f"  {where}: key masked to {masked!r}{change}")
                else:
                    self.lines.append(f"  {where}: dropped")
            elif new[key] != old[key]:
                was = f" (was {_show(old[key])})" if self.show_values else ""
                self.lines.append(f"  {where}: changed to {_show(new[key])}{was}")
        for key in new:
            if key not in old and key not in renamed:
                self.lines.append(f"  {path}[{key!r}]: added {_show(new[key])}")

    def walk(self, path: str, before: Any, after: Any) -> None:
        if isinstance(before, dict) and isinstance(after, dict):
            for key in before.keys() | after.keys():
                here = f"{path}.{key}" if path else key
                if key in ("attributes", "filteredAttributes"):
                    self.attributes(here, before.get(key, []), after.get(key, []))
                elif key in _ITEM_LISTS and isinstance(before.get(key), list):
                    self.items(here, _ITEM_LISTS[key], before.get(key, []), after.get(key, []))
                elif key not in after:
                    self.lines.append(f"  {here}: removed")
                else:
                    self.walk(here, before.get(key), after[key])
        elif isinstance(before, list) and isinstance(after, list):
            for index, (old, new) in enumerate(zip(before, after, strict=False)):
                self.walk(f"{path}[{index}]", old, new)
        elif before != after:
            was = f" (was {json.dumps(before)})" if self.show_values else ""
            self.lines.append(f"  {path}: changed to {json.dumps(after)}{was}")

    def items(self, path: str, id_key: str, before: list[Any], after: list[Any]) -> None:
        kept = {item.get(id_key): item for item in after}
        for index, item in enumerate(before):
            survivor = kept.get(item.get(id_key))
            # the original name only on request; else the name the upstream would receive
            shown = item if self.show_values else survivor
            name = f"{path}[{index}]" + (f" {shown.get('name', '')!r}" if shown and shown.get("name") else "")
            if survivor is None:
                self.lines.append(f"  {name}: sampled out")
            else:
                self.walk(name, item, survivor)


def explain_payload(
    session: Any, body: bytes, signal_name: str | None, transport: str, show_values: bool,
) -> list[str]:
    """Lines describing what the policies do to each resource of the payload."""
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"the payload is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise ValueError("the payload must be a JSON object (an OTLP export request)")
    signal, top = _signal_of(document, signal_name)
    lines = [f"policy version {session.compiled.version}, {signal.value}, "
             f"{len(document.get(top, []))} resource(s)"]
    if session.key_note:
        lines.append(f"note: {session.key_note}")
    totals: dict[tuple[str, str], int] = {}
    for index, resource_doc in enumerate(document.get(top, [])):
        single = json.dumps({top: [resource_doc]}).encode()
        data = json_to_protobuf(signal, single)
        resources = split_resources(signal, data)
        request = session.request({
            "signal": signal.value, "resource": resources[0].attributes, "transport": transport,
        })
        _, plan = session.plan(request)
        result = rewrite(signal, data, [plan])
        for key, number in result.counts.items():
            totals[key] = totals.get(key, 0) + number
        service = resources[0].attributes.get("service.name", "") if show_values else _service_after(
            signal, result.data)
        lines.append(f"resource {index}" + (f" (service.name {service!r})" if service else "") + ":")
        if result.rejected_items and result.items_out == 0:
            reason = "; ".join(result.refusals) or plan.reason or "refused by policy"
            rule = plan.refuse_rule_id or "stamp conflict"
            lines.append(f"  refused by {rule}: {reason} ({result.rejected_items} items)")
            continue
        differ = _Differ(show_values)
        before = protobuf_to_json(signal, data)[top][0]
        after_doc = protobuf_to_json(signal, result.data).get(top, [])
        differ.walk("", before, after_doc[0] if after_doc else {})
        lines += differ.lines or ["  unchanged"]
        if plan.dry_run:
            lines.append("  (dry run: the sidecar would count these but leave the data unchanged)")
    if totals:
        lines.append("counts: " + ", ".join(f"{r} {a} {n}" for (r, a), n in sorted(totals.items())))
    return lines if show_values else [mask_card_numbers(line) for line in lines]


def _masked_key(key: Any) -> Any:
    return mask_card_numbers(key) if isinstance(key, str) else key


def _service_after(signal: Signal, data: bytes) -> str:
    """The ``service.name`` the upstream would receive ("" when the resource is refused)."""
    resources = split_resources(signal, data) if data else []
    return str(resources[0].attributes.get("service.name", "")) if resources else ""

