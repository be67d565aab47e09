"""What one export attempt came to, in the terms of the OTLP retry rules."""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.masked_text import quoted

#: the most of an upstream's message kept (it is logged, counted and shown on /ready)
MAX_UPSTREAM_MESSAGE = 1024


@dataclass(frozen=True)
class Exported:
    """The upstream took the request; ``rejected`` items it refused in partial_success (final)."""

    rejected: int = 0
    message: str = ""


class ExportError(Exception):
    """An attempt failed. ``retryable`` per the OTLP spec; ``retry_after`` seconds if the upstream said."""

    def __init__(
        self, reason: str, message: str, *, retryable: bool, retry_after: float | None = None
    ) -> None:
        # the upstream's words may quote the data it refused (a Collector's error names the
        # attribute): masked and cut, for the log, /ready and the circuit's warning
        message = quoted(message, MAX_UPSTREAM_MESSAGE)
        super().__init__(message)
        #: short fixed vocabulary for metric labels: unavailable, timeout, http_503, grpc_unavailable...
        self.reason = reason
        self.message = message
        self.retryable = retryable
        self.retry_after = retry_after
