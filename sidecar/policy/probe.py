"""The load-time probe: card numbers in every place they can hide, through the real rewriter.

On every load (start and hot reload) the service asks the new policy set for the plan
of the probe's resource, per signal and transport, and rewrites the probe request of
that signal with it through the same rewriter the pipeline uses (the Cython one when
it is built). A card number that comes out whole refuses the set, naming the place.

Each place holds its own Luhn-valid number (Visa, Mastercard or American Express,
written plain, with spaces or with dashes, alone or inside text, or in full-width digits),
so a survivor names its place. The numbers are made up here; none is printed. Then the same for
card numbers in bytes a parser reads past, around the keys the plan stamps and keeps
(:mod:`sidecar.policy.probe_shadows`).
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import Status

from sidecar.policy.invariant import Exemption
from sidecar.policy.probe_shadows import shadowed_request
from sidecar.rewrite import ResourceInfo, rewrite, split_resources
from sidecar.rewrite._py import find_pans
from sidecar.rewrite.plan import Plan
from sidecar.signals import Signal

PROBE_SERVICE = "otlp-sidecar-pci-probe"
#: the key of the probe's nested map, and the prefix of the keys in it (no app exempts them)
NESTED = "otlp_sidecar.probe.nested"
#: a keyed hash in the output: its hex may hold a digit run that looks like a card by chance
_HASHED = re.compile(rb"hmac-sha256:[0-9a-f]{64}")


@dataclass(frozen=True)
class Card:
    """One planted card number: where it is and how it was written."""

    place: str
    digits: str
    written: str


def _luhn_complete(body: str) -> str:
    """``body`` with the Luhn check digit appended."""
    total = 0
    for index, char in enumerate(reversed(body)):
        value = int(char)
        if index % 2 == 0:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return body + str((10 - total % 10) % 10)


#: ASCII digits to full-width ones (U+FF10-U+FF19)
_FULL_WIDTH = {ord("0") + d: 0xFF10 + d for d in range(10)}


def _card(index: int) -> tuple[str, str, str]:
    """The ``index``-th probe number: (digits, the number as written, the text planted)."""
    brand = index % 3
    if brand == 0:
        digits = _luhn_complete(f"4{index + 1:014d}")  # Visa, 16
        groups = [digits[i:i + 4] for i in range(0, 16, 4)]
    elif brand == 1:
        digits = _luhn_complete(f"55{index + 1:013d}")  # Mastercard, 16
        groups = [digits[i:i + 4] for i in range(0, 16, 4)]
    else:
        digits = _luhn_complete(f"37{index + 1:012d}")  # American Express, 15
        groups = [digits[:4], digits[4:10], digits[10:]]
    style = (index // 3) % 5
    wide = "\u3000".join(groups).translate(_FULL_WIDTH)  # as an input method types it
    written = (digits, " ".join(groups), "-".join(groups), " ".join(groups), wide)[style]
    return digits, written, f"paid with {written} today" if style == 3 else written


class _Planter:
    """Hands out one card number per named place."""

    def __init__(self, signal: Signal) -> None:
        self.signal = signal
        self.cards: list[Card] = []
        self._numbers = itertools.count()

    def text(self, place: str) -> str:
        digits, written, text = _card(next(self._numbers))
        self.cards.append(Card(f"{self.signal.value} {place}", digits, written))
        return text

    def kv(self, key: str, place: str) -> KeyValue:
        return KeyValue(key=key, value=AnyValue(string_value=self.text(place)))

    def nested(self, place: str) -> KeyValue:
        """A map holding a map and an array, each with a card number. Its keys are the probe's
        own: an exemption naming an app's key (``note``) must not exempt the probe's numbers."""
        value = AnyValue()
        outer = value.kvlist_value.values
        outer.add(key=f"{NESTED}.note", value=AnyValue(string_value=self.text(f"{place} map value")))
        outer.add(key=self.text(f"{place} map key"), value=AnyValue(string_value="keyed by a card number"))
        inner = outer.add(key=f"{NESTED}.inner").value.kvlist_value.values
        inner.add(key=f"{NESTED}.deeper", value=AnyValue(string_value=self.text(f"{place} map in a map")))
        array = outer.add(key=f"{NESTED}.list").value.array_value.values
        array.add(int_value=7)
        array.add(string_value=self.text(f"{place} array in a map"))
        array.add().kvlist_value.values.add(
            key=f"{NESTED}.item", value=AnyValue(string_value=self.text(f"{place} map in an array")))
        return KeyValue(key=NESTED, value=value)

    def attributes(self, place: str) -> list[KeyValue]:
        return [
            self.kv("otlp_sidecar.probe.note", f"{place} attribute"),
            self.kv("card_number", f"{place} attribute named like a card number"),
            self.nested(f"{place} attribute"),
        ]

    def resource(self, resource: Resource) -> None:
        resource.attributes.add(key="service.name", value=AnyValue(string_value=PROBE_SERVICE))
        resource.attributes.extend(self.attributes("resource"))


def _traces(planter: _Planter) -> bytes:
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    planter.resource(rs.resource)
    ss = rs.scope_spans.add()
    ss.scope.name = "probe"
    ss.scope.version = planter.text("scope version")
    ss.scope.attributes.extend(planter.attributes("scope"))
    ss.schema_url = planter.text("scope schema URL")
    span = ss.spans.add(trace_id=bytes(range(1, 17)), span_id=bytes(range(1, 9)))
    span.name = planter.text("span name")
    span.trace_state = f"probe={planter.text('tracestate')}"
    span.attributes.extend(planter.attributes("span"))
    span.status.code = Status.STATUS_CODE_ERROR
    span.status.message = planter.text("status message")
    event = span.events.add(name=planter.text("event name"))
    event.attributes.extend(planter.attributes("event"))
    link = span.links.add(trace_id=bytes(range(2, 18)), span_id=bytes(range(2, 10)))
    link.trace_state = f"probe={planter.text('link tracestate')}"
    link.attributes.extend(planter.attributes("link"))
    return request.SerializeToString()


def _logs(planter: _Planter) -> bytes:
    request = ExportLogsServiceRequest()
    rl = request.resource_logs.add()
    planter.resource(rl.resource)
    sl = rl.scope_logs.add()
    sl.scope.attributes.extend(planter.attributes("scope"))
    record = sl.log_records.add(severity_text="INFO")
    record.body.string_value = planter.text("log body")
    record.attributes.extend(planter.attributes("log record"))
    record.event_name = planter.text("log event name")
    structured = sl.log_records.add(severity_text=planter.text("severity text"))
    structured.body.CopyFrom(planter.nested("log body").value)
    return request.SerializeToString()


def _metrics(planter: _Planter) -> bytes:
    request = ExportMetricsServiceRequest()
    rm = request.resource_metrics.add()
    planter.resource(rm.resource)
    sm = rm.scope_metrics.add()
    sm.scope.attributes.extend(planter.attributes("scope"))
    gauge = sm.metrics.add(name="probe.gauge", description=planter.text("metric description"))
    gauge.metadata.append(planter.kv("otlp_sidecar.probe.meta", "metric metadata"))
    point = gauge.gauge.data_points.add(as_int=1)
    point.attributes.extend(planter.attributes("gauge data point"))
    exemplar = point.exemplars.add(as_double=1.0)
    exemplar.filtered_attributes.extend(planter.attributes("exemplar"))
    total = sm.metrics.add(name="probe.sum")
    total.sum.data_points.add(as_int=1).attributes.extend(planter.attributes("sum data point"))
    histogram = sm.metrics.add(name="probe.histogram")
    hp = histogram.histogram.data_points.add(count=1)
    hp.attributes.extend(planter.attributes("histogram data point"))
    hp.exemplars.add(as_int=1).filtered_attributes.extend(planter.attributes("histogram exemplar"))
    exponential = sm.metrics.add(name="probe.exponential")
    exponential.exponential_histogram.data_points.add(count=1).attributes.extend(
        planter.attributes("exponential histogram data point"))
    summary = sm.metrics.add(name="probe.summary")
    summary.summary.data_points.add(count=1).attributes.extend(planter.attributes("summary data point"))
    return request.SerializeToString()


_BUILDERS: dict[Signal, Callable[[_Planter], bytes]] = {
    Signal.TRACES: _traces, Signal.LOGS: _logs, Signal.METRICS: _metrics,
}


@dataclass(frozen=True)
class ProbeRequest:
    """The probe request of one signal, its resource and the cards planted in it."""

    signal: Signal
    data: bytes
    resource: ResourceInfo
    cards: tuple[Card, ...]


def probe_request(signal: Signal) -> ProbeRequest:
    planter = _Planter(signal)
    data = _BUILDERS[signal](planter)
    (resource,) = split_resources(signal, data)
    return ProbeRequest(signal, data, resource, tuple(planter.cards))


#: built once: the requests never change
PROBES: dict[Signal, ProbeRequest] = {signal: probe_request(signal) for signal in _BUILDERS}


def as_probed(plan: Plan) -> Plan:
    """The plan as the probe applies it: nothing refused or sampled away, never a dry run.

    A refusal or a sampled-out span would hide the cards from the check; what is checked is
    what the plan does to the data it lets through.
    """
    stamps = tuple(dataclasses.replace(s, on_conflict="overwrite") for s in plan.stamps)
    return dataclasses.replace(plan, allow=True, sampling=None, dry_run=False, stamps=stamps)


def shadowed_probe(signal: Signal, plan: Plan) -> ProbeRequest:
    """The probe request of card numbers in bytes a parser reads past, for the keys ``plan``
    stamps and keeps (:mod:`sidecar.policy.probe_shadows`)."""
    planter = _Planter(signal)
    data = shadowed_request(signal, plan, planter.text)
    (resource,) = split_resources(signal, data)
    return ProbeRequest(signal, data, resource, tuple(planter.cards))


def survivors(probe: ProbeRequest, plan: Plan) -> list[str]:
    """The places where a card number comes out of the rewriter whole: in ``probe``, then in the
    shadowed shapes of its signal for ``plan``.

    A planted number found in the output names its place; any other card number in the
    output (outside keyed hashes) was written by the plan itself: a stamp or the redaction
    text holding one.
    """
    places = _survivors(probe, plan)
    return places + [place for place in _survivors(shadowed_probe(probe.signal, plan), plan)
                     if place not in places]


def _survivors(probe: ProbeRequest, plan: Plan) -> list[str]:
    out = rewrite(probe.signal, probe.data, [as_probed(plan)]).data
    places = [
        card.place for card in probe.cards
        if card.written.encode() in out or card.digits.encode() in out
    ]
    planted = {card.digits.encode() for card in probe.cards}
    if any(digits not in planted for _, _, digits in find_pans(_HASHED.sub(b"", out))):
        places.append(f"{probe.signal.value}: a card number the policies write themselves "
                      "(a stamp or the redaction text)")
    return places


#: what an attribute rule does to a key other than keep it
_KEY_ACTIONS = frozenset({"drop", "redact", "hash", "mask_pan"})


def overridden_exemptions(plan: Plan, exemptions: Sequence[Exemption]) -> list[str]:
    """The exemptions of ``plan`` another of its rules wins over (it drops, masks, redacts or
    hashes the same key, and ``keep`` sorts after every other action): an exemption only keeps
    its key from the detectors. One line each, naming the rule that wins; found by rewriting a
    span holding the key through the real rewriter, as the probe does."""
    found = []
    for exemption in exemptions:
        request = ExportTraceServiceRequest()
        scope = request.resource_spans.add().scope_spans.add()
        span = scope.spans.add(trace_id=bytes(range(1, 17)), span_id=bytes(range(1, 9)), name="exemption")
        span.attributes.add(key=exemption.key, value=AnyValue(string_value="exempted"))
        counts = rewrite(Signal.TRACES, request.SerializeToString(), [as_probed(plan)]).counts
        if (exemption.rule_id, "keep") in counts:
            continue
        winners = ", ".join(
            f"{rule_id} ({action})" for rule_id, action in counts if action in _KEY_ACTIONS
        ) or "another rule"
        found.append(f"{exemption.rule_id} (key {exemption.key!r}): {winners} also matches it and wins")
    return found
