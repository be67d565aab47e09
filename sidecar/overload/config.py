"""The ``limits`` config section: every receive limit of the sidecar in one place.

The request sizes stay in ``receivers`` (``max_request_bytes``, ``max_decompressed_bytes``);
``receivers.max_inflight_bytes`` is kept as a deprecated upper bound on ``limits.budget_bytes``
(the budget is the smaller of the two).
"""

from __future__ import annotations

import resource
from dataclasses import dataclass

from sidecar.configkit import ConfigError, setting

MiB = 1024 * 1024

#: what the process holds besides the receive budget and the export queue: interpreter, modules,
#: the compiled policy set, caches, buffers. Measured at start with the bundled set: VmHWM 66-73
#: MiB (tests/day_one, tests/bounds); the ceiling keeps this much for it.
FOOTPRINT_BYTES = 72 * MiB
#: what one TLS connection receiving may hold outside the receive budget, counted for the reserve
TLS_CONNECTION_BYTES = 512 * 1024


@dataclass(frozen=True)
class LimitsConfig:
    """What clients can make the sidecar hold and spend (docs/limits.md): one memory budget,
    a share of it per connection, connections per listener, timeouts, decoding bounds."""

    max_memory_bytes: int = setting(
        128 * MiB,
        "The memory ceiling the sidecar keeps under (its peak RSS; the injected container limit is "
        "256 Mi): the process's own footprint (72 MiB kept for it), the receive budget "
        "(limits.budget_bytes) and the export queue (exporter.queue_max_bytes) must fit under it, "
        "or the sidecar refuses to start.",
        kind="size", min=16 * MiB,
    )
    budget_bytes: int = setting(
        40 * MiB,
        "The receive budget: bytes clients make the sidecar hold at once, on every listener "
        "(wire bytes as they arrive, decompressed and decoded bytes, partial HTTP/2 frames), "
        "until they are queued. Beyond it requests get HTTP 503 / gRPC UNAVAILABLE with "
        "Retry-After. Also bounded by receivers.max_inflight_bytes (deprecated). Below max_memory_bytes.",
        kind="size", min=1024 * 1024,
    )
    connection_share_bytes: int = setting(
        24 * MiB,
        "The most of the receive budget one connection may hold; beyond it its requests get 503 / "
        "UNAVAILABLE, and a request that could never fit (decompressed) gets 413 / RESOURCE_EXHAUSTED.",
        kind="size", min=64 * 1024,
    )
    http_max_connections: int = setting(
        512, "Open connections the OTLP/HTTP listener accepts; more are closed at once.",
        kind="int", min=1, max=65536,
    )
    grpc_max_connections: int = setting(
        512, "Open connections the OTLP/gRPC listener accepts; more are closed at once.",
        kind="int", min=1, max=65536,
    )
    tls_max_connections: int = setting(
        16,
        "Open connections each OTLP listener accepts when it speaks TLS (receivers_tls), and TLS "
        "handshakes in progress: a TLS connection receiving holds 200-400 KiB of TLS and read "
        "buffers outside the receive budget (asyncio's and OpenSSL's), so 512 KiB for each of "
        "them on both listeners is kept from the receive budget (16 MiB with 16; at most half "
        "of it). The smaller of this and the listener's own cap applies.",
        kind="int", min=1, max=65536,
    )
    admin_max_connections: int = setting(
        32,
        "Open connections the admin listener accepts (probes and scrapes need few); more are "
        "closed at once, so the admin port never takes the OTLP listeners' file descriptors.",
        kind="int", min=1, max=4096,
    )
    header_timeout: float = setting(
        10.0, "Seconds from a request's first byte to the end of its headers (every listener).",
        kind="duration", min=0.05, max=300.0,
    )
    idle_timeout: float = setting(
        75.0, "Seconds a keep-alive connection may wait for its next request (every listener).",
        kind="duration", min=0.05, max=3600.0,
    )
    min_receive_rate: int = setting(
        1024,
        "Bytes per second a request body must arrive at on average, after limits.min_rate_grace; "
        "a slower one is answered 408 and closed (0: no minimum).",
        kind="size", min=0,
    )
    min_rate_grace: float = setting(
        5.0, "Seconds a body may arrive slower than limits.min_receive_rate before it is cut.",
        kind="duration", min=0.0, max=300.0,
    )
    request_deadline: float = setting(
        60.0, "Seconds from the end of a request's head to the end of its body, however steadily it arrives.",
        kind="duration", min=0.1, max=3600.0,
    )
    grpc_max_concurrent_streams: int = setting(
        100,
        "HTTP/2 streams (calls) one gRPC connection may have open (SETTINGS_MAX_CONCURRENT_STREAMS); "
        "more are refused with REFUSED_STREAM, which clients retry.",
        kind="int", min=1, max=10_000,
    )
    grpc_max_header_list_bytes: int = setting(
        64 * 1024,
        "Bytes of one call's headers (SETTINGS_MAX_HEADER_LIST_SIZE, and one header block as sent).",
        kind="size", min=4096, max=16 * MiB,
    )
    grpc_window_bytes: int = setting(
        4 * MiB,
        "HTTP/2 receive window of a gRPC connection and of each stream: bytes a client may send "
        "before the sidecar acknowledges them (at least 65535).",
        kind="size", min=65535, max=2**31 - 1,
    )
    grpc_stall_timeout: float = setting(
        30.0,
        "Seconds a gRPC call may stall: its request stops arriving, or its client stops taking the "
        "answer (flow control, or not reading); then the call is ended.",
        kind="duration", min=0.1, max=3600.0,
    )
    grpc_max_outbound_bytes: int = setting(
        1 * MiB,
        "Answer bytes a gRPC connection may leave waiting (for window, or unread) for longer than "
        "limits.min_rate_grace before it is closed.",
        kind="size", min=64 * 1024, max=256 * MiB,
    )
    max_compression_members: int = setting(
        64,
        "gzip members or zstd frames one compressed body may hold (concatenated empty members are "
        "a CPU attack); more → 400.",
        kind="int", min=1, max=1_000_000,
    )
    decompress_step_bytes: int = setting(
        256 * 1024,
        "Bytes decompressed per step before the event loop gets a turn (and the budget is charged).",
        kind="size", min=4096, max=16 * MiB,
    )
    json_max_depth: int = setting(
        64, "Nesting depth of an OTLP/JSON body (objects and arrays); deeper → 400.",
        kind="int", min=8, max=900,
    )
    json_max_items: int = setting(
        200_000,
        "Objects and arrays in one OTLP/JSON body (each costs memory once decoded); more → 413.",
        kind="int", min=100, max=10_000_000,
    )
    max_resources_per_request: int = setting(
        512,
        "Resources (ResourceSpans / ResourceMetrics / ResourceLogs) in one request; each may cost a "
        "policy evaluation. More → 413 / RESOURCE_EXHAUSTED.",
        kind="int", min=1, max=1_000_000,
    )
    max_rewrite_growth_bytes: int = setting(
        4 * MiB,
        "Bytes the policies may add to one request as they rewrite it (hashes and redactions longer "
        "than what they replace, stamps, re-encoded lengths, masked copies; 32 bytes per edit), held "
        "on top of the request until it is queued. The rewrite stops there: more → 413 / "
        "RESOURCE_EXHAUSTED. A legitimate request adds far less (512 spans x 10 hashed attributes: "
        "~360 kB).",
        kind="size", min=64 * 1024, max=64 * MiB,
    )

    def validate(self) -> None:
        if self.budget_bytes >= self.max_memory_bytes:
            raise ConfigError(
                "limits.budget_bytes",
                f"must be below limits.max_memory_bytes ({self.max_memory_bytes}): the process itself needs memory too",
            )
        if self.connection_share_bytes > self.budget_bytes:
            raise ConfigError(
                "limits.connection_share_bytes", f"must be at most limits.budget_bytes ({self.budget_bytes})"
            )

    def check_ceiling(self, queue_bytes: int) -> None:
        """The process's footprint, the receive budget and the export queue (``queue_bytes``)
        together fit under ``max_memory_bytes``: one ceiling for everything the sidecar holds."""
        need = FOOTPRINT_BYTES + self.budget_bytes + queue_bytes
        if need > self.max_memory_bytes:
            raise ConfigError(
                "limits.max_memory_bytes",
                f"{self.max_memory_bytes} bytes cannot hold the process ({FOOTPRINT_BYTES // MiB} MiB), the receive "
                f"budget (limits.budget_bytes, {self.budget_bytes}) and the export queue (exporter.queue_max_bytes, "
                f"{queue_bytes}): raise it to at least {need} (and the container's memory limit with it), or "
                "lower those two",
            )

    def budget_limit(self, max_inflight_bytes: int | None = None, *, tls: bool = False) -> int:
        """The receive budget: ``budget_bytes``, bounded by the deprecated ``receivers.max_inflight_bytes``.
        With ``tls`` (the OTLP listeners speak TLS) what their connections may hold outside it is
        kept from it (:meth:`tls_reserve`), at most half of it."""
        limit = self.budget_bytes if max_inflight_bytes is None else min(self.budget_bytes, max_inflight_bytes)
        return limit - min(limit // 2, self.tls_reserve()) if tls else limit

    def tls_reserve(self) -> int:
        """What the TLS connections of the two OTLP listeners may hold outside the receive budget
        (asyncio's and OpenSSL's buffers, measured 200-400 KiB a connection receiving)."""
        return 2 * self.tls_max_connections * TLS_CONNECTION_BYTES

    def connection_caps(self, nofile: int | None = None, *, tls: bool = False) -> dict[str, int]:
        """Connections per listener, each capped so that together they stay well below the
        process's descriptor limit (RLIMIT_NOFILE): the admin port can never starve the OTLP
        listeners, nor a flood starve the exporter and the disk queue. With ``tls`` the OTLP
        listeners keep at most ``tls_max_connections`` each (memory, not descriptors)."""
        if nofile is None:
            nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        # keep 64 + a tenth for the process's own files, sockets upstream, the policy engine; a
        # listener may briefly hold twice its cap (a burst of connections accepted at once)
        spare = max(16, nofile - 64 - nofile // 10) // 2
        admin = max(1, min(self.admin_max_connections, spare // 16))
        rest = max(2, spare - admin)
        http = max(1, min(self.http_max_connections, rest // 2))
        grpc = max(1, min(self.grpc_max_connections, rest - http))
        if tls:
            http, grpc = min(http, self.tls_max_connections), min(grpc, self.tls_max_connections)
        return {"otlp_http": http, "otlp_grpc": grpc, "admin": admin}
