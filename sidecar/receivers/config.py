"""The ``[receivers]`` section: where the app sends OTLP and what the sidecar accepts.

The receivers' own settings, their factory defaults and their validation. How the
listeners are secured is ``[receivers_tls]`` (:mod:`sidecar.tls.config`); the limits
shared by every listener are ``[limits]`` (:mod:`sidecar.overload.config`).
"""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.configkit import ConfigError, setting

MiB = 1024 * 1024

#: factory defaults: loopback listeners on the standard OTLP ports (the app is in the same pod)
DEFAULT_GRPC_ENDPOINT = "127.0.0.1:4317"
DEFAULT_HTTP_ENDPOINT = "127.0.0.1:4318"
DEFAULT_MAX_REQUEST_BYTES = 16 * MiB
DEFAULT_MAX_DECOMPRESSED_BYTES = 64 * MiB
DEFAULT_GRPC_MAX_FRAME_SIZE = 1 * MiB
DEFAULT_MAX_INFLIGHT_BYTES = 64 * MiB


@dataclass(frozen=True)
class ReceiversConfig:
    """Where the app sends OTLP, and what the sidecar accepts."""

    grpc_endpoint: str = setting(
        DEFAULT_GRPC_ENDPOINT, "host:port of the OTLP/gRPC listener.",
        kind="endpoint", env=["SIDECAR_GRPC_ENDPOINT"],
    )
    http_endpoint: str = setting(
        DEFAULT_HTTP_ENDPOINT, "host:port of the OTLP/HTTP listener.",
        kind="endpoint", env=["SIDECAR_HTTP_ENDPOINT"],
    )
    grpc_enabled: bool = setting(True, "Serve OTLP/gRPC.", kind="bool")
    http_enabled: bool = setting(True, "Serve OTLP/HTTP.", kind="bool")
    max_request_bytes: int = setting(
        DEFAULT_MAX_REQUEST_BYTES,
        "Largest request accepted, compressed as sent (HTTP 413 / gRPC RESOURCE_EXHAUSTED).",
        kind="size", min=1024,
    )
    max_decompressed_bytes: int = setting(
        DEFAULT_MAX_DECOMPRESSED_BYTES,
        "Largest request after decompression; a larger one is refused like an oversized body.",
        kind="size", min=1024,
    )
    grpc_max_frame_size: int = setting(
        DEFAULT_GRPC_MAX_FRAME_SIZE,
        "HTTP/2 SETTINGS_MAX_FRAME_SIZE the gRPC listener advertises (larger frames cost less CPU).",
        kind="size", min=16384, max=16777215,
    )
    max_inflight_bytes: int = setting(
        DEFAULT_MAX_INFLIGHT_BYTES,
        "Deprecated (use limits.budget_bytes, the smaller of the two applies): request bytes both "
        "listeners hold at once; beyond it requests get HTTP 503 / gRPC UNAVAILABLE and are "
        "retried. At least max_request_bytes.",
        kind="size", min=1024,
    )

    def validate(self) -> None:
        """Cross-key checks of the section (each key's own bounds are in its ``setting``)."""
        if self.max_inflight_bytes < self.max_request_bytes:
            raise ConfigError(
                "receivers.max_inflight_bytes",
                f"must be at least receivers.max_request_bytes ({self.max_request_bytes}), or a "
                "largest request could never be received",
            )

    def listeners(self) -> tuple[tuple[str, str], ...]:
        """``(dotted key, host:port)`` of each enabled listener."""
        found: list[tuple[str, str]] = []
        if self.grpc_enabled:
            found.append(("receivers.grpc_endpoint", self.grpc_endpoint))
        if self.http_enabled:
            found.append(("receivers.http_endpoint", self.http_endpoint))
        return tuple(found)
