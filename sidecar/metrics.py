"""The spine's Prometheus metrics on the sidecar's own registry, created from their declarations.

The receivers (sidecar.receivers.metrics) and the export side (sidecar.export.metrics) declare
their metrics; this module declares the process-wide ones (build, sampling, the process) and
makes one :class:`SidecarMetrics` of them per running sidecar. Names and semantics follow the
OpenTelemetry Collector's own telemetry: received = accepted + refused at the receivers;
sent + failed at the exporter. Labels carry only fixed vocabularies, never data.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, ProcessCollector

from sidecar.export import metrics as export
from sidecar.metrickit import PREFIX, Kind, declare
from sidecar.overload.metrics import OverloadMetrics
from sidecar.receivers import metrics as receivers
from sidecar.receivers.metrics import ITEM_REFUSALS, REQUEST_REFUSALS, TRANSPORTS
from sidecar.signals import Signal

if TYPE_CHECKING:
    from sidecar.wire.budget import ReceiveBudget

__all__ = ["ITEM_REFUSALS", "PREFIX", "REQUEST_REFUSALS", "TRANSPORTS", "SidecarMetrics"]

COMPONENT = "sidecar"

BUILD = declare(
    f"{PREFIX}_build", Kind.info, "1", "otlp-sidecar version.", component=COMPONENT,
    note="Select the sidecar's own `process_*` series with `and on (job, instance) otlp_sidecar_build_info`.",
)
SAMPLED_OUT_ITEMS = declare(
    f"{PREFIX}_processor_sampled_out_items", Kind.counter, "{items}", "Spans dropped by sampling.",
    component=COMPONENT, labels=(receivers.SIGNAL,),
    collector="(no common name: each Collector sampler counts in its own way)",
)
UNKNOWN_FIELDS = declare(
    f"{PREFIX}_processor_unknown_fields_dropped", Kind.counter, "{fields}",
    "Fields OTLP does not define, dropped from requests before export since nothing scanned them "
    "for card numbers: the deprecated field 1000 of very old SDKs, a newer protocol's fields, or "
    "made-up ones.",
    component=COMPONENT, labels=(receivers.SIGNAL,),
    collector="(none: the Collector drops unknown fields when it decodes a request)",
)
_PROCESS = "From prometheus_client's process collector (read from /proc/self)."
PROCESS_CPU = declare(
    "process_cpu_seconds", Kind.counter, "s", "CPU time of the sidecar process (user + system).",
    component=COMPONENT, collector="otelcol_process_cpu_seconds", note=_PROCESS,
)
PROCESS_RSS = declare(
    "process_resident_memory_bytes", Kind.gauge, "By", "Resident memory of the sidecar process.",
    component=COMPONENT, collector="otelcol_process_memory_rss", note=_PROCESS,
)
PROCESS_VMS = declare(
    "process_virtual_memory_bytes", Kind.gauge, "By", "Virtual memory of the sidecar process.",
    component=COMPONENT, note=_PROCESS,
)
PROCESS_OPEN_FDS = declare(
    "process_open_fds", Kind.gauge, "{fds}", "Open file descriptors.", component=COMPONENT, note=_PROCESS,
)
PROCESS_MAX_FDS = declare(
    "process_max_fds", Kind.gauge, "{fds}", "The file descriptor limit (RLIMIT_NOFILE).",
    component=COMPONENT, note=_PROCESS,
)
PROCESS_START = declare(
    "process_start_time_seconds", Kind.gauge, "s", "Start time of the sidecar process (Unix time).",
    component=COMPONENT, note=_PROCESS,
)


class SidecarMetrics:
    """Receiver, pipeline, queue and exporter metrics. One instance per running sidecar."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.build_info = BUILD.info(r)
        # loop_*: updated on every request, only ever by code on the event loop (sidecar.loop_metrics)
        self.received_items = receivers.RECEIVED_ITEMS.loop_counter(r)
        self.accepted_items = receivers.ACCEPTED_ITEMS.loop_counter(r)
        self.refused_items = receivers.REFUSED_ITEMS.counter(r)
        self.refused_requests = receivers.REFUSED_REQUESTS.counter(r)
        self.request_duration = receivers.REQUEST_DURATION.loop_histogram(r)
        self.receive_budget_in_use = receivers.INFLIGHT_BYTES.gauge(r)
        self.receive_budget_limit = receivers.INFLIGHT_LIMIT_BYTES.gauge(r)
        self.sampled_out_items = SAMPLED_OUT_ITEMS.loop_counter(r)
        self.unknown_fields_dropped = UNKNOWN_FIELDS.counter(r)
        self.queue_size = export.QUEUE_SIZE.loop_gauge(r)
        self.queue_capacity = export.QUEUE_CAPACITY.gauge(r)
        self.queue_items = export.QUEUE_ITEMS.loop_gauge(r)
        self.sent_items = export.SENT_ITEMS.loop_counter(r)
        self.failed_items = export.FAILED_ITEMS.counter(r)
        self.rejected_upstream_items = export.REJECTED_ITEMS.counter(r)
        self.export_retries = export.RETRIES.counter(r)
        self.export_duration = export.REQUEST_DURATION.loop_histogram(r)
        self.batch_items = export.BATCH_ITEMS.loop_histogram(r)
        self.batch_bytes = export.BATCH_BYTES.loop_histogram(r)
        self.compression_downgrades = export.COMPRESSION_DOWNGRADES.counter(r)
        self.dead_connections = export.DEAD_CONNECTIONS.counter(r)
        #: protective actions, connections per listener, the receive budget (sidecar.overload)
        self.overload = OverloadMetrics(r)
        #: process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, process_max_fds ...
        ProcessCollector(registry=r)
        self._create_children()

    def _create_children(self) -> None:
        """Every series the alerts and the dashboard use, at zero from the start: rate() and
        increase() need a sample before the first event to see it (docs/metrics.md)."""
        for signal in Signal:
            s = signal.value
            for transport in TRANSPORTS:
                self.received_items.labels(s, transport)
                self.accepted_items.labels(s, transport)
                self.request_duration.labels(s, transport)
                for reason in ITEM_REFUSALS:
                    self.refused_items.labels(s, transport, reason)
                for reason in REQUEST_REFUSALS:
                    self.refused_requests.labels(s, transport, reason)
            self.sampled_out_items.labels(s)
            self.unknown_fields_dropped.labels(s)
            self.queue_items.labels(s)
            self.sent_items.labels(s)
            self.rejected_upstream_items.labels(s)
            self.export_retries.labels(s)
            self.export_duration.labels(s)
            self.batch_items.labels(s)
            self.batch_bytes.labels(s)

    def track_receive_budget(self, budget: ReceiveBudget) -> None:
        """Report ``budget`` (shared by the listeners) at every scrape."""
        self.receive_budget_in_use.set_function(lambda: budget.in_use)
        self.receive_budget_limit.set(budget.limit)
