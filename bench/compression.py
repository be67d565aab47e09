"""Which upstream compression: the sidecar's CPU per span and the bytes on the wire, per encoding,
exporting to the real OpenTelemetry Collector (``make peers``).

For each protocol (gRPC, HTTP/protobuf) and encoding (none, gzip, zstd) a fresh sidecar with the
bundled policies takes the same trace requests (512 spans, 5 % with card numbers) and exports to
the Collector through a byte-counting TCP relay. Measured: the sidecar's CPU seconds (user +
system, /proc) from the first request until the Collector has everything, the Collector's CPU
over the same time (decompression is its cost), and the bytes the relay carried to the Collector.

    .venv/bin/python -m bench.compression [--requests 400]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.corpus_requests import trace_request
from bench.load import cpu_seconds
from bench.loadgen import connect
from sidecar.signals import Signal

REPO = Path(__file__).resolve().parent.parent
PEERS = Path(os.environ.get("OTLP_SIDECAR_PEERS_DIR", Path.home() / ".cache" / "otlp-sidecar" / "peers"))


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Relay:
    """A TCP relay that counts the bytes sent towards the target."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.upstream_bytes = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, count: bool) -> None:
            try:
                while chunk := await src.read(1 << 16):
                    if count:
                        self.upstream_bytes += len(chunk)
                    dst.write(chunk)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer, True), pipe(up_reader, writer, False))

    def close(self) -> None:
        if self._server is not None:
            self._server.close()


def start_collector(workdir: Path, grpc_port: int, http_port: int) -> subprocess.Popen[bytes]:
    """The Collector receiving OTLP and dropping it (debug exporter, basic verbosity)."""
    health = _free_port()
    pipeline = {"receivers": ["otlp"], "exporters": ["debug"]}
    config = {
        "receivers": {"otlp": {"protocols": {"grpc": {"endpoint": f"127.0.0.1:{grpc_port}"},
                                             "http": {"endpoint": f"127.0.0.1:{http_port}"}}}},
        "exporters": {"debug": {"verbosity": "basic"}},
        "extensions": {"health_check": {"endpoint": f"127.0.0.1:{health}"}},
        "service": {"extensions": ["health_check"], "pipelines": {"traces": pipeline},
                    "telemetry": {"metrics": {"level": "none"}, "logs": {"level": "warn"}}},
    }
    path = workdir / "otelcol.json"
    path.write_text(json.dumps(config))
    proc = subprocess.Popen([str(PEERS / "bin" / "otelcol"), "--config", f"file:{path}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    import urllib.request

    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{health}/", timeout=1) as response:
                if response.status == 200:
                    return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the Collector did not become healthy")


async def start_sidecar(workdir: Path, protocol: str, port: int, encoding: str) -> tuple[Any, dict[str, int]]:
    key = workdir / "hmac.key"
    key.write_bytes(os.urandom(32))
    env = {**os.environ, "SIDECAR_GRPC_ENDPOINT": "127.0.0.1:0", "SIDECAR_HTTP_ENDPOINT": "127.0.0.1:0",
           "SIDECAR_ADMIN_ENDPOINT": "127.0.0.1:0", "SIDECAR_LOG_LEVEL": "info",
           "SIDECAR_POLICY_DIR": str(REPO / "policies"), "SIDECAR_POLICY_HASH_KEY_FILE": str(key),
           "SIDECAR_TENANT": "acme", "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
           "OTEL_EXPORTER_OTLP_PROTOCOL": protocol, "OTEL_EXPORTER_OTLP_COMPRESSION": encoding}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "sidecar", "run", cwd=REPO, env=env,
                                                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    assert proc.stderr is not None
    ports: dict[str, int] = {}
    async with asyncio.timeout(60):
        while True:
            line = (await proc.stderr.readline()).decode()
            if not line:
                raise RuntimeError("sidecar exited")
            if " up: " in line:
                for part in line.split(" up: ", 1)[1].split(";", 1)[0].split(","):
                    name, _, address = part.strip().partition(" on ")
                    ports[name] = int(address.rsplit(":", 1)[1])
                break

    async def drain() -> None:
        async for _ in proc.stderr:  # type: ignore[union-attr]
            pass

    asyncio.get_running_loop().create_task(drain())
    return proc, ports


async def metric(admin: int, name: str) -> float:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{admin}/metrics") as response:
        text = await response.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


async def measure(protocol: str, encoding: str, bodies: list[bytes], requests: int,
                  collector: subprocess.Popen[bytes], target: int, workdir: Path) -> dict[str, Any]:
    relay = Relay(target)
    await relay.start()
    proc, ports = await start_sidecar(workdir, protocol, relay.port, encoding)
    try:
        connection = await connect("grpc", "127.0.0.1", ports["grpc"], Signal.TRACES.grpc_path, bodies)
        # warm up: the policy cache and the connection to the Collector
        for _ in range(5):
            await connection.call()
        await asyncio.sleep(0.5)
        sent0 = await metric(ports["admin"], "otlp_sidecar_exporter_sent_items_total")
        cpu0, col0, bytes0 = cpu_seconds(proc.pid), cpu_seconds(collector.pid), relay.upstream_bytes
        t0 = time.monotonic()
        received0 = await metric(ports["admin"], "otlp_sidecar_receiver_accepted_items_total")
        for _ in range(requests // 4):
            await asyncio.gather(*(connection.call() for _ in range(4)))
        received = await metric(ports["admin"], "otlp_sidecar_receiver_accepted_items_total") - received0
        # wait until the exporter has sent everything and the Collector has acknowledged it
        previous = -1.0
        while True:
            await asyncio.sleep(0.3)
            sent = await metric(ports["admin"], "otlp_sidecar_exporter_sent_items_total") - sent0
            queued = await metric(ports["admin"], "otlp_sidecar_queue_size_bytes")
            if sent == previous and queued == 0:
                break
            previous = sent
        elapsed = time.monotonic() - t0
        cpu, col, wire = cpu_seconds(proc.pid) - cpu0, cpu_seconds(collector.pid) - col0, relay.upstream_bytes - bytes0
        connection.close()
        failed = await metric(ports["admin"], "otlp_sidecar_exporter_failed_items_total")
    finally:
        proc.terminate()
        await proc.wait()
        relay.close()
    return {"protocol": protocol, "encoding": encoding, "spans_in": int(received), "spans_out": int(sent),
            "failed": int(failed), "sidecar_cpu_us_per_span": 1e6 * cpu / received,
            "sidecar_cpu_us_per_span_out": 1e6 * cpu / max(sent, 1),
            "collector_cpu_us_per_span": 1e6 * col / max(sent, 1), "wire_bytes_per_span_out": wire / max(sent, 1),
            "wire_mib": wire / 2**20, "seconds": elapsed}


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    bodies = [trace_request(512, seed=seed) for seed in range(8)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        grpc_port, http_port = _free_port(), _free_port()
        collector = start_collector(workdir, grpc_port, http_port)
        try:
            for protocol in args.protocols:
                for encoding in args.encodings:
                    row = await measure(protocol, encoding, bodies, args.requests, collector,
                                        grpc_port if protocol == "grpc" else http_port, workdir)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
        finally:
            collector.terminate()
            collector.wait(10)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=400, help="requests of 512 spans per row")
    parser.add_argument("--protocols", nargs="+", default=["grpc", "http/protobuf"])
    parser.add_argument("--encodings", nargs="+", default=["none", "gzip", "zstd"])
    rows = asyncio.run(main_async(parser.parse_args(argv)))
    print(f"\n{'protocol':<14}{'encoding':<9}{'sidecar µs/span in':>19}{'µs/span out':>12}"
          f"{'collector µs/span':>18}{'wire B/span out':>16}{'spans out':>10}")
    for r in rows:
        print(f"{r['protocol']:<14}{r['encoding']:<9}{r['sidecar_cpu_us_per_span']:>19.2f}"
              f"{r['sidecar_cpu_us_per_span_out']:>12.2f}{r['collector_cpu_us_per_span']:>18.2f}"
              f"{r['wire_bytes_per_span_out']:>16.1f}{r['spans_out']:>10}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
