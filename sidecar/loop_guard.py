"""The request-level loop guard: a request that already passed this sidecar is refused.

The exporters mark every request they send with :data:`HEADER` naming this process
(:data:`INSTANCE`, random per start); the receivers refuse a request that carries this
process's mark. An upstream that leads back to the sidecar (its own listener, a port
forward, a collector that propagates headers) then fails one batch with a clear error
instead of copying every item round the loop forever. The answer is final (HTTP 508, gRPC
FAILED_PRECONDITION), so the exporter does not retry it. The start-time check in
``sidecar.config`` catches the plain case (an upstream that is one of our own listeners)
before anything is sent.
"""

from __future__ import annotations

import secrets

#: the header (gRPC metadata) the exporters add; names are lower case on both transports
HEADER = "otlp-sidecar-hop"

#: this process's mark: random, so it says nothing about the pod
INSTANCE = secrets.token_hex(8)

#: metric reason of a refused looping request
REASON = "loop"

HTTP_STATUS = 508  # Loop Detected (RFC 5842): not retryable under OTLP/HTTP

MESSAGE = (
    "this request was exported by this same sidecar: its upstream leads back to one of its own "
    "listeners (check exporter.endpoint / OTEL_EXPORTER_OTLP_ENDPOINT)"
)


def passed_here(value: str | None) -> bool:
    """True when a request's :data:`HEADER` value (comma-separated marks) names this process."""
    if not value:
        return False
    return any(mark.strip() == INSTANCE for mark in value.split(","))
