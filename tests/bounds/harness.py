"""Attack a REAL sidecar process over loopback and check it stays bounded.

Shared by every tests/bounds/ file (HTTP/1.1, compression, JSON, admin, HTTP/2, gRPC, policy):

    async with BoundedSidecar(SIDECAR_LIMITS_MAX_COMPRESSION_MEMBERS="64") as sc:
        async with Probe(sc) as probe:          # a normal OTLP/HTTP client, every 50 ms
            status, body = await http_post(sc.http, "/v1/traces", bomb, {"Content-Encoding": "gzip"})
        assert status == 413
        probe.assert_served(max_latency=0.5)    # others were served meanwhile, in time
        sc.assert_peak_under()                  # VmHWM under limits.max_memory_bytes
        assert sc.action("otlp_http", "decompressed_too_large") >= 1

The sidecar runs as ``python -m sidecar run`` (tests.processes.SidecarProcess) on free loopback
ports, exporting to an in-process upstream (tests.upstream.Upstream) that accepts everything.
``BOUNDS_REPO=/path/to/other/checkout`` runs another checkout's sidecar (for "before" figures).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import resource
import sys
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

from tests import sdk
from tests.conftest import REPO, sidecar_env
from tests.processes import SidecarProcess
from tests.upstream import Upstream

MiB = 1024 * 1024
#: the default memory ceiling (limits.max_memory_bytes)
CEILING = 128 * MiB

#: the sidecar's own view of its event loop: how late a timer due every 0.1 s ran
LOOP_LAG = "otlp_sidecar_event_loop_lag_seconds"

#: a small valid OTLP/HTTP traces request (3 spans)
SMALL_TRACES = encode_spans(sdk.make_spans(3)).SerializeToString()


class BoundedSidecar:
    """A sidecar process plus the upstream it exports to; ``env`` adds SIDECAR_* settings."""

    def __init__(self, protocol: str = "grpc", *, nofile: int | None = None, **env: str) -> None:
        """``nofile``: the process's RLIMIT_NOFILE (to run it out of descriptors)."""
        self.protocol = protocol
        self.nofile = nofile
        self.extra = env
        self.upstream = Upstream()
        self.process: SidecarProcess | None = None
        self.ports: dict[str, int] = {}

    async def __aenter__(self) -> BoundedSidecar:
        await self.upstream.start()
        env = sidecar_env(self.upstream, self.protocol, **self.extra)
        env.setdefault("SIDECAR_LOG_LEVEL", "info")
        self.process = SidecarProcess(env)
        repo = os.environ.get("BOUNDS_REPO")
        if repo:
            self.process.env["PYTHONPATH"] = repo
        try:
            self.ports = await _start(self.process, repo, self.nofile)
        except BaseException:
            await self.upstream.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            if self.process is not None:
                await self.process.stop(timeout=10.0)
        finally:
            await self.upstream.stop()

    # -- where ----------------------------------------------------------------------------------

    @property
    def http(self) -> int:
        return self.ports["http"]

    @property
    def grpc(self) -> int:
        return self.ports["grpc"]

    @property
    def admin(self) -> int:
        return self.ports["admin"]

    @property
    def pid(self) -> int:
        assert self.process is not None and self.process.proc is not None
        return self.process.proc.pid

    # -- what the process holds -----------------------------------------------------------------

    def status_field(self, name: str) -> int:
        """A ``/proc/<pid>/status`` field in bytes (VmHWM, VmRSS) or as a count (FDSize, Threads)."""
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith(name + ":"):
                    value = line.split()[1]
                    return int(value) * 1024 if line.rstrip().endswith("kB") else int(value)
        raise KeyError(name)

    def peak_rss(self) -> int:
        """VmHWM: the most resident memory the process ever had."""
        return self.status_field("VmHWM")

    def rss(self) -> int:
        return self.status_field("VmRSS")

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def assert_peak_under(self, ceiling: int = CEILING) -> int:
        peak = self.peak_rss()
        assert peak < ceiling, f"peak RSS {peak / MiB:.1f} MiB is over the ceiling of {ceiling / MiB:.0f} MiB"
        return peak

    async def accepted_all(self, port: int, timeout: float = 30.0) -> float:
        """Wait until the sidecar has accepted every connection waiting on its loopback ``port``
        (the listening socket's accept queue is empty); when that was (``time.perf_counter()``).
        A burst of connects ends in the kernel: the sidecar may still be working through them."""
        deadline = time.perf_counter() + timeout
        while True:
            if _accept_queue(port) == 0:
                return time.perf_counter()
            assert time.perf_counter() < deadline, f"the sidecar left connections on port {port} unaccepted"
            await asyncio.sleep(0.01)

    def alive(self) -> bool:
        return self.process is not None and self.process.proc is not None and self.process.proc.returncode is None

    @property
    def log(self) -> str:
        assert self.process is not None
        return self.process.stderr

    # -- metrics --------------------------------------------------------------------------------

    async def metrics(self, timeout: float = 5.0) -> str:
        status, body = await http_request(self.admin, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", timeout)
        assert status == 200, f"/metrics answered {status}"
        return body.decode()

    async def metric(self, name: str, **labels: str) -> float:
        """The value of one sample of ``name`` with exactly these labels (0 when absent)."""
        text = await self.metrics()
        for line in text.splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                sample, _, value = line.rpartition(" ")
                found = dict(re.findall(r'(\w+)="([^"]*)"', sample))
                if found == labels:
                    return float(value)
        return 0.0

    async def late_checks(self) -> dict[float, float] | None:
        """The event loop's checks so far by lag: bucket bound (seconds) -> how many ran later
        than it (``otlp_sidecar_event_loop_lag_seconds``; None from a sidecar without it)."""
        samples: dict[float, float] = {}
        total = None
        for line in (await self.metrics()).splitlines():
            if line.startswith(f"{LOOP_LAG}_count "):
                total = float(line.rpartition(" ")[2])
            elif line.startswith(f"{LOOP_LAG}_bucket{{"):
                bound = re.search(r'le="([^"]+)"', line)
                if bound and bound.group(1) != "+Inf":
                    samples[float(bound.group(1))] = float(line.rpartition(" ")[2])
        if total is None:
            return None
        return {bound: total - on_time for bound, on_time in samples.items()}

    async def action(self, listener: str, action: str) -> float:
        """otlp_sidecar_overload_actions_total{listener, action}."""
        return await self.metric("otlp_sidecar_overload_actions_total", listener=listener, action=action)


def _accept_queue(port: int) -> int:
    """Connections waiting to be accepted on the listening socket 127.0.0.1:``port``
    (/proc/net/tcp: a listening socket's rx_queue is its accept queue)."""
    local = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if fields[1] == local and fields[3] == "0A":
                return int(fields[4].partition(":")[2], 16)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port}")


async def _start(process: SidecarProcess, repo: str | None, nofile: int | None) -> dict[str, int]:
    if not repo and nofile is None:
        return await process.start()

    def limit_files() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    # another checkout (the code before a change) from its own directory, or a descriptor limit
    return await process.launch([sys.executable, "-m", "sidecar", "run"], cwd=repo or REPO, preexec_fn=limit_files)


# -- raw HTTP/1.1 over loopback -----------------------------------------------------------------


async def http_request(port: int, raw: bytes, timeout: float = 10.0) -> tuple[int, bytes]:
    """Send ``raw`` (a whole request) on a new connection; the status and body of the answer
    (status 0 when the connection closed without one)."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(raw)
            await writer.drain()
            return await read_response(reader)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One HTTP/1.1 answer with Content-Length (status 0 if the connection ends first)."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return 0, b""
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    try:
        body = await reader.readexactly(length) if length else b""
    except (asyncio.IncompleteReadError, ConnectionError):
        body = b""
    return status, body


async def http_post(
    port: int, path: str, body: bytes, headers: dict[str, str] | None = None, timeout: float = 30.0,
    content_type: str = "application/x-protobuf",
) -> tuple[int, bytes]:
    """POST ``body`` on a new connection: (status, body)."""
    fields = {"Host": "127.0.0.1", "Content-Type": content_type, "Content-Length": str(len(body)),
              "Connection": "close", **(headers or {})}
    head = f"POST {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items()) + "\r\n"
    return await http_request(port, head.encode() + body, timeout)


async def refused_traces(sidecar: BoundedSidecar, transport: str, body: bytes, packed: bytes,
                         encoding: str) -> tuple[int, str]:
    """Send an ExportTraceServiceRequest the sidecar is to refuse: over OTLP/HTTP as ``packed``
    (``body`` in ``encoding``), or over gRPC with grpcio (``body``, gzip-compressed by grpcio).
    (the HTTP status, or 413 for RESOURCE_EXHAUSTED, 0 for another gRPC code; the message)."""
    import grpc

    if transport == "http":
        status, answer = await http_post(sidecar.http, "/v1/traces", packed, headers={"Content-Encoding": encoding})
        return status, status_message(answer)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.grpc}", compression=grpc.Compression.Gzip) as channel:
        export = channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                                     request_serializer=lambda b: b, response_deserializer=lambda b: b)
        try:
            await export(body, timeout=30)
        except grpc.aio.AioRpcError as refused:
            code = 413 if refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED else 0
            return code, refused.details() or ""
    return 200, ""


def status_message(body: bytes) -> str:
    """The message of a google.rpc.Status body (protobuf), or the body as text."""
    from google.rpc import status_pb2

    try:
        return status_pb2.Status.FromString(body).message
    except Exception:
        return body.decode("utf-8", "replace")


# -- a normal client, served meanwhile ----------------------------------------------------------


#: seconds after the sidecar accepted a burst's last connection in which a probe's connection
#: may still have been among them
ACCEPT_MARGIN = 0.2


@dataclass
class ProbeResult:
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    #: when each failure started and how long it took (perf_counter seconds)
    failure_times: list[tuple[float, float]] = field(default_factory=list)

    @property
    def max_latency(self) -> float:
        return max(self.latencies, default=float("inf"))


class Probe:
    """A normal client sending small requests every ``interval`` seconds while an attack runs:
    ``kind`` "http" (OTLP/HTTP protobuf, a new connection each time), "grpc" (grpcio, one channel)
    or "health" (GET /health on the admin port)."""

    def __init__(self, sidecar: BoundedSidecar, kind: str = "http", interval: float = 0.05,
                 timeout: float = 5.0) -> None:
        self.sidecar = sidecar
        self.kind = kind
        self.interval = interval
        self.timeout = timeout
        self.result = ProbeResult()
        self._task: asyncio.Task[None] | None = None
        self._channel: Any = None
        #: the sidecar's late loop checks by bound, before and after the attack
        self._late: tuple[dict[float, float] | None, dict[float, float] | None] = (None, None)

    async def __aenter__(self) -> Probe:
        if self.kind == "grpc":
            import grpc

            self._channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.sidecar.grpc}")
        await self.once()  # served before the attack starts
        self.result = ProbeResult()
        self._late = (await self._late_checks(), None)
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self.once()  # and after it
        if self._channel is not None:
            await self._channel.close()
        if self.sidecar.alive():
            self._late = (self._late[0], await self._late_checks())

    async def _late_checks(self) -> dict[float, float] | None:
        """The sidecar's late loop checks; None when its admin port cannot tell (an attack on
        that port may still hold its connections): the check is then left out."""
        try:
            return await self.sidecar.late_checks()
        except (AssertionError, OSError, TimeoutError):
            return None

    async def once(self) -> None:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout):
                ok, what = await self._send()
        except Exception as exc:  # a failure of the probe is the finding
            ok, what = False, f"{type(exc).__name__}: {exc}"
        elapsed = time.perf_counter() - started
        if ok:
            self.result.latencies.append(elapsed)
        else:
            self.result.failures.append(f"{what} after {elapsed:.2f}s")
            self.result.failure_times.append((started, elapsed))

    async def _send(self) -> tuple[bool, str]:
        if self.kind == "http":
            status, _ = await http_post(self.sidecar.http, "/v1/traces", SMALL_TRACES, timeout=self.timeout)
            return status == 200, f"status {status}"
        if self.kind == "health":
            raw = b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            status, _ = await http_request(self.sidecar.admin, raw, self.timeout)
            return status == 200, f"status {status}"
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

        method = self._channel.unary_unary(
            "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            request_serializer=lambda b: b,
            response_deserializer=trace_service_pb2.ExportTraceServiceResponse.FromString,
        )
        await method(SMALL_TRACES, timeout=self.timeout)
        return True, "ok"

    async def _run(self) -> None:
        while True:
            await self.once()
            await asyncio.sleep(self.interval)

    def assert_served(self, max_latency: float = 1.0, min_ok: int = 1,
                      refused_until: float | None = None) -> ProbeResult:
        """Served every time within ``max_latency`` seconds. With ``refused_until`` (a
        ``time.perf_counter()`` value: the end of a burst of new connections past a cap), a
        request started before then may be refused, but at once, never left waiting."""
        result = self.result
        for (started, elapsed), failure in zip(result.failure_times, result.failures, strict=True):
            refusable = refused_until is not None and started <= refused_until and elapsed <= max_latency
            assert refusable, f"the normal {self.kind} client failed: {failure} (all: {result.failures[:5]})"
        assert len(result.latencies) >= min_ok, f"the normal client was served {len(result.latencies)} times"
        assert result.max_latency <= max_latency, (
            f"the normal {self.kind} client waited {result.max_latency:.3f}s (bound {max_latency}s)"
        )
        before, after = self._late
        if before is not None and after is not None:
            # and the sidecar's own view: its event loop never ran a timer later than the bound
            bound = min((b for b in after if b >= max_latency), default=max(after))
            late = after[bound] - before.get(bound, 0.0)
            assert late == 0, f"the sidecar's event loop ran {late:g} checks over {bound:g} s late meanwhile"
        return result
