"""End-to-end load benchmark: load generators -> sidecar (pinned to one core) -> sink.

Side by side in the same run, on each transport:

- ``transport-libraries``: aiohttp and grpclib answering without looking at the request: what
  receiving cost on the servers the sidecar used before its own;
- ``transport``: the servers the sidecar uses (``sidecar.wire.http1``, ``sidecar.wire.http2``)
  answering without looking at the request: the floor of receiving;
- ``passthrough``: the sidecar with no policy;
- ``policy``: the sidecar with the bundled default policies (embedded Rego, Cython rewriter);
- ``keep-all``: the bundled policies with the sampling ratio at 1.0 (masking on, every span kept,
  zstd export): what an unsampled tenant costs;
- ``naive``: a naive Python proxy (upb decode, the same policy in Python, encode, forward);
- ``rego-per-span``: the naive proxy asking Rego about every span as well (why plans);
- ``collector``: the OpenTelemetry Collector (``make peers``) configured as a sidecar doing the
  same job: a card-number pattern redacted, the tenant stamped, 10 % probabilistic sampling,
  batching, zstd upstream; ``GOMAXPROCS=1`` on the same core (skipped if not built).

Each signal has its rows (``--signals``): traces (512 spans a request), logs (512 log records
with message bodies scanned for card numbers) and metrics (512 data points of gauges, sums and
histograms with exemplars), built in ``bench.corpus_requests``; logs and metrics run the modes of
``SIGNAL_MODES``. Ratios are taken within a run: against the naive proxy, the Collector and the
transport floor of the same signal and transport.

The load comes from ``bench.loadgen`` (pre-built requests on raw connections, cheap enough to
saturate the target from one core). Measured per row: items/s the target accepted, the target's
CPU time per item (from /proc, so it holds whoever is the bottleneck), peak RSS and refused /
failed requests flat out; then, once the target is idle again (its backlog sent), at each fixed
rate of ``--rates`` (50,000 and 500,000 items/s; skipped for a target that cannot sustain the
rate) the latency the app sees (p50 / p99 / p99.9), the refusals, and the peak RSS of that
phase alone (the high-water mark reset through ``/proc/<pid>/clear_refs``). Flat out, an
unsampled row fills its bounded export queue by design (the sink is slower than the target);
at a rate the sink sustains, nothing should be refused. The table goes to stdout, followed by
each of issue 18's goals the run measured, met or not; the figures go to
``bench/results/load-<date>.json``.

Flat out, one row's CPU per item moves by up to a quarter between runs on this machine (the
speed of the host itself moves by 10-15 % over minutes), so a ratio of one run can fall either
side of a goal. ``--rounds N`` measures each signal and transport's rows N times, in turn (the
order reversed every other round, as ``bench.rewrite_builds`` does), and reports for each row the
round with the median CPU per item, every round's figure beside it, and the ratios of those
medians. The fixed-rate runs are made in the last round, at each rate the row reached 1.5 times
flat out in any round.

    python -m bench.load                       # both transports, all modes, 8 s each
    python -m bench.load --duration 3 --modes policy --transports http
    python -m bench.load --rounds 3 --signals metrics --modes policy,collector --rates ""
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from signal import SIGTERM
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Row:
    transport: str
    mode: str
    #: traces, logs or metrics; the per-span figures below are per item of this signal (span, log
    #: record, data point)
    signal: str = "traces"
    spans_per_s: float = 0.0
    cpu_us_per_span: float = 0.0
    target_cpu_share: float = 0.0
    peak_rss_mib: float = 0.0
    requests_ok: int = 0
    requests_refused: int = 0
    requests_failed: int = 0
    #: latency at the first fixed rate (``rate_spans_per_s``; 0: not run)
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    p999_ms: float = 0.0
    rate_spans_per_s: float = 0.0
    #: every fixed-rate run: rate, p50_ms, p99_ms, p999_ms, refused, failed, cpu_us_per_item (the
    #: target's CPU time over the run and the export of what it accepted, per item accepted)
    rates: list[dict[str, float]] = field(default_factory=list)
    #: refused / failed requests in the fixed-rate runs (``requests_*``: the flat-out run)
    refused_at_rate: int = 0
    failed_at_rate: int = 0
    #: peak RSS of the fixed-rate runs alone (0: not measured)
    peak_rss_at_rate_mib: float = 0.0
    #: share of the machine's CPU time the hypervisor gave to others during the row (steal)
    steal_pct: float = 0.0
    limit: str = ""
    notes: list[str] = field(default_factory=list)
    #: with ``--rounds``: the flat-out CPU per item of every round, in order (this row's flat-out
    #: figures are those of the round with the median, its fixed-rate figures the last round's)
    cpu_rounds: list[float] = field(default_factory=list)


def median_row(rounds: list[Row]) -> Row:
    """One row of several rounds of the same target: the flat-out figures of the round with the
    median CPU per item (the lower of the two middle ones for an even count), the fixed-rate
    figures of the last round (the only one that runs them), the highest peak RSS and steal."""
    last = rounds[-1]
    if len(rounds) == 1:
        return last
    cpu_rounds = [r.cpu_us_per_span for r in rounds]
    chosen = rounds[cpu_rounds.index(statistics.median_low(cpu_rounds))]
    for name in ("spans_per_s", "cpu_us_per_span", "target_cpu_share", "requests_ok", "requests_refused",
                 "requests_failed", "limit"):
        setattr(last, name, getattr(chosen, name))
    last.peak_rss_mib = max(r.peak_rss_mib for r in rounds)
    last.steal_pct = max(r.steal_pct for r in rounds)
    last.cpu_rounds = cpu_rounds
    return last


# -- processes ---------------------------------------------------------------------------------


def _pin(core: int | None, nice: int = 0) -> Any:
    def pin() -> None:
        if core is not None and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, {core})
        if nice:
            os.nice(nice)

    return pin


def lower_for_latency_run(pid: int) -> None:
    """Put the sink under ``SCHED_IDLE`` (it runs when the clients' core has nothing else to
    run; lowering a process of one's own needs no privilege): at ``nice 10`` it still held the
    core for a millisecond or two per export it decompressed and counted, and the clients
    sharing the core measured that as the target's latency (logs at 500k/s: p99 4.2 ms at
    ``nice 10``, 2.5 ms with a sink that counted nothing)."""
    os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0))


def start_sink() -> tuple[subprocess.Popen[str], int, int]:
    # the sink stands for a remote collector: during a flat-out row it runs at the generators'
    # priority so that it keeps up as a collector on its own machine would (starved, it makes the
    # target's export queue grow, and the target's memory with it); ``measure`` lowers it for
    # the latency run (``lower_for_latency_run``), where it must not delay the clients whose
    # timing is measured
    proc = subprocess.Popen([sys.executable, "-m", "bench.sink"], cwd=REPO, stdout=subprocess.PIPE, text=True,
                            preexec_fn=_pin(_other_core()))
    assert proc.stdout is not None
    line = proc.stdout.readline()
    ports = dict(part.split("=") for part in line.split())
    return proc, int(ports["grpc"]), int(ports["http"])


def collector_binary() -> Path:
    peers = os.environ.get("OTLP_SIDECAR_PEERS_DIR") or str(Path.home() / ".cache" / "otlp-sidecar" / "peers")
    return Path(peers) / "bin" / "otelcol"


#: a card number as the redaction processor sees it: 13 to 19 digits, spaces or dashes between
CARD_PATTERN = r"\b(?:\d[ -]?){12,18}\d\b"


def start_collector(sink_grpc: int, workdir: str) -> tuple[subprocess.Popen[str], int, int]:
    """The Collector as a sidecar doing the sidecar's job, on core 0 with GOMAXPROCS=1."""
    import socket
    import urllib.request

    def free_port() -> int:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])

    grpc_port, http_port, health = free_port(), free_port(), free_port()
    processors = ["memory_limiter", "resource", "redaction", "probabilistic_sampler", "batch"]
    unsampled = [name for name in processors if name != "probabilistic_sampler"]
    config = {
        "receivers": {"otlp": {"protocols": {"grpc": {"endpoint": f"127.0.0.1:{grpc_port}"},
                                             "http": {"endpoint": f"127.0.0.1:{http_port}"}}}},
        "processors": {
            "memory_limiter": {"check_interval": "1s", "limit_mib": 512, "spike_limit_mib": 128},
            "resource": {"attributes": [{"key": "tenant.id", "value": "acme", "action": "upsert"}]},
            "redaction": {"allow_all_keys": True, "blocked_values": [CARD_PATTERN], "summary": "silent"},
            "probabilistic_sampler": {"sampling_percentage": 10},
            "batch": {},
        },
        "exporters": {"otlp_grpc": {"endpoint": f"127.0.0.1:{sink_grpc}", "tls": {"insecure": True},
                                    "compression": "zstd"}},
        "extensions": {"health_check": {"endpoint": f"127.0.0.1:{health}"}},
        "service": {
            "extensions": ["health_check"],
            # the sidecar samples traces only; logs and metrics go through whole, as here
            "pipelines": {
                "traces": {"receivers": ["otlp"], "processors": processors, "exporters": ["otlp_grpc"]},
                "logs": {"receivers": ["otlp"], "processors": unsampled, "exporters": ["otlp_grpc"]},
                "metrics": {"receivers": ["otlp"], "processors": unsampled, "exporters": ["otlp_grpc"]},
            },
            "telemetry": {"metrics": {"level": "none"}, "logs": {"level": "warn"}},
        },
    }
    path = Path(workdir) / "otelcol.json"
    path.write_text(json.dumps(config))
    env = {**os.environ, "GOMAXPROCS": "1"}
    proc = subprocess.Popen([str(collector_binary()), "--config", f"file:{path}"], env=env, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=_pin(0))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"http://127.0.0.1:{health}/", timeout=1) as response:
                if response.status == 200:
                    return proc, grpc_port, http_port
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the Collector did not become healthy")


def keep_all_policies(workdir: str, tree: Path = REPO) -> Path:
    """``tree``'s bundled policies with the sampling ratio at 1.0 (a tenant that keeps every trace)."""
    import shutil

    root = Path(workdir) / "policies-keep-all"
    shutil.copytree(tree / "policies", root)
    data = json.loads((root / "data.json").read_text())
    data["otlp_sidecar"]["config"]["sampling"]["ratio"] = 1.0
    (root / "data.json").write_text(json.dumps(data, indent=2))
    return root


def start_target(
    mode: str, sink_grpc: int, sink_http: int, workdir: str, signal: str = "traces", tree: Path = REPO,
) -> tuple[subprocess.Popen[str], int, int]:
    """The target of ``mode``; a sidecar runs from ``tree`` (its code, extensions and bundled
    policies: another checkout for ``bench.ab``)."""
    if mode == "collector":
        return start_collector(sink_grpc, workdir)
    env = {**os.environ}
    if mode in ("naive", "rego-per-span", "transport", "transport-libraries"):
        cmd = {
            "naive": [sys.executable, "-m", "bench.baselines.naive_proxy", "--upstream-http", str(sink_http),
                      "--signal", signal],
            "rego-per-span": [sys.executable, "-m", "bench.baselines.naive_proxy", "--upstream-http",
                              str(sink_http), "--rego-per-span"],
            "transport": [sys.executable, "-m", "bench.baselines.transport_floor"],
            "transport-libraries": [sys.executable, "-m", "bench.baselines.transport_floor", "--libraries"],
        }[mode]
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True, preexec_fn=_pin(0))
        assert proc.stdout is not None
        ports = dict(part.split("=") for part in proc.stdout.readline().split())
        return proc, int(ports["grpc"]), int(ports["http"])
    env.update({
        "SIDECAR_GRPC_ENDPOINT": "127.0.0.1:0", "SIDECAR_HTTP_ENDPOINT": "127.0.0.1:0",
        "SIDECAR_ADMIN_ENDPOINT": "127.0.0.1:0", "SIDECAR_LOG_LEVEL": "warning",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink_grpc}", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
    })
    env.pop("SIDECAR_POLICY_DIR", None)
    # no policy is an explicit mode: with nothing configured the sidecar applies its bundled set
    env["SIDECAR_POLICY_MODE"] = "enforce" if mode in ("policy", "keep-all") else "passthrough"
    if mode in ("policy", "keep-all"):
        key = Path(workdir) / "hmac.key"
        key.write_bytes(os.urandom(32))
        policies = tree / "policies" if mode == "policy" else keep_all_policies(workdir, tree)
        env.update({"SIDECAR_POLICY_DIR": str(policies), "SIDECAR_POLICY_HASH_KEY_FILE": str(key),
                    "SIDECAR_TENANT": "acme"})
    ports_file = Path(workdir) / f"ports-{mode}.json"
    env["SIDECAR_LOG_LEVEL"] = "info"
    proc = subprocess.Popen([sys.executable, "-m", "sidecar", "run"], cwd=tree, env=env,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_pin(0))
    assert proc.stderr is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            raise RuntimeError(f"sidecar exited: {proc.wait()}")
        if " up: " in line:
            grpc_port = int(line.split("grpc on ", 1)[1].split(",")[0].split(";")[0].rsplit(":", 1)[1])
            http_port = int(line.split("http on ", 1)[1].split(",")[0].split(";")[0].rsplit(":", 1)[1])
            ports_file.write_text(json.dumps([grpc_port, http_port]))
            # keep draining stderr so the sidecar never blocks on a full pipe
            import threading

            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()  # type: ignore[union-attr]
            return proc, grpc_port, http_port
    raise RuntimeError("sidecar did not come up")


def _other_core() -> int | None:
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    return cores[1] if len(cores) > 1 else None


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def cpu_seconds_precise(pid: int) -> float:
    """CPU time of ``pid``'s threads alive now, to the nanosecond (``/proc/<pid>/task/*/schedstat``):
    for short runs, where ``cpu_seconds``'s 10 ms ticks would be coarse."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):  # a thread that ended meanwhile
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def steal_ticks() -> tuple[int, int]:
    """(steal, total) CPU ticks of the machine so far (/proc/stat); (0, 0) where unknown."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    return (fields[7] if len(fields) > 7 else 0), sum(fields)


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def reset_peak_rss(pid: int) -> bool:
    """Start the process's RSS high-water mark again from its current RSS (Linux ``clear_refs``
    5); False where that is not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def settle(pid: int, timeout: float = 20.0) -> None:
    """Wait until ``pid`` is idle (under 5 % of a core over 0.25 s): what it still held from the
    flat-out run (an export queue's backlog) is sent before a fixed-rate run starts."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = cpu_seconds(pid)
        time.sleep(0.25)
        if cpu_seconds(pid) - before < 0.0125:
            return


# -- load generators ---------------------------------------------------------------------------


def starts(place: tuple[int, int], connections: int, bodies: int) -> list[int]:
    """Where each connection of generator ``place`` = (index, generators) starts in the bodies:
    every connection of every generator at its own place, spread evenly, so that requests sent at
    once differ (the same body twice in one export batch flatters zstd, see ``bench.loadgen``)."""
    index, generators = place
    total = generators * connections
    return [(index * connections + k) * bodies // total for k in range(connections)]


async def _generate(transport: str, port: int, bodies: list[bytes], duration: float, concurrency: int,
                    rate: float | None, signal: str = "traces", place: tuple[int, int] = (0, 1)) -> dict[str, Any]:
    """One generator's load; ``place`` = (this generator's index, how many run at once)."""
    from bench.loadgen import CallFailed, connect
    from sidecar.signals import Signal

    ok = refused = failed = 0
    latencies: list[float] = []
    deadline = time.monotonic() + duration
    path = Signal(signal).http_path if transport == "http" else Signal(signal).grpc_path
    # HTTP/1.1 carries one request at a time per connection; gRPC multiplexes on one
    count = concurrency if transport == "http" else 1
    connections = [await connect(transport, "127.0.0.1", port, path, bodies, start)
                   for start in starts(place, count, len(bodies))]
    idle = asyncio.Queue()
    for n in range(concurrency):
        idle.put_nowait(connections[n % len(connections)])

    async def one() -> bool:
        """One request; False when it was refused retryably."""
        nonlocal ok, refused, failed
        started = time.perf_counter()  # before waiting for a free connection: that wait counts too
        connection = await idle.get()
        accepted = True
        try:
            await connection.call()
            ok += 1
        except CallFailed as exc:
            if exc.retryable:
                refused += 1
                accepted = False
            else:
                failed += 1
        except Exception:
            failed += 1
        latencies.append(time.perf_counter() - started)
        idle.put_nowait(connection)
        return accepted

    async def worker() -> None:
        # back off after a refusal as an OTLP exporter does (exponential, from 50 ms to 1 s):
        # resending at once would measure how fast the target says no
        delay = 0.0
        while time.monotonic() < deadline:
            if await one():
                delay = 0.0
            else:
                delay = min(1.0, max(0.05, delay * 2))
                await asyncio.sleep(delay)

    if rate is None:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    else:
        interval = 1.0 / rate
        tasks = set()
        next_at = time.monotonic()
        while next_at < deadline:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            task = asyncio.create_task(one())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            next_at += interval
        await asyncio.gather(*tasks)
    for connection in connections:
        connection.close()
    return {"ok": ok, "refused": refused, "failed": failed, "latencies": latencies}


def _generator_main(args: tuple, out: Any) -> None:
    core = _other_core()
    if core is not None:
        os.sched_setaffinity(0, {core})
    out.put(asyncio.run(_generate(*args)))


def run_load(transport: str, port: int, bodies: list[bytes], duration: float, generators: int, concurrency: int,
             rate: float | None = None, signal: str = "traces") -> dict[str, Any]:
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_generator_main, args=((transport, port, bodies, duration, concurrency,
                                                        None if rate is None else rate / generators, signal,
                                                        (index, generators)),
                                                       queue))
             for index in range(generators)]
    for proc in procs:
        proc.start()
    results = [queue.get(timeout=duration + 120) for _ in procs]
    for proc in procs:
        proc.join()
    return {
        "ok": sum(r["ok"] for r in results),
        "refused": sum(r["refused"] for r in results),
        "failed": sum(r["failed"] for r in results),
        "latencies": sorted(x for r in results for x in r["latencies"]),
    }


def percentile(values: list[float], share: float) -> float:
    if not values:
        return 0.0
    return values[min(len(values) - 1, int(share * len(values)))] * 1000


# -- one row -----------------------------------------------------------------------------------


@contextlib.contextmanager
def running(
    transport: str, mode: str, bodies: list[bytes], signal: str = "traces", tree: Path = REPO,
) -> Iterator[tuple[subprocess.Popen[str], int, subprocess.Popen[str]]]:
    """A sink and the target of ``mode``, warmed up: (target process, its port for ``transport``,
    sink process). Both are stopped on leaving."""
    with tempfile.TemporaryDirectory() as workdir:
        sink, sink_grpc, sink_http = start_sink()
        try:
            target, grpc_port, http_port = start_target(mode, sink_grpc, sink_http, workdir, signal, tree)
            try:
                port = grpc_port if transport == "grpc" else http_port
                run_load(transport, port, bodies, 1.0, 1, 4, signal=signal)  # warm-up: caches, connections, plans
                yield target, port, sink
            finally:
                target.send_signal(SIGTERM)
                target.wait(60)
        finally:
            sink.send_signal(SIGTERM)
            sink.wait(60)


def measure(transport: str, mode: str, bodies: list[bytes], spans: int, args: argparse.Namespace,
            signal: str = "traces", rates: list[float] | None = None, reached: float = 0.0,
            tree: Path = REPO) -> Row:
    """One row: flat out, then at each fixed rate of ``rates`` (``args.rates`` when None) that
    the target reached 1.5 times flat out, in this run or in an earlier round (``reached``); a
    sidecar runs from ``tree``."""
    rates = args.rates if rates is None else rates
    row = Row(transport, mode, signal)
    with running(transport, mode, bodies, signal, tree) as (target, port, sink):
        steal0 = steal_ticks()
        cpu0, t0 = cpu_seconds(target.pid), time.monotonic()
        result = run_load(transport, port, bodies, args.duration, args.generators, args.concurrency,
                          signal=signal)
        elapsed = time.monotonic() - t0
        cpu = cpu_seconds(target.pid) - cpu0
        accepted_spans = result["ok"] * spans
        row.spans_per_s = accepted_spans / elapsed
        row.cpu_us_per_span = cpu / max(1, accepted_spans) * 1e6
        row.target_cpu_share = cpu / elapsed
        row.requests_ok, row.requests_refused, row.requests_failed = (
            result["ok"], result["refused"], result["failed"])
        row.limit = "target (its core is busy)" if row.target_cpu_share > 0.9 else "load generator"
        row.peak_rss_mib = peak_rss_mib(target.pid)
        sustainable = [rate for rate in rates if max(row.spans_per_s, reached) >= 1.5 * rate]
        measured_rss = False
        row.notes += [f"no latency run at {rate:,.0f} items/s: it cannot sustain it"
                      for rate in rates if rate not in sustainable]
        if sustainable:
            lower_for_latency_run(sink.pid)
            settle(target.pid)
            measured_rss = reset_peak_rss(target.pid)
        for rate in sustainable:
            # one generator process keeps 100 requests/s with room; beyond, the rate is split
            generators = 1 if rate / spans <= 200 else args.generators
            cpu_before = cpu_seconds_precise(target.pid)
            latency = run_load(transport, port, bodies, args.latency_duration, generators, 64,
                               rate=rate / spans, signal=signal)
            settle(target.pid, timeout=5.0)  # its last partial batch is exported: counted here
            figures = {"rate": rate, "p50_ms": percentile(latency["latencies"], 0.50),
                       "p99_ms": percentile(latency["latencies"], 0.99),
                       "p999_ms": percentile(latency["latencies"], 0.999),
                       "refused": latency["refused"], "failed": latency["failed"],
                       "cpu_us_per_item":
                           (cpu_seconds_precise(target.pid) - cpu_before) / max(1, latency["ok"] * spans) * 1e6}
            row.rates.append(figures)
            row.refused_at_rate += latency["refused"]
            row.failed_at_rate += latency["failed"]
        if row.rates:
            first = row.rates[0]
            row.rate_spans_per_s, row.p50_ms, row.p99_ms, row.p999_ms = (
                first["rate"], first["p50_ms"], first["p99_ms"], first["p999_ms"])
            if measured_rss:
                row.peak_rss_at_rate_mib = peak_rss_mib(target.pid)
        steal1 = steal_ticks()
        if steal1[1] > steal0[1]:
            row.steal_pct = 100 * (steal1[0] - steal0[0]) / (steal1[1] - steal0[1])
    return row


#: the modes that also run for logs and metrics (never sampled, so keep-all is policy there; the
#: library floor and Rego-per-span are about receiving and planning, measured on traces)
SIGNAL_MODES = ("transport", "passthrough", "policy", "naive", "collector")

#: issue 18's goals on CPU per item, as ratios in the same run: (signal, mode) -> (against, bound):
#: at least ``bound`` times less CPU than ``naive``, at most ``bound`` times the floor (``transport``)
CPU_GOALS = {
    ("traces", "policy"): (("naive", 25.0), ("transport", 2.5)),
    ("traces", "keep-all"): (("transport", 4.0),),
    ("logs", "policy"): (("naive", 20.0),),
    ("metrics", "policy"): (("naive", 20.0),),
}
#: and on every row of the sidecar with policies: peak RSS, p99 added latency at a fixed rate
#: (items/s -> ms, in rows under 2 % steal), and against the Collector doing the same job
MAX_RSS_MIB = 80.0
MAX_P99_MS = {50_000.0: 1.0, 500_000.0: 2.0}
MAX_STEAL_PCT = 2.0
COLLECTOR_CPU = 3.0


def goal_checks(rows: list[Row]) -> list[tuple[bool, str]]:
    """Each of issue 18's goals that this run measured: (met, what was measured against what)."""
    by_mode = {(r.signal, r.transport, r.mode): r for r in rows}
    checks: list[tuple[bool, str]] = []
    for r in rows:
        if r.mode not in ("policy", "keep-all"):
            continue
        name = f"{r.signal} {r.mode} {r.transport}"
        for against, bound in CPU_GOALS.get((r.signal, r.mode), ()):
            other = by_mode.get((r.signal, r.transport, against))
            if other is None or not other.cpu_us_per_span or not r.cpu_us_per_span:
                continue
            if against == "transport":
                ratio = r.cpu_us_per_span / other.cpu_us_per_span
                checks.append((ratio <= bound, f"{name}: {ratio:.1f}x the floor's CPU per item (≤ {bound:g}x)"))
            else:
                ratio = other.cpu_us_per_span / r.cpu_us_per_span
                checks.append((ratio >= bound, f"{name}: {ratio:.1f}x less CPU per item than {against} (≥ {bound:g}x)"))
        rss = max(r.peak_rss_mib, r.peak_rss_at_rate_mib)
        checks.append((rss <= MAX_RSS_MIB, f"{name}: peak RSS {rss:.0f} MiB (≤ {MAX_RSS_MIB:g})"))
        floor = by_mode.get((r.signal, r.transport, "transport"))
        floor_p99 = {run["rate"]: run["p99_ms"] for run in floor.rates} if floor is not None else {}
        if r.steal_pct < MAX_STEAL_PCT:
            for run in r.rates:
                bound_ms = MAX_P99_MS.get(run["rate"])
                if bound_ms is not None:
                    # the client's whole wait: the floor's own p99 says what the machine adds
                    known = f"; the floor's {floor_p99[run['rate']]:.2f}" if run["rate"] in floor_p99 else ""
                    checks.append((run["p99_ms"] <= bound_ms, f"{name}: p99 {run['p99_ms']:.2f} ms at "
                                   f"{_k(run['rate'])} items/s (≤ {bound_ms:g} ms{known})"))
        if r.mode == "keep-all" and r.rates:
            checks.append((r.refused_at_rate == 0, f"{name}: {r.refused_at_rate} refused at the fixed rates (0)"))
        # the Collector row samples 10 %, as the bundled policies do: the policy rows' job, not keep-all's
        collector = by_mode.get((r.signal, r.transport, "collector"))
        if r.mode == "policy" and collector is not None and r.cpu_us_per_span:
            ratio = collector.cpu_us_per_span / r.cpu_us_per_span
            checks.append((ratio >= COLLECTOR_CPU, f"{name}: {ratio:.1f}x less CPU per item than the Collector "
                           f"(≥ {COLLECTOR_CPU:g}x)"))
            checks.append((r.peak_rss_mib < collector.peak_rss_mib, f"{name}: peak RSS {r.peak_rss_mib:.0f} MiB "
                           f"flat out, the Collector's {collector.peak_rss_mib:.0f} (lower)"))
    return checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds of flat-out load per row")
    parser.add_argument("--latency-duration", type=float, default=5.0, help="seconds of fixed-rate load")
    parser.add_argument("--rates", default="50000,500000",
                        help="items/s of the fixed-rate (latency) runs, comma-separated")
    parser.add_argument("--spans", type=int, default=512,
                        help="items per request: spans, log records or data points (the SDKs' batch of 512)")
    parser.add_argument("--requests", type=int, default=64,
                        help="different pre-built requests, sent in turn (connections start apart in them)")
    parser.add_argument("--generators", type=int, default=2, help="load generator processes")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight per generator")
    parser.add_argument("--transports", default="http,grpc")
    parser.add_argument("--modes",
                        default="transport-libraries,transport,passthrough,policy,keep-all,naive,rego-per-span,"
                                "collector")
    parser.add_argument("--signals", default="traces,logs,metrics",
                        help="logs and metrics run the modes of SIGNAL_MODES only")
    parser.add_argument("--rounds", type=int, default=1,
                        help="flat-out runs of each row, in turn; each row reports its median round")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    args.rates = [float(rate) for rate in args.rates.split(",") if rate]

    sys.path.insert(0, str(REPO))
    from bench.corpus_requests import log_request, metric_request, trace_request
    from sidecar.rewrite import IMPLEMENTATION

    builders = {"traces": trace_request, "logs": log_request, "metrics": metric_request}
    rows = []
    request_bytes: dict[str, int] = {}
    modes = args.modes.split(",")
    if "collector" in modes and not collector_binary().exists():
        print(f"no Collector at {collector_binary()}: run `make peers` for the collector row", file=sys.stderr)
        modes.remove("collector")
    for signal in args.signals.split(","):
        # different items, attribute values and card numbers in each request; one resource (one app)
        bodies = [builders[signal](args.spans, seed=seed) for seed in range(7, 7 + args.requests)]
        request_bytes[signal] = sum(map(len, bodies)) // len(bodies)
        group = [mode for mode in modes if signal == "traces" or mode in SIGNAL_MODES]
        for transport in args.transports.split(","):
            rounds: dict[str, list[Row]] = {mode: [] for mode in group}
            for n in range(args.rounds):
                of = f" (round {n + 1} of {args.rounds})" if args.rounds > 1 else ""
                for mode in group if n % 2 == 0 else group[::-1]:
                    print(f"measuring {signal} / {transport} / {mode}{of} ...", file=sys.stderr, flush=True)
                    last = n == args.rounds - 1
                    reached = max((r.spans_per_s for r in rounds[mode]), default=0.0)
                    rounds[mode].append(measure(transport, mode, bodies, args.spans, args, signal,
                                                rates=None if last else [], reached=reached))
            rows += [median_row(rounds[mode]) for mode in group]
    print_table(rows, args, IMPLEMENTATION, request_bytes)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"load-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"machine": machine(), "args": vars(args), "rewriter": IMPLEMENTATION,
                               "request_bytes": request_bytes, "rows": [asdict(r) for r in rows]}, indent=2))
    print(f"\nfigures: {out.relative_to(REPO)}")
    return 0


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": sys.version.split()[0], "date": time.strftime("%Y-%m-%d")}


def _k(rate: float) -> str:
    """50000 -> '50k'."""
    return f"{rate / 1000:g}k" if rate >= 1000 else f"{rate:g}"


def print_table(rows: list[Row], args: argparse.Namespace, implementation: str,
                request_bytes: dict[str, int]) -> None:
    info = machine()
    sizes = ", ".join(f"{signal} {size:,} bytes" for signal, size in request_bytes.items())
    print(f"\n{info['date']} · {info['cpu']} · {info['cores']} cores · Python {info['python']} · "
          f"rewriter: {implementation} · {args.requests} requests of {args.spans} items ({sizes}) sent in turn"
          " · target on one core")
    rates = [_k(rate) for rate in args.rates]
    head = ("signal", "transport", "mode", "items/s", "CPU µs/item", "vs naive", "vs floor", "vs collector",
            f"CPU µs/item at {' / '.join(rates)}/s",
            *(f"p50 / p99 / p99.9 ms at {rate}/s" for rate in rates), "peak RSS MiB flat out / at the rates",
            "refused flat out / at the rates", "failed", "limit", "steal %")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    by_mode = {(r.signal, r.transport, r.mode): r for r in rows}

    def times(mode: str, r: Row, inverse: bool = False) -> str:
        other = by_mode.get((r.signal, r.transport, mode))
        if other is None or other is r or not r.cpu_us_per_span or not other.cpu_us_per_span:
            return "-"
        ratio = r.cpu_us_per_span / other.cpu_us_per_span if inverse else other.cpu_us_per_span / r.cpu_us_per_span
        return f"{ratio:.1f}x"

    for r in rows:
        measured = {run["rate"]: run for run in r.rates}
        latency = " | ".join(
            f"{run['p50_ms']:.2f} / {run['p99_ms']:.2f} / {run['p999_ms']:.2f}" if run else "-"
            for run in (measured.get(rate) for rate in args.rates))
        cpu_at_rates = " / ".join(f"{run['cpu_us_per_item']:.2f}" if run else "-"
                                  for run in (measured.get(rate) for rate in args.rates))
        rss_at_rate = f"{r.peak_rss_at_rate_mib:.0f}" if r.peak_rss_at_rate_mib else "-"
        refused_at_rate = str(r.refused_at_rate) if r.rates else "-"
        cpu = f"{r.cpu_us_per_span:.2f}"
        if len(r.cpu_rounds) > 1:
            cpu += " (" + ", ".join(f"{x:.2f}" for x in r.cpu_rounds) + ")"
        print(f"| {r.signal} | {r.transport} | {r.mode} | {r.spans_per_s:,.0f} | {cpu} | "
              f"{times('naive', r)} | {times('transport', r, inverse=True)} | {times('collector', r)} | "
              f"{cpu_at_rates} | {latency} | {r.peak_rss_mib:.0f} / {rss_at_rate} | "
              f"{r.requests_refused} / {refused_at_rate} | "
              f"{r.requests_failed + r.failed_at_rate} | {r.limit} | {r.steal_pct:.1f} |")
    print(f"\nlatency at {', '.join(rates)} items/s, fixed rates, once the target is idle after the flat-out run;"
          " 'CPU µs/item' flat out, then at each fixed rate (nothing refused there: the least noisy figure of an"
          " unsampled row, whose flat-out run refuses as its export queue fills);"
          " 'vs naive' / 'vs collector' = their CPU per item / this CPU per item (higher is better); 'vs floor' ="
          " this CPU per item / the transport floor's (lower is better); steal % = CPU time the hypervisor took"
          " from this machine during the row"
          + (f"; {args.rounds} rounds: each row's median round, every round's CPU µs/item in brackets, in order,"
             " ratios of the medians, peak RSS and steal the highest of the rounds" if args.rounds > 1 else ""))
    checks = goal_checks(rows)
    if checks:
        met = sum(ok for ok, _ in checks)
        print(f"\ngoals (issue 18) in this run: {met} of {len(checks)} met")
        for ok, what in checks:
            print(f"  {'met    ' if ok else 'NOT met'}  {what}")


if __name__ == "__main__":
    sys.exit(main())
