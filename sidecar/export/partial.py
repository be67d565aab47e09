"""Read ``partial_success`` out of an Export*ServiceResponse."""

from __future__ import annotations

from google.protobuf.message import DecodeError

from sidecar.export.result import MAX_UPSTREAM_MESSAGE, Exported
from sidecar.masked_text import quoted
from sidecar.signals import Signal

_REJECTED_FIELD = {
    Signal.TRACES: "rejected_spans",
    Signal.METRICS: "rejected_data_points",
    Signal.LOGS: "rejected_log_records",
}


def rejected_field(signal: Signal) -> str:
    return _REJECTED_FIELD[signal]


def parse_response(signal: Signal, body: bytes) -> Exported:
    """The upstream's reply; an unparsable reply counts as full success (the upstream said 200/OK)."""
    if not body:
        return Exported()
    response = signal.response_class()
    try:
        response.ParseFromString(body)
    except DecodeError:
        return Exported()
    partial = response.partial_success
    return Exported(
        rejected=int(getattr(partial, _REJECTED_FIELD[signal])),
        message=quoted(partial.error_message, MAX_UPSTREAM_MESSAGE),
    )
