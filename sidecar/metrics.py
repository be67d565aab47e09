"""The spine's Prometheus metrics, all in one place, on the sidecar's own registry.

Names and semantics follow the OpenTelemetry Collector's own telemetry:
received = accepted + refused at the receivers; sent + failed at the exporter.
Labels carry only fixed vocabularies (signal, transport, reason), never data.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, ProcessCollector

from sidecar.overload.metrics import OverloadMetrics
from sidecar.signals import Signal

if TYPE_CHECKING:
    from sidecar.wire.budget import ReceiveBudget

PREFIX = "otlp_sidecar"

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 10, 50, 100, 256, 512, 1024, 2048, 4096, 8192, 16384)

#: the receivers' transports (label ``transport``)
TRANSPORTS = ("grpc", "http")
#: why items are refused (``otlp_sidecar_receiver_refused_items_total{reason}``, sidecar.pipeline)
ITEM_REFUSALS = ("policy", "queue_full", "rate_limited", "policy_unavailable", "policy_busy", "shutting_down")
#: why whole requests are refused before their items are counted (the receivers; others at first use)
REQUEST_REFUSALS = (
    "malformed", "too_large", "too_many_resources", "bad_compression", "unsupported_encoding",
    "unsupported_media_type", "busy", "loop",
)


class SidecarMetrics:
    """Receiver, pipeline, queue and exporter metrics. One instance per running sidecar."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.build_info = Info(f"{PREFIX}_build", "otlp-sidecar version", registry=r)
        self.received_items = Counter(
            f"{PREFIX}_receiver_received_items", "Items (spans, data points, log records) received.",
            ["signal", "transport"], registry=r,
        )
        self.accepted_items = Counter(
            f"{PREFIX}_receiver_accepted_items", "Items accepted and queued for export.",
            ["signal", "transport"], registry=r,
        )
        self.refused_items = Counter(
            f"{PREFIX}_receiver_refused_items",
            "Items refused: rejected by policy, malformed, over a limit, or queue full.",
            ["signal", "transport", "reason"], registry=r,
        )
        self.refused_requests = Counter(
            f"{PREFIX}_receiver_refused_requests",
            "Requests refused before their items could be counted (bad body, limits, encoding).",
            ["signal", "transport", "reason"], registry=r,
        )
        self.request_duration = Histogram(
            f"{PREFIX}_receiver_request_duration_seconds", "Time to answer an export request.",
            ["signal", "transport"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.receive_budget_in_use = Gauge(
            f"{PREFIX}_receiver_inflight_bytes",
            "Request bytes the listeners hold (reserved before reading, freed once handled).",
            registry=r,
        )
        self.receive_budget_limit = Gauge(
            f"{PREFIX}_receiver_inflight_limit_bytes", "receivers.max_inflight_bytes.", registry=r,
        )
        self.sampled_out_items = Counter(
            f"{PREFIX}_processor_sampled_out_items", "Spans dropped by sampling.", ["signal"], registry=r,
        )
        self.queue_size = Gauge(
            f"{PREFIX}_queue_size_bytes", "Bytes accepted and not yet exported.", registry=r,
        )
        self.queue_capacity = Gauge(
            f"{PREFIX}_queue_capacity_bytes", "Bytes the export queue may hold.", registry=r,
        )
        self.queue_items = Gauge(
            f"{PREFIX}_queue_size_items", "Items accepted and not yet exported.", ["signal"], registry=r,
        )
        self.sent_items = Counter(
            f"{PREFIX}_exporter_sent_items", "Items the upstream accepted.", ["signal"], registry=r,
        )
        self.failed_items = Counter(
            f"{PREFIX}_exporter_failed_items", "Items that could not be exported (final failure).",
            ["signal", "reason"], registry=r,
        )
        self.rejected_upstream_items = Counter(
            f"{PREFIX}_exporter_rejected_items", "Items the upstream rejected in partial_success.",
            ["signal"], registry=r,
        )
        self.export_retries = Counter(
            f"{PREFIX}_exporter_retries", "Export attempts retried after a retryable failure.",
            ["signal"], registry=r,
        )
        self.export_duration = Histogram(
            f"{PREFIX}_exporter_request_duration_seconds", "Duration of one export request.",
            ["signal"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.batch_items = Histogram(
            f"{PREFIX}_exporter_batch_size_items", "Items in each batch sent upstream.",
            ["signal"], buckets=_BATCH_BUCKETS, registry=r,
        )
        self.batch_bytes = Histogram(
            f"{PREFIX}_exporter_batch_size_bytes", "Uncompressed bytes in each batch sent upstream.",
            ["signal"], buckets=tuple(b * 1024 for b in (1, 16, 64, 256, 1024, 4096, 16384)),
            registry=r,
        )
        self.compression_downgrades = Counter(
            f"{PREFIX}_exporter_compression_downgrades",
            "Times the upstream refused the exporter's compression and the next one was used "
            "(zstd -> gzip -> none; the refused batch is sent again, not lost).",
            ["from_encoding", "to_encoding"], registry=r,
        )
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
