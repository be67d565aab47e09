"""The receivers' metrics (and the pipeline's counts of what they received), declared once.

received = accepted + refused items, as the Collector's receivers count them; requests refused
before their items could be counted have a counter of their own.
"""

from __future__ import annotations

from sidecar.metrickit import PREFIX, Kind, Label, declare
from sidecar.signals import Signal

COMPONENT = "sidecar.receivers"

#: the receivers' transports
TRANSPORTS = ("grpc", "http")
#: why items are refused (sidecar.pipeline: ``PermissionDenied``, ``RateLimited``, ``Unavailable``)
ITEM_REFUSALS = ("policy", "queue_full", "rate_limited", "policy_unavailable", "policy_busy", "shutting_down",
                 "too_large", "busy")
#: why whole requests are refused before their items are counted: the pipeline (malformed, too
#: many resources), the receivers and their servers (size, compression, media type, the receive
#: budget, a client too slow, the loop guard) and a TLS client refused after its handshake
REQUEST_REFUSALS = (
    "malformed", "too_large", "too_many_resources", "bad_compression", "unsupported_encoding",
    "unsupported_media_type", "busy", "too_slow", "loop",
    "no_client_certificate", "spiffe_id_not_allowed", "not_tls",
)
#: receive latency buckets (seconds)
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

SIGNAL = Label("signal", tuple(signal.value for signal in Signal))
TRANSPORT = Label("transport", TRANSPORTS)

RECEIVED_ITEMS = declare(
    f"{PREFIX}_receiver_received_items", Kind.counter, "{items}",
    "Items (spans, data points, log records) received.",
    component=COMPONENT, labels=(SIGNAL, TRANSPORT),
    collector="otelcol_receiver_accepted_* + otelcol_receiver_refused_*",
    collector_differences="the Collector has no received counter: it is accepted + refused",
)
ACCEPTED_ITEMS = declare(
    f"{PREFIX}_receiver_accepted_items", Kind.counter, "{items}",
    "Items accepted and queued for export (sampled-out items included: they were accepted, then "
    "dropped by a policy).",
    component=COMPONENT, labels=(SIGNAL, TRANSPORT),
    collector="otelcol_receiver_accepted_spans, ..._metric_points, ..._log_records",
    collector_differences="one metric with `signal` instead of one per signal",
)
REFUSED_ITEMS = declare(
    f"{PREFIX}_receiver_refused_items", Kind.counter, "{items}",
    "Items refused: rejected by policy, over the tenant's rate, the queue full, the policy engine "
    "down or busy, shutting down, the receive budget full (busy: outputs waiting for the disk queue).",
    component=COMPONENT, labels=(SIGNAL, TRANSPORT, Label("reason", ITEM_REFUSALS)),
    collector="otelcol_receiver_refused_spans, ..._metric_points, ..._log_records",
    collector_differences="the sidecar says why (`reason`)",
)
REFUSED_REQUESTS = declare(
    f"{PREFIX}_receiver_refused_requests", Kind.counter, "{requests}",
    "Requests refused before their items could be counted (bad body, limits, encoding, peer).",
    component=COMPONENT, labels=(SIGNAL, TRANSPORT, Label("reason", REQUEST_REFUSALS)),
    collector="(none)", collector_differences="requests refused before their items could be counted",
)
REQUEST_DURATION = declare(
    f"{PREFIX}_receiver_request_duration_seconds", Kind.histogram, "s",
    "Time to answer an export request, from its complete head to its answer.",
    component=COMPONENT, labels=(SIGNAL, TRANSPORT), buckets=LATENCY_BUCKETS,
    note="Timed alike on both transports: from the moment the request's head is complete (HTTP: the "
    "request line and headers parsed; gRPC: the call's HEADERS frame decoded) to the moment its answer "
    "is handed to the connection to be written, so the time to receive the body is included. "
    "Refusals decided by the receiver once the endpoint is known are timed too (a TLS peer refused, the "
    "loop guard, media type, encoding, decompression, policy, queue). Not timed: requests without an "
    "endpoint (404, 405, an unknown gRPC method) and, on gRPC only, calls the HTTP/2 server refuses "
    "before their message is complete (over the size, budget or time limits: counted in "
    "refused_requests, answered without the receiver).",
)
INFLIGHT_BYTES = declare(
    f"{PREFIX}_receiver_inflight_bytes", Kind.gauge, "By",
    "Request bytes the listeners hold (reserved before reading, freed once handled).",
    component=COMPONENT,
)
INFLIGHT_LIMIT_BYTES = declare(
    f"{PREFIX}_receiver_inflight_limit_bytes", Kind.gauge, "By", "receivers.max_inflight_bytes.",
    component=COMPONENT,
)
