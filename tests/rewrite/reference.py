"""A straightforward decode-modify-encode rewriter (upb messages): the oracle for property tests.

Written independently of sidecar.rewrite (its own card-number finder, glob, tracestate
handling) from the semantics in docs/rewriter.md. Slow and simple on purpose.
"""

from __future__ import annotations

import fnmatch
import hmac
import re
from collections import Counter

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from sidecar.rewrite.plan import HASH_PREFIX, Plan
from sidecar.signals import Signal

# brand table of the corpus README: (low prefix, high prefix, lengths)
BRANDS = [
    ("4", "4", {13, 16, 19}),
    ("51", "55", {16}),
    ("2221", "2720", {16}),
    ("34", "34", {15}),
    ("37", "37", {15}),
    ("6011", "6011", {16, 19}),
    ("644", "649", {16, 19}),
    ("65", "65", {16, 19}),
    ("3528", "3589", set(range(16, 20))),
    ("300", "305", {14, 16}),
    ("36", "36", {14, 16}),
    ("38", "39", {14, 16}),
    ("62", "62", set(range(16, 20))),
    ("81", "81", set(range(16, 20))),
    ("2200", "2204", set(range(16, 20))),
    ("5018", "5018", set(range(12, 20))),
    ("5020", "5020", set(range(12, 20))),
    ("5038", "5038", set(range(12, 20))),
    ("5893", "5893", set(range(12, 20))),
    ("6304", "6304", set(range(12, 20))),
    ("6759", "6759", set(range(12, 20))),
    ("6761", "6763", set(range(12, 20))),
]
RUN = re.compile(rb"[0-9]+(?:[ -][0-9]+)*")
UUID = re.compile(rb"(?=([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}))")


def is_card(digits: str) -> bool:
    if not 12 <= len(digits) <= 19:
        return False
    branded = any(lo <= digits[: len(lo)] <= hi and len(digits) in lengths for lo, hi, lengths in BRANDS)
    checksum = sum(int(c) if i % 2 == 0 else sum(divmod(int(c) * 2, 10)) for i, c in enumerate(reversed(digits)))
    return branded and checksum % 10 == 0


def cards(s: bytes) -> list[tuple[int, int, str]]:
    """Card numbers in runs of ASCII digits, then in runs of full-width ones (U+FF10-U+FF19)."""
    return sorted(ascii_cards(s) + wide_cards(s))


#: full-width characters as the detector reads them; ASCII digits hide (full-width runs only)
WIDE = {**{chr(0xFF10 + d): str(d) for d in range(10)}, "＋": "+", "，": ",", "－": "-", "．": ".", "\u3000": " "}


def wide_cards(s: bytes) -> list[tuple[int, int, str]]:
    text = s.decode()
    if not any("０" <= ch <= "９" for ch in text):
        return []
    folded, starts, at = [], [], 0  # starts[k]: the byte offset of folded character k
    for ch in text:
        starts.append(at)
        folded.append("x" if ch.isascii() and ch.isdigit() else WIDE.get(ch, ch if ch.isascii() else "~"))
        at += len(ch.encode())
    starts.append(at)
    return [(starts[i], starts[j], digits) for i, j, digits in ascii_cards("".join(folded).encode())]


def ascii_cards(s: bytes) -> list[tuple[int, int, str]]:
    uuids = [(m.start(1), m.start(1) + 36) for m in UUID.finditer(s)]
    out = []
    for m in RUN.finditer(s):
        i, j = m.span()
        digits = re.sub(rb"[ -]", b"", m.group()).decode()
        before = s[max(0, i - 2) : i]
        # after '+' or a digit and '.' / ',': the first group is a phone number's or a fraction's;
        # a phone number has at most 15 digits (E.164), so a longer run after '+' is not one
        exempt = before.endswith(b"+") or bool(re.fullmatch(rb"[0-9][.,]", before))
        phone = before.endswith(b"+") and len(digits) <= 15
        in_uuid = any(a <= i and j <= b for a, b in uuids)
        if (not exempt or (before.endswith(b"+") and not phone)) and not in_uuid and is_card(digits):
            out.append((i, j, digits))
        elif len(digits) >= 12:
            out += cards_in_groups(m.group(), i, uuids, exempt)
    return out


def cards_in_groups(run: bytes, at: int, uuids: list[tuple[int, int]], skip_first: bool) -> list[tuple[int, int, str]]:
    """A run that is not a card as a whole: every window of whole groups of 3 or more digits
    (digits between the separators) that is a card and not inside a UUID, the longest from each
    group; windows that overlap make one span, with the digits of its first window."""
    groups = [(at + m.start(), at + m.end(), m.group().decode()) for m in re.finditer(rb"[0-9]+", run)]
    if len(groups) < 2:
        return []
    windows = []
    for g in range(1 if skip_first else 0, len(groups)):
        longest = None
        for h in range(g, len(groups)):
            digits = "".join(text for _, _, text in groups[g : h + 1])
            if len(digits) > 19 or len(groups[h][2]) < 3:  # groups of 3 digits or more only
                break
            i, j = groups[g][0], groups[h][1]
            if is_card(digits) and not any(a <= i and j <= b for a, b in uuids):
                longest = (i, j, digits)
        if longest is not None:
            windows.append(longest)
    spans: list[tuple[int, int, str]] = []
    for i, j, digits in windows:
        if spans and i < spans[-1][1]:
            spans[-1] = (spans[-1][0], max(spans[-1][1], j), spans[-1][2])
        else:
            spans.append((i, j, digits))
    return spans


def mask_all_but_last4(s: str) -> str:
    chars = list(s)
    seen = 0
    for k in range(len(chars) - 1, -1, -1):
        if "0" <= chars[k] <= "9" or "０" <= chars[k] <= "９":
            seen += 1
            if seen > 4:
                chars[k] = "*" if chars[k].isascii() else "＊"
    return "".join(chars)


class Reference:
    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.counts: Counter = Counter()
        self.detector = next((d for d in plan.detectors if d.kind == "pan"), None)

    def hmac_hex(self, material: bytes) -> str:
        return HASH_PREFIX + hmac.new(self.plan.hash_key, material, "sha256").hexdigest()

    def text(self, s: str) -> str:
        if self.detector is None:
            return s
        b = s.encode()
        found = cards(b)
        if not found:
            return s
        self.counts[(self.detector.rule_id, self.detector.action)] += len(found)
        if self.detector.action == "redact":
            return self.plan.redaction
        out, last = [], 0
        for i, j, digits in found:
            out.append(b[last:i].decode())
            piece = b[i:j].decode()
            out.append(
                mask_all_but_last4(piece) if self.detector.action == "mask_pan" else self.hmac_hex(digits.encode())
            )
            last = j
        out.append(b[last:].decode())
        return "".join(out)

    def value(self, v: AnyValue) -> None:
        kind = v.WhichOneof("value")
        if kind == "string_value":
            v.string_value = self.text(v.string_value)
        elif kind == "array_value":
            for x in v.array_value.values:
                self.value(x)
        elif kind == "kvlist_value":
            self.attributes(v.kvlist_value.values)

    def rule_for(self, key: str):
        low = "".join(c.lower() if c.isascii() else c for c in key)
        for r in self.plan.attribute_rules:
            if "*" in r.pattern or "?" in r.pattern:
                if re.fullmatch(fnmatch.translate(r.pattern.lower()), low):
                    return r
            elif r.pattern.lower() == low:
                return r
        return None

    def key(self, a) -> None:
        """A card number in a key: masked to its last four digits, whatever the detector does."""
        if self.detector is None:
            return
        b = a.key.encode()
        found = cards(b)
        if not found:
            return
        self.counts[(self.detector.rule_id, self.detector.action)] += len(found)
        out, last = [], 0
        for i, j, _digits in found:
            out.append(b[last:i].decode())
            out.append(mask_all_but_last4(b[i:j].decode()))
            last = j
        out.append(b[last:].decode())
        a.key = "".join(out)

    def attribute(self, a) -> bool:
        """Apply the rules or the detector to one KeyValue; False when it is dropped."""
        r = self.rule_for(a.key) if self.plan.attribute_rules else None
        if r is None:
            self.value(a.value)
            self.key(a)
            return True
        self.counts[(r.rule_id, r.action)] += 1
        if r.action == "keep":
            return True
        if r.action == "drop":
            return False
        self.key(a)
        kind = a.value.WhichOneof("value")
        if r.action == "redact":
            a.value.CopyFrom(AnyValue(string_value=self.plan.redaction))
        elif r.action == "hash":
            material = (
                a.value.string_value.encode()
                if kind == "string_value"
                else a.value.bytes_value
                if kind == "bytes_value"
                else str(a.value.int_value).encode()
                if kind == "int_value"
                else a.value.SerializeToString()
            )
            a.value.CopyFrom(AnyValue(string_value=self.hmac_hex(material)))
        elif r.action == "mask_pan":
            if kind == "string_value":
                a.value.string_value = mask_all_but_last4(a.value.string_value)
            elif kind == "int_value":
                a.value.CopyFrom(AnyValue(string_value=mask_all_but_last4(str(a.value.int_value))))
            elif kind not in (None, "bool_value"):
                a.value.CopyFrom(AnyValue(string_value=self.plan.redaction))
        return True

    def attributes(self, attrs, stamps=None) -> None:
        if not len(attrs):
            return  # do not touch it: mutating an empty list would create its parent
        keep = []
        for a in attrs:
            st = stamps.get(a.key) if stamps else None
            if st is not None:
                if not (a.value.WhichOneof("value") == "string_value" and a.value.string_value == st.value):
                    a.value.CopyFrom(AnyValue(string_value=st.value))
                    self.counts[(st.rule_id, "stamp")] += 1
                keep.append(KeyValue.FromString(a.SerializeToString()))
            elif self.attribute(a):
                keep.append(KeyValue.FromString(a.SerializeToString()))
        del attrs[:]
        attrs.extend(keep)


def _ts_parts(ts: str):
    members = [m.strip(" \t") for m in ts.split(",")]
    members = [m for m in members if m]
    ot = next((m for m in members if m.startswith("ot=")), None)
    others = list(members)
    if ot is not None:
        others.remove(ot)
    subkeys = [s for s in ot[3:].split(";") if s] if ot is not None else []
    return others, ot, subkeys


def _hex14(v: str) -> bool:
    return bool(re.fullmatch(r"[0-9a-f]{1,14}", v))


def sample_span(ref: Reference, span) -> bool:
    """True to keep; updates the span's tracestate like OTEP 235 says."""
    s = ref.plan.sampling
    threshold = (1 << 56) - round(min(max(s.ratio, 0.0), 1.0) * (1 << 56))
    others, _ot, subkeys = _ts_parts(span.trace_state)
    rv = [x[3:] for x in subkeys if x.startswith("rv:") and len(x) == 17 and _hex14(x[3:])]
    th = [x[3:] for x in subkeys if x.startswith("th:") and _hex14(x[3:])]
    randomness = int(rv[-1], 16) if rv else int.from_bytes(span.trace_id[-7:], "big")
    if th:
        threshold = max(threshold, int(th[-1].ljust(14, "0"), 16))
    rest = [x for x in subkeys if not x.startswith("th:")]
    if threshold < 1 << 56 and randomness >= threshold:
        hx = f"{threshold:014x}".rstrip("0") or "0"
        new = ",".join([f"ot={';'.join(['th:' + hx, *rest])}", *others][:32])
    else:
        rule = None
        for k in s.keep:
            if k.kind == "status_error" and span.status.code == 2:
                rule = k
                break
            if k.kind in ("attr_equals", "attr_at_least") and any(
                a.key == k.key and _keep_match(k, a.value) for a in span.attributes
            ):
                rule = k
                break
        if rule is None:
            ref.counts[(s.rule_id, "sample_out")] += 1
            return False
        ref.counts[(rule.rule_id, "keep")] += 1
        if not any(x.startswith("th:") for x in subkeys):
            return True
        new = ",".join((([f"ot={';'.join(rest)}"] if rest else []) + others)[:32])
    if ref.detector is not None and cards(span.trace_state.encode()):
        new = span.trace_state  # not rewritten: the number is masked where it is (by _apply)
    if new != span.trace_state:
        span.trace_state = new
    return True


def _keep_match(k, v: AnyValue) -> bool:
    kind = v.WhichOneof("value")
    if k.kind == "attr_equals":
        if isinstance(k.value, bool):
            return kind == "bool_value" and v.bool_value == k.value
        if isinstance(k.value, int):
            return kind == "int_value" and v.int_value == k.value
        if isinstance(k.value, float):
            return kind == "double_value" and v.double_value == k.value
        return kind == "string_value" and v.string_value == k.value
    if kind == "int_value":
        return v.int_value >= k.value if isinstance(k.value, int) else float(v.int_value) >= k.value
    return kind == "double_value" and v.double_value >= k.value


def items_of(signal: Signal, rx) -> int:
    if signal is Signal.TRACES:
        return sum(len(ss.spans) for ss in rx.scope_spans)
    if signal is Signal.LOGS:
        return sum(len(sl.log_records) for sl in rx.scope_logs)
    n = 0
    for sm in rx.scope_metrics:
        for m in sm.metrics:
            kind = m.WhichOneof("data")
            if kind:
                n += len(getattr(m, kind).data_points)
    return n


def reference_rewrite(signal: Signal, data: bytes, plans: list[Plan]):
    """(parsed output request, counts, items_in, items_out, rejected, sampled_out)."""
    req = signal.request_class.FromString(data)
    field = {"traces": "resource_spans", "metrics": "resource_metrics", "logs": "resource_logs"}[signal.value]
    out = signal.request_class()
    counts: Counter = Counter()
    items_in = rejected = sampled = 0
    for rx, plan in zip(getattr(req, field), plans, strict=True):
        ref = Reference(plan)
        n = items_of(signal, rx)
        items_in += n
        if plan.is_noop:
            getattr(out, field).add().CopyFrom(rx)
            continue
        refused = None if plan.allow else (plan.refuse_rule_id or "policy")
        if refused is None:
            for a in rx.resource.attributes:
                for st in plan.stamps:
                    if (
                        st.on_conflict == "reject"
                        and a.key == st.key
                        and not (a.value.WhichOneof("value") == "string_value" and a.value.string_value == st.value)
                    ):
                        refused = st.rule_id
                        break
                if refused:
                    break
        if refused is not None:
            counts[(refused, "refuse")] += n
            if plan.dry_run:
                getattr(out, field).add().CopyFrom(rx)
            else:
                rejected += n
            continue
        new = getattr(out, field).add()
        new.CopyFrom(rx)
        _apply(ref, signal, new)
        if plan.dry_run:
            new.CopyFrom(rx)
        else:
            sampled += ref.counts.get((plan.sampling.rule_id, "sample_out"), 0) if plan.sampling else 0
        counts.update(ref.counts)
    return out, {k: v for k, v in counts.items() if v}, items_in, items_in - rejected - sampled, rejected, sampled


def _apply(ref: Reference, signal: Signal, rx) -> None:
    plan = ref.plan
    stamp_keys = {}
    for st in plan.stamps:
        stamp_keys.setdefault(st.key, st)
    if stamp_keys:
        present = {a.key for a in rx.resource.attributes}
        ref.attributes(rx.resource.attributes, stamp_keys)
        for key, st in stamp_keys.items():
            if key not in present:
                rx.resource.attributes.add(key=key).value.string_value = st.value
                ref.counts[(st.rule_id, "stamp")] += 1
    else:
        ref.attributes(rx.resource.attributes)
    scopes = {"traces": "scope_spans", "metrics": "scope_metrics", "logs": "scope_logs"}
    rx.schema_url = ref.text(rx.schema_url)
    for sx in getattr(rx, scopes[signal.value]):
        sx.schema_url = ref.text(sx.schema_url)
        if sx.HasField("scope"):
            sx.scope.name = ref.text(sx.scope.name)
            sx.scope.version = ref.text(sx.scope.version)
        ref.attributes(sx.scope.attributes)
        if signal is Signal.TRACES:
            kept = []
            for span in sx.spans:
                if plan.sampling and plan.sampling.ratio < 1.0 and not sample_span(ref, span):
                    continue
                span.trace_state = ref.text(span.trace_state)
                span.name = ref.text(span.name)
                ref.attributes(span.attributes)
                for ev in span.events:
                    ev.name = ref.text(ev.name)
                    ref.attributes(ev.attributes)
                for ln in span.links:
                    ln.trace_state = ref.text(ln.trace_state)
                    ref.attributes(ln.attributes)
                if span.HasField("status"):
                    span.status.message = ref.text(span.status.message)
                kept.append(span)
            del sx.spans[:]
            sx.spans.extend(kept)
        elif signal is Signal.LOGS:
            for lr in sx.log_records:
                if lr.HasField("body"):
                    ref.value(lr.body)
                ref.attributes(lr.attributes)
                lr.event_name = ref.text(lr.event_name)
                lr.severity_text = ref.text(lr.severity_text)
        else:
            for m in sx.metrics:
                m.name, m.description, m.unit = (ref.text(m.name), ref.text(m.description), ref.text(m.unit))
                ref.attributes(m.metadata)
                kind = m.WhichOneof("data")
                if not kind:
                    continue
                for dp in getattr(m, kind).data_points:
                    ref.attributes(dp.attributes)
                    for ex in getattr(dp, "exemplars", ()):
                        ref.attributes(ex.filtered_attributes)
