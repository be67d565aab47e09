"""Profile the sidecar under load with py-spy: where its CPU time goes.

Starts a sink and the target of one ``bench.load`` mode, warms it up, then records the target
with ``py-spy`` while the load generators run flat out (or at ``--items-per-s``). Writes the raw folded stacks to
``bench/results/profile-<transport>-<mode>-<date>.txt`` (feed them to a flame graph tool) and
prints the functions with the most samples, their own and with what they call.

    pip install py-spy        # or: pip install -e '.[bench]'
    python -m bench.profile --transport http --mode policy [--signal logs] [--seconds 8] [--native]

``--native`` adds the C frames (the Cython rewriter shows its own functions). py-spy needs the
right to read another process's memory (root, or ``ptrace_scope`` 0).
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench import load
from bench.corpus_requests import log_request, metric_request, trace_request

_IDLE = "_worker (concurrent/futures/thread.py"
_IDLE_NATIVE = "_queue_SimpleQueue_get"


def summarize(folded: Path, top: int) -> str:
    """The functions with the most samples: own samples, and inclusive ones (callees too)."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in folded.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        # a worker thread waiting for work is not busy, whatever py-spy thinks of it (with
        # --native the stack goes on below the queue's get into the lock)
        if frames[-1].startswith(_IDLE) or any(frame.startswith(_IDLE_NATIVE) for frame in frames):
            continue
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    # the frames every sample passes through (the event loop's run_forever ...) say nothing
    for frame in [f for f, n in inclusive.items() if n >= 0.95 * total]:
        del inclusive[frame]
    lines = [f"{total} samples"]
    for title, counter in (("own time", own), ("with callees", inclusive)):
        lines.append(f"\n{title}:")
        lines += [f"{100 * n / max(1, total):6.1f} %  {frame}" for frame, n in counter.most_common(top)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--transport", choices=["http", "grpc"], default="http")
    parser.add_argument("--mode", choices=["passthrough", "policy", "keep-all", "naive", "transport"],
                        default="policy")
    parser.add_argument("--signal", choices=["traces", "logs", "metrics"], default="traces")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--native", action="store_true", help="include C frames")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--items-per-s", type=float, default=0.0,
                        help="load at this fixed rate of items/s rather than flat out (as bench.load's --rates)")
    args = parser.parse_args(argv)
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        print("py-spy is not installed: pip install py-spy", file=sys.stderr)
        return 2
    build = {"traces": trace_request, "logs": log_request, "metrics": metric_request}[args.signal]
    bodies = [build(512, seed=seed) for seed in range(7, 7 + 64)]  # as bench.load
    load.RESULTS.mkdir(exist_ok=True)
    name = f"profile-{args.signal}-{args.transport}-{args.mode}-{time.strftime('%Y%m%d-%H%M%S')}.txt"
    out = load.RESULTS / name
    with load.running(args.transport, args.mode, bodies, args.signal) as (target, port, _sink):
        command = [spy, "record", "--pid", str(target.pid), "--duration", str(int(args.seconds)),
                   "--rate", str(args.rate), "--format", "raw", "--output", str(out)]
        if args.native:
            command.append("--native")
        recorder = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        rate = args.items_per_s / 512 if args.items_per_s else None  # requests/s
        generators = 1 if rate is not None and rate <= 200 else 2  # as bench.load
        result = load.run_load(args.transport, port, bodies, args.seconds, generators, 8, rate=rate,
                               signal=args.signal)
        _, errors = recorder.communicate(timeout=args.seconds + 60)
        if recorder.returncode != 0:
            print(f"py-spy failed: {errors.strip()}", file=sys.stderr)
            return 1
    print(f"{args.signal} / {args.transport} / {args.mode}: {result['ok'] * 512 / args.seconds:,.0f} items/s"
          " accepted while profiled")
    print(summarize(out, args.top))
    print(f"\nfolded stacks: {out.relative_to(load.REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
