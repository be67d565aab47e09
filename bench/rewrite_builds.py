"""Same-run comparison of builds of the C rewriter: before and after a change, in one process.

Usage::

    git worktree add /tmp/rw-base <commit>            # the build to compare against
    (cd /tmp/rw-base && nice -n 10 python setup.py --quiet build_ext --inplace)
    python -m bench.rewrite_builds base=/tmp/rw-base/sidecar/_ext/rewrite.cpython-311-x86_64-linux-gnu.so

Each ``label=path`` is a built ``rewrite`` module loaded beside this tree's (``final``; the
modules it cimports, such as ``cards``, come from this tree). For every workload (traces, logs
and metrics; the default plan and the shipped one) it first checks that all builds give equal
results, then alternates them round by round (the order reversed every other round) and prints
the median thread CPU time per item and each build's ratio to the first. Figures of separate
runs on this machine move by 10-30 %; ratios of one run move by about 2 % (an A/A run).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.corpus_requests import DEFAULT_PLAN, shipped_plan, trace_request
from bench.rewrite import log_request, metric_request, shipped_plan_for
from sidecar.rewrite.plan import Plan
from sidecar.signals import Signal

MODULE = "sidecar._ext.rewrite"


def load(path: str) -> ModuleType:
    """The rewrite module built at ``path``, loaded under its own name without replacing this
    tree's in ``sys.modules``."""
    saved = sys.modules.pop(MODULE, None)
    spec = importlib.util.spec_from_file_location(MODULE, path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"not a module: {path}")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    sys.modules.pop(MODULE, None)
    if saved is not None:
        sys.modules[MODULE] = saved
    return mod


def workloads(items: int) -> Iterator[tuple[str, Signal, list[bytes], Plan]]:
    traces = [trace_request(items, seed=s) for s in range(7, 15)]
    yield "traces default", Signal.TRACES, traces, DEFAULT_PLAN
    yield "traces shipped", Signal.TRACES, traces, shipped_plan(traces[0])
    for name, signal, build in (("logs", Signal.LOGS, log_request),
                                ("metrics", Signal.METRICS, metric_request)):
        requests = [build(items, seed=s) for s in range(7, 15)]
        yield f"{name} default", signal, requests, DEFAULT_PLAN
        yield f"{name} shipped", signal, requests, shipped_plan_for(signal, requests[0])


def seconds(mod: ModuleType, signal: Signal, requests: Sequence[bytes], plans: list[Plan],
            passes: int, allowlist: bool = False) -> float:
    """Thread CPU seconds of ``passes`` rewrites of each request; with ``allowlist``, each
    rewritten request is also checked against OTLP's fields, as the pipeline does."""
    rewrite = mod.rewrite
    unknown_field = mod.unknown_field
    t = time.thread_time()
    for _ in range(passes):
        for data in requests:
            result = rewrite(signal, data, plans)
            if allowlist:
                unknown_field(signal, result.data)
    return time.thread_time() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("builds", nargs="+", help="label=path of a built rewrite module")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=1.0, help="per build per round")
    ap.add_argument("--items", type=int, default=512, help="items per request")
    ap.add_argument("--only", default="", help="comma-separated workload prefixes, e.g. logs,metrics")
    ap.add_argument("--allowlist", action="store_true",
                    help="time the check of the rewritten request against OTLP's fields too (the pipeline's)")
    args = ap.parse_args()
    mods = {}
    for arg in args.builds:
        label, _, path = arg.partition("=")
        mods[label] = load(path)
    mods["final"] = importlib.import_module(MODULE)
    labels = list(mods)
    print(f"{'workload':<17}" + "".join(f"{label + ' ns/item':>16}" for label in labels)
          + "".join(f"{label + '/' + labels[0]:>16}" for label in labels[1:]))
    only = tuple(p for p in args.only.split(",") if p)
    for name, signal, requests, plan in workloads(args.items):
        if only and not name.startswith(only):
            continue
        # each build keeps its compiled plan on the Plan object: give each its own copy
        plans = {label: [dataclasses.replace(plan)] for label in labels}
        first = [mods[labels[0]].rewrite(signal, d, plans[labels[0]]) for d in requests]
        for label in labels[1:]:
            if [mods[label].rewrite(signal, d, plans[label]) for d in requests] != first:
                raise SystemExit(f"{name}: {label} and {labels[0]} give different results")
        once = seconds(mods["final"], signal, requests, plans["final"], 1, args.allowlist)
        passes = max(1, int(args.seconds / max(once, 1e-6)))
        per_item: dict[str, list[float]] = {label: [] for label in labels}
        for r in range(args.rounds):
            for label in labels if r % 2 == 0 else labels[::-1]:
                t = seconds(mods[label], signal, requests, plans[label], passes, args.allowlist)
                per_item[label].append(t / (passes * len(requests) * args.items) * 1e9)
        med = {label: statistics.median(v) for label, v in per_item.items()}
        print(f"{name:<17}" + "".join(f"{med[label]:>16.1f}" for label in labels)
              + "".join(f"{med[label] / med[labels[0]]:>16.3f}" for label in labels[1:]))
        print("   rounds: " + "; ".join(
            label + " " + "/".join(f"{x:.0f}" for x in per_item[label]) for label in labels))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
