"""Rewriter throughput: spans/s for the Cython rewriter, the pure-Python twin and a naive baseline.

Usage: ``python bench/rewrite.py [--spans 512] [--requests 8] [--seconds 2] [--plans default,shipped]``.
One core, eight different 512-span trace requests built from the card-number corpus, rewritten
in turn as the end-to-end benchmark sends them. It prints the best round's rate and the median
round's: on a shared machine the best catches the moments the core ran at full speed (up to
twice the median here), while a running sidecar sees the median. Two plans:

- ``default``: PAN detection in every string, four key rules, a tenant stamp, 10 % sampling
  with keep rules (``bench.corpus_requests.DEFAULT_PLAN``);
- ``shipped``: the plan the bundled policies (``policies/``) give, asked of the real policy
  engine: ~180 PCI key rules, PAN detection, tenant stamp, 10 % sampling.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.baselines.naive_rewrite import naive_rewrite
from bench.corpus_requests import DEFAULT_PLAN, shipped_plan, trace_request
from sidecar.signals import Signal


def measure(fn, requests: list[bytes], spans: int, seconds: float) -> tuple[float, float]:
    """Spans per second of ``fn`` over ``requests`` in turn, over repeated rounds for about
    ``seconds``: (the best round's, the median round's). The best, like ``timeit``'s minimum,
    filters out time lost to other processes; the median is what a long run gets."""
    for data in requests:
        fn(data)  # warm up (plan compilation, caches)
    start = time.perf_counter()
    once = _round(fn, requests, 1)
    per_round = max(1, int(0.05 / once))
    rounds = [once]
    while time.perf_counter() - start < seconds:
        rounds.append(_round(fn, requests, per_round))
    return spans / min(rounds), spans / statistics.median(rounds)


def _round(fn, requests: list[bytes], n: int) -> float:
    """Seconds per request, over ``n`` passes through ``requests``."""
    t = time.perf_counter()
    for _ in range(n):
        for data in requests:
            fn(data)
    return (time.perf_counter() - t) / (n * len(requests))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--spans", type=int, default=512)
    ap.add_argument("--requests", type=int, default=8, help="different requests, rewritten in turn")
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--plans", default="default,shipped", help="comma-separated: default, shipped")
    args = ap.parse_args()
    requests = [trace_request(args.spans, seed=seed) for seed in range(7, 7 + args.requests)]
    data = requests[0]
    try:
        c = importlib.import_module("sidecar._ext.rewrite")
    except ImportError:
        c = None
        print("sidecar._ext.rewrite is not built: python setup.py build_ext --inplace")
    py = importlib.import_module("sidecar.rewrite._py")
    size = len(data)
    print(f"{len(requests)} requests of {size} bytes, {args.spans} spans each ({size / args.spans:.0f} B/span)")
    print(f"{'plan':<10}{'implementation':<16}{'best spans/s':>14}{'median':>14}{'vs naive':>10}")
    for name in args.plans.split(","):
        plan = DEFAULT_PLAN if name == "default" else shipped_plan(data)
        plans = [plan]
        rows = []
        if c is not None:
            rows.append(("cython", measure(lambda d, plans=plans: c.rewrite(Signal.TRACES, d, plans), requests,
                                           args.spans, args.seconds)))
        rows.append(("twin", measure(lambda d, plans=plans: py.rewrite(Signal.TRACES, d, plans), requests,
                                     args.spans, args.seconds)))
        rows.append(("naive", measure(lambda d, plan=plan: naive_rewrite(d, plan), requests, args.spans,
                                      args.seconds)))
        naive = rows[-1][1][1]
        for implementation, (best, median) in rows:
            print(f"{name:<10}{implementation:<16}{best:>14,.0f}{median:>14,.0f}{median / naive:>9.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
