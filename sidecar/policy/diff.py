"""``policy diff OLD NEW [SAMPLE...]``: what would change if NEW replaced OLD.

A sample (OTLP/JSON or protobuf export requests, or the built-in one) goes through both
sets, resource by resource, as ``policy explain`` runs it (split, decision, plan as the
sidecar compiles it, the real rewriter), with ONE hash key for both so hashes compare. The
report lists, per resource, what only OLD or only NEW does (``-`` / ``+`` lines), the rule
counts that change, and totals: values masked (mask_pan, hash, redact), attributes dropped,
items sampled out, resources refused.

The built-in sample is the PCI probe's requests (card numbers in every place they can hide,
per signal; :mod:`sidecar.policy.probe`) and a small shop trace (an error span, an order of
1000, a VIP user, plain spans) for sampling. Values are printed only with ``show_values``,
and every line, values or not, goes through the card-number masker.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from sidecar.masked_text import mask_card_numbers
from sidecar.policy.explain import explain_payload
from sidecar.signals import Signal

_MASKING = {"mask_pan", "hash", "redact"}
_COUNT_RE = re.compile(r"(\S+) (\S+) (\d+)")


@dataclass(frozen=True)
class Sample:
    """One export request to replay: where it comes from, its signal, its OTLP/JSON body."""

    name: str
    signal: Signal
    body: bytes


@dataclass
class Totals:
    """What one set does to the whole sample."""

    masked: int = 0
    dropped: int = 0
    sampled_out: int = 0
    refused: int = 0
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, lines: list[str]) -> None:
        for line in lines:
            if line.endswith(": sampled out"):
                self.sampled_out += 1
            elif line.lstrip().startswith("refused by "):
                self.refused += 1
            elif line.startswith("counts: "):
                for rule, action, number in _COUNT_RE.findall(line.removeprefix("counts: ")):
                    key = f"{rule} {action}"
                    self.counts[key] = self.counts.get(key, 0) + int(number)
                    if action in _MASKING:
                        self.masked += int(number)
                    elif action == "drop":
                        self.dropped += int(number)


def read_sample(path: str, signal_name: str | None) -> Sample:
    """A recorded export request: OTLP/JSON, or protobuf (its signal from ``signal_name``, else traces)."""
    from sidecar.wire.otlp_json import protobuf_to_json

    with open(path, "rb") as handle:
        raw = handle.read()
    if raw.lstrip()[:1] == b"{":
        return Sample(path, Signal(signal_name) if signal_name else Signal.TRACES, raw)
    signal = Signal(signal_name or "traces")
    try:
        document = protobuf_to_json(signal, raw)
    except ValueError as exc:
        raise ValueError(f"{path}: neither OTLP/JSON nor a protobuf {signal.value} export request ({exc})") from None
    return Sample(path, signal, json.dumps(document).encode())


def builtin_sample() -> list[Sample]:
    """The probe's requests (every signal) and a shop trace for sampling, as OTLP/JSON."""
    from sidecar.policy.probe import PROBES
    from sidecar.wire.otlp_json import protobuf_to_json

    samples = [
        Sample(f"built-in: PCI probe {signal.value} ({len(probe.cards)} card numbers)", signal,
               json.dumps(protobuf_to_json(signal, probe.data)).encode())
        for signal, probe in PROBES.items()
    ]
    samples.append(Sample("built-in: shop trace (sampling)", Signal.TRACES, json.dumps(_shop_trace()).encode()))
    return samples


def _shop_trace() -> dict[str, Any]:
    def span(number: int, name: str, attributes: dict[str, Any], error: bool = False) -> dict[str, Any]:
        return {
            "traceId": f"{number + 1:032x}", "spanId": f"{number + 1:016x}", "name": name,
            "status": {"code": 2 if error else 0},
            "attributes": [{"key": k, "value": {"intValue": str(v)} if isinstance(v, int) else {"stringValue": v}}
                           for k, v in attributes.items()],
        }

    spans = [span(0, "charge", {"payment.card.cvv": "123"}, error=True),
             span(1, "order", {"order.amount": 1500}),
             span(2, "login", {"enduser.id": "vip-1"})]
    spans += [span(n, "browse", {"http.route": "/items"}) for n in range(3, 23)]
    return {"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "checkout"}}]},
        "scopeSpans": [{"scope": {"name": "shop"}, "spans": spans}],
    }]}


def _blocks(lines: list[str]) -> dict[str, list[str]]:
    """Explain lines by resource header (``resource N ...:``), without notes and the header line."""
    blocks: dict[str, list[str]] = {}
    current = ""
    for line in lines[1:]:
        if line.startswith("note: ") or line.startswith("counts: "):
            continue
        if line.startswith("resource "):
            current = line.split(" (", 1)[0].rstrip(":")
            blocks[current] = [line]
            continue
        blocks.setdefault(current, []).append(line)
    return blocks


def diff_sets(
    old: Any, new: Any, samples: list[Sample], *, transport: str = "grpc", show_values: bool = False,
) -> tuple[list[str], bool]:
    """The report lines, and whether anything differs. ``old`` / ``new``: CLI sessions."""
    lines = [f"old {old.root} (version {old.compiled.version}) -> new {new.root} (version {new.compiled.version})"]
    if old.key_note:
        lines.append(f"note: {old.key_note} (the same key for both sets)")
    totals = (Totals(), Totals())
    differs = False
    for sample in samples:
        before = explain_payload(old, sample.body, sample.signal.value, transport, show_values)
        after = explain_payload(new, sample.body, sample.signal.value, transport, show_values)
        totals[0].add(before)
        totals[1].add(after)
        old_blocks, new_blocks = _blocks(before), _blocks(after)
        shown: list[str] = []
        for name in dict.fromkeys([*old_blocks, *new_blocks]):
            gone = [x for x in old_blocks.get(name, [])[1:] if x not in new_blocks.get(name, [])]
            came = [x for x in new_blocks.get(name, [])[1:] if x not in old_blocks.get(name, [])]
            if gone or came:
                shown.append((new_blocks.get(name) or old_blocks[name])[0])
                shown += [f"- {x.strip()}" for x in gone] + [f"+ {x.strip()}" for x in came]
        lines.append(f"{sample.name}, {sample.signal.value}: " + ("changes" if shown else "no change"))
        lines += [f"  {x}" for x in shown]
        differs = differs or bool(shown)
    lines.append("totals (old -> new):")
    for label, attribute in (("values masked, hashed or redacted", "masked"), ("attributes dropped", "dropped"),
                             ("items sampled out", "sampled_out"), ("resources refused", "refused")):
        a, b = getattr(totals[0], attribute), getattr(totals[1], attribute)
        lines.append(f"  {label}: {a} -> {b}" + ("" if a == b else "  (changed)"))
    for key in sorted(totals[0].counts.keys() | totals[1].counts.keys()):
        a, b = totals[0].counts.get(key, 0), totals[1].counts.get(key, 0)
        if a != b:
            lines.append(f"  rule {key}: {a} -> {b}")
            differs = True
    return [mask_card_numbers(line) for line in lines], differs
