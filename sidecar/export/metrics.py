"""The export side's metrics: the queue, the exporter, its circuit breaker and the on-disk queue.

sent + failed items at the exporter, as the Collector's exporters count them.
"""

from __future__ import annotations

from sidecar.metrickit import PREFIX, Kind, Label, declare
from sidecar.receivers.metrics import LATENCY_BUCKETS, SIGNAL

COMPONENT = "sidecar.export"

#: why a batch is counted as failed, each series at zero from the start (any protocol)
COMMON_FAILURES = ("unavailable", "timeout", "shutdown")
#: the final answers of each protocol an operator meets most, at zero from the start when the
#: exporter speaks it (others, e.g. ``http_502`` or ``tls_unknown_ca``, appear at their first use)
PROTOCOL_FAILURES = {
    "grpc": ("grpc_invalid_argument", "grpc_unauthenticated", "grpc_permission_denied", "grpc_unimplemented",
             "grpc_unavailable", "grpc_resource_exhausted"),
    "http/protobuf": ("http_400", "http_401", "http_403", "http_404", "http_413", "http_429", "http_503"),
}
#: the exporter's compressions, best first (a downgrade goes down this list)
COMPRESSIONS = ("zstd", "gzip", "none")
#: the circuit breaker's states (sidecar.export.circuit.State)
CIRCUIT_STATES = ("closed", "half_open", "open")

QUEUE_SIZE = declare(
    f"{PREFIX}_queue_size_bytes", Kind.gauge, "By", "Bytes accepted and not yet exported.",
    component=COMPONENT, collector="otelcol_exporter_queue_size",
    collector_differences="bytes (the Collector counts requests unless its queue's `sizer` is `bytes`); "
    "the ratio to the capacity means the same",
)
QUEUE_CAPACITY = declare(
    f"{PREFIX}_queue_capacity_bytes", Kind.gauge, "By", "Bytes the export queue may hold.",
    component=COMPONENT, collector="otelcol_exporter_queue_capacity", collector_differences="bytes, as above",
)
QUEUE_ITEMS = declare(
    f"{PREFIX}_queue_size_items", Kind.gauge, "{items}", "Items accepted and not yet exported.",
    component=COMPONENT, labels=(SIGNAL,),
)
SENT_ITEMS = declare(
    f"{PREFIX}_exporter_sent_items", Kind.counter, "{items}", "Items the upstream accepted.",
    component=COMPONENT, labels=(SIGNAL,),
    collector="otelcol_exporter_sent_spans, ..._metric_points, ..._log_records",
)
FAILED_ITEMS = declare(
    f"{PREFIX}_exporter_failed_items", Kind.counter, "{items}",
    "Items that could not be exported (final failure): a final answer, retries past "
    "exporter.retry_max_elapsed (memory queue), shutdown.",
    component=COMPONENT,
    labels=(
        SIGNAL,
        Label(
            "reason", COMMON_FAILURES + PROTOCOL_FAILURES["http/protobuf"] + PROTOCOL_FAILURES["grpc"],
            closed=False, every=False,
            description="unavailable, timeout, shutdown; the final answer (`http_<status>`, `grpc_<code>`); "
            "`tls_<reason>` for a failed handshake; `disk_read` for a request the disk queue cannot read "
            "back; `internal` for an exporter bug. The exporter's own protocol's answers are at zero "
            "from the start; others appear at their first use",
        ),
    ),
    collector="otelcol_exporter_send_failed_spans, ..._metric_points, ..._log_records",
    collector_differences="the sidecar counts items given up on (after retries); `reason` like the "
    "Collector's `error_type`",
)
REJECTED_ITEMS = declare(
    f"{PREFIX}_exporter_rejected_items", Kind.counter, "{items}", "Items the upstream rejected in partial_success.",
    component=COMPONENT, labels=(SIGNAL,),
)
RETRIES = declare(
    f"{PREFIX}_exporter_retries", Kind.counter, "{requests}", "Export attempts retried after a retryable failure.",
    component=COMPONENT, labels=(SIGNAL,),
)
REQUEST_DURATION = declare(
    f"{PREFIX}_exporter_request_duration_seconds", Kind.histogram, "s", "Duration of one export request.",
    component=COMPONENT, labels=(SIGNAL,), buckets=LATENCY_BUCKETS,
)
BATCH_ITEMS = declare(
    f"{PREFIX}_exporter_batch_size_items", Kind.histogram, "{items}", "Items in each batch sent upstream.",
    component=COMPONENT, labels=(SIGNAL,), buckets=(1, 10, 50, 100, 256, 512, 1024, 2048, 4096, 8192, 16384),
    collector="otelcol_processor_batch_batch_send_size",
)
BATCH_BYTES = declare(
    f"{PREFIX}_exporter_batch_size_bytes", Kind.histogram, "By", "Uncompressed bytes in each batch sent upstream.",
    component=COMPONENT, labels=(SIGNAL,), buckets=tuple(b * 1024 for b in (1, 16, 64, 256, 1024, 4096, 16384)),
)
COMPRESSION_DOWNGRADES = declare(
    f"{PREFIX}_exporter_compression_downgrades", Kind.counter, "{downgrades}",
    "Times the upstream refused the exporter's compression and the next one was used "
    "(zstd -> gzip -> none; the refused batch is sent again, not lost).",
    component=COMPONENT,
    labels=(Label("from_encoding", COMPRESSIONS[:-1]), Label("to_encoding", COMPRESSIONS[1:])),
    appears="at the first downgrade (the upstream refused zstd or gzip)",
)
DEAD_CONNECTIONS = declare(
    f"{PREFIX}_exporter_dead_connections", Kind.counter, "{connections}",
    "Upstream connections closed as dead: after an export on one timed out, it sent nothing back, "
    "not even an answer to a PING, within min(5 s, exporter.timeout) (a Collector gone without "
    "closing, a network partition). The export is retried on a new connection.",
    component=COMPONENT,
)
CIRCUIT_STATE = declare(
    f"{PREFIX}_exporter_circuit_state", Kind.gauge, "1",
    "Exporter circuit of the upstream each signal goes to: 0 closed, 1 half-open, 2 open (signals "
    "sent to one upstream share its circuit).",
    component=COMPONENT, labels=(SIGNAL,),
)
CIRCUIT_TRANSITIONS = declare(
    f"{PREFIX}_exporter_circuit_transitions", Kind.counter, "{transitions}",
    "Circuit state changes, by new state, counted for each signal the circuit's upstream serves "
    "(with one upstream for every signal, a change shows once per signal).",
    component=COMPONENT, labels=(SIGNAL, Label("state", CIRCUIT_STATES)),
)
DISK_QUEUE_SIZE = declare(
    f"{PREFIX}_disk_queue_size_bytes", Kind.gauge, "By",
    "Bytes the on-disk queue holds for records not yet sent (a segment whose records have all "
    "left is deleted when room is needed and is not counted).",
    component=COMPONENT, appears="with the on-disk queue (exporter.disk_queue_dir)",
)
DISK_QUEUE_CAPACITY = declare(
    f"{PREFIX}_disk_queue_capacity_bytes", Kind.gauge, "By", "Bytes the on-disk queue may hold.",
    component=COMPONENT, appears="with the on-disk queue (exporter.disk_queue_dir)",
)
DISK_QUEUE_CORRUPT = declare(
    f"{PREFIX}_disk_queue_corrupt_records", Kind.counter, "{records}",
    "Records found corrupt or cut short on replay (skipped with the rest of their segment).",
    component=COMPONENT, appears="with the on-disk queue (exporter.disk_queue_dir)",
)
DISK_QUEUE_REPLAYED = declare(
    f"{PREFIX}_disk_queue_replayed_records", Kind.counter, "{records}",
    "Records replayed from disk at start (queued at once, or waiting on disk: "
    f"{PREFIX}_disk_queue_waiting_records).",
    component=COMPONENT, appears="with the on-disk queue (exporter.disk_queue_dir)",
)
DISK_QUEUE_HELD_UNMASKED = declare(
    f"{PREFIX}_disk_queue_held_unmasked_records", Kind.gauge, "{records}",
    "Records on disk accepted by a sidecar that did not mask them (policy.mode dry_run or "
    "passthrough, before a restart in enforce mode): held, never sent by a sidecar that masks.",
    component=COMPONENT, appears="with the on-disk queue (exporter.disk_queue_dir)",
)
DISK_QUEUE_WAITING = declare(
    f"{PREFIX}_disk_queue_waiting_records", Kind.gauge, "{records}",
    "Records replayed from disk not yet in the export queue: a replay holds at most half the "
    "requests the queue keeps track of (a quarter of exporter.queue_max_bytes at 192 bytes each); "
    "the others wait on disk and are queued, oldest first, as records leave.",
    component=COMPONENT, appears="with the on-disk queue (exporter.disk_queue_dir)",
)
